"""The one exception type for user mistakes.

Library code raises :class:`UserError` for anything a user can fix (a bad flag, a missing study,
a corrupt file); the CLI prints its message as one line on stderr and exits with status 2.
Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the input that the user can fix; the message says what to change."""
