"""``latent fit`` as a library call: config, orchestration, and the atomic write of a fit directory.

>>> from latent.store import resolve_study
>>> from latent.fit import FitConfig, fit_study, write_fit
>>> study = resolve_study("data")                       # doctest: +SKIP
>>> result = fit_study(study, FitConfig(max_states=6))  # computes everything, writes nothing
>>> write_fit(study, result)                            # data/<study>/fits/<fit-id>/

Steps: read ``study.json`` and the run tables; build scaled features (:mod:`latent.features`);
select K (:class:`latent.hmm.HMMSelector`); decode every run (Viterbi and smoothed posteriors);
compute convergence times, the occupancy regression and detours (:mod:`latent.detours`),
transition feature importance (:mod:`latent.importance`) and the training map
(:mod:`latent.trainmap`). Every user mistake raises :class:`UserError` before anything is
written.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .detours import (
    NONCONVERGED_RULES,
    OccupancyRegression,
    convergence_step,
    find_detours,
    ground_metric,
    occupancy_fractions,
    trajectory_dissimilarity,
)
from .errors import UserError
from .features import REFERENCE_FEATURES, SCALINGS, FeatureMatrix, build_features
from .hmm import COVARIANCES, CRITERIA, HMMSelector
from .importance import transition_importance
from .store import Study, atomic_write_json, atomic_write_parquet, dumps_json
from .trainmap import build_map, map_to_data

log = logging.getLogger("latent")

MODEL_FORMAT = "latent.fit/1"
ANALYSIS_FORMAT = "latent.analysis/1"
GROUND_METRIC = (
    "Euclidean distance between the HMM state means in z units (exact earth mover's distance "
    "by linear programming); invariant to state relabelling"
)


@dataclass(frozen=True)
class FitConfig:
    """Settings of one fit. ``None`` fields take the study's defaults (``study.json``).

    Parameters
    ----------
    features : tuple of str, optional
        Feature columns (default: the study's ``features``, else the 14 reference columns).
    first_n : int
        Checkpoints per run used (the first ones by step).
    scaling : {"per_run", "global"}
    max_states, restarts, n_iter : int
    covariance : {"full", "diag", "spherical", "tied"}
    criterion : {"bic", "aic", "loglik"}
    random_state : int
    test_fraction : float
        Fraction of runs held out for model selection.
    metric, threshold, direction : optional
        Convergence rule (default: the study's ``convergence``).
    nonconverged : {"exclude", "censor"}
        Runs that never converge are left out of the regression, or given the last step of
        their run as a (censored) convergence time.
    n_boot : int
        Bootstrap resamples for the coefficient intervals.
    """

    features: tuple[str, ...] | None = None
    first_n: int = 1000
    scaling: str = "per_run"
    max_states: int = 8
    restarts: int = 5
    n_iter: int = 32
    covariance: str = "full"
    criterion: str = "bic"
    random_state: int = 0
    test_fraction: float = 0.2
    metric: str | None = None
    threshold: float | None = None
    direction: str | None = None
    nonconverged: str = "exclude"
    n_boot: int = 1000

    def resolve(self, meta: dict) -> "FitConfig":
        """Fill ``None`` fields from ``study.json`` and validate every field."""
        conv = meta.get("convergence") or {}
        features = self.features
        if features is None:
            features = tuple(meta.get("features") or REFERENCE_FEATURES)
        cfg = replace(
            self,
            features=tuple(features),
            metric=self.metric if self.metric is not None else conv.get("metric"),
            threshold=self.threshold if self.threshold is not None else conv.get("threshold"),
            direction=self.direction if self.direction is not None else conv.get("direction", "above"),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def positive(name, value, flag):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise UserError(f"{flag} must be an integer of at least 1, got {value!r}")

        positive("max_states", self.max_states, "--max-states")
        positive("restarts", self.restarts, "--restarts")
        positive("n_iter", self.n_iter, "--n-iter")
        positive("first_n", self.first_n, "--first-n")
        if not isinstance(self.n_boot, (int, np.integer)) or self.n_boot < 0:
            raise UserError(f"--n-boot must be a non-negative integer, got {self.n_boot!r}")
        if not isinstance(self.random_state, (int, np.integer)) or self.random_state < 0:
            raise UserError(f"--random-state must be a non-negative integer, got {self.random_state!r}")
        if self.scaling not in SCALINGS:
            raise UserError(f"unknown scaling {self.scaling!r}; choose one of {', '.join(SCALINGS)}")
        if self.covariance not in COVARIANCES:
            raise UserError(f"unknown covariance {self.covariance!r}; choose one of {', '.join(COVARIANCES)}")
        if self.criterion not in CRITERIA:
            raise UserError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}")
        if self.nonconverged not in NONCONVERGED_RULES:
            raise UserError(
                f"unknown --nonconverged rule {self.nonconverged!r}; choose one of {', '.join(NONCONVERGED_RULES)}"
            )
        if not (0 < float(self.test_fraction) < 1):
            raise UserError(f"--test-fraction must be between 0 and 1, got {self.test_fraction}")
        if not self.metric:
            raise UserError("no convergence metric: the study.json has no 'convergence'; pass --metric and --threshold")
        if self.threshold is None or not math.isfinite(float(self.threshold)):
            raise UserError("no convergence threshold: the study.json has none; pass --threshold")
        if self.direction not in ("above", "below"):
            raise UserError(f"unknown convergence direction {self.direction!r}; use 'above' or 'below'")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features) if self.features is not None else None
        d["threshold"] = float(self.threshold) if self.threshold is not None else None
        d["test_fraction"] = float(self.test_fraction)
        return d


def fit_id(config: FitConfig) -> str:
    """A short id derived from the resolved settings: ``<covariance>-<criterion>-<hash8>``."""
    digest = hashlib.sha256(dumps_json(config.to_dict()).encode()).hexdigest()[:8]
    return f"{config.covariance}-{config.criterion}-{digest}"


def package_versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("latent", "numpy", "scipy", "scikit-learn", "hmmlearn", "pandas", "pyarrow", "networkx"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class FitResult:
    """Everything ``latent fit`` writes, computed but not yet written.

    Attributes
    ----------
    fit_id : str
    config : FitConfig
    model : dict
        ``model.json`` content.
    paths : DataFrame
        ``paths.parquet`` content.
    analysis : dict
        ``analysis.json`` content.
    selector : HMMSelector
        The fitted selector (``model_`` is the chosen HMM in canonical order).
    features : FeatureMatrix
    summary : list of str
        Lines for the command's summary.
    """

    fit_id: str
    config: FitConfig
    model: dict
    paths: pd.DataFrame
    analysis: dict
    selector: HMMSelector
    features: FeatureMatrix
    summary: list = field(default_factory=list)


def _clean(x):
    """JSON-safe: NaN/inf → None, numpy → python, recursively."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def fit_study(study: Study, config: FitConfig | None = None, n_jobs: int | None = None,
              command: str | None = None, progress: bool = False) -> FitResult:
    """Fit a study; compute every artifact without writing anything.

    Parameters
    ----------
    study : Study
    config : FitConfig, optional
    n_jobs : int, optional
        Worker processes for the restarts (default ``os.cpu_count()``); does not change results.
    command : str, optional
        The command line to record.
    progress : bool
        Show a progress bar of the HMM restarts on stderr.

    Raises
    ------
    UserError
        Missing or empty study, unknown feature, bad setting, a convergence threshold no run
        crosses, too few runs, a corrupt file.
    """
    if not study.exists():
        raise UserError(f"no study at {study.root} (no study.json); `latent ls` lists the studies")
    meta = study.read_meta()
    cfg = (config or FitConfig()).resolve(meta)
    if n_jobs is not None and n_jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {n_jobs}")
    if not study.run_seeds():
        raise UserError(f"study {study.name} has no runs ({study.runs_dir} holds no seed-*.parquet); collect first")
    table = study.read_runs()
    if cfg.metric not in table.columns:
        raise UserError(
            f"convergence metric {cfg.metric!r} is not a column of the run tables; pass --metric "
            f"(columns: {', '.join(c for c in table.columns if c not in ('seed', 'step', 'epoch'))})"
        )
    fm = build_features(table, cfg.features, cfg.first_n, cfg.scaling)

    # convergence over each run's whole table (not only the first_n checkpoints used by the HMM)
    conv: dict[int, int | None] = {}
    last_step: dict[int, int] = {}
    for seed, run in table.groupby("seed", sort=True):
        if int(seed) not in fm.seeds:
            continue
        run = run.sort_values("step", kind="stable")
        conv[int(seed)] = convergence_step(run["step"].to_numpy(), run[cfg.metric].to_numpy(),
                                           float(cfg.threshold), cfg.direction)
        last_step[int(seed)] = int(run["step"].iloc[-1])
    never = [s for s in fm.seeds if conv[s] is None]
    if len(never) == len(fm.seeds):
        rel = ">" if cfg.direction == "above" else "<"
        raise UserError(
            f"no run ever has {cfg.metric} {rel} {cfg.threshold} (best value "
            f"{_extreme(table[cfg.metric], cfg.direction)}); pass a reachable --threshold"
        )
    if never:
        log.warning("%d of %d run(s) never reach %s %s %s: seeds %s (rule: %s)", len(never), len(fm.seeds),
                    cfg.metric, ">" if cfg.direction == "above" else "<", cfg.threshold,
                    ", ".join(map(str, never)), cfg.nonconverged)

    selector = HMMSelector(
        max_states=cfg.max_states, restarts=cfg.restarts, n_iter=cfg.n_iter, covariance_type=cfg.covariance,
        criterion=cfg.criterion, test_fraction=cfg.test_fraction, random_state=cfg.random_state, n_jobs=n_jobs,
        progress=progress,
    ).fit(fm.X, fm.lengths)
    K = selector.n_states_
    params = selector.params_

    # decode every run
    path = selector.predict(fm.X, fm.lengths)
    post = selector.predict_proba(fm.X, fm.lengths)
    cols = {"state": path.astype(np.int64)}
    for k in range(K):
        cols[f"p_state_{k}"] = post[:, k]
    paths_frame = fm.to_frame(cols)
    run_paths = fm.split(path)
    run_z = fm.split(fm.X)
    run_raw = fm.split(fm.raw)

    occupancy = np.array([occupancy_fractions(p, K) for p in run_paths])
    visited = occupancy > 0
    converged = np.array([conv[s] is not None for s in fm.seeds])

    # regression
    if cfg.nonconverged == "exclude":
        use = converged
        y = np.array([conv[s] for s in fm.seeds if conv[s] is not None], dtype=float)
        rule = "runs that never converge are excluded from the regression (reported in never_converged)"
    else:
        use = np.ones(len(fm.seeds), dtype=bool)
        y = np.array([conv[s] if conv[s] is not None else last_step[s] for s in fm.seeds], dtype=float)
        rule = "runs that never converge get the last step of their run as a censored convergence time"
    reg = OccupancyRegression(n_boot=cfg.n_boot, random_state=cfg.random_state).fit(occupancy[use], y)
    regression = {
        "target": f"convergence step ({meta.get('step_unit', 'step')}) of {cfg.metric} "
                  f"{'>' if cfg.direction == 'above' else '<'} {cfg.threshold}",
        "design": "OLS without intercept on the fraction of checkpoints in each visited state; "
                  "coef = beta_k - intercept, intercept = mean-occupancy-weighted beta = mean convergence time",
        "states": list(range(K)),
        "coef": reg.coef_, "beta": reg.beta_, "ci_low": reg.ci_low_, "ci_high": reg.ci_high_,
        "intercept": reg.intercept_, "r2": reg.r2_, "f_stat": reg.f_stat_, "p_value": reg.p_value_,
        "n_runs": reg.n_, "df_model": reg.df_model_, "df_resid": reg.df_resid_,
        "n_boot": cfg.n_boot, "n_boot_used": reg.n_boot_used_, "boot_seed": cfg.random_state,
        "note": rule + ("; states no run visits have null coefficients" if len(reg.states_) < K else ""),
    }
    detours = find_detours(reg.coef_, reg.ci_low_, reg.ci_high_, visited, converged)
    dissim = trajectory_dissimilarity(occupancy, ground_metric(params["means"]))
    importance = transition_importance(run_z, run_paths, params, fm.features)
    conv_list = [conv[s] for s in fm.seeds]
    G = build_map(run_paths, run_raw, params, fm.features, conv_list, importance)

    analysis = _clean({
        "format": ANALYSIS_FORMAT,
        "convergence": {
            "metric": cfg.metric, "threshold": float(cfg.threshold), "direction": cfg.direction,
            "step_unit": meta.get("step_unit", "step"),
            "times": {str(s): conv[s] for s in fm.seeds},
            "never_converged": never, "rule": rule,
        },
        "occupancy": {str(s): occupancy[i] for i, s in enumerate(fm.seeds)},
        "map": map_to_data(G),
        "regression": regression,
        "detours": detours,
        "dissimilarity": {"value": dissim, "ground_metric": GROUND_METRIC},
        "importance": importance,
    })

    fid = fit_id(cfg)
    seeds = fm.seeds
    model = _clean({
        "format": MODEL_FORMAT,
        "fit_id": fid,
        "study": study.name,
        "config": cfg.to_dict(),
        "n_states": K,
        "criterion": cfg.criterion,
        "features": fm.features,
        "covariance_type": cfg.covariance,
        "startprob": params["startprob"],
        "transmat": params["transmat"],
        "means": params["means"],
        "covars": params["covars"],
        "scaling": fm.scaling,
        "selection": selector.selection_,
        "restarts": selector.restarts_,
        "seeds": {
            "train": [seeds[i] for i in selector.train_runs_],
            "test": [seeds[i] for i in selector.test_runs_],
            "used": seeds,
            "excluded": {str(s): r for s, r in sorted(fm.excluded.items())},
        },
        "state_order": selector.state_order_,
        "versions": package_versions(),
        "command": command or _default_command(study, cfg),
    })
    result = FitResult(fid, cfg, model, paths_frame, analysis, selector, fm)
    result.summary = _summary(result, occupancy, visited, reg, detours, never)
    return result


def _extreme(values: pd.Series, direction: str):
    v = pd.to_numeric(values, errors="coerce")
    x = v.max() if direction == "above" else v.min()
    return f"{x:.4g}" if pd.notna(x) else "none"


def _default_command(study: Study, cfg: FitConfig) -> str:
    d = cfg.to_dict()
    parts = [f"latent fit --study {study.root}"]
    parts.append(f"--features {','.join(d['features'])}")
    for key in ("first_n", "scaling", "max_states", "restarts", "n_iter", "covariance", "criterion",
                "random_state", "test_fraction", "metric", "threshold", "direction", "nonconverged", "n_boot"):
        parts.append(f"--{key.replace('_', '-')} {d[key]}")
    return " ".join(parts)


def _summary(result: FitResult, occupancy, visited, reg, detours, never) -> list[str]:
    sel = result.selector
    cfg = result.config
    K = sel.n_states_
    rows = {r["k"]: r for r in sel.selection_}
    key = {"bic": "bic", "aic": "aic", "loglik": "loglik_mean"}[cfg.criterion]
    label = {"bic": "minimum mean held-out BIC", "aic": "minimum mean held-out AIC",
             "loglik": "maximum mean held-out log-likelihood"}[cfg.criterion]
    others = [f"K={k}: {_fmt(r[key])}" for k, r in rows.items() if k != K]
    lines = [f"K = {K}: {label} {_fmt(rows[K][key])} "
             f"({', '.join(others) if others else 'no other K'}); "
             f"{len(sel.train_runs_)} training / {len(sel.test_runs_)} held-out runs"]
    failed = [k for k, r in rows.items() if r["best_random_state"] is None]
    if failed:
        lines.append(f"no restart succeeded for K = {', '.join(map(str, failed))}")
    n_runs = len(occupancy)
    total = result.features.lengths.sum()
    counts = np.bincount(np.concatenate(result.features.split(result.paths['state'].to_numpy())), minlength=K)
    for k in range(K):
        lines.append(f"  state {k}: occupancy {counts[k] / total:6.1%}, visited by {int(visited[:, k].sum())}/{n_runs} runs")
    if detours:
        lines.append("detour states: " + ", ".join(
            f"{d['state']} (coef {d['coef']:+.4g}, 95% CI [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}]"
            f"{', significant' if d['significant'] else ''})" for d in detours))
    else:
        lines.append("detour states: none")
    lines.append(f"convergence regression: R² = {_fmt(reg.r2_)}, p = {_fmt(reg.p_value_)} "
                 f"({reg.n_} runs; {len(never)} never converged, rule: {cfg.nonconverged})")
    return lines


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.4g}"


