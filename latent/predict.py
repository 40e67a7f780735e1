"""Place new or still-running runs on a fitted training map: where each run is, whether it is
heading into a detour, and when it will converge.

A fit (``latent fit``) is a Gaussian HMM plus the decoded paths and convergence steps of the runs
it was fitted on. For a run that was not in the fit, finished or not, :func:`predict` reports:

* **where it is**: the HMM's *filtered* posterior over states at its last checkpoint (the
  forward algorithm on the checkpoints seen so far: the smoothed posterior of the last row, so
  no future checkpoint is used) and the Viterbi path so far (the states visited);
* **detour risk**: for every detour state of the fit, the probability of entering it before the
  run reaches the fit's horizon (1 once the run has entered it): by default from the HMM's
  transition structure (the current posterior pushed through the transition matrix with the
  detour state made absorbing, once per remaining checkpoint), or from aligned analogs;
* **a convergence forecast** with an interval, from *aligned analogs*: for each state the run
  may be in, every fitted run's first stay in that state that lasted as long as the new run has
  been in it, if it had not converged by then; its remaining time to convergence, added to the
  current step, is one draw, weighted by the posterior of that state. Weighted quantiles give the
  forecast and its interval, with the quantile levels widened for few analogs (order statistics
  of n draws cover a new one with probability (j - i) / (n + 1)); analogs that never converged
  count as "beyond the horizon", so an interval's upper end may be open. Fewer than
  ``min_analogs`` effective analogs mark the forecast ``"few analogs"``.

Scaling of a partial run. With the default ``global`` scaling the fit's pooled mean and standard
deviation apply to any prefix unchanged. With the reference's ``per_run`` scaling, a run is
z-scored on its own time axis, which for a partial run can only be the prefix seen so far; that
changes the scaled values as the run grows, so early states are decoded less reliably
(bench/bench_predict.py measures the cost; docs/predict.md).

Everything here is plain data in and out; :func:`backtest` measures, on a fit's own runs, how
early the forecast's interval covers the true convergence step (leave-one-run-out analogs).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from .detours import convergence_step
from .errors import UserError
from .features import measured_rows, zscore
from .family import DEFAULT_FAMILY, FAMILIES
from .hmm import build_hmm
from .artifacts import resolve_fit  # noqa: F401 - the one fit resolver, where predict's users look for it
from .schemas import read_artifact
from .store import read_parquet


@dataclass(frozen=True)
class PredictConfig:
    """Settings of a prediction.

    Parameters
    ----------
    level : float
        Nominal coverage of the convergence interval (0.8: the 10th to 90th percentile).
    min_analogs : float
        Fewest effective analog runs ((Σw)²/Σw²) below which a forecast is marked ``"few analogs"``.
    risk : {"hmm", "analogs"}
        How detour risk is estimated (:meth:`FittedMap.detour_risk`); on held-out runs the two
        score alike (Brier) and ``"hmm"`` raises fewer false alarms (bench/RESULTS.md ``predict``).
    """

    level: float = 0.8
    min_analogs: float = 3.0
    risk: str = "hmm"

    def validate(self) -> None:
        if not 0 < self.level < 1:
            raise UserError(f"--level must be between 0 and 1 (exclusive), got {self.level}")
        if not self.min_analogs >= 1:
            raise UserError(f"--min-analogs must be at least 1, got {self.min_analogs}")
        if self.risk not in ("analogs", "hmm"):
            raise UserError(f"unknown detour risk method {self.risk!r}; choose analogs or hmm")


@dataclass
class _Analog:
    steps: np.ndarray   # checkpoint steps of a fitted run
    states: np.ndarray  # its Viterbi states
    conv: float         # its convergence step (inf: never, within the fit's horizon)
    stays: dict = None  # state -> [(first step, last step, runs to the end)], from steps and states

    def __post_init__(self):
        if self.stays is None:
            self.stays = _stays(self.steps, self.states)


class FittedMap:
    """A fit read back for prediction (``model.json``, ``paths.parquet``, ``analysis.json``).

    Parameters
    ----------
    fit_dir : path
        ``<store>/<study>/fits/<fit-id>``.
    files : tuple, optional
        ``(model, paths, analysis)`` already read by :func:`latent.artifacts.load_fit` (the report has
        them), so that they are not read again; default: read from ``fit_dir``.
    """

    def __init__(self, fit_dir: str | os.PathLike, files: tuple | None = None):
        from .artifacts import load_fit

        fit_dir = Path(fit_dir)
        # each file checked against its schema (latent.schemas), here or by whoever read them
        model, paths, analysis = files if files is not None else load_fit(fit_dir)
        try:
            self.fit_dir = fit_dir
            self.fit_id = str(model["fit_id"])
            self.study = str(model.get("study", fit_dir.parent.parent.name))
            self.features = list(model["features"])
            self.covariance_type = str(model["covariance_type"])
            self.family = str(model.get("family", DEFAULT_FAMILY))
            if self.family not in FAMILIES:
                raise ValueError(f"family {self.family!r}")
            self.scaling = dict(model["scaling"])
            self.first_n = int(model["config"].get("first_n", 1000))
            self.transmat = np.asarray(model["transmat"], dtype=float)
            self.k = int(model["n_states"])
            conv = analysis["convergence"]
            self.metric, self.threshold = str(conv["metric"]), float(conv["threshold"])
            self.direction = str(conv.get("direction", "above"))
            self.step_unit = str(conv.get("step_unit", "step"))
            self.tau = float(conv["tau"]) if conv.get("tau") is not None else None
            times = {int(s): v for s, v in conv["times"].items()}
            found = [d for d in analysis.get("detours", []) if d.get("significant", True)]
            self.detours = sorted(int(d["state"]) for d in found)
            self.delays = {int(d["state"]): d.get("delay") for d in found}
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"fit {fit_dir} is incomplete or corrupt ({exc!r} missing or malformed); "
                            "refit with `latent fit`") from None
        self.hmm = build_hmm(model, self.covariance_type, family=self.family)
        self.analogs: dict[int, _Analog] = {}
        for seed, run in paths.sort_values(["seed", "step"], kind="stable").groupby("seed", sort=True):
            c = times.get(int(seed))
            self.analogs[int(seed)] = _Analog(run["step"].to_numpy(dtype=float), run["state"].to_numpy(dtype=int),
                                              math.inf if c is None else float(c))
        if not self.analogs:
            raise UserError(f"fit {fit_dir} has no decoded runs in paths.parquet; refit with `latent fit`")
        lengths = [len(a.steps) for a in self.analogs.values()]
        #: checkpoints of a typical fitted run: the horizon detour risks look ahead to
        self.horizon = int(min(self.first_n, np.median(lengths)))
        self.last_step = float(np.median([a.steps[-1] for a in self.analogs.values()]))

    def study_meta(self) -> dict | None:
        """``study.json`` of the study the fit was made on, if it is still beside the fit."""
        path = self.fit_dir.parent.parent / "study.json"
        return read_artifact("study", path, hint="fix it or delete the study") if path.is_file() else None

    # -- decoding ---------------------------------------------------------------------------

    def scale(self, values: np.ndarray) -> np.ndarray:
        """Feature rows of one run in the fit's scaled units (see the module docstring)."""
        if self.scaling.get("kind") == "global":
            mean = np.asarray(self.scaling["mean"], dtype=float)
            std = np.asarray(self.scaling["std"], dtype=float)
            return (values - mean) / std
        return zscore(values)[0]

    def decode(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Viterbi path and the filtered posterior at the last row of one run's raw features."""
        X = self.scale(values)
        path = self.hmm.predict(X)
        post = self.hmm.predict_proba(X)[-1]  # the last smoothed row is the filtered one
        return path, post

    # -- what comes next --------------------------------------------------------------------

    def detour_risk(self, posterior: np.ndarray, path: np.ndarray, steps: np.ndarray, remaining: int,
                    method: str = "hmm", exclude: int | None = None) -> dict[int, float]:
        """P(entering each detour later), 1 for detours already visited.

        ``"analogs"``: the share of aligned analogs (as in :meth:`forecast`) that had not visited
        the detour by the aligned step and entered it afterwards, weighted by the posterior, with
        half a run of each outcome added (so a handful of analogs never gives 0 or 1).
        ``"hmm"``: the posterior pushed through the transition matrix ``remaining`` times with
        the detour made absorbing.
        """
        visited = set(int(v) for v in path)
        out = {}
        pending = [d for d in self.detours if d not in visited]
        out.update({d: 1.0 for d in self.detours if d in visited})
        if not pending:
            return out
        if method == "hmm":
            for d in pending:
                T = self.transmat.copy()
                T[d] = 0.0
                T[d, d] = 1.0  # absorbing: mass that reaches d stays there
                # T^remaining by repeated squaring: log2(remaining) products, not `remaining`
                p = posterior @ np.linalg.matrix_power(T, max(int(remaining), 0))
                out[d] = float(min(max(p[d], 0.0), 1.0))
            return out
        dwell, cur = _dwell(path, steps)
        num = {d: 0.0 for d in pending}
        den = {d: 0.0 for d in pending}
        for s in np.flatnonzero(posterior > 1e-3):
            for seed, a in self.analogs.items():
                if seed == exclude:
                    continue
                at = _aligned_step(a, int(s), dwell if s == cur else 0.0)
                if at is None:
                    continue
                before = a.steps <= at
                for d in pending:
                    if np.any(a.states[before] == d):
                        continue  # it had taken the detour already: not an analog for this question
                    den[d] += posterior[s]
                    num[d] += posterior[s] * bool(np.any(a.states[~before] == d))
        for d in pending:
            out[d] = float((num[d] + 0.5) / (den[d] + 1.0))
        return out

    def forecast(self, posterior: np.ndarray, path: np.ndarray, steps: np.ndarray, level: float,
                 min_analogs: float, exclude: int | None = None) -> dict:
        """Convergence-step forecast of a run not converged by its last step; see the module docstring.

        Each fitted run is aligned with the new run at the state the new run may be in: for a
        state ``s`` with posterior weight, the analog is the fitted run's first stay in ``s``
        that lasted at least as long as the new run has been in ``s`` so far, and was not yet
        converged at that point; its remaining time to convergence from there, added to the
        current step, is one draw of the forecast, weighted by ``posterior[s]``.
        """
        step = float(steps[-1])
        dwell, cur = _dwell(path, steps)
        values, weights = [], []
        for s in np.flatnonzero(posterior > 1e-3):
            d = dwell if s == cur else 0.0
            for seed, a in self.analogs.items():
                if seed == exclude:
                    continue
                at = _aligned_step(a, int(s), d)
                if at is None or a.conv <= at:
                    continue
                values.append(step + (a.conv - at))
                weights.append(float(posterior[s]))
        if not values:
            return {"method": "none", "median": None, "low": None, "high": None, "p_never": None,
                    "level": level, "analogs": 0.0}
        v, w = np.asarray(values, dtype=float), np.asarray(weights)
        n_eff = float(w.sum() ** 2 / (w ** 2).sum())
        # order statistics of n exchangeable draws cover a new one with (j - i) / (n + 1):
        # widen the quantile levels so that an interval from few analogs keeps its nominal rate
        lo, med, hi = order_interval(v, w, level, max(int(math.floor(n_eff + 1e-9)), 1))
        return {"method": "analogs" if n_eff >= min_analogs else "few analogs", "median": _open(med),
                "low": step if lo == -math.inf else _open(lo), "high": _open(hi),
                "p_never": float(w[np.isinf(v)].sum() / w.sum()), "level": level, "analogs": round(n_eff, 2)}

    def baseline(self, step: float, level: float, exclude: int | None = None) -> dict:
        """The forecast a run's state does not inform: the fitted runs' convergence steps, over the
        runs not converged by ``step`` (``low``, ``median``, ``high``, ``runs``), with the same
        order-statistic levels as :meth:`forecast`; and over every fitted run (``study_low``,
        ``study_median``, ``study_high``). A forecast is worth its state only when it is sharper
        than this (narrower, at the same coverage)."""
        conv = np.array([a.conv for seed, a in self.analogs.items() if seed != exclude], dtype=float)
        out: dict = {"low": None, "median": None, "high": None, "runs": int((conv > step).sum()),
                     "study_low": None, "study_median": None, "study_high": None}
        left = conv[conv > step]
        if len(left):
            lo, med, hi = order_interval(left, np.ones(len(left)), level, len(left))
            out.update(low=float(step) if math.isinf(lo) else float(lo), median=_open(med), high=_open(hi))
        if len(conv):
            lo, med, hi = order_interval(conv, np.ones(len(conv)), level, len(conv))
            out.update(study_low=None if math.isinf(lo) else float(lo), study_median=_open(med), study_high=_open(hi))
        return out


def _open(x: float) -> float | None:
    """None for an infinite step (beyond the horizon: a run that never converges), else the float."""
    return None if math.isinf(x) else float(x)


def order_interval(values: np.ndarray, weights: np.ndarray, level: float, n: int) -> tuple[float, float, float]:
    """``(low, median, high)`` of a ``level`` interval from ``n`` exchangeable draws: order statistics
    cover a new draw with (j − i) / (n + 1), so the quantile levels are widened to keep the nominal
    rate with few draws; ``low`` is −inf and ``high`` +inf where the widened level leaves the sample."""
    q_lo = math.floor((n + 1) * (1 - level) / 2) / n
    q_hi = math.ceil((n + 1) * (1 + level) / 2) / n
    med = weighted_quantiles(values, weights, [0.5])[0]
    lo = -math.inf if q_lo <= 0 else weighted_quantiles(values, weights, [q_lo])[0]
    hi = math.inf if q_hi > 1 else weighted_quantiles(values, weights, [q_hi])[0]
    return lo, med, hi


def sharper(forecast: dict, baseline: dict) -> bool | None:
    """Whether a forecast's interval is narrower than its baseline's (None when either has no
    finite interval to compare; an open upper end is infinitely wide)."""
    if forecast.get("low") is None or baseline.get("low") is None:
        return None
    width = math.inf if forecast.get("high") is None else forecast["high"] - forecast["low"]
    base = math.inf if baseline.get("high") is None else baseline["high"] - baseline["low"]
    if math.isinf(width) and math.isinf(base):
        return None
    return bool(width < base)


def _dwell(path: np.ndarray, steps: np.ndarray) -> tuple[float, int]:
    """How long (in steps) the run has been in its last decoded state, and that state."""
    cur = int(path[-1])
    start = len(path) - 1
    while start > 0 and path[start - 1] == cur:
        start -= 1
    return float(steps[-1] - steps[start]), cur


def _aligned_step(a: _Analog, state: int, dwell: float) -> float | None:
    """The step ``dwell`` into the analog's first stay in ``state`` that lasted that long, or None."""
    for start, end, last in a.stays.get(state, ()):
        at = start + dwell
        if end >= at or last:  # a stay cut off by the run's end still counts
            return float(at)
    return None


def _stays(steps: np.ndarray, states: np.ndarray) -> dict[int, list[tuple[float, float, bool]]]:
    """Each state's stays in one decoded run: (first step, last step, runs to the end), in order."""
    out: dict[int, list] = {}
    cut = np.flatnonzero(np.diff(states) != 0) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut - 1, [len(states) - 1]])
    for i, j in zip(starts, ends):
        out.setdefault(int(states[i]), []).append((float(steps[i]), float(steps[j]), bool(j == len(states) - 1)))
    return out


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: Iterable[float]) -> list[float]:
    """Lower weighted quantiles: for each q the smallest value whose cumulative weight share reaches q."""
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w) / w.sum()
    out = []
    for q in qs:
        i = int(np.searchsorted(cum, q - 1e-12, side="left"))
        out.append(float(v[min(i, len(v) - 1)]))
    return out


