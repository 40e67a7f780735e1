"""The run store: studies on disk, atomic writes, and reading trajectories back.

Layout (one study = one task + one resolved config + a set of seeds)::

    <store>/<study>/study.json               task, resolved config, seeds, convergence rule, versions
    <store>/<study>/runs/seed-007.parquet    one row per checkpoint (the trajectory table)
    <store>/<study>/runs/seed-007.json       run manifest: status, last step, seed streams, timings
    <store>/<study>/state/seed-007.npz       resume state while a run is unfinished (no pickle)
    <store>/<study>/fits/<fit-id>/...        written by ``latent fit``
    <store>/<study>/reports/<fit-id>/...     written by ``latent report``

Every write goes to a temporary file in the same directory, is fsynced, and is renamed over
the target, so a killed process leaves either the old file or the new one, never a torn one.
This module imports neither torch nor anything heavy beyond numpy/pandas.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .errors import UserError

#: The 14 weight-statistic columns of a trajectory table, in the reference's order
#: (reference.md B5); the HMM's default features.
REFERENCE_COLUMNS = (
    "l1",
    "l2",
    "trace",
    "spectral",
    "code_sparsity",
    "computational_sparsity",
    "mean_lambda",
    "variance_lambda",
    "mean_w",
    "median_w",
    "var_w",
    "mean_b",
    "median_b",
    "var_b",
)

STUDY_FILE = "study.json"
STUDY_FORMAT = "latent.study/1"
RUN_FORMAT = "latent.run/1"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------- atomic writes


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same dir, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_json(obj: Any) -> str:
    """Deterministic JSON text (sorted keys, 2-space indent, trailing newline)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=True) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as deterministic JSON, atomically."""
    atomic_write_bytes(path, dumps_json(obj).encode())


def atomic_write_parquet(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write a DataFrame as parquet, atomically."""
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file, turning a missing or corrupt file into a :class:`UserError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is corrupt ({exc}); restore or delete it") from None


def read_parquet(path: str | os.PathLike, what: str = "file") -> pd.DataFrame:
    """Read a parquet file, turning a missing or corrupt file into a :class:`UserError`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise UserError(
            f"{what} {path} is corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            "restore or delete it"
        ) from None


# --------------------------------------------------------------------------- names


def check_study_name(name: str) -> str:
    """Return ``name`` if it is a safe study name (no ``/``, no ``..``), else raise."""
    if not name or not _NAME_RE.match(name) or ".." in name:
        raise UserError(
            f"invalid study name {name!r}: use letters, digits, '.', '_' or '-' "
            "(no '/' or '..'); pass a path with --store instead"
        )
    return name


def run_stem(seed: int) -> str:
    """File stem of one run: ``seed-007``."""
    return f"seed-{int(seed):03d}"


# --------------------------------------------------------------------------- study


@dataclass(frozen=True)
class Study:
    """A study directory in the store.

    Parameters
    ----------
    root : Path
        The study directory (``<store>/<name>``).
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # accept str paths too

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def study_file(self) -> Path:
        return self.root / STUDY_FILE

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def fits_dir(self) -> Path:
        return self.root / "fits"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def run_table_path(self, seed: int) -> Path:
        return self.runs_dir / f"{run_stem(seed)}.parquet"

    def run_manifest_path(self, seed: int) -> Path:
        return self.runs_dir / f"{run_stem(seed)}.json"

    def run_state_path(self, seed: int) -> Path:
        return self.state_dir / f"{run_stem(seed)}.npz"

    def exists(self) -> bool:
        return self.study_file.is_file()

    # -- metadata ---------------------------------------------------------------------------

    def read_meta(self) -> dict:
        """The parsed ``study.json``."""
        meta = read_json(self.study_file, "study file")
        if not isinstance(meta, dict) or "task" not in meta:
            raise UserError(f"study file {self.study_file} is corrupt (no 'task'); restore or delete it")
        return meta

    def write_meta(self, meta: dict) -> None:
        atomic_write_json(self.study_file, meta)

    # -- runs -------------------------------------------------------------------------------

    def run_seeds(self) -> list[int]:
        """Seeds with a trajectory table on disk, sorted."""
        if not self.runs_dir.is_dir():
            return []
        seeds = []
        for p in self.runs_dir.glob("seed-*.parquet"):
            try:
                seeds.append(int(p.stem.split("-", 1)[1]))
            except ValueError:
                continue
        return sorted(seeds)

    def read_manifest(self, seed: int) -> dict | None:
        path = self.run_manifest_path(seed)
        if not path.exists():
            return None
        return read_json(path, "run manifest")

    def read_run(self, seed: int) -> pd.DataFrame:
        """One run's trajectory table, sorted by step."""
        frame = read_parquet(self.run_table_path(seed), "run table")
        if "step" not in frame.columns:
            raise UserError(f"run table {self.run_table_path(seed)} is corrupt (no 'step' column)")
        return frame.sort_values("step", kind="stable").reset_index(drop=True)

    def read_runs(self, seeds: Iterable[int] | None = None) -> pd.DataFrame:
        """All runs' trajectory tables concatenated (long and tidy), sorted by seed then step."""
        seeds = self.run_seeds() if seeds is None else sorted(seeds)
        if not seeds:
            raise UserError(f"study {self.root} has no runs yet; run `latent collect` first")
        frames = [self.read_run(s) for s in seeds]
        return pd.concat(frames, ignore_index=True)

    def status(self) -> dict:
        """Seeds done / total and an overall status string (``done``, ``partial``, ``empty``)."""
        meta = self.read_meta()
        seeds = list(meta.get("seeds", []))
        done = 0
        for s in seeds:
            m = self.read_manifest(s)
            if m and m.get("status") == "done":
                done += 1
        if done == len(seeds) and seeds:
            status = "done"
        elif done or any(self.run_table_path(s).exists() for s in seeds):
            status = "partial"
        else:
            status = "empty"
        return {"done": done, "total": len(seeds), "status": status}

    def fit_ids(self) -> list[str]:
        """Fit ids under this study, oldest first."""
        if not self.fits_dir.is_dir():
            return []
        fits = [p for p in self.fits_dir.iterdir() if (p / "model.json").is_file()]
        return [p.name for p in sorted(fits, key=lambda p: (p / "model.json").stat().st_mtime)]


# --------------------------------------------------------------------------- store


def list_studies(store: str | os.PathLike) -> list[Study]:
    """Studies in a store, oldest first (by the modification time of ``study.json``)."""
    store = Path(store)
    if not store.is_dir():
        return []
    studies = [Study(p) for p in store.iterdir() if (p / STUDY_FILE).is_file()]
    return sorted(studies, key=lambda s: (_last_activity(s), s.name))


def _last_activity(study: Study) -> float:
    """Most recent write to a study's metadata or run manifests."""
    times = [study.study_file.stat().st_mtime]
    if study.runs_dir.is_dir():
        times += [p.stat().st_mtime for p in study.runs_dir.glob("seed-*.json")]
    return max(times)


def resolve_study(store: str | os.PathLike = "data", study: str | os.PathLike | None = None) -> Study:
    """Find a study: by name in ``store``, by path, or the most recently collected one.

    Parameters
    ----------
    store : path
        The store directory (default ``./data``).
    study : str or path, optional
        A study name inside ``store`` or a path to any directory with a ``study.json``.
        ``None`` picks the study in ``store`` with the most recent collection activity.

    Raises
    ------
    UserError
        If no such study exists.
    """
    if study is None:
        studies = list_studies(store)
        if not studies:
            raise UserError(
                f"no study in store {Path(store)}; run `latent collect --task modadd` first "
                "or pass --study PATH"
            )
        return studies[-1]
    candidate = Path(study)
    for path in (Path(store) / candidate, candidate):
        if (path / STUDY_FILE).is_file():
            return Study(path)
    raise UserError(
        f"study {str(study)!r} not found (looked in {Path(store) / candidate} and {candidate}); "
        "`latent ls` lists the studies in the store"
    )
