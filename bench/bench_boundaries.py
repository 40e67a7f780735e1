"""Does the discrete-transition test (``latent/boundaries.py``) see transitions that take a few checkpoints,
and does it stay quiet on continuous change? (issue 20)

The test asks, at every boundary of a fit, whether the run changes more abruptly there than at placebo
points inside the states. It first compared a quadratic in time with a quadratic plus a *step* at the
boundary. The ``realistic`` simulation family plants states whose transitions are straight ramps over 5
checkpoints, and the test said "no discrete transitions" on 80-100 % of its draws: this bench asks
whether that is the fits' boundaries or the test, and which transitions the test should look for.

Every task is one `latent fit` with its defaults (no resamples, no audit: neither changes the decoded
states) on a simulated draw or a real study of the store. At the fit's boundary test, every setting of
:data:`SETTINGS` is computed on the same decoded runs (``fit``); on simulated draws with states, also on
the *true* states, their means and covariances taken from the fit's scaled rows (``truth``: the test's
power when the boundaries are right). Data:

* ``standard`` (jumps in one checkpoint, independent noise) and ``realistic`` (5-checkpoint ramps, AR(1)
  noise, drift inside states, run offsets): states, so discrete transitions should be found;
* ``drift`` (a sigmoid of 9-30 checkpoints' width plus a slow trend, no states) and ``smooth`` (each
  feature along 1 − exp(−t/τ) with τ per run, AR(1) noise and offsets, ``bench_segment_k.smooth_draw``):
  continuous change, the negative controls; a draw with any discrete transition is a false call;
* ``study:NAME``: the default studies of the store.

    python bench/bench_boundaries.py --draws 10 --workers 2
    python bench/bench_boundaries.py --families "" --studies "modadd;parity;mnist;modadd-contrast;modadd-contrast-ln"
    python bench/bench_boundaries.py --families "" --studies "modadd-contrast/progress"

Raw lines: bench/results/boundaries.jsonl; the ``boundaries`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import run_records, write_block  # noqa: E402

RAW = Path(__file__).with_name("results") / "boundaries.jsonl"
#: name: (window half-width M, ramp widths, shift of the transition's middle); the first is the test as it
#: was, "ramps 0-8, ±3, M 10" the default since (latent.boundaries.WINDOW, RAMPS, SHIFT)
SETTINGS = {
    "step (before)": (8, (0,), 0),
    "ramps 0-6, ±2": (8, (0, 3, 6), 2),
    "ramps 0-6, ±3": (8, (0, 2, 4, 6), 3),
    "ramps 0-6, ±3, M 10": (10, (0, 3, 6), 3),
    "ramps 0-8, ±3, M 10": (10, (0, 2, 4, 6, 8), 3),
    "ramps 0-9, ±4, M 12": (12, (0, 3, 6, 9), 4),
}
SIMULATED = (("standard", "medium"), ("realistic", "medium"), ("realistic", "easy"), ("drift", "medium"),
             ("smooth", "medium"))


def _summary(out: dict) -> dict:
    rows = out["transitions"]
    return {"discrete": out["discrete_transitions"], "judged": out["judged_transitions"],
            "jumps": int(sum(r["jumps"] for r in rows)), "boundaries": int(sum(r["boundaries"] for r in rows))}


def _all_settings(runs_z, runs_path, means, covars) -> dict:
    from latent.boundaries import boundary_sharpness

    return {name: _summary(boundary_sharpness(runs_z, runs_path, means, covars, window=m, ramps=r, shift=s))
            for name, (m, r, s) in SETTINGS.items()}


def _smooth_table(i: int) -> pd.DataFrame:
    """``bench_segment_k.smooth_draw(i)`` as a run table; ``val_acc`` rises linearly to 1 at 60 % of the run
    (every run converges; convergence does not enter the boundary test)."""
    from bench_segment_k import SMOOTH_D, SMOOTH_RUNS, SMOOTH_T, smooth_draw

    from latent.simulate import feature_names

    X = smooth_draw(i)
    t = np.tile(np.arange(SMOOTH_T), SMOOTH_RUNS)
    table = pd.DataFrame(X, columns=feature_names(SMOOTH_D))
    table.insert(0, "seed", np.repeat(np.arange(SMOOTH_RUNS), SMOOTH_T))
    table.insert(1, "step", t)
    table.insert(2, "epoch", t)
    table["val_acc"] = np.minimum(t / (0.6 * SMOOTH_T), 1.0)
    return table


def one(task: tuple) -> dict:
    """One fit of a draw (``family, level, i``) or a study (``"study", name, store``): every setting on its
    decoded runs, and on the true states where there are any."""
    import latent.fit as fit_module
    from latent.fit import FitConfig, fit_study
    from latent.simulate import random_config, simulate, write_study
    from latent.store import Study

    logging.getLogger("latent").setLevel(logging.ERROR)
    seen = {}
    original = fit_module.boundary_sharpness

    def spy(runs_z, runs_path, means, covars):
        seen["fit"] = _all_settings(runs_z, runs_path, means, covars)
        seen["z"] = runs_z
        return original(runs_z, runs_path, means, covars)

    fit_module.boundary_sharpness = spy
    t0 = time.perf_counter()
    truth = None
    config = FitConfig(resamples=0, audit=False)
    try:
        if task[0] == "study":  # NAME or NAME/FEATURES (`latent fit --features FEATURES`)
            name, _, features = task[1].partition("/")
            if features:
                config = FitConfig(resamples=0, audit=False, features=tuple(features.split(",")))
            result = fit_study(Study(Path(task[2]) / name), config, n_jobs=1)
        else:
            family, level, i = task
            if family == "smooth":
                table = _smooth_table(i)
            else:
                table, truth = simulate(random_config(family, level, i))
            with tempfile.TemporaryDirectory() as tmp:
                result = fit_study(Study(write_study(Path(tmp) / "sim", table, truth)), config, n_jobs=1)
    finally:
        fit_module.boundary_sharpness = original
    rec = {"key": list(task[:2]) if task[0] == "study" else list(task), "k": int(result.model["n_states"]),
           "true_k": None if truth is None else truth.n_states, "fit": seen["fit"], "truth": None}
    if truth is not None and truth.paths:
        seeds = sorted(truth.paths)  # the fit's runs are the study's seeds in order
        paths = [np.asarray(truth.paths[s]) for s in seeds]
        Z, P = np.concatenate(seen["z"]), np.concatenate(paths)
        present = [k for k in range(truth.n_states) if (P == k).sum() > Z.shape[1] + 1]
        means = np.array([Z[P == k].mean(0) if k in present else np.zeros(Z.shape[1]) for k in range(truth.n_states)])
        # a state too thin for its own covariance borrows the others' mean (which is what the test
        # uses), so it neither skews that mean nor is dropped from the boundaries
        own = {k: np.cov(Z[P == k].T) for k in present}
        pooled = np.mean(list(own.values()), axis=0) if own else np.eye(Z.shape[1])
        covars = np.array([own.get(k, pooled) for k in range(truth.n_states)])
        rec["truth"] = _all_settings(seen["z"], paths, means, covars)
    rec["seconds"] = time.perf_counter() - t0
    return rec


def _shown(rec: dict) -> dict:
    return {"key": rec["key"], "k": rec["k"], "true_k": rec["true_k"], "seconds": round(rec["seconds"], 1),
            **{f"fit {n}": f"{v['discrete']}/{v['judged']}" for n, v in rec["fit"].items()}}


def table(records: list[dict]) -> str:
    """One row per data, draws (in tens: 0-9 chose the default, 10-19 did not), boundaries' source and setting."""
    latest = {}
    for r in records:
        latest[tuple(r["key"])] = r
    groups: dict[tuple, list] = {}
    for key, r in latest.items():
        group = (f"study:{key[1]}", 0) if key[0] == "study" else (f"{key[0]} {key[1]}", key[2] // 10)
        groups.setdefault(group, []).append(r)
    head = ("| data | draws | boundaries from | setting | draws with a discrete transition (of those with any "
            "judged) | transitions discrete (of judged) | boundaries that jump |\n|---|---|---|---|---|---|---|\n")
    lines = []
    order = [f"{f} {lv}" for f, lv in SIMULATED] + sorted({g for g, _ in groups if g.startswith("study:")})
    for data, block in sorted(groups, key=lambda g: (order.index(g[0]) if g[0] in order else len(order), g)):
        recs = sorted(groups[(data, block)], key=lambda r: r["key"])
        first, last = (recs[0]["key"][2], recs[-1]["key"][2]) if not data.startswith("study:") else (0, 0)
        draws = ("–" if data.startswith("study:") else f"{first}-{last}"
                 + (f" ({len(recs)} of them)" if len(recs) != last - first + 1 else ""))
        for source in ("fit", "truth"):
            if not all(r[source] for r in recs):
                continue
            for name in SETTINGS:
                vals = [r[source][name] for r in recs if name in r[source]]
                if not vals:
                    continue
                judged = [v for v in vals if v["judged"]]
                n_b = sum(v["boundaries"] for v in vals)
                share = f"{sum(v['jumps'] for v in vals) / n_b:.0%} of {n_b}" if n_b else "–"
                lines.append(f"| {data} | {draws} | {source} | {name} | {sum(v['discrete'] > 0 for v in judged)} of "
                             f"{len(judged)} | {sum(v['discrete'] for v in vals)} of {sum(v['judged'] for v in vals)} "
                             f"| {share} |")
    return head + "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, default=10, help="draws of each simulated family (default 10)")
    ap.add_argument("--first", type=int, default=0, help="first draw (default 0; 10: draws the setting was not "
                    "chosen on)")
    ap.add_argument("--families", default=",".join(f"{f}:{lv}" for f, lv in SIMULATED),
                    help="family:level pairs (default all)")
    ap.add_argument("--studies", default="", help="studies of the store, separated by ';' (NAME/FEATURES: fitted "
                    "with --features FEATURES; default none)")
    ap.add_argument("--store", default="data")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print the table, leave bench/RESULTS.md alone")
    ap.add_argument("--table", action="store_true", help="only rebuild the table from the stored records")
    args = ap.parse_args(argv)
    tasks = []
    for pair in filter(None, args.families.split(",")):
        family, level = pair.split(":")
        tasks += [(family, level, i) for i in range(args.first, args.first + args.draws)]
    tasks += [("study", name, args.store) for name in filter(None, args.studies.split(";"))]
    missing = [t[1] for t in tasks if t[0] == "study" and not (Path(args.store) / t[1].partition("/")[0]
                                                                / "study.json").is_file()]
    if missing and not args.table:  # one line before any worker starts, not a traceback
        ap.error(f"no study {', '.join(missing)} in {args.store} (collect it first, or pass --store)")
    if not args.table:
        run_records(RAW, one, tasks, args.workers, _shown)
    import json

    records = [json.loads(line) for line in RAW.read_text().splitlines() if line.strip()]
    body = table(records)
    body += ("\n\nEach row: `latent fit` with its defaults (no resamples or audit) on each draw or study, and the "
             "boundary test of every setting on its decoded runs (`fit`) or on the true states (`truth`, the "
             "planted states' means and covariances from the fit's scaled rows). A *setting*: the transitions "
             "the test looks for beside a quadratic in time over 2M checkpoints (M 8 unless said): `step` a jump "
             "from one checkpoint to the next at the boundary (the test until 2026-12-08), `ramps 0-8, ±3, M 10` "
             "the best of a step and straight ramps over 2, 4, 6 or 8 checkpoints whose middle lies within 3 "
             "checkpoints of the boundary, over 20 checkpoints (the default since), the same search at the "
             "boundary and at every placebo point. A boundary jumps when its statistic is above the placebo "
             "points' 95th percentile; a transition is discrete when half of its boundaries (at least 5) jump. "
             "`drift` and `smooth` have no states: every discrete transition there is a false call. The default "
             "was chosen on draws 0-9: of the settings with no false call on the two continuous controls, the one "
             "with discrete transitions in the most `realistic` draws (`fit`); draws 10-19 were run after the "
             "choice, to check it on draws it never saw. `study:NAME/FEATURES`: the "
             "study fitted with `--features FEATURES`. Raw: bench/results/boundaries.jsonl. Commands: `python "
             "bench/bench_boundaries.py --draws 10 --workers 2`, then `--first 10`; the studies with `--families "
             "\"\" --studies \"modadd;parity;mnist;modadd-contrast;modadd-contrast-ln\"` after they are collected "
             "(`latent collect --task T --seeds 40`; the contrast pair with `--task modadd --preset contrast`, "
             "with and without `--layernorm`) and `--studies modadd-contrast/progress`.")
    print(body)
    if not args.no_write:
        write_block("boundaries", body, title="Discrete transitions: steps or ramps (`bench/bench_boundaries.py`)",
                    stamp_label="Tabled from the stored records" if args.table else "Measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
