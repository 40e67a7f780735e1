"""Load one saved fit (``fits/<fit-id>/``) and its study into a small, read-only bundle.

The report redraws from these artifacts only (see ``docs/artifacts.md``); nothing here
refits or retrains. Every missing or malformed file becomes a :class:`latent.errors.UserError`
whose one-line message names the file and what to do about it.

Example
-------
>>> from latent.reports import load_fit
>>> fit = load_fit(store="data")                 # most recent study, most recent fit
>>> fit.n_states, fit.detour_states, fit.convergence_times[0]
>>> fit.state_tests[2]["delay"], fit.selection_label, fit.warnings

Fits written before per-state delay tests (no ``states``, ``selection``, ``stability``,
``warnings`` or ``detour_rule`` in ``analysis.json``; no ``score``/``se`` in the selection
rows) still load: the missing parts read as absent (empty lists, ``None``, NaN).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latent.errors import UserError
from latent.artifacts import choose_fit  # noqa: F401 - the one chooser, re-exported for report users
from latent.artifacts import load_fit as load_fit_files
from latent.schemas import STATE_STATUSES
from latent.store import Study, resolve_study

#: what a state's detour test concluded (one list, in the schema of analysis.json)
STATUSES = STATE_STATUSES
SELECTION_COLUMNS = ("k", "n_params", "loglik", "loglik_mean", "loglik_std", "aic", "bic", "score", "se", "spread",
                     "n_converged", "n_failed", "gap_to_runner_up")
CRITERION_NAMES = {"bic": "BIC", "aic": "AIC", "loglik": "−2 log-likelihood"}


def _num(x: Any) -> float:
    """``x`` as a float, with ``None`` (JSON null) as NaN."""
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


@dataclass(frozen=True, eq=False)
class FitArtifacts:
    """Everything ``latent report`` draws from, loaded from one fit directory.

    Attributes
    ----------
    study : Study
        The study directory.
    meta : dict
        Parsed ``study.json``.
    fit_id : str
        Name of the fit directory.
    model : dict
        Parsed ``fits/<fit-id>/model.json``.
    analysis : dict
        Parsed ``fits/<fit-id>/analysis.json``.
    paths : DataFrame
        ``paths.parquet``: ``seed, step, state, p_state_0..`` (one row per decoded checkpoint).
    runs : DataFrame
        The study's trajectory tables for the seeds in ``paths``, with a ``state`` column
        added (``-1`` where a checkpoint was not decoded, e.g. beyond ``first_n``).
    """

    study: Study
    meta: dict
    fit_id: str
    model: dict
    analysis: dict
    paths: pd.DataFrame
    runs: pd.DataFrame = field(repr=False)

    # -- locations ----------------------------------------------------------------------------

    @property
    def fit_dir(self) -> Path:
        return self.study.fits_dir / self.fit_id

    @property
    def report_dir(self) -> Path:
        return self.study.reports_dir / self.fit_id

    # -- model --------------------------------------------------------------------------------

    @property
    def n_states(self) -> int:
        return int(self.model["n_states"])

    @property
    def features(self) -> list[str]:
        return list(self.model["features"])

    @cached_property
    def means_z(self) -> np.ndarray:
        """``(K, d)`` state means in z units, canonical order."""
        return np.asarray(self.model["means"], dtype=float)

    @property
    def criterion(self) -> str:
        return str(self.model.get("criterion", "?"))

    @cached_property
    def selection(self) -> pd.DataFrame:
        """The model-selection table, one row per K, nulls as NaN, sorted by K.

        Columns: ``k, n_params, loglik, loglik_mean, loglik_std, aic, bic, score, se, spread,
        n_converged, n_failed, gap_to_runner_up``. ``score`` is the criterion K was chosen by
        (lower is better); fits that predate it get it from their ``aic``/``bic`` column (or
        ``-2 loglik_mean`` for the log-likelihood criterion).
        """
        rows = []
        crit = self.criterion
        for row in self.model["selection"]:
            out = {"k": int(row["k"])}
            for key in SELECTION_COLUMNS[1:]:
                out[key] = _num(row.get(key))
            if "score" not in row:  # an older fit: the criterion column is the score
                if crit in ("aic", "bic"):
                    out["score"] = out[crit]
                elif crit == "loglik":
                    out["score"] = -2.0 * out["loglik_mean"]
            rows.append(out)
        return pd.DataFrame(rows, columns=list(SELECTION_COLUMNS)).sort_values("k").reset_index(drop=True)

    @cached_property
    def selection_info(self) -> dict:
        """``analysis.selection``: how K was chosen (``{}`` for older fits)."""
        info = self.analysis.get("selection")
        return dict(info) if isinstance(info, dict) else {}

    @property
    def procedure(self) -> str | None:
        """``"cv"``, ``"split"`` or ``"reference"``; None when the fit does not say."""
        proc = self.selection_info.get("procedure")
        return None if proc is None else str(proc)

    @cached_property
    def fold_choice(self) -> dict[int, int]:
        """``{K: number of folds whose own held-out runs choose K}`` (empty outside cv / older fits)."""
        raw = self.selection_info.get("fold_choice") or {}
        out = {}
        for k, v in raw.items():
            try:
                out[int(k)] = int(v)
            except (TypeError, ValueError):
                continue
        return dict(sorted(out.items()))

    @property
    def n_folds(self) -> int | None:
        """Number of cross-validation folds, or None outside cv."""
        if self.procedure != "cv":
            return None
        folds = self.selection_info.get("folds") or (self.model.get("seeds") or {}).get("folds")
        if folds:
            return len(folds)
        if self.fold_choice:
            return sum(self.fold_choice.values())
        n = (self.model.get("config") or {}).get("folds")
        return int(n) if isinstance(n, (int, float)) else None

    @property
    def fragile(self) -> bool:
        return bool(self.selection_info.get("fragile"))

    @property
    def runner_up(self) -> int | None:
        r = self.selection_info.get("runner_up")
        return None if r is None else int(r)

    @property
    def selection_label(self) -> str:
        """The criterion and procedure K was chosen by, e.g. ``"5-fold CV BIC"``."""
        crit = CRITERION_NAMES.get(self.criterion, self.criterion.upper())
        proc = self.procedure
        if proc == "cv":
            n = self.n_folds
            return f"{n}-fold CV {crit}" if n else f"cross-validated {crit}"
        if proc == "split":
            return f"held-out {crit} (one split, best restart)"
        if proc == "reference":
            return f"held-out {crit} (one split, mean over restarts)"
        return crit

    # -- study --------------------------------------------------------------------------------

    @property
    def step_unit(self) -> str:
        return str(self.analysis["convergence"].get("step_unit") or self.meta.get("step_unit") or "step")

    @cached_property
    def seeds(self) -> list[int]:
        """Seeds with a decoded path, sorted."""
        return sorted(int(s) for s in self.paths["seed"].unique())

    # -- analysis -----------------------------------------------------------------------------

    @cached_property
    def convergence_times(self) -> dict[int, float | None]:
        """``{seed: step of convergence, or None if it never converged}`` for every decoded seed."""
        times = self.analysis["convergence"].get("times") or {}
        out: dict[int, float | None] = {}
        for seed in self.seeds:
            t = times.get(str(seed))
            out[seed] = None if t is None or not math.isfinite(_num(t)) else float(t)
        return out

    @cached_property
    def graph(self):
        """The training map as a ``networkx.DiGraph`` (nodes = states, edges = observed transitions)."""
        import networkx as nx

        data = self.analysis["map"]
        key = "edges" if "edges" in data else "links"
        return nx.node_link_graph(data, edges=key)

    @cached_property
    def state_names(self) -> dict[int, str]:
        """Each state's name (``phases.states[*].name``; empty for fits from before names)."""
        return {int(r["state"]): str(r["name"]) for r in (self.phases.get("states") or []) if r.get("name")}

    @cached_property
    def detour_states(self) -> list[int]:
        """States the analysis marks as detours, sorted."""
        return sorted(int(d["state"]) for d in self.analysis["detours"])

    @property
    def detours(self) -> list[dict]:
        """``analysis.detours`` sorted by state (new fits: ``delay, ci_low, ci_high, p_adjusted, …``;
        older fits: ``coef, ci_low, ci_high`` where the interval is the coefficient's)."""
        return sorted(self.analysis["detours"], key=lambda d: int(d["state"]))

    @property
    def detour_rule(self) -> dict:
        """``{"rule", "min_runs", "alpha"}``; ``{}`` for older fits."""
        rule = self.analysis.get("detour_rule")
        return dict(rule) if isinstance(rule, dict) else {}

    @property
    def min_runs(self) -> int | None:
        """Fewest visiting and skipping runs for a state to be tested (None if the fit does not say)."""
        n = self.detour_rule.get("min_runs", self.regression.get("min_runs"))
        return None if n is None else int(n)

    @cached_property
    def state_tests(self) -> list[dict]:
        """``analysis.states``: one dict per state, in state order (empty for older fits).

        Keys: ``state, status`` (``obligatory``, ``unvisited``, ``not_estimable``, ``tested``),
        ``runs_visiting, runs_skipping, delay, ci_low, ci_high, p_value, p_adjusted, detour,
        paper_rule, coef, coef_ci_low, coef_ci_high, coef_reference, stability``.
        """
        rows = self.analysis.get("states") or []
        return sorted((dict(r) for r in rows), key=lambda r: int(r["state"]))

    @property
    def stability(self) -> dict | None:
        """``analysis.stability`` (bootstrap resamples of the runs), or None."""
        st = self.analysis.get("stability")
        return st if isinstance(st, dict) else None

    @property
    def warnings(self) -> list[str]:
        """Every warning ``latent fit`` logged (empty for older fits)."""
        return [str(w) for w in (self.analysis.get("warnings") or [])]

    @property
    def regression(self) -> dict:
        return self.analysis["regression"]

    @property
    def scaling_kind(self) -> str | None:
        """``"global"`` or ``"per_run"``: how the fit z-scored its features (None if it does not say)."""
        sc = self.model.get("scaling")
        kind = sc.get("kind") if isinstance(sc, dict) else None
        return None if kind is None else str(kind)

    @cached_property
    def phases(self) -> dict:
        """What each state means: ``analysis.phases`` (docs/artifacts.md), one row per state under
        ``states``: ``metrics`` (mean train/val loss and accuracy in it), ``steps`` (min, p10, median,
        p90, max of its checkpoints' steps), ``entries``, ``entered_from`` and ``entry_change``.

        A fit written before the block has it computed here, by the same function
        (:func:`latent.trainmap.state_phases`), from the decoded paths, the run tables and the
        saved scaling (nothing is refitted); ``computed`` is then True.
        """
        saved = self.analysis.get("phases")
        if isinstance(saved, dict) and saved.get("states") is not None:
            return {**saved, "computed": False}
        return {**_compute_phases(self), "computed": True}

    @cached_property
    def feature_ranking(self) -> list[tuple[str, float]]:
        """Features ranked by importance summed over observed edges, weighted by occurrences."""
        totals: dict[str, float] = {}
        for edge in self.analysis["importance"]:
            weight = _num(edge.get("occurrences"))
            weight = 1.0 if not math.isfinite(weight) else weight
            for f in edge.get("features", []):
                imp = _num(f.get("importance"))
                if math.isfinite(imp):
                    totals[f["feature"]] = totals.get(f["feature"], 0.0) + weight * abs(imp)
        return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))


