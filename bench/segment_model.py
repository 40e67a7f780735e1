"""A trial model for issue 20: states as places visited in segments, each visit with its own offset and trend.

Not a `latent fit` family (yet): a prototype measured by ``bench/bench_segment_trial.py`` to decide
whether it is worth building into one. ``bench/bench_family_start.py`` found that the Gaussian HMM,
``ar`` and ``hamilton`` either do not reach the planted states from a realistic start or prefer
another structure (transition states, emptied states) to them. This model writes the realistic
family's own story into the likelihood:

* a run is a sequence of *segments* (visits); consecutive segments have different states (a
  transition matrix with a zero diagonal), and a segment lasts ``d_min`` checkpoints or more, its
  length beyond that geometric with a mean of the state's own (the last segment of a run censored);
* inside a visit of state k, feature j moves as ``x_t = μ_kj + u + v·c_t + ε_t``: ``c_t`` the time
  from the visit's centre, ``u ~ N(0, τ²_kj)`` the visit's offset, ``v ~ N(ν_kj, ω²_kj)`` its trend,
  and ``ε`` an AR(1) process with coefficient ``φ_j`` and innovation variance ``σ²_kj``
  (stationary at the visit's first checkpoint); features independent given the state.

The offset and trend are integrated out, so a segment's log-likelihood is a 2-coefficient Bayesian
regression's evidence, exact and O(1) per (segment, state, feature) from prefix sums of the
quasi-differenced series ``x_t − φ x_{t−1}``. Decoding is the exact segment Viterbi (O(T² K) per
run). Fitting is hard EM ("segmental k-means"): decode, then re-estimate from the decoded visits by
moments (GLS per visit; state means, spreads and pooled innovations), until the labels stop changing.
The moments are not the exact maximiser of the segment evidence, so the score is tracked and the
best decoding kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOG2PI = np.log(2 * np.pi)
#: floors on the variances (z-scored features): an offset, a trend per checkpoint, an innovation
TAU2_MIN, OM2_MIN, SIG2_MIN = 1e-4, 1e-8, 1e-6
PHI_MAX = 0.99


@dataclass
class SegmentParams:
    """Parameters of a K-state segment model over D features."""

    mu: np.ndarray  # (K, D) level at a visit's centre
    nu: np.ndarray  # (K, D) mean trend per checkpoint
    tau2: np.ndarray  # (K, D) variance of a visit's offset
    om2: np.ndarray  # (K, D) variance of a visit's trend
    sig2: np.ndarray  # (K, D) AR(1) innovation variance
    phi: np.ndarray  # (D,) AR(1) coefficient, shared by the states
    log_start: np.ndarray  # (K,)
    log_trans: np.ndarray  # (K, K), -inf on the diagonal
    stay: np.ndarray  # (K,) geometric continuation probability of a segment beyond d_min
    d_min: np.ndarray  # (K,) shortest visit of each state
    moves: bool = False  # the last state is the *move*: the way between places, not a place

    @property
    def n_states(self) -> int:
        return len(self.mu)


# --------------------------------------------------------------------------- segment evidence


def _time_sums(n: np.ndarray, phi: np.ndarray):
    """Per segment length ``n`` (P,) and feature φ (D,): the regressor sums of the quasi-differenced
    rows t = 1..n−1 (rows ``(1−φ, (1−φ)c_t + φ)``, ``c_t = t − (n−1)/2``): (P, D) each."""
    m = (n - 1).astype(float)[:, None]  # rows after the first
    # over t = 1..n-1: Σc = (n−1)/2, Σc² = Σ t² − (n−1) Σ t + (n−1)·((n−1)/2)²
    s_t = m * (m + 1) / 2
    s_tt = m * (m + 1) * (2 * m + 1) / 6
    half = m / 2
    s_c = s_t - m * half
    s_cc = s_tt - 2 * half * s_t + m * half**2
    g = 1 - phi[None, :]
    r11 = m * g**2
    r12 = g * (g * s_c + phi * m)
    r22 = g**2 * s_cc + 2 * g * phi * s_c + phi**2 * m
    return r11, r12, r22, s_c


def segment_loglik(x: np.ndarray, starts: np.ndarray, stops: np.ndarray, params: SegmentParams) -> np.ndarray:
    """Log evidence of ``x[s:e]`` (x: (T, D)) as one visit of each state: (P, K) for P segments."""
    T, D = x.shape
    phi = params.phi
    xt = x.copy()
    xt[1:] -= phi * x[:-1]  # quasi-differenced; row 0 unused
    t = np.arange(T, dtype=float)[:, None]
    zero = np.zeros((1, D))
    c1 = np.vstack([zero, np.cumsum(xt, 0)])
    c2 = np.vstack([zero, np.cumsum(xt**2, 0)])
    ct = np.vstack([zero, np.cumsum(xt * t, 0)])
    n = stops - starts
    a, b = starts + 1, stops  # the quasi-differenced rows of the segment: s+1 .. e-1
    S1, S2, St = c1[b] - c1[a], c2[b] - c2[a], ct[b] - ct[a]  # (P, D)
    centre = (starts + (n - 1) / 2.0)[:, None]
    Sc = St - centre * S1  # Σ x̃_t c_t
    r11, r12, r22, s_c = _time_sums(n, phi)
    m = (n - 1).astype(float)[:, None]
    g = 1 - phi
    v0_scale = 1 - phi**2  # first row: variance σ²/(1−φ²)
    c_first = (-(n - 1) / 2.0)[:, None]
    x_first = x[starts]  # (P, D)
    out = np.empty((len(starts), params.n_states))
    for k in range(params.n_states):
        mu, nu, tau2, om2, sig2 = (params.mu[k], params.nu[k], params.tau2[k], params.om2[k], params.sig2[k])
        v0 = sig2 / v0_scale
        # observations minus the state's level: o_first = x_s − μ; o_t = x̃_t − (1−φ)μ
        o_first = x_first - mu
        so = S1 - m * g * mu
        soo = S2 - 2 * g * mu * S1 + m * (g * mu) ** 2
        soc = Sc - g * mu * s_c
        lam11 = 1 / tau2 + 1 / v0 + r11 / sig2
        lam12 = c_first / v0 + r12 / sig2
        lam22 = 1 / om2 + c_first**2 / v0 + r22 / sig2
        b1 = o_first / v0 + g * so / sig2
        b2 = c_first * o_first / v0 + (g * soc + phi * so) / sig2 + nu / om2
        det = lam11 * lam22 - lam12**2
        quad = (lam22 * b1**2 - 2 * lam12 * b1 * b2 + lam11 * b2**2) / det
        ll = -0.5 * (n[:, None] * LOG2PI + np.log(v0) + m * np.log(sig2) + o_first**2 / v0 + soo / sig2
                     + nu**2 / om2 - quad + np.log(det) + np.log(tau2) + np.log(om2))
        out[:, k] = ll.sum(1)
    return out


# --------------------------------------------------------------------------- decoding


def _log_duration(n: np.ndarray, stay: np.ndarray, d_min: np.ndarray, censored: bool) -> np.ndarray:
    """(P, K): log P(length = n), or log P(length ≥ n) for a run's last (censored) segment; -inf
    below a state's shortest visit."""
    extra = (n[:, None] - d_min[None, :]).astype(float)
    log_stay = np.log(np.clip(stay, 1e-12, 1 - 1e-12))
    out = extra * log_stay[None, :]
    if not censored:
        out = out + np.log1p(-np.clip(stay, 1e-12, 1 - 1e-12))[None, :]
    return np.where(extra >= 0, out, -np.inf)