def _converged_at(fmap: FittedMap, run: pd.DataFrame):
    if fmap.metric not in run.columns:
        return None
    c = convergence_step(run["step"].to_numpy(), run[fmap.metric].to_numpy(dtype=float), fmap.threshold,
                         fmap.direction)
    return None if c is None else float(c)


def predict_run(fmap: FittedMap, run: pd.DataFrame, config: PredictConfig | None = None,
                exclude: int | None = None) -> dict:
    """Where one run is on the map, its detour risk and its convergence forecast (plain data).

    Parameters
    ----------
    fmap : FittedMap
    run : DataFrame
        One run's trajectory table (``step`` and the fit's feature columns; the convergence
        metric too if it is to be recognised as converged), any number of checkpoints.
    config : PredictConfig, optional
    exclude : int, optional
        A fitted run not to use as an analog (leave-one-out checks).

    Returns
    -------
    dict
        ``seed, step, checkpoints, fraction, state, p_state, posterior, visited, in_detour,
        entered_detour_at, detour_risk, converged_at, forecast, warnings`` (docs/predict.md).
    """
    cfg = config or PredictConfig()
    missing = [f for f in fmap.features if f not in run.columns]
    if missing:
        raise UserError(f"run has no column(s) {', '.join(missing)} that fit {fmap.fit_id} uses as features")
    run = measured_rows(run.sort_values("step", kind="stable"), fmap.features).reset_index(drop=True)
    warnings = []
    if len(run) > fmap.first_n:
        warnings.append(f"only the first {fmap.first_n} checkpoints are decoded, as in the fit")
        run = run.head(fmap.first_n)
    values = run[fmap.features].to_numpy(dtype=float)
    good = np.isfinite(values).all(axis=1)
    if not good.all():
        bad = int(np.flatnonzero(~good)[0])
        warnings.append(f"non-finite features from step {int(run['step'].iloc[bad])} on: decoded up to the step before")
        run, values = run.iloc[:bad], values[:bad]
    seed = int(run["seed"].iloc[0]) if "seed" in run.columns and len(run) else None
    if not len(run):
        raise UserError(f"run {seed if seed is not None else ''} has no checkpoint with finite features to decode")
    if fmap.scaling.get("kind") != "global" and len(run) < 5:
        warnings.append("per-run scaling on fewer than 5 checkpoints: the state is a guess")
    path, post = fmap.decode(values)
    steps = run["step"].to_numpy(dtype=float)
    step = float(steps[-1])
    state = int(np.argmax(post))
    visited = list(dict.fromkeys(int(s) for s in path))
    entered = {}
    for d in fmap.detours:
        hit = np.flatnonzero(path == d)
        if len(hit):
            entered[d] = float(steps[hit[0]])
    risk = fmap.detour_risk(post, path, steps, fmap.horizon - len(run), cfg.risk, exclude=exclude)
    conv = _converged_at(fmap, run)
    if conv is not None:
        forecast = {"method": "observed", "median": conv, "low": conv, "high": conv, "p_never": 0.0,
                    "level": cfg.level, "analogs": None}
    else:
        forecast = fmap.forecast(post, path, steps, cfg.level, cfg.min_analogs, exclude=exclude)
        forecast["baseline"] = fmap.baseline(step, cfg.level, exclude=exclude)
        forecast["sharper"] = sharper(forecast, forecast["baseline"])
    if step > fmap.last_step:
        warnings.append(f"step {step:g} is past the fitted runs' last step {fmap.last_step:g}")
    return {
        "seed": seed,
        "step": step,
        "checkpoints": int(len(run)),
        "fraction": round(min(len(run) / fmap.horizon, 1.0), 4),
        "state": state,
        "p_state": float(post[state]),
        "posterior": [float(p) for p in post],
        "visited": visited,
        "in_detour": state in fmap.detours,
        "entered_detour_at": {str(d): s for d, s in entered.items()},
        "detour_risk": {str(d): p for d, p in risk.items()},
        "converged_at": conv,
        "forecast": forecast,
        "warnings": warnings,
    }


