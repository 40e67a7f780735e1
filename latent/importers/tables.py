"""Per-checkpoint metric tables from CSV, TSV or parquet files.

Two layouts, told apart by their columns (or ``long=True``):

wide
    one row per checkpoint, one column per metric::

        run,step,l1,l2,...,val_acc
        a,0,12.1,3.3,...,0.02

long
    one row per (checkpoint, metric)::

        run,step,metric,value
        a,0,l1,12.1

    A table is long when it has a metric-name column (``metric_col``, else one of ``metric``,
    ``tag``, ``name``, ``key``) holding text and a value column (``value_col``, else ``value``).

The step column is ``step_col``, else the first of ``step``, ``global_step``, ``epoch``,
``iteration`` present (any case). Runs are told apart by ``run_col`` or ``seed_col``, else by
the first of ``seed``, ``run``, ``run_id`` present; a file without such a column is one run
named after the file (its stem: ``runs/seed-003.csv`` is run ``seed-003``). A path may be a
directory: every ``.csv``, ``.tsv``, ``.parquet`` and ``.pq`` file directly in it, in name order.

Every other column holding numbers is a metric. A column with no number at all (a tag, a
date) is left out with a note; a column of numbers with some other text in it is refused,
naming the first bad cell. Empty cells and ``nan`` are missing values. Metric names are
sanitized (:func:`latent.importers.sanitize`).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import UserError, describe_os_error
from . import (RUN_GUESSES, STEP_GUESSES, Run, metric_columns, natural_key, numeric_column, pick_column,
               run_label, sanitize_columns, whole_steps)

SUFFIXES = {".csv": ",", ".tsv": "\t", ".parquet": None, ".pq": None}
METRIC_GUESSES = ("metric", "tag", "name", "key")
VALUE_GUESSES = ("value",)
#: sanitized metric names that would clash with the columns a study's run tables reserve
_RESERVED = {"step": "original_step", "seed": "original_seed"}
#: peak memory of an import per value in its tables: the values (8 bytes each) are held about eight
#: times over while the tables are read, split into runs, checked and written (measured: a 2-million
#: -row, 13-column parquet table peaked at 8.0 times its values' bytes, a CSV at 5 times)
PEAK_BYTES_PER_VALUE = 64


def table_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The table files named by ``paths``: files as given, directories expanded (non-recursive, by name)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES),
                           key=lambda p: natural_key(p.name))
            if not found:
                raise UserError(f"{path}: no table files in this directory (looked for "
                                f"{', '.join(SUFFIXES)})")
            files += found
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise UserError(f"{path}: not a table file this reads (use {', '.join(SUFFIXES)} files)")
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or directory")
    seen: set = set()
    for f in files:
        if f in seen:
            raise UserError(f"{f}: named twice")
        seen.add(f)
    return files


def table_shape(path: Path) -> tuple[int, int]:
    """About how many rows and columns a table file holds, without reading it.

    Parquet: from its footer (exact). CSV/TSV: the columns of the header, and the rows as the
    file's size times the records per byte of its first 64 KiB (read past a longer header),
    parsed as CSV so quoted fields holding newlines count once; a file that short is counted
    whole.
    """
    sep = SUFFIXES.get(path.suffix.lower())
    try:
        if sep is None:
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path).metadata
            return int(meta.num_rows), int(meta.num_columns)
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
            while b"\n" not in head[:-1]:  # a header longer than the sample: read on to its end
                more = fh.read(1 << 20)
                if not more:
                    break
                head += more
    except Exception:  # unreadable: read_frame says why, in one line
        return 0, 0
    whole = len(head) >= size
    sample = head if whole else head[: head.rfind(b"\n") + 1]
    try:
        records = list(csv.reader(io.StringIO(sample.decode("utf-8", errors="replace")), delimiter=sep))
    except csv.Error:  # a quoted field cut by the sample's end
        records = [r for r in sample.split(b"\n") if r]
    records = [r for r in records if r]
    if not records:
        return 0, 0
    columns = len(records[0]) if isinstance(records[0], list) else records[0].count(sep.encode()) + 1
    rows = len(records) - 1
    if whole or rows <= 0:
        return max(rows, 0), columns
    header_bytes = head.find(b"\n") + 1
    return int(round((size - header_bytes) * rows / max(1, len(sample) - header_bytes))), columns


def check_room(files: Sequence[Path]) -> None:
    """Refuse, in one line, tables too big for the memory this machine has free.

    An import holds every table in memory (the runs are checked together before anything is
    written), about :data:`PEAK_BYTES_PER_VALUE` bytes per value at its peak. Past the free memory
    the kernel would kill the process without a word, so the check comes first.
    """
    from ..memory import available_bytes, gib

    shapes = {path: table_shape(path) for path in files}
    values = sum(r * c for r, c in shapes.values())
    need = values * PEAK_BYTES_PER_VALUE
    free = available_bytes()
    if free is None or need <= free:
        return
    if len(files) == 1:
        (path, (rows, cols)), = shapes.items()
        what = f"{path}: about {rows:,} rows × {cols} columns"
    else:
        largest = max(shapes, key=lambda p: shapes[p][0] * shapes[p][1])
        what = (f"{len(files)} table files: about {sum(r for r, _ in shapes.values()):,} rows in all "
                f"(the largest: {largest})")
    raise UserError(f"{what}; importing needs about {gib(need)} of memory and this machine has {gib(free)} free; "
                    "import fewer runs or columns at a time (one study each), "
                    "or import on a machine with more memory (docs/import.md, 'Size')")


def read_frame(path: Path) -> pd.DataFrame:
    """One table file as a DataFrame with text column names; unreadable files raise naming the file."""
    sep = SUFFIXES.get(path.suffix.lower())
    try:
        if sep is None:
            import pyarrow.parquet as pq  # pandas' parquet engine; read whole, no thread pool

            frame = pq.read_table(path, use_threads=False).to_pandas()
        else:
            # every number must read back exactly as the writer printed it: pandas >= 3 parses so by
            # default (and deprecates the option); pandas 2 needs float_precision="round_trip"
            exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
            frame = pd.read_csv(path, sep=sep, **exact)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it: {describe_os_error(exc)}") from None
    except MemoryError:
        raise  # the command's one line says memory ran out (latent/cli.py)
    except Exception as exc:  # parser errors of several types
        text = " ".join(str(exc).split())[:160]
        raise UserError(f"{path}: cannot read it as {'parquet' if sep is None else 'CSV'} "
                        f"({type(exc).__name__}: {text})") from None
    frame.columns = [str(c) for c in frame.columns]
    dup = frame.columns[frame.columns.duplicated()]  # linear: a wide table has 10,000s of columns
    if len(dup):
        raise UserError(f"{path}: the column {dup[0]!r} appears twice")
    return frame


def is_long(columns: Sequence[str], frame: pd.DataFrame, metric_col: str | None, value_col: str | None) -> bool:
    """Whether a table is in the long layout (a text metric-name column and a value column)."""
    lower = {c.lower(): c for c in columns}
    metric = metric_col if metric_col in columns else next((lower[g] for g in METRIC_GUESSES if g in lower), None)
    value = value_col if value_col in columns else next((lower[g] for g in VALUE_GUESSES if g in lower), None)
    if metric is None or value is None:
        return False
    return not pd.api.types.is_numeric_dtype(frame[metric])


def read_tables(paths: Iterable[str | os.PathLike], *, long: bool | None = None, step_col: str | None = None,
                run_col: str | None = None, seed_col: str | None = None, metric_col: str | None = None,
                value_col: str | None = None, notes: list[str] | None = None) -> tuple[list[Run], dict]:
    """Read runs from table files.

    Parameters
    ----------
    paths : iterable of path
        Table files (``.csv``, ``.tsv``, ``.parquet``, ``.pq``) or directories of them.
    long : bool, optional
        Force the long (True) or wide (False) layout; default: decided per file by its columns.
    step_col : str, optional
        The step column (default: the first of ``step``, ``global_step``, ``epoch``, ``iteration``).
    run_col, seed_col : str, optional
        The column telling runs apart (``seed_col``: its values are the seeds and must be
        whole numbers). Default: the first of ``seed``, ``run``, ``run_id``, else one run per file.
    metric_col, value_col : str, optional
        The long layout's metric-name and value columns (default ``metric``/``tag``/``name``/
        ``key`` and ``value``).
    notes : list of str, optional
        Receives one line per column left out.

    Returns
    -------
    runs : list of Run
    info : dict
        ``{"files", "layout", "step_column", "run_column", "step_unit", "renamed"}``:
        ``renamed`` maps original metric names to the sanitized columns that differ.

    Raises
    ------
    UserError
        One line naming the file (and run, step and column) for anything unreadable or wrong.
    """
    if run_col is not None and seed_col is not None:
        raise UserError("pass --run-col or --seed-col, not both")
    files = table_files(paths)
    check_room(files)
    runs: list[Run] = []
    renamed: dict[str, str] = {}
    layouts, step_cols, run_cols = [], [], []
    for path in files:
        frame = read_frame(path)
        columns = list(frame.columns)
        if not len(frame):
            raise UserError(f"{path}: the file has a header but no rows")
        if long is None:
            file_long = is_long(columns, frame, metric_col, value_col)
        else:
            file_long = long
        step = pick_column(columns, step_col, STEP_GUESSES, "--step-col", str(path), required=True)
        if seed_col is not None:
            run = pick_column(columns, seed_col, (), "--seed-col", str(path), required=True)
        else:
            run = pick_column(columns, run_col, RUN_GUESSES, "--run-col", str(path), required=False)
        if run == step:
            raise UserError(f"{path}: the column {step!r} cannot be both the step and the run column")
        reader = _long_runs if file_long else _wide_runs
        found, names = reader(path, frame, step, run, seed_col is not None, metric_col, value_col, notes)
        runs += found
        renamed.update({k: v for k, v in names.items() if k != v})
        layouts.append("long" if file_long else "wide")
        step_cols.append(step)
        run_cols.append(run)
    units = {"epoch" if s.lower() == "epoch" else "step" for s in step_cols}
    info = {"files": [str(f) for f in files], "layout": _one_or_all(layouts), "step_column": _one_or_all(step_cols),
            "run_column": _one_or_all(run_cols), "step_unit": units.pop() if len(units) == 1 else "step",
            "renamed": renamed}
    return runs, info


def _one_or_all(values: list):
    return values[0] if len(set(map(str, values))) == 1 else values


def _where(frame: pd.DataFrame, step: str, run: str | None, name: str | None):
    """``describe(i)``: where data row ``i`` is, as ``run 'a', step 40 (data row 12)``."""
    def describe(i: int) -> str:
        parts = []
        if run is not None:
            parts.append(f"run {run_label(frame[run].iloc[i])!r}")
        elif name is not None:
            parts.append(f"run {name!r}")
        value = frame[step].iloc[i]
        parts.append(f"step {run_label(value)}" if pd.notna(value) else "step (empty)")
        return ", ".join(parts) + f" (data row {i + 1})"
    return describe


def _run_names(path: Path, frame: pd.DataFrame, run: str | None, as_seeds: bool, describe) -> pd.Series:
    """The run name of every row: the run column's values as text, or the file stem."""
    if run is None:
        return pd.Series([path.stem] * len(frame), index=frame.index)
    values = frame[run]
    missing = values.isna()
    if missing.any():
        raise UserError(f"{path}: {describe(int(missing.to_numpy().nonzero()[0][0]))}: the run column {run!r} is empty")
    if as_seeds:
        return whole_steps(values.rename(run), str(path), describe, what="seed", flag="--seed-col").astype(str)
    return values.map(run_label)


