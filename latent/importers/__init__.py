"""Readers of runs logged elsewhere, and the checks every imported run passes.

Each reader (:mod:`latent.importers.tables`, :mod:`latent.importers.tensorboard`, and
``latent import checkpoints`` through ``latent.collect.checkpoints``) returns :class:`Run` objects:
one per run, a ``step`` column of whole numbers and numeric metric columns. :func:`prepare`
then checks them together, gives each a seed and builds the ``study.json``
(:func:`latent.external.external_meta`) that :func:`latent.external.write_external_study`
writes. Every problem is a :class:`latent.errors.UserError` whose one line names the file,
and where it applies the run, step and column.

Metric names are made safe for ``--convergence``, ``latent fit --features`` and parquet:
:func:`sanitize` maps ``"eval/acc"`` to ``"eval_acc"``; the map of every renamed column is
kept in ``study.json``'s ``source.renamed``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import UserError
from ..external import default_features, external_meta, parse_convergence

#: Column names guessed, in this order, when no ``--step-col`` is given.
STEP_GUESSES = ("step", "global_step", "epoch", "iteration")
#: Column names guessed, in this order, when neither ``--run-col`` nor ``--seed-col`` is given.
RUN_GUESSES = ("seed", "run", "run_id")


@dataclass
class Run:
    """One imported run, before it gets its seed.

    Attributes
    ----------
    name : str
        The run's name where it was found: a file stem, a value of the run column, a
        TensorBoard run directory.
    frame : DataFrame
        ``step`` (int64, unique, increasing) and numeric metric columns, one row per checkpoint.
    file : str
        The file or directory it was read from, for messages.
    """

    name: str
    frame: pd.DataFrame
    file: str


@dataclass
class Prepared:
    """Checked runs ready for :func:`latent.external.write_external_study`.

    Attributes
    ----------
    tables : dict of int to DataFrame
        One table per seed.
    meta : dict
        The study's ``study.json``.
    names : dict of int to str
        The run name behind every seed.
    warnings : list of str
        One line each: things ``latent fit`` will treat specially (runs of different
        lengths or step grids, rows dropped with ``drop_incomplete``).
    """

    tables: dict[int, pd.DataFrame]
    meta: dict
    names: dict[int, str]
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- names


def sanitize(name: object) -> str:
    """A metric name made of letters, digits and ``_`` (``"eval/acc"`` -> ``"eval_acc"``).

    Every run of other characters becomes one ``_``; leading and trailing ``_`` are dropped; a
    name that would start with a digit (or be empty) gets the prefix ``m_``.
    """
    text = re.sub(r"[^A-Za-z0-9_]+", "_", str(name)).strip("_")
    text = re.sub(r"__+", "_", text)
    if not text or text[0].isdigit():
        text = "m_" + text
    return text


def sanitize_columns(columns: Iterable[object], where: str) -> dict[object, str]:
    """``{original: sanitized}`` for ``columns``; raises if two originals map to one name."""
    mapping: dict[object, str] = {}
    seen: dict[str, object] = {}
    for col in columns:
        new = sanitize(col)
        if new in seen and seen[new] != col:
            raise UserError(f"{where}: the metrics {str(seen[new])!r} and {str(col)!r} both become the column "
                            f"{new!r}; rename one of them")
        seen[new] = col
        mapping[col] = new
    return mapping


def pick_column(columns: Sequence[str], given: str | None, guesses: Sequence[str], flag: str, where: str,
                required: bool) -> str | None:
    """The column named by ``flag`` (must exist), else the first of ``guesses`` present (case-insensitive)."""
    if given is not None:
        if given not in columns:
            raise UserError(f"{where} has no column {given!r} (named by {flag}); its columns are "
                            f"{_listed(columns)}")
        return given
    lower = {str(c).lower(): c for c in reversed(list(columns))}
    for guess in guesses:
        if guess in lower:
            return lower[guess]
    if required:
        raise UserError(f"{where} has no step column (looked for {', '.join(guesses)}; its columns are "
                        f"{_listed(columns)}); name it with {flag}")
    return None


def _listed(names: Sequence[object], most: int = 10) -> str:
    names = [str(n) for n in names]
    text = ", ".join(names[:most])
    return (text + f", … ({len(names)} in all)" if len(names) > most else text) or "(none)"


def run_label(value: object) -> str:
    """A run id as text: integral numbers without a decimal point (``3.0`` -> ``"3"``)."""
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------- cells


def numeric_column(values: pd.Series) -> tuple[pd.Series | None, int | None]:
    """``values`` as numbers, or ``(None, None)`` when no cell of it is a number.

    Empty cells and NaN stay missing (NaN). A column of numbers with some other text in it is a
    mistake: returns ``(series, i)`` with ``i`` the position of the first bad cell, which the
    caller names. A numeric dtype is taken as is (booleans become 0/1).
    """
    if pd.api.types.is_bool_dtype(values):
        return values.astype(np.int64), None
    if pd.api.types.is_numeric_dtype(values):
        return values, None
    out = np.full(len(values), np.nan)
    bad = None
    good = 0
    for i, cell in enumerate(values.tolist()):
        if cell is None or (isinstance(cell, float) and math.isnan(cell)):
            continue
        if isinstance(cell, (int, float, np.integer, np.floating)) and not isinstance(cell, bool):
            out[i] = float(cell)
            good += 1
            continue
        text = str(cell).strip()
        if text == "" or text.lower() in ("nan", "na", "n/a", "null", "none"):
            continue
        try:
            out[i] = float(text)  # correctly rounded: what a CSV writer printed reads back exactly
            good += 1
        except ValueError:
            if bad is None:
                bad = i
    if good == 0:
        return None, None
    return pd.Series(out, index=values.index, name=values.name), bad


def whole_steps(values: pd.Series, where: str, describe, what: str = "step", flag: str = "--step-col") -> pd.Series:
    """``values`` as int64 (steps, or seeds with ``what="seed"``); raises naming the first that is
    missing, not a number or not whole.

    ``describe(i)`` says where row ``i`` is (``"run 'a', row 12"``).
    """
    numbers, bad = numeric_column(values)
    if numbers is None:
        raise UserError(f"{where}: the {what} column {values.name!r} holds no numbers (first cell "
                        f"{values.iloc[0]!r} at {describe(0)}); name the {what} column with {flag}")
    if bad is not None:
        raise UserError(f"{where}: {describe(bad)}: {what} {values.iloc[bad]!r} is not a number")
    arr = numbers.to_numpy(dtype=float)
    missing = np.flatnonzero(~np.isfinite(arr))
    if missing.size:
        raise UserError(f"{where}: {describe(int(missing[0]))}: the {what} is missing")
    frac = np.flatnonzero(arr != np.round(arr))
    if frac.size:
        i = int(frac[0])
        raise UserError(f"{where}: {describe(i)}: {what} {arr[i]:g} is not a whole number; name a column of "
                        f"whole numbers with {flag}")
    # a step counts training progress from 0 (run manifests hold it as a count); int64 must hold it
    out = np.flatnonzero((arr < 0) | (arr > 2.0 ** 62))
    if out.size:
        i = int(out[0])
        why = "is negative" if arr[i] < 0 else "is too large (above 2^62)"
        raise UserError(f"{where}: {describe(i)}: {what} {arr[i]:g} {why}; {what}s are whole numbers from 0 "
                        f"(name another column with {flag}, or shift the values)")
    return pd.Series(arr.astype(np.int64), index=values.index, name="step")


def metric_columns(frame: pd.DataFrame, where: str, exclude: Iterable[str], describe,
                   notes: list[str] | None = None) -> pd.DataFrame:
    """The numeric columns of ``frame`` other than ``exclude``, text turned into numbers.

    A column with no number in it (a tag, a date) is left out with a note; one with numbers
    and some other text raises naming the first bad cell (``describe(i)`` says where row ``i``
    is).
    """
    exclude = set(exclude)
    out = {}
    skipped = []
    for col in frame.columns:
        if col in exclude:
            continue
        numbers, bad = numeric_column(frame[col])
        if numbers is None:
            if frame[col].notna().any():
                skipped.append(str(col))
            continue
        if bad is not None:
            raise UserError(f"{where}: {describe(bad)}, column {str(col)!r}: {frame[col].iloc[bad]!r} is not a number")
        out[col] = numbers
    if skipped and notes is not None:
        notes.append(f"{where}: left out the column(s) {_listed(skipped)} (no numbers in them)")
    return pd.DataFrame(out, index=frame.index)


# --------------------------------------------------------------------------- seeds


def assign_seeds(names: Iterable[str]) -> tuple[dict[str, int], bool]:
    """A seed for every run name, and whether the names need recording beside the seeds.

    Names that are all non-negative whole numbers (``"0"``, ``"7"``) are the seeds. Names that
    are all one prefix followed by distinct numbers (``seed-003``, ``run_7``) get those numbers.
    Otherwise the runs, in natural order (``run2`` before ``run10``), get seeds 0, 1, 2, ….

    Returns
    -------
    seeds : dict of str to int
    named : bool
        True unless every name is its seed written as a plain number.
    """
    names = sorted(set(names), key=natural_key)
    if all(re.fullmatch(r"\d+", n) for n in names):
        seeds = {n: int(n) for n in names}
        if len(set(seeds.values())) == len(seeds):
            return seeds, any(n != str(int(n)) for n in names)
    parts = [re.fullmatch(r"(.*?\D)?(\d+)", n) for n in names]
    if all(parts) and len({p.group(1) for p in parts}) == 1:
        seeds = {n: int(p.group(2)) for n, p in zip(names, parts)}
        if len(set(seeds.values())) == len(seeds):
            return seeds, True
    return {n: i for i, n in enumerate(names)}, True


def natural_key(name: str) -> tuple:
    """Sort key that orders the numbers inside names by value (``run2`` < ``run10``)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p != "")


