"""Hamilton's Markov-switching model: a state is a place, and a run wanders near it.

Notation: K states, d features; one run's rows z_0..z_{T-1} (scaled features); Φ = diag(φ).

Inside a state of a real training run the features drift (lag-1 autocorrelation 0.99+) and
every run sits at its own offset (issue 20). The Gaussian HMM reads both as many short places.
Here the *deviation* of a run from its state's mean is an AR(1) process that runs through the
whole run, across switches (Hamilton 1989; Krolzig's MSM-AR(1))::

    z_t − μ_{s_t}  =  Φ (z_{t−1} − μ_{s_{t−1}}) + e_t,      e_t ~ N(0, Σ_{s_t})       (t ≥ 1)
    z_0 | s_0 = k  ~  N(μ_k, diag(σ0²))                      (where runs start, one spread for all)

With φ near 1 a run may sit far from μ_k for a long time (its own offset, a slow wander) at
little cost, while a *switch* j → k predicts a jump of μ_k − μ_j on top of wherever the run
was. So a state is told from its neighbours by the moves between them, not by where each run
happens to sit, and a smooth drift is not worth cutting (a cut predicts a jump the data do not
make). φ = 0 is the Gaussian HMM.

The model is exact as an HMM over pairs (s_{t−1}, s_t): K² hidden states with the transition
(i, j) → (j, k) of probability A[j, k] and every other pair transition impossible. hmmlearn's
``BaseHMM`` is the engine (its EM loop, convergence monitor, scoring and decoding API); its dense
forward-backward and Viterbi would cost O(T·K⁴) on the pairs, so this module runs them in the
pair chain's own structure, O(T·K²) and batched over runs of equal length
(:func:`pair_forward_backward`, :func:`pair_viterbi`; the dense ones are the tests' reference):
a pair's forward mass needs only the column sums of the last step's, Σ_i α(i, j), and its
backward mass depends only on its current state. This module also gives the pair emission
densities, aggregates the pair transition counts into A, and does the emission M-step
as an expectation-conditional maximisation (exact for each block given the others: μ by
generalised least squares given φ and Σ, then φ given μ and Σ by coordinate ascent inside
[0, ``PHI_MAX``], then Σ and σ0²), from the moments
Σ_t γ_t(j, k) u_t u_tᵀ of u_t = (z_t, z_{t−1}, 1) for every pair. Public ``predict``,
``predict_proba``, ``score_samples`` and ``decode`` speak in the K states (the pair's second
element; posteriors summed over the first), so nothing downstream sees the pairs.
"""

from __future__ import annotations

import numpy as np
from hmmlearn import _utils
from hmmlearn.base import BaseHMM

from .autoregressive import moments
from .family import StateFamily, covariance_count, expand_covars, reduce_covars

_LOG_2PI = np.log(2 * np.pi)
#: largest φ: a deviation process that still forgets (below 1: no unit root)
PHI_MAX = 0.999
#: weight, per expected row, of a weak pull of μ_k towards the mean of the rows in state k: keeps
#: μ_k defined when φ is near 1 and no switch into or out of k pins it down
_MEAN_RIDGE = 1e-6


