"""Checkpoint rows and resume state into the store, kill-safe.

A save point writes, for every seed: its trajectory table (all rows so far), then its weight
snapshots (``--snapshots N``: all so far, when there are new ones), then its resume state, then
its manifest, each atomically. Because the table and snapshots are written before the state, a
kill between them leaves rows and snapshots *newer* than the state; on resume those are
dropped and recomputed (training is deterministic), so the final table and snapshots equal an
uninterrupted run's. Rows are buffered in memory between save points: fsyncing 40 files per
checkpoint would cost more than the training.

Every write goes through :mod:`latent.store` (looked up at call time, so fault-injection tests
can intercept the one place bytes reach the disk).
"""

from __future__ import annotations

import io
import os
import time
from typing import Any, Mapping

import numpy as np
import pandas as pd

from latent import store
from latent.errors import UserError, store_error
from latent.snapshots import RunSnapshots, snapshot_bytes
from latent.store import RUN_FORMAT, Study

from .metrics import REFERENCE_COLUMNS
from .seeds import RunSeeds
from .trainer import LOSS_COLUMNS, Checkpoint


def save_state(path: os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write a resume state as an uncompressed ``.npz`` (plain arrays, loadable without pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    store.atomic_write_bytes(path, buf.getvalue())


def _unreadable(path: os.PathLike, exc: BaseException, study: Study | None, seed: int | None) -> UserError:
    hint = study.remove_hint(seed) if study is not None and seed is not None else "delete it"
    return UserError(f"resume state {path} is unreadable ({type(exc).__name__}); {hint}")


def load_state(path: os.PathLike, study: Study | None = None, seed: int | None = None) -> dict[str, np.ndarray]:
    """Read a resume state; a damaged file is a :class:`UserError` naming the files to remove."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except PermissionError as exc:  # the file may be fine: say so, not "remove it"
        raise store_error(exc, "read", path) from None
    except Exception as exc:  # zipfile/ValueError/EOFError for a damaged archive
        raise _unreadable(path, exc, study, seed) from None


def read_state_step(path: os.PathLike, study: Study | None = None, seed: int | None = None) -> tuple[int, int | None]:
    """A resume state's optimiser step and the run seed it records (None in older states),
    reading only those two entries."""
    try:
        with np.load(path, allow_pickle=False) as data:
            step = int(data["meta/step"])
            owner = int(data["meta/seed"]) if "meta/seed" in data.files else None
    except PermissionError as exc:
        raise store_error(exc, "read", path) from None
    except Exception as exc:  # a damaged archive fails in many ways
        raise _unreadable(path, exc, study, seed) from None
    return step, owner


def remove_state(study: Study, seed: int) -> None:
    """Delete a run's resume state if it has one (a finished run's, or one no longer valid)."""
    path = study.run_state_path(seed)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise store_error(exc, "remove", path) from None


def reset_run(study: Study, rs: RunSeeds) -> None:
    """Before a run is trained again from scratch: clear its done mark, then its resume state.

    The manifest goes first so that no reader ever sees "done" beside the new, shorter table.
    """
    manifest = study.read_manifest(rs.seed)
    if manifest is not None and manifest.get("status") != "running":
        store.atomic_write_json(study.run_manifest_path(rs.seed), {
            "format": RUN_FORMAT, "seed": rs.seed, "status": "running", "opt_steps": 0, "last_step": None,
            "rows": 0, "streams": rs.as_dict(), "timings": {}})
    remove_state(study, rs.seed)


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
    snapshots : dict of int to RunSnapshots or None, optional
        Given (``--snapshots N``), the study stores weight snapshots: each seed's snapshots already
        on disk (truncated to the resume point; None: none yet). Checkpoints that carry weights
        (``Checkpoint.snapshot``) add to them, and save points write them to
        ``snapshots/seed-NNN.npz``.
    """

    def __init__(self, study: Study, seeds: list[RunSeeds], existing: dict[int, pd.DataFrame], step_unit: str = "epoch",
                 snapshots: dict[int, RunSnapshots | None] | None = None):
        self.study = study
        self.step_unit = step_unit
        self.seeds = seeds
        self._tables = {rs.seed: existing.get(rs.seed) for rs in seeds}
        self._pending: dict[int, list[dict[str, Any]]] = {rs.seed: [] for rs in seeds}
        self._started = time.time()
        self._snapshots: dict[int, list[tuple[int, dict[str, np.ndarray]]]] | None = None
        if snapshots is not None:
            self._snapshots = {}
            for rs in seeds:
                old = snapshots.get(rs.seed)
                self._snapshots[rs.seed] = [] if old is None else [
                    (int(t), {"embed": old.embed[j], "unembed": old.unembed[j]}) for j, t in enumerate(old.steps)]
        # what is on disk may hold snapshots after the resume point: the first save rewrites it
        self._snapshots_dirty = snapshots is not None

    def add(self, ckpt: Checkpoint) -> None:
        """Buffer one checkpoint's row (and weight snapshot, if it carries one) for every seed."""
        step = round(ckpt.epoch) if self.step_unit == "epoch" else ckpt.step
        for i, rs in enumerate(self.seeds):
            row: dict[str, Any] = {"seed": rs.seed, "step": int(step), "epoch": float(ckpt.epoch)}
            row.update({k: float(v[i]) for k, v in ckpt.values.items()})
            self._pending[rs.seed].append(row)
            if self._snapshots is not None and ckpt.snapshot is not None:
                self._snapshots[rs.seed].append((int(step), {k: v[i] for k, v in ckpt.snapshot.items()}))
                self._snapshots_dirty = True

    def snapshot_file(self, seed: int) -> bytes | None:
        """``seed``'s snapshots so far as the bytes of its file (None: it has none)."""
        snaps = None if self._snapshots is None else self._snapshots[seed]
        if not snaps:
            return None
        return snapshot_bytes([t for t, _ in snaps], np.stack([w["embed"] for _, w in snaps]),
                              np.stack([w["unembed"] for _, w in snaps]))

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
        write_snapshots = self._snapshots_dirty

        def write_one(i: int, rs: RunSeeds) -> None:
            frame = frames[rs.seed]
            if frame is not None:
                store.atomic_write_parquet(self.study.run_table_path(rs.seed), frame)
            snapshots = self.snapshot_file(rs.seed) if write_snapshots else None
            if snapshots is not None:
                store.atomic_write_bytes(self.study.run_snapshots_path(rs.seed), snapshots)
            if not done and states is not None:
                save_state(self.study.run_state_path(rs.seed),
                           {**states[i], "meta/step": np.asarray(step), "meta/seed": np.asarray(rs.seed)})
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
            store.atomic_write_json(self.study.run_manifest_path(rs.seed), manifest)
            if done:
                remove_state(self.study, rs.seed)

        with ThreadPoolExecutor(max_workers=min(16, len(self.seeds))) as pool:
            list(pool.map(write_one, range(len(self.seeds)), self.seeds))
        for rs in self.seeds:
            if frames[rs.seed] is not None:
                self._tables[rs.seed] = frames[rs.seed]
                self._pending[rs.seed] = []
        self._snapshots_dirty = False
