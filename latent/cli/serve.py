"""``latent serve``: a local web app over the store: studies, fits, reports, comparisons, and live
studies while they are collected (docs/serve.md). Needs the ``serve`` extra (Bokeh).

The command's ``--help`` text is :data:`DESCRIPTION` (plain text, no markup).
"""

from __future__ import annotations

import math
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

DESCRIPTION = (
    "Serve the store to a browser: every study with its fits, reports and comparison pages, and a live page "
    "per study that grows while latent collect (or a Recorder) writes it, with each run's current state, "
    "detour risk and convergence forecast from a fit, and a warning when a run enters a detour state. Reads "
    "the store only (never writes, fits or trains); binds 127.0.0.1 unless --host says otherwise; refuses "
    "any path outside the store. Ctrl-C stops it. Example: latent serve --fit modadd. See docs/serve.md."
)


@dataclass(frozen=True)
class ServeConfig:
    """What ``latent serve`` serves and where (the flags below are made from it).

    Attributes
    ----------
    store : str
        The store directory.
    host : str
        Address to bind; 127.0.0.1 (this machine only) unless told otherwise.
    port : int
        Port to listen on (0: any free port).
    fit : str, optional
        The fit live pages place runs on (a study name, STUDY/FIT_ID or a fit directory); without
        it, each study's own latest fit; a page can name another with ``?fit=``.
    interval : float
        Seconds between a live page's looks at the store.
    """

    store: str = "data"
    host: str = "127.0.0.1"
    port: int = 5006
    fit: str | None = None
    interval: float = 2.0

    def validate(self) -> None:
        from ..errors import UserError

        if not Path(self.store).is_dir():
            raise UserError(f"--store {self.store} is not a directory; pass the store latent collect wrote")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be between 0 and 65535, got {self.port}")
        if not (math.isfinite(self.interval) and 0.2 <= self.interval <= 3600):
            raise UserError(f"--interval must be between 0.2 and 3600 seconds, got {self.interval:g}")


def add_parser(sub) -> None:
    d = ServeConfig()
    p = sub.add_parser("serve", help="a local web app over the store: reports, comparisons, live studies",
                       description=DESCRIPTION)
    p.add_argument("--store", default=d.store, help=f"store directory (default: ./{d.store})")
    p.add_argument("--host", default=d.host,
                   help=f"address to bind (default {d.host}: this machine only; 0.0.0.0 exposes the store to "
                        "the network)")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port}; 0: any free port)")
    p.add_argument("--fit", default=None,
                   help="the fit live pages place runs on: a study name (its latest fit), STUDY/FIT_ID or a fit "
                        "directory (default: each study's own latest fit)")
    p.add_argument("--interval", type=float, default=d.interval,
                   help=f"seconds between a live page's looks at the store (default {d.interval:g})")
    p.add_argument("--open", action="store_true", help="open the front page in the default browser")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..errors import UserError

    try:
        import bokeh  # noqa: F401
    except ImportError:
        raise UserError("latent serve needs Bokeh: pip install 'latent-dynamics[serve]' (or -e \".[serve]\")")
    from latent.reports.serve import make_server

    cfg = ServeConfig(store=args.store, host=args.host, port=args.port, fit=args.fit, interval=args.interval)
    cfg.validate()
    if cfg.fit:  # a wrong --fit is one line now, not an error page later
        from ..artifacts import resolve_fit

        resolve_fit(cfg.fit, cfg.store)
    try:
        server = make_server(cfg)
    except OSError as exc:
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc}); pass another --port")
    server.start()
    port = server.port if cfg.port else _bound_port(server)
    url = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '') else cfg.host}:{port}/"
    print(f"serving {url}  (the store {cfg.store}, read only; Ctrl-C stops)", flush=True)
    if args.open:
        from .shared import open_in_browser

        open_in_browser(url)

    def stop(signum, frame):
        server.io_loop.add_callback_from_signal(server.io_loop.stop)

    signal.signal(signal.SIGTERM, stop)
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
    server.stop()
    print("stopped serving", file=sys.stderr)
    return 0


def _bound_port(server) -> int:
    """The port the OS chose for --port 0."""
    for sock in server._http._sockets.values():
        return int(sock.getsockname()[1])
    return 0
