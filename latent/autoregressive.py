"""The autoregressive Gaussian HMM: a state is a regime of change, not only a place.

Notation: K states, d features; one run's rows z_0..z_{T-1} (scaled features).

Inside a state of a real training run the features drift smoothly (lag-1 autocorrelation
0.99+, issue 20), which the Gaussian HMM reads as many short "places". Here each state k is a
linear regime with a diagonal coefficient per feature::

    z_t | s_t = k, z_{t-1}  ~  N(a_k ⊙ z_{t-1} + b_k, Σ_k)        (t ≥ 1)

``a_k = 0`` is the Gaussian HMM's place (mean b_k); ``a_k = 1`` a drift of b_k per checkpoint
(the Gaussian HMM on increments); in between, a pull towards b_k / (1 − a_k). The likelihood is
the conditional one given each run's first row (the standard conditional likelihood of
autoregressive models): row 0 has density 1 under every state, so its state comes from
``startprob`` and the rows after it. Parameters per state: 2d coefficients and the covariance,
so a K-state model has K·d more than the Gaussian HMM.

EM is exact: the E-step is hmmlearn's forward-backward; the M-step solves, per state and
feature, the posterior-weighted least squares of z_t,j on (z_{t-1,j}, 1), and takes Σ_k as the
weighted residual covariance (floored by ``min_covar``), from the moments Σ_t γ_t(k) u_t u_tᵀ of
u_t = (z_t, z_{t-1}, 1). Each state also records, as descriptive (not fitted) quantities, where
runs are in it (``means``: the posterior-weighted mean of its rows) and how fast each feature
moves there (``rate``: the posterior-weighted mean of z_t − z_{t-1}, z units per checkpoint).
"""

from __future__ import annotations

import numpy as np
from hmmlearn.base import BaseHMM

from .family import StateFamily, covariance_count, expand_covars, reduce_covars

_LOG_2PI = np.log(2 * np.pi)
#: ridge added to each 2 x 2 least-squares system, relative to its scale: keeps a state whose
#: previous rows are constant solvable (the coefficient then goes to 0, a plain mean)
_RIDGE = 1e-9


def lagged(z: np.ndarray) -> np.ndarray:
    """The previous row of every row of one run (row 0's is itself)."""
    return np.concatenate([z[:1], z[:-1]]) if len(z) else z


