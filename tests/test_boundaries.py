"""Discrete transitions or cuts through continuous change (latent.boundaries).

Expectations: the step statistic recomputed with numpy's least squares on each window; jumps
planted in simulated runs; smooth curves cut at arbitrary places as the negative control.
"""

import numpy as np
import pytest

from latent.boundaries import boundary_sharpness, step_statistic, verdict
from latent.simulate import random_config, simulate


def _direct(x, b, m):
    w = x[b - m:b + m]
    t = np.arange(-m, m) / m
    smooth = np.column_stack([np.ones(2 * m), t, t**2])
    step = np.column_stack([smooth, t >= 0])
    ra = np.sum((w - smooth @ np.linalg.lstsq(smooth, w, rcond=None)[0]) ** 2)
    rb = np.sum((w - step @ np.linalg.lstsq(step, w, rcond=None)[0]) ** 2)
    return (ra - rb) / rb


def test_step_statistic_is_the_share_a_step_explains_beyond_a_quadratic():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=60))
    s = step_statistic(x, 6)
    assert len(s) == 60 - 12 + 1
    for b in (6, 20, 33, 54):
        assert s[b - 6] == pytest.approx(_direct(x, b, 6), rel=1e-9)
    # a quadratic is explained exactly without the step; a step is not
    t = np.arange(40.0)
    curve = 0.01 * t**2 - 0.3 * t + rng.normal(0, 0.01, 40)
    jump = curve + 3.0 * (t >= 20)
    assert step_statistic(curve, 8)[20 - 8] < 1.0 < step_statistic(jump, 8)[20 - 8]


def _runs_and_paths(cfg):
    table, truth = simulate(cfg)
    feats = [c for c in table.columns if c not in ("seed", "step", "epoch", "val_acc")]
    runs = [g[feats].to_numpy(float) for _, g in table.groupby("seed", sort=True)]
    return runs, [truth.paths[s] for s in sorted(truth.paths)], truth


def test_planted_jumps_between_states_are_discrete_transitions():
    cfg = random_config("standard", "medium", 0)
    runs, paths, truth = _runs_and_paths(cfg)
    K = truth.n_states
    X, P = np.concatenate(runs), np.concatenate(paths)
    means = np.array([X[P == k].mean(axis=0) for k in range(K)])
    covars = np.array([np.cov(X[P == k].T) for k in range(K)])
    out = boundary_sharpness(runs, paths, means, covars)
    judged = [r for r in out["transitions"] if r["discrete"] is not None]
    assert judged and all(r["discrete"] for r in judged)
    assert sum(r["jumps"] for r in judged) >= 0.8 * sum(r["boundaries"] for r in judged)
    assert verdict(out).startswith(f"{len(judged)} of {len(judged)} transitions judged are discrete")


def test_smooth_change_cut_into_stretches_has_no_discrete_transition():
    # 30 runs of smooth curves (a slow sigmoid and a quadratic trend, run-specific timing, noise);
    # the "path" cuts each run into 4 stretches by where its first feature lies, as a place model would
    rng = np.random.default_rng(1)
    T, d = 200, 5
    t = np.arange(T) / T
    runs, paths = [], []
    amp, trend = rng.normal(0, 4, d), rng.normal(0, 3, d)
    for _ in range(30):
        mid = rng.uniform(0.3, 0.7)
        u = 1 / (1 + np.exp(-(t - mid) / 0.12))
        z = u[:, None] * amp + (t**2)[:, None] * trend + rng.normal(0, 0.3, (T, d))
        runs.append(z)
        level = u + 0.3 * t**2
        paths.append(np.digitize(level, np.quantile(level, [0.25, 0.5, 0.75])))
    X, P = np.concatenate(runs), np.concatenate(paths)
    means = np.array([X[P == k].mean(axis=0) for k in range(4)])
    covars = np.array([np.cov(X[P == k].T) for k in range(4)])
    out = boundary_sharpness(runs, paths, means, covars)
    judged = [r for r in out["transitions"] if r["discrete"] is not None]
    assert len(judged) >= 3 and not any(r["discrete"] for r in judged)
    assert out["discrete_transitions"] == 0 and verdict(out).startswith("no discrete transitions")
