"""Published laws of grokking delay, as forecasts to hold ``latent predict``'s against.

Both are first-passage times: a quantity moves at the run's recent drift and the run converges
when it reaches a level. They need no HMM, only the run's own recent trajectory and (for the first)
the fitted runs' levels.

The weight-norm law (:class:`NormLaw`)
--------------------------------------
Grokking happens when the weight norm reaches the norm of the generalising solution: Liu,
Michaud & Tegmark (2023, "Omnigrok": generalisation in a "Goldilocks zone" of weight norm),
Varma et al. (2023: weight decay favours the more efficient, generalising circuit) and Lyu et al.
(2024: the late phase moves the norm steadily and grokking is the norm's first passage to the
generalising scale). As a forecast for one partial run:

- the level ``x*_j = log l2_j(c_j)``: each fitted run's log weight norm at its convergence step;
- the drift ``v``: the least-squares slope of ``log l2`` over the run's last ``window`` share of
  checkpoints (at least ``min_points``), with its standard error;
- the passage ``t + (x*_j − x_t) / v`` where the run moves towards ``x*_j``, never (an open end)
  where it moves away.

The norm need not fall: on the default modadd MLP it rises to l2 ≈ 30 (sd 3 % over 40 runs) at
every run's convergence; on the contrast transformer it rises, then decays to l2 ≈ 5.7 (sd 3 %).

The logit law (:class:`LogitLaw`)
---------------------------------
Validation accuracy climbs a sigmoid during the jump (Power et al. 2022's curves; Nanda et al. 2023
see the test loss fall steadily through circuit formation and cleanup): on the logit scale it rises
linearly, so extrapolating ``logit(metric)`` at its recent drift to ``logit(threshold)`` gives the
crossing step. Metrics outside (0, 1) (losses) are taken on the log scale.

Intervals
---------
The median uses the drift as fitted; the ``level`` interval takes the drift's own confidence bounds
(t quantile of the slope's standard error), and for the norm law also the spread of the levels
between runs (order statistics, as the analog forecast). That is each law taken at its word; the
backtest (:func:`latent.predict.backtest`) says how often its intervals hold.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: what each law is, in one line (pages and RESULTS.md)
LAW_TEXT = {
    "norm": "first passage of the log weight norm to the level where the fitted runs generalised, at the run's "
            "recent drift (Liu et al. 2023; Varma et al. 2023; Lyu et al. 2024)",
    "logit": "the convergence metric on the logit scale, extrapolated at its recent drift to the threshold "
             "(the sigmoid of the jump, Power et al. 2022; Nanda et al. 2023)",
}


def recent_drift(steps: np.ndarray, y: np.ndarray, window: float, min_points: int) -> tuple[float, float, float, int] | None:
    """``(y_t, slope, se, m)``: the last value, the least-squares slope per step over the last
    ``window`` share of the points (at least ``min_points``), its standard error and the points used;
    None with too few finite points or no spread in steps."""
    steps, y = np.asarray(steps, dtype=float), np.asarray(y, dtype=float)
    n = max(min_points, int(math.ceil(window * len(steps))))
    s, x = steps[-n:], y[-n:]
    ok = np.isfinite(x)
    m = int(ok.sum())
    if m < max(min_points, 3) or np.ptp(s[ok]) == 0 or not np.isfinite(y[-1]):
        return None
    s, x = s[ok], x[ok]
    sc = s - s.mean()
    slope = float((sc * (x - x.mean())).sum() / (sc ** 2).sum())
    if abs(slope) * np.ptp(s) < 1e-9:  # rounding, not movement: a flat series does not drift
        slope = 0.0
    resid = x - x.mean() - slope * sc
    se = float(math.sqrt((resid ** 2).sum() / (m - 2) / (sc ** 2).sum()))
    if se * np.ptp(s) < 1e-9:
        se = 0.0
    return float(y[-1]), slope, se, m


def passage(t: float, x: float, levels: np.ndarray, v: float) -> np.ndarray:
    """Steps at which a quantity at ``x`` at step ``t``, moving at ``v`` per step, reaches each level:
    ``t`` for a level already reached, +inf for one it moves away from (or when ``v`` is 0)."""
    gap = np.asarray(levels, dtype=float) - x
    out = np.full(gap.shape, math.inf)
    toward = (v != 0) & (np.sign(gap) == np.sign(v))
    out[toward] = t + gap[toward] / v
    out[gap == 0] = t
    return out


@functools.lru_cache(maxsize=256)
def _t_quantile(q: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df))


def _interval(t: float, x: float, levels: np.ndarray, slope: float, se: float, m: int, level: float) -> dict:
    from .predict import _open, order_interval

    half = _t_quantile((1 + level) / 2, m - 2) * se
    bounds = (slope - half, slope + half)
    mid = passage(t, x, levels, slope)
    # the faster drift (towards the median level) gives the early end, the slower the late end
    toward = np.sign(np.median(levels) - x) or 1.0
    fast, slow = (bounds[1], bounds[0]) if toward > 0 else (bounds[0], bounds[1])
    early, late = passage(t, x, levels, fast), passage(t, x, levels, slow)
    n = len(levels)
    _, med, _ = order_interval(mid, np.ones(n), 0.5, n)
    lo, _, _ = order_interval(early, np.ones(n), level, n) if n > 1 else (early[0], None, None)
    _, _, hi = order_interval(late, np.ones(n), level, n) if n > 1 else (None, None, late[0])
    if np.isinf(early).all() or lo == math.inf:  # even the fastest drift in its bounds moves away: never
        return {"median": None, "low": None, "high": None, "never": True, "drift": slope, "drift_se": se}
    return {"median": _open(med), "low": t if lo == -math.inf else max(float(lo), t), "high": _open(hi),
            "never": False, "drift": slope, "drift_se": se}


@dataclass(frozen=True)
class NormLaw:
    """The weight-norm first-passage law (module docstring).

    Attributes
    ----------
    metric : str
        The weight-norm column (default ``l2``, the L2 norm of all weights).
    window : float
        Share of the checkpoints seen so far whose slope is the drift.
    min_points : int
        Fewest checkpoints in the drift window.
    """

    metric: str = "l2"
    window: float = 0.2
    min_points: int = 5
    name: str = "norm"

    def levels(self, table: pd.DataFrame, times: dict) -> dict[int, float]:
        """``log metric`` at each converged run's convergence step: ``{seed: x*}``.

        Parameters
        ----------
        table : DataFrame
            ``seed``, ``step`` and ``metric`` of the runs.
        times : dict of int to float or None
            Each run's convergence step (None or inf: never converged, left out).
        """
        out = {}
        if self.metric not in table.columns:
            return out
        for seed, run in table.groupby("seed", sort=True):
            c = times.get(int(seed))
            if c is None or not math.isfinite(c):
                continue
            run = run.sort_values("step", kind="stable")
            at = run[run["step"] >= c][self.metric].to_numpy(dtype=float)
            if len(at) and np.isfinite(at[0]) and at[0] > 0:
                out[int(seed)] = float(math.log(at[0]))
        return out

    def forecast(self, run: pd.DataFrame, levels: dict[int, float], level: float, exclude: int | None = None) -> dict:
        """The law's forecast of one partial run (not converged at its last step).

        Parameters
        ----------
        run : DataFrame
            The run so far (``step`` and :attr:`metric`).
        levels : dict
            From :meth:`levels`.
        level : float
            Interval level.
        exclude : int, optional
            A run whose level is left out (its own, in a backtest).

        Returns
        -------
        dict
            ``method`` ("norm law" or "none"), ``median``, ``low``, ``high`` (None: open, the run
            moves away from the levels), ``drift``, ``drift_se`` (per step, log scale), ``runs``.
        """
        lv = np.array([v for s, v in sorted(levels.items()) if s != exclude], dtype=float)
        none = {"method": "none", "median": None, "low": None, "high": None, "runs": int(len(lv))}
        if self.metric not in run.columns or not len(lv):
            return none
        values = run[self.metric].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(values > 0, np.log(values), np.nan)
        d = recent_drift(run["step"].to_numpy(dtype=float), y, self.window, self.min_points)
        if d is None:
            return none
        x, slope, se, m = d
        return {"method": "norm law", **_interval(float(run["step"].iloc[-1]), x, lv, slope, se, m, level),
                "runs": int(len(lv))}


@dataclass(frozen=True)
class LogitLaw:
    """The logit-scale extrapolation of the convergence metric (module docstring).

    Attributes
    ----------
    window, min_points
        As for :class:`NormLaw`.
    eps : float
        Values are clipped to [eps, 1 − eps] before the logit.
    """

    window: float = 0.2
    min_points: int = 5
    eps: float = 1e-4
    name: str = "logit"

    def forecast(self, run: pd.DataFrame, metric: str, threshold: float, level: float) -> dict:
        """The law's forecast of one partial run: ``metric`` extrapolated to ``threshold``.

        Returns
        -------
        dict
            As :meth:`NormLaw.forecast` (``method`` "logit law" or "none").
        """
        none = {"method": "none", "median": None, "low": None, "high": None}
        if metric not in run.columns:
            return none
        values = run[metric].to_numpy(dtype=float)
        fin = values[np.isfinite(values)]
        if not len(fin):
            return none
        if fin.min() >= 0 and fin.max() <= 1 and 0 < threshold < 1:
            c = np.clip(values, self.eps, 1 - self.eps)
            y, target = np.log(c / (1 - c)), math.log(threshold / (1 - threshold))
        elif fin.min() > 0 and threshold > 0:
            y, target = np.log(np.where(values > 0, values, np.nan)), math.log(threshold)
        else:
            return none
        d = recent_drift(run["step"].to_numpy(dtype=float), y, self.window, self.min_points)
        if d is None:
            return none
        x, slope, se, m = d
        return {"method": "logit law", **_interval(float(run["step"].iloc[-1]), x, np.array([target]), slope, se, m,
                                                   level)}
