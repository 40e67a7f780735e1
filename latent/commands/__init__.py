"""One module per ``latent`` subcommand.

Each module defines ``add_parser(subparsers)`` and ``run(args) -> int``. Modules import heavy
packages (torch, matplotlib) inside ``run`` only, so ``latent fit`` never imports torch.
"""

COMMANDS = ("collect", "fit", "report", "ls", "simulate", "compare", "predict", "watch", "import_")


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
