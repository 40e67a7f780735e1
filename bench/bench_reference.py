"""The paper-preset transformer next to the reference's own training script, and the compute limit.

Measured in one run on this machine:

* the reference (michahu/modeling-training, ``scripts/00_training/modular_addition.py``, one seed,
  batch 2048, its evaluation every 10 epochs included) run by ``../shared/bench/reference-modadd.sh``
  for two lengths, so that start-up cancels: its *marginal* seconds per seed-epoch;
* ours: the ``paper`` preset's batched problem (40 seeds as one model, batch 2048) for the same
  epochs, and one validation pass per 10 epochs, as the collector does;
* the limit: floating-point operations per seed-epoch counted by ``torch.utils.flop_counter`` on
  one training epoch and one validation pass of a single seed, against the float32 matmul rate this
  CPU reaches (the best of square matmuls of a few sizes, all threads).

    python bench/bench_reference.py --snapshot /work/.mirror/michahu+modeling-training/repo

The snapshot is the git directory that fetching michahu/modeling-training returns; its code is
exported to a temporary folder and run, never copied into this repository.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import write_block  # noqa: E402

SCRIPT = ROOT.parent / "shared" / "bench" / "reference-modadd.sh"
EVAL_EVERY = 10  # the reference evaluates every 10 epochs; the paper preset checkpoints every 10


def reference_seconds(snapshot: str, epochs: int, batch: int) -> float:
    """Wall seconds of the reference script for ``epochs`` epochs (start-up included)."""
    out = subprocess.run(["bash", str(SCRIPT), snapshot, str(epochs), str(batch)], capture_output=True, text=True,
                         check=True).stdout
    m = re.search(r"([\d.]+) s wall", out)
    if not m:
        raise SystemExit(f"unexpected output from {SCRIPT}: {out!r}")
    return float(m.group(1))


def ours_seed_epochs_per_second(n_seeds: int, epochs: int, threads: int) -> float:
    """The paper preset, ``n_seeds`` batched: training epochs plus one validation pass per 10."""
    import torch

    from latent.collect.seeds import RunSeeds
    from latent.collect.tasks import get_task
    from latent.collect.tasks.modadd import PRESETS, ModAddConfig

    torch.set_num_threads(threads)
    cfg = ModAddConfig(**PRESETS["paper"])
    problem = get_task("modadd").build(cfg, [RunSeeds.derive(s) for s in range(n_seeds)], torch.device("cpu"))
    problem.train_epoch()
    t0 = time.perf_counter()
    for e in range(epochs):
        problem.train_epoch()
        if e % EVAL_EVERY == 0:
            problem.evaluate("val")
    return n_seeds * epochs / (time.perf_counter() - t0)


def flops_per_seed_epoch() -> tuple[float, dict]:
    """FLOPs of one seed's training epoch plus a tenth of a validation pass (flop counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from latent.collect.seeds import RunSeeds
    from latent.collect.tasks import get_task
    from latent.collect.tasks.modadd import PRESETS, ModAddConfig

    cfg = ModAddConfig(**PRESETS["paper"])
    problem = get_task("modadd").build(cfg, [RunSeeds.derive(0)], torch.device("cpu"))
    with FlopCounterMode(display=False) as train:
        problem.train_epoch()
    with FlopCounterMode(display=False) as val:
        problem.evaluate("val")
    t, v = train.get_total_flops(), val.get_total_flops()
    return t + v / EVAL_EVERY, {"train_epoch": t, "validation_pass": v, "n_train": cfg.n_train, "batch": cfg.batch_size}


