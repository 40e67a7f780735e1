"""Weight snapshots: each run's token embedding and unembedding at a few thinned checkpoints.

``latent collect --snapshots N`` stores, for every run of a study whose task supports it (modadd),
one file ``<study>/snapshots/seed-NNN.npz``: an uncompressed ``.npz`` of plain numeric arrays,
never pickled,

``steps``   int64, shape ``(n,)``: the checkpoints, in the study's step unit (the run table's
            ``step`` column), strictly increasing
``embed``   float32, shape ``(n, vocab, width)``: the token embedding at each of them
``unembed`` float32, shape ``(n, a, b)``: the unembedding as the model holds it

The axes of ``embed`` and ``unembed`` are recorded in ``study.json`` (``snapshots.axes``; for
modadd's MLP ``unembed`` is ``(vocab, d_hidden)``, logits = hidden · unembedᵀ, and for its
transformer ``(d_model, vocab)``, logits = residual · unembed; docs/collect.md). ``study.json``'s
``snapshots.steps`` are the N checkpoints chosen from the study's schedule by
:func:`snapshot_steps`; a finished run's file holds exactly those, an unfinished run's a prefix.

This module is the reader (numpy only, no torch): :func:`read_snapshots` for a whole study,
:func:`read_run_snapshots` for one file. Both check what they read and turn a bad file into one
:class:`~latent.errors.UserError` line naming the file and what to do. :func:`snapshot_bytes`
is the one place the format is written (the collector writes its bytes atomically).
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .errors import UserError
from .store import STUDY_FILE, Study, read_store_bytes

#: the folder of a study that holds the snapshot files
SNAPSHOTS_DIR = "snapshots"
#: the arrays every snapshot file holds, and nothing else
ARRAYS = ("steps", "embed", "unembed")
_FILE_RE = re.compile(r"^seed-(\d+)\.npz$")


def snapshot_steps(steps: Sequence[int], count: int) -> list[int]:
    """``count`` checkpoints of ``steps``, evenly spread by index, the first and the last always among them.

    The i-th of ``count`` (i = 0 … count − 1) is ``steps[j]`` with j the nearest integer to
    i·(K − 1)/(count − 1) for K checkpoints, halves rounded up.

    Parameters
    ----------
    steps : sequence of int
        The study's checkpoints in order (:func:`latent.store.schedule_steps`).
    count : int
        How many to choose: 0 for none, else at least 2. At least K gives every checkpoint.

    Returns
    -------
    list of int
        The chosen steps, strictly increasing.

    Raises
    ------
    ValueError
        For a negative count or a count of 1 (which cannot hold both the first and the last).
    """
    steps = [int(s) for s in steps]
    if count < 0 or count == 1:
        raise ValueError(f"count must be 0 or at least 2, got {count}")
    k = len(steps)
    if count == 0 or k == 0:
        return []
    if count >= k:
        return steps
    return [steps[(2 * i * (k - 1) + (count - 1)) // (2 * (count - 1))] for i in range(count)]


@dataclass(frozen=True, eq=False)
class RunSnapshots:
    """One run's weight snapshots, as read and checked by :func:`read_run_snapshots`.

    Attributes
    ----------
    seed : int
        The run (from the file name ``seed-NNN.npz``).
    steps : numpy.ndarray
        int64, shape ``(n,)``, strictly increasing: the checkpoints, in the study's step unit.
    embed : numpy.ndarray
        float32, shape ``(n, vocab, width)``: the token embedding at each step (row v is token v).
    unembed : numpy.ndarray
        float32, shape ``(n, a, b)``: the unembedding at each step, as the model holds it
        (``axes["unembed"]`` names its two axes).
    path : Path or None
        The file it was read from.
    axes : dict of str to tuple of str
        The axes of ``embed`` and ``unembed`` after the snapshot axis, as ``study.json`` records
        them (``{"embed": ("vocab", "d_model"), "unembed": ("d_model", "vocab")}``); empty when
        read without a study.
    complete : bool or None
        Whether the run holds every snapshot the study plans (``study.json``'s
        ``snapshots.steps``); False for an unfinished run (a prefix); None when read without a study.
    """

    seed: int
    steps: np.ndarray
    embed: np.ndarray
    unembed: np.ndarray
    path: Path | None = None
    axes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    complete: bool | None = None

    def __len__(self) -> int:
        return int(self.steps.shape[0])

    def at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``(embed, unembed)`` matrices at checkpoint ``step``.

        Raises
        ------
        KeyError
            If the run has no snapshot at ``step``.
        """
        hit = np.flatnonzero(self.steps == int(step))
        if not len(hit):
            raise KeyError(f"seed {self.seed} has no snapshot at step {step} (it has steps "
                           f"{', '.join(map(str, self.steps.tolist()))})")
        i = int(hit[0])
        return self.embed[i], self.unembed[i]

    def before(self, step: int) -> "RunSnapshots":
        """The snapshots at steps before ``step`` (a resumed run keeps those, and recomputes the rest)."""
        keep = self.steps < int(step)
        return RunSnapshots(self.seed, self.steps[keep], self.embed[keep], self.unembed[keep], self.path, self.axes,
                            None)


