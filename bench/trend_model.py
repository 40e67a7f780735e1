"""A continuous null for issue 20: every run a smooth curve, no states (the local linear trend model).

Not a `latent fit` family: the model a discrete one has to beat before a study is said to have
discrete phases (``bench/bench_segment_k.py``'s ``trend`` rows). Feature j of a run is

* ``x_t = l_t + e_t``, ``e_t ~ N(0, s²_j)`` (observation noise);
* ``l_t = l_{t-1} + b_{t-1} + η_t``, ``η_t ~ N(0, q²_j)`` (the level, a smooth curve);
* ``b_t = b_{t-1} + ζ_t``, ``ζ_t ~ N(0, r²_j)`` (its slope, itself a random walk),

features independent, the three variances shared by every run (Harvey's local linear trend, the
structural time-series model of a curve that bends anywhere). A run's first level and slope come from
a proper prior whose mean and spread are the training runs' (the first row, and the slope over the
first rows), so a held-out run is scored by a density, as the segment model's runs are. The
likelihood is the Kalman filter's prediction-error decomposition; the three variances are chosen per
feature by maximum likelihood: a coarse log grid, then L-BFGS from its best (features are independent,
so one vectorised filter pass scores every feature's candidates, or gives every feature's gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

LOG2PI = np.log(2 * np.pi)
#: the coarse log10 grid of (observation, level, slope) variances for z-scored features
GRID = (np.arange(-5.0, 0.5), np.arange(-7.0, -0.5), np.arange(-10.0, -2.5))
STEP = 1e-4  # central-difference step (decades) of the gradient
SLOPE_ROWS = 5  # rows whose least-squares slope starts a run's slope prior
VAR_MIN = 1e-6


@dataclass
class TrendParams:
    """Per-feature (D,) variances and first-row prior of the local linear trend model."""

    obs: np.ndarray
    level: np.ndarray
    slope: np.ndarray
    m0: np.ndarray  # prior mean and variance of a run's first level
    v0: np.ndarray
    s0: np.ndarray  # prior mean and variance of a run's first slope
    w0: np.ndarray


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


def _loglik(Y: np.ndarray, mask: np.ndarray, obs, level, slope, m0, v0, s0, w0) -> np.ndarray:
    """Kalman filter log likelihood per parameter set, run and feature: the variances broadcast as
    (G, 1, D) against Y's (T, R, D); returns (G, R, D)."""
    G = np.broadcast_shapes(np.shape(obs), np.shape(level), np.shape(slope))[0]
    shape = (G,) + Y.shape[1:]
    a1 = np.broadcast_to(m0, shape).copy()  # level, slope, and their covariance, before row t
    a2 = np.broadcast_to(s0, shape).copy()
    p11 = np.broadcast_to(v0, shape).copy()
    p12 = np.zeros(shape)
    p22 = np.broadcast_to(w0, shape).copy()
    ll = np.zeros(shape)
    for t in range(Y.shape[0]):
        m = mask[t][None, :, None]
        f = p11 + obs
        v = Y[t] - a1
        ll -= np.where(m, 0.5 * (LOG2PI + np.log(f) + v * v / f), 0.0)
        k1, k2 = p11 / f, p12 / f
        # update with row t, then predict row t + 1 (a padded row leaves the state as it is)
        u1, u2 = a1 + k1 * v, a2 + k2 * v
        q11, q12, q22 = p11 - k1 * p11, p12 - k1 * p12, p22 - k2 * p12
        a1 = np.where(m, u1 + u2, a1)
        a2 = np.where(m, u2, a2)
        p11 = np.where(m, q11 + 2 * q12 + q22 + level, p11)
        p12 = np.where(m, q12 + q22, p12)
        p22 = np.where(m, q22 + slope, p22)
    return ll


