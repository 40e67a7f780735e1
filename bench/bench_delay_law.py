"""The convergence forecast against published laws of grokking delay, on real studies.

For each study, its saved default fit is backtested (`latent.predict.backtest`, each run left
out of its own analogs and of the norm law's levels): every run is cut after 5 %, 10 %, ...
60 % of its checkpoints and, if not converged yet, forecast by

- the forecast (`latent predict`: the run's state and its analogs),
- the baseline (the fitted runs not converged by the same step; the state ignored),
- the norm law (the log weight norm's first passage to the level where runs generalise, at the
  run's recent drift; Liu et al. 2023, Varma et al. 2023, Lyu et al. 2024),
- the logit law (the convergence metric on the logit scale, extrapolated to the threshold).

Scored on the same cuts: interval coverage (nominal 80 %), median width, and the median
absolute error of the point forecast over the runs that converge. Then, pooled over the 10-50 %
cuts, the laws with drift windows of 5, 10, 20 (default) and 50 % of the checkpoints seen, so
that a law does not lose for one unlucky setting.

    python bench/bench_delay_law.py                         # data/modadd and data/contrast-f30, ~1 min
    python bench/bench_delay_law.py --study modadd:FIT_ID   # another study or fit

Writes the ``delay-law`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_block  # noqa: E402

from latent.delay_law import LAW_TEXT, LogitLaw, NormLaw  # noqa: E402
from latent.predict import FittedMap, _converged_at, _law_covered, backtest  # noqa: E402
from latent.store import resolve_study  # noqa: E402

CUTS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
POOLED = (0.1, 0.2, 0.3, 0.4, 0.5)
WINDOWS = (0.05, 0.1, 0.2, 0.5)
DEFAULT = (("modadd", "full-loglik-b23275b5"), ("contrast-f30", "full-loglik-7feat-6b3ea1f6"))


def _n(x, unit="") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:,.0f}{unit}"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def pooled(rows, prefix: str) -> tuple[float | None, float | None, int]:
    """Coverage and median absolute error of one forecaster over the pooled cuts."""
    cov = [r[f"{prefix}covered"] for r in rows if r.get(f"{prefix}covered") is not None]
    errs = []
    for r in rows:
        if r.get(f"{prefix}covered") is None or r["true"] is None or not math.isfinite(r["true"]):
            continue
        m = r.get(f"{prefix}median")
        errs.append(math.inf if m is None or not math.isfinite(m) else abs(m - r["true"]))
    return (float(np.mean(cov)) if cov else None), (float(np.median(errs)) if errs else None), len(cov)


def windows(study, fmap, table) -> list[tuple]:
    """Pooled coverage and error of each law at each drift window (the laws alone, same cuts)."""
    out = []
    times = {s: a.conv for s, a in fmap.analogs.items()}
    for w in WINDOWS:
        nl, ll = NormLaw(window=w), LogitLaw(window=w)
        levels = nl.levels(table, times)
        rows = {"norm": [], "logit": []}
        for seed, run in table.groupby("seed", sort=True):
            run = run.sort_values("step", kind="stable").reset_index(drop=True).head(fmap.first_n)
            true = _converged_at(fmap, run)
            t = math.inf if true is None else true
            for f in POOLED:
                part = run.iloc[: max(1, int(round(f * len(run))))]
                if _converged_at(fmap, part) is not None:
                    continue
                for name, fc in (("norm", nl.forecast(part, levels, 0.8, exclude=int(seed))),
                                 ("logit", ll.forecast(part, fmap.metric, fmap.threshold, 0.8))):
                    rows[name].append({"covered": _law_covered(fc, t), "median": fc.get("median"), "true": t})
        out.append((w, *(pooled(rows[k], "") for k in ("norm", "logit"))))
    return out


def study_block(name: str, fit: str) -> tuple[str, dict]:
    study = resolve_study("data", name)
    table, _ = study.read_finished_runs()
    fmap = FittedMap(study.fits_dir / fit)
    t0 = time.perf_counter()
    bt = backtest(fmap, table, CUTS)
    unit = fmap.step_unit
    lines = [f"**{name}** (`latent fit` {fit}, K = {fmap.k}; {len(fmap.analogs)} runs; times in {unit}s)", "",
             "| seen | runs | forecast: covered, width, error | without the state | norm law | logit law |",
             "|---|---|---|---|---|---|"]
    for s in bt["summary"]:
        if not s["n"]:
            continue
        cell = lambda p: (f"{_pct(s[p + 'coverage'])}, {_n(s[p + 'median_width'])}, "  # noqa: E731
                          f"{_n(s[p + 'median_error'])}")
        lines.append(f"| {100 * s['fraction']:.0f} % | {s['n']} | {cell('')} | "
                     f"{_pct(s['baseline_coverage'])}, {_n(s['baseline_median_width'])}, "
                     f"{_n(s['baseline_median_error'])} | {cell('norm_')} | {cell('logit_')} |")
    rows = [r for r in bt["rows"] if any(math.isclose(r["fraction"], f) for f in POOLED)]
    for r in rows:
        r["true"] = math.inf if r["true"] is None else r["true"]
        r["baseline_covered"] = r.get("baseline_covered")
    summary = {k: pooled(rows, p) for k, p in (("forecast", ""), ("baseline", "baseline_"), ("norm", "norm_"),
                                               ("logit", "logit_"))}
    lines += ["", f"Pooled over the {', '.join(f'{100 * f:.0f}' for f in POOLED)} % cuts (coverage, median error): "
              + "; ".join(f"{k} {_pct(c)}, {_n(e)} (n = {n})" for k, (c, e, n) in summary.items()) + ".", ""]
    lines += ["| drift window | norm law: covered, error | logit law: covered, error |", "|---|---|---|"]
    for w, (nc, ne, _), (lc, le, _) in windows(study, fmap, table):
        lines.append(f"| {100 * w:.0f} % of the checkpoints seen{' (default)' if w == 0.2 else ''} | "
                     f"{_pct(nc)}, {_n(ne)} | {_pct(lc)}, {_n(le)} |")
    levels = np.array(list(NormLaw().levels(table, {s: a.conv for s, a in fmap.analogs.items()}).values()))
    if len(levels):
        lines.append(f"\nThe norm law's premise: the {len(levels)} converging runs converge at l2 = "
                     f"{math.exp(np.median(levels)):.3g} (median), sd of log l2 {levels.std(ddof=1):.3f} "
                     f"(about {100 * levels.std(ddof=1):.0f} % of l2).")
    lines.append(f"\n({time.perf_counter() - t0:.0f} s)")
    return "\n".join(lines), summary


def verdict(name: str, summary: dict) -> str:
    """Which wins on this study, from the pooled numbers: calibration first, then the point."""
    fc_cov, fc_err, _ = summary["forecast"]
    parts = []
    for law in ("norm", "logit"):
        cov, err, _ = summary[law]
        if cov is None:
            parts.append(f"the {law} law forecasts nothing")
            continue
        point = ("beats" if err is not None and fc_err is not None and err < fc_err else "does not beat")
        parts.append(f"the {law} law covers {_pct(cov)} against the forecast's {_pct(fc_cov)} and {point} its "
                     f"median error ({_n(err)} vs {_n(fc_err)})")
    return f"- **{name}**: " + "; ".join(parts) + "."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", action="append", default=None, metavar="NAME:FIT_ID",
                    help="a study in ./data and its fit (repeatable; default modadd and contrast-f30)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    studies = [tuple(s.split(":", 1)) for s in args.study] if args.study else DEFAULT
    blocks, verdicts = [], []
    for name, fit in studies:
        text, summary = study_block(name, fit)
        blocks.append(text)
        verdicts.append(verdict(name, summary))
    body = ("The forecast of `latent predict` against two published first-passage laws of grokking delay, on "
            "the same cuts of the same runs (`latent.predict.backtest`, leave one run out). Each cell: coverage of "
            "the 80 % interval, its median width, and the median absolute error of the point forecast over the "
            "runs that converge (– where half or more have no finite forecast).\n\n"
            + "".join(f"- {k} law: {v}\n" for k, v in LAW_TEXT.items()) + "\n"
            + "\n\n".join(blocks) + "\n\nWhich wins (pooled 10-50 % cuts, default windows):\n\n"
            + "\n".join(verdicts)
            + "\n\nCommand: `python bench/bench_delay_law.py`.")
    print(body)
    if not args.no_write:
        write_block("delay-law", body, title="Forecasts against published grokking-delay laws "
                                             "(`bench/bench_delay_law.py`)")


if __name__ == "__main__":
    main()
