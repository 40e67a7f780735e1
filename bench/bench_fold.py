"""Folding the paper transformer further (issue 23, item 1): FLOPs, exactness and time, side by side.

The paper preset already computes only the last position and gathers attention scores and values
from per-token tables (``collect/tasks/modadd.py``). Everything before the MLP's nonlinearity is a
softmax-weighted sum of per-(head, position, token) rows, so more of the network can go into tables
built once per step. This script measures three such computations against the collector's own:

* ``current``: :func:`collect.tasks.modadd.transformer_logits`, what ``latent collect`` trains;
* ``readout``: ``W_out`` and ``W_U`` merged into one ``d_mlp × vocab`` matrix (a pure matmul fold);
* ``values``: ``W_O`` and the residual's share of the logits folded into the value tables (rows of
  ``d_model + vocab`` gathered with ``embedding_bag``), ``W_in`` kept as a matmul, readout merged;
* ``full``: the issue's fold: ``W_O`` and ``W_in`` folded into per-(head, position, token) tables of
  MLP pre-activations (rows of ``d_mlp + vocab``), so that only the merged readout is per-example matmul.

For each: the largest difference to ``current`` in float64 (logits, and gradients relative to their
largest entry), FLOPs per seed-epoch (``torch.utils.flop_counter`` for the matmuls; the gathers,
which it does not count, by hand: 2 FLOPs per gathered number forward, and twice that backward, for
the table's and the weights' gradients), and the median wall time of one training step (forward and
backward, 40 seeds × 2048 rows, the preset's batch) and of one forward pass, interleaved, on this
machine. The compute limit is each computation's FLOPs at the float32 matmul peak measured here.

    python bench/bench_fold.py            # about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench_reference import EVAL_EVERY, matmul_peak  # noqa: E402
from results import write_block  # noqa: E402
from latent.collect.tasks.base import stack_params  # noqa: E402
from latent.collect.tasks.modadd import (PRESETS, ModAddConfig, _gather_rows, init_transformer,  # noqa: E402
                                         transformer_logits, transformer_parts)

#: gathered numbers per example, filled by the folded computations (the flop counter misses them)
_GATHERED = {"n": 0}


def _attention(P, a, b, cfg):
    """Score tables, softmax weights ``(S, N, H, 3)`` and the residual inputs of the three positions."""
    p, H = cfg.p, cfg.n_heads
    WE, pos = P["W_E"], P["W_pos"]
    S, d = WE.shape[0], WE.shape[-1]
    dh = d // H
    x0, x1, x2 = WE[:, :p] + pos[:, 0:1], WE[:, :p] + pos[:, 1:2], WE[:, p] + pos[:, 2]
    q = torch.einsum("shed,sd->she", P["W_Q"], x2)
    kq = torch.einsum("shed,she->shd", P["W_K"], q) / math.sqrt(dh)
    s0, s1 = torch.einsum("spd,shd->sph", x0, kq), torch.einsum("spd,shd->sph", x1, kq)
    s2 = torch.einsum("sd,shd->sh", x2, kq)
    scores = torch.stack([_gather_rows(s0, a), _gather_rows(s1, b), s2[:, None].expand(S, a.shape[1], H)], dim=-1)
    return torch.softmax(scores, dim=-1), torch.cat([x0, x1, x2[:, None]], 1), x2


def _bag(P, a, b, cfg, w, x, out_maps):
    """``Σ_h Σ_pos w[pos, h] · (value row of that token) · out_maps[h]ᵀ`` per example, as one
    ``embedding_bag`` over per-(seed, head, position, token) tables: ``(S, N, C)``."""
    S, H, p = w.shape[0], cfg.n_heads, cfg.p
    v = torch.einsum("spd,shed->shpe", x, P["W_V"])  # (S, H, 2p + 1, dh)
    table = torch.einsum("shpe,shce->shpc", v, out_maps)  # (S, H, 2p + 1, C)
    R, C, n = table.shape[2], table.shape[3], a.shape[1]
    tok = torch.stack([a, b + p, torch.full_like(a, 2 * p)], dim=-1)  # rows of positions 0, 1, 2
    idx = (torch.arange(S)[:, None, None, None] * H + torch.arange(H)[None, None, :, None]) * R + tok[:, :, None, :]
    _GATHERED["n"] += 3 * H * C * S * n
    return F.embedding_bag(idx.reshape(S * n, 3 * H), table.reshape(S * H * R, C),
                           per_sample_weights=w.reshape(S * n, 3 * H), mode="sum").view(S, n, C)


def _w_o(P, cfg):
    S, d = P["W_O"].shape[:2]
    return P["W_O"].reshape(S, d, cfg.n_heads, d // cfg.n_heads)  # (S, d, H, dh)


def readout_logits(P, a, b, cfg):
    """``current`` with ``W_outᵀ W_U`` merged: logits = (resid + b_out) W_U + relu(·) M."""
    resid, hidden = transformer_parts(P, a, b, cfg)
    M = torch.bmm(P["W_out"].transpose(1, 2), P["W_U"])
    return torch.baddbmm(torch.bmm(resid + P["b_out"], P["W_U"]), hidden, M)


def values_logits(P, a, b, cfg):
    """W_O and the residual's logits folded into value tables; W_in a matmul; readout merged."""
    w, x, x2 = _attention(P, a, b, cfg)
    WO = _w_o(P, cfg)
    d = WO.shape[1]
    maps = torch.cat([WO.permute(0, 2, 1, 3), torch.einsum("sdv,sdhe->shve", P["W_U"], WO)], dim=2)
    out = _bag(P, a, b, cfg, w, x, maps)
    hidden = torch.relu(torch.baddbmm(P["b_in"], out[..., :d] + x2[:, None], P["W_in"].transpose(1, 2)))
    M = torch.bmm(P["W_out"].transpose(1, 2), P["W_U"])
    return torch.baddbmm(out[..., d:] + torch.bmm(x2[:, None] + P["b_out"], P["W_U"]), hidden, M)


