"""External studies: runs logged elsewhere, written into the store as a study ``latent fit`` reads.

``latent import`` turns a researcher's existing per-checkpoint logs (CSV or parquet tables,
TensorBoard event files, directories of checkpoints) into one study. Whatever the source, the
result has the layout of a collected study (``docs/artifacts.md``)::

    <store>/<name>/study.json              task "external", the source, seeds, features, metrics, convergence
    <store>/<name>/runs/seed-NNN.parquet   one row per checkpoint: seed, step, metric columns
    <store>/<name>/runs/seed-NNN.json      {"format": "latent.run/1", "seed", "status": "done", "last_step", "rows"}

An external study has no ``schedule``: its runs are checked against their manifests (row
counts), as for hand-made studies (:meth:`latent.store.Study.run_status`).

A study is never half-written. :func:`write_external_study` builds it whole in a staging
directory inside the store (``<store>/.<name>.import-<pid>/<name>``: two levels down, so
:func:`latent.store.list_studies` and ``latent ls`` never see it), then renames it into place
while holding the study lock. ``overwrite`` replaces an existing study by moving it aside into
the staging directory, renaming the new one in and only then deleting the old one. A process
killed between those two renames leaves the old study in the staging directory; the next
import of that name (or :func:`recover_staging`) puts it back.

This module imports neither torch nor any importer's dependencies.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import locks
from .errors import UserError, store_error
from .store import (REFERENCE_COLUMNS, RUN_FORMAT, STUDY_FILE, STUDY_FORMAT, Study, atomic_write_json,
                    atomic_write_parquet, check_study_name, sync_filesystem, _fsync_dir)

#: Columns that say *when* a row was logged; they are kept as metrics but never used as HMM features.
TIME_COLUMNS = ("seed", "step", "epoch", "global_step", "iteration", "iter", "wall_time", "walltime",
                "time", "timestamp", "original_step", "original_seed")

log = logging.getLogger("latent")

_CONVERGENCE_RE = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_.\-/]*)\s*(?P<op>>=|<=|>|<)\s*"
    r"(?P<threshold>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
_CONVERGENCE_FORM = ("use METRIC>THRESHOLD or METRIC<THRESHOLD (also >=, <=), "
                     "e.g. --convergence \"val_acc>0.9\" or --convergence \"val_loss<0.1\"")


def parse_convergence(text: str) -> dict:
    """Parse a convergence rule such as ``"val_acc>0.9"`` or ``"val_loss<0.1"``.

    A run converges at the first checkpoint where the metric passes the threshold.
    ``latent fit`` tests strictly (``>`` or ``<``); ``>=`` and ``<=`` are accepted as the same
    rule (they differ only for a value exactly at the threshold).

    Parameters
    ----------
    text : str
        ``METRIC OP THRESHOLD`` with ``OP`` one of ``>``, ``>=``, ``<``, ``<=``; spaces around
        the parts are allowed.

    Returns
    -------
    dict
        ``{"metric": str, "threshold": float, "direction": "above" | "below"}``, the form of
        ``study.json``'s ``convergence``.

    Raises
    ------
    UserError
        If ``text`` is not of that form or the threshold is not finite.
    """
    match = _CONVERGENCE_RE.match(text or "") if isinstance(text, str) else None
    if match is None:
        raise UserError(f"cannot read the convergence rule {text!r}: {_CONVERGENCE_FORM}")
    threshold = float(match["threshold"])
    if not math.isfinite(threshold):
        raise UserError(f"the convergence threshold in {text!r} is not finite: {_CONVERGENCE_FORM}")
    direction = "above" if match["op"].startswith(">") else "below"
    return {"metric": match["metric"], "threshold": threshold, "direction": direction}


def converged_runs(tables: Mapping[int, pd.DataFrame], convergence: Mapping) -> list[int]:
    """The runs of ``tables`` that meet ``convergence`` (:func:`parse_convergence`) at some checkpoint,
    by the same first-crossing rule as every fit (:func:`latent.detours.convergence_step`)."""
    from .detours import convergence_step

    return [seed for seed, t in sorted(tables.items())
            if convergence_step(t["step"].to_numpy(), t[convergence["metric"]].to_numpy(dtype=float),
                                convergence["threshold"], convergence["direction"]) is not None]


def default_features(columns: Iterable[str], convergence: Mapping | None = None) -> list[str]:
    """The HMM features of an external study with these numeric columns.

    The reference's 14 weight statistics (:data:`latent.store.REFERENCE_COLUMNS`, in that
    order) when every one of them is present; otherwise every numeric column in the given
    order except the time columns (:data:`TIME_COLUMNS`) and the convergence metric (the
    delay test explains when runs pass that metric; a feature made of it would make the
    test circular).
    """
    columns = list(columns)
    if all(c in columns for c in REFERENCE_COLUMNS):
        return list(REFERENCE_COLUMNS)
    metric = (convergence or {}).get("metric")
    return [c for c in columns if c not in TIME_COLUMNS and c != metric]


def external_meta(name: str, seeds: Sequence[int], columns: Iterable[str], *, source: dict,
                  convergence: dict | None, step_unit: str = "step", runs: Mapping | None = None,
                  features: Sequence[str] | None = None, metric_variant: str | None = None) -> dict:
    """The ``study.json`` of an external study.

    Parameters
    ----------
    name : str
        The study name (checked with :func:`latent.store.check_study_name`).
    seeds : sequence of int
        The runs' seeds.
    columns : iterable of str
        The numeric columns of the run tables (``seed`` and ``step`` may be among them; they
        are not metrics).
    source : dict
        Where the runs came from, recorded as is, e.g. ``{"kind": "table", "paths": [...]}``.
    convergence : dict or None
        ``{"metric", "threshold", "direction"}`` (:func:`parse_convergence`), or None when
        the source has no convergence rule (``latent fit`` then needs ``--metric`` and
        ``--threshold``).
    step_unit : str
        What ``step`` counts (``"step"``, ``"epoch"``, ...).
    runs : mapping of int to str, optional
        The original name of each seed's run; recorded as ``"runs"`` when given.
    features : sequence of str, optional
        The HMM features; default :func:`default_features`.
    metric_variant : {"reference", "paper"}, optional
        How latent computed the weight statistics of the runs
        (:func:`latent.collect.metrics.reference_metrics`), recorded as ``"metric_variant"``; give it
        only for a study whose 14 columns latent computed itself (a ``Recorder``, a checkpoint
        import), never for metrics imported as they were logged. The caller checks the value.

    Returns
    -------
    dict
        ``{"format", "name", "task": "external", "preset": "external", "source", "seeds",
        "step_unit", "features", "metrics", "convergence"}`` (+ ``"runs"``, +
        ``"metric_variant"``). No ``schedule``.

    Raises
    ------
    UserError
        If the name is invalid, no feature is left, a feature is not a column, or the
        convergence metric is not a column.
    """
    check_study_name(name)
    metrics = [c for c in dict.fromkeys(columns) if c not in ("seed", "step")]
    if convergence is not None:
        convergence = {"metric": str(convergence["metric"]), "threshold": float(convergence["threshold"]),
                       "direction": str(convergence.get("direction", "above"))}
        if convergence["metric"] not in metrics:
            raise UserError(f"unknown convergence metric {convergence['metric']!r}{_close(convergence['metric'], metrics)}: "
                            f"the runs have the numeric columns {_listed(metrics)}; pass one of them to --convergence")
    chosen = list(features) if features is not None else default_features(metrics, convergence)
    unknown = [f for f in chosen if f not in metrics]
    if unknown:
        raise UserError(f"feature(s) {_listed([repr(u) for u in unknown])}{_close(unknown[0], metrics)} are not "
                        "numeric columns of the runs "
                        f"(they have {_listed(metrics)})")
    if not chosen:
        raise UserError(f"no column is left to use as a feature (the runs have {_listed(metrics)}; "
                        "time columns and the convergence metric are not features): import more metrics")
    meta = {
        "format": STUDY_FORMAT, "name": name, "task": "external", "preset": "external",
        "source": dict(source), "seeds": sorted(int(s) for s in seeds), "step_unit": str(step_unit),
        "features": chosen, "metrics": metrics, "convergence": convergence,
    }
    if runs:
        meta["runs"] = {str(int(s)): str(r) for s, r in sorted(runs.items(), key=lambda kv: int(kv[0]))}
    if metric_variant is not None:
        meta["metric_variant"] = str(metric_variant)
    return meta


def _close(name: str, names: Sequence[str]) -> str:
    """`` (did you mean 'val_acc'?)`` for the nearest of ``names``, or nothing."""
    near = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _listed(names: Sequence[str], most: int = 12) -> str:
    names = list(names)
    text = ", ".join(names[:most])
    return (text + f", … ({len(names)} in all)" if len(names) > most else text) or "(none)"


# --------------------------------------------------------------------------- writing


def staging_prefix(name: str) -> str:
    """Name prefix of the staging directories an import of study ``name`` uses in the store."""
    return f".{name}.import-"


def recover_staging(store: str | os.PathLike, name: str) -> None:
    """Clean up what a killed import of study ``name`` left in the store.

    Call with the study lock held (:func:`write_external_study` does): every staging
    directory of ``name`` then belongs to a process that is gone. A study it had moved aside
    (killed between the two renames of an overwrite) is put back when no study of that name
    is in place; the rest is deleted.
    """
    store = Path(store)
    target = store / name
    for stale in sorted(store.glob(f"{staging_prefix(name)}*")):
        old = stale / "replaced"
        if (old / STUDY_FILE).is_file() and not target.exists():
            try:
                os.replace(old, target)
            except OSError as exc:
                raise store_error(exc, "restore", target) from None
        _remove_tree(stale)


def _remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise store_error(exc, "remove", path) from None


def _check_tables(tables: Mapping[int, pd.DataFrame], meta: dict) -> dict[int, pd.DataFrame]:
    """The run tables as written: ``seed`` first, ``step`` (int64) second, sorted by step; else raise."""
    if not tables:
        raise UserError("no runs to import")
    seeds = sorted(int(s) for s in tables)
    if seeds != sorted(int(s) for s in meta.get("seeds", [])):
        raise UserError(f"the runs' seeds {seeds} differ from the study's seeds {meta.get('seeds')}")
    out = {}
    for seed in seeds:
        frame = tables[seed]
        if "step" not in frame.columns:
            raise UserError(f"run {seed} has no 'step' column")
        if not len(frame):
            raise UserError(f"run {seed} has no rows")
        missing = [m for m in meta.get("metrics", []) if m not in frame.columns]
        if missing:
            raise UserError(f"run {seed} lacks the column(s) {_listed(missing)}")
        steps = frame["step"]
        if steps.hasnans:
            raise UserError(f"run {seed} has steps that are not whole numbers (missing ones)")
        if not pd.api.types.is_integer_dtype(steps.dtype):
            steps = pd.to_numeric(steps, errors="raise")
            if not np.all(np.isfinite(steps.to_numpy(dtype=float))) or not np.all(steps == np.round(steps)):
                raise UserError(f"run {seed} has steps that are not whole numbers")
        values = steps.to_numpy(dtype=np.int64)
        frame = frame.drop(columns=[c for c in ("seed",) if c in frame.columns])
        if len(values) > 1 and not np.all(np.diff(values) > 0):  # already sorted and unique: no copy
            order = np.argsort(values, kind="stable")
            values = values[order]
            frame = frame.iloc[order]
            if np.any(np.diff(values) == 0):
                dup = int(values[np.flatnonzero(np.diff(values) == 0)[0]])
                raise UserError(f"run {seed} has two rows at step {dup}")
        frame = frame.assign(step=values).reset_index(drop=True)
        frame.insert(0, "seed", np.full(len(frame), seed, dtype=np.int64))
        out[seed] = frame[["seed", "step"] + [c for c in frame.columns if c not in ("seed", "step")]]
    return out


def write_external_study(store: str | os.PathLike, name: str, tables: Mapping[int, pd.DataFrame], meta: dict,
                         overwrite: bool = False, progress: bool = False) -> Study:
    """Write an external study (run tables, run manifests, ``study.json``) into ``store``, whole or not at all.

    Parameters
    ----------
    store : path
        The store directory (created if missing).
    name : str
        The study name.
    tables : mapping of int to DataFrame
        One table per seed: a ``step`` column (whole numbers, unique) and the metric columns;
        a ``seed`` column is added (any given one is replaced) and rows are sorted by step.
    meta : dict
        The ``study.json`` (:func:`external_meta`); its ``seeds`` must be the tables' keys.
    overwrite : bool
        Replace a study of that name. Refused while a ``latent collect`` collects it. Without
        it, an existing study (or any other file or directory of that name) is refused.
    progress : bool
        Show a progress bar (on stderr) while the runs are written.

    Returns
    -------
    Study
        The written study.

    Raises
    ------
    UserError
        If the study exists (without ``overwrite``), the tables disagree with ``meta``, or the
        system refuses a write (:class:`latent.errors.StoreError`). Nothing of the new study
        is then left in the store, and an existing study is as it was.
    """
    check_study_name(name)
    store = Path(store)
    target = store / name
    study = Study(target)
    written = _check_tables(tables, meta)
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise store_error(exc, "create", store) from None
    with locks.acquire(study.lock_path):
        recover_staging(store, name)
        exists = target.exists() or target.is_symlink()
        if exists and not overwrite:
            raise UserError(f"study {name!r} already exists in {store}; choose another --study or pass --overwrite "
                            "to replace it")
        if exists and not (target / STUDY_FILE).is_file():
            raise UserError(f"{target} exists and is not a study (no {STUDY_FILE}); remove it or choose another --study")
        staging = store / f"{staging_prefix(name)}{os.getpid()}"
        built = staging / name
        try:
            _build(built, written, meta, progress)
            if exists:
                _replace(study, built, staging / "replaced")
            else:
                try:
                    os.replace(built, target)
                except OSError as exc:
                    raise store_error(exc, "rename into place", target) from None
            _fsync_dir(store)
        finally:
            # success: only the old study (if any) is left there; failure: the half-built one, and
            # possibly the old study moved aside, which recover_staging puts back before deleting
            try:
                recover_staging(store, name)
            except UserError as exc:
                log.warning("could not clean up %s (%s); the next import of %r does", staging, exc, name)
    return study


def _build(root: Path, tables: dict[int, pd.DataFrame], meta: dict, progress: bool = False) -> None:
    """Write the whole study into ``root`` (a fresh staging directory): runs first, ``study.json`` last.

    Nothing outside sees ``root`` until it is renamed into place, so its files are written without
    one fsync each (two per file made a 100,000-run import take an hour) and its file system is
    synced once, before the rename (:func:`latent.store.sync_filesystem`).
    """
    from tqdm import tqdm

    try:
        root.mkdir(parents=True)
    except OSError as exc:
        raise store_error(exc, "create", root) from None
    study = Study(root)
    bar = tqdm(total=len(tables), desc="writing runs", unit="run", disable=not progress, dynamic_ncols=True,
               leave=False, mininterval=0.5)
    try:
        for seed, frame in tables.items():
            atomic_write_parquet(study.run_table_path(seed), frame, sync=False)
            atomic_write_json(study.run_manifest_path(seed),
                              {"format": RUN_FORMAT, "seed": int(seed), "status": "done",
                               "last_step": int(frame["step"].iloc[-1]), "rows": int(len(frame))}, sync=False)
            bar.update()
    finally:
        bar.close()
    atomic_write_json(study.study_file, meta, sync=False)
    sync_filesystem(root)


def _replace(study: Study, built: Path, aside: Path) -> None:
    """Swap ``built`` in for the existing ``study``: old aside (into staging), new in. Leases must be free."""
    locks.move_study_aside(study.root, study.name, aside)
    try:
        os.replace(built, study.root)
    except BaseException as exc:
        try:
            os.replace(aside, study.root)  # put the old study back
        except OSError:
            pass  # recover_staging puts it back on the next import
        if isinstance(exc, OSError):
            raise store_error(exc, "rename into place", study.root) from None
        raise
