"""A continuous null for issue 20: every run a smooth curve with AR(1) noise around it, no states.

Not a `latent fit` family: the model a discrete one has to beat before a study is said to have
discrete phases (``bench/bench_segment_k.py``'s null). Feature j of a run is

* ``x_t = l_t + e_t + w_t``, ``w_t ~ N(0, h_j)`` (white observation noise);
* ``l_t = l_{t-1} + b_{t-1} + η_t``, ``η_t ~ N(0, q_j)`` (the curve's level);
* ``b_t = b_{t-1} + ζ_t``, ``ζ_t ~ N(0, r_j)`` (its slope, a random walk: the curve bends anywhere);
* ``e_t = φ_j e_{t-1} + ξ_t``, stationary variance ``s_j`` (the deviation from the curve: the same AR(1)
  noise the segment model has inside a visit, so the two models differ in the curve, places or not);

features independent, the five parameters shared by every run (Harvey's local linear trend plus an
AR(1) component, a structural time-series model). A run's first level and slope come from a proper
prior whose mean and spread are the training runs' (the first row, less the noise, and the slope over
the first rows), so a held-out run is scored by a density, as the segment model's runs are. The
likelihood is the Kalman filter's prediction-error decomposition; the parameters are chosen per
feature by maximum likelihood: a coarse grid, then L-BFGS from its best points (features are independent,
so one vectorised filter pass scores every feature's candidates, or gives every feature's gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

LOG2PI = np.log(2 * np.pi)
#: search box (log10) of (white noise h, level q, slope r, AR variance s, 1 − φ) for z-scored features
BOUNDS = ((-6.0, 0.0), (-8.0, 0.0), (-11.0, -2.0), (-6.0, 0.5), (-3.0, 0.0))
#: the coarse grid the search starts from
GRID = ((-4.0, -2.0), (-6.0, -4.0, -2.0), (-9.0, -6.0, -3.0), (-4.0, -2.0, 0.0), (-2.0, -1.0, -0.3))
STARTS = 3  # the grid's best points per feature that L-BFGS starts from
T0_BOUNDS, KAPPA_BOUNDS = (0.0, 3.0), (0.0, 4.0)  # log10 t0 (checkpoints) and κ of a slowing curve
STEP = 1e-4  # central-difference step (decades) of the gradient
SLOPE_ROWS = 5  # rows whose least-squares slope starts a run's slope prior
VAR_MIN = 1e-6


@dataclass
class TrendParams:
    """Per-feature (D,) parameters and first-row prior of the null."""

    obs: np.ndarray  # h: white noise variance
    level: np.ndarray  # q: level innovation variance
    slope: np.ndarray  # r: slope innovation variance
    ar: np.ndarray  # s: stationary variance of the AR(1) deviation
    phi: np.ndarray  # φ: its coefficient
    m0: np.ndarray  # prior mean and variance of a run's first level
    v0: np.ndarray
    s0: np.ndarray  # prior mean and variance of a run's first slope
    w0: np.ndarray
    t0: np.ndarray | None = None  # with ``slowing``: the level's and slope's innovations shrink as
    kappa: np.ndarray | None = None  # (1 + t/t0)^−κ from row t to t + 1 (None: constant)


def _padded(X: np.ndarray, lengths) -> tuple[np.ndarray, np.ndarray]:
    """Runs as (T_max, R, D) with a (T_max, R) mask of real rows."""
    lengths = np.asarray(lengths)
    runs = np.split(X, np.cumsum(lengths)[:-1])
    T = int(lengths.max())
    Y = np.zeros((T, len(runs), X.shape[1]))
    mask = np.zeros((T, len(runs)), bool)
    for r, x in enumerate(runs):
        Y[: len(x), r] = x
        mask[: len(x), r] = True
    return Y, mask


def _loglik(Y: np.ndarray, mask: np.ndarray, h, q, r, s, phi, m0, v0, s0, w0, t0=None, kappa=None) -> np.ndarray:
    """Kalman filter log likelihood per parameter set, run and feature: the parameters broadcast as
    (G, 1, D) against Y's (T, R, D); returns (G, R, D). State (level l, slope b, deviation e); with ``t0``
    and ``kappa``, the level's and slope's innovations from row t are scaled by (1 + t/t0)^−κ."""
    G = np.broadcast_shapes(*(np.shape(a) for a in (h, q, r, s, phi)))[0]
    shape = (G,) + Y.shape[1:]
    full = lambda a: np.broadcast_to(a, shape).copy()  # noqa: E731
    al, ab, ae = full(m0), full(s0), np.zeros(shape)
    pll, pbb, pee = full(v0), full(w0), full(s)
    plb, ple, pbe = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    qe = s * (1 - phi**2)
    ll = np.zeros(shape)
    for t in range(Y.shape[0]):
        m = mask[t][None, :, None]
        f = pll + 2 * ple + pee + h
        v = Y[t] - al - ae
        ll -= np.where(m, 0.5 * (LOG2PI + np.log(f) + v * v / f), 0.0)
        kl, kb, ke = (pll + ple) / f, (plb + pbe) / f, (ple + pee) / f
        # update with row t (P − k kᵀ f), then predict row t + 1; a padded row leaves the state as it is
        ul, ub, ue = al + kl * v, ab + kb * v, ae + ke * v
        ull, ulb, ule = pll - kl * kl * f, plb - kl * kb * f, ple - kl * ke * f
        ubb, ube, uee = pbb - kb * kb * f, pbe - kb * ke * f, pee - ke * ke * f
        al, ab, ae = np.where(m, ul + ub, al), np.where(m, ub, ab), np.where(m, phi * ue, ae)
        d = 1.0 if kappa is None else (1 + t / t0) ** -kappa
        pll = np.where(m, ull + 2 * ulb + ubb + q * d, pll)
        plb = np.where(m, ulb + ubb, plb)
        ple = np.where(m, phi * (ule + ube), ple)
        pbb = np.where(m, ubb + r * d, pbb)
        pbe = np.where(m, phi * ube, pbe)
        pee = np.where(m, phi**2 * uee + qe, pee)
    return ll


def _prior(Y: np.ndarray, mask: np.ndarray):
    """First level and slope priors from the training runs: mean and variance across runs of the first
    row and of the least-squares slope over the first :data:`SLOPE_ROWS` rows (the first row's variance
    less the noise is taken in :func:`_score`)."""
    first = Y[0]
    n = min(SLOPE_ROWS, int(mask.sum(0).min()))
    t = np.arange(n) - (n - 1) / 2
    slopes = np.tensordot(t, Y[:n], axes=(0, 0)) / max((t * t).sum(), 1.0) if n > 1 else np.zeros_like(first)
    spread = lambda a: np.maximum(a.var(0), VAR_MIN) if len(a) > 1 else np.ones(a.shape[1])  # noqa: E731
    return first.mean(0), spread(first), slopes.mean(0), spread(slopes)


def _unpack(z: np.ndarray):
    """Search coordinates (..., 7, D) → (h, q, r, s, φ, t0, κ), each (..., 1, D) for :func:`_loglik`: log10
    of h, q, r, s, 1 − φ and t0, then κ itself."""
    h, q, r, s, one_minus_phi, t0 = (10.0 ** z[..., i, None, :] for i in range(6))
    return h, q, r, s, 1 - one_minus_phi, t0, z[..., 6, None, :]


def _score(Y, mask, z, prior) -> np.ndarray:
    """Summed-over-runs log likelihood of each candidate ``z`` (G, 7, D): (G, D)."""
    m0, first_var, s0, w0 = prior
    h, q, r, s, phi, t0, kappa = _unpack(z)
    v0 = np.maximum(first_var - h - s, VAR_MIN)  # the first row's spread less its noise
    return _loglik(Y, mask, h, q, r, s, phi, m0, v0, s0, w0, t0, kappa).sum(1)


def fit(X: np.ndarray, lengths, slowing: bool = False) -> TrendParams:
    """Maximum-likelihood parameters per feature on the training runs (``X`` (N, D), ``lengths``). With
    ``slowing``, the curve's innovations also shrink with training time (``t0``, ``κ``): the model nests
    the constant one, and starts from its fit."""
    Y, mask = _padded(X, lengths)
    D = X.shape[1]
    prior = _prior(Y, mask)
    grid = np.array(np.meshgrid(*GRID, [0.0], [0.0], indexing="ij")).reshape(7, -1).T  # (G, 7), κ = 0
    cand = np.broadcast_to(grid[:, :, None], grid.shape + (D,))
    ranked = np.argsort(-_score(Y, mask, cand, prior), 0, kind="stable")  # (G, D)
    starts = [cand[ranked[i], :, np.arange(D)].T for i in range(STARTS)]
    z = _search(Y, mask, prior, starts, BOUNDS + ((0.0, 0.0), (0.0, 0.0)))
    if slowing:  # from the constant fit, and from faster early innovations that slow down
        # (the constant fit has log10 t0 = κ = 0, so the offsets set them)
        starts = [z] + [z + np.array([0, up, up, 0, 0, lt0, 1.0])[:, None] for up in (1.0, 2.0) for lt0 in (0.5, 1.5)]
        z = _search(Y, mask, prior, starts, BOUNDS + (T0_BOUNDS, KAPPA_BOUNDS))
    h, q, r, s, phi, t0, kappa = (a[0, 0] for a in _unpack(z[None]))
    m0, first_var, s0, w0 = prior
    return TrendParams(h, q, r, s, phi, m0, np.maximum(first_var - h - s, VAR_MIN), s0, w0,
                       *((t0, kappa) if slowing else (None, None)))


def _search(Y, mask, prior, starts, box) -> np.ndarray:
    """L-BFGS from each start (7, D): one batched pass gives every feature's central-difference gradient;
    features are independent, so each keeps its own best of the starts and end points: (7, D)."""
    D = Y.shape[2]
    free = [i for i, (lo, hi) in enumerate(box) if hi > lo]
    shifts = np.zeros((1 + 2 * len(free), 7, 1))
    for j, i in enumerate(free):
        shifts[1 + j, i], shifts[1 + len(free) + j, i] = STEP, -STEP

    def objective(flat):
        ll = _score(Y, mask, flat.reshape(7, D)[None] + shifts, prior)
        grad = np.zeros((7, D))
        grad[free] = (ll[1:1 + len(free)] - ll[1 + len(free):]) / (2 * STEP)
        return -ll[0].sum(), -grad.ravel()

    bounds = [b for b in box for _ in range(D)]
    lo, hi = [b[0] for b in bounds], [b[1] for b in bounds]
    ends = []
    for start in starts:
        start = np.clip(np.asarray(start, float).ravel(), lo, hi)
        ends += [start, minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds).x]
    ends = np.array(ends).reshape(-1, 7, D)
    return ends[np.argmax(_score(Y, mask, ends, prior), 0), :, np.arange(D)].T  # never worse than a start


def score_runs(X: np.ndarray, lengths, params: TrendParams, clocks=None) -> np.ndarray:
    """Each run's log likelihood (summed over features): the held-out score.

    ``clocks`` (a slowing fit only): a run's own clock. The slowing schedule's ``t0`` is multiplied by a
    factor of the run's own, one for all its features, and each run is scored by the mixture over the
    factors in ``clocks`` with equal weights (a density: the run's clock integrated out, at a cost of at
    most log len(clocks) nats against the best factor alone)."""
    Y, mask = _padded(X, lengths)
    p = params
    base = [a[None, None] for a in (p.obs, p.level, p.slope, p.ar, p.phi)] + [p.m0, p.v0, p.s0, p.w0]
    if p.kappa is None:
        if clocks is not None:
            raise ValueError("a run's own clock needs a slowing fit")
        return _loglik(Y, mask, *base)[0].sum(1)
    factors = np.asarray([1.0] if clocks is None else clocks, float)
    ll = np.stack([_loglik(Y, mask, *base, c * p.t0[None, None], p.kappa[None, None])[0].sum(1) for c in factors])
    return logsumexp(ll, axis=0) - np.log(len(factors))


def simulate(params: TrendParams, n_runs: int, T: int, rng: np.random.Generator) -> np.ndarray:
    """``n_runs`` runs of ``T`` rows drawn from the model, stacked: (n_runs * T, D)."""
    p = params
    D = len(p.obs)
    normal = lambda var: np.sqrt(var) * rng.standard_normal((n_runs, D))  # noqa: E731
    level, slope, dev = p.m0 + normal(p.v0), p.s0 + normal(p.w0), normal(p.ar)
    out = np.empty((n_runs, T, D))
    for t in range(T):
        out[:, t] = level + dev + normal(p.obs)
        d = 1.0 if p.kappa is None else (1 + t / p.t0) ** -p.kappa
        level, slope = level + slope + normal(p.level * d), slope + normal(p.slope * d)
        dev = p.phi * dev + normal(p.ar * (1 - p.phi**2))
    return out.reshape(n_runs * T, D)
