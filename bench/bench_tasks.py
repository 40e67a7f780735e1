"""Per-task benchmark: `latent collect --task T --seeds 40` with the default preset, as a user runs it.

Run from the repository root:

    python bench/bench_tasks.py                      # every task, 1 thread each
    python bench/bench_tasks.py --tasks cifar,mlm    # only these; the other tasks' rows are kept

Each task runs in a fresh child process into a temporary store; the script records the child's
wall time and peak resident memory (``ru_maxrss`` from ``os.wait4`` on that child alone), the
collector's own time split, the load average before and after, and how many seeds crossed the
study's convergence threshold. It rewrites the ``tasks`` block of bench/RESULTS.md, replacing the
rows of the tasks it ran and keeping the others' earlier rows. Other work on the machine inflates
the times: read them next to the load average.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import write_block  # noqa: E402


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def run_task(task: str, seeds: int, threads: int) -> dict:
    """One default-preset collection of ``seeds`` seeds in a child process; its wall time and peak RSS."""
    import numpy as np
    import pandas as pd

    with tempfile.TemporaryDirectory() as store:
        cmd = [sys.executable, "-m", "latent", "collect", "--task", task, "--seeds", str(seeds), "--store", store,
               "--quiet"] + (["--threads", str(threads)] if threads else [])
        load_before = _load()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would mix in earlier children).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
        root = Path(store) / task
        meta = json.loads((root / "study.json").read_text())
        conv = meta["convergence"]
        times, final = [], []
        for s in range(seeds):
            frame = pd.read_parquet(root / "runs" / f"seed-{s:03d}.parquet")
            vals = frame[conv["metric"]].to_numpy(float)
            hit = vals > conv["threshold"] if conv["direction"] == "above" else vals < conv["threshold"]
            times.append(float(frame["step"].to_numpy()[hit.argmax()]) if hit.any() else None)
            final.append(float(vals[-1]))
        timings = json.loads((root / "runs" / "seed-000.json").read_text()).get("timings", {})
        hit = [t for t in times if t is not None]
        return {
            "task": task,
            "seeds": seeds,
            "threads": threads or "default",
            "wall_s": wall,
            "maxrss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
            "load_before": load_before,
            "load_after": _load(),
            "rows": len(frame),
            "step_unit": meta["step_unit"],
            "config": meta["config"],
            "data": meta["data"].get("source"),
            "convergence": conv,
            "converged": len(hit),
            "conv_min": min(hit) if hit else None,
            "conv_median": float(np.median(hit)) if hit else None,
            "conv_max": max(hit) if hit else None,
            "final_min": min(final),
            "final_median": float(np.median(final)),
            "final_max": max(final),
            "timings": timings,
            "summary": out.strip().splitlines()[-1] if out.strip() else "",
        }


def _row(r: dict) -> str:
    t = r["timings"]
    split = ", ".join(f"{k} {v:.0f}" for k, v in t.items() if isinstance(v, (int, float)))
    conv = r["convergence"]
    when = (f"{r['converged']}/{r['seeds']} (first/median/last {r['step_unit']} "
            f"{r['conv_min']:g}/{r['conv_median']:g}/{r['conv_max']:g})" if r["converged"] else f"0/{r['seeds']}")
    sign = ">" if conv["direction"] == "above" else "<"
    return (f"| `{r['task']}` | {r['seeds']} | {r['threads']} | **{r['wall_s']:.0f} s** | {r['maxrss_mib']:.0f} MiB "
            f"| {r['rows']} | {conv['metric']} {sign} {conv['threshold']}: {when} "
            f"| {conv['metric']} {r['final_min']:.3f} / {r['final_median']:.3f} / {r['final_max']:.3f} "
            f"| {r['load_before']} → {r['load_after']} | {split} |")


TASK_ORDER = ("modadd", "parity", "mnist", "cifar", "mlm")


def _merge_rows(new_rows: dict[str, str]) -> list[str]:
    """The block's table rows: the new ones, plus the earlier rows of tasks not run this time."""
    from results import RESULTS

    old: dict[str, str] = {}
    text = RESULTS.read_text() if RESULTS.exists() else ""
    if "<!-- tasks:begin -->" in text:
        block = text.split("<!-- tasks:begin -->", 1)[1].split("<!-- tasks:end -->", 1)[0]
        for line in block.splitlines():
            if line.startswith("| `"):
                old[line.split("`")[1]] = line
    rows = {**old, **new_rows}
    rank = {t: i for i, t in enumerate(TASK_ORDER)}
    return [rows[t] for t in sorted(rows, key=lambda t: (rank.get(t, len(rank)), t))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="parity,mnist,cifar,mlm",
                    help="comma-separated tasks (default parity,mnist,cifar,mlm); other tasks' rows are kept")
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=0,
                    help="--threads for each collection (default 0: none given, the task's default as a user runs it)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = ap.parse_args()
    results = []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        r = run_task(task, args.seeds, args.threads)
        print(json.dumps({k: v for k, v in r.items() if k != "config"}), flush=True)
        results.append(r)
    body = "\n".join([
        "`latent collect --task T --seeds N [--threads K]` with the default preset, each in a fresh process "
        "(`bench/bench_tasks.py`). Peak memory is the child's `ru_maxrss`. Time split (s) from the run manifest. "
        "Each run rewrites the rows of the tasks it ran and keeps the others' earlier rows (the date above is the latest run's; each row's load column tells its conditions).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other work), Python "
        f"{platform.python_version()}. Load average 1/5/15 min before → after each run.",
        "",
        "| task | seeds | threads | wall | peak RSS | checkpoints/run | converged | final convergence metric "
        "min/median/max | load | time split (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(_merge_rows({r["task"]: _row(r) for r in results}) if not args.no_write else [_row(r) for r in results]),
    ])
    print(body)
    if not args.no_write:
        write_block("tasks", body)


if __name__ == "__main__":
    main()
