"""Scalars from TensorBoard event files (``events.out.tfevents.*``), read with tbparse.

What a run is, for each PATH given:

* an event file: its directory is the run (event files of one directory named together are one
  run, and only the files named are read);
* a directory holding event files itself: it is one run, and event files in its
  subdirectories belong to it too;
* any other directory: each subdirectory with event files somewhere below it is one run
  (``logs/seed-0``, ``logs/seed-1``, …), named after the subdirectory.

Only scalars are read: ``add_scalar`` values (``simple_value``) and TF2-style scalar tensors
(0-d numeric tensors); histograms, images, text and hparams are ignored. A tag becomes a
column by :func:`latent.importers.sanitize` (``"eval/acc"`` -> ``"eval_acc"``); tags logged in
a subdirectory of the run get it as a prefix (``validation/epoch_loss`` ->
``validation_epoch_loss``). Tags logged at different steps are aligned on the union of their
steps, missing where a tag has no value. ``tags`` picks tags by name or shell pattern
(``"eval/*"``), matched against the tag or its column name.

tbparse and tensorboard are imported only here, when a log is read; without them the import
fails with one line naming ``pip install -e ".[tensorboard]"``.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import UserError
from . import Run, natural_key, sanitize, sanitize_columns

INSTALL_HINT = 'pip install -e ".[tensorboard]"'


def _reader():
    try:
        from tbparse import SummaryReader
    except ImportError:
        raise UserError("reading TensorBoard logs needs the tbparse and tensorboard packages: "
                        f"{INSTALL_HINT}") from None
    return SummaryReader


def is_event_file(path: Path) -> bool:
    """Whether ``path`` is named like a TensorBoard event file."""
    return path.is_file() and "tfevents" in path.name


def _has_events(directory: Path, recursive: bool) -> bool:
    pattern = "**/*tfevents*" if recursive else "*tfevents*"
    return any(p.is_file() for p in directory.glob(pattern))


def find_runs(paths: Iterable[str | os.PathLike]) -> list[tuple[str, list[Path]]]:
    """``(run name, paths to read)`` for every run under ``paths`` (see the module docstring)."""
    runs: list[tuple[str, list[Path]]] = []
    files: dict[Path, list[Path]] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            if not is_event_file(path):
                raise UserError(f"{path}: not a TensorBoard event file (events.out.tfevents.*)")
            files.setdefault(path.parent.resolve(), []).append(path)
        elif path.is_dir():
            if _has_events(path, recursive=False):
                runs.append((path.resolve().name, [path]))
                continue
            found = [d for d in sorted(path.iterdir(), key=lambda p: natural_key(p.name))
                     if d.is_dir() and _has_events(d, recursive=True)]
            if not found:
                raise UserError(f"{path}: no TensorBoard event files (events.out.tfevents.*) in it or its "
                                "subdirectories")
            runs += [(d.name, [d]) for d in found]
        else:
            raise UserError(f"{path}: no such file or directory")
    # event files named one by one: the files of one directory are one run (only those files are read)
    runs += [(directory.name, sorted(group)) for directory, group in files.items()]
    return runs


def _scalars(path: Path) -> pd.DataFrame:
    """Long table ``step, tag, value`` of every scalar under ``path`` (a run directory or an event file)."""
    SummaryReader = _reader()
    try:
        with warnings.catch_warnings():  # tbparse's own deprecation notices are nothing the user can act on
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            reader = SummaryReader(str(path), pivot=False, extra_columns={"dir_name"},
                                   event_types={"scalars", "tensors"})
            scalars, tensors = reader.scalars, reader.tensors
    except Exception as exc:  # corrupt or truncated event files raise several types
        text = " ".join(str(exc).split())[:160]
        raise UserError(f"{path}: cannot read the TensorBoard events ({type(exc).__name__}: {text})") from None
    parts = []
    for frame, tensor in ((scalars, False), (tensors, True)):
        if frame is None or not len(frame):
            continue
        frame = frame.copy()
        if tensor or frame["value"].dtype == object:
            keep = frame["value"].map(_is_scalar)
            frame = frame[keep.to_numpy(dtype=bool)].copy()
            frame["value"] = frame["value"].map(lambda v: float(np.asarray(v).reshape(())))
        if "dir_name" not in frame.columns:
            frame["dir_name"] = ""
        parts.append(frame[["step", "tag", "value", "dir_name"]])
    if not parts:
        return pd.DataFrame({"step": pd.Series([], dtype=np.int64), "tag": pd.Series([], dtype=object),
                             "value": pd.Series([], dtype=float)})
    out = pd.concat(parts, ignore_index=True)
    sub = out["dir_name"].fillna("").astype(str)
    out["tag"] = [f"{d}/{t}" if d else str(t) for d, t in zip(sub, out["tag"])]
    return out[["step", "tag", "value"]]


def _is_scalar(value) -> bool:
    arr = np.asarray(value)
    return arr.ndim == 0 and arr.dtype.kind in "biuf"


def read_tensorboard(paths: Iterable[str | os.PathLike], *, tags: Sequence[str] | None = None,
                     progress: bool = False) -> tuple[list[Run], dict]:
    """Read the scalars of TensorBoard runs.

    Parameters
    ----------
    paths : iterable of path
        Event files, run directories, or directories of run directories.
    tags : sequence of str, optional
        Tags to import (names or shell patterns, matched against a tag or its column name);
        default every scalar tag.
    progress : bool
        Show a progress bar (on stderr) while the event files are read.

    Returns
    -------
    runs : list of Run
    info : dict
        ``{"paths", "runs", "tags", "renamed"}``: ``runs`` maps run names to what was read,
        ``tags`` maps every imported tag to its column, ``renamed`` only those that differ.

    Raises
    ------
    UserError
        Missing tbparse, no event files, an unreadable file, a run without scalars, a
        ``--tags`` pattern that matches no tag, or a tag with two values at one step.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    from tqdm import tqdm

    found = find_runs(paths)
    tables = {}
    for name, sources in tqdm(found, desc="reading runs", unit="run", disable=not progress, dynamic_ncols=True,
                              leave=False, mininterval=0.5):
        path = sources[0] if len(sources) == 1 else sources[0].parent
        long = pd.concat([_scalars(p) for p in sources], ignore_index=True)
        if not len(long):
            raise UserError(f"{path}: run {name!r} has no scalar events")
        tables[(name, path)] = long
    all_tags = list(dict.fromkeys(t for long in tables.values() for t in sorted(long["tag"].unique())))
    if tags:
        chosen = []
        for pattern in tags:
            hits = [t for t in all_tags if fnmatch.fnmatchcase(t, pattern) or fnmatch.fnmatchcase(sanitize(t), pattern)]
            if not hits:
                raise UserError(f"--tags {pattern!r} matches no scalar tag in {', '.join(str(p) for _, p in tables)} "
                                f"(tags: {', '.join(all_tags[:20])}{', …' if len(all_tags) > 20 else ''})")
            chosen += hits
        keep = list(dict.fromkeys(chosen))
    else:
        keep = all_tags
    keep = sorted(keep)
    mapping = sanitize_columns(keep, "the TensorBoard tags")
    runs = []
    for (name, path), long in tables.items():
        long = long[long["tag"].isin(keep)]
        if not len(long):
            raise UserError(f"{path}: run {name!r} has none of the chosen tags ({', '.join(keep[:10])})")
        dup = long.duplicated(["tag", "step"])
        if dup.any():
            row = long[dup.to_numpy()].iloc[0]
            raise UserError(f"{path}: run {name!r}, tag {row['tag']!r} has two values at step {int(row['step'])} "
                            "(a resumed run logging again?); keep one event file per run or remove the repeated steps")
        wide = long.pivot(index="step", columns="tag", values="value")
        wide = wide.reindex(columns=[t for t in keep if t in wide.columns]).sort_index()
        wide.columns = [mapping[t] for t in wide.columns]
        wide.index.name = "step"
        wide = wide.reset_index()
        wide["step"] = wide["step"].astype(np.int64)
        runs.append(Run(name=name, frame=wide, file=str(path)))
    info = {"paths": [str(p) for p in paths],
            "runs": {name: str(path) for name, path in tables}, "tags": mapping,
            "renamed": {t: c for t, c in mapping.items() if t != c}}
    return runs, info
