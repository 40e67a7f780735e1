"""What the ``latent`` subcommands share: help text, stderr logging, the -q and Dask options."""

import logging
import sys


def plain(doc: str) -> str:
    """A module docstring as ``--help`` text: reST's double backticks dropped."""
    return doc.replace("``", "")


def open_in_browser(path) -> None:
    """Open ``path`` (an HTML file) in the default browser, or say on stderr why not."""
    import sys
    import webbrowser

    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        print("no browser found; open the path above by hand", file=sys.stderr)
        return
    if not browser.open(path.resolve().as_uri()):
        print("the browser did not start; open the path above by hand", file=sys.stderr)


class StderrHandler(logging.StreamHandler):
    """The ``latent`` loggers on stderr, as ``latent <command>: warning: ...`` (a note at INFO
    level as ``latent <command>: ...``), following ``sys.stderr`` if it is replaced (pytest)."""

    def __init__(self, command: str):
        super().__init__(sys.stderr)
        self.command = command
        self.setFormatter(_CommandFormatter(command))

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


class _CommandFormatter(logging.Formatter):
    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno <= logging.INFO:  # a note, not a warning
            return f"latent {self.command}: {record.getMessage()}"
        return f"latent {self.command}: {record.levelname.lower()}: {record.getMessage()}"


def log_to_stderr(logger: logging.Logger, command: str) -> StderrHandler | None:
    """Add a :class:`StderrHandler` for ``command`` to ``logger`` unless it has one; return the handler
    added (None if there was one already), so that a command can remove it when done."""
    if any(isinstance(h, StderrHandler) and h.command == command for h in logger.handlers):
        return None
    handler = StderrHandler(command)
    logger.addHandler(handler)
    return handler


def run_logging_to_stderr(logger: logging.Logger, command: str, body, *args) -> int:
    """``body(*args)`` with ``logger``'s records printed on stderr as ``latent <command>: ...``; the
    handler is removed afterwards, so a later command in the same process (a test, a notebook calling
    :func:`latent.cli.main`) never prints its warnings under this command's name too."""
    handler = log_to_stderr(logger, command)
    try:
        return body(*args)
    finally:
        if handler is not None:
            logger.removeHandler(handler)


QUIET_HELP = ("print only {what} on stdout, for scripts: no progress bars, summaries or next-step hints "
              "(warnings and errors still go to stderr)")


def add_quiet(p, what: str) -> None:
    """``-q/--quiet`` with one meaning on every command that writes something: stdout is only the path
    of what it wrote (``what``), and nothing else is printed but warnings and errors on stderr."""
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP.format(what=what))


def add_dask_options(p, scheduler_help: str, what: str) -> None:
    """``--scheduler ADDRESS`` or ``--cluster SPEC`` (one of them) for latent collect and latent fit."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help=scheduler_help)
    where.add_argument("--cluster", metavar="SPEC",
                       help=f"start a Dask cluster for this {what}: local:N (N worker processes here) or slurm:N "
                            "(N SLURM jobs, configured in dask's jobqueue.yaml)")
