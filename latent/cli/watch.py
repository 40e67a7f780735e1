"""``latent watch``: follow a study while it is collected and forecast each run (docs/predict.md).

The command's ``--help`` text is :data:`DESCRIPTION` (plain text, no markup).
"""

from __future__ import annotations

import sys
import time

from .predict import add_map_options, load_map

DESCRIPTION = (
    "Follow a study while latent collect (or a Recorder) writes it, and at each new checkpoint print a "
    "compact table of the runs that moved: current state, detour risk, convergence forecast. A warning line "
    "is printed the first time a run enters a detour state. The fit usually comes from an earlier study of "
    "the same task and config (a mismatch is named). Stops when every run is done, or on Ctrl-C. Example: "
    "latent watch --fit modadd --study modadd-more. See docs/predict.md."
)


def add_parser(sub) -> None:
    p = sub.add_parser("watch", help="follow a study being collected: live states, detour warnings, forecasts",
                       description=DESCRIPTION)
    add_map_options(p)
    p.add_argument("--study", required=True, help="the study to follow (name in the store, or a path)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between looks (default 5)")
    p.add_argument("--once", action="store_true", help="look once, print, and exit")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many seconds (default: never)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..errors import UserError
    from ..predict import Watcher
    from ..store import resolve_study

    if args.interval <= 0:
        raise UserError(f"--interval must be positive, got {args.interval}")
    cfg, fmap = load_map(args)
    study = resolve_study(args.store, args.study)
    watcher = Watcher(fmap, study, cfg)
    for line in watcher.header():
        print(line)
    began = time.monotonic()
    try:
        while True:
            lines, finished = watcher.poll()
            for line in lines:
                print(line)
            sys.stdout.flush()
            if args.once or finished:
                break
            if args.timeout is not None and time.monotonic() - began >= args.timeout:
                print(f"stopped after {args.timeout:g} s; rerun the command to go on watching")
                break
            time.sleep(args.interval)
    except KeyboardInterrupt:
        print("stopped watching (the collection is not affected)")
        return 0
    if finished:
        print(f"every run of {study.name} is done")
        print(f"next: latent fit --store {args.store} --study {study.name}   (or latent predict --store {args.store} "
              f"--fit {args.fit} {study.name})")
    return 0
