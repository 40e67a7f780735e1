"""The one exception type for user mistakes, and one-line descriptions of operating-system errors.

Library code raises :class:`UserError` for anything a user can fix (a bad flag, a missing study,
a corrupt file, a full disk); the CLI prints its message as one line on stderr and exits with
status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """A mistake in the input that the user can fix; the message says what to change."""


class StoreError(UserError):
    """The operating system refused a read or write in the store (disk full, permissions, ...).

    Raised only where a file is replaced atomically, so the store still holds the old file or
    the new one; the message names the file and the reason.
    """


# What to tell the user for the errors a store meets in practice; anything else gets strerror.
_REASONS = {
    errno.ENOSPC: "no space left on the device: free some space",
    errno.EDQUOT: "disk quota exceeded: free some space",
    errno.EACCES: "permission denied: fix its permissions or use another --store",
    errno.EPERM: "operation not permitted: fix its permissions or use another --store",
    errno.EROFS: "read-only file system: use another --store",
    errno.ENOENT: "no such file or directory (was it removed while latent ran?)",
    errno.ENOTDIR: "a path component is a file, not a directory",
    errno.EIO: "input/output error: check the disk",
}


def describe_os_error(exc: OSError) -> str:
    """``exc`` as one line: what the system said and what to do about it."""
    reason = _REASONS.get(exc.errno) or (exc.strerror or str(exc) or type(exc).__name__)
    return " ".join(reason.split())


def store_error(exc: OSError, action: str, path: str | os.PathLike) -> StoreError:
    """A :class:`StoreError` saying that ``action`` (``"write"``, ``"lock"``, ...) on ``path`` failed."""
    return StoreError(f"cannot {action} {path}: {describe_os_error(exc)}")
