"""bench/trend_model.py, the continuous null (local linear trend): its Kalman likelihood against the
multivariate normal written out in full, padding, and its variances recovered from a planted study."""

import sys
from pathlib import Path

import numpy as np
from scipy.stats import multivariate_normal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from trend_model import TrendParams, fit, score_runs  # noqa: E402


def _full_covariance(T, obs, level, slope, v0, w0):
    """Cov of x_1..x_T written from the innovations: l_t = l_0 + t b_0 + Σ_{s≤t} η_s + Σ_{s<t} (t−s) ζ_s."""
    t = np.arange(T)
    lo = np.minimum.outer(t, t)
    cov = v0 + np.outer(t, t) * w0 + level * lo
    # Σ_{s=1}^{min} (t−s)(u−s) slope innovations (ζ_s enters the level from row s + 1 on)
    for i in range(T):
        for j in range(T):
            s = np.arange(1, min(i, j) + 1)
            cov[i, j] += slope * np.sum((i - s) * (j - s))
    return cov + obs * np.eye(T)


def test_kalman_likelihood_is_the_full_gaussian():
    rng = np.random.default_rng(0)
    D, T = 3, 9
    p = TrendParams(obs=rng.uniform(0.1, 1, D), level=rng.uniform(0.01, 0.2, D), slope=rng.uniform(1e-3, 1e-2, D),
                    m0=rng.normal(size=D), v0=rng.uniform(0.5, 2, D), s0=rng.normal(0, 0.1, D),
                    w0=rng.uniform(0.01, 0.1, D))
    x = rng.normal(size=(T, D))
    want = 0.0
    for j in range(D):
        mean = p.m0[j] + np.arange(T) * p.s0[j]
        cov = _full_covariance(T, p.obs[j], p.level[j], p.slope[j], p.v0[j], p.w0[j])
        want += multivariate_normal(mean, cov).logpdf(x[:, j])
    got = score_runs(x, [T], p)
    assert np.allclose(got, [want], atol=1e-9)


def test_padding_leaves_each_run_its_own_score():
    rng = np.random.default_rng(1)
    p = TrendParams(*(rng.uniform(0.05, 0.5, (7, 2))))
    a, b = rng.normal(size=(11, 2)), rng.normal(size=(4, 2))
    both = score_runs(np.vstack([a, b]), [11, 4], p)
    assert np.allclose(both, [score_runs(a, [11], p)[0], score_runs(b, [4], p)[0]])


def test_fit_recovers_planted_variances_and_prefers_the_truth():
    rng = np.random.default_rng(2)
    R, T = 30, 200
    true = {"obs": 0.05, "level": 1e-3, "slope": 1e-6}
    runs = []
    for _ in range(R):
        lvl, slp = rng.normal(0, 1), rng.normal(0, 0.01)
        x = np.empty(T)
        for t in range(T):
            x[t] = lvl + rng.normal(0, np.sqrt(true["obs"]))
            lvl, slp = lvl + slp + rng.normal(0, np.sqrt(true["level"])), slp + rng.normal(0, np.sqrt(true["slope"]))
        runs.append(x)
    X = np.concatenate(runs)[:, None]
    got = fit(X, [T] * R)
    # each variance within a factor of 2 of the truth (the grid's last step is 10^0.125 = 1.33)
    for name, v in true.items():
        assert 0.5 < getattr(got, name)[0] / v < 2, (name, getattr(got, name)[0])
    # and the fitted model scores the runs at least as well as the planted one with the same prior
    planted = TrendParams(np.array([true["obs"]]), np.array([true["level"]]), np.array([true["slope"]]),
                          got.m0, got.v0, got.s0, got.w0)
    assert score_runs(X, [T] * R, got).sum() >= score_runs(X, [T] * R, planted).sum() - 1e-6
