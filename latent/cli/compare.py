"""``latent compare``: studies side by side, in one HTML page and a text table (docs/compare.md).

The command's ``--help`` text is :data:`DESCRIPTION` (plain text, no markup).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

from .shared import add_quiet, log_to_stderr, open_in_browser

DESCRIPTION = (
    "Put two or more studies side by side: K, detours and their stability, R², the trajectory dissimilarity, "
    "the training maps, and the convergence-time distributions (median, IQR, CV; Mann-Whitney U for location "
    "and Brown-Forsythe for spread, Holm-adjusted with more than two studies). Each study's fit is chosen by "
    "the same flags as latent fit (defaults: the study's own features and convergence rule): a fit with those "
    "settings already in <study>/fits/<fit-id>/ is reused unchanged, a missing one is fitted first and the "
    "command says so (--no-fit makes that an error). When the studies differ in size, K, R², dissimilarity and "
    "detours are also compared at the smallest study's size, each larger study refitted on --subsamples random "
    "subsamples of that many runs (--all-runs skips this). Writes <store>/comparisons/<A>-vs-<B>/<fit-id>/ "
    "(index.html, comparison.json, figures). See docs/compare.md."
)


def add_parser(sub) -> None:
    from ..equal_size import DEFAULT_SUBSAMPLES
    from ..settings import parse_int
    from .fit import add_fit_options

    p = sub.add_parser("compare", help="compare studies side by side (fits what is not fitted yet)",
                       description=DESCRIPTION)
    p.add_argument("studies", nargs="+", metavar="STUDY",
                   help="two or more study names in the store, or paths to study directories")
    p.add_argument("--store", default="data", help="store directory (default: ./data)")
    p.add_argument("--out", default=None,
                   help="output directory (default: <store>/comparisons/<A>-vs-<B>/<fit-id>)")
    p.add_argument("--no-fit", dest="no_fit", action="store_true",
                   help="never fit: a study without a fit for these settings is an error")
    p.add_argument("--open", action="store_true", help="open the page in the default browser, if there is one")
    add_quiet(p, "the page's path")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--subsamples", type=parse_int, default=DEFAULT_SUBSAMPLES, metavar="N",
                      help="when the studies differ in size, refit each larger one on N random subsamples of the "
                           "smallest one's size and compare K, R², dissimilarity and detours there (default "
                           f"{DEFAULT_SUBSAMPLES}; the refits are cached next to the fit)")
    size.add_argument("--all-runs", dest="all_runs", action="store_true",
                      help="compare the full studies only, whatever their sizes (no subsample refits)")
    fit_group = p.add_argument_group("fit settings (as for latent fit; they choose which fit is used)")
    add_fit_options(fit_group)
    fit_group.add_argument("--reference", action="store_true",
                           help="the reference's procedure (per-run scaling, one 80/20 split, mean BIC over "
                                "restarts, the paper's detour rule)")
    fit_group.add_argument("--jobs", type=parse_int, default=None,
                           help="worker processes for fits made here (default: all cores)")
    p.set_defaults(run=run)


def default_out_dir(store, summaries) -> Path:
    """``<store>/comparisons/<A>-vs-<B>[-vs-…]/<fit-id>``; one fit id when every study shares it,
    else ``mixed-<hash8>`` of the fit ids; long study lists are shortened with a hash."""
    names = "-vs-".join(s.name for s in summaries)
    if len(names) > 100:
        names = names[:80] + "-" + hashlib.sha256(names.encode()).hexdigest()[:8]
    ids = [s.fit_id for s in summaries]
    sub = ids[0] if len(set(ids)) == 1 else "mixed-" + hashlib.sha256("|".join(ids).encode()).hexdigest()[:8]
    return Path(store) / "comparisons" / names / sub


def run(args) -> int:
    import matplotlib

    matplotlib.use("Agg")

    from latent.reports.artifacts import load_fit
    from latent.reports.compare import check_out_dir, write_comparison

    from ..compare import compare_studies, ensure_fits, plan_fits, summarize_fit, text_table
    from ..equal_size import refit_subsamples
    from ..errors import UserError
    from ..store import resolve_study
    from .fit import config_from_args

    if len(args.studies) < 2:
        raise UserError(f"compare needs at least two studies, got one ({args.studies[0]}); "
                        "e.g. `latent compare modadd modadd-ln`")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    if not args.all_runs and args.subsamples < 2:
        raise UserError(f"--subsamples must be at least 2, got {args.subsamples} (--all-runs compares the full "
                        "studies without subsamples)")
    config = config_from_args(args)
    studies = [resolve_study(args.store, s) for s in args.studies]
    plans = plan_fits(studies, config)  # every check (names, duplicates, settings) before any fit
    if args.out:
        check_out_dir(args.out)

    bars = not args.quiet and sys.stderr.isatty()
    say = (lambda line: None) if args.quiet else print
    logger = logging.getLogger("latent")
    handler = log_to_stderr(logger, "compare")
    if logger.level == logging.NOTSET or logger.level > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        plans = ensure_fits(plans, allow_fit=not args.no_fit, n_jobs=args.jobs, progress=bars, say=say)
    finally:
        if handler is not None:
            logger.removeHandler(handler)

    fits, summaries = [], []
    for p in plans:
        fit = load_fit(args.store, p.study.root, p.fit_id)
        fits.append(fit)
        summaries.append(summarize_fit(p.study.name, fit.meta, fit.model, fit.analysis, fit_id=p.fit_id,
                                       root=str(p.study.root), fitted_now=p.fitted_now, study=p.study))
    subsamples = 0 if args.all_runs else args.subsamples
    spreads = []
    n = min(s.n_runs for s in summaries)
    if subsamples and any(s.n_runs > n for s in summaries):
        for p, s in zip(plans, summaries):
            if s.n_runs > n:
                spreads.append(refit_subsamples(p.study, p.config, p.fit_dir, p.fit_id, s.seeds, n, subsamples,
                                                n_jobs=args.jobs, progress=bars, allow_fit=not args.no_fit, say=say))
    else:
        subsamples = 0
    comparison = compare_studies(summaries, spreads, subsamples, alpha=plans[0].config.alpha)
    out_dir = Path(args.out) if args.out else default_out_dir(args.store, summaries)
    command = getattr(args, "command_line", None)
    path = write_comparison(comparison, fits, out_dir, command=command)
    if args.quiet:
        print(path)
        for note in comparison.notes:  # what the reader must know is a warning here
            print(f"latent compare: note: {note}", file=sys.stderr)
        if args.open:
            open_in_browser(path)
        return 0
    print()
    for line in text_table(comparison):
        print(line)
    for note in comparison.notes:
        print(f"note: {note}")
    print(f"wrote {path}")
    print(f"next: open {path} in a browser (or rerun with --open)")
    if args.open:
        open_in_browser(path)
    return 0
