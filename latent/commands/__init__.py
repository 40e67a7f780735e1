"""One module per ``latent`` subcommand.

Each module defines ``add_parser(subparsers)`` and ``run(args) -> int``. Modules import heavy
packages (torch, matplotlib) inside ``run`` only, so ``latent fit`` never imports torch.
"""

COMMANDS = ("collect", "fit", "report", "ls", "simulate", "compare")


def plain(doc: str) -> str:
    """A module docstring as ``--help`` text: reST's double backticks dropped."""
    return doc.replace("``", "")
