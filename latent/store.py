"""The run store: studies on disk, atomic writes, and reading trajectories back.

Layout (one study = one task + one resolved config + a set of seeds)::

    <store>/<study>/study.json               task, resolved config, seeds, convergence rule, versions
    <store>/<study>/runs/seed-007.parquet    one row per checkpoint (the trajectory table)
    <store>/<study>/runs/seed-007.json       run manifest: status, last step, seed streams, timings
    <store>/<study>/state/seed-007.npz       resume state while a run is unfinished (no pickle)
    <store>/<study>/snapshots/seed-007.npz   embedding and unembedding at a few checkpoints (--snapshots N)
    <store>/<study>/fits/<fit-id>/...        written by ``latent fit``
    <store>/<study>/reports/<fit-id>/...     written by ``latent report``

Every write goes to a temporary file in the same directory, is fsynced, and is renamed over
the target, so a killed process leaves either the old file or the new one, never a torn one.
This module imports neither torch nor anything heavy beyond numpy/pandas.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from .errors import UserError, store_error
from .schemas import RUN_FORMAT, STUDY_FORMAT, read_artifact  # noqa: F401 - the formats are re-exported

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
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: names of store-level directories that are not studies
RESERVED_NAMES = frozenset({"comparisons"})


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


def sync_filesystem(path: str | os.PathLike) -> None:
    """Flush every written file of the file system holding ``path`` to the disk, and wait.

    Linux's ``syncfs(2)`` (one call instead of an fsync per file; since Linux 5.8 it reports a
    failed writeback, which is raised as :class:`StoreError`); elsewhere ``sync(2)``.
    """
    fd = None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    try:
        fd = os.open(path, os.O_RDONLY)
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    except OSError as exc:
        raise store_error(exc, "sync", Path(path)) from None
    finally:
        if fd is not None:
            os.close(fd)


def _write_synced(fd: int, data: bytes, sync: bool = True) -> None:
    """Write all of ``data`` to the open file ``fd``, flush it to the disk (if ``sync``), and close it."""
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        if sync:
            os.fsync(fh.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same dir, fsync, rename).

    ``sync=False`` leaves out both fsyncs (file and directory): for files written into a private
    staging directory that is synced once, as a whole, before it is renamed into place.

    Raises
    ------
    StoreError
        If the system refuses (disk full, permissions, read-only file system); ``path`` then
        still holds its old content (or is still absent) and no temporary file is left.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        _write_synced(fd, data, sync)
        os.replace(tmp, path)
        tmp = None
        if sync:
            _fsync_dir(path.parent)
    except OSError as exc:
        raise store_error(exc, "write", path) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


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


def atomic_write_json(path: str | os.PathLike, obj: Any, sync: bool = True) -> None:
    """Write ``obj`` as deterministic JSON, atomically (``sync``: :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, dumps_json(obj).encode(), sync)


def atomic_write_parquet(path: str | os.PathLike, frame: pd.DataFrame, sync: bool = True) -> None:
    """Write a DataFrame as parquet, atomically (``sync``: :func:`atomic_write_bytes`)."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue(), sync)


def read_store_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    """A file's bytes, read in one call; a missing file is a :class:`UserError` naming ``what``, any
    other OS error the :func:`latent.errors.store_error` for reading it."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise store_error(exc, "read", path) from None


def read_json(path: str | os.PathLike, what: str = "file", hint: str = "restore or delete it") -> Any:
    """Read a JSON file, turning a missing, unreadable or corrupt file into a :class:`UserError`."""
    path = Path(path)
    raw = read_store_bytes(path, what)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is corrupt ({exc}); {hint}") from None


#: How often a reader re-reads a file that failed to parse but changed meanwhile.
READ_ATTEMPTS = 5


def read_parquet(path: str | os.PathLike, what: str = "file", hint: str = "restore or delete it") -> pd.DataFrame:
    """Read a parquet file whole, turning a missing, unreadable or corrupt file into a :class:`UserError`.

    The bytes are read through one open file and parsed from memory, so a writer replacing
    the file meanwhile (atomically, by rename) cannot make the reader see parts of two
    versions; a parquet reader that opens the path itself can. A file that fails to parse is
    read again while it keeps changing; only the same bytes failing twice count as corrupt.
    """
    path = Path(path)
    previous = None
    for _ in range(READ_ATTEMPTS):
        raw = read_store_bytes(path, what)
        try:
            # no Arrow thread pool: its teardown at exit aborts a few processes in a hundred
            # ("terminate called without an active exception", apache/arrow#34314), and run
            # tables are small enough that threads buy nothing
            return pd.read_parquet(io.BytesIO(raw), use_threads=False)
        except Exception as exc:  # pyarrow raises several types for a bad file
            if raw == previous:
                break
            previous, error = raw, exc
            time.sleep(0.01)
    raise UserError(
        f"{what} {path} is corrupt ({type(error).__name__}: {_first_line(error)}); {hint}"
    ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:120]