# --------------------------------------------------------------------------- prepare


def check_run(run: Run) -> None:
    """Raise when ``run`` has no rows or two rows at one step (naming its file and the step)."""
    if not len(run.frame):
        raise UserError(f"{run.file}: run {run.name!r} has no rows")
    dup = run.frame["step"].duplicated()
    if dup.any():
        step = int(run.frame["step"][dup].iloc[0])
        raise UserError(f"{run.file}: run {run.name!r} has two rows at step {step}; keep one row per step")


def prepare(runs: Sequence[Run], *, study: str, convergence: str | Mapping | None,
            features: Sequence[str] | None = None, drop_incomplete: bool = False, source: dict,
            step_unit: str = "step", renamed: Mapping[str, str] | None = None,
            metric_variant: str | None = None) -> Prepared:
    """Check imported runs together and turn them into a study's tables and ``study.json``.

    Parameters
    ----------
    runs : sequence of Run
        The runs, each with a unique name.
    study : str
        The study name.
    convergence : str, dict or None
        A rule such as ``"val_acc>0.9"`` (:func:`latent.external.parse_convergence`); an
        original metric name (``"eval/acc>0.9"``) is accepted for its sanitized column.
    features : sequence of str, optional
        The HMM features (default :func:`latent.external.default_features`).
    drop_incomplete : bool
        Drop checkpoints where a feature is missing instead of refusing them.
    source : dict
        Recorded as ``study.json``'s ``source``.
    step_unit : str
        What ``step`` counts.
    renamed : mapping, optional
        ``{original name: column}`` for metrics whose names were sanitized.
    metric_variant : {"reference", "paper"}, optional
        How latent computed the runs' weight statistics (a checkpoint import), recorded as
        ``study.json``'s ``metric_variant``; None (tables, TensorBoard) records none.

    Returns
    -------
    Prepared

    Raises
    ------
    UserError
        No runs, two runs of one name, a run with no rows or a repeated step, a feature or the
        convergence metric without values in some run (other such columns are left out with
        a warning), a feature missing or not
        finite at a checkpoint (unless ``drop_incomplete``), an unknown feature or
        convergence metric.
    """
    if not runs:
        raise UserError("no runs found to import")
    renamed = dict(renamed or {})
    by_name: dict[str, Run] = {}
    for run in runs:
        if run.name in by_name:
            raise UserError(f"run {run.name!r} is in both {by_name[run.name].file} and {run.file}; "
                            "give every run one file, or distinct run names")
        by_name[run.name] = run
    for run in by_name.values():
        check_run(run)
    seeds, named = assign_seeds(by_name)
    order = sorted(by_name, key=lambda n: seeds[n])
    # which columns each run has values in; every run needs the same set
    have = {}
    for n in order:
        filled = by_name[n].frame.notna().any()  # one call per run, not one per column
        have[n] = [c for c, v in filled.items() if c != "step" and v]
    union: list[str] = list(dict.fromkeys(c for n in order for c in have[n]))
    conv = _convergence(convergence, union, renamed)
    if features is not None:
        features = [renamed.get(f, f) for f in features]
    # a column some runs lack is refused if it matters (a feature, the convergence metric), else left out
    needed = set(features if features is not None else default_features(union, conv))
    needed |= {conv["metric"]} if conv else set()
    warnings: list[str] = []
    partial = [c for c in union if any(c not in have[n] for n in order)]
    for n in order:
        lacking = [c for c in union if c not in have[n] and c in needed]
        if lacking:
            others = [m for m in order if all(c in have[m] for c in lacking)]
            like = f" (run {others[0]!r} has them)" if others else ""
            raise UserError(f"{by_name[n].file}: run {n!r} has no values in the column(s) {_listed(lacking)}"
                            f"{like}; runs must log the same metrics: import the others only, or fix the run")
    if partial:
        lacking_runs = [n for n in order if any(c not in have[n] for c in partial)]
        warnings.append(f"left out the column(s) {_listed(partial)}: run(s) {_listed(lacking_runs, 5)} have no "
                        "values in them (they are neither features nor the convergence metric)")
        union = [c for c in union if c not in partial]
    try:
        meta = external_meta(study, [seeds[n] for n in order], union, source=source, convergence=conv,
                             step_unit=step_unit, runs={seeds[n]: n for n in order} if named else None,
                             features=features, metric_variant=metric_variant)
    except UserError as exc:
        files = list(dict.fromkeys(by_name[n].file for n in order))
        raise UserError(f"{_listed(files, 3)}: {exc}") from None
    tables: dict[int, pd.DataFrame] = {}
    dropped: dict[str, int] = {}
    for n in order:
        run = by_name[n]
        frame = run.frame[["step"] + union].sort_values("step", kind="stable").reset_index(drop=True)
        values = frame[meta["features"]].to_numpy(dtype=float)
        bad_rows = ~np.isfinite(values).all(axis=1)
        if bad_rows.any():
            if not drop_incomplete:
                i = int(np.flatnonzero(bad_rows)[0])
                j = int(np.flatnonzero(~np.isfinite(values[i]))[0])
                what = "missing" if np.isnan(values[i, j]) else f"{values[i, j]} (not finite)"
                raise UserError(f"{run.file}: run {n!r}, step {int(frame['step'].iloc[i])}, column "
                                f"{meta['features'][j]!r}: the value is {what}; every checkpoint needs every feature: "
                                "pass --drop-incomplete to drop such checkpoints, or choose --features")
            dropped[n] = int(bad_rows.sum())
            frame = frame[~bad_rows].reset_index(drop=True)
            if not len(frame):
                raise UserError(f"{run.file}: run {n!r} has no checkpoint with every feature "
                                f"({_listed(meta['features'])}); choose --features")
        tables[seeds[n]] = frame
    if dropped:
        warnings.append("dropped checkpoints missing a feature (--drop-incomplete): " +
                        ", ".join(f"run {n!r}: {k}" for n, k in dropped.items()))
    warnings += _grid_warnings(tables, {seeds[n]: n for n in order})
    return Prepared(tables=tables, meta=meta, names={seeds[n]: n for n in order}, warnings=warnings)


