"""Which part of "realistic" breaks a state model: recovery by autocorrelation and offset.

The ``realistic`` simulation family (:mod:`latent.simulate`) draws, per study, an AR(1)
autocorrelation between 0.9 and 0.999 and a per-run offset sd between 0.3 and 3 within-state sds,
and on it every family gets K right in at most 10 % of draws (bench/RESULTS.md
``recovery-realistic``). This script holds the random structure of draw i fixed and sets the two
knobs on a grid, so the table says which knob does the damage: the K the fit chooses against the
true K, and the planted detours it finds, per (autocorrelation, offset) cell and state family.

Raw rows go to ``bench/results/realistic-strata.jsonl`` (a row already there is not run again);
the table is the ``realistic-strata`` block of bench/RESULTS.md.

    python bench/bench_realistic_strata.py                              # gaussian, 3 draws per cell
    python bench/bench_realistic_strata.py --families gaussian,ar --draws 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_block  # noqa: E402

from latent.fit import FitConfig, fit_study  # noqa: E402
from latent.simulate import random_config, score, simulate, write_study  # noqa: E402
from latent.store import Study  # noqa: E402

RAW = Path(__file__).with_name("results") / "realistic-strata.jsonl"
AUTOCORRELATIONS = (0.9, 0.99)
OFFSETS = (0.3, 1.0, 3.0)


def run_one(task: tuple) -> dict:
    family, ar, offset, i = task
    cfg = replace(random_config("realistic", "medium", i), ar=ar, offset=offset)
    table, truth = simulate(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        study = Study(write_study(Path(tmp) / "sim", table, truth))
        t0 = time.perf_counter()
        result = fit_study(study, FitConfig(resamples=0, n_boot=200, audit=False, family=family), n_jobs=1)
        seconds = time.perf_counter() - t0
    s = score(truth, result.paths, result.analysis)
    return {"key": list(task), "K_true": truth.n_states, "K": int(result.selector.n_states_),
            "fold_choice": {str(k): v for k, v in (result.selector.fold_choice_ or {}).items()},
            "detours_planted": len(truth.detours), "detours_found": s["detours_found"],
            "false_detours": s["false_detours"], "seconds": round(seconds, 1)}


def _done() -> dict:
    if not RAW.exists():
        return {}
    rows = [json.loads(line) for line in RAW.read_text().splitlines() if line.strip()]
    return {tuple(r["key"]): r for r in rows}


def table(rows: list[dict], families: list[str]) -> str:
    lines = ["| family | autocorrelation | offset (within-state sds) | draws | K right | K chosen (true) | "
             "planted detours found | false detours |", "|---|---|---|---|---|---|---|---|"]
    for family in families:
        for ar in AUTOCORRELATIONS:
            for off in OFFSETS:
                cell = [r for r in rows if r["key"][:3] == [family, ar, off]]
                if not cell:
                    continue
                right = sum(r["K"] == r["K_true"] for r in cell)
                chosen = ", ".join(f"{r['K']} ({r['K_true']})" for r in sorted(cell, key=lambda r: r["key"][3]))
                planted = sum(r["detours_planted"] for r in cell)
                lines.append(f"| {family} | {ar} | {off} | {len(cell)} | {right}/{len(cell)} | {chosen} | "
                             f"{sum(r['detours_found'] for r in cell)}/{planted} | "
                             f"{sum(r['false_detours'] for r in cell)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default="gaussian")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    families = args.families.split(",")
    done = _done()
    tasks = [(f, ar, off, i) for f in families for ar in AUTOCORRELATIONS for off in OFFSETS
             for i in range(args.draws) if (f, ar, off, i) not in done]
    print(f"{len(tasks)} fits to run ({len(done)} already in {RAW})", flush=True)
    RAW.parent.mkdir(exist_ok=True)
    with Pool(max(1, args.jobs)) as pool:
        for row in pool.imap_unordered(run_one, tasks):
            with RAW.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    rows = [r for r in _done().values() if r["key"][0] in families and r["key"][3] < args.draws]
    machine = f"Machine: {os.cpu_count()} CPUs ({platform.machine()}, Python {platform.python_version()})"
    body = (f"{machine}; `python bench/bench_realistic_strata.py --families {args.families} --draws "
            f"{args.draws}`; raw rows in `bench/results/realistic-strata.jsonl`.\n\n"
            "Draw i of the `realistic` family (medium separation, 300 checkpoints × 40 runs: its random structure, "
            "detours and forks) with its autocorrelation and per-run offset set to the cell's values; `latent fit` "
            "defaults with `--family`, no resamples or audit. *K chosen (true)* lists every draw.\n\n"
            + table(rows, families))
    print(body)
    if not args.no_write:
        write_block("realistic-strata", body, title="Which part of 'realistic' breaks the fit "
                                                     "(`bench/bench_realistic_strata.py`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