def _prior(Y: np.ndarray, mask: np.ndarray):
    """First level and slope priors from the training runs: mean and variance across runs of the first
    row and of the least-squares slope over the first :data:`SLOPE_ROWS` rows."""
    first = Y[0]
    n = min(SLOPE_ROWS, int(mask.sum(0).min()))
    t = np.arange(n) - (n - 1) / 2
    slopes = np.tensordot(t, Y[:n], axes=(0, 0)) / max((t * t).sum(), 1.0) if n > 1 else np.zeros_like(first)
    spread = lambda a: np.maximum(a.var(0), VAR_MIN) if len(a) > 1 else np.ones(a.shape[1])  # noqa: E731
    return first.mean(0), spread(first), slopes.mean(0), spread(slopes)


def _best(Y, mask, cand, m0, v0, s0, w0) -> np.ndarray:
    """Each feature's best of the candidate log10 variances ``cand`` (G, 3, D): (3, D)."""
    var = 10.0 ** cand
    ll = _loglik(Y, mask, var[:, 0, None, :], var[:, 1, None, :], var[:, 2, None, :], m0, v0, s0, w0).sum(1)
    return cand[np.argmax(ll, 0), :, np.arange(cand.shape[2])].T


def fit(X: np.ndarray, lengths) -> TrendParams:
    """Maximum-likelihood variances per feature on the training runs (``X`` (N, D), ``lengths``)."""
    Y, mask = _padded(X, lengths)
    D = X.shape[1]
    m0, v0, s0, w0 = _prior(Y, mask)
    grid = np.array(np.meshgrid(*GRID, indexing="ij")).reshape(3, -1).T  # (G, 3) log10 variances
    best = _best(Y, mask, np.broadcast_to(grid[:, :, None], grid.shape + (D,)), m0, v0, s0, w0)
    # then L-BFGS from the grid's best: features are independent, so one batched filter pass gives every
    # feature's central-difference gradient at once
    shifts = np.concatenate([np.zeros((1, 3)), STEP * np.eye(3), -STEP * np.eye(3)])[:, :, None]

    def objective(flat):
        cand = flat.reshape(3, D)[None] + shifts  # (7, 3, D)
        var = 10.0 ** cand
        ll = _loglik(Y, mask, var[:, 0, None, :], var[:, 1, None, :], var[:, 2, None, :], m0, v0, s0, w0).sum(1)
        grad = (ll[1:4] - ll[4:7]) / (2 * STEP)  # (3, D)
        return -ll[0].sum(), -grad.ravel()

    lo = np.repeat([g[0] - 1 for g in GRID], D)
    hi = np.repeat([min(g[-1] + 1, 1.0) for g in GRID], D)
    res = minimize(objective, best.ravel(), jac=True, method="L-BFGS-B", bounds=list(zip(lo, hi)))
    if res.fun <= objective(best.ravel())[0]:  # never worse than the grid
        best = res.x.reshape(3, D)
    var = 10.0 ** best
    return TrendParams(var[0], var[1], var[2], m0, v0, s0, w0)


def score_runs(X: np.ndarray, lengths, params: TrendParams) -> np.ndarray:
    """Each run's log likelihood (summed over features): the held-out score."""
    Y, mask = _padded(X, lengths)
    p = params
    ll = _loglik(Y, mask, p.obs[None, None], p.level[None, None], p.slope[None, None], p.m0, p.v0, p.s0, p.w0)
    return ll[0].sum(1)


def n_parameters(params: TrendParams) -> int:
    """Three variances and four prior moments per feature."""
    return 7 * len(params.obs)


def simulate(params: TrendParams, n_runs: int, T: int, rng: np.random.Generator) -> np.ndarray:
    """``n_runs`` runs of ``T`` rows drawn from the model, stacked: (n_runs * T, D)."""
    p = params
    D = len(p.obs)
    level = p.m0 + np.sqrt(p.v0) * rng.standard_normal((n_runs, D))
    slope = p.s0 + np.sqrt(p.w0) * rng.standard_normal((n_runs, D))
    out = np.empty((n_runs, T, D))
    for t in range(T):
        out[:, t] = level + np.sqrt(p.obs) * rng.standard_normal((n_runs, D))
        level = level + slope + np.sqrt(p.level) * rng.standard_normal((n_runs, D))
        slope = slope + np.sqrt(p.slope) * rng.standard_normal((n_runs, D))
    return out.reshape(n_runs * T, D)
