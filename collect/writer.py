"""Checkpoint rows and resume state into the store, kill-safe.

A save point writes, for every seed: its trajectory table (all rows so far), then its resume
state, then its manifest, each atomically. Because the table is written before the state, a
kill between the two leaves a table with rows *newer* than the state; on resume those rows are
dropped and recomputed (training is deterministic), so the final table equals an uninterrupted
run's. Rows are buffered in memory between save points: fsyncing 40 files per checkpoint would
cost more than the training.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any, Mapping

import numpy as np
import pandas as pd

from latent.errors import UserError
from latent.store import RUN_FORMAT, Study, atomic_write_bytes, atomic_write_json, atomic_write_parquet, read_parquet

from .seeds import RunSeeds
from .metrics import REFERENCE_COLUMNS
from .trainer import LOSS_COLUMNS, Checkpoint


def save_state(path: os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write a resume state as an uncompressed ``.npz`` (plain arrays, loadable without pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: os.PathLike) -> dict[str, np.ndarray]:
    """Read a resume state; a corrupt file is a :class:`UserError` that says how to recover."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # zipfile/ValueError/OSError for a damaged archive
        raise UserError(
            f"resume state {path} is unreadable ({type(exc).__name__}); delete it to restart that run from scratch"
        ) from None


class StudyWriter:
    """Buffers one batch of seeds' checkpoint rows and writes them with their resume state.

    Parameters
    ----------
    study : Study
        Where to write.
    seeds : list of RunSeeds
        The runs in this batch, in batch order.
    existing : dict of int to DataFrame
        Rows already on disk for each seed (already truncated to the resume point).
    step_unit : {"epoch", "step"}
        What the ``step`` column counts: epochs (modadd, parity, as the reference) or optimiser steps.
    """

    def __init__(self, study: Study, seeds: list[RunSeeds], existing: dict[int, pd.DataFrame], step_unit: str = "epoch"):
        self.study = study
        self.step_unit = step_unit
        self.seeds = seeds
        self._tables = {rs.seed: existing.get(rs.seed) for rs in seeds}
        self._pending: dict[int, list[dict[str, Any]]] = {rs.seed: [] for rs in seeds}
        self._started = time.time()

    def add(self, ckpt: Checkpoint) -> None:
        """Buffer one checkpoint's row for every seed."""
        for i, rs in enumerate(self.seeds):
            step = round(ckpt.epoch) if self.step_unit == "epoch" else ckpt.step
            row: dict[str, Any] = {"seed": rs.seed, "step": int(step), "epoch": float(ckpt.epoch)}
            row.update({k: float(v[i]) for k, v in ckpt.values.items()})
            self._pending[rs.seed].append(row)

    def table(self, seed: int) -> pd.DataFrame | None:
        """All rows of ``seed`` so far (on disk and buffered)."""
        parts = [t for t in (self._tables[seed],) if t is not None and len(t)]
        if self._pending[seed]:
            parts.append(pd.DataFrame(self._pending[seed]))
        if not parts:
            return None
        frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        frame["seed"] = frame["seed"].astype("int64")
        frame["step"] = frame["step"].astype("int64")
        first = ["seed", "step", "epoch", *REFERENCE_COLUMNS, *LOSS_COLUMNS]
        order = [c for c in first if c in frame.columns] + [c for c in frame.columns if c not in first]
        return frame[order]

    def save(self, step: int, states: list[dict[str, np.ndarray]] | None, done: bool = False, info: dict | None = None) -> None:
        """Write tables, then resume states (unless ``done``), then manifests, for every seed.

        Seeds are written concurrently (fsync waits on the disk, not the CPU); each seed's own
        three files keep their order, which is what resume correctness rests on.
        """
        from concurrent.futures import ThreadPoolExecutor

        frames = {rs.seed: self.table(rs.seed) for rs in self.seeds}
        wall = round(time.time() - self._started, 3)

        def write_one(i: int, rs: RunSeeds) -> None:
            frame = frames[rs.seed]
            if frame is not None:
                atomic_write_parquet(self.study.run_table_path(rs.seed), frame)
            if not done and states is not None:
                save_state(self.study.run_state_path(rs.seed), {**states[i], "meta/step": np.asarray(step)})
            manifest = {
                "format": RUN_FORMAT,
                "seed": rs.seed,
                "status": "done" if done else "running",
                "opt_steps": int(step),
                "last_step": int(frame["step"].iloc[-1]) if frame is not None else None,
                "rows": 0 if frame is None else int(len(frame)),
                "streams": rs.as_dict(),
                "timings": {"wall_seconds_this_session": wall, **(info or {})},
            }
            atomic_write_json(self.study.run_manifest_path(rs.seed), manifest)
            if done:
                try:
                    os.unlink(self.study.run_state_path(rs.seed))
                except FileNotFoundError:
                    pass

        with ThreadPoolExecutor(max_workers=min(16, len(self.seeds))) as pool:
            list(pool.map(write_one, range(len(self.seeds)), self.seeds))
        for rs in self.seeds:
            if frames[rs.seed] is not None:
                self._tables[rs.seed] = frames[rs.seed]
                self._pending[rs.seed] = []


def existing_rows(study: Study, seed: int, before_step: int, steps_per_epoch: int, step_unit: str) -> pd.DataFrame | None:
    """Rows of ``seed`` already on disk from before optimiser step ``before_step``.

    Newer rows were written after the resume state was saved; they are recomputed.
    """
    path = study.run_table_path(seed)
    if not path.exists():
        return None
    frame = read_parquet(path, "run table")
    opt_steps = frame["step"] * steps_per_epoch if step_unit == "epoch" else frame["step"]
    frame = frame[opt_steps < before_step].reset_index(drop=True)
    return frame if len(frame) else None