def snapshot_bytes(steps: Sequence[int] | np.ndarray, embed: np.ndarray, unembed: np.ndarray) -> bytes:
    """The ``.npz`` bytes of one run's snapshots (the format :func:`read_run_snapshots` reads).

    Parameters
    ----------
    steps : sequence of int
        Strictly increasing checkpoints, one per snapshot.
    embed, unembed : numpy.ndarray
        Shapes ``(n, vocab, width)`` and ``(n, a, b)``; stored as float32.

    Returns
    -------
    bytes
        An uncompressed ``.npz`` holding only ``steps`` (int64), ``embed`` and ``unembed`` (float32).
    """
    steps = np.asarray(steps, dtype=np.int64)
    embed, unembed = np.asarray(embed, dtype=np.float32), np.asarray(unembed, dtype=np.float32)
    problem = _arrays_problem(steps, embed, unembed, {})
    if problem is not None:
        raise ValueError(f"snapshots cannot be written: {problem}")
    buf = io.BytesIO()
    np.savez(buf, steps=steps, embed=embed, unembed=unembed)
    return buf.getvalue()


def read_run_snapshots(path: str | os.PathLike, seed: int | None = None, *, hint: str = "delete it",
                       axes: Mapping[str, Sequence[str]] | None = None,
                       planned: Sequence[int] | None = None) -> RunSnapshots:
    """Read and check one snapshot file.

    The bytes are read through one open file and parsed from memory (``np.load(...,
    allow_pickle=False)``), so a collection replacing the file meanwhile (atomically, by rename)
    gives the old file or the new one, never parts of both.

    Parameters
    ----------
    path : path
        A ``seed-NNN.npz`` file.
    seed : int, optional
        The run it belongs to (default: from the file name, else -1).
    hint : str
        What the user should do about a bad file, ending the error message.
    axes : mapping, optional
        ``study.json``'s ``snapshots.axes``: the names of ``embed``'s and ``unembed``'s axes after
        the snapshot axis; the arrays must have that many, and equally named axes equal sizes.
    planned : sequence of int, optional
        ``study.json``'s ``snapshots.steps``: the file's steps must be a prefix of them.

    Returns
    -------
    RunSnapshots

    Raises
    ------
    UserError
        One line naming the file, what is wrong (missing, not an npz archive, truncated, an array
        that would need pickle, a missing array, a non-numeric dtype, inconsistent shapes, steps
        that do not increase or are not the study's, non-finite values) and ``hint``.
    """
    path = Path(path)
    if seed is None:
        m = _FILE_RE.match(path.name)
        seed = int(m.group(1)) if m else -1
    axes = {k: tuple(v) for k, v in (axes or {}).items()}

    def bad(what: str) -> UserError:
        return UserError(f"snapshots file {path} is invalid: {what}; {hint}")

    raw = read_store_bytes(path, "snapshots file")
    try:
        archive = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - zipfile, numpy and OS errors all mean "not a whole archive"
        # bytes that are neither a zip nor an .npy header make numpy suspect a pickle: not an archive either
        why = "not an .npz archive" if isinstance(exc, ValueError) and "pickle" in str(exc) else _why(exc)
        raise UserError(f"snapshots file {path} is corrupt ({why}); {hint}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise bad("it is a single .npy array, not an .npz archive of steps, embed and unembed")
    arrays: dict[str, np.ndarray] = {}
    with archive:
        missing = [k for k in ARRAYS if k not in archive.files]
        if missing:
            raise bad(f"it lacks the array(s) {', '.join(missing)} (it must hold {', '.join(ARRAYS)})")
        for key in ARRAYS:
            try:
                arrays[key] = archive[key]
            except ValueError as exc:
                if "pickle" in str(exc):
                    raise bad(f"its array '{key}' holds Python objects, which only pickle could load "
                              "(latent never unpickles)") from None
                raise UserError(f"snapshots file {path} is corrupt ({_why(exc)}); {hint}") from None
            except Exception as exc:  # noqa: BLE001 - a damaged member (bad CRC, truncated data)
                raise UserError(f"snapshots file {path} is corrupt ({_why(exc)}); {hint}") from None
    steps, embed, unembed = arrays["steps"], arrays["embed"], arrays["unembed"]
    if steps.dtype.kind not in "iu":
        raise bad(f"'steps' must be integers (got dtype {steps.dtype})")
    for key, arr in (("embed", embed), ("unembed", unembed)):
        if arr.dtype.kind != "f":
            raise bad(f"'{key}' must be floating-point numbers (got dtype {arr.dtype})")
    problem = _arrays_problem(steps, embed, unembed, axes)
    if problem is not None:
        raise bad(problem)
    steps = steps.astype(np.int64, copy=False)
    if planned is not None:
        plan = [int(s) for s in planned]
        have = steps.tolist()
        if have != plan[: len(have)]:
            raise bad(f"it holds steps {_listed(have)}, which are not the first {len(have)} of the study's "
                      f"snapshot steps {_listed(plan)}")
    for key, arr in (("embed", embed), ("unembed", unembed)):
        finite = np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)
        if not finite.all():
            at = int(steps[int(np.argmin(finite))])
            raise bad(f"'{key}' holds non-finite values (NaN or inf) at step {at} (a run that diverged, or a "
                      "damaged file)")
    return RunSnapshots(int(seed), steps, embed.astype(np.float32, copy=False), unembed.astype(np.float32, copy=False),
                        path, axes, None if planned is None else len(steps) == len(planned))