def moments(z: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """Σ_t γ_t(k) u_t u_tᵀ over t ≥ 1 of one run, u_t = (z_t, z_{t-1}, 1): shape (K, 2d+1, 2d+1)."""
    T, d = z.shape
    K = gamma.shape[1]
    if T < 2:
        return np.zeros((K, 2 * d + 1, 2 * d + 1))
    U = np.hstack([z[1:], z[:-1], np.ones((T - 1, 1))])
    g = gamma[1:]
    weighted = g.T[:, :, None] * U[None, :, :]  # (K, T-1, 2d+1)
    return np.matmul(weighted.transpose(0, 2, 1), U)


def regression_from_moments(S: np.ndarray, min_covar: float, fallback: np.ndarray | None = None):
    """Per-state coefficients, intercepts, full residual covariances, places and rates.

    ``S`` is (K, 2d+1, 2d+1) from :func:`moments`; a state with (almost) no weight takes the
    ``fallback`` moments (e.g. pooled over states) so its parameters stay defined.
    """
    K, m, _ = S.shape
    d = (m - 1) // 2
    ix, iy = np.arange(d), np.arange(d, 2 * d)
    coef = np.zeros((K, d))
    intercept = np.zeros((K, d))
    covars = np.zeros((K, d, d))
    means = np.zeros((K, d))
    rate = np.zeros((K, d))
    for k in range(K):
        Sk = S[k]
        if fallback is not None and Sk[-1, -1] < 2:
            Sk = fallback
        n = Sk[-1, -1]
        if n <= 0:
            covars[k] = np.eye(d)
            continue
        syy, sy1 = Sk[iy, iy], Sk[iy, -1]
        sxy, sx1 = Sk[ix, iy], Sk[ix, -1]
        # 2 x 2 normal equations [[syy, sy1], [sy1, n]] [a, b] = [sxy, sx1], feature by feature
        ridge = _RIDGE * (syy + n)
        det = (syy + ridge) * n - sy1**2
        ok = det > _RIDGE * (syy + ridge) * n
        a = np.where(ok, (sxy * n - sy1 * sx1) / np.where(ok, det, 1.0), 0.0)
        b = np.where(ok, ((syy + ridge) * sx1 - sy1 * sxy) / np.where(ok, det, 1.0), sx1 / n)
        C = np.zeros((d, m))
        C[:, ix] = np.eye(d)
        C[ix, iy] = -a
        C[:, -1] = -b
        cov = C @ Sk @ C.T / n
        covars[k] = (cov + cov.T) / 2 + min_covar * np.eye(d)
        coef[k], intercept[k] = a, b
        means[k] = sx1 / n
        rate[k] = (sx1 - sy1) / n
    return coef, intercept, covars, means, rate


class ARGaussianHMM(BaseHMM):
    """An HMM whose state k emits ``z_t ~ N(coef_k ⊙ z_{t-1} + intercept_k, Σ_k)`` (module docstring).

    hmmlearn's ``BaseHMM`` does the forward-backward, Viterbi, scoring and the start and
    transition M-step; this class adds the emission: its log-likelihood, sufficient statistics
    and M-step. ``params`` letters: ``s`` start, ``t`` transitions, ``a`` coefficients and
    intercepts, ``c`` covariances. Parameters are set by the caller (``init_params=""``).

    Attributes
    ----------
    coef_, intercept_ : ndarray, shape (K, d)
    covars_ : ndarray, shape (K, d, d)
        Full covariances, whatever ``covariance_type`` (its structure is imposed in the M-step).
    means_, rate_ : ndarray, shape (K, d)
        Descriptive: posterior-weighted mean of the rows, and of their increments, per state.
    """

    def __init__(self, n_components=1, covariance_type="full", min_covar=1e-3, startprob_prior=1.0,
                 transmat_prior=1.0, algorithm="viterbi", random_state=None, n_iter=10, tol=1e-2,
                 verbose=False, params="stac", init_params="", implementation="log"):
        super().__init__(n_components, startprob_prior=startprob_prior, transmat_prior=transmat_prior,
                         algorithm=algorithm, random_state=random_state, n_iter=n_iter, tol=tol,
                         verbose=verbose, params=params, init_params=init_params,
                         implementation=implementation)
        self.covariance_type = covariance_type
        self.min_covar = min_covar

    def _get_n_fit_scalars_per_param(self):
        K, d = self.n_components, self.n_features
        return {"s": K - 1, "t": K * (K - 1), "a": 2 * K * d,
                "c": covariance_count(K, d, self.covariance_type)}

    def _init(self, X, lengths=None):
        super()._init(X, lengths)
        for name in ("coef_", "intercept_", "covars_"):
            if not hasattr(self, name):
                raise ValueError(f"ARGaussianHMM needs {name} set before fitting (init_params is not supported)")

    def _check(self):
        super()._check()
        K, d = self.n_components, self.n_features
        self.coef_ = np.asarray(self.coef_, dtype=float)
        self.intercept_ = np.asarray(self.intercept_, dtype=float)
        self.covars_ = np.asarray(self.covars_, dtype=float)
        if self.coef_.shape != (K, d) or self.intercept_.shape != (K, d) or self.covars_.shape != (K, d, d):
            raise ValueError("coef_, intercept_ must be (n_components, n_features) and covars_ "
                             "(n_components, n_features, n_features)")

    def _terms(self):
        cache = getattr(self, "_terms_cache", None)
        if cache is None or cache[0] is not self.covars_:
            try:
                chol = np.linalg.cholesky(self.covars_)
            except np.linalg.LinAlgError:
                raise ValueError("'covars' must be symmetric, positive-definite") from None
            inv = np.linalg.inv(chol)
            const = -0.5 * (self.n_features * _LOG_2PI + 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1))
            cache = (self.covars_, inv, const)
            self._terms_cache = cache
        return cache[1], cache[2]

    def _compute_log_likelihood(self, X):
        inv, const = self._terms()
        y = lagged(X)
        # residual of every state at once: (T, K, d)
        r = X[:, None, :] - self.coef_[None] * y[:, None, :] - self.intercept_[None]
        z = np.einsum("kij,tkj->tki", inv, r)
        out = const[None, :] - 0.5 * (z * z).sum(axis=2)
        out[0] = 0.0  # conditional likelihood: the first row is given
        return out

    def _initialize_sufficient_statistics(self):
        stats = super()._initialize_sufficient_statistics()
        d = self.n_features
        stats["moments"] = np.zeros((self.n_components, 2 * d + 1, 2 * d + 1))
        return stats

    def _accumulate_sufficient_statistics(self, stats, X, lattice, posteriors, fwdlattice, bwdlattice):
        super()._accumulate_sufficient_statistics(stats=stats, X=X, lattice=lattice, posteriors=posteriors,
                                                  fwdlattice=fwdlattice, bwdlattice=bwdlattice)
        if "a" in self.params or "c" in self.params:
            stats["moments"] += moments(X, posteriors)

    def _do_mstep(self, stats):
        super()._do_mstep(stats)
        if "a" not in self.params and "c" not in self.params:
            return
        coef, intercept, full, means, rate = regression_from_moments(stats["moments"], self.min_covar,
                                                                     fallback=stats["moments"].sum(axis=0))
        if "a" in self.params:
            self.coef_, self.intercept_ = coef, intercept
        if "c" in self.params:
            weight = stats["moments"][:, -1, -1]
            self.covars_ = expand_covars(reduce_covars(full, self.covariance_type, weight),
                                         self.covariance_type, self.n_components, self.n_features)
        self.means_, self.rate_ = means, rate