def full_logits(P, a, b, cfg):
    """W_O and W_in folded into tables of MLP pre-activations; only the merged readout per example."""
    w, x, x2 = _attention(P, a, b, cfg)
    WO = _w_o(P, cfg)
    dm = P["W_in"].shape[1]
    maps = torch.cat([torch.einsum("smd,sdhe->shme", P["W_in"], WO), torch.einsum("sdv,sdhe->shve", P["W_U"], WO)],
                     dim=2)
    out = _bag(P, a, b, cfg, w, x, maps)
    pre = out[..., :dm] + torch.bmm(x2[:, None], P["W_in"].transpose(1, 2)) + P["b_in"]
    M = torch.bmm(P["W_out"].transpose(1, 2), P["W_U"])
    return torch.baddbmm(out[..., dm:] + torch.bmm(x2[:, None] + P["b_out"], P["W_U"]), torch.relu(pre), M)


VARIANTS = {"current": transformer_logits, "readout": readout_logits, "values": values_logits, "full": full_logits}


def _params(cfg, n_seeds, dtype=torch.float32):
    P = stack_params([init_transformer(cfg, torch.Generator().manual_seed(s)) for s in range(n_seeds)],
                     torch.device("cpu"))
    return {k: v.detach().to(dtype).requires_grad_(True) for k, v in P.items()}