def viterbi(x: np.ndarray, params: SegmentParams) -> tuple[float, list[tuple[int, int, int]]]:
    """The best segmentation of one run: its log score and its visits ``(start, stop, state)``."""
    T = len(x)
    K = params.n_states
    d_min = np.minimum(params.d_min, T)  # a run shorter than a state's shortest visit can be one visit
    d0 = int(d_min.min())
    s_idx, e_idx = np.triu_indices(T + 1, k=d0)
    seg = segment_loglik(x, s_idx, e_idx, params)
    n = e_idx - s_idx
    dur = np.where((e_idx == T)[:, None], _log_duration(n, params.stay, d_min, True),
                   _log_duration(n, params.stay, d_min, False))
    score = seg + dur
    table = np.full((T + 1, T + 1, K), -np.inf)
    table[s_idx, e_idx] = score
    V = np.full((T + 1, K), -np.inf)
    back = np.zeros((T + 1, K, 2), dtype=int)  # (start, previous state)
    W = np.full((T + 1, K), -np.inf)  # best way into a new visit of k starting at s
    Wk = np.zeros((T + 1, K), dtype=int)
    W[0] = params.log_start
    Wk[0] = -1
    for e in range(d0, T + 1):
        cand = W[: e - d0 + 1] + table[: e - d0 + 1, e]  # (starts, K)
        s_best = np.argmax(cand, axis=0)
        V[e] = cand[s_best, np.arange(K)]
        back[e, :, 0], back[e, :, 1] = s_best, Wk[s_best, np.arange(K)]
        if e < T:
            into = V[e][:, None] + params.log_trans  # (from, to)
            Wk[e] = np.argmax(into, axis=0)
            W[e] = into[Wk[e], np.arange(K)]
    k = int(np.argmax(V[T]))
    best = float(V[T, k])
    visits, e = [], T
    while e > 0:
        s, prev = back[e, k]
        visits.append((int(s), int(e), k))
        e, k = int(s), int(prev)
    return best, visits[::-1]


