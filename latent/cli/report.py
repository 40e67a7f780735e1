"""``latent report``: render a saved fit into one self-contained HTML file plus PNG/SVG figures.

Reads only what ``latent fit`` wrote (``fits/<fit-id>/``) and the study's run tables; it never
refits or retrains. Output: ``<store>/<study>/reports/<fit-id>/index.html``.
"""

from __future__ import annotations

import shlex
import sys
import time

from .shared import add_quiet, open_in_browser, plain


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write the HTML report of a fit", description=plain(__doc__))
    p.add_argument("--store", default="data", help="store directory (default: ./data)")
    p.add_argument("--study", default=None,
                   help="study name in the store or path to a study directory (default: most recent study)")
    p.add_argument("--fit", default=None, help="fit id under <study>/fits/ (default: the most recent fit)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated metrics for the trajectory figure (default: l2,train_acc,val_acc; "
                        "the most important feature is always added)")
    p.add_argument("--static", action="store_true",
                   help="write the page without its interactive view (no scripts at all); the view needs the serve "
                        "extra: pip install 'latent-dynamics[serve]'")
    p.add_argument("--open", action="store_true", help="open the report in the default browser, if there is one")
    add_quiet(p, "the page's path")
    p.set_defaults(run=run)


def run(args) -> int:
    import matplotlib

    matplotlib.use("Agg")  # headless: the report never needs a display

    from latent.reports.artifacts import load_fit
    from latent.reports.figures import DEFAULT_METRICS
    from latent.reports.html import write_report
    from latent.reports.interactive import available

    from ..errors import UserError

    t0 = time.perf_counter()
    metrics = DEFAULT_METRICS
    if args.metrics is not None:
        metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
        if not metrics:
            raise UserError("--metrics is empty; pass e.g. --metrics l2,val_acc")
    fit = load_fit(args.store, args.study, args.fit)
    unknown = [m for m in metrics if m not in fit.runs.columns]
    if args.metrics is not None and unknown:
        have = ", ".join(c for c in fit.runs.columns if c not in ("seed", "step", "epoch", "state"))
        raise UserError(f"unknown metric(s) {', '.join(unknown)} in --metrics; the run tables have: {have}")
    path = write_report(fit, report_command=getattr(args, "command_line", None) or _rebuild_command(args, fit),
                        metrics=metrics, interactive=not args.static)
    print(path)
    if not args.static and not available():
        print("note: the page has no interactive view: Bokeh is not installed (pip install 'latent-dynamics[serve]')",
              file=sys.stderr)
    if args.quiet:
        if args.open:
            open_in_browser(path)
        return 0
    print(f"rendered {len(fit.seeds)} runs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    # on stderr, so that stdout stays the page's path alone (for scripts)
    # placeholders are the metavars of each command's usage line, explained once
    print(f"next: latent predict --store {args.store} --fit {fit.study.name}/{fit.fit_id} RUN [RUN ...]   (new or "
          f"running runs on this map; RUN: a study, STUDY:SEED or a run table), or latent compare --store {args.store} "
          f"{fit.study.name} STUDY [STUDY ...]   (STUDY: another study)", file=sys.stderr)
    if args.open:
        open_in_browser(path)
    return 0


def _rebuild_command(args, fit) -> str:
    parts = ["latent", "report", "--store", str(args.store), "--study", fit.study.name, "--fit", fit.fit_id]
    if args.metrics:
        parts += ["--metrics", args.metrics]
    if args.static:
        parts.append("--static")
    return " ".join(shlex.quote(p) for p in parts)