def _compute_phases(fit: FitArtifacts) -> dict:
    """``analysis.phases`` for a fit that predates it, from the saved paths, runs and scaling."""
    from latent.trainmap import ENTRY_WINDOW, PHASE_DEFINITION, STEP_PERCENTILES, performance_columns, state_phases

    decoded = fit.runs[fit.runs["state"] >= 0].sort_values(["seed", "step"], kind="stable")
    features = fit.features
    conv_metric = fit.analysis["convergence"].get("metric")
    numeric = [c for c in decoded.columns if c not in ("seed", "step", "epoch", "state")
               and pd.api.types.is_numeric_dtype(decoded[c]) and not pd.api.types.is_bool_dtype(decoded[c])]
    columns = performance_columns(numeric, conv_metric)
    scaling = fit.model.get("scaling") if isinstance(fit.model.get("scaling"), dict) else {}
    paths, steps, z_runs = [], [], []
    metrics: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for seed, run in decoded.groupby("seed", sort=True):
        raw = run[features].to_numpy(dtype=float) if all(f in run for f in features) else \
            np.full((len(run), len(features)), np.nan)
        if scaling.get("kind") == "per_run":
            sc = (scaling.get("per_run") or {}).get(str(int(seed))) or {}
        else:
            sc = scaling
        mean = np.asarray(sc.get("mean", np.zeros(len(features))), dtype=float)
        std = np.asarray(sc.get("std", np.ones(len(features))), dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (raw - mean) / np.where(std > 0, std, 1.0)
        paths.append(run["state"].to_numpy())
        steps.append(run["step"].to_numpy())
        z_runs.append(z)
        for c in columns:
            metrics[c].append(run[c].to_numpy(dtype=float))
    states = state_phases(paths, steps, metrics, z_runs, features, fit.n_states, window=ENTRY_WINDOW)
    return {"metrics": columns, "step_unit": fit.step_unit, "window": ENTRY_WINDOW,
            "percentiles": list(STEP_PERCENTILES), "scaling": scaling.get("kind"),
            "definition": dict(PHASE_DEFINITION), "states": states}


# --------------------------------------------------------------------------- loading


def load_fit(store: str | os.PathLike = "data", study: str | os.PathLike | None = None,
             fit: str | None = None) -> FitArtifacts:
    """Load a fit and the runs it decoded.

    Parameters
    ----------
    store : path
        The store directory (default ``./data``).
    study : str or path, optional
        Study name in ``store`` or path to a study directory; default: most recent study.
    fit : str, optional
        Fit id (a directory under ``fits/``); default: the most recent fit of the study.

    Raises
    ------
    UserError
        No such study or fit, or a fit file that is missing or corrupt.
    """
    st = resolve_study(store, study)
    meta = st.read_meta()
    fit_id = choose_fit(st, fit)
    fit_dir = st.fits_dir / fit_id

    model, paths, analysis = load_fit_files(fit_dir)  # each file checked against its schema (latent.schemas)
    analysis_path = fit_dir / "analysis.json"
    paths = paths.sort_values(["seed", "step"], kind="stable").reset_index(drop=True)

    seeds = sorted(int(s) for s in paths["seed"].unique())
    runs = st.read_runs(seeds)
    runs = runs.merge(paths[["seed", "step", "state"]], on=["seed", "step"], how="left")
    runs["state"] = runs["state"].fillna(-1).astype(int)

    art = FitArtifacts(study=st, meta=meta, fit_id=fit_id, model=model, analysis=analysis,
                       paths=paths, runs=runs)
    try:
        art.graph  # noqa: B018 - parse once now so a bad map fails here, with the file named
    except Exception as exc:  # networkx raises KeyError/TypeError/NetworkXError on bad data
        raise UserError(f"fit analysis {analysis_path} has a corrupt map ({type(exc).__name__}: {exc}); "
                        "rerun `latent fit`") from None
    return art
