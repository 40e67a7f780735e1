"""Convergence time, the bag-of-states regression, detour states and trajectory dissimilarity.

Notation: N runs, K states; ``occupancy`` is an (N, K) matrix whose row i holds the fraction of
run i's checkpoints spent in each state (its rows sum to 1); ``y`` is each run's convergence time
in steps (reference.md E1).

Regression design (the collinearity choice): the fractions sum to one, so an intercept plus all K
fractions is rank-deficient. We drop states no run visits, fit OLS *without* an intercept on the
remaining K' fractions (the same column space as an intercept plus K'−1 fractions), and report

* ``beta[k]``: the predicted convergence time of a run that spends all its time in state k;
* ``intercept`` = Σ_k p̄_k β_k, with p̄ the mean occupancy over runs; for OLS on the simplex this
  is exactly the mean convergence time ȳ;
* ``coef[k]`` = β_k − intercept (an occupancy-weighted effect contrast): positive means that
  moving time into state k from the average run's mix of states goes with later convergence.
  Weighting by occupancy keeps the reference level at ȳ; an unweighted mean of β would be
  dominated by states whose fraction barely varies across runs (say, a memorisation phase of
  the same length in every run), whose β is poorly determined;
* R² against the mean of y and the F-test of the K'−1 contrasts, with (K'−1, N−K') degrees of
  freedom;
* percentile 95 % intervals from a bootstrap over runs (seeded). Resamples in which some kept state
  has no occupancy cannot identify its coefficient and are skipped (their number is reported).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import stats

from .errors import UserError

log = logging.getLogger("latent")

NONCONVERGED_RULES = ("exclude", "censor")


def convergence_step(steps: np.ndarray, values: np.ndarray, threshold: float, direction: str = "above"):
    """The first ``step`` where ``values > threshold`` (``"below"``: ``<``), or None."""
    values = np.asarray(values, dtype=float)
    if direction == "above":
        hit = values > threshold
    elif direction == "below":
        hit = values < threshold
    else:
        raise UserError(f"unknown convergence direction {direction!r}; use 'above' or 'below'")
    idx = np.flatnonzero(hit)
    return int(steps[idx[0]]) if idx.size else None


def occupancy_fractions(path: np.ndarray, k: int) -> np.ndarray:
    """Fraction of checkpoints in each of ``k`` states."""
    return np.bincount(np.asarray(path), minlength=k)[:k] / len(path)


class OccupancyRegression:
    """OLS of convergence time on state-occupancy fractions, with bootstrap intervals.

    Parameters
    ----------
    n_boot : int, default 1000
        Bootstrap resamples of runs.
    random_state : int, default 0
        Seeds the bootstrap.

    Attributes
    ----------
    states_ : list of int
        States with any occupancy (the design's columns).
    beta_ : ndarray (K,)
        No-intercept coefficients (NaN for dropped states).
    coef_ : ndarray (K,)
        Occupancy-weighted contrasts β_k − Σ_j p̄_j β_j (NaN for dropped states).
    intercept_ : float
    ci_low_, ci_high_ : ndarray (K,)
        Bootstrap 95 % percentile interval of ``coef_`` (NaN where not estimable).
    r2_, f_stat_, p_value_ : float
    df_model_, df_resid_, n_ : int
    n_boot_used_ : int
    """

    def __init__(self, n_boot: int = 1000, random_state: int = 0):
        self.n_boot = n_boot
        self.random_state = random_state

    @staticmethod
    def _solve(F: np.ndarray, y: np.ndarray) -> np.ndarray:
        beta, *_ = np.linalg.lstsq(F, y, rcond=None)
        return beta

    def fit(self, occupancy, y):
        occupancy = np.asarray(occupancy, dtype=float)
        y = np.asarray(y, dtype=float)
        n, K = occupancy.shape
        keep = [k for k in range(K) if occupancy[:, k].sum() > 0]
        F = occupancy[:, keep]
        kp = len(keep)
        beta = self._solve(F, y)
        resid = y - F @ beta
        ssr = float(resid @ resid)
        sst = float(((y - y.mean()) ** 2).sum())
        self.n_, self.states_ = n, keep
        self.df_model_, self.df_resid_ = kp - 1, n - kp
        self.r2_ = 1 - ssr / sst if sst > 0 else float("nan")
        if self.df_model_ > 0 and self.df_resid_ > 0 and sst > 0:
            if ssr > 0:
                self.f_stat_ = ((sst - ssr) / self.df_model_) / (ssr / self.df_resid_)
                self.p_value_ = float(stats.f.sf(self.f_stat_, self.df_model_, self.df_resid_))
            else:
                self.f_stat_, self.p_value_ = float("inf"), 0.0
        else:
            self.f_stat_ = self.p_value_ = float("nan")
            log.warning(
                "regression F-test undefined: %d run(s), %d visited state(s), total variance %.4g",
                n, kp, sst,
            )
        self.beta_ = np.full(K, np.nan)
        self.beta_[keep] = beta
        self.coef_ = np.full(K, np.nan)
        self.intercept_ = float(F.mean(axis=0) @ beta)
        self.coef_[keep] = beta - self.intercept_

        rng = np.random.default_rng(np.random.SeedSequence(int(self.random_state), spawn_key=(2,)))
        boots = []
        for _ in range(int(self.n_boot)):
            idx = rng.integers(0, n, n)
            Fb = F[idx]
            if np.any(Fb.sum(axis=0) <= 0):
                continue
            b = self._solve(Fb, y[idx])
            boots.append(b - Fb.mean(axis=0) @ b)
        self.n_boot_used_ = len(boots)
        self.ci_low_ = np.full(K, np.nan)
        self.ci_high_ = np.full(K, np.nan)
        if boots:
            boots = np.array(boots)
            self.ci_low_[keep] = np.percentile(boots, 2.5, axis=0)
            self.ci_high_[keep] = np.percentile(boots, 97.5, axis=0)
        if self.n_boot and self.n_boot_used_ < 0.5 * self.n_boot:
            log.warning(
                "only %d of %d bootstrap resamples identify every state's coefficient "
                "(rarely visited states); intervals are unreliable",
                self.n_boot_used_, self.n_boot,
            )
        return self

    def predict(self, occupancy):
        occupancy = np.asarray(occupancy, dtype=float)
        return occupancy[:, self.states_] @ self.beta_[self.states_]


def find_detours(coef, ci_low, ci_high, visited: np.ndarray, converged: np.ndarray) -> list[dict]:
    """States that some converging runs never visit and whose coefficient is positive.

    Parameters
    ----------
    coef, ci_low, ci_high : array (K,)
    visited : bool array (N, K)
        Whether run i's path visits state k.
    converged : bool array (N,)
    """
    out = []
    for k in range(visited.shape[1]):
        c = coef[k]
        n_visit = int(visited[:, k].sum())
        skipping = int((converged & ~visited[:, k]).sum())
        if n_visit == 0 or skipping == 0 or not np.isfinite(c) or c <= 0:
            continue
        lo, hi = ci_low[k], ci_high[k]
        out.append(
            {
                "state": k,
                "coef": float(c),
                "ci_low": _num(lo),
                "ci_high": _num(hi),
                "significant": bool(np.isfinite(lo) and (lo > 0 or hi < 0)),
                "runs_visiting": n_visit,
                "converged_runs_skipping": skipping,
            }
        )
    return out


def _num(x):
    return float(x) if x is not None and np.isfinite(x) else None


def wasserstein(p: np.ndarray, q: np.ndarray, ground: np.ndarray) -> float:
    """Earth mover's distance between distributions ``p`` and ``q`` over K points (exact LP)."""
    from scipy.optimize import linprog

    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    K = len(p)
    if np.allclose(p, q):
        return 0.0
    # variables: transport plan π (K×K, row-major); rows sum to p, columns to q
    A = np.zeros((2 * K, K * K))
    for i in range(K):
        A[i, i * K : (i + 1) * K] = 1
        A[K + i, i::K] = 1
    res = linprog(ground.ravel(), A_eq=A[:-1], b_eq=np.concatenate([p, q])[:-1], bounds=(0, None), method="highs")
    if not res.success:  # pragma: no cover - the LP is always feasible for distributions
        raise RuntimeError(f"transport LP failed: {res.message}")
    return float(max(res.fun, 0.0))


def trajectory_dissimilarity(occupancy: np.ndarray, ground: np.ndarray) -> float:
    """E[W(p, q)] over pairs of runs (reference.md E1, Eq. 1): 2/(N(N−1)) Σ_{i<j} W(p_i, p_j)."""
    occupancy = np.asarray(occupancy, dtype=float)
    n = len(occupancy)
    if n < 2:
        return float("nan")
    cache: dict[tuple, float] = {}
    keys = [tuple(np.round(row, 12)) for row in occupancy]
    total = 0.0
    for i in range(n):
        for j in range(i):
            key = (keys[i], keys[j]) if keys[i] <= keys[j] else (keys[j], keys[i])
            if key not in cache:
                cache[key] = wasserstein(occupancy[i], occupancy[j], ground)
            total += cache[key]
    return 2.0 * total / (n * (n - 1))


def ground_metric(means: np.ndarray) -> np.ndarray:
    """Euclidean distance between state means (z units), shape (K, K)."""
    means = np.asarray(means, dtype=float)
    return np.sqrt(((means[:, None, :] - means[None, :, :]) ** 2).sum(-1))