class ARFamily(StateFamily):
    """States as linear regimes, ``z_t ~ N(a_k ⊙ z_{t-1} + b_k, Σ_k)`` (:class:`ARGaussianHMM`)."""

    name = "ar"
    param_names = ("startprob", "transmat", "means", "covars", "coef", "intercept", "rate")
    emission_codes = "ac"
    description = ("a regime of change: each feature moves as z_t = a z_(t-1) + b + noise, "
                   "with the state's own a, b and noise covariance")

    def new_model(self, k, covariance_type, *, n_iter=10, tol=1e-2, random_state=None, implementation="log"):
        return ARGaussianHMM(n_components=k, covariance_type=covariance_type, n_iter=n_iter, tol=tol,
                             random_state=random_state, implementation=implementation)

    def start_params(self, X, lengths, labels, k):
        off = np.concatenate([[0], np.cumsum(lengths)])
        d = X.shape[1]
        start = np.ones(k)
        trans = np.ones((k, k))
        S = np.zeros((k, 2 * d + 1, 2 * d + 1))
        for i in range(len(lengths)):
            lab = labels[off[i]:off[i + 1]]
            start[lab[0]] += 1
            np.add.at(trans, (lab[:-1], lab[1:]), 1)
            S += moments(X[off[i]:off[i + 1]], np.eye(k)[lab])
        coef, intercept, covars, means, rate = regression_from_moments(S, 1e-3, fallback=S.sum(axis=0))
        return {"startprob": start / start.sum(), "transmat": trans / trans.sum(axis=1, keepdims=True),
                "means": means, "covars": covars, "coef": coef, "intercept": intercept, "rate": rate}

    def set_params(self, model, params, covariance_type):
        full = np.asarray(params["covars"], dtype=float)
        K, d = np.shape(params["means"])
        model.n_features = d
        model.startprob_ = params["startprob"]
        model.transmat_ = params["transmat"]
        model.coef_ = np.asarray(params["coef"], dtype=float)
        model.intercept_ = np.asarray(params["intercept"], dtype=float)
        model.covars_ = expand_covars(reduce_covars(full, covariance_type), covariance_type, K, d)
        model.means_ = np.asarray(params["means"], dtype=float)
        model.rate_ = np.asarray(params["rate"], dtype=float)

    def to_params(self, model):
        return {
            "startprob": np.asarray(model.startprob_, dtype=float),
            "transmat": np.asarray(model.transmat_, dtype=float),
            "means": np.asarray(model.means_, dtype=float),
            "covars": np.asarray(model.covars_, dtype=float),
            "coef": np.asarray(model.coef_, dtype=float),
            "intercept": np.asarray(model.intercept_, dtype=float),
            "rate": np.asarray(model.rate_, dtype=float),
        }

    def extra_shapes(self, k, d):
        return {"coef": (k, d), "intercept": (k, d), "rate": (k, d)}

    def n_parameters(self, k, d, covariance_type):
        return (k - 1) + k * (k - 1) + 2 * k * d + covariance_count(k, d, covariance_type)

    def centers(self, params, z):
        coef = np.asarray(params["coef"], dtype=float)
        intercept = np.asarray(params["intercept"], dtype=float)
        out = coef[None] * lagged(z)[:, None, :] + intercept[None]
        out[0] = z[0]  # row 0 is given: no density, no gradient
        return out

    def emit(self, params, prev_state, state, prev_row, noise, rng, first_rows=None):
        if prev_row is None:  # the likelihood is conditional on the first row: start from real ones
            if first_rows is None:
                return np.asarray(params["means"], dtype=float)[state] + noise
            first_rows = np.asarray(first_rows, dtype=float)
            return first_rows[rng.integers(0, len(first_rows), len(state))]
        coef = np.asarray(params["coef"], dtype=float)
        intercept = np.asarray(params["intercept"], dtype=float)
        return coef[state] * prev_row + intercept[state] + noise

    def scored_rows(self, z):
        rows = np.ones(len(z), dtype=bool)
        rows[:1] = False
        return rows
