"""FastGaussianHMM: the same numbers as hmmlearn's GaussianHMM, by another route."""

import numpy as np
import pytest
from hmmlearn.hmm import GaussianHMM
from scipy.stats import multivariate_normal

from latent.gaussian import FastGaussianHMM, log_density_full


def _data(seed=0, K=3, d=4, n_runs=6, T=80):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (K, d))
    X = np.concatenate([means[np.sort(rng.integers(0, K, T))] + rng.normal(size=(T, d)) for _ in range(n_runs)])
    return X, [T] * n_runs


def test_log_density_matches_scipy():
    rng = np.random.default_rng(1)
    K, d = 3, 5
    means = rng.normal(size=(K, d))
    A = rng.normal(size=(K, d, d))
    covars = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(d)
    X = rng.normal(size=(40, d))
    got = log_density_full(X, means, covars)
    want = np.column_stack([multivariate_normal(means[k], covars[k]).logpdf(X) for k in range(K)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
def test_fit_equals_hmmlearn(cov):
    X, lengths = _data()
    fitted = []
    for cls in (GaussianHMM, FastGaussianHMM):
        m = cls(3, covariance_type=cov, n_iter=15, random_state=3, implementation="scaling")
        m.fit(X, lengths)
        fitted.append(m)
    a, b = fitted
    assert b.score(X, lengths) == pytest.approx(a.score(X, lengths), rel=1e-10)
    np.testing.assert_allclose(b.means_, a.means_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.covars_, a.covars_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.transmat_, a.transmat_, rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(b.predict(X, lengths), a.predict(X, lengths))


def test_cached_factors_follow_new_parameters():
    X, lengths = _data(seed=2)
    m = FastGaussianHMM(3, covariance_type="full", n_iter=5, random_state=0).fit(X, lengths)
    before = m.score(X, lengths)
    m.means_ = m.means_ + 1.0  # a new array: the cache must not be reused
    ref = GaussianHMM(3, covariance_type="full", init_params="", params="")
    ref.n_features = X.shape[1]
    ref.startprob_, ref.transmat_, ref.means_, ref.covars_ = m.startprob_, m.transmat_, m.means_, m.covars_
    assert m.score(X, lengths) == pytest.approx(ref.score(X, lengths), rel=1e-10)
    assert m.score(X, lengths) != pytest.approx(before)
