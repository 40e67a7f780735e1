"""A trial model for issue 20: states as places visited in segments, each visit with its own offset and trend.

Not a `latent fit` family (yet): a prototype measured by ``bench/bench_segment_trial.py`` to decide
whether it is worth building into one. ``bench/bench_family_start.py`` found that the Gaussian HMM,
``ar`` and ``hamilton`` either do not reach the planted states from a realistic start or prefer
another structure (transition states, emptied states) to them. This model writes the realistic
family's own story into the likelihood:

* a run is a sequence of *segments* (visits); consecutive segments have different states (a
  transition matrix with a zero diagonal), and a segment lasts its state's ``d_min`` checkpoints or
  more, its length beyond that geometric with a mean of the state's own (a run's last segment is
  censored: it goes on after the run, so it may be shorter);
* optionally (``moves``) one more state, the *move*: the way between places, not a place, as short as
  one checkpoint, whose checkpoints :func:`place_labels` gives to the place it leads to;
* inside a visit of state k, feature j moves as ``x_t = μ_kj + u + v·c_t + ε_t``: ``c_t`` the time
  from the visit's centre, ``u ~ N(0, τ²_kj)`` the visit's offset, ``v ~ N(ν_kj, ω²_kj)`` its trend,
  and ``ε`` an AR(1) process with coefficient ``φ_j`` and innovation variance ``σ²_kj``
  (stationary at the visit's first checkpoint); features independent given the state.

The offset and trend are integrated out, so a segment's log-likelihood is a 2-coefficient Bayesian
regression's evidence, exact and O(1) per (segment, state, feature) from prefix sums of the
quasi-differenced series ``x_t − φ x_{t−1}``. Decoding is the exact segment Viterbi (O(T² K) per
run), or with ``stride`` the same on a grid of checkpoints refined near the last decoding's
boundaries (:func:`visit_cuts`); :func:`forward` sums where Viterbi maximises (the held-out score).
Fitting is hard EM ("segmental k-means"): decode, then re-estimate from the decoded visits
(each feature's φ from a grid, by the decoded visits' evidence; then moments: GLS per visit, state
means, spreads and pooled innovations), until the labels stop changing.
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
    return segment_loglik_features(x, starts, stops, params).sum(2)


def segment_loglik_features(x: np.ndarray, starts: np.ndarray, stops: np.ndarray, params: SegmentParams,
                            states=None) -> np.ndarray:
    """Each feature's share of :func:`segment_loglik` (features are independent given the state):
    (P, K, D), or (P, len(states), D) for the ``states`` given."""
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
    states = range(params.n_states) if states is None else states
    out = np.empty((len(starts), len(states), D))
    for i, k in enumerate(states):
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
        out[:, i] = ll
    return out


# --------------------------------------------------------------------------- decoding


def _log_duration(n: np.ndarray, stay: np.ndarray, d_min: np.ndarray, censored: bool) -> np.ndarray:
    """(P, K): log P(length = n), -inf below a state's shortest visit; or, for a run's last (censored)
    segment, log P(length ≥ n), which is 0 below the shortest visit (the visit goes on after the run)."""
    extra = (n[:, None] - d_min[None, :]).astype(float)
    log_stay = np.log(np.clip(stay, 1e-12, 1 - 1e-12))
    if censored:
        return np.maximum(extra, 0) * log_stay[None, :]
    out = extra * log_stay[None, :] + np.log1p(-np.clip(stay, 1e-12, 1 - 1e-12))[None, :]
    return np.where(extra >= 0, out, -np.inf)


def candidate_cuts(T: int, stride: int = 1, extra=(), width: int = 1) -> np.ndarray:
    """The checkpoints a visit may start at: every ``stride``-th one, every checkpoint within ``width`` of
    one of ``extra`` (boundaries found before), and 0 and ``T``; sorted and unique."""
    grid = np.arange(0, T + 1, max(int(stride), 1))
    near = np.asarray(list(extra), dtype=int)
    if len(near):
        near = (near[:, None] + np.arange(-width, width + 1)[None, :]).ravel()
    out = np.unique(np.concatenate([grid, near, [0, T]]))
    return out[(out >= 0) & (out <= T)]


def _scores(x: np.ndarray, params: SegmentParams, cuts) -> tuple[np.ndarray, np.ndarray]:
    """``(cuts, table)``: table[i, j, k] the log evidence plus duration of ``x[cuts[i]:cuts[j]]`` as one
    visit of state k (the run's last visit censored), -inf for i ≥ j or a visit shorter than its state allows."""
    T, K = len(x), params.n_states
    cuts = np.arange(T + 1) if cuts is None else np.asarray(cuts, dtype=int)
    if cuts[0] != 0 or cuts[-1] != T or np.any(np.diff(cuts) <= 0):
        raise ValueError("cuts must rise strictly from 0 to the run's length")
    i_idx, j_idx = np.triu_indices(len(cuts), k=1)
    s_idx, e_idx = cuts[i_idx], cuts[j_idx]
    seg = segment_loglik(x, s_idx, e_idx, params)
    n = e_idx - s_idx
    d_min = np.asarray(params.d_min)
    dur = np.where((e_idx == T)[:, None], _log_duration(n, params.stay, d_min, True),
                   _log_duration(n, params.stay, d_min, False))
    table = np.full((len(cuts), len(cuts), K), -np.inf)
    table[i_idx, j_idx] = seg + dur
    return cuts, table


def viterbi(x: np.ndarray, params: SegmentParams, cuts=None) -> tuple[float, list[tuple[int, int, int]]]:
    """The best segmentation of one run: its log score and its visits ``(start, stop, state)``; with
    ``cuts`` (from :func:`candidate_cuts`), visits start and stop at those checkpoints only."""
    K = params.n_states
    cuts, table = _scores(x, params, cuts)
    m = len(cuts) - 1
    V = np.full((m + 1, K), -np.inf)
    back = np.zeros((m + 1, K, 2), dtype=int)  # (start's cut index, previous state)
    W = np.full((m + 1, K), -np.inf)  # best way into a new visit of k starting at cut i
    Wk = np.zeros((m + 1, K), dtype=int)
    W[0] = params.log_start
    Wk[0] = -1
    for j in range(1, m + 1):
        cand = W[:j] + table[:j, j]  # (starts, K)
        i_best = np.argmax(cand, axis=0)
        V[j] = cand[i_best, np.arange(K)]
        back[j, :, 0], back[j, :, 1] = i_best, Wk[i_best, np.arange(K)]
        if j < m:
            into = V[j][:, None] + params.log_trans  # (from, to)
            Wk[j] = np.argmax(into, axis=0)
            W[j] = into[Wk[j], np.arange(K)]
    k = int(np.argmax(V[m]))
    best = float(V[m, k])
    visits, j = [], m
    while j > 0:
        i, prev = back[j, k]
        visits.append((int(cuts[i]), int(cuts[j]), k))
        j, k = int(i), int(prev)
    return best, visits[::-1]


def forward(x: np.ndarray, params: SegmentParams, cuts=None) -> float:
    """The log likelihood of one run, summed over every segmentation (on ``cuts`` when given) and
    every state sequence: the held-out score."""
    from scipy.special import logsumexp

    K = params.n_states
    cuts, table = _scores(x, params, cuts)
    m = len(cuts) - 1
    F = np.full((m + 1, K), -np.inf)
    W = np.full((m + 1, K), -np.inf)
    W[0] = params.log_start
    with np.errstate(invalid="ignore"):
        for j in range(1, m + 1):
            F[j] = logsumexp(W[:j] + table[:j, j], axis=0)
            if j < m:
                W[j] = logsumexp(F[j][:, None] + params.log_trans, axis=0)
    return float(logsumexp(F[m]))


# --------------------------------------------------------------------------- estimation


def _visit_fit(x: np.ndarray, phi: np.ndarray):
    """GLS of one visit (n, D) on ``(1, c_t)`` with AR(1) errors: intercepts, trends, their
    sampling-variance factors (× σ²; inf for a trend a visit of < 3 checkpoints cannot show) and the
    innovation sum of squares and its degrees of freedom. A visit of 1-2 checkpoints gives its mean, whose
    variance factor is that of a mean of n stationary AR(1) draws."""
    n, D = x.shape
    c = np.arange(n) - (n - 1) / 2.0
    if n < 3:
        lag = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
        va = np.array([(f ** lag).sum() / n**2 / (1 - f**2) for f in phi])
        return x.mean(0), np.zeros(D), va, np.full(D, np.inf), np.zeros(D), 0
    # the whitened design per feature, all features at once: row 0 (w0, w0·c_0), rows t ≥ 1
    # (1 − φ, c_t − φ c_{t−1}); observations w0·x_0 and x_t − φ x_{t−1}
    w0 = np.sqrt(1 - phi**2)  # (D,)
    r1 = np.vstack([w0, np.broadcast_to(1 - phi, (n - 1, D))])  # (n, D)
    r2 = np.vstack([w0 * c[0], c[1:, None] - phi * c[:-1, None]])
    o = np.vstack([w0 * x[0], x[1:] - phi * x[:-1]])
    g11, g12, g22 = (r1 * r1).sum(0), (r1 * r2).sum(0), (r2 * r2).sum(0)
    h1, h2 = (r1 * o).sum(0), (r2 * o).sum(0)
    det = g11 * g22 - g12**2
    a_hat, v_hat = (g22 * h1 - g12 * h2) / det, (g11 * h2 - g12 * h1) / det
    va, vv = g22 / det, g11 / det
    ss = ((o - r1 * a_hat - r2 * v_hat) ** 2).sum(0)
    return a_hat, v_hat, va, vv, ss, n - 2


#: the AR(1) coefficients tried for each feature (the one whose decoded visits have the most evidence is kept)
PHI_GRID = (0.0, 0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
#: a move (or a place) with too few visits to measure its own spread gets this broad one
BROAD_TAU2, BROAD_OM2 = 1.0, 0.25


def _moments(runs, visits_per_run, K: int, phi: np.ndarray, moves: bool):
    """State levels, trends, their spreads and innovation variances for given φ: (mu, nu, tau2, om2, sig2),
    each (K, D). A spread is measured from a state's visits long enough to show it (≥ 2 of them); a place
    without gets the median of the places that have one, a move the broad default."""
    D = len(phi)
    per_state = [[] for _ in range(K)]
    for x, visits in zip(runs, visits_per_run):
        for s, e, k in visits:
            per_state[k].append(_visit_fit(x[s:e], phi))
    mu, nu, tau2, om2, sig2 = (np.full((K, D), np.nan) for _ in range(5))
    pooled_ss, pooled_df = np.zeros(D), 0
    for k, fits in enumerate(per_state):
        if not fits:
            continue
        a = np.array([f[0] for f in fits])
        va = np.array([f[2] for f in fits])
        ss, df = sum(f[4] for f in fits), sum(f[5] for f in fits)
        pooled_ss, pooled_df = pooled_ss + ss, pooled_df + df
        if df > 0:
            sig2[k] = ss / df
        mu[k] = a.mean(0)
        trended = [f for f in fits if np.isfinite(f[3]).all()]
        nu[k] = np.mean([f[1] for f in trended], axis=0) if trended else 0.0
        s2 = sig2[k] if df > 0 else pooled_ss / max(pooled_df, 1)
        if len(fits) >= 2:
            tau2[k] = a.var(0, ddof=1) - va.mean(0) * s2
        if len(trended) >= 2:
            v = np.array([f[1] for f in trended])
            om2[k] = v.var(0, ddof=1) - np.array([f[3] for f in trended]).mean(0) * s2
    pooled = pooled_ss / max(pooled_df, 1) if pooled_df else np.ones(D)
    sig2 = np.where(np.isfinite(sig2) & (sig2 > 0), sig2, pooled)
    places = K - int(moves)
    for arr, floor, broad in ((tau2, TAU2_MIN, BROAD_TAU2), (om2, OM2_MIN, BROAD_OM2)):
        have = np.isfinite(arr[:places]).all(1)
        fill = np.median(arr[:places][have], axis=0) if have.any() else np.full(D, broad)
        arr[:places] = np.where(np.isfinite(arr[:places]), arr[:places], fill)
        if moves:
            arr[K - 1] = np.where(np.isfinite(arr[K - 1]), arr[K - 1], broad)
        np.maximum(arr, floor, out=arr)
    mu = np.nan_to_num(mu)  # a state never decoded sits at the global mean
    nu = np.nan_to_num(nu)
    np.maximum(sig2, SIG2_MIN, out=sig2)
    return mu, nu, tau2, om2, sig2


def estimate(X: np.ndarray, lengths, visits_per_run, K: int, d_min: np.ndarray, moves: bool = False,
             grid=PHI_GRID) -> SegmentParams:
    """Estimates from decoded visits (``visits_per_run``: per run, ``(start, stop, state)``; with
    ``moves``, state K − 1 is the move): each feature's φ from ``grid`` (:data:`PHI_GRID`; one value
    fixes it), the one under which the decoded visits have the most evidence (moments re-measured for
    each); then the moments; a
    segment's continuation with the run's last visit censored; transitions and first states counted
    (+ 0.5 each)."""
    D = X.shape[1]
    runs = np.split(X, np.cumsum(lengths)[:-1])
    d_min = np.asarray(d_min)
    trans = np.full((K, K), 0.5)
    np.fill_diagonal(trans, 0.0)
    best_ev, best_phi = np.full(D, -np.inf), np.zeros(D)
    for g in grid:
        phi = np.full(D, g)
        params = SegmentParams(*_moments(runs, visits_per_run, K, phi, moves), phi, np.zeros(K), np.zeros((K, K)),
                               np.full(K, 0.5), d_min, moves)
        ev = np.zeros(D)
        for x, visits in zip(runs, visits_per_run):
            for k in {v[2] for v in visits}:
                mine = [(s, e) for s, e, kk in visits if kk == k]
                ev += segment_loglik_features(x, np.array([s for s, _ in mine]), np.array([e for _, e in mine]),
                                              params, states=[k])[:, 0].sum(0)
        better = ev > best_ev
        best_ev[better], best_phi[better] = ev[better], g
    phi = best_phi
    mu, nu, tau2, om2, sig2 = _moments(runs, visits_per_run, K, phi, moves)
    starts = np.full(K, 0.5)
    extra_sum, ended = np.zeros(K), np.zeros(K)
    for visits in visits_per_run:
        starts[visits[0][2]] += 1
        for i, (s, e, k) in enumerate(visits):
            extra_sum[k] += max(e - s - d_min[k], 0)
            if i + 1 < len(visits):  # the run's last visit is censored: it had not ended
                ended[k] += 1
                trans[k, visits[i + 1][2]] += 1
    # geometric continuation with censoring: Σ extra / (Σ extra + visits that ended)
    stay = np.where(extra_sum + ended > 0, extra_sum / np.maximum(extra_sum + ended, 1e-12), 0.5)
    if K == 1:
        log_trans = np.full((1, 1), -np.inf)
    else:
        with np.errstate(divide="ignore"):
            log_trans = np.log(trans / trans.sum(1, keepdims=True))
    return SegmentParams(mu, nu, tau2, om2, sig2, phi, np.log(starts / starts.sum()), log_trans,
                         np.clip(stay, 1e-6, 1 - 1e-6), d_min, moves)


def visits_from_labels(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal stretches of equal labels as visits ``(start, stop, state)``."""
    cut = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1], True])
    return [(int(a), int(b), int(labels[a])) for a, b in zip(cut[:-1], cut[1:])]


def switches_as_moves(labels: np.ndarray, n: int, move: int) -> np.ndarray:
    """A copy of one run's ``labels`` with the ``n`` rows from every switch labelled ``move``."""
    out = np.array(labels, copy=True)
    for s in np.flatnonzero(out[1:] != out[:-1]) + 1:
        out[s : s + n] = move
    return out


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


def visit_cuts(T: int, stride: int, visits) -> np.ndarray | None:
    """The cuts a decoding with ``stride`` uses after ``visits``: the grid, and every checkpoint within
    ``stride // 2`` of a boundary of ``visits`` (so a boundary the grid put near is placed exactly next
    time); None (every checkpoint) for a stride of 1."""
    if stride <= 1:
        return None
    return candidate_cuts(T, stride, [s for s, _, _ in visits[1:]], width=stride // 2)


def score_runs(X: np.ndarray, lengths, params: SegmentParams, stride: int = 1) -> np.ndarray:
    """Each run's :func:`forward` log likelihood (the held-out score). With ``stride`` > 1, on the cuts
    near the run's decoding on the grid, as :func:`fit` decodes."""
    runs = np.split(X, np.cumsum(lengths)[:-1])
    out = []
    for x in runs:
        cuts = None
        if stride > 1:  # decode on the grid, then sum over the cuts near that decoding
            cuts = visit_cuts(len(x), stride, viterbi(x, params, candidate_cuts(len(x), stride))[1])
        out.append(forward(x, params, cuts))
    return np.array(out)


def fit(X: np.ndarray, lengths, labels: np.ndarray, K: int, d_min: int = 5, max_iter: int = 15,
        moves: bool = False, stride: int = 1, move_start: int = 0) -> SegmentFit:
    """Hard EM from a labelling of every checkpoint (``labels`` in 0..K−1) with K places; with
    ``moves``, also a move between places (shortest 1 checkpoint), which is not a place. With ``stride``
    > 1, visits start and stop on every ``stride``-th checkpoint and near the last decoding's boundaries
    (:func:`visit_cuts`): far fewer segments to score, and boundaries still to the checkpoint. With
    ``moves`` and ``move_start`` > 0, the move's first estimate is from the ``move_start`` rows after
    every switch of ``labels`` (else it is broad until moves are decoded)."""
    lengths = np.asarray(lengths)
    runs = np.split(X, np.cumsum(lengths)[:-1])
    start = np.split(np.asarray(labels), np.cumsum(lengths)[:-1])
    if moves and move_start > 0:  # the move starts as the first rows after every switch of the start
        start = [switches_as_moves(lab, move_start, K) for lab in start]
    visits = [visits_from_labels(lab) for lab in start]
    n_states = K + int(moves)
    mins = np.r_[np.full(K, d_min), [1] * int(moves)]
    best, history, it = None, [], 0
    for it in range(1, max_iter + 1):
        params = estimate(X, lengths, visits, n_states, mins, moves)
        decoded = [viterbi(x, params, visit_cuts(len(x), stride, v)) for x, v in zip(runs, visits)]
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