def plain_flops_per_seed_epoch() -> float:
    """The same per seed-epoch for a plain 1-layer transformer that computes all three positions
    (as the reference's module does), built here from torch layers with the preset's sizes."""
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from latent.collect.tasks.modadd import PRESETS, ModAddConfig

    cfg = ModAddConfig(**PRESETS["paper"])
    d, h, m, p = cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.p

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.pos = nn.Embedding(p + 1, d), nn.Parameter(torch.zeros(3, d))
            self.qkv, self.out = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
            self.mlp_in, self.mlp_out, self.unembed = nn.Linear(d, m), nn.Linear(m, d), nn.Linear(d, p, bias=False)

        def forward(self, x):
            z = self.embed(x) + self.pos
            q, k, v = self.qkv(z).view(len(x), 3, 3, h, d // h).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, -1) @ v
            z = z + self.out(att.transpose(1, 2).reshape(len(x), 3, d))
            z = z + self.mlp_out(torch.relu(self.mlp_in(z)))
            return self.unembed(z)[:, -1]

    model = Plain()
    n_train = cfg.n_train
    n_val = p * p - n_train
    x = torch.randint(0, p, (cfg.batch_size, 3))
    y = torch.randint(0, p, (cfg.batch_size,))
    with FlopCounterMode(display=False) as fc:
        nn.functional.cross_entropy(model(x), y).backward()
    per_example_train = fc.get_total_flops() / cfg.batch_size
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    per_example_val = fc.get_total_flops() / cfg.batch_size
    return per_example_train * n_train + per_example_val * n_val / EVAL_EVERY


def matmul_peak(threads: int) -> float:
    """Best float32 matmul FLOP/s over a few square sizes."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        reps = max(3, int(2e9 / (2 * n**3)))
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snapshot", required=True, help="git dir of the michahu/modeling-training snapshot")
    ap.add_argument("--short", type=int, default=10, help="reference epochs, short run (default 10)")
    ap.add_argument("--long", type=int, default=100, help="reference epochs, long run (default 100)")
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    t_short = reference_seconds(args.snapshot, args.short, 2048)
    t_long = reference_seconds(args.snapshot, args.long, 2048)
    ref_marginal = (t_long - t_short) / (args.long - args.short)
    ours = ours_seed_epochs_per_second(args.seeds, args.long - args.short, args.threads)
    flops, parts = flops_per_seed_epoch()
    plain = plain_flops_per_seed_epoch()
    peak = matmul_peak(args.threads)
    limit = peak / flops
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = [
        "| | seconds per seed-epoch | seed-epochs/s | vs reference | share of its compute limit |",
        "|---|---|---|---|---|",
        f"| reference script, 1 seed (marginal: ({args.long} - {args.short}) epochs) | {ref_marginal:.3f} | "
        f"{1 / ref_marginal:.2f} | 1.00x | {100 / ref_marginal / (peak / plain):.1f} % (of the plain model's) |",
        f"| reference script, whole {args.long}-epoch run incl. start-up | {t_long / args.long:.3f} | "
        f"{args.long / t_long:.2f} | | |",
        f"| latent, paper preset, {args.seeds} seeds batched | {1 / ours:.4f} | {ours:.1f} | "
        f"{ours * ref_marginal:.1f}x | {100 * ours / limit:.1f} % (of its own computation's) |",
        f"| compute limit of our computation (its FLOPs at the matmul peak) | {1 / limit:.4f} | {limit:.1f} | "
        f"{limit * ref_marginal:.1f}x | |",
        f"| compute limit of the plain model (all three positions) | {plain / peak:.4f} | {peak / plain:.1f} | "
        f"{peak / plain * ref_marginal:.1f}x | |",
    ]
    text = "\n".join(rows) + (
        f"\n\nBoth at batch 2048 with a validation pass every {EVAL_EVERY} epochs. FLOPs per seed-epoch "
        f"(torch.utils.flop_counter): {parts['train_epoch'] / 1e9:.2f} GFLOP for one training epoch of "
        f"{parts['n_train']} examples plus {parts['validation_pass'] / 1e9:.2f} GFLOP per validation pass "
        f"/ {EVAL_EVERY} = {flops / 1e9:.2f} GFLOP (the batched problem computes only the last position, "
        f"exactly: PERF-NOTES); a plain module computing all three positions needs {plain / 1e9:.2f} GFLOP. Matmul peak of this CPU, float32, {args.threads} threads: "
        f"{peak / 1e9:.0f} GFLOP/s. {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {__import__('torch').__version__}; load average {load:.1f} at the end. PERF-NOTES quotes 1.24 s "
        "per seed-epoch for the reference (a first measurement on a busy box) and 0.31 s marginal on an idle one; "
        "the side-by-side figure above is the one to compare with. Command: `python bench/bench_reference.py --snapshot <git dir of michahu/modeling-training>`.")
    print(text)
    if not args.no_write:
        write_block("reference", text, title="Paper preset vs the reference's own script, and the compute limit "
                    "(`bench/bench_reference.py`)")


if __name__ == "__main__":
    main()