def predict(fit: str | os.PathLike | FittedMap, runs: pd.DataFrame | Mapping[int, pd.DataFrame],
            config: PredictConfig | None = None) -> list[dict]:
    """Predict every run of ``runs`` with a fit (the Python API of ``latent predict``).

    Parameters
    ----------
    fit : path or FittedMap
        A fit directory (``<store>/<study>/fits/<fit-id>``) or a loaded map.
    runs : DataFrame or mapping of seed to DataFrame
        Trajectory tables: one long table with a ``seed`` column, or one table per run.
    config : PredictConfig, optional

    Returns
    -------
    list of dict
        One :func:`predict_run` result per run, in seed order.
    """
    cfg = config or PredictConfig()
    cfg.validate()
    fmap = fit if isinstance(fit, FittedMap) else FittedMap(fit)
    if isinstance(runs, pd.DataFrame):
        if "seed" not in runs.columns:
            runs = {0: runs.assign(seed=0)}
        else:
            runs = {int(s): r for s, r in runs.groupby("seed", sort=True)}
    if not runs:
        raise UserError("no runs to predict")
    return [predict_run(fmap, r.assign(seed=s) if "seed" not in r.columns else r, cfg) for s, r in sorted(runs.items())]


# --------------------------------------------------------------------------- validation