def _convergence(rule, columns: Sequence[str], renamed: Mapping[str, str]) -> dict | None:
    if rule is None:
        return None
    conv = parse_convergence(rule) if isinstance(rule, str) else dict(rule)
    metric = conv["metric"]
    if metric not in columns and renamed.get(metric) in columns:
        conv["metric"] = renamed[metric]
    elif metric not in columns and sanitize(metric) in columns:
        conv["metric"] = sanitize(metric)
    return conv


def _grid_warnings(tables: Mapping[int, pd.DataFrame], names: Mapping[int, str]) -> list[str]:
    """Warn when runs differ in length (``latent fit`` refuses that by default) or in their steps."""
    out = []
    lengths = {s: len(t) for s, t in tables.items()}
    longest = max(lengths.values())
    short = [s for s, k in lengths.items() if k < longest]
    if short:
        out.append(f"runs {_runs_text(short, names, lengths)} have fewer checkpoints than the longest ({longest}); "
                   f"`latent fit` refuses runs of different lengths unless --allow-partial, or "
                   f"--first-n {min(lengths.values())} to use the first {min(lengths.values())} checkpoints of every run")
    grids = {s: tuple(t["step"].tolist()) for s, t in tables.items()}
    common = Counter(grids.values()).most_common(1)[0][0]
    odd = [s for s, g in grids.items() if g != common and g != common[:len(g)] and common != g[:len(common)]]
    if odd:
        out.append(f"runs {_runs_text(odd, names)} log their checkpoints at other steps than most runs; "
                   "`latent fit` models the sequence of checkpoints, so a state's length is counted in "
                   "checkpoints, not steps (convergence steps are still read from the steps)")
    return out


