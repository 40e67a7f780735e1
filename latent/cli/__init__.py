"""The ``latent`` command line: a thin layer that parses arguments and calls library functions.

This package sits above the core: one module per subcommand (``add_parser(subparsers)`` and
``run(args) -> int``, heavy imports such as torch and matplotlib inside ``run`` only, so ``latent fit``
never imports torch) and :mod:`latent.cli.shared`, the helpers they share. Nothing in the core
imports it (tests/test_artifacts.py checks the import graph).

User mistakes surface as :class:`latent.errors.UserError` and end as one line on stderr with
exit status 2; argparse errors and operating-system errors (disk full, permissions) are folded
into the same one-line form.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys

from ..errors import UserError, describe_os_error

#: one module per subcommand, in this package; each defines ``add_parser(subparsers)`` and ``run(args)``
COMMANDS = ("collect", "fit", "report", "ls", "simulate", "compare", "predict", "watch", "import_", "serve")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="latent",
        description="Latent state models of training dynamics: collect, fit, report.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"latent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"latent.cli.{name}")
        module.add_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so every command cleans up as it does for Ctrl-C
    (temporary files removed, a replaced artifact restored) before it exits."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``latent`` console script; returns the exit status."""
    import signal
    import threading

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = "latent " + shlex.join(argv)  # recorded in the artifacts
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:
        # the reader went away (`latent predict ... | head`): not an error; keep Python's exit-time
        # flush of stdout from raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UserError as exc:
        from ..settings import ConfigError

        text = exc.for_cli() if isinstance(exc, ConfigError) else str(exc)  # a field's error names its flag
        print(f"latent {args.command}: error: {_one_line(text)}", file=sys.stderr)
        return 2
    except OSError as exc:  # one not turned into a UserError where it happened: still one line
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"latent {args.command}: error: {describe_os_error(exc)}{where}; fix that and rerun the command",
              file=sys.stderr)
        return 2
    except MemoryError:
        # every store write is atomic, so what the store held is intact; one line, not a traceback
        from ..memory import available_bytes, gib

        free = available_bytes()
        have = f" (about {gib(free)} free now)" if free else ""
        print(f"latent {args.command}: error: ran out of memory{have}; give it less data at once (fewer runs, "
              "features or checkpoints) or run it on a machine with more memory; the store is as it was",
              file=sys.stderr)
        return 2
    except Terminated:
        print(f"latent {args.command}: terminated (SIGTERM); rerun the same command to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"latent {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