# --------------------------------------------------------------------------- estimation


def _visit_fit(x: np.ndarray, phi: np.ndarray):
    """GLS of one visit (n, D) on ``(1, c_t)`` with AR(1) errors: intercepts, trends, their
    sampling-variance factors (× σ²) and the innovation sum of squares and its rows."""
    n, D = x.shape
    c = np.arange(n) - (n - 1) / 2.0
    if n < 3:
        return x.mean(0), np.zeros(D), np.full(D, np.inf), np.full(D, np.inf), np.zeros(D), 0
    a_hat, v_hat, va, vv, ss = (np.empty(D) for _ in range(5))
    for j in range(D):
        f = phi[j]
        w0 = np.sqrt(1 - f**2)
        R = np.vstack([[w0, w0 * c[0]], np.column_stack([np.full(n - 1, 1 - f), c[1:] - f * c[:-1]])])
        o = np.r_[w0 * x[0, j], x[1:, j] - f * x[:-1, j]]
        G = R.T @ R
        beta = np.linalg.solve(G, R.T @ o)
        inv = np.linalg.inv(G)
        a_hat[j], v_hat[j], va[j], vv[j] = beta[0], beta[1], inv[0, 0], inv[1, 1]
        ss[j] = np.sum((o - R @ beta) ** 2)
    return a_hat, v_hat, va, vv, ss, n - 2


def estimate(X: np.ndarray, lengths, visits_per_run, K: int, d_min: np.ndarray, moves: bool = False) -> SegmentParams:
    """Moment estimates from decoded visits (``visits_per_run``: per run, ``(start, stop, state)``;
    with ``moves``, state K − 1 is the move). A move never decoded yet starts broad: level N(0, 1)
    per z-scored feature, trend N(0, 0.5²) per checkpoint, half its segments longer than its shortest."""
    D = X.shape[1]
    runs = np.split(X, np.cumsum(lengths)[:-1])
    # φ: lag-1 autocorrelation of the visits' residuals around their own line, pooled
    num, den = np.zeros(D), np.zeros(D)
    for x, visits in zip(runs, visits_per_run):
        for s, e, _ in visits:
            if e - s >= 3:
                c = np.arange(e - s) - (e - s - 1) / 2.0
                y = x[s:e] - x[s:e].mean(0)
                slope = (c @ y) / (c @ c)
                r = y - c[:, None] * slope
                num += (r[1:] * r[:-1]).sum(0)
                den += (r[:-1] ** 2).sum(0)
    phi = np.clip(num / np.maximum(den, 1e-12), 0.0, PHI_MAX)
    per_state = [[] for _ in range(K)]
    for x, visits in zip(runs, visits_per_run):
        for s, e, k in visits:
            per_state[k].append(_visit_fit(x[s:e], phi))
    mu, nu, tau2, om2, sig2 = (np.zeros((K, D)) for _ in range(5))
    pooled_ss, pooled_df = np.zeros(D), 0
    for k, fits in enumerate(per_state):
        if not fits:
            continue
        a = np.array([f[0] for f in fits])
        v = np.array([f[1] for f in fits])
        ss = sum(f[4] for f in fits)
        df = sum(f[5] for f in fits)
        pooled_ss, pooled_df = pooled_ss + ss, pooled_df + df
        sig2[k] = ss / df if df > 0 else np.nan
        mu[k], nu[k] = a.mean(0), v.mean(0)
        ok = np.array([np.isfinite(f[2]).all() for f in fits])
        if len(fits) >= 2:
            va = np.array([f[2] for f in fits])[ok].mean(0) if ok.any() else 0
            vv = np.array([f[3] for f in fits])[ok].mean(0) if ok.any() else 0
            tau2[k] = a.var(0, ddof=1) - va * np.nan_to_num(sig2[k])
            om2[k] = v.var(0, ddof=1) - vv * np.nan_to_num(sig2[k])
        else:
            tau2[k], om2[k] = np.nan, np.nan
    pooled = pooled_ss / max(pooled_df, 1)
    sig2 = np.where(np.isfinite(sig2) & (sig2 > 0), sig2, pooled)
    # a state seen once borrows the spread of the others
    for arr, floor in ((tau2, TAU2_MIN), (om2, OM2_MIN)):
        fill = np.nanmedian(np.where(np.isfinite(arr), arr, np.nan), axis=0) if np.isfinite(arr).any() else floor
        arr[:] = np.where(np.isfinite(arr), arr, fill)
        np.maximum(arr, floor, out=arr)
    np.maximum(sig2, SIG2_MIN, out=sig2)
    starts = np.full(K, 0.5)
    trans = np.full((K, K), 0.5)
    np.fill_diagonal(trans, 0.0)
    extra_sum, count = np.zeros(K), np.zeros(K)
    for visits in visits_per_run:
        starts[visits[0][2]] += 1
        for (s, e, k), nxt in zip(visits, visits[1:] + [None]):
            extra_sum[k] += max(e - s - d_min[k], 0)
            count[k] += 1
            if nxt is not None and nxt[2] != k:
                trans[k, nxt[2]] += 1
    mean_extra = extra_sum / np.maximum(count, 1)
    stay = np.where(count > 0, mean_extra / (mean_extra + 1), 0.5)
    if moves and not per_state[K - 1]:
        mu[K - 1], nu[K - 1], tau2[K - 1], om2[K - 1] = 0.0, 0.0, 1.0, 0.25
        sig2[K - 1] = np.median(sig2[:K - 1], axis=0)
    with np.errstate(divide="ignore"):
        log_trans = np.log(trans / trans.sum(1, keepdims=True))
    return SegmentParams(mu, nu, tau2, om2, sig2, phi, np.log(starts / starts.sum()), log_trans,
                         np.clip(stay, 1e-6, 1 - 1e-6), np.asarray(d_min), moves)


