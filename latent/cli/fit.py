"""``latent fit``: select a Gaussian HMM, decode runs, build the training map, regress convergence on states.

The command's ``--help`` text is :data:`DESCRIPTION` (plain text, no markup).
"""

from __future__ import annotations

import logging
import sys

from .shared import add_dask_options, add_quiet, run_logging_to_stderr


DESCRIPTION = (
    "Select a Gaussian HMM, decode every run, build the training map, say what each state means, find the "
    "detour states and regress convergence on the time spent in each state. Fits the most recently collected "
    "study in the store unless --study names another (a name in the store, or any directory holding study.json "
    "and runs/seed-*.parquet). Writes <study>/fits/<fit-id>/ (model.json, paths.parquet, analysis.json); the "
    "fit id names the settings that differ from the defaults. See docs/fit.md."
)


from ..settings import parse_int  # noqa: E402 - the --jobs parser


def add_parser(sub) -> None:
    p = sub.add_parser("fit", help="fit HMMs, decode runs, build the training map and detour regression",
                       description=DESCRIPTION)
    p.add_argument("--store", default="data", help="store directory (default: ./data)")
    p.add_argument("--study", default=None, help="study name in the store, or a path (default: most recent)")
    add_fit_options(p)
    p.add_argument("--reference", action="store_true",
                   help="the reference's procedure: per-run scaling, one 80/20 split, mean BIC over 5 restarts, "
                        "the paper's detour rule (other flags still override)")
    p.add_argument("--jobs", type=parse_int, default=None, help="worker processes (default: all cores)")
    add_quiet(p, "the fit directory")
    add_dask_options(p, "run the restarts and resamples on this Dask scheduler (tcp://host:8786) instead of "
                        "--jobs local processes; same results (docs/cluster.md)", "fit")
    p.set_defaults(run=run)


def add_fit_options(group) -> None:
    """The FitConfig flags that `fit` and `compare` share (compare uses them to pick its fits),
    generated from FitConfig's field declarations (latent.settings); every default is FitConfig's,
    shown in --help."""
    from ..fit import FitConfig
    from ..settings import add_options

    add_options(group, FitConfig)


def config_from_args(args):
    """The FitConfig the flags ask for (flags not given keep FitConfig's or the study's defaults)."""
    from ..fit import FitConfig
    from ..settings import from_args

    kwargs = from_args(args, FitConfig)
    return FitConfig.reference(**kwargs) if args.reference else FitConfig(**kwargs)


def run(args) -> int:
    return run_logging_to_stderr(logging.getLogger("latent"), "fit", _run, args)


def _run(args) -> int:
    import numpy as np

    from ..cluster import fit_pool
    from ..features import THINNED_COLUMNS
    from ..fit import fit_study, write_fit
    from ..store import resolve_study

    logger = logging.getLogger("latent")
    if logger.level == logging.NOTSET or logger.level > logging.WARNING:
        logger.setLevel(logging.WARNING)

    config = config_from_args(args)
    study = resolve_study(args.store, args.study)
    with fit_pool(args.scheduler, args.cluster):  # neither: the local pool, and dask is never imported
        # bars only on a terminal: in a log file each redraw would be a line of its own
        result = fit_study(study, config, n_jobs=args.jobs, progress=not args.quiet and sys.stderr.isatty())
    out = write_fit(study, result)
    if args.quiet:
        print(out)
        return 0
    print(f"study {study.name}: {len(result.features.seeds)} runs used, "
          f"{len(result.features.excluded)} excluded; features {','.join(result.features.features)}")
    thinned = [f for f in result.features.features if f in THINNED_COLUMNS]
    if thinned:
        print(f"{', '.join(thinned)} is measured at thinned checkpoints only: the fit uses those, a median "
              f"{int(np.median(result.features.lengths))} per run (latent collect --llc every=N)")
    for line in result.summary:
        print(line)
    t = result.timings
    audit = t.get("audit", 0.0)
    print(f"wrote {out} ({t['total']:.1f} s: model selection {t['selection']:.1f} s, "
          f"stability {t['stability']:.1f} s, audit {audit:.1f} s, "
          f"the rest {t['total'] - t['selection'] - t['stability'] - audit:.1f} s)")
    print(f"next: {next_command(args, study, result.fit_id)}")
    return 0


def next_command(args, study, fit_id: str) -> str:
    """The ``latent report`` command that draws this fit (printed as the last line)."""
    import shlex
    from pathlib import Path

    parts = ["latent", "report"]
    in_store = study.root.parent.resolve() == Path(args.store).resolve()
    if in_store and str(args.store) != "data":
        parts += ["--store", str(args.store)]
    parts += ["--study", study.name if in_store else str(study.root), "--fit", fit_id]
    return " ".join(shlex.quote(p) for p in parts)
