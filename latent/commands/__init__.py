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
