"""Where EM starts: how often a restart reaches the true model's likelihood, KMeans vs segments.

For each simulated study (the recovery benchmark's standard family, medium level) the true
model's log-likelihood is computed from the planted labels (an oracle: its parameters estimated
from the true states), then K = K_true is fitted from several starts of each kind, on all runs,
32 EM iterations. A restart "reaches the truth" when its log-likelihood is within 5 nats of the
best of the oracle and every restart. Prints the table and writes it into bench/RESULTS.md
between ``<!-- init:begin -->`` and ``<!-- init:end -->``.

    python bench/bench_init.py                 # 20 studies × 6 restarts per start
    python bench/bench_init.py --draws 3 --no-write
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_block  # noqa: E402

from latent.features import build_features  # noqa: E402
from latent.hmm import build_hmm, fit_restart  # noqa: E402
from latent.segments import params_from_labels, run_segments  # noqa: E402
from latent.simulate import random_config as draw_config, simulate  # noqa: E402


def oracle(X, lengths, labels, k) -> float:
    """Log-likelihood of the model estimated from the true labels (the planted states)."""
    return build_hmm(params_from_labels(X, lengths, labels, k, min_covar=0.0), "full").score(X, lengths)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=6)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    reached = {"kmeans": 0, "segments": 0}
    any_reached = {"kmeans": 0, "segments": 0}
    gaps = {"kmeans": [], "segments": []}
    for i in range(args.draws):
        cfg = draw_config("standard", "medium", i, 300, 40)
        table, truth = simulate(cfg)
        fm = build_features(table, [c for c in table.columns if c not in ("seed", "step", "epoch", "val_acc")],
                            scaling="global")
        X, L, K = fm.X, fm.lengths, truth.n_states
        labels = np.concatenate([truth.paths[s] for s in fm.seeds])
        segs = run_segments(X, L)
        lls = {init: np.array([r["train_loglik"] if r["ok"] else -np.inf for r in (
            fit_restart(X, L, None, None, K, 1000 * i + r, "full", 32, 1e-2, restart=r, init=init, segments=segs)
            for r in range(args.restarts))]) for init in ("kmeans", "segments")}
        best = max(oracle(X, L, labels, K), *(v.max() for v in lls.values()))
        for init, v in lls.items():
            ok = v > best - 5
            reached[init] += int(ok.sum())
            any_reached[init] += int(ok.any())
            gaps[init].append(float(best - v.max()))
        print(f"study {i}: K = {K}, restarts reaching the truth: kmeans {int((lls['kmeans'] > best - 5).sum())}/"
              f"{args.restarts}, segments {int((lls['segments'] > best - 5).sum())}/{args.restarts}", flush=True)
    n = args.draws * args.restarts
    lines = [f"{args.draws} simulated studies (standard family, medium level, 40 runs × 300 checkpoints), K = K_true, "
             f"{args.restarts} restarts of each start, 32 EM iterations; machine: {os.cpu_count()} CPUs, "
             f"{platform.machine()}, Python {platform.python_version()}.", "",
             "| start | restarts reaching the true model's likelihood | studies where some restart does "
             "| median shortfall of the best restart (nats) |", "|---|---|---|---|"]
    for init, label in (("kmeans", "KMeans of checkpoints (hmmlearn 0.3.0, the reference)"),
                        ("segments", "segments (`latent fit` default)")):
        lines.append(f"| {label} | {reached[init]}/{n} ({100 * reached[init] / n:.0f} %) | "
                     f"{any_reached[init]}/{args.draws} | {np.median(gaps[init]):.0f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_block("init", text, title="Where EM starts (`bench/bench_init.py`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
