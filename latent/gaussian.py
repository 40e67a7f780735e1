"""hmmlearn's ``GaussianHMM`` with the two hot spots of full-covariance EM done by BLAS.

Notation: K states, d features, T rows of one sequence.

hmmlearn stays the engine (initialisation, forward-backward, M-step, convergence monitor); this
subclass overrides only the two documented extension points of an emission model:

* ``_compute_log_likelihood``: log N(x_t | μ_k, Σ_k) for all k at once, as one matrix product
  with the stacked inverse Cholesky factors (computed once per parameter set, not per sequence),
  instead of K scipy ``solve_triangular`` calls per sequence;
* ``_accumulate_sufficient_statistics``: Σ_t γ_t(k) x_t x_tᵀ as K BLAS products instead of
  ``np.einsum('ij,ik,il->jkl')`` (which does not use BLAS and was half of all fitting time).

Both give the same numbers as hmmlearn up to floating-point rounding (tested); together they
make a 40-run × 1000-checkpoint × 14-feature fit several times faster (bench/bench_fit.py).
"""

from __future__ import annotations

import numpy as np
from hmmlearn.base import _AbstractHMM
from hmmlearn.hmm import GaussianHMM

from .family import StateFamily, covariance_count, expand_covars, reduce_covars

_LOG_2PI = np.log(2 * np.pi)


def _cholesky(covars: np.ndarray, min_covar: float = 1e-7) -> np.ndarray:
    """Lower Cholesky factors of ``covars`` (K, d, d), with hmmlearn's jitter fallback."""
    try:
        return np.linalg.cholesky(covars)
    except np.linalg.LinAlgError:
        out = np.empty_like(covars)
        eye = np.eye(covars.shape[-1])
        for k, cv in enumerate(covars):
            try:
                out[k] = np.linalg.cholesky(cv)
            except np.linalg.LinAlgError:
                try:
                    out[k] = np.linalg.cholesky(cv + min_covar * eye)
                except np.linalg.LinAlgError:
                    raise ValueError("'covars' must be symmetric, positive-definite") from None
        return out


def density_terms(means: np.ndarray, covars: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What log N(x | μ_k, Σ_k) needs for every k: ``W`` (d, K·d) stacking the L_k⁻ᵀ, the shifts
    μ_k L_k⁻ᵀ (K·d,) and the constants −½(d log 2π + log det Σ_k) (K,)."""
    chol = _cholesky(np.asarray(covars, dtype=float))
    K, d = means.shape
    inv = np.linalg.inv(chol)  # (K, d, d), lower triangular: L_k⁻¹
    W = inv.transpose(2, 0, 1).reshape(d, K * d)  # column block k is L_k⁻ᵀ
    shift = np.einsum("kd,ked->ke", means, inv).reshape(K * d)
    logdet = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
    return W, shift, -0.5 * (d * _LOG_2PI + logdet)


def log_density_full(X: np.ndarray, means: np.ndarray, covars: np.ndarray, terms=None) -> np.ndarray:
    """log N(x_t | μ_k, Σ_k), shape (T, K), for full covariances ``covars`` (K, d, d)."""
    W, shift, const = terms if terms is not None else density_terms(means, covars)
    K, d = np.shape(means)
    z = X @ W  # z_tk = L_k⁻¹ (x_t − μ_k), all k in one product
    z -= shift
    z *= z
    return const - 0.5 * z.reshape(len(X), K, d).sum(axis=2)


class FastGaussianHMM(GaussianHMM):
    """``hmmlearn.hmm.GaussianHMM`` with BLAS emission densities and covariance statistics.

    Same parameters, attributes and results as :class:`hmmlearn.hmm.GaussianHMM`.
    """

    def _compute_log_likelihood(self, X):
        if self.covariance_type not in ("full", "tied"):
            return super()._compute_log_likelihood(X)
        # the factors depend only on the parameters: compute them once per parameter set, not
        # once per sequence (the cache holds the arrays it was made from, so ``is`` is exact)
        cache = getattr(self, "_terms_cache", None)
        if cache is None or cache[0] is not self.means_ or cache[1] is not self._covars_:
            covars = self._covars_
            if self.covariance_type == "tied":
                covars = np.broadcast_to(covars, (self.n_components,) + covars.shape)
            cache = (self.means_, self._covars_, density_terms(self.means_, covars))
            self._terms_cache = cache
        return log_density_full(X, self.means_, None, cache[2])

    def _accumulate_sufficient_statistics(self, stats, X, lattice, posteriors, fwdlattice, bwdlattice):
        if self.covariance_type not in ("full", "tied"):
            return super()._accumulate_sufficient_statistics(stats, X, lattice, posteriors, fwdlattice,
                                                             bwdlattice)
        # start/transition statistics from the abstract base, emissions here (hmmlearn's body, BLAS)
        _AbstractHMM._accumulate_sufficient_statistics(self, stats=stats, X=X, lattice=lattice,
                                                       posteriors=posteriors, fwdlattice=fwdlattice,
                                                       bwdlattice=bwdlattice)
        if self._needs_sufficient_statistics_for_mean():
            stats["post"] += posteriors.sum(axis=0)
            stats["obs"] += posteriors.T @ X
        if self._needs_sufficient_statistics_for_covars():
            weighted = posteriors.T[:, :, None] * X[None, :, :]  # (K, T, d)
            stats["obs*obs.T"] += np.matmul(weighted.transpose(0, 2, 1), X)


class GaussianFamily(StateFamily):
    """The Gaussian HMM: a state is a place, ``z_t | s_t = k ~ N(μ_k, Σ_k)`` independently over t.

    The reference's model and the default; its ``means`` are the emission means.
    """

    name = "gaussian"
    param_names = ("startprob", "transmat", "means", "covars")
    emission_codes = "mc"
    description = "a place: checkpoints scatter independently around the state's mean"

    def new_model(self, k, covariance_type, *, n_iter=10, tol=1e-2, random_state=None, implementation="log"):
        return FastGaussianHMM(n_components=k, covariance_type=covariance_type, n_iter=n_iter, tol=tol,
                               random_state=random_state, implementation=implementation, init_params="")

    def start_params(self, X, lengths, labels, k):
        from .segments import params_from_labels

        return params_from_labels(X, lengths, labels, k)

    def set_params(self, model, params, covariance_type):
        full = np.asarray(params["covars"], dtype=float)
        model.n_features = full.shape[1]
        model.startprob_ = params["startprob"]
        model.transmat_ = params["transmat"]
        model.means_ = params["means"]
        model.covars_ = reduce_covars(full, covariance_type)

    def to_params(self, model):
        means = np.asarray(model.means_, dtype=float)
        if model.covariance_type == "spherical":
            # hmmlearn 0.3.3 keeps spherical variances as a (K, d) array of equal rows and its
            # ``covars_`` property mis-expands that shape; build the full matrices ourselves
            covars = expand_covars(model._covars_, "spherical", *means.shape)
        else:
            covars = np.asarray(model.covars_, dtype=float)
        return {
            "startprob": np.asarray(model.startprob_, dtype=float),
            "transmat": np.asarray(model.transmat_, dtype=float),
            "means": means,
            "covars": covars,
        }

    def n_parameters(self, k, d, covariance_type):
        return (k - 1) + k * (k - 1) + k * d + covariance_count(k, d, covariance_type)

    def centers(self, params, z):
        means = np.asarray(params["means"], dtype=float)
        return np.broadcast_to(means[None, :, :], (len(z),) + means.shape)
