"""Planted truths for the ``latent fit`` tests: sample runs from known HMMs and write hand-made studies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from latent.store import atomic_write_json, atomic_write_parquet, run_stem

FEATURES = ["f0", "f1", "f2", "f3"]


def well_separated_means(k: int, d: int, scale: float = 6.0) -> np.ndarray:
    """State means on a staircase, different on every feature (state k is k*scale on feature 0...)."""
    means = np.zeros((k, d))
    for s in range(k):
        for j in range(d):
            means[s, j] = scale * ((s * (j + 1)) % (k + 1))
    return means


def emit(states, means, rng, noise: float = 1.0) -> np.ndarray:
    return means[states] + noise * rng.standard_normal((len(states), means.shape[1]))


def write_study(
    root: Path,
    runs: dict[int, pd.DataFrame],
    features=FEATURES,
    metric: str = "val_acc",
    threshold: float = 0.9,
    direction: str = "above",
    step_unit: str = "epoch",
) -> Path:
    """A hand-made study: ``study.json`` plus ``runs/seed-*.parquet``."""
    root = Path(root)
    (root / "runs").mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        root / "study.json",
        {
            "format": "latent.study/1",
            "name": root.name,
            "task": "planted",
            "seeds": sorted(runs),
            "step_unit": step_unit,
            "convergence": {"metric": metric, "threshold": threshold, "direction": direction},
            "features": list(features),
        },
    )
    for seed, frame in runs.items():
        atomic_write_parquet(root / "runs" / f"{run_stem(seed)}.parquet", frame)
    return root


def run_table(seed: int, values: np.ndarray, features, step_every: int = 10, **extra) -> pd.DataFrame:
    T = len(values)
    frame = pd.DataFrame({"seed": seed, "step": np.arange(T) * step_every, "epoch": np.arange(T, dtype=float)})
    for j, f in enumerate(features):
        frame[f] = values[:, j]
    for name, col in extra.items():
        frame[name] = col
    return frame


def best_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of positions where labels agree, maximised over permutations of ``b``'s labels (brute force)."""
    from itertools import permutations

    ka = int(max(a.max(), b.max())) + 1
    best = 0.0
    for perm in permutations(range(ka)):
        best = max(best, float(np.mean(np.asarray(perm)[b] == a)))
    return best


def detour_study(root: Path, n_runs: int = 36, T: int = 120, seed: int = 3, step_every: int = 10):
    """Runs through 0 → (optional detour D) → 2 → 3 with planted convergence time.

    True states: 0 start (15–25 checkpoints), 1 the optional detour (half the runs, 10–30
    checkpoints), 2 obligatory (15–25), 3 final. A run converges (``val_acc`` jumps to 0.95) at
    the checkpoint it enters state 3 plus 0–4 checkpoints of noise, so every checkpoint in
    states 0, 1, 2 adds ``step_every`` to the convergence step: in fractions of T,
    y = T·step_every·(f0 + f1 + f2) + noise, i.e. the planted no-intercept coefficients are
    β = (T·step, T·step, T·step, 0).

    Returns (root, {seed: true states}, planted beta).
    """
    rng = np.random.default_rng(seed)
    means = well_separated_means(4, len(FEATURES))
    runs, truth = {}, {}
    for s in range(n_runs):
        d0 = rng.integers(15, 26)
        dd = rng.integers(10, 31) if s % 2 == 0 else 0
        d2 = rng.integers(15, 26)
        states = np.concatenate([np.zeros(d0, int), np.ones(dd, int), np.full(d2, 2), np.full(T - d0 - dd - d2, 3)])
        x = emit(states, means, rng)
        t_conv = d0 + dd + d2 + rng.integers(0, 5)
        acc = np.where(np.arange(T) >= t_conv, 0.95, 0.5)
        runs[s] = run_table(s, x, FEATURES, step_every=step_every, val_acc=acc)
        truth[s] = states
    beta = np.array([T * step_every] * 3 + [0.0])
    return write_study(root, runs), truth, beta