def backtest(fit: str | os.PathLike | FittedMap, table: pd.DataFrame, fractions: Iterable[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
             config: PredictConfig | None = None, leave_one_out: bool = True, law: bool = True) -> dict:
    """How well forecasts made part-way through runs come true, on runs whose end is known.

    Each run of ``table`` is cut after ``fraction`` of its checkpoints and predicted; the
    prediction is scored against the run's whole table: does the interval cover the true
    convergence step (runs not converged at the cut; a run that never converges is covered when
    the interval's upper end is open), and for each detour, is the run's later entry (judged on
    the decoding of the whole run) foretold by a risk above 0.5.

    Parameters
    ----------
    fit : path or FittedMap
    table : DataFrame
        Long trajectory table (``seed``, ``step``, features, convergence metric) of finished runs.
        With ``leave_one_out`` (for the fit's own runs), each run is left out of its own analogs.
    fractions : iterable of float
    config : PredictConfig, optional
    leave_one_out : bool
    law : bool
        Also score the published laws of :mod:`latent.delay_law` on the same cuts (the norm law's
        levels come from ``table``'s runs, each run left out of its own with ``leave_one_out``).

    Returns
    -------
    dict
        ``level``, ``rows`` (one per run and fraction: ``seed, fraction, step, converged_at,
        true, low, high, median, covered, method, risk, enters``, the baseline's and the law's
        ``baseline_*``, ``law_*``) and ``summary`` (one per fraction: ``n, coverage,
        median_width, median_error``, the same for ``baseline_`` and ``law_``, ``sharpness_gain``,
        ``detour_*``).
    """
    from .delay_law import LogitLaw, NormLaw

    cfg = config or PredictConfig()
    cfg.validate()
    fmap = fit if isinstance(fit, FittedMap) else FittedMap(fit)
    norm_law, logit_law = NormLaw(), LogitLaw()
    levels = norm_law.levels(table, {s: a.conv for s, a in fmap.analogs.items()}) if law else {}
    rows = []
    for seed, run in table.groupby("seed", sort=True):
        run = run.sort_values("step", kind="stable")
        true = _converged_at(fmap, run.head(fmap.first_n))
        run = measured_rows(run, fmap.features).head(fmap.first_n).reset_index(drop=True)
        full_path, _ = fmap.decode(run[fmap.features].to_numpy(dtype=float))
        steps = run["step"].to_numpy(dtype=float)
        for f in fractions:
            n = max(1, int(round(f * len(run))))
            res = predict_run(fmap, run.iloc[:n], cfg, exclude=int(seed) if leave_one_out else None)
            fc = res["forecast"]
            base = fc.get("baseline") or {}
            row = {"seed": int(seed), "fraction": float(f), "step": res["step"], "converged_at": res["converged_at"],
                   "true": true, "low": fc["low"], "high": fc["high"], "median": fc["median"], "method": fc["method"],
                   "baseline_low": base.get("low"), "baseline_high": base.get("high")}
            t = math.inf if true is None else true
            if res["converged_at"] is None and fc["method"] != "none":
                lo = -math.inf if fc["low"] is None else fc["low"]
                hi = math.inf if fc["high"] is None else fc["high"]
                row["covered"] = bool(lo <= t <= hi)
            else:
                row["covered"] = None
            if res["converged_at"] is None and base.get("low") is not None:
                hi = math.inf if base.get("high") is None else base["high"]
                row["baseline_covered"] = bool(base["low"] <= t <= hi)
            else:
                row["baseline_covered"] = None
            row["baseline_median"] = base.get("median")
            for name in LAWS if law else ():
                lf = {"method": "none"}
                if res["converged_at"] is None:
                    part = run.iloc[:n]
                    lf = (norm_law.forecast(part, levels, cfg.level, exclude=int(seed) if leave_one_out else None)
                          if name == "norm" else logit_law.forecast(part, fmap.metric, fmap.threshold, cfg.level))
                row.update({f"{name}_low": lf.get("low"), f"{name}_high": lf.get("high"),
                            f"{name}_median": lf.get("median"), f"{name}_method": lf["method"],
                            f"{name}_covered": _law_covered(lf, t)})
            for d in fmap.detours:
                later = np.flatnonzero(full_path[n:] == d)
                before = bool(np.any(full_path[:n] == d))
                row[f"risk_{d}"] = res["detour_risk"][str(d)]
                row[f"enters_{d}"] = None if before else bool(len(later))
                row[f"entry_step_{d}"] = float(steps[n + later[0]]) if len(later) and not before else None
            rows.append(row)
    frame = pd.DataFrame(rows)
    summary = []
    for f, grp in frame.groupby("fraction", sort=True):
        scored = grp[grp["covered"].notna()]
        width = _median_width(scored["low"], scored["high"])
        base_width = _median_width(scored["baseline_low"], scored["baseline_high"])
        base_scored = scored[scored["baseline_covered"].notna()]
        item = {"fraction": float(f), "n": int(len(scored)),
                "coverage": float(scored["covered"].astype(bool).mean()) if len(scored) else None,
                "median_width": width,
                "median_error": _median_error(scored["median"], scored["true"]),
                # the same runs, forecast without their state (the fitted runs still unconverged then)
                "baseline_coverage": (float(base_scored["baseline_covered"].astype(bool).mean())
                                      if len(base_scored) else None),
                "baseline_median_width": base_width,
                "baseline_median_error": _median_error(scored["baseline_median"], scored["true"]),
                "sharpness_gain": (1 - width / base_width) if width is not None and base_width else None}
        for name in LAWS if law else ():
            # a published law on the same runs (``<law>_n``: the runs it could forecast)
            got = scored[scored[f"{name}_covered"].notna()]
            item.update({f"{name}_n": int(len(got)),
                         f"{name}_coverage": float(got[f"{name}_covered"].astype(bool).mean()) if len(got) else None,
                         f"{name}_median_width": _median_width(got[f"{name}_low"], got[f"{name}_high"]),
                         f"{name}_median_error": _median_error(got[f"{name}_median"], got["true"])})
        for d in fmap.detours:
            pending = grp[grp[f"enters_{d}"].notna()]
            enters = pending[f"enters_{d}"].astype(bool)
            called = pending[f"risk_{d}"] >= 0.5
            item[f"detour_{d}"] = {"pending": int(len(pending)), "enter": int(enters.sum()),
                                   "called_right": int((called & enters).sum()),
                                   "false_calls": int((called & ~enters).sum())}
        summary.append(item)
    return {"level": cfg.level, "fit": fmap.fit_id, "detours": fmap.detours, "step_unit": fmap.step_unit,
            "config": asdict(cfg), "rows": frame.to_dict(orient="records"), "summary": summary}


#: the published laws a backtest scores beside the forecast (latent.delay_law)
LAWS = ("norm", "logit")


def _law_covered(lf: dict, t: float) -> bool | None:
    """Whether a law's forecast covers the true step ``t`` (inf: never converges); None without one."""
    if lf.get("method", "none") == "none":
        return None
    if lf.get("never"):
        return bool(math.isinf(t))
    lo = -math.inf if lf.get("low") is None else lf["low"]
    return bool(lo <= t <= (math.inf if lf.get("high") is None else lf["high"]))


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and (math.isnan(x)))


