"""The llc metric group: are its default sampler settings converged, what does it cost, and what
does it show on real modadd runs.

1. **Calibration.** 4 seeds of the default modadd study trained to a memorised checkpoint
   (epoch 200) and a generalising one (epoch 800); at each, the estimate with the default
   settings and with other step sizes, chain lengths and batches, against a long full-batch
   reference chain (300 draws after 100 burn-in steps). An estimate that keeps growing with the chain's length has
   not reached the local posterior; one that moves with the step size beyond that is biased.
2. **Cost.** `latent collect` of the default modadd config with `--metric-groups none` and
   `llc` (default settings), paired, as a ratio of wall times.
3. **Real runs.** 8 seeds of the default study (2,000 epochs) with an estimate every 10
   checkpoints: where each run's LLC peaks against when it memorises (train_acc > 0.99) and
   converges (val_acc > 0.9), and its value at those points.

    python bench/bench_llc.py              # ~4 min on 2 cores

Writes the ``llc`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from results import write_block  # noqa: E402

from latent.collect.config import resolve_config  # noqa: E402
from latent.collect.llc import LLCConfig, LLCSampler  # noqa: E402
from latent.collect.seeds import RunSeeds  # noqa: E402
from latent.collect.tasks import get_task  # noqa: E402

SEEDS = [0, 1, 2, 3]
VARIANTS = {
    "default (lr 1e-3, 20 + 40 steps, batches of 256)": {},
    "full batch": {"batch_size": 0},
    "lr 1e-4": {"lr": 1e-4},
    "lr 3e-4": {"lr": 3e-4},
    "lr 3e-3": {"lr": 3e-3},
    "150 draws": {"draws": 150},
    "burn-in 60": {"burnin": 60},
    "localization 30": {"localization": 30.0},
}
REFERENCE = {"burnin": 100, "draws": 300, "chains": 2, "batch_size": 0}


def calibration() -> str:
    task = get_task("modadd")
    cfg = resolve_config(task.config_class, task.presets, "default", {})
    problem = task.build(cfg, [RunSeeds.derive(s) for s in SEEDS], torch.device("cpu"))
    base = LLCConfig()
    rows = ["| settings | epoch 200: median LLC | vs reference | epoch 800: median LLC | vs reference | s per estimate (4 seeds) |",
            "|---|---|---|---|---|---|"]
    results: dict[str, dict[int, tuple[float, float]]] = {}
    epoch = 0
    for target in (200, 800):
        while epoch < target:
            problem.train_step()
            epoch += 1
        ref = LLCSampler(replace(base, **REFERENCE), SEEDS).estimate(problem, epoch)["llc"].numpy()
        results.setdefault("reference (100 + 300 full-batch steps)", {})[target] = (float(np.median(ref)), 0.0)
        for label, change in VARIANTS.items():
            t0 = time.perf_counter()
            est = LLCSampler(replace(base, **change), SEEDS).estimate(problem, epoch)["llc"].numpy()
            results.setdefault(label, {})[target] = (float(np.median(est)), time.perf_counter() - t0)
            print(label, target, np.round(est, 1), flush=True)
    ref200, ref800 = (results["reference (100 + 300 full-batch steps)"][t][0] for t in (200, 800))
    for label, by in results.items():
        (a, ta), (b, tb) = by[200], by[800]
        secs = f"{(ta + tb) / 2:.2f}" if ta else "–"
        rows.append(f"| {label} | {a:.1f} | {a / ref200 - 1:+.0%} | {b:.1f} | {b / ref800 - 1:+.0%} | {secs} |")
    return "\n".join(rows)


def _collect(args: list[str], store: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "latent", "collect", *args, "--store", store, "--quiet"], check=True,
                   capture_output=True, cwd=ROOT)
    return time.perf_counter() - t0


def cost() -> str:
    args = ["--task", "modadd", "--seeds", "40", "--set", "epochs=400"]
    walls = {"none": [], "llc": []}
    for groups in ("none", "llc", "none", "llc"):
        with tempfile.TemporaryDirectory() as store:
            walls[groups].append(_collect([*args, "--metric-groups", groups], store))
    ratio = float(np.median(np.array(walls["llc"]) / np.array(walls["none"])))
    return (f"`latent collect --task modadd --seeds 40 --set epochs=400`, `--metric-groups none` against `llc` "
            f"(default settings: an estimate every 20 checkpoints), alternating, twice each: "
            f"{np.median(walls['none']):.1f} s against {np.median(walls['llc']):.1f} s, **{ratio:.2f}x**.")


def real_runs() -> str:
    with tempfile.TemporaryDirectory() as store:
        _collect(["--task", "modadd", "--seeds", "8", "--metric-groups", "llc", "--llc", "every=10"], store)
        runs = [pd.read_parquet(p).sort_values("step") for p in sorted(Path(store, "modadd", "runs").glob("*.parquet"))]
    rows = ["| seed | memorised (train_acc > 0.99) | LLC peaks | converged (val_acc > 0.9) | LLC at init | at peak | "
            "at convergence | at epoch 2,000 | chains' sd at peak |", "|---|---|---|---|---|---|---|---|---|"]
    peaks, mems, convs = [], [], []
    for run in runs:
        seed = int(run["seed"].iloc[0])
        m = run.dropna(subset=["llc"])
        mem = int(run.loc[run["train_acc"] > 0.99, "step"].iloc[0])
        conv = int(run.loc[run["val_acc"] > 0.9, "step"].iloc[0])
        peak = m.loc[m["llc"].idxmax()]
        at_conv = m.loc[(m["step"] - conv).abs().idxmin()]
        peaks.append(int(peak["step"]))
        mems.append(mem)
        convs.append(conv)
        rows.append(f"| {seed} | {mem} | {int(peak['step'])} | {conv} | {m['llc'].iloc[0]:.0f} | {peak['llc']:.0f} | "
                    f"{at_conv['llc']:.0f} (epoch {int(at_conv['step'])}) | {m['llc'].iloc[-1]:.1f} | "
                    f"{peak['llc_std']:.1f} |")
    rows.append("")
    rows.append(f"Median epochs: memorised {np.median(mems):.0f}, LLC peak {np.median(peaks):.0f}, converged "
                f"{np.median(convs):.0f}; the peak comes after memorisation in {sum(p >= m for p, m in zip(peaks, mems))} "
                f"of {len(runs)} runs and before convergence in {sum(p < c for p, c in zip(peaks, convs))} of {len(runs)}.")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    parts = ["### Calibration (default modadd, seeds 0-3)", "", calibration(), "",
             "### Cost", "", cost(), "", "### Real runs (default modadd, 8 seeds, an estimate every 10 checkpoints)", "",
             real_runs()]
    body = "\n".join(parts)
    print(body)
    if not args.no_write:
        write_block("llc", (
            f"Machine: {os.cpu_count()} CPUs ({platform.machine()}, Python {platform.python_version()}); "
            f"{time.perf_counter() - t0:.0f} s in all (`python bench/bench_llc.py`). The estimator and its settings: "
            "docs/collect.md#the-local-learning-coefficient-llc.\n\n" + body), title="llc: the local learning coefficient")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
