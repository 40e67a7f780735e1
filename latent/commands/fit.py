"""``latent fit``: select a Gaussian HMM, decode runs, build the training map, regress convergence on states.

Fits the most recently collected study in the store unless --study names another (a name in the
store or any directory holding study.json and runs/seed-*.parquet). Writes
<study>/fits/<fit-id>/{model.json,paths.parquet,analysis.json}; see docs/fit.md.
"""

from __future__ import annotations

import logging
import sys


class _StderrHandler(logging.StreamHandler):
    """Shows the ``latent`` logger's warnings on stderr (added once)."""

    def __init__(self):
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("latent fit: %(levelname)s: %(message)s"))

    def emit(self, record):  # follow sys.stderr if it is replaced (pytest capsys)
        self.stream = sys.stderr
        super().emit(record)


def _int(text: str) -> int:
    import argparse

    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def add_parser(sub) -> None:
    p = sub.add_parser("fit", help="fit HMMs, decode runs, build the training map and detour regression",
                       description=__doc__)
    p.add_argument("--store", default="data", help="store directory (default: ./data)")
    p.add_argument("--study", default=None, help="study name in the store, or a path (default: most recent)")
    p.add_argument("--features", default=None,
                   help="comma-separated feature columns (default: the study's, i.e. the 14 reference columns)")
    p.add_argument("--first-n", type=_int, default=1000, help="checkpoints per run used (default 1000)")
    p.add_argument("--scaling", default="per_run", help="per_run (z-score each run, default) or global")
    p.add_argument("--max-states", type=_int, default=8, help="fit K = 1..MAX_STATES (default 8)")
    p.add_argument("--restarts", type=_int, default=5, help="random restarts per K (default 5)")
    p.add_argument("--n-iter", type=_int, default=32, help="EM iterations per restart (default 32)")
    p.add_argument("--covariance", default="full", help="full (default), diag, spherical or tied")
    p.add_argument("--criterion", default="bic", help="bic (default), aic or loglik, all on held-out runs")
    p.add_argument("--test-fraction", type=float, default=0.2, help="fraction of runs held out (default 0.2)")
    p.add_argument("--random-state", type=_int, default=0, help="seeds the split, restarts and bootstrap")
    p.add_argument("--metric", default=None, help="convergence metric column (default: the study's)")
    p.add_argument("--threshold", type=float, default=None, help="convergence threshold (default: the study's)")
    p.add_argument("--direction", default=None, help="above (metric > threshold) or below")
    p.add_argument("--nonconverged", default="exclude",
                   help="runs that never converge: exclude (default) from the regression, or censor "
                        "at their last step")
    p.add_argument("--n-boot", type=_int, default=1000, help="bootstrap resamples for intervals (default 1000)")
    p.add_argument("--jobs", type=_int, default=None, help="worker processes (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the fit directory")
    p.set_defaults(run=run)


def config_from_args(args):
    from ..fit import FitConfig

    features = None
    if args.features is not None:
        features = tuple(f.strip() for f in args.features.split(",") if f.strip())
    return FitConfig(
        features=features, first_n=args.first_n, scaling=args.scaling, max_states=args.max_states,
        restarts=args.restarts, n_iter=args.n_iter, covariance=args.covariance, criterion=args.criterion,
        random_state=args.random_state, test_fraction=args.test_fraction, metric=args.metric,
        threshold=args.threshold, direction=args.direction, nonconverged=args.nonconverged, n_boot=args.n_boot,
    )


def run(args) -> int:
    from ..fit import fit_study, write_fit
    from ..store import resolve_study

    logger = logging.getLogger("latent")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    if logger.level == logging.NOTSET or logger.level > logging.WARNING:
        logger.setLevel(logging.WARNING)

    config = config_from_args(args)
    study = resolve_study(args.store, args.study)
    result = fit_study(study, config, n_jobs=args.jobs, progress=not args.quiet)
    out = write_fit(study, result)
    if args.quiet:
        print(out)
        return 0
    print(f"study {study.name}: {len(result.features.seeds)} runs used, "
          f"{len(result.features.excluded)} excluded; features {','.join(result.features.features)}")
    for line in result.summary:
        print(line)
    print(f"wrote {out}")
    return 0