# --------------------------------------------------------------------------- names


def check_study_name(name: str) -> str:
    """Return ``name`` if it is a safe study name (no ``/``, no ``..``), else raise."""
    if not name or not _NAME_RE.match(name) or ".." in name:
        raise UserError(
            f"invalid study name {name!r}: use letters, digits, '.', '_' or '-' "
            "(no '/' or '..'); pass a path with --store instead"
        )
    if name in RESERVED_NAMES:
        raise UserError(f"study name {name!r} is reserved (the store keeps `latent compare` pages there); choose another")
    return name


def run_stem(seed: int) -> str:
    """File stem of one run: ``seed-007``."""
    return f"seed-{int(seed):03d}"


# --------------------------------------------------------------------------- run integrity


def schedule_steps(schedule: Mapping[str, Any]) -> list[int]:
    """The checkpoint steps of ``{"every": k, "last": n}``: 0, k, 2k, … and n (in the study's step unit)."""
    every, last = int(schedule["every"]), int(schedule["last"])
    if every < 1 or last < 0:
        raise UserError(f"study schedule {dict(schedule)} is corrupt (every must be >= 1, last >= 0)")
    steps = list(range(0, last + 1, every))
    if steps[-1] != last:
        steps.append(last)
    return steps


def _steps_text(steps: list[int]) -> str:
    shown = ", ".join(map(str, steps[:4]))
    return shown + (f", … ({len(steps)} in all)" if len(steps) > 4 else "")


def rows_problem(frame: pd.DataFrame, seed: int, expected: list[int], metrics: Iterable[str] = ()) -> str | None:
    """Why ``frame`` is not exactly run ``seed``'s rows at the checkpoint steps ``expected``.

    Returns None when it is: one row per expected step, in order, of this seed, with every
    column in ``metrics``. Otherwise a phrase such as ``"has 50 of the 61 checkpoints
    (missing steps 0, 1, 2, 3, … (11 in all))"``.
    """
    if "step" not in frame.columns:
        return "has no 'step' column"
    absent = [c for c in metrics if c not in frame.columns]
    if absent:
        return f"lacks the column(s) {', '.join(absent)}"
    if "seed" in frame.columns and len(frame) and not (frame["seed"] == seed).all():
        return f"holds rows of another seed than {seed}"
    steps = [int(s) for s in frame["step"]]
    if steps == list(expected):
        return None
    have, want = set(steps), set(expected)
    missing = sorted(want - have)
    if missing:
        return (f"has {len(want) - len(missing)} of the {len(want)} checkpoints "
                f"(missing steps {_steps_text(missing)})")
    extra = sorted(have - want)
    if extra:
        return f"has rows at steps {_steps_text(extra)}, which are not checkpoints of this study"
    return "has duplicate or out-of-order steps"


def order_problem(frame: pd.DataFrame, seed: int) -> str | None:
    """Why ``frame`` cannot be run ``seed``'s trajectory whatever its schedule: rows of another
    seed, a missing, non-numeric or non-finite step, negative steps, or a step twice. None if
    none of these."""
    if "step" not in frame.columns:
        return "has no 'step' column"
    if "seed" in frame.columns and len(frame):
        seeds = pd.to_numeric(frame["seed"], errors="coerce")
        if not (seeds == seed).all():
            other = sorted({str(v) for v in frame["seed"][seeds != seed]})[:3]
            return f"holds rows of seed(s) {', '.join(other)}, not only of seed {seed}"
    steps = pd.to_numeric(frame["step"], errors="coerce")
    if not np.isfinite(steps.to_numpy(dtype=float)).all():
        return "has a step that is missing or not a finite number"
    if (steps < 0).any():
        return f"has negative steps (e.g. {int(steps[steps < 0].iloc[0])})"
    dup = steps[steps.duplicated()]
    if len(dup):
        return f"has step {dup.iloc[0]:g} more than once ({int(steps.duplicated(keep=False).sum())} rows share a step)"
    return None