def _runs_text(seeds: Sequence[int], names: Mapping[int, str], lengths: Mapping[int, int] | None = None) -> str:
    shown = []
    for s in list(seeds)[:8]:
        label = names[s] if names[s] == str(s) else f"{names[s]} (seed {s})"
        shown.append(label + (f": {lengths[s]}" if lengths else ""))
    return ", ".join(shown) + (f" and {len(seeds) - 8} more" if len(seeds) > 8 else "")


def runs_from_frames(tables: Mapping[str, pd.DataFrame], where: str, notes: list[str]) -> tuple[list[Run], dict]:
    """:class:`Run` objects from per-run frames with a ``step`` column (what ``latent.collect.checkpoints``
    returns), every column checked as an imported table's is; and the map of renamed columns.

    Raises
    ------
    UserError
        A frame without ``step``, a step that is not a whole number, a column that is not numeric.
    """
    runs, renamed = [], {}
    for run_name, frame in sorted(tables.items()):
        frame = frame.reset_index(drop=True)
        if "step" not in frame.columns:
            raise UserError(f"{where}: run {run_name!r}: the checkpoint reader returned no step column")

        def describe(i, frame=frame, run_name=run_name):
            return f"run {run_name!r}, step {frame['step'].iloc[i]}"

        steps = whole_steps(frame["step"], where, describe)
        metrics = metric_columns(frame, where, {"step"}, describe, notes)
        mapping = sanitize_columns(metrics.columns, where)
        renamed.update({k: v for k, v in mapping.items() if k != v})
        runs.append(Run(name=str(run_name), frame=pd.concat([steps, metrics.rename(columns=mapping)], axis=1),
                        file=where))
    return runs, renamed


