"""``latent predict``: place runs that were not in a fit on its training map (docs/predict.md).

The command's ``--help`` text is :data:`DESCRIPTION` (plain text, no markup).
"""

from __future__ import annotations

import json
import sys

DESCRIPTION = (
    "Place new or still-running runs on a fitted training map. For each run: its current state and that "
    "state's posterior probability (the HMM's forward pass over the checkpoints seen so far), the states it "
    "has visited, the probability of entering each detour state before the fit's horizon, and a forecast of "
    "its convergence step with an interval (from the fit's runs that were in the same state for as long, "
    "and had not converged yet). RUN is a study (all its runs, finished or not), STUDY:SEED, or a run table "
    "(.parquet or .csv). Example: latent predict --fit modadd modadd-new. See docs/predict.md."
)


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="place new or running runs on a fitted map: state, detour risk, forecast",
                       description=DESCRIPTION)
    p.add_argument("runs", nargs="+", metavar="RUN", help="a study, STUDY:SEED, or a .parquet/.csv run table")
    add_map_options(p)
    p.add_argument("--json", action="store_true", help="print the predictions as JSON (one object per run)")
    p.set_defaults(run=run)


def add_map_options(p) -> None:
    """``--fit``, ``--store``, ``--level``, ``--risk``: shared by latent predict and latent watch."""
    p.add_argument("--fit", required=True,
                   help="the fit: a study name (its latest fit), STUDY/FIT_ID, or a fit directory")
    p.add_argument("--store", default="data", help="store directory (default: ./data)")
    p.add_argument("--level", type=float, default=0.8, help="coverage of the forecast interval (default 0.8)")
    p.add_argument("--risk", choices=("hmm", "analogs"), default="hmm",
                   help="detour risk from the fitted transition matrix (default) or from aligned analog runs")


def load_map(args):
    """The checked :class:`PredictConfig` and the :class:`FittedMap` the options name."""
    from ..artifacts import resolve_fit
    from ..predict import FittedMap, PredictConfig

    cfg = PredictConfig(level=args.level, risk=args.risk)
    cfg.validate()
    return cfg, FittedMap(resolve_fit(args.fit, args.store))


def run(args) -> int:
    from ..predict import detour_line, predict_run, read_run_sources, table_lines

    cfg, fmap = load_map(args)
    runs = read_run_sources(args.runs, args.store)
    results = {label: predict_run(fmap, run, cfg) for label, run in runs.items()}
    if args.json:
        json.dump({"fit": f"{fmap.study}/{fmap.fit_id}", "runs": results}, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    detours = ", ".join(str(d) for d in fmap.detours) or "none"
    print(f"fit {fmap.study}/{fmap.fit_id}: K = {fmap.k}, detour states: {detours}; {len(results)} run(s)")
    for line in table_lines(fmap, results):
        print(line)
    for label, r in results.items():
        line = detour_line(fmap, label, r)
        if line:
            print(line)
        for w in r["warnings"]:
            print(f"note: {label}: {w}")
    print("risk d: probability of entering detour state d before the fitted runs' horizon; "
          "convergence: median forecast [interval] in " + fmap.step_unit + "s; without the state: the same from "
          "every fitted run not converged by that step (a forecast is worth its state only when it is narrower: "
          "'(no sharper)' marks one that is not)")
    print(f"next: latent watch --store {args.store} --fit {args.fit} --study STUDY   (STUDY: a study being "
          "collected; follows it as it runs)")
    return 0