def pair_index(k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(prev, cur)`` state of each of the K² pair states (pair p = prev·K + cur)."""
    p = np.arange(k * k)
    return p // k, p % k


def pair_transmat(transmat: np.ndarray) -> np.ndarray:
    """The K² × K² transition matrix of pairs: (i, j) → (j, k) with probability A[j, k]."""
    K = len(transmat)
    out = np.zeros((K * K, K * K))
    for i in range(K):
        for j in range(K):
            out[i * K + j, j * K : (j + 1) * K] = transmat[j]
    return out


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    """log Σ exp along ``axis`` (dropped), -inf where every term is -inf."""
    mx = np.max(a, axis=axis, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    with np.errstate(divide="ignore", under="ignore"):
        out = np.log(np.exp(a - mx).sum(axis=axis, keepdims=True)) + mx
    return np.squeeze(out, axis=axis)


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(x, dtype=float))


def pair_forward_backward(logb: np.ndarray, pi: np.ndarray, A: np.ndarray, posteriors: bool = True):
    """Forward-backward over the pair chain of N runs of equal length, in O(T·K²) per run.

    Parameters
    ----------
    logb : ndarray, shape (N, T, K, K)
        ``[n, t, j, k]`` = log p(z_t | s_{t−1} = j, s_t = k, z_{t−1}) (:meth:`SwitchingMeanHMM.pair_log_likelihood`);
        at t = 0, log p(z_0 | s_0 = k) for every j.
    pi, A : ndarray
        The K-state start and transition probabilities.
    posteriors : bool
        Also run the backward pass and return the posteriors and expected transitions.

    Returns
    -------
    log_prob : ndarray, shape (N,)
    post : ndarray, shape (N, T, K²), or None
        p(s_{t−1} = i, s_t = j | the run) at pair i·K + j (t = 0: the pair (k, k)).
    counts : ndarray, shape (N, K, K), or None
        Expected transitions j → k over the run, Σ_t p(s_t = j, s_{t+1} = k | the run).

    Notes
    -----
    Forward: α_0(k, k) = π_k b_0(k) and α_t(j, k) = b_t(j, k) A[j, k] m_{t−1}(j) with
    m_t(j) = Σ_i α_t(i, j). Backward: β_t(i, j) = Σ_k A[j, k] b_{t+1}(j, k) β_{t+1}(j, k) does not
    depend on i, so it is one vector per step. Everything is in logs.
    """
    N, T, K, _ = logb.shape
    log_pi, log_A = _log(pi), _log(A)
    la = np.full((N, T, K, K), -np.inf)
    diag = np.arange(K)
    la[:, 0, diag, diag] = log_pi[None, :] + logb[:, 0, 0, :]
    lm = np.empty((N, T, K))  # log m_t(j)
    lm[:, 0] = la[:, 0, diag, diag]
    for t in range(1, T):
        la[:, t] = logb[:, t] + log_A[None] + lm[:, t - 1, :, None]
        lm[:, t] = _logsumexp(la[:, t], axis=1)
    log_prob = _logsumexp(lm[:, T - 1], axis=1) if T else np.zeros(N)
    if not posteriors:
        return log_prob, None, None
    lb = np.zeros((N, T, K))  # log β_t(·, j): by the current state j only
    for t in range(T - 2, -1, -1):
        lb[:, t] = _logsumexp(log_A[None] + logb[:, t + 1] + lb[:, t + 1, None, :], axis=2)
    with np.errstate(under="ignore"):
        lg = la + lb[:, :, None, :]
        lg -= _logsumexp(lg.reshape(N, T, K * K), axis=2)[:, :, None, None]  # each row sums to 1
        post = np.exp(lg).reshape(N, T, K * K)
        counts = np.zeros((N, K, K))
        if T > 1:
            lx = lm[:, :-1, :, None] + log_A[None, None] + logb[:, 1:] + lb[:, 1:, None, :] - log_prob[:, None, None, None]
            counts = np.exp(lx).sum(axis=1)
    return log_prob, post, counts


def pair_viterbi(logb: np.ndarray, pi: np.ndarray, A: np.ndarray) -> tuple[float, np.ndarray]:
    """The most probable pair path of one run, in O(T·K²): ``(log prob, pair states (T,))``, pair i·K + j.

    ``logb`` (T, K, K) as in :func:`pair_forward_backward`. The best predecessor of pair (j, k) is the
    best pair (i, j), which depends on j only, so one back-pointer per state and step suffices.
    """
    T, K, _ = logb.shape
    log_pi, log_A = _log(pi), _log(A)
    delta = np.full((K, K), -np.inf)
    diag = np.arange(K)
    delta[diag, diag] = log_pi + logb[0, 0]
    back = np.zeros((T, K), dtype=int)  # back[t, j] = argmax_i δ_{t−1}(i, j)
    for t in range(1, T):
        best_i = np.argmax(delta, axis=0)
        best = delta[best_i, diag]  # max_i δ_{t−1}(i, j)
        back[t] = best_i
        delta = logb[t] + log_A + best[:, None]
    p = int(np.argmax(delta))
    log_prob = float(delta.flat[p])
    path = np.empty(T, dtype=int)
    i, j = divmod(p, K)
    path[T - 1] = p
    for t in range(T - 1, 0, -1):
        i, j = back[t, i], i  # the pair before (i, j) is (back[t, i], i)
        path[t - 1] = i * K + j
    return log_prob, path


def _equal_length_groups(lengths) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for n, length in enumerate(lengths):
        groups.setdefault(int(length), []).append(n)
    return groups


class SwitchingMeanHMM(BaseHMM):
    """Hamilton's Markov-switching mean with AR(1) deviations (module docstring), run as an HMM
    over K² pair states.

    ``n_states`` is K; hmmlearn's ``n_components`` is K². ``params`` letters: ``s`` start,
    ``t`` transitions, ``m`` means, ``a`` the AR coefficients, ``c`` covariances.
    Parameters are set by the caller (``init_params=""``).

    Attributes
    ----------
    pi_ : ndarray, shape (K,)
        Start probabilities of the K states.
    A_ : ndarray, shape (K, K)
        Transitions between the K states.
    means_ : ndarray, shape (K, d)
    phi_ : ndarray, shape (d,)
        AR(1) coefficient of each feature's deviation from its state's mean, shared by the states.
    start_var_ : ndarray, shape (d,)
        σ0²: the variance of each feature's deviation from its state's mean at a run's first row.
    covars_ : ndarray, shape (K, d, d)
        Innovation covariances (full, whatever ``covariance_type``; its structure is imposed in
        the M-step).
    fit_floor_ : float
        The floor added to the innovation and start variances in the last fit's M-steps:
        ``min_covar`` times the median variance of the runs' one-step changes (at most ``min_covar``).
    """

    def __init__(self, n_states=1, covariance_type="full", min_covar=1e-3, algorithm="viterbi",
                 random_state=None, n_iter=10, tol=1e-2, verbose=False, params="stmac", init_params="",
                 implementation="log"):
        super().__init__(n_states * n_states, algorithm=algorithm, random_state=random_state,
                         n_iter=n_iter, tol=tol, verbose=verbose, params=params, init_params=init_params,
                         implementation=implementation)
        self.n_states = n_states
        self.covariance_type = covariance_type
        self.min_covar = min_covar

    # -- the pair chain ------------------------------------------------------------------------

    def set_chain(self, pi: np.ndarray, A: np.ndarray) -> None:
        """Set the K-state start and transition probabilities (and their pair-chain forms)."""
        K = self.n_states
        self.pi_ = np.asarray(pi, dtype=float)
        self.A_ = np.asarray(A, dtype=float)
        start = np.zeros(K * K)
        start[np.arange(K) * K + np.arange(K)] = self.pi_  # row 0: no previous state, pair (k, k)
        self.startprob_ = start
        self.transmat_ = pair_transmat(self.A_)

    def _get_n_fit_scalars_per_param(self):
        K, d = self.n_states, self.n_features
        return {"s": K - 1, "t": K * (K - 1), "m": K * d, "a": d,
                "c": covariance_count(K, d, self.covariance_type) + d}

    def _init(self, X, lengths=None):
        self._check_and_set_n_features(X)
        self.fit_floor_ = self._floor(X, lengths)
        for name in ("pi_", "A_", "means_", "phi_", "covars_", "start_var_"):
            if not hasattr(self, name):
                raise ValueError(f"SwitchingMeanHMM needs {name} set before fitting (init_params is not supported)")

    def _check(self):
        K = self.n_states
        self.means_ = np.asarray(self.means_, dtype=float)
        self.phi_ = np.asarray(self.phi_, dtype=float)
        self.covars_ = np.asarray(self.covars_, dtype=float)
        self.start_var_ = np.asarray(self.start_var_, dtype=float)
        d = self.means_.shape[1]
        if (self.means_.shape != (K, d) or self.phi_.shape != (d,) or self.covars_.shape != (K, d, d)
                or self.start_var_.shape != (d,)):
            raise ValueError("means_ must be (n_states, n_features), phi_ and start_var_ (n_features,) and "
                             "covars_ (n_states, n_features, n_features)")
        super()._check()

    # -- emissions -----------------------------------------------------------------------------

    def _terms(self):
        cache = getattr(self, "_terms_cache", None)
        key = (self.means_, self.phi_, self.covars_, self.start_var_)
        if cache is None or any(a is not b for a, b in zip(cache[0], key)):
            d = self.means_.shape[1]
            try:
                chol = np.linalg.cholesky(self.covars_)
            except np.linalg.LinAlgError:
                raise ValueError("'covars' must be symmetric, positive-definite") from None
            if not np.all(self.start_var_ > 0):
                raise ValueError("start_var_ must be positive")
            inv = np.linalg.inv(chol)
            const = -0.5 * (d * _LOG_2PI + 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1))
            inv0 = 1.0 / np.sqrt(self.start_var_)
            const0 = -0.5 * (d * _LOG_2PI + np.log(self.start_var_).sum())
            cache = (key, inv, const, inv0, const0)
            self._terms_cache = cache
        return cache[1:]

    def pair_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """log p(z_t | s_{t−1} = j, s_t = k, z_{t−1}) of one run, shape (T, K, K) as [t, j, k];
        row 0 holds log N(z_0; μ_k, Σ̄_k) for every j."""
        inv, const, inv0, const0 = self._terms()
        K = self.n_states
        mu, phi = self.means_, self.phi_
        T = len(X)
        out = np.empty((T, K, K))
        if T > 1:
            y = X[1:] - phi * X[:-1]  # (T-1, d)
            c = mu[None, :, :] - phi * mu[:, None, :]  # c[j, k] = μ_k − Φ μ_j
            for k in range(K):
                w = inv[k].T  # whitening: r ↦ r L_k⁻ᵀ
                z = (y @ w)[:, None, :] - (c[:, k] @ w)[None, :, :]  # (T-1, K_j, d)
                out[1:, :, k] = const[k] - 0.5 * np.einsum("tjd,tjd->tj", z, z)
        if T:
            z0 = (X[0][None, :] - mu) * inv0  # (K, d)
            out[0] = (const0 - 0.5 * (z0 * z0).sum(axis=1))[None, :]
        return out

    def _compute_log_likelihood(self, X):
        return self.pair_log_likelihood(X).reshape(len(X), -1)

    # -- EM ------------------------------------------------------------------------------------

    def _floor(self, X, lengths) -> float:
        """The covariance floor of this fit: ``min_covar`` times the median variance of the runs'
        one-step changes. The innovations of smooth runs are tiny in z units (variances of 0.003 on
        drifting planted studies), so a floor of ``min_covar`` itself inflated them by a third and
        made EM lose likelihood; relative to the changes it is as negligible as intended."""
        diffs = [np.diff(r, axis=0) for r in _utils.split_X_lengths(np.asarray(X, dtype=float), lengths)
                 if len(r) > 1]
        if not diffs:
            return self.min_covar
        scale = float(np.median(np.var(np.concatenate(diffs), axis=0)))
        return self.min_covar * min(1.0, scale) if scale > 0 else self.min_covar

    def _initialize_sufficient_statistics(self):
        stats = super()._initialize_sufficient_statistics()
        K, d = self.n_states, self.n_features
        stats["counts"] = np.zeros((K, K))  # expected K-state transitions j → k
        stats["moments"] = np.zeros((K * K, 2 * d + 1, 2 * d + 1))
        stats["first"] = np.zeros((K, d + 1))  # Σ γ_0(k) (z_0, 1)
        stats["first_sq"] = np.zeros((K, d))  # Σ γ_0(k) z_0²
        return stats

    def _runs(self, X, lengths, posteriors: bool):
        """Forward(-backward) of every run, batched by length: yields ``(run indices, runs, log_prob,
        post, counts)`` (:func:`pair_forward_backward`)."""
        runs = list(_utils.split_X_lengths(X, lengths))
        for length, idx in _equal_length_groups([len(r) for r in runs]).items():
            if length == 0:  # an empty run has probability 1 and no rows: nothing to add
                continue
            group = [runs[i] for i in idx]
            logb = np.stack([self.pair_log_likelihood(r) for r in group])
            yield (idx, group, *pair_forward_backward(logb, self.pi_, self.A_, posteriors))

    def _do_estep(self, X, lengths):
        stats = self._initialize_sufficient_statistics()
        self._estep_begin()
        total = 0.0
        for _, group, log_prob, post, counts in self._runs(X, lengths, posteriors=True):
            self._accumulate(stats, np.stack(group), post, counts)
            total += float(log_prob.sum())
        return stats, total

    def _accumulate(self, stats, runs, posteriors, counts):
        """Sufficient statistics of N runs of equal length ``runs`` (N, T, d) from their pair
        posteriors (N, T, K²) and expected transitions (N, K, K)."""
        K = self.n_states
        N, T, d = runs.shape
        stats["nobs"] += N
        if "s" in self.params:
            stats["start"] += posteriors[:, 0].sum(axis=0)
        if "t" in self.params:
            stats["counts"] += counts.sum(axis=0)
        if any(c in self.params for c in "mac"):
            if T > 1:
                # Σ_t γ_t(p) u_t u_tᵀ of every pair p (:func:`latent.autoregressive.moments`), all
                # runs' rows at once as one matrix product over the flattened outer products
                g = posteriors[:, 1:].reshape(-1, K * K)
                stats["moments"] += (g.T @ self._outer(runs)).reshape(K * K, 2 * d + 1, 2 * d + 1)
            g0 = posteriors[:, 0].reshape(N, K, K).sum(axis=1)  # (N, K): p(s_0 = k)
            stats["first"] += g0.T @ np.concatenate([runs[:, 0], np.ones((N, 1))], axis=1)
            stats["first_sq"] += g0.T @ runs[:, 0] ** 2

    def _outer(self, runs: np.ndarray) -> np.ndarray:
        """The flattened outer products u_t u_tᵀ, u_t = (z_t, z_{t−1}, 1), of every row t ≥ 1 of
        ``runs`` (N, T, d): (N·(T − 1), (2d + 1)²). EM asks for the same runs at every iteration, so
        the last few are kept (by content: a fit's data do not change between its iterations)."""
        key = (runs.shape, hash(runs.tobytes()))
        cache = self.__dict__.setdefault("_outer_cache", {})
        hit = cache.get(key)
        if hit is None or not np.array_equal(hit[0], runs):
            N, T, d = runs.shape
            U = np.concatenate([runs[:, 1:], runs[:, :-1], np.ones((N, T - 1, 1))], axis=2).reshape(-1, 2 * d + 1)
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            hit = cache[key] = (runs.copy(), (U[:, :, None] * U[:, None, :]).reshape(len(U), -1))
        return hit[1]

    def _score(self, X, lengths=None, *, compute_posteriors):
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "startprob_")
        self._check()
        X = np.asarray(X, dtype=float)
        runs_post: dict[int, np.ndarray] = {}
        total = 0.0
        for idx, _, log_prob, post, _ in self._runs(X, lengths, posteriors=compute_posteriors):
            total += float(log_prob.sum())
            if compute_posteriors:
                runs_post.update({i: post[n] for n, i in enumerate(idx)})
        if not compute_posteriors:
            return total, np.empty((0, self.n_components))
        return total, np.concatenate([runs_post[i] for i in sorted(runs_post)] or [np.empty((0, self.n_components))])

    def _decode_viterbi(self, X):
        return pair_viterbi(self.pair_log_likelihood(np.asarray(X, dtype=float)), self.pi_, self.A_)

    def _do_mstep(self, stats):
        K = self.n_states
        if "s" in self.params or "t" in self.params:
            pi, A = self.pi_, self.A_
            if "s" in self.params:
                start = stats["start"].reshape(K, K).sum(axis=0)
                pi = np.where(self.pi_ == 0, 0, start)
                pi = pi / pi.sum() if pi.sum() > 0 else self.pi_
            if "t" in self.params:
                A = np.where(self.A_ == 0, 0, stats["counts"])
                rows = A.sum(axis=1, keepdims=True)
                A = np.where(rows > 0, A / np.where(rows > 0, rows, 1), self.A_)
            self.set_chain(pi, A)
        if not any(c in self.params for c in "mac"):
            return
        S, first = stats["moments"], stats["first"]
        mu, phi, cov, var0 = self.means_, self.phi_, self.covars_, self.start_var_
        if "m" in self.params:
            mu = update_means(S, first, phi, cov, var0, K)
        if "a" in self.params:
            phi = update_phi(S, mu, cov, K, phi)
        if "c" in self.params:
            floor = getattr(self, "fit_floor_", self.min_covar)
            full = update_covars(S, mu, phi, K, floor)
            weight = S[:, -1, -1].reshape(K, K).sum(axis=0)
            cov = expand_covars(reduce_covars(full, self.covariance_type, weight), self.covariance_type, K,
                                self.n_features)
            var0 = update_start_var(first, stats["first_sq"], mu, floor)
        self.means_, self.phi_, self.covars_, self.start_var_ = mu, phi, cov, var0

    # -- the K states to the outside -------------------------------------------------------------

    def score_samples(self, X, lengths=None):
        ll, post = super().score_samples(X, lengths)
        K = self.n_states
        return ll, post.reshape(len(post), K, K).sum(axis=1)

    def decode(self, X, lengths=None, algorithm=None):
        ll, pairs = super().decode(X, lengths, algorithm)
        return ll, pairs % self.n_states

    def predict(self, X, lengths=None):
        return self.decode(X, lengths)[1]

    def predict_proba(self, X, lengths=None):
        return self.score_samples(X, lengths)[1]


def _pair_blocks(S: np.ndarray, K: int):
    """Per pair (j, k): weight w, Σγ z_t, Σγ z_{t−1}, Σγ z_t z_tᵀ, Σγ z_t z_{t−1}ᵀ, Σγ z_{t−1} z_{t−1}ᵀ."""
    d = (S.shape[1] - 1) // 2
    cur, prev = slice(0, d), slice(d, 2 * d)
    return (S[:, -1, -1], S[:, cur, -1], S[:, prev, -1], S[:, cur, cur], S[:, cur, prev], S[:, prev, prev])


def update_means(S: np.ndarray, first: np.ndarray, phi: np.ndarray, covars: np.ndarray, start_var: np.ndarray,
                 K: int) -> np.ndarray:
    """μ maximising the expected log-likelihood given φ, Σ and σ0² (generalised least squares).

    Every row t ≥ 1 in pair (j, k) says z_t − Φ z_{t−1} = μ_k − Φ μ_j + e, e ~ N(0, Σ_k); row 0
    in state k says z_0 = μ_k + N(0, diag σ0²). Stacking gives one (K·d) linear system.
    """
    d = len(phi)
    w, sz, sy = _pair_blocks(S, K)[:3]
    prec = np.linalg.inv(covars)
    prec0 = np.diag(1.0 / start_var)
    Phi = np.diag(phi)
    H = np.zeros((K * d, K * d))
    g = np.zeros(K * d)

    def blk(a, b):
        return (slice(a * d, (a + 1) * d), slice(b * d, (b + 1) * d))

    mass = np.zeros(K)
    rowsum = np.zeros((K, d))
    for p in range(K * K):
        j, k = divmod(p, K)
        if w[p] <= 0:
            continue
        P = prec[k]
        s = sz[p] - phi * sy[p]  # Σγ (z_t − Φ z_{t−1})
        # c = M μ with M = E_k − Φ E_j; H += w MᵀPM, g += MᵀP s
        H[blk(k, k)] += w[p] * P
        H[blk(j, j)] += w[p] * Phi @ P @ Phi
        H[blk(k, j)] -= w[p] * P @ Phi
        H[blk(j, k)] -= w[p] * Phi @ P
        g[k * d : (k + 1) * d] += P @ s
        g[j * d : (j + 1) * d] -= Phi @ (P @ s)
        mass[k] += w[p]
        rowsum[k] += sz[p]
    for k in range(K):
        H[blk(k, k)] += prec0 * first[k, -1]
        g[k * d : (k + 1) * d] += prec0 @ first[k, :d]
        mass[k] += first[k, -1]
        rowsum[k] += first[k, :d]
    # the weak pull towards each state's own rows (see _MEAN_RIDGE)
    for k in range(K):
        lam = _MEAN_RIDGE * max(mass[k], 1.0)
        H[blk(k, k)] += lam * np.eye(d)
        g[k * d : (k + 1) * d] += lam * (rowsum[k] / mass[k] if mass[k] > 0 else 0.0)
    return np.linalg.solve(H, g).reshape(K, d)


def _deviation_moments(S: np.ndarray, mu: np.ndarray, K: int):
    """Per pair (j, k): Σγ u uᵀ, Σγ u vᵀ, Σγ v vᵀ with u = z_t − μ_k, v = z_{t−1} − μ_j."""
    w, sz, sy, zz, zy, yy = _pair_blocks(S, K)
    j, k = np.arange(K * K) // K, np.arange(K * K) % K
    mk, mj = mu[k], mu[j]
    o = np.einsum
    uu = zz - o("pa,pb->pab", sz, mk) - o("pa,pb->pab", mk, sz) + w[:, None, None] * o("pa,pb->pab", mk, mk)
    uv = zy - o("pa,pb->pab", sz, mj) - o("pa,pb->pab", mk, sy) + w[:, None, None] * o("pa,pb->pab", mk, mj)
    vv = yy - o("pa,pb->pab", sy, mj) - o("pa,pb->pab", mj, sy) + w[:, None, None] * o("pa,pb->pab", mj, mj)
    return uu, uv, vv


def update_phi(S: np.ndarray, mu: np.ndarray, covars: np.ndarray, K: int, phi0: np.ndarray | None = None,
               sweeps: int = 50) -> np.ndarray:
    """φ maximising the expected log-likelihood given μ and Σ, inside [0, ``PHI_MAX``].

    Σ_p Σ_t γ (u − Φv)ᵀ P_k (u − Φv) is the quadratic φᵀQφ − 2bᵀφ (+ const) with Q = Σ_p P_k ∘
    (Σγ v vᵀ) and b = Σ_p diag(P_k Σγ u vᵀ). Its unconstrained minimum is taken when it lies in the
    box; otherwise projected coordinate descent from the better of ``phi0`` and the clipped
    minimum (each coordinate step is exact, so the objective never rises).
    """
    _, uv, vv = _deviation_moments(S, mu, K)
    prec = np.linalg.inv(covars)
    k = np.arange(K * K) % K
    Q = np.einsum("pab,pab->ab", prec[k], vv)
    b = np.einsum("pab,pab->b", prec[k], uv)
    d = len(b)
    Q = (Q + Q.T) / 2 + 1e-9 * (np.trace(Q) / d + 1e-12) * np.eye(d)
    free = np.linalg.solve(Q, b)
    if np.all((free >= 0) & (free <= PHI_MAX)):
        return free

    def objective(x):
        return float(x @ Q @ x - 2 * b @ x)

    starts = [np.clip(free, 0.0, PHI_MAX)] + ([np.clip(phi0, 0.0, PHI_MAX)] if phi0 is not None else [])
    x = min(starts, key=objective).copy()
    for _ in range(sweeps):
        before = x.copy()
        for a in range(d):
            if Q[a, a] > 0:
                x[a] = np.clip((b[a] - Q[a] @ x + Q[a, a] * x[a]) / Q[a, a], 0.0, PHI_MAX)
        if np.max(np.abs(x - before)) < 1e-10:
            break
    return x


def update_covars(S: np.ndarray, mu: np.ndarray, phi: np.ndarray, K: int, min_covar: float) -> np.ndarray:
    """Σ_k: the posterior-weighted covariance of the innovations u − Φv of every pair into k."""
    uu, uv, vv = _deviation_moments(S, mu, K)
    Phi = np.diag(phi)
    r = uu - uv @ Phi - Phi @ uv.transpose(0, 2, 1) + Phi @ vv @ Phi  # (K², d, d)
    w = S[:, -1, -1]
    d = len(phi)
    out = np.zeros((K, d, d))
    pooled = r.sum(axis=0) / max(w.sum(), 1e-12)
    for k in range(K):
        rows = np.arange(K) * K + k
        n = w[rows].sum()
        c = r[rows].sum(axis=0) / n if n >= 2 else pooled
        out[k] = (c + c.T) / 2 + min_covar * np.eye(d)
    return out


def update_start_var(first: np.ndarray, first_sq: np.ndarray, mu: np.ndarray, min_covar: float) -> np.ndarray:
    """σ0²: the posterior-weighted variance of the first rows around their states' means."""
    n = first[:, -1].sum()
    if n <= 0:
        return np.ones(mu.shape[1])
    sq = first_sq - 2 * mu * first[:, :-1] + first[:, -1:] * mu**2  # Σ γ_0(k) (z_0 − μ_k)²
    return np.maximum(sq.sum(axis=0) / n, 0.0) + min_covar


class SwitchingFamily(StateFamily):
    """States as places runs wander near (:class:`SwitchingMeanHMM`)."""

    name = "hamilton"
    param_names = ("startprob", "transmat", "means", "covars", "phi", "start_var")
    emission_codes = "mac"
    description = ("a place the run wanders near: its deviation from the state's mean is an AR(1) "
                   "process carried across switches, so a switch predicts a jump between state means")

    def new_model(self, k, covariance_type, *, n_iter=10, tol=1e-2, random_state=None, implementation="log"):
        return SwitchingMeanHMM(n_states=k, covariance_type=covariance_type, n_iter=n_iter, tol=tol,
                                random_state=random_state, implementation=implementation)

    def start_params(self, X, lengths, labels, k):
        off = np.concatenate([[0], np.cumsum(lengths)])
        d = X.shape[1]
        start = np.ones(k)
        trans = np.ones((k, k))
        S = np.zeros((k * k, 2 * d + 1, 2 * d + 1))
        first = np.zeros((k, d + 1))
        first_sq = np.zeros((k, d))
        for i in range(len(lengths)):
            lab = labels[off[i] : off[i + 1]]
            z = X[off[i] : off[i + 1]]
            start[lab[0]] += 1
            np.add.at(trans, (lab[:-1], lab[1:]), 1)
            g = np.zeros((len(lab), k * k))
            g[np.arange(1, len(lab)), lab[:-1] * k + lab[1:]] = 1.0
            S += moments(z, g)
            first[lab[0]] += np.append(z[0], 1.0)
            first_sq[lab[0]] += z[0] ** 2
        # the labels' place means, the deviations' lag-1 regression, then Σ (one ECM sweep)
        means = np.zeros((k, d))
        counts = np.bincount(labels, minlength=k).astype(float)
        np.add.at(means, labels, X)
        glob = X.mean(axis=0)
        means = np.where(counts[:, None] > 0, means / np.maximum(counts, 1)[:, None], glob)
        cov0 = np.cov(X.T).reshape(d, d) + 1e-3 * np.eye(d)
        phi = update_phi(S, means, np.broadcast_to(cov0, (k, d, d)), k)
        covars = update_covars(S, means, phi, k, 1e-3)
        return {"startprob": start / start.sum(), "transmat": trans / trans.sum(axis=1, keepdims=True),
                "means": means, "covars": covars, "phi": phi,
                "start_var": update_start_var(first, first_sq, means, 1e-3)}

    def set_params(self, model, params, covariance_type):
        full = np.asarray(params["covars"], dtype=float)
        K, d = np.shape(params["means"])
        model.n_features = d
        model.set_chain(np.asarray(params["startprob"], dtype=float), np.asarray(params["transmat"], dtype=float))
        model.means_ = np.asarray(params["means"], dtype=float)
        model.phi_ = np.asarray(params["phi"], dtype=float)
        model.start_var_ = np.asarray(params["start_var"], dtype=float)
        model.covars_ = expand_covars(reduce_covars(full, covariance_type), covariance_type, K, d)

    def to_params(self, model):
        return {
            "startprob": np.asarray(model.pi_, dtype=float),
            "transmat": np.asarray(model.A_, dtype=float),
            "means": np.asarray(model.means_, dtype=float),
            "covars": np.asarray(model.covars_, dtype=float),
            "phi": np.asarray(model.phi_, dtype=float),
            "start_var": np.asarray(model.start_var_, dtype=float),
        }

    def check(self, params, covariance_type):
        out = super().check(params, covariance_type)
        if np.any(out["phi"] < 0) or np.any(out["phi"] >= 1) or np.any(out["start_var"] <= 0):
            from .errors import UserError

            raise UserError("saved hamilton parameters hold an AR coefficient outside [0, 1) or a start "
                            "variance that is not positive; refit with `latent fit`")
        return out

    def extra_shapes(self, k, d):
        return {"phi": (d,), "start_var": (d,)}

    def permute(self, params, order):
        order = np.asarray(order)
        out = {}
        for name in self.param_names:
            arr = np.asarray(params[name])
            out[name] = (arr[np.ix_(order, order)] if name == "transmat" else arr if name in ("phi", "start_var")
                         else arr[order])
        return out

    def n_parameters(self, k, d, covariance_type):
        return (k - 1) + k * (k - 1) + k * d + 2 * d + covariance_count(k, d, covariance_type)

    def emit(self, params, prev_state, state, prev_row, noise, rng, first_rows=None):
        mu = np.asarray(params["means"], dtype=float)
        if prev_row is None:
            return mu[state] + np.sqrt(np.asarray(params["start_var"], dtype=float)) * rng.standard_normal(noise.shape)
        return mu[state] + np.asarray(params["phi"], dtype=float) * (prev_row - mu[prev_state]) + noise

    def _previous_weights(self, params, z):
        """w[t, j, k] = p(s_{t−1} = j | s_t = k, z_{<t}) and the pair log-densities [t, j, k]."""
        model = self.build(params, "full")
        logp = model.pair_log_likelihood(np.asarray(z, dtype=float))
        K = len(params["startprob"])
        A = np.asarray(params["transmat"], dtype=float)
        T = len(z)
        w = np.zeros((T, K, K))
        f = np.log(np.maximum(params["startprob"], 1e-300)) + logp[0, 0]
        f -= np.logaddexp.reduce(f)
        for t in range(1, T):
            a = np.exp(f)[:, None] * A  # [j, k] ∝ p(s_{t−1}=j, s_t=k | z_{<t})
            col = a.sum(axis=0, keepdims=True)
            w[t] = np.where(col > 0, a / np.where(col > 0, col, 1), 1.0 / K)
            g = np.log(np.maximum(a, 1e-300)) + logp[t]
            f = np.logaddexp.reduce(g, axis=0)
            f -= np.logaddexp.reduce(f)
        return w, logp

    def centers(self, params, z):
        mu = np.asarray(params["means"], dtype=float)
        phi = np.asarray(params["phi"], dtype=float)
        w, _ = self._previous_weights(params, z)
        z = np.asarray(z, dtype=float)
        out = np.broadcast_to(mu[None], (len(z),) + mu.shape).copy()
        if len(z) > 1:
            # E[z_t | s_t = k, z_{<t}] = μ_k + Φ (z_{t−1} − Σ_j w_jk μ_j)
            prev_mean = np.einsum("tjk,jd->tkd", w[1:], mu)
            out[1:] = mu[None] + phi * (z[:-1, None, :] - prev_mean)
        return out

    def log_density(self, params, z):
        w, logp = self._previous_weights(params, z)
        out = np.empty(logp.shape[::2])
        out[0] = logp[0, 0]
        if len(z) > 1:
            out[1:] = np.logaddexp.reduce(np.log(np.maximum(w[1:], 1e-300)) + logp[1:], axis=1)
        return out