def _rows(cfg, n_seeds, n, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = (torch.randint(0, cfg.p, (n_seeds, n), generator=g) for _ in range(2))
    return a, b, (a + b) % cfg.p


def _loss(fn, P, a, b, y, cfg):
    logits = fn(P, a, b, cfg)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"), logits


def exactness(cfg) -> dict[str, tuple[float, float]]:
    """Largest |Δ logit| and largest gradient difference relative to the gradient's largest entry,
    against ``current``, in float64 on 4 seeds × 500 random rows."""
    P = _params(cfg, 4, torch.float64)
    a, b, y = _rows(cfg, 4, 500, 1)
    ref_loss, ref_logits = _loss(transformer_logits, P, a, b, y, cfg)
    ref_grads = torch.autograd.grad(ref_loss, list(P.values()))
    out = {}
    for name, fn in VARIANTS.items():
        loss, logits = _loss(fn, P, a, b, y, cfg)
        grads = torch.autograd.grad(loss, list(P.values()))
        out[name] = ((logits - ref_logits).abs().max().item(),
                     max(((g - r).abs().max() / r.abs().max()).item() for g, r in zip(grads, ref_grads)))
    return out


def flops_per_seed_epoch(cfg) -> dict[str, float]:
    """FLOPs per seed-epoch: a training step and a forward pass of one seed at the preset's batch, scaled
    to the training rows and a tenth of the validation rows; gathers counted by hand (module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    P = _params(cfg, 1)
    a, b, y = _rows(cfg, 1, cfg.batch_size, 2)
    n_val = cfg.p ** 2 - cfg.n_train
    out = {}
    for name, fn in VARIANTS.items():
        _GATHERED["n"] = 0
        with FlopCounterMode(display=False) as fc:
            _loss(fn, P, a, b, y, cfg)[0].backward()
        train = fc.get_total_flops() + 2 * _GATHERED["n"] * 3  # forward, then the table's and weights' gradients
        _GATHERED["n"] = 0
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            fn(P, a, b, cfg)
        forward = fc.get_total_flops() + 2 * _GATHERED["n"]
        out[name] = (train * cfg.n_train + forward * n_val / EVAL_EVERY) / cfg.batch_size
    return out


def timings(cfg, n_seeds: int, reps: int) -> dict[str, tuple[float, float]]:
    """Median seconds of one training step and of one forward pass (``n_seeds`` × batch rows),
    every computation in turn within each repetition, after one warm-up round."""
    P = _params(cfg, n_seeds)
    a, b, y = _rows(cfg, n_seeds, cfg.batch_size, 3)

    def step(fn):
        t0 = time.perf_counter()
        _loss(fn, P, a, b, y, cfg)[0].backward()
        for v in P.values():
            v.grad = None
        t1 = time.perf_counter()
        with torch.no_grad():
            fn(P, a, b, cfg)
        return t1 - t0, time.perf_counter() - t1

    for fn in VARIANTS.values():
        step(fn)
    seen = {name: [] for name in VARIANTS}
    for _ in range(reps):
        for name, fn in VARIANTS.items():
            seen[name].append(step(fn))
    return {name: (statistics.median(t for t, _ in v), statistics.median(f for _, f in v)) for name, v in seen.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModAddConfig(**PRESETS["paper"])
    # the folded computations are written for one operation without LayerNorm, as the paper preset is
    assert not cfg.layernorm and cfg.ops == ("add",)
    exact = exactness(cfg)
    flops = flops_per_seed_epoch(cfg)
    times = timings(cfg, args.seeds, args.reps)
    peak = matmul_peak(args.threads)
    n_val = cfg.p ** 2 - cfg.n_train
    # seconds per seed-epoch: n_train / batch training steps, and a validation pass every EVAL_EVERY epochs
    seconds = {name: (step * cfg.n_train + fwd * n_val / EVAL_EVERY) / cfg.batch_size / args.seeds
               for name, (step, fwd) in times.items()}
    rows = ["| computation | max abs. Δ logit (float64) | max rel. Δ gradient | GFLOP per seed-epoch | FLOPs vs current "
            f"| training step, {args.seeds} × {cfg.batch_size} rows | forward pass | s per seed-epoch | vs current | "
            "compute limit (s per seed-epoch) | share of its limit |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in VARIANTS:
        limit = flops[name] / peak
        rows.append(f"| `{name}` | {exact[name][0]:.1e} | {exact[name][1]:.1e} | {flops[name] / 1e9:.2f} | "
                    f"{flops['current'] / flops[name]:.2f}x fewer | {times[name][0]:.3f} s | {times[name][1]:.3f} s | "
                    f"{seconds[name]:.4f} | {seconds['current'] / seconds[name]:.2f}x | {limit:.4f} | "
                    f"{100 * limit / seconds[name]:.0f} % |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    best = min(seconds, key=seconds.get)
    text = "\n".join(rows) + (
        f"\n\nThe paper preset (p {cfg.p}, d_model {cfg.d_model}, {cfg.n_heads} heads, d_mlp {cfg.d_mlp}, batch "
        f"{cfg.batch_size}), {args.seeds} seeds batched; each computation's training step and forward pass timed in "
        f"turn within each of {args.reps} repetitions (medians). Seconds per seed-epoch: a step per "
        f"{cfg.batch_size} of the {cfg.n_train} training rows plus a forward pass per {cfg.batch_size} of the "
        f"{n_val} validation rows every {EVAL_EVERY} epochs, over {args.seeds} seeds (checkpoint metrics not "
        f"included). Exactness: float64, 4 seeds × 500 random rows, against `current`. FLOPs: "
        "torch.utils.flop_counter for the matmuls, the `embedding_bag` gathers by hand (it does not count them). "
        f"Compute limit: those FLOPs at this CPU's float32 matmul peak, {peak / 1e9:.0f} GFLOP/s ({args.threads} "
        f"threads). Fastest here: `{best}`. {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}; load average {load:.1f} at the end. Command: `python bench/bench_fold.py`.")
    print(text)
    if not args.no_write:
        write_block("fold", text, title="Folding the paper transformer further (`bench/bench_fold.py`)")


if __name__ == "__main__":
    main()
