"""Load one saved fit (``fits/<fit-id>/``) and its study into a small, read-only bundle.

The report redraws from these artifacts only (see ``docs/artifacts.md``); nothing here
refits or retrains. Every missing or malformed file becomes a :class:`latent.errors.UserError`
whose one-line message names the file and what to do about it.

Example
-------
>>> from reports import load_fit
>>> fit = load_fit(store="data")                 # most recent study, most recent fit
>>> fit.n_states, fit.detour_states, fit.convergence_times[0]
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
from latent.store import Study, read_json, read_parquet, resolve_study

FIT_FORMAT = "latent.fit/1"
ANALYSIS_FORMAT = "latent.analysis/1"
_MODEL_KEYS = ("n_states", "features", "means", "transmat", "selection", "criterion")
_ANALYSIS_KEYS = ("convergence", "occupancy", "map", "regression", "detours", "importance")


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
        """The model-selection table, one row per K, nulls as NaN, sorted by K."""
        rows = []
        for row in self.model["selection"]:
            rows.append(
                {
                    "k": int(row["k"]),
                    "loglik_mean": _num(row.get("loglik_mean")),
                    "loglik_std": _num(row.get("loglik_std")),
                    "aic": _num(row.get("aic")),
                    "bic": _num(row.get("bic")),
                }
            )
        return pd.DataFrame(rows, columns=["k", "loglik_mean", "loglik_std", "aic", "bic"]).sort_values("k")

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
    def detour_states(self) -> list[int]:
        """States the analysis marks as detours, sorted."""
        return sorted(int(d["state"]) for d in self.analysis["detours"])

    @property
    def regression(self) -> dict:
        return self.analysis["regression"]

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


# --------------------------------------------------------------------------- loading


def choose_fit(study: Study, fit: str | None = None) -> str:
    """The fit id to use: ``fit`` if given (checked), else the most recent fit of ``study``."""
    fits = study.fit_ids()
    if fit is not None:
        if os.sep in fit or "/" in fit or fit in ("", ".", ".."):
            raise UserError(f"invalid fit id {fit!r}: pass the name of a directory under {study.fits_dir}")
        if not (study.fits_dir / fit).is_dir():
            have = ", ".join(fits) if fits else "none"
            raise UserError(f"fit {fit!r} not found in {study.fits_dir} (fits: {have}); `latent ls` lists them")
        return fit
    if not fits:
        raise UserError(
            f"study {study.name!r} has no fit yet; run `latent fit --study {study.name}` first"
        )
    return fits[-1]


def _require(obj: Any, keys: tuple[str, ...], path: Path, what: str) -> None:
    if not isinstance(obj, dict):
        raise UserError(f"{what} {path} is corrupt (not a JSON object); rerun `latent fit`")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise UserError(f"{what} {path} is corrupt (missing {', '.join(missing)}); rerun `latent fit`")


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

    model_path = fit_dir / "model.json"
    model = read_json(model_path, "fit model")
    _require(model, _MODEL_KEYS, model_path, "fit model")
    if model.get("format", FIT_FORMAT) != FIT_FORMAT:
        raise UserError(f"fit model {model_path} has format {model.get('format')!r}, expected {FIT_FORMAT!r}; "
                        "rerun `latent fit` with this version of latent")
    try:
        k = int(model["n_states"])
        means = np.asarray(model["means"], dtype=float)
        transmat = np.asarray(model["transmat"], dtype=float)
    except (TypeError, ValueError) as exc:
        raise UserError(f"fit model {model_path} is corrupt ({exc}); rerun `latent fit`") from None
    d = len(model["features"])
    if k < 1 or means.shape != (k, d) or transmat.shape != (k, k):
        raise UserError(
            f"fit model {model_path} is corrupt (n_states={k}, {d} features, but means {means.shape} "
            f"and transmat {transmat.shape}); rerun `latent fit`"
        )

    analysis_path = fit_dir / "analysis.json"
    analysis = read_json(analysis_path, "fit analysis")
    _require(analysis, _ANALYSIS_KEYS, analysis_path, "fit analysis")
    _require(analysis["convergence"], ("times",), analysis_path, "fit analysis (convergence)")
    _require(analysis["regression"], ("coef", "ci_low", "ci_high"), analysis_path, "fit analysis (regression)")
    _require(analysis["map"], ("nodes",), analysis_path, "fit analysis (map)")

    paths_path = fit_dir / "paths.parquet"
    paths = read_parquet(paths_path, "fit paths")
    missing = [c for c in ("seed", "step", "state") if c not in paths.columns]
    if missing:
        raise UserError(f"fit paths {paths_path} is corrupt (no column {', '.join(missing)}); rerun `latent fit`")
    if paths.empty:
        raise UserError(f"fit paths {paths_path} has no rows; rerun `latent fit`")
    states = paths["state"].to_numpy()
    if np.any(states < 0) or np.any(states >= k):
        raise UserError(f"fit paths {paths_path} is corrupt (states outside 0..{k - 1}); rerun `latent fit`")
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