def write_fit(study: Study, result: FitResult) -> Path:
    """Write ``fits/<fit-id>/`` atomically: build it in a temporary directory, then rename over."""
    fits = study.fits_dir
    fits.mkdir(parents=True, exist_ok=True)
    final = fits / result.fit_id
    tmp = Path(tempfile.mkdtemp(dir=fits, prefix=f".tmp-{result.fit_id}-"))
    old = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a fit directory is not
        atomic_write_parquet(tmp / "paths.parquet", result.paths)
        atomic_write_json(tmp / "analysis.json", result.analysis)
        atomic_write_json(tmp / "model.json", result.model)
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=fits, prefix=f".old-{result.fit_id}-"))
            os.rename(final, old / "fit")
        os.rename(tmp, final)
    except BaseException:
        if old is not None and (old / "fit").exists() and not final.exists():
            os.rename(old / "fit", final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_fit(fit_dir: str | os.PathLike) -> tuple[dict, pd.DataFrame, dict]:
    """Read ``model.json``, ``paths.parquet`` and ``analysis.json`` of a fit (no pickle)."""
    from .store import read_json, read_parquet

    fit_dir = Path(fit_dir)
    return (read_json(fit_dir / "model.json", "fit model"), read_parquet(fit_dir / "paths.parquet", "fit paths"),
            read_json(fit_dir / "analysis.json", "fit analysis"))