def join_metrics(runs, extra, table: str, notes: list[str]):
    """Checkpoint runs with a metrics table's columns joined on run name and step.

    A checkpoint run takes the metrics run of the same name, or the table's only run when both
    sides have exactly one. Columns in both take the table's values. Steps the table lacks are
    missing values.
    """
    by_name = {r.name: r for r in extra}
    out = []
    unused = set(by_name)
    for run in runs:
        match = by_name.get(run.name)
        if match is None and len(runs) == 1 and len(extra) == 1:
            match = extra[0]
        if match is None:
            raise UserError(f"{table}: has no rows for the checkpoint run {run.name!r} (its runs: "
                            f"{', '.join(sorted(by_name)[:10])}); name its runs as the checkpoint runs "
                            "(--run-col) or import the runs separately")
        unused.discard(match.name)
        both = [c for c in match.frame.columns if c != "step" and c in run.frame.columns]
        if both:
            notes.append(f"{table}: run {run.name!r}: took {', '.join(both)} from the metrics table")
        left = run.frame.drop(columns=both)
        joined = left.merge(match.frame, on="step", how="left", sort=False)
        lacking = int((~run.frame["step"].isin(match.frame["step"])).sum())
        if lacking:
            notes.append(f"{table}: run {run.name!r}: no metrics at {lacking} of {len(run.frame)} checkpoint steps "
                         "(left missing)")
        out.append(Run(name=run.name, frame=joined, file=run.file))
    if unused:
        notes.append(f"{table}: ignored the runs {', '.join(sorted(unused))} (no checkpoints of theirs)")
    return out