def read_snapshots(study_or_dir: Study | str | os.PathLike,
                   seeds: Iterable[int] | None = None) -> dict[int, RunSnapshots]:
    """Every run's snapshots in a study, checked (:func:`read_run_snapshots`), by seed.

    Parameters
    ----------
    study_or_dir : Study or path
        A study (or its directory, with ``study.json``), or a folder of ``seed-NNN.npz`` files.
        Given a study, each file is also checked against ``study.json``'s ``snapshots`` (its
        axes; its steps a prefix of the planned ones), and each run's ``complete`` says whether
        it holds all of them.
    seeds : iterable of int, optional
        Only these runs (default: every run with a snapshot file).

    Returns
    -------
    dict of int to RunSnapshots
        Sorted by seed; empty for a study without snapshots. Unfinished runs are included
        (``complete`` False); filter on it for finished ones only.

    Raises
    ------
    UserError
        For a study that does not exist or a bad ``study.json``, or any bad snapshot file (one
        line naming it and the files to remove together).
    """
    study, folder = _locate(study_or_dir)
    plan = None
    if study is not None:
        plan = study.read_meta().get("snapshots")
    if not folder.is_dir():
        return {}
    found: dict[int, Path] = {}
    for p in folder.iterdir():
        m = _FILE_RE.match(p.name)
        if m and p.is_file():
            found[int(m.group(1))] = p
    wanted = sorted(found) if seeds is None else sorted(int(s) for s in seeds if int(s) in found)
    out: dict[int, RunSnapshots] = {}
    for seed in wanted:
        hint = study.remove_hint(seed) if study is not None else "delete it"
        out[seed] = read_run_snapshots(found[seed], seed, hint=hint, axes=(plan or {}).get("axes"),
                                       planned=None if plan is None else plan["steps"])
    return out


def _locate(study_or_dir) -> tuple[Study | None, Path]:
    """The study (if any) and its snapshots folder, from a Study, a study directory or a snapshots folder."""
    if isinstance(study_or_dir, Study):
        return study_or_dir, study_or_dir.snapshots_dir
    path = Path(study_or_dir)
    if (path / STUDY_FILE).is_file():
        return Study(path), Study(path).snapshots_dir
    if path.name == SNAPSHOTS_DIR and (path.parent / STUDY_FILE).is_file():
        return Study(path.parent), path
    if path.is_dir():
        return None, path
    raise UserError(f"{path} is neither a study (a directory with {STUDY_FILE}) nor a folder of snapshot files; "
                    "pass a study directory such as data/modadd")


def _arrays_problem(steps: np.ndarray, embed: np.ndarray, unembed: np.ndarray,
                    axes: Mapping[str, tuple[str, ...]]) -> str | None:
    """Why the three arrays are not one run's snapshots (shapes, steps), or None."""
    if steps.ndim != 1:
        return f"'steps' must have shape (n,) (got {steps.shape})"
    n = steps.shape[0]
    if embed.ndim != 3 or embed.shape[0] != n:
        return f"'embed' must have shape (n, vocab, width) with n = {n}, one per step (got {embed.shape})"
    if unembed.ndim != 3 or unembed.shape[0] != n:
        return f"'unembed' must have shape (n, a, b) with n = {n}, one per step (got {unembed.shape})"
    if n and (steps < 0).any():
        return f"'steps' must be non-negative (got {_listed(steps.tolist())})"
    if n > 1 and not (np.diff(steps) > 0).all():
        return f"'steps' must be strictly increasing (got {_listed(steps.tolist())})"
    sizes: dict[str, int] = {}
    for key, arr in (("embed", embed), ("unembed", unembed)):
        names = axes.get(key)
        if names is None:
            continue
        if len(names) != arr.ndim - 1:
            return (f"'{key}' has shape {arr.shape}, but study.json names {len(names)} axes after the snapshot axis "
                    f"({', '.join(names)})")
        for name, size in zip(names, arr.shape[1:]):
            if sizes.setdefault(name, size) != size:
                return f"'{key}' has shape {arr.shape}: its axis {name} has {size} entries, 'embed' has {sizes[name]}"
    return None


def _listed(values: list[int]) -> str:
    shown = ", ".join(map(str, values[:6]))
    return shown + (f", … ({len(values)} in all)" if len(values) > 6 else "")


def _why(exc: BaseException) -> str:
    if isinstance(exc, zipfile.BadZipFile):
        return f"not a whole .npz archive: {_first_line(exc)}"
    if isinstance(exc, EOFError):
        return "truncated"
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:120]
