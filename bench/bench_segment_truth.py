"""Does the trial segment model's likelihood keep the true states, and which part of real-looking runs
makes it lose them? (issue 20; after ``bench/bench_segment_k.py``)

For a ``realistic`` draw, the model (``bench/segment_model.py``, without the move) is estimated from
the *true* visits of every run, and every run is decoded once with those estimates (exact segment
Viterbi). The adjusted Rand of that decoding against the truth says whether the model's likelihood
holds the truth where it stands: 1 means it keeps the true states, lower means even the truth's own
estimates prefer another labelling, so no search can recover the truth under this model.

The same draw (same structure seed) is then simulated with one of the realistic family's parts
taken out, to see which part costs the labelling:

* ``as drawn``: the draw's own settings;
* ``no ramp``: switches in one checkpoint instead of 5-checkpoint ramps;
* ``no offsets``: no run offsets of the states' means;
* ``no drift``: no velocity inside states;
* ``iid noise``: the noise without autocorrelation (the model restarts an AR(1) process at each
  visit; the draws carry one through the whole run);
* ``φ true``: the draw as drawn, the model's φ fixed at the draw's autocorrelation instead of
  chosen from the grid;
* ``ramps as moves``: the draw as drawn, the model *with* the move, estimated from the true ramps
  (the 5 checkpoints from each switch) as moves.

    python bench/bench_segment_truth.py --draws 5 --workers 2           # medium and easy
    python bench/bench_segment_truth.py --show easy:1                   # one draw in words

Raw lines: bench/results/segment-truth.jsonl; the ``segment-truth`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import run_records, write_block  # noqa: E402

RAW = Path(__file__).with_name("results") / "segment-truth.jsonl"
D_MIN = 5
LEVELS = ("medium", "easy")
VARIANTS = {"as drawn": {}, "no ramp": {"ramp": 0}, "no offsets": {"offset": 0.0}, "no drift": {"drift": 0.0},
            "iid noise": {"ar": 0.0}, "φ true": {}, "ramps as moves": {}}


def at_truth(cfg, fix_phi: bool = False, ramps_as_moves: bool = False) -> dict:
    """The model estimated from ``cfg``'s true visits (φ from the grid, or fixed at ``cfg.ar``), and one
    decoding of every run with it: adjusted Rand, rows per state, φ, τ² and how far apart the states are.
    With ``ramps_as_moves``, the model has the move, estimated from the true ramps (the ``cfg.ramp``
    checkpoints from each switch), and a decoded move's rows go to the place it leads to."""
    from bench_family_start import prepared
    from segment_model import PHI_GRID, estimate, place_labels, switches_as_moves, viterbi, visits_from_labels
    from sklearn.metrics import adjusted_rand_score

    _, truth, X, lengths, paths = prepared(cfg)
    K = truth.n_states
    labels = [switches_as_moves(p, cfg.ramp, K) for p in paths] if ramps_as_moves else paths
    n_states = K + int(ramps_as_moves)
    P = estimate(X, lengths, [visits_from_labels(p) for p in labels], n_states,
                 np.r_[np.full(K, D_MIN), [1] * int(ramps_as_moves)], moves=ramps_as_moves,
                 grid=(cfg.ar,) if fix_phi else PHI_GRID)
    stationary = np.sqrt(P.sig2 / (1 - P.phi**2))  # (K, D)
    apart = [float(np.median(np.abs(P.mu[a] - P.mu[b]) / np.minimum(stationary[a], stationary[b])))
             for a in range(K) for b in range(a + 1, K)]
    runs = np.split(X, np.cumsum(lengths)[:-1])
    decoded = np.concatenate([place_labels(viterbi(x, P)[1], len(x), K) for x in runs])
    true = np.concatenate(paths)
    return {"k": K, "ari": float(adjusted_rand_score(true, decoded)),
            "true_rows": np.bincount(true, minlength=K).tolist(),
            "decoded_rows": np.bincount(decoded[decoded >= 0], minlength=K).tolist(),
            "phi": sorted({round(float(f), 2) for f in P.phi}), "tau2_median": float(np.median(P.tau2)),
            "apart_min": min(apart), "apart_max": max(apart)}