def _median_width(lows, highs) -> float | None:
    """Median of ``high − low`` over the rows where both ends are finite."""
    widths = [h - lo for lo, h in zip(lows, highs) if _finite(lo) and _finite(h)]
    return float(np.median(widths)) if widths else None


def _median_error(medians, truths) -> float | None:
    """Median absolute error of the point forecasts against the true convergence step, over the runs
    that converge (a never-converging run or an open median counts as an infinite error)."""
    errs = []
    for m, t in zip(medians, truths):
        if not _finite(t):
            continue
        errs.append(math.inf if not _finite(m) else abs(float(m) - float(t)))
    return float(np.median(errs)) if errs else None


# --------------------------------------------------------------------------- inputs and text


def read_run_sources(sources: Iterable[str], store: str | os.PathLike = "data") -> dict[str, pd.DataFrame]:
    """Trajectory tables named on the command line, keyed by a label (``study/seed`` or file name).

    A source is a study (its runs, finished or not; damaged runs are skipped with a warning), a
    study's run as ``STUDY:SEED``, or a run table file (``.parquet`` or ``.csv`` with ``step``
    and the fit's features; a ``seed`` column splits it into runs).
    """
    from .store import resolve_study

    out: dict[str, pd.DataFrame] = {}
    for src in sources:
        text = str(src)
        path = Path(text)
        if path.suffix in (".parquet", ".csv") and path.is_file():
            frame = read_parquet(path, "run table") if path.suffix == ".parquet" else _read_csv(path)
            if "step" not in frame.columns:
                raise UserError(f"run table {path} has no 'step' column")
            if "seed" in frame.columns:
                for seed, run in frame.groupby("seed", sort=True):
                    out[f"{path.name}:{int(seed)}"] = run
            else:
                out[path.name] = frame.assign(seed=0)
            continue
        name, _, seed = text.partition(":")
        study = resolve_study(store, name)
        if seed:
            try:
                seeds = [int(seed)]
            except ValueError:
                raise UserError(f"bad run {text!r}: write STUDY:SEED with an integer seed") from None
        else:
            seeds = None
        table, statuses = study.read_finished_runs(seeds, allow_partial=True)
        for s, run in table.groupby("seed", sort=True):
            out[f"{study.name}:{int(s)}"] = run
    if not out:
        raise UserError("no runs to predict: name a study, STUDY:SEED, or a run table file")
    return out


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read run table {path}: {str(exc).splitlines()[0]}") from None