def _split(path: Path, frame: pd.DataFrame, names: pd.Series) -> list[Run]:
    # one pass over the rows (groupby), not one comparison of every row per run: 100,000 runs
    positions = pd.Series(np.arange(len(names))).groupby(names.to_numpy(), sort=False).indices
    runs = []
    for name in sorted(positions, key=lambda n: natural_key(str(n))):
        part = frame.iloc[positions[name]]
        if len(part) > 1 and not part["step"].is_monotonic_increasing:
            part = part.sort_values("step", kind="stable")
        runs.append(Run(name=str(name), frame=part.reset_index(drop=True), file=str(path)))
    return runs


def _wide_runs(path, frame, step, run, as_seeds, metric_col, value_col, notes):
    describe = _where(frame, step, run, None if run else path.stem)
    names = _run_names(path, frame, run, as_seeds, describe)
    steps = whole_steps(frame[step], str(path), describe)
    metrics = metric_columns(frame, str(path), {step, run}, describe, notes)
    mapping = sanitize_columns(metrics.columns, str(path))
    mapping = {k: _RESERVED.get(v, v) for k, v in mapping.items()}
    metrics = metrics.rename(columns=mapping)
    table = pd.concat([steps.rename("step"), metrics], axis=1)
    runs = _split(path, table, names)
    for r in runs:
        _no_repeats(r, path)
    return runs, mapping