def variant_config(level: str, i: int, variant: str):
    from latent.simulate import random_config

    return replace(random_config("realistic", level, i), **VARIANTS[variant])


def one(task: tuple) -> dict:
    level, i, variant = task
    t0 = time.perf_counter()
    cfg = variant_config(level, i, variant)
    rec = at_truth(cfg, fix_phi=variant == "φ true", ramps_as_moves=variant == "ramps as moves")
    return {"level": level, "draw": i, "variant": variant, "ar": cfg.ar, **rec, "seconds": time.perf_counter() - t0}


def show(level: str, i: int) -> str:
    """One draw in words, as drawn and with φ fixed at the truth."""
    lines = []
    for variant in ("as drawn", "φ true"):
        r = one((level, i, variant))
        if not lines:
            lines.append(f"{level} draw {i}: true K {r['k']}, true autocorrelation {r['ar']:.3f}; rows per true "
                         f"state {', '.join(map(str, r['true_rows']))}")
        lines.append(f"  {'φ from the grid' if variant == 'as drawn' else 'φ fixed at the truth'} "
                     f"({', '.join(f'{f:.2f}' for f in r['phi'])}): offset spread τ² (median) "
                     f"{r['tau2_median']:.2g}; "
                     f"state means apart {r['apart_min']:.1f}-{r['apart_max']:.1f} stationary sds (median feature); "
                     f"one decoding: adjusted Rand {r['ari']:.2f}, rows {', '.join(map(str, r['decoded_rows']))}")
    return "\n".join(lines)


def table(done: list[dict]) -> str:
    lines = ["| level | draws (true K) | " + " | ".join(f"{v}: adjusted Rand (median, min)" for v in VARIANTS) + " |",
             "|---|---|" + "---|" * len(VARIANTS)]
    for level in LEVELS:
        mine = [r for r in done if r["level"] == level]
        draws = sorted({r["draw"] for r in mine})
        if not draws:
            continue
        cells = []
        for v in VARIANTS:
            a = [r["ari"] for r in mine if r["variant"] == v]
            cells.append(f"{np.median(a):.2f}, {min(a):.2f} ({len(a)})" if a else "–")
        ks = ", ".join(str(next(r["k"] for r in mine if r["draw"] == d)) for d in draws)
        lines.append(f"| {level} | {len(draws)} ({ks}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--show", metavar="LEVEL:DRAW", help="print one realistic draw in words and stop")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.show:
        level, draw = args.show.split(":")
        print(show(level, int(draw)))
        return 0
    done = [json.loads(line) for line in RAW.read_text().splitlines()] if RAW.exists() else []
    have = {(r["level"], r["draw"], r["variant"]) for r in done}
    todo = [(level, i, v) for level in LEVELS for i in range(args.draws) for v in VARIANTS
            if (level, i, v) not in have]
    done += run_records(RAW, one, todo, args.workers)
    text = table(done)
    print(text)
    if not args.no_write and done:
        secs = [r["seconds"] for r in done]
        write_block("segment-truth", (
            "The trial segment model without the move (`bench/segment_model.py`), estimated from the true visits of "
            "every run of a `realistic` draw, then every run decoded once with those estimates (exact segment "
            "Viterbi): the adjusted Rand of that decoding against the truth. 1: the model's likelihood keeps the "
            "truth; lower: even the truth's own estimates prefer another labelling. Each column simulates the same "
            "draw (same structure seed) with one part of the realistic family taken out (`no ramp`: switches in one "
            "checkpoint; `no offsets`: no run offsets; `no drift`: no velocity inside states; `iid noise`: no "
            "autocorrelation), or fixes the model's φ at the draw's autocorrelation (`φ true`), or gives the model "
            "the move, estimated from the true ramps (`ramps as moves`; a move's rows go to the place it leads to)."
            f"\n\n{text}\n\nRaw: bench/results/segment-truth.jsonl (seconds per decoding "
            f"{min(secs):.0f}-{max(secs):.0f}, on {os.cpu_count()} cores). Command: "
            f"`python bench/bench_segment_truth.py --draws {args.draws} --workers 2`; one draw in words: "
            "`python bench/bench_segment_truth.py --show easy:1`."),
            title="Does the segment model's likelihood keep the true states? (`bench/bench_segment_truth.py`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