def _num(x, unit: str = "") -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def forecast_text(fc: dict) -> str:
    """``"1,850 [1,500, 2,400]"``; an open upper end reads ``"> horizon"``."""
    if fc["method"] == "observed":
        return f"converged at {_num(fc['median'])}"
    if fc["method"] == "none":
        return "no analog"
    hi = "beyond" if fc["high"] is None else _num(fc["high"])
    med = "beyond" if fc["median"] is None else _num(fc["median"])
    return f"{med} [{_num(fc['low'])}, {hi}]"


def baseline_text(fc: dict) -> str:
    """The forecast's baseline interval (``"1,700 [1,200, 2,600]"``), or ``"–"``."""
    base = fc.get("baseline")
    if not base or base.get("low") is None:
        return "–"
    hi = "beyond" if base["high"] is None else _num(base["high"])
    med = "beyond" if base["median"] is None else _num(base["median"])
    return f"{med} [{_num(base['low'])}, {hi}]"


def table_lines(fmap: FittedMap, results: Mapping[str, dict]) -> list[str]:
    """A compact text table of :func:`predict_run` results, one line per run: the forecast, then
    its baseline (the fitted runs still unconverged at that step, state ignored), the forecast
    marked ``(no sharper)`` when it is not narrower than that."""
    risk_cols = [f"risk {d}" for d in fmap.detours]
    level = next(iter(results.values()))["forecast"]["level"] if results else 0.8
    head = (["run", "step", "state (p)", "visited"] + risk_cols
            + [f"convergence ({level:.0%} interval)", "without the state"])
    rows = []
    for label, r in results.items():
        fc = r["forecast"]
        text = forecast_text(fc) + (" (no sharper)" if fc.get("sharper") is False else "")
        rows.append([label, _num(r["step"]), f"{r['state']} ({r['p_state']:.2f})" + (" detour" if r["in_detour"] else ""),
                     "-".join(str(s) for s in r["visited"])]
                    + [f"{r['detour_risk'][str(d)]:.2f}" for d in fmap.detours] + [text, baseline_text(fc)])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(head)] + [fmt(r) for r in rows]