def visits_from_labels(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal stretches of equal labels as visits ``(start, stop, state)``."""
    cut = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1], True])
    return [(int(a), int(b), int(labels[a])) for a, b in zip(cut[:-1], cut[1:])]


def labels_from_visits(visits, T: int) -> np.ndarray:
    out = np.empty(T, dtype=int)
    for s, e, k in visits:
        out[s:e] = k
    return out


def place_labels(visits, T: int, K: int) -> np.ndarray:
    """Each checkpoint's place: a move's checkpoints belong to the place it leads to (the last one's
    to the place it left; a run that is all move gets -1)."""
    out = labels_from_visits(visits, T)
    places = [(s, e, k) for s, e, k in visits if k < K]
    for s, e, k in visits:
        if k >= K:
            nxt = [v for v in places if v[0] >= e]
            prev = [v for v in places if v[1] <= s]
            out[s:e] = nxt[0][2] if nxt else (prev[-1][2] if prev else -1)
    return out


@dataclass
class SegmentFit:
    params: SegmentParams
    labels: np.ndarray  # per checkpoint, all runs: the place (moves given to the place they lead to)
    in_move: np.ndarray  # per checkpoint: decoded as a move (all False without moves)
    score: float  # Viterbi log score of the kept decoding, summed over runs
    iterations: int
    scores: list  # per iteration


def fit(X: np.ndarray, lengths, labels: np.ndarray, K: int, d_min: int = 5, max_iter: int = 15,
        moves: bool = False) -> SegmentFit:
    """Hard EM from a labelling of every checkpoint (``labels`` in 0..K−1) with K places; with
    ``moves``, also a move between places (shortest 1 checkpoint), which is not a place."""
    lengths = np.asarray(lengths)
    runs = np.split(X, np.cumsum(lengths)[:-1])
    visits = [visits_from_labels(lab) for lab in np.split(np.asarray(labels), np.cumsum(lengths)[:-1])]
    n_states = K + int(moves)
    mins = np.r_[np.full(K, d_min), [1] * int(moves)]
    best, history, it = None, [], 0
    for it in range(1, max_iter + 1):
        params = estimate(X, lengths, visits, n_states, mins, moves)
        decoded = [viterbi(x, params) for x in runs]
        score = float(sum(s for s, _ in decoded))
        new = [v for _, v in decoded]
        history.append(score)
        if best is None or score > best[0]:
            best = (score, params, new)
        if new == visits:
            break
        visits = new
    score, params, visits = best
    labels = np.concatenate([place_labels(v, len(x), K) for v, x in zip(visits, runs)])
    in_move = np.concatenate([labels_from_visits(v, len(x)) >= K for v, x in zip(visits, runs)])
    return SegmentFit(params, labels, in_move, score, it, history)