def replace_lock_path(parent: Path, name: str) -> Path:
    """The lock a writer holds while it builds ``parent/name`` in a temporary sibling and renames it
    in (fits, reports): while it is held, that name's temporaries are live; once free, stranded.
    Inside a study (``<study>/fits``, ``<study>/reports``) it is ``<study>/locks/<fits|reports>-<name>.lock``;
    elsewhere (``latent report --out DIR``) a hidden ``.<name>.lock`` beside it."""
    parent = Path(parent)
    if parent.name in ("fits", "reports") and (parent.parent / "study.json").is_file():
        return parent.parent / "locks" / f"{parent.name}-{name}.lock"
    return parent / f".{name}.lock"


def tidy_replaced(parent: Path, name: str, tmp_glob: str, old_glob: str, old_inner: str | None = None) -> list[str]:
    """Clean up after writers of ``parent/name`` that were killed (call it holding
    :func:`replace_lock_path`): temporary directories (``tmp_glob``) are removed, and a previous
    version stranded between the two renames of a replace (``old_glob``; its content in
    ``old_inner`` when not None) is renamed back if ``name`` is missing, else removed. Returns a
    phrase per thing done."""
    import shutil

    done = []
    final = parent / name
    for old in sorted(parent.glob(old_glob)):
        content = old / old_inner if old_inner else old
        if content.is_dir() and not final.exists():
            os.rename(content, final)  # killed between its two renames: the previous version comes back
            done.append(f"restored {final.name} from {old.name}")
        else:
            done.append(f"removed {old.name}")
        shutil.rmtree(old, ignore_errors=True)
    for tmp in sorted(parent.glob(tmp_glob)):
        shutil.rmtree(tmp, ignore_errors=True)
        done.append(f"removed {tmp.name}")
    return done


@dataclass(frozen=True)
class RunStatus:
    """What one run is, as :meth:`Study.run_status` finds it.

    Attributes
    ----------
    seed : int
    status : {"done", "partial", "running", "damaged", "pending"}
        ``done``: its table holds every checkpoint of the study's schedule and its manifest
        says done. ``partial``: unfinished, what is saved is consistent, and ``latent
        collect`` resumes it. ``running``: a ``latent collect`` holds its lease right now.
        ``damaged``: a file is unreadable or the files disagree (marked done with a missing or
        short table, gaps in the steps); ``latent collect`` trains it again from scratch or
        says which files to remove. ``pending``: nothing saved yet.
    detail : str
        One line saying why, for every status but ``done`` and ``pending``.
    rows : int
        Rows in its table (0 if it has none or it is unreadable).
    """

    seed: int
    status: str
    detail: str = ""
    rows: int = 0