def detour_line(fmap: FittedMap, label: str, result: dict) -> str | None:
    """The warning for a run whose current state is a detour, with the detour's measured delay."""
    if not result["in_detour"]:
        return None
    d = result["state"]
    delay = fmap.delays.get(d)
    extra = f"; runs that visited it converged {delay:+,.0f} {fmap.step_unit}s later on average" if delay else ""
    at = result["entered_detour_at"].get(str(d), result["step"])
    conv = result["converged_at"]
    if conv is not None and conv <= at:
        extra = f" (after it had converged, at {_num(conv)}: a state slow runs end in, not one slowing this run)"
    return f"warning: {label} entered detour state {d} at {fmap.step_unit} {_num(at)}{extra}"


class Watcher:
    """Polls a study and predicts the runs that gained checkpoints since the last look.

    Parameters
    ----------
    fmap : FittedMap
    study : latent.store.Study
    config : PredictConfig, optional
    """

    def __init__(self, fmap: FittedMap, study, config: PredictConfig | None = None):
        self.fmap, self.study, self.config = fmap, study, config or PredictConfig()
        self.seen: dict[int, int] = {}
        self.warned: set[tuple[int, int]] = set()
        self.latest: dict[int, dict] = {}

    def header(self) -> list[str]:
        """Lines saying what is watched, and whether the fit's study matches it."""
        lines = [f"watching {self.study.name} with fit {self.fmap.study}/{self.fmap.fit_id} "
                 f"(K = {self.fmap.k}, detour states: {', '.join(map(str, self.fmap.detours)) or 'none'})"]
        try:
            fit_meta = self.fmap.study_meta()
            meta = self.study.read_meta() if self.study.exists() else None
        except UserError:
            fit_meta, meta = None, None
        if fit_meta and meta:
            for key in ("task", "config"):
                if fit_meta.get(key) != meta.get(key):
                    lines.append(f"note: the fit's study {self.fmap.study} has a different {key} from "
                                 f"{self.study.name}: forecasts assume the same training dynamics")
                    break
        return lines

    def poll(self) -> tuple[list[str], bool]:
        """Predict runs with new checkpoints; return the lines to print and whether every run is done."""
        if not self.study.exists():
            return [f"{time.strftime('%H:%M:%S')} waiting for {self.study.root} to appear"], False
        try:
            table, statuses = self.study.read_finished_runs(allow_partial=True)
        except UserError:
            return [], False  # nothing saved yet
        moved: dict[str, dict] = {}
        lines = []
        for seed, run in table.groupby("seed", sort=True):
            seed = int(seed)
            if self.seen.get(seed) == len(run):
                continue
            self.seen[seed] = len(run)
            res = predict_run(self.fmap, run, self.config)
            self.latest[seed] = res
            moved[f"seed {seed}"] = res
            if res["in_detour"] and (seed, res["state"]) not in self.warned:
                self.warned.add((seed, res["state"]))
                lines.append(detour_line(self.fmap, f"seed {seed}", res))
        if moved:
            lines = [f"{time.strftime('%H:%M:%S')} {len(moved)} run(s) with new checkpoints"] + \
                table_lines(self.fmap, moved) + lines
        meta = self.study.read_meta()
        want = set(int(s) for s in meta.get("seeds", [])) or set(statuses)
        finished = bool(want) and all(statuses.get(s) is not None and statuses[s].status == "done" for s in want)
        return lines, finished
