"""``latent fit``: select a Gaussian HMM, decode runs, build the training map, regress convergence on states.

The command's ``--help`` text is :data:`DESCRIPTION` (plain text, no markup).
"""

from __future__ import annotations

import logging
import sys

from . import add_dask_options, add_quiet, log_to_stderr


DESCRIPTION = (
    "Select a Gaussian HMM, decode every run, build the training map, say what each state means, find the "
    "detour states and regress convergence on the time spent in each state. Fits the most recently collected "
    "study in the store unless --study names another (a name in the store, or any directory holding study.json "
    "and runs/seed-*.parquet). Writes <study>/fits/<fit-id>/ (model.json, paths.parquet, analysis.json); the "
    "fit id names the settings that differ from the defaults. See docs/fit.md."
)


def _int(text: str) -> int:
    import argparse

    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    import argparse

    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


#: (flag, FitConfig field, type, help); every default comes from FitConfig, shown in --help
OPTIONS = (
    ("--features", "features", str, "comma-separated feature columns or groups: weights (the 14 reference "
                                     "statistics), progress (Fourier progress measures), function (function-space "
                                     "observables), losses, all (every group but losses) (default: the study's, "
                                     "i.e. the 14 reference columns)"),
    ("--first-n", "first_n", _int, "checkpoints per run used"),
    ("--scaling", "scaling", str, "global (one z-scoring, from training runs only) or per_run (the reference)"),
    ("--max-states", "max_states", _int, "fit K = 1..MAX_STATES"),
    ("--restarts", "restarts", _int, "random restarts per K (per fold)"),
    ("--n-iter", "n_iter", _int, "EM iterations per restart"),
    ("--family", "family", str, "state model: gaussian (a state is a place) or ar (a regime of change: "
                                 "z_t = a z_(t-1) + b + noise per state); see docs/fit.md"),
    ("--covariance", "covariance", str, "full, diag, spherical or tied (of the emission noise)"),
    ("--criterion", "criterion", str, "loglik (-2 held-out log-likelihood), bic or aic (with the penalty)"),
    ("--selection", "selection", str, "cv (k-fold over runs), split (one split, best restart) or reference"),
    ("--folds", "folds", _int, "folds of runs for --selection cv"),
    ("--init", "init", str, "where EM starts: segments (stretches of constant mean) or kmeans (the reference)"),
    ("--test-fraction", "test_fraction", _float, "fraction of runs held out for --selection split/reference"),
    ("--random-state", "random_state", _int, "seeds the folds, restarts, tests, bootstrap and resamples"),
    ("--metric", "metric", str, "convergence metric column (default: the study's)"),
    ("--threshold", "threshold", _float, "convergence threshold (default: the study's)"),
    ("--direction", "direction", str, "above (metric > threshold) or below"),
    ("--nonconverged", "nonconverged", str,
     "runs that never converge: restrict (count them at the last common step) or exclude"),
    ("--detour-rule", "detour_rule", str,
     "delay (visitors converge significantly later) or paper (optional state, positive coefficient)"),
    ("--min-runs", "min_runs", _int, "fewest visitors and skippers for a state's delay to be estimated"),
    ("--alpha", "alpha", _float, "family-wise error rate of the detour tests"),
    ("--n-boot", "n_boot", _int, "bootstrap resamples for the regression intervals"),
    ("--resamples", "resamples", _int, "refits on resampled runs for stability (0 skips them)"),
)


def add_parser(sub) -> None:
    from ..fit import FitConfig

    defaults = FitConfig()
    p = sub.add_parser("fit", help="fit HMMs, decode runs, build the training map and detour regression",
                       description=DESCRIPTION)
    p.add_argument("--store", default="data", help="store directory (default: ./data)")
    p.add_argument("--study", default=None, help="study name in the store, or a path (default: most recent)")
    add_fit_options(p, defaults)
    p.add_argument("--reference", action="store_true",
                   help="the reference's procedure: per-run scaling, one 80/20 split, mean BIC over 5 restarts, "
                        "the paper's detour rule (other flags still override)")
    p.add_argument("--jobs", type=_int, default=None, help="worker processes (default: all cores)")
    add_quiet(p, "the fit directory")
    add_dask_options(p, "run the restarts and resamples on this Dask scheduler (tcp://host:8786) instead of "
                        "--jobs local processes; same results (docs/cluster.md)", "fit")
    p.set_defaults(run=run)


def add_fit_options(group, defaults) -> None:
    """The FitConfig flags that `fit` and `compare` share (compare uses them to pick its fits)."""
    for flag, name, kind, text in OPTIONS:
        default = getattr(defaults, name)
        shown = f" (default {default})" if default is not None and name != "features" else ""
        group.add_argument(flag, dest=name, type=kind, default=None, help=text + shown)
    group.add_argument("--no-one-se", dest="one_se", action="store_false", default=None,
                       help="--selection cv: take the best K, not the smallest within one standard error")
    group.add_argument("--allow-partial", dest="allow_partial", action="store_true", default=None,
                       help="fit unfinished runs and runs shorter than the others (refused by default)")
    group.add_argument("--no-audit", dest="audit", action="store_false", default=None,
                       help="skip the robustness audit (alternative fits: K-1, K+1, other families, feature "
                            "groups dropped; change points)")


def config_from_args(args):
    from ..fit import FitConfig

    kwargs = {}
    for _, name, _, _ in OPTIONS:
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    for name in ("one_se", "allow_partial", "audit"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    if "features" in kwargs:
        kwargs["features"] = tuple(f.strip() for f in kwargs["features"].split(",") if f.strip())
    return FitConfig.reference(**kwargs) if args.reference else FitConfig(**kwargs)


def run(args) -> int:
    import numpy as np

    from ..cluster import fit_pool
    from ..features import THINNED_COLUMNS
    from ..fit import fit_study, write_fit
    from ..store import resolve_study

    logger = logging.getLogger("latent")
    log_to_stderr(logger, "fit")
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
