"""bench/trend_model.py, the continuous null (local linear trend + AR(1)): its Kalman likelihood against
the multivariate normal written out in full, padding, and its parameters recovered from a planted study."""

import sys
from pathlib import Path

import numpy as np
from scipy.stats import multivariate_normal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from trend_model import TrendParams, fit, score_runs, simulate  # noqa: E402


def _full_covariance(T, obs, level, slope, v0, w0, ar=0.0, phi=0.0, t0=1.0, kappa=0.0):
    """Cov of x_0..x_{T-1} written from the innovations: l_t = l_0 + t b_0 + Σ_{s=1}^{t} η_s
    + Σ_{s=1}^{t-1} (t−s) ζ_s, η_s and ζ_s (entering between rows s − 1 and s) scaled by (1 + (s−1)/t0)^−κ;
    plus AR(1) and white noise."""
    t = np.arange(T)
    d = (1 + t / t0) ** -kappa  # d[s - 1] scales the innovations that enter at row s
    cov = v0 + np.outer(t, t) * w0
    for i in range(T):
        for j in range(T):
            s = np.arange(1, min(i, j) + 1)
            cov[i, j] += np.sum(level * d[s - 1]) + np.sum(slope * d[s - 1] * (i - s) * (j - s))
    return cov + obs * np.eye(T) + ar * phi ** np.abs(np.subtract.outer(t, t))


def test_kalman_likelihood_is_the_full_gaussian():
    rng = np.random.default_rng(0)
    D, T = 3, 9
    p = TrendParams(obs=rng.uniform(0.1, 1, D), level=rng.uniform(0.01, 0.2, D), slope=rng.uniform(1e-3, 1e-2, D),
                    ar=rng.uniform(0.1, 1, D), phi=np.array([0.0, 0.5, 0.95]),
                    m0=rng.normal(size=D), v0=rng.uniform(0.5, 2, D), s0=rng.normal(0, 0.1, D),
                    w0=rng.uniform(0.01, 0.1, D))
    x = rng.normal(size=(T, D))
    want = 0.0
    for j in range(D):
        mean = p.m0[j] + np.arange(T) * p.s0[j]
        cov = _full_covariance(T, p.obs[j], p.level[j], p.slope[j], p.v0[j], p.w0[j], p.ar[j], p.phi[j])
        want += multivariate_normal(mean, cov).logpdf(x[:, j])
    got = score_runs(x, [T], p)
    assert np.allclose(got, [want], atol=1e-9)


def test_slowing_likelihood_is_the_full_gaussian():
    rng = np.random.default_rng(3)
    D, T = 2, 8
    p = TrendParams(obs=rng.uniform(0.1, 1, D), level=rng.uniform(0.05, 0.2, D), slope=rng.uniform(1e-2, 5e-2, D),
                    ar=rng.uniform(0.1, 1, D), phi=np.array([0.3, 0.9]), m0=rng.normal(size=D),
                    v0=rng.uniform(0.5, 2, D), s0=rng.normal(0, 0.1, D), w0=rng.uniform(0.01, 0.1, D),
                    t0=np.array([2.0, 0.5]), kappa=np.array([1.0, 2.5]))
    x = rng.normal(size=(T, D))
    want = sum(multivariate_normal(p.m0[j] + np.arange(T) * p.s0[j],
                                   _full_covariance(T, p.obs[j], p.level[j], p.slope[j], p.v0[j], p.w0[j], p.ar[j],
                                                    p.phi[j], p.t0[j], p.kappa[j])).logpdf(x[:, j])
               for j in range(D))
    assert np.allclose(score_runs(x, [T], p), [want], atol=1e-9)


