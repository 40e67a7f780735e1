"""What the Recorder costs inside a training loop: metric time against the step budget.

A small transformer (2-layer ``nn.TransformerEncoder``, d_model 128, 4 heads, feed-forward 512,
post-LN) trains on random token sequences (batch 64, length 32, vocabulary 256, AdamW). The
loop times its training steps and, separately, every ``Recorder.log`` call (the 14 statistics
of 31 matrices: 24 per-head Q/K/V, 2 attention outputs, 2 × 2 feed-forward, the LM head; plus
the table writes that fall due, every 50 logs or 30 s by default). The cost is the mean time of one log divided
by the training time between two logs. Prints the table and writes it into bench/RESULTS.md
between ``<!-- recorder:begin -->`` and ``<!-- recorder:end -->``.

    python bench/bench_recorder.py                 # 400 steps, logs every 50 and every 100 steps
    python bench/bench_recorder.py --steps 100 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results import write_block  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from latent.collect.modules import select_module  # noqa: E402
from latent.collect.recorder import Recorder  # noqa: E402

VOCAB, SEQ, BATCH, D, HEADS, FF, LAYERS = 256, 32, 64, 128, 4, 512, 2


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(D, VOCAB)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)))


def run(steps: int, every: int, store: Path, seed: int) -> dict:
    """Train ``steps`` steps logging every ``every``; returns per-step and per-log times (seconds)."""
    torch.manual_seed(seed)
    model = TinyTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    step_times, log_times = [], []
    with Recorder(store, study=f"bench-{every}", seed=seed, convergence="val_loss<1.0") as rec:
        for step in range(steps + 1):
            if step % every == 0:
                t0 = time.perf_counter()
                rec.log(step, model, val_loss=float(loss.detach()) if step else None)
                log_times.append(time.perf_counter() - t0)
            x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x).flatten(0, 1), x.roll(1, 1).flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    close = time.perf_counter() - t0  # the with block's close(): final table + manifest
    return {"steps": step_times[5:], "logs": log_times[1:] or log_times, "close": close,
            "matrices": sum(e.shape[0] for e in select_module(model).entries if e.role == "matrix")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for every in (50, 100):
            r = run(args.steps, every, Path(tmp), seed=every)
            step = statistics.median(r["steps"])
            log = statistics.mean(r["logs"])
            ratio = log / (every * step)
            rows.append((every, step, log, max(r["logs"]), ratio, r["matrices"], r["close"]))
            print(f"every {every:>3} steps: step {step * 1e3:.1f} ms (median), log {log * 1e3:.1f} ms (mean, "
                  f"max {max(r['logs']) * 1e3:.1f}), cost {100 * ratio:.2f} % of the step budget")
    lines = [
        f"Model: 2-layer `nn.TransformerEncoder` (d_model {D}, {HEADS} heads, feed-forward {FF}), embedding "
        f"and LM head, batch {BATCH} × length {SEQ}, AdamW; {rows[0][5]} matrices counted. "
        f"{args.steps} steps per setting, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs ({platform.machine()}), a shared machine.",
        "",
        "| log every | step (median) | one log (mean) | one log (max) | cost: log / steps between logs "
        "| close (final write) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for every, step, log, worst, ratio, _, close in rows:
        lines.append(f"| {every} steps | {step * 1e3:.1f} ms | {log * 1e3:.1f} ms | {worst * 1e3:.1f} ms "
                     f"| **{100 * ratio:.2f} %** | {close * 1e3:.0f} ms |")
    lines += ["", "A log computes the 14 statistics (one batched eigendecomposition per matrix shape, float64) "
              "and keeps the row in memory; the table is rewritten (fsync, rename) every 50 logs, at the first "
              "log 30 s after the last write, and at close (last column, once per run). The mean includes the "
              "writes that fell due. Target: at most 5 % of the step budget."]
    if not args.no_write:
        write_block("recorder", "\n".join(lines), title="Recorder overhead (`bench/bench_recorder.py`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
