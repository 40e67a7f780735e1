"""What `latent import table` costs per run and per value, and how close its memory check is.

Writes one wide CSV per size (runs × 20 checkpoints × 6 metrics, a ``run`` column) and imports
it with the command as a user runs it, recording wall time and peak resident memory (the
child's ``ru_maxrss``). ``--baseline DIR`` runs another checkout of latent (for example the
commit before a change: ``git worktree add /tmp/base HEAD~1``) on the same files, alternating
with this one, so the ratio is measured side by side on one machine state.

    python bench/bench_import.py
    python bench/bench_import.py --runs 1000,10000 --baseline /tmp/base

Writes the ``import`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_block  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STEPS, METRICS = 20, 6


def make_table(path: Path, runs: int, steps: int = STEPS, seed: int = 0) -> int:
    """A wide CSV of ``runs`` runs; returns how many values it holds."""
    rng = np.random.default_rng(seed)
    n = runs * steps
    frame = pd.DataFrame({"run": np.repeat([f"r{i}" for i in range(runs)], steps),
                          "step": np.tile(np.arange(steps) * 10, runs)})
    for j in range(METRICS - 1):
        frame[f"m{j}"] = rng.normal(size=n).round(6)
    frame["val_acc"] = rng.uniform(size=n).round(6)
    frame.to_csv(path, index=False)
    return n * frame.shape[1]


def run_import(checkout: Path, table: Path, store: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one import run by ``checkout``'s code."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "latent.cli", "import", "table", str(table), "--study", "bench",
                           "--store", str(store), "--convergence", "val_acc>0.9", "--overwrite"],
                          cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{checkout}: import failed: {proc.stderr.strip()[-400:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # a max over children: only rises
    return wall, max(peak, before) * 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="1000,10000", help="comma-separated run counts (default 1000,10000)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--baseline", type=Path, default=None, help="another latent checkout to time side by side")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.runs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="latent-bench-import-") as tmp:
        tmp = Path(tmp)
        for runs in sizes:
            table = tmp / f"runs-{runs}.csv"
            values = make_table(table, runs)
            times = {"this": [], "baseline": []}
            for _ in range(args.repeats):
                for who, checkout in (("this", ROOT), ("baseline", args.baseline)):
                    if checkout is None:
                        continue
                    wall, _ = run_import(checkout, table, tmp / f"store-{who}")
                    times[who].append(wall)
            this = float(np.median(times["this"]))
            line = f"| {runs:,} | {values:,} | {this:.1f} s | {1000 * this / runs:.1f} ms |"
            if args.baseline is not None:
                base = float(np.median(times["baseline"]))
                ratios = [b / t for b, t in zip(times["baseline"], times["this"])]
                line += f" {base:.1f} s | {float(np.median(ratios)):.1f}x |"
            rows.append(line)
    # peak memory per value: one separate process per measurement (ru_maxrss is a max over children)
    peak_line = _peak_per_value()
    head = "| runs (× 20 checkpoints) | values | wall | per run |"
    rule = "|---|---|---|---|"
    if args.baseline is not None:
        head += " wall, baseline | speed-up (paired median) |"
        rule += "---|---|"
    body = "\n".join([
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}, Python {platform.python_version()}), load "
        f"{os.getloadavg()[0]:.1f} at the end. `latent import table` of one wide CSV ({METRICS} metrics and a run "
        f"column), whole command (start-up included), median of {args.repeats}"
        + (f", alternating with the checkout `{args.baseline}` (the code before the change)" if args.baseline else "")
        + ".",
        "",
        head, rule, *rows,
        "",
        peak_line,
        "",
        f"Command: `python bench/bench_import.py --runs {args.runs}"
        + (" --baseline <checkout>`" if args.baseline else "`") + ".",
    ])
    write_block("import", body, title="Importing runs (`bench/bench_import.py`)")
    print(body)
    return 0


def _peak_per_value() -> str:
    """Peak RSS over the tables' value bytes, on a 2-million-row parquet table (in a fresh process)."""
    code = r"""
import resource, subprocess, sys, tempfile, numpy as np, pandas as pd
from pathlib import Path
tmp = Path(tempfile.mkdtemp(prefix="latent-peak-"))
runs, steps = 200, 10000
rng = np.random.default_rng(0)
df = pd.DataFrame({"seed": np.repeat(np.arange(runs), steps), "step": np.tile(np.arange(steps), runs)})
for j in range(10):
    df[f"f{j}"] = rng.normal(size=runs * steps)
df["val_acc"] = rng.uniform(size=runs * steps)
df.to_parquet(tmp / "big.parquet")
values = df.size
del df
base = subprocess.run([sys.executable, "-c", "import latent.cli, pandas, pyarrow.parquet"], check=True)
idle = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
subprocess.run([sys.executable, "-m", "latent.cli", "import", "table", str(tmp / "big.parquet"), "--study", "big",
                "--store", str(tmp / "st"), "--convergence", "val_acc>0.9"], check=True, capture_output=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
import shutil; shutil.rmtree(tmp)
print(values, idle, peak)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    values, idle, peak = (int(x) for x in out.stdout.split())
    per = (peak - idle) / values
    return (f"Peak memory: importing a parquet table of 2,000,000 rows × 13 columns ({values:,} values) peaked at "
            f"{peak / 2**20:,.0f} MiB resident, {per:.0f} bytes per value above the {idle / 2**20:.0f} MiB of an "
            f"idle interpreter with latent loaded ({per / 8:.1f} times the values' 8 bytes). The import's memory "
            f"check (`latent/importers/tables.py`, docs/import.md 'Size') counts 64 bytes per value.")


if __name__ == "__main__":
    raise SystemExit(main())
