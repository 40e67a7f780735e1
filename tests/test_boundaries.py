"""Discrete transitions or cuts through continuous change (latent.boundaries).

Expectations: the step statistic recomputed with numpy's least squares on each window; jumps
planted in simulated runs; smooth curves cut at arbitrary places as the negative control.
"""

import numpy as np
import pytest

from latent.boundaries import boundary_sharpness, step_statistic, transition_shapes, verdict
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
    s = step_statistic(x, 6, (0,), 0)
    assert len(s) == 60 - 12 + 1
    for b in (6, 20, 33, 54):
        assert s[b - 6] == pytest.approx(_direct(x, b, 6), rel=1e-9)
    # a quadratic is explained exactly without the step; a step is not
    t = np.arange(40.0)
    curve = 0.01 * t**2 - 0.3 * t + rng.normal(0, 0.01, 40)
    jump = curve + 3.0 * (t >= 20)
    assert step_statistic(curve, 8, (0,), 0)[20 - 8] < 1.0 < step_statistic(jump, 8, (0,), 0)[20 - 8]


def _direct_ramps(x, b, m, shapes):
    """The share of the quadratic's residual the best straight ramp explains, by least squares per shape."""
    w = x[b - m:b + m]
    t = np.arange(-m, m, dtype=float)
    smooth = np.column_stack([np.ones(2 * m), t, t**2])
    ra = np.sum((w - smooth @ np.linalg.lstsq(smooth, w, rcond=None)[0]) ** 2)
    best = np.inf
    for s, width in shapes:
        # 0 up to row s - 1, 1 from row s + width on, a straight line between (width 0: a step at s)
        r = np.interp(t, [s - 1, s + width], [0.0, 1.0])
        design = np.column_stack([smooth, r])
        best = min(best, np.sum((w - design @ np.linalg.lstsq(design, w, rcond=None)[0]) ** 2))
    return (ra - best) / best


def _shapes_by_definition(m, widths, shift):
    """Every (first row, width) whose last 0 (row s - 1) and first 1 (row s + width) lie in the window of rows
    -m .. m - 1 and whose middle, (s - 1 + s + width) / 2, lies within shift of the boundary's middle, -1/2
    (for odd widths the middles fall on whole rows, so the nearest ones count: up to shift + 1/2 late)."""
    out = set()
    for width in widths:
        for s in range(-m + 1, m - width):
            middle = (2 * s + width - 1) / 2
            if -0.5 - shift <= middle <= -0.5 + shift + (0.5 if width % 2 else 0.0):
                out.add((s, width))
    return out


def test_ramp_statistic_is_the_best_ramps_share_beyond_a_quadratic():
    shapes = transition_shapes(8, (0, 3, 6), 2)
    assert len(shapes) == len(set(shapes)) and set(shapes) == _shapes_by_definition(8, (0, 3, 6), 2)
    assert set(transition_shapes(10, (0, 2, 4, 6, 8), 3)) == _shapes_by_definition(10, (0, 2, 4, 6, 8), 3)
    assert transition_shapes(8, (0,), 0) == [(0, 0)]
    with pytest.raises(ValueError, match="fits a window"):
        transition_shapes(3, (9,), 0)
    rng = np.random.default_rng(3)
    x = np.cumsum(rng.normal(size=80))
    s = step_statistic(x, 8, (0, 3, 6), 2)
    for b in (8, 30, 55, 72):
        assert s[b - 8] == pytest.approx(_direct_ramps(x, b, 8, _shapes_by_definition(8, (0, 3, 6), 2)), rel=1e-8)
    # a step alone at the boundary is the step statistic
    assert step_statistic(x, 6, (0,), 0)[30 - 6] == pytest.approx(_direct(x, 30, 6), rel=1e-9)
    # a 5-checkpoint ramp on a smooth curve: the ramps explain nearly all of it, the step far less
    t = np.arange(40.0)
    ramp = 0.01 * t**2 + 3.0 * np.clip((t - 18) / 6, 0, 1) + rng.normal(0, 0.01, 40)
    assert step_statistic(ramp, 10, (0, 2, 4, 6), 3)[20 - 10] > 10 * step_statistic(ramp, 10, (0,), 0)[20 - 10]


def _runs_and_paths(cfg):
    table, truth = simulate(cfg)
    feats = [c for c in table.columns if c not in ("seed", "step", "epoch", "val_acc")]
    runs = [g[feats].to_numpy(float) for _, g in table.groupby("seed", sort=True)]
    return runs, [truth.paths[s] for s in sorted(truth.paths)], truth


def _at_truth(cfg):
    runs, paths, truth = _runs_and_paths(cfg)
    X, P = np.concatenate(runs), np.concatenate(paths)
    means = np.array([X[P == k].mean(axis=0) for k in range(truth.n_states)])
    covars = np.array([np.cov(X[P == k].T) for k in range(truth.n_states)])
    return runs, paths, means, covars


STEP_ONLY = {"window": 8, "ramps": (0,), "shift": 0}  # the test until 2026-12-08


def test_planted_jumps_between_states_are_discrete_transitions():
    runs, paths, means, covars = _at_truth(random_config("standard", "medium", 0))
    step = boundary_sharpness(runs, paths, means, covars, **STEP_ONLY)
    judged = [r for r in step["transitions"] if r["discrete"] is not None]
    assert judged and all(r["discrete"] for r in judged)
    assert sum(r["jumps"] for r in judged) >= 0.8 * sum(r["boundaries"] for r in judged)
    assert verdict(step).startswith(f"{len(judged)} of {len(judged)} transitions judged are discrete")
    # the default also looks for ramps, and pays for the search with some power on one-checkpoint jumps
    out = boundary_sharpness(runs, paths, means, covars)
    judged = [r for r in out["transitions"] if r["discrete"] is not None]
    assert len(judged) >= 5 and sum(r["discrete"] for r in judged) >= 2 / 3 * len(judged)
    assert sum(r["jumps"] for r in judged) >= 0.6 * sum(r["boundaries"] for r in judged)


def test_planted_ramps_are_discrete_transitions_only_to_the_ramp_search():
    # realistic states joined by ramps of 5 checkpoints, with drift, AR(1) noise and run offsets; on the
    # true states a step at the boundary jumps no more often than the placebo points (chance)
    runs, paths, means, covars = _at_truth(random_config("realistic", "easy", 0))
    step = boundary_sharpness(runs, paths, means, covars, **STEP_ONLY)
    assert step["judged_transitions"] >= 2 and step["discrete_transitions"] == 0
    assert sum(r["jumps"] for r in step["transitions"]) <= 0.1 * sum(r["boundaries"] for r in step["transitions"])
    out = boundary_sharpness(runs, paths, means, covars)
    assert out["discrete_transitions"] >= 1 and out["ramps"] == [0, 2, 4, 6, 8] and out["window"] == 10
    assert sum(r["jumps"] for r in out["transitions"]) >= 0.3 * sum(r["boundaries"] for r in out["transitions"])


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