RUN_STATUSES = ("done", "partial", "running", "damaged", "pending")


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

    def tidy(self) -> list[str]:
        """Clean up what killed ``latent fit`` and ``latent report`` runs left in this study: every
        stranded temporary or set-aside directory whose writer's lock is free (a live writer's are
        left alone). Returns a phrase per thing done."""
        from . import locks

        done = []
        for parent, pattern, kind in ((self.fits_dir, re.compile(r"^\.(tmp|old)-(.+)-[^-]+$"), "fit"),
                                      (self.reports_dir, re.compile(r"^\.(.+)\.(tmp|old)-[^.]+$"), "report")):
            if not parent.is_dir():
                continue
            names = set()
            for entry in parent.iterdir():
                m = pattern.match(entry.name)
                if m:
                    names.add(m.group(2) if kind == "fit" else m.group(1))
            for name in sorted(names):
                lock = locks.acquire(replace_lock_path(parent, name), blocking=False)
                if lock is None:
                    continue  # being written right now
                try:
                    if kind == "fit":
                        done += tidy_replaced(parent, name, f".tmp-{name}-*", f".old-{name}-*", "fit")
                    else:
                        done += tidy_replaced(parent, name, f".{name}.tmp-*", f".{name}.old-*")
                finally:
                    lock.release()
        return done

    @property
    def lock_path(self) -> Path:
        """The study lock, beside the study directory so that replacing the directory keeps it."""
        return self.root.parent / f".{self.root.name}.lock"

    def run_table_path(self, seed: int) -> Path:
        return self.runs_dir / f"{run_stem(seed)}.parquet"

    def run_manifest_path(self, seed: int) -> Path:
        return self.runs_dir / f"{run_stem(seed)}.json"

    def run_state_path(self, seed: int) -> Path:
        return self.state_dir / f"{run_stem(seed)}.npz"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    def run_snapshots_path(self, seed: int) -> Path:
        """The run's weight snapshots (``latent collect --snapshots N``; :mod:`latent.snapshots`)."""
        return self.snapshots_dir / f"{run_stem(seed)}.npz"

    def run_lease_path(self, seed: int) -> Path:
        """The lease a collector holds while it trains ``seed`` (:mod:`latent.locks`)."""
        return self.root / "locks" / f"{run_stem(seed)}.lock"

    def exists(self) -> bool:
        return self.study_file.is_file()

    def remove_hint(self, seed: int) -> str:
        """What to delete to train ``seed`` again from scratch: every file of the run, together."""
        files = [p for p in (self.run_table_path(seed), self.run_manifest_path(seed), self.run_state_path(seed),
                             self.run_snapshots_path(seed)) if p.exists()]
        names = [str(p.relative_to(self.root)) for p in files] or [f"runs/{run_stem(seed)}.*"]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return (f"remove {listed} from {self.root} together (then `latent collect` trains seed {seed} "
                "again from scratch)")

    # -- metadata ---------------------------------------------------------------------------

    def read_meta(self) -> dict:
        """The parsed ``study.json``."""
        return read_artifact("study", self.study_file, hint="fix it or delete the study")

    def write_meta(self, meta: dict) -> None:
        atomic_write_json(self.study_file, meta)

    def schedule(self, meta: dict | None = None) -> list[int] | None:
        """Every checkpoint step a finished run has (``study.json``'s ``schedule``), or None if unrecorded.

        Studies made by hand or by an older ``latent collect`` record no schedule; their runs
        are checked against their manifests instead.
        """
        meta = self.read_meta() if meta is None else meta
        return schedule_steps(meta["schedule"]) if meta.get("schedule") else None

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
        """A run's manifest (``runs/seed-NNN.json``), or None when it has none.

        This is what the run's writer last recorded, not a verdict: :meth:`run_status` checks
        it against the table.
        """
        path = self.run_manifest_path(seed)
        if not path.exists():
            return None
        manifest = read_artifact("manifest", path, hint=self.remove_hint(seed))
        if manifest.get("seed") is not None and manifest["seed"] != seed:
            raise UserError(f"run manifest {path} records seed {manifest['seed']}, not {seed}; {self.remove_hint(seed)}")
        return manifest

    def read_run(self, seed: int) -> pd.DataFrame:
        """One run's trajectory table, sorted by step (whatever its status; see :meth:`read_finished_runs`)."""
        path = self.run_table_path(seed)
        frame = read_parquet(path, "run table", hint=self.remove_hint(seed))
        if "step" not in frame.columns:
            raise UserError(f"run table {path} is corrupt (no 'step' column); {self.remove_hint(seed)}")
        return frame.sort_values("step", kind="stable").reset_index(drop=True)

    def read_runs(self, seeds: Iterable[int] | None = None) -> pd.DataFrame:
        """All runs' trajectory tables concatenated (long and tidy), sorted by seed then step."""
        seeds = self.run_seeds() if seeds is None else sorted(seeds)
        if not seeds:
            raise UserError(f"study {self.root} has no runs yet; run `latent collect` first")
        frames = [self.read_run(s) for s in seeds]
        return pd.concat(frames, ignore_index=True)

    def run_status(self, seed: int, meta: dict | None = None) -> RunStatus:
        """Whether run ``seed`` is done, partial, running, damaged or pending (:class:`RunStatus`).

        Reads the run's manifest and table once each (a table being replaced is read whole,
        old or new) and never writes.
        """
        meta = self.read_meta() if meta is None else meta
        return self._inspect(seed, self.schedule(meta), meta.get("metrics", ()))[0]

    def read_finished_runs(self, seeds: Iterable[int] | None = None,
                           allow_partial: bool = False) -> tuple[pd.DataFrame, dict[int, RunStatus]]:
        """The tables of the runs that are done, and the status of every run considered.

        Each run's status is decided on the very rows returned, so a run that a collection
        finishes or rewrites meanwhile is never returned with rows its status does not
        describe.

        Parameters
        ----------
        seeds : iterable of int, optional
            Runs to consider (default: the study's seeds and every run with a table).
        allow_partial : bool
            Also return the rows saved so far of ``partial`` and ``running`` runs. ``damaged``
            runs are never returned.

        Returns
        -------
        table : DataFrame
            The chosen runs' rows, sorted by seed then step.
        statuses : dict of int to RunStatus
            The status of every run considered, returned or left out.

        Raises
        ------
        UserError
            If no run qualifies.
        """
        meta = self.read_meta()
        if seeds is None:
            seeds = sorted(set(int(s) for s in meta.get("seeds", [])) | set(self.run_seeds()))
        expected, metrics = self.schedule(meta), meta.get("metrics", ())
        keep = ("done", "partial", "running") if allow_partial else ("done",)
        statuses: dict[int, RunStatus] = {}
        frames = []
        for seed in sorted(seeds):
            status, frame = self._inspect(seed, expected, metrics)
            statuses[seed] = status
            if status.status in keep and frame is not None and len(frame):
                frames.append(frame.sort_values("step", kind="stable").reset_index(drop=True))
        if not frames:
            counts = ", ".join(f"{sum(s.status == k for s in statuses.values())} {k}" for k in RUN_STATUSES
                               if any(s.status == k for s in statuses.values()))
            raise UserError(f"study {self.root} has no finished runs ({counts or 'no runs'}); "
                            "`latent ls` shows them and `latent collect` finishes them")
        return pd.concat(frames, ignore_index=True), statuses

    def _inspect(self, seed: int, expected: list[int] | None,
                 metrics: Iterable[str]) -> tuple[RunStatus, pd.DataFrame | None]:
        from .locks import describe_holder, holder

        table = self.run_table_path(seed)
        rel = table.relative_to(self.root)
        held = holder(self.run_lease_path(seed))
        try:
            manifest = self.read_manifest(seed)
            frame = self.read_run(seed) if table.exists() else None
        except UserError as exc:
            if held is not None:  # being rewritten by its collector right now
                return RunStatus(seed, "running", f"being collected by {describe_holder(held)}"), None
            return RunStatus(seed, "damaged", str(exc)), None
        rows = 0 if frame is None else len(frame)
        if held is not None:
            return RunStatus(seed, "running", f"being collected by {describe_holder(held)}", rows), frame
        marked_done = manifest is not None and manifest.get("status") == "done"
        if frame is None:
            if marked_done:
                return RunStatus(seed, "damaged", f"marked done but {rel} is missing"), None
            if manifest is not None or self.run_state_path(seed).exists():
                return RunStatus(seed, "partial", "no rows saved yet"), None
            return RunStatus(seed, "pending"), None
        if expected is None:  # a hand-made study, or one from an older latent: trust the manifest's counts
            problem = order_problem(frame, seed)  # but never a table that cannot be one run's
            if problem is not None:
                return RunStatus(seed, "damaged", f"{rel} {problem}", rows), frame
            if manifest is None:
                return RunStatus(seed, "done", rows=rows), frame
            if not marked_done:
                return RunStatus(seed, "partial", f"{rows} rows saved", rows), frame
            want = manifest.get("rows", rows)
            if want != rows:
                return RunStatus(seed, "damaged", f"{rel} has {rows} rows but its manifest records {want}", rows), frame
            return RunStatus(seed, "done", rows=rows), frame
        problem = rows_problem(frame, seed, expected, metrics)
        if problem is None and marked_done:
            return RunStatus(seed, "done", rows=rows), frame
        if marked_done:
            return RunStatus(seed, "damaged", f"marked done but {rel} {problem}", rows), frame
        if rows_problem(frame, seed, expected[:rows], metrics) is None:
            what = ("every checkpoint saved, not yet marked done" if problem is None
                    else f"{rows} of {len(expected)} checkpoints saved")
            return RunStatus(seed, "partial", what, rows), frame
        return RunStatus(seed, "damaged", f"{rel} {problem}", rows), frame

    def status(self) -> dict:
        """How far the study is: ``done`` and ``total`` seeds, an overall ``status``, and ``runs``.

        ``status`` is ``damaged`` if any run is, else ``done`` when every seed is, else
        ``running`` while a collection holds some, else ``partial`` or ``empty``. ``runs``
        maps every seed that is not done to its :class:`RunStatus`.
        """
        meta = self.read_meta()
        seeds = sorted(set(int(s) for s in meta.get("seeds", [])) or set(self.run_seeds()))
        expected, metrics = self.schedule(meta), meta.get("metrics", ())
        found = {s: self._inspect(s, expected, metrics)[0] for s in seeds}
        kinds = {k: [s for s, st in found.items() if st.status == k] for k in RUN_STATUSES}
        done = len(kinds["done"])
        if kinds["damaged"]:
            status = "damaged"
        elif seeds and done == len(seeds):
            status = "done"
        elif kinds["running"]:
            status = "running"
        elif done or kinds["partial"]:
            status = "partial"
        else:
            status = "empty"
        return {"done": done, "total": len(seeds), "status": status,
                "runs": {s: st for s, st in found.items() if st.status != "done"}}

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
