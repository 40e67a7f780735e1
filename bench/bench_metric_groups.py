"""What the optional metric groups cost: `latent collect` with `--metric-groups none` and `all`,
paired, in one run.

For each configuration the same collection runs with no optional group and with every group of
the task, alternating (none, all, none, all, ...) so both see the same machine state; the ratio of
wall times is the cost, and the run manifests' timings say where it goes (training, evaluation,
the 14 statistics, each group).

    python bench/bench_metric_groups.py                 # modadd default (MLP) and contrast (transformer)
    python bench/bench_metric_groups.py --repeats 3

Writes the ``metric-groups`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_block  # noqa: E402

#: label -> collect arguments (short enough to repeat; the cost per checkpoint is what matters)
CONFIGS = {
    "modadd default (MLP, p 59), 40 seeds, 400 epochs": ["--task", "modadd", "--seeds", "40", "--set", "epochs=400"],
    "modadd contrast (transformer, p 59), 40 seeds, 200 epochs": ["--task", "modadd", "--preset", "contrast",
                                                                 "--seeds", "40", "--set", "epochs=200"],
    "parity default, 40 seeds, 60 epochs": ["--task", "parity", "--seeds", "40", "--set", "epochs=60"],
}


def one(args: list[str], groups: str) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as store:
        cmd = [sys.executable, "-m", "latent", "collect", *args, "--store", store, "--quiet", "--metric-groups", groups]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        study = next(p for p in Path(store).iterdir() if (p / "study.json").exists())
        timings = json.loads((study / "runs" / "seed-000.json").read_text())["timings"]
    return wall, timings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    rows = ["| collection | wall, no groups | wall, every group | ratio (paired median) | of which: progress | "
            "function | ops |", "|---|---|---|---|---|---|---|"]
    for label, cmd in CONFIGS.items():
        walls = {"none": [], "all": []}
        parts: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for groups in ("none", "all"):
                wall, timings = one(cmd, groups)
                walls[groups].append(wall)
                if groups == "all":
                    for k in ("progress", "function", "ops"):
                        parts.setdefault(k, []).append(timings.get(k, 0.0))
            print(label, {k: [round(x, 1) for x in v] for k, v in walls.items()}, flush=True)
        ratio = float(np.median(np.array(walls["all"]) / np.array(walls["none"])))
        base = float(np.median(walls["none"]))
        share = {k: f"{np.median(v) / base:.0%}" if np.median(v) else "–" for k, v in parts.items()}
        rows.append(f"| {label} | {base:.1f} s | {np.median(walls['all']):.1f} s | {ratio:.2f} | "
                    f"{share['progress']} | {share['function']} | {share['ops']} |")
    text = "\n".join(rows)
    print(text)
    if not args.no_write:
        write_block("metric-groups", (
            f"Machine: {os.cpu_count()} CPUs ({platform.machine()}, Python {platform.python_version()}), load "
            f"{os.getloadavg()[0]:.1f} at the end. Each collection run {args.repeats} times with `--metric-groups none` "
            "and `all`, alternating; wall time of the whole command (start-up included); the group columns are each "
            "group's own clock (seed 0's manifest) as a share of the wall time without groups.\n\n" + text
            + "\n\nCommand: `python bench/bench_metric_groups.py`."),
            title="What the optional metric groups cost (`bench/bench_metric_groups.py`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
