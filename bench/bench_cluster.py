"""Benchmark: ``latent collect`` on a 2-worker Dask LocalCluster against the local run, and how
wall time falls with Dask workers.

Run from the repository root (needs the cluster extra: ``pip install -e ".[cluster]"``):

    python bench/bench_cluster.py                  # ~8 minutes on 2 cores
    python bench/bench_cluster.py --quick          # a smaller study, one round (~1 minute)

1. **Overhead.** One modadd study (default preset: the batched MLP), collected in fresh stores on
   the same machine, alternating: locally (``collect_study(...)``, all cores, batches one after
   the other) and with ``cluster="local:2"`` (``latent collect --cluster local:2``: 2 worker
   processes of 1 thread, the batches in parallel, the cluster started and stopped inside the
   timing). The same ``--seed-batch``, so both runs train the same batches. Also timed: the
   Dask run on a cluster that is already up (``--scheduler``), which is what a user with a
   standing cluster pays, and Dask's machinery alone: one task of all seeds on one 1-thread
   worker against the same batch on 1 local thread (no parallelism on either side). Ratio =
   Dask wall / local wall; the target is <= 1.10.
2. **Scaling.** Tasks of known duration (sleeps: no CPU, so the count of cores does not limit
   them) through the same code path as collect's batches (:func:`latent.cluster.run_tasks`), on
   N = 1, 2, 4, 8 workers; the ideal wall is tasks x duration / N.

Rewrites the ``cluster`` block of bench/RESULTS.md (``--no-write`` to only print).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import write_block  # noqa: E402


def _collect(store: Path, args, **kw) -> float:
    from latent.collect.study import collect_study

    t0 = time.perf_counter()
    res = collect_study("modadd", args.seeds, overrides=[f"epochs={args.epochs}"], store=store,
                        seed_batch=args.seed_batch, progress=False, **kw)
    wall = time.perf_counter() - t0
    assert len(res.seeds_trained) == args.seeds, res
    return wall


def overhead(args) -> dict:
    import distributed

    walls: dict[str, list[float]] = {"local": [], "cluster local:2": [], "warm scheduler": [],
                                     "one task, local": [], "one task, dask": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(args.rounds):
            walls["local"].append(_collect(tmp / f"local-{r}", args))
            print(f"round {r + 1}: local {walls['local'][-1]:.1f} s", flush=True)
            walls["cluster local:2"].append(_collect(tmp / f"cluster-{r}", args, cluster="local:2"))
            print(f"round {r + 1}: --cluster local:2 {walls['cluster local:2'][-1]:.1f} s", flush=True)
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as lc, \
                distributed.Client(lc, set_as_default=False) as client:
            client.run(lambda: __import__("latent.collect.study") and None)  # a standing cluster's workers have loaded torch
            _collect(tmp / "warm-up", args, scheduler=lc.scheduler_address)  # and have trained before
            one = argparse.Namespace(**{**vars(args), "seed_batch": 0})
            for r in range(args.rounds):
                walls["warm scheduler"].append(_collect(tmp / f"warm-{r}", args, scheduler=lc.scheduler_address))
                print(f"round {r + 1}: --scheduler (warm) {walls['warm scheduler'][-1]:.1f} s", flush=True)
                # the machinery alone: one task of all seeds on one 1-thread worker, against 1 local thread
                walls["one task, local"].append(_collect(tmp / f"one-local-{r}", one, threads=1))
                walls["one task, dask"].append(_collect(tmp / f"one-dask-{r}", one, scheduler=lc.scheduler_address))
                print(f"round {r + 1}: one task: local {walls['one task, local'][-1]:.1f} s, "
                      f"Dask {walls['one task, dask'][-1]:.1f} s", flush=True)
    return walls


def scaling(args) -> list[tuple[int, float, float]]:
    import distributed

    from latent.cluster import run_tasks

    rows = []
    for n in (1, 2, 4, 8):
        with distributed.LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=":0") as lc, \
                distributed.Client(lc, set_as_default=False) as client:
            client.wait_for_workers(n)
            t0 = time.perf_counter()
            run_tasks(client, time.sleep, [(args.task_seconds,)] * args.tasks, [f"sleep {i}" for i in range(args.tasks)])
            wall = time.perf_counter() - t0
        ideal = args.tasks * args.task_seconds / n
        rows.append((n, wall, ideal))
        print(f"{n} workers: {wall:.2f} s (ideal {ideal:.2f} s)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--seed-batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1, help="alternating local/Dask rounds (the best of each is kept)")
    ap.add_argument("--tasks", type=int, default=16, help="scaling: sleep tasks")
    ap.add_argument("--task-seconds", type=float, default=0.5, help="scaling: each task's sleep")
    ap.add_argument("--quick", action="store_true", help="8 seeds x 200 epochs, one round")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.rounds = 8, 200, 1

    walls = overhead(args)
    best = {k: min(v) for k, v in walls.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"Machine: {platform.machine()}, {cores} cores, Python {platform.python_version()}; load average "
        f"{load:.1f} at the end (the box is shared, so walls are the best of {args.rounds} alternating "
        "round(s)).",
        "",
        f"**Overhead** (`python bench/bench_cluster.py`): modadd (default preset), {args.seeds} seeds x "
        f"{args.epochs} epochs, `--seed-batch {args.seed_batch}` ({-(-args.seeds // args.seed_batch)} batches).",
        "",
        "| run | wall (s) | ratio to local |",
        "|---|---|---|",
    ]
    for name, label in (("local", "local (all cores, batches in turn)"),
                        ("cluster local:2", "`--cluster local:2` (start, 2 workers x 1 thread, stop)"),
                        ("warm scheduler", "`--scheduler` of a running 2-worker cluster")):
        lines.append(f"| {label} | {best[name]:.1f} | {best[name] / best['local']:.2f} |")
    lines += [f"| one task of all {args.seeds} seeds, 1 local thread | {best['one task, local']:.1f} | |",
              f"| the same task on one 1-thread Dask worker (`--seed-batch 0`) | {best['one task, dask']:.1f} | "
              f"{best['one task, dask'] / best['one task, local']:.2f} (to the row above) |"]
    ratio = best["cluster local:2"] / best["local"]
    print(f"ratio --cluster local:2 / local = {ratio:.3f} (target <= 1.10); "
          f"warm scheduler / local = {best['warm scheduler'] / best['local']:.3f}")
    lines += ["", f"Ratio `--cluster local:2` / local: **{ratio:.2f}** (target <= 1.10).", ""]

    rows = scaling(args)
    lines += [f"**Scaling**: {args.tasks} tasks of {args.task_seconds:g} s (sleeps) through "
              "`latent.cluster.run_tasks`, workers already up.", "",
              "| workers | wall (s) | ideal (s) | efficiency |", "|---|---|---|---|"]
    lines += [f"| {n} | {wall:.2f} | {ideal:.2f} | {ideal / wall:.0%} |" for n, wall, ideal in rows]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_block("cluster", text, title="Dask cluster (`bench/bench_cluster.py`)")


if __name__ == "__main__":
    main()