def test_a_runs_own_clock_is_the_mixture_of_full_gaussians_over_its_factors():
    # two runs of different lengths; each is scored by the mean over clock factors c of its density with
    # every feature's t0 multiplied by c, the densities written out in full
    rng = np.random.default_rng(5)
    D = 2
    p = TrendParams(obs=rng.uniform(0.1, 1, D), level=rng.uniform(0.05, 0.2, D), slope=rng.uniform(1e-2, 5e-2, D),
                    ar=rng.uniform(0.1, 1, D), phi=np.array([0.4, 0.8]), m0=rng.normal(size=D),
                    v0=rng.uniform(0.5, 2, D), s0=rng.normal(0, 0.1, D), w0=rng.uniform(0.01, 0.1, D),
                    t0=np.array([1.5, 0.7]), kappa=np.array([1.2, 2.0]))
    clocks = (0.25, 1.0, 4.0)
    runs = [rng.normal(size=(8, D)), rng.normal(size=(5, D))]
    want = []
    for x in runs:
        T = len(x)
        dens = [sum(multivariate_normal(p.m0[j] + np.arange(T) * p.s0[j],
                                        _full_covariance(T, p.obs[j], p.level[j], p.slope[j], p.v0[j], p.w0[j],
                                                         p.ar[j], p.phi[j], c * p.t0[j], p.kappa[j])).logpdf(x[:, j])
                    for j in range(D)) for c in clocks]
        want.append(np.log(np.mean(np.exp(dens))))
    got = score_runs(np.vstack(runs), [8, 5], p, clocks=clocks)
    assert np.allclose(got, want, atol=1e-9)
    assert np.allclose(score_runs(np.vstack(runs), [8, 5], p, clocks=(1.0,)), score_runs(np.vstack(runs), [8, 5], p))


def test_padding_leaves_each_run_its_own_score():
    rng = np.random.default_rng(1)
    p = TrendParams(*(rng.uniform(0.05, 0.5, (9, 2))))
    a, b = rng.normal(size=(11, 2)), rng.normal(size=(4, 2))
    both = score_runs(np.vstack([a, b]), [11, 4], p)
    assert np.allclose(both, [score_runs(a, [11], p)[0], score_runs(b, [4], p)[0]])


def test_fit_recovers_a_planted_study_and_scores_at_least_the_truth():
    true = TrendParams(obs=np.array([0.01]), level=np.array([1e-4]), slope=np.array([1e-7]), ar=np.array([0.2]),
                       phi=np.array([0.8]), m0=np.array([0.0]), v0=np.array([1.0]), s0=np.array([0.0]),
                       w0=np.array([1e-4]))
    R, T = 40, 200
    X = simulate(true, R, T, np.random.default_rng(2))
    got = fit(X, [T] * R)
    # the noise is identified; the level's and slope's small variances trade off against each other
    assert abs(got.phi[0] - 0.8) < 0.05
    for name in ("obs", "ar"):
        assert 0.5 < getattr(got, name)[0] / getattr(true, name)[0] < 2, (name, getattr(got, name)[0])
    # maximum likelihood: the fit scores the runs at least as well as the planted parameters (same prior)
    planted = TrendParams(true.obs, true.level, true.slope, true.ar, true.phi, got.m0, got.v0, got.s0, got.w0)
    assert score_runs(X, [T] * R, got).sum() >= score_runs(X, [T] * R, planted).sum() - 1e-6


def test_slowing_nests_the_constant_model_and_finds_a_planted_slowdown():
    true = TrendParams(obs=np.array([0.01]), level=np.array([1e-2]), slope=np.array([1e-4]), ar=np.array([0.05]),
                       phi=np.array([0.8]), m0=np.array([0.0]), v0=np.array([1.0]), s0=np.array([0.0]),
                       w0=np.array([1e-4]), t0=np.array([5.0]), kappa=np.array([2.0]))
    R, T = 40, 200
    X = simulate(true, R, T, np.random.default_rng(4))
    const, slow = fit(X, [T] * R), fit(X, [T] * R, slowing=True)
    assert const.kappa is None and slow.kappa is not None
    assert score_runs(X, [T] * R, slow).sum() >= score_runs(X, [T] * R, const).sum()
    assert slow.kappa[0] > 1  # the innovations shrink: early change, late calm