def _long_runs(path, frame, step, run, as_seeds, metric_col, value_col, notes):
    columns = list(frame.columns)
    metric = pick_column(columns, metric_col, METRIC_GUESSES, "--metric-col", str(path), required=False)
    value = pick_column(columns, value_col, VALUE_GUESSES, "--value-col", str(path), required=False)
    if metric is None or value is None:
        raise UserError(f"{path}: a long table needs a metric-name and a value column (looked for "
                        f"{'/'.join(METRIC_GUESSES)} and {'/'.join(VALUE_GUESSES)}; its columns are "
                        f"{', '.join(columns)}); name them with --metric-col and --value-col")
    describe = _where(frame, step, run, None if run else path.stem)
    names = _run_names(path, frame, run, as_seeds, describe)
    steps = whole_steps(frame[step], str(path), describe)
    if frame[metric].isna().any():
        i = int(frame[metric].isna().to_numpy().nonzero()[0][0])
        raise UserError(f"{path}: {describe(i)}: the metric-name column {metric!r} is empty")
    tags = frame[metric].map(str)
    numbers, first_bad = numeric_column(frame[value])
    if numbers is None:
        raise UserError(f"{path}: the value column {value!r} holds no numbers; name it with --value-col")
    if first_bad is not None:
        raise UserError(f"{path}: {describe(first_bad)}, metric {tags.iloc[first_bad]!r}: "
                        f"{frame[value].iloc[first_bad]!r} is not a number")
    other = [c for c in columns if c not in (step, run, metric, value)]
    if other and notes is not None:
        notes.append(f"{path}: a long table: left out the column(s) {', '.join(other)}")
    mapping = sanitize_columns(dict.fromkeys(tags), str(path))
    mapping = {k: _RESERVED.get(v, v) for k, v in mapping.items()}
    tidy = pd.DataFrame({"run": names.to_numpy(), "step": steps.to_numpy(), "metric": tags.map(mapping).to_numpy(),
                         "value": numbers.to_numpy(dtype=float)})
    dup = tidy.duplicated(["run", "step", "metric"])
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise UserError(f"{path}: {describe(i)}: metric {tags.iloc[i]!r} has two values at this step; "
                        "keep one row per run, step and metric")
    order = list(dict.fromkeys(tidy["metric"]))
    runs = []
    positions = pd.Series(np.arange(len(tidy))).groupby(tidy["run"].to_numpy(), sort=False).indices
    for name in sorted(positions, key=lambda n: natural_key(str(n))):
        part = tidy.iloc[positions[name]]
        wide = part.pivot(index="step", columns="metric", values="value")
        wide = wide.reindex(columns=[m for m in order if m in wide.columns]).sort_index()
        wide.columns.name = None
        wide = wide.reset_index()
        wide["step"] = wide["step"].astype("int64")
        runs.append(Run(name=str(name), frame=wide, file=str(path)))
    return runs, mapping


def _no_repeats(run: Run, path: Path) -> None:
    dup = run.frame["step"].duplicated()
    if dup.any():
        step = int(run.frame["step"][dup].iloc[0])
        raise UserError(f"{path}: run {run.name!r} has two rows at step {step}; keep one row per step")
