"""The Recorder: log the reference's weight statistics from your own training loop into a study.

::

    from latent.collect.recorder import Recorder

    with Recorder("data", study="my-exp", seed=3, convergence="val_acc>0.9") as rec:
        for step in range(steps):
            ...                                         # your training step
            if step % 100 == 0:
                rec.log(step, model, val_acc=acc, val_loss=loss)
    # then: latent fit --study my-exp && latent report --study my-exp

Each :meth:`Recorder.log` computes the 14 reference columns of the model's weights as they
are now (:mod:`latent.collect.modules` says which tensors count; ``include=``/``exclude=`` change
that; ``metric_variant="paper"`` takes the paper's definitions, :mod:`latent.collect.metrics`) and
keeps them, with your values, as one row. The study is the one ``latent collect``
would write (``docs/artifacts.md``), with ``task: "external"`` and ``source.kind: "recorder"``
in ``study.json``, so ``latent fit``, ``latent report`` and ``latent compare`` take it as is.

Writes. Rows are kept in memory and the run's table is rewritten (atomically: temporary file,
fsync, rename) every ``flush_every`` logs (default 50) or when a log comes ``flush_seconds``
(default 30) after the last write, whichever is first, and at :meth:`close`. A process killed
meanwhile loses at most the rows since the last write, and leaves a run that ``latent ls``
shows as ``partial`` and ``latent fit`` skips.

Runs. One process records one seed; several processes (one seed each) may record into one
study at once: ``study.json`` is only changed under the study lock, and each recorder holds its
seed's lease from construction to :meth:`close`, so ``latent ls`` shows the seed as
``running`` and a second recorder of the same seed is refused while the first lives. A run is
done when :meth:`close` marks it so (its manifest records ``status: "done"`` and the row
count). Recording a seed that is already done is refused unless ``overwrite=True`` (start it
again) or ``resume=True`` (continue it). Recording a seed that a killed process left
unfinished starts it again from no rows, as your loop starts again too; ``resume=True`` keeps
its rows instead, up to the first step logged anew, for a loop that resumes from its own
checkpoint.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import shlex
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from latent import locks, store
from latent.errors import UserError, store_error
from latent.external import external_meta, parse_convergence
from latent.store import REFERENCE_COLUMNS, RUN_FORMAT, Study, check_study_name

from .metrics import METRIC_VARIANTS
from .modules import Selection, check_state_dict, module_tensors, select_module, select_state_dict
from .study import study_variant

log = logging.getLogger("latent")

SOURCE_KIND = "recorder"
RESERVED = frozenset({"seed", "step", *REFERENCE_COLUMNS})


def _convergence(rule) -> dict | None:
    if rule is None or isinstance(rule, str):
        return None if rule is None else parse_convergence(rule)
    if isinstance(rule, Mapping) and {"metric", "threshold"} <= set(rule):
        direction = rule.get("direction", "above")
        if direction not in ("above", "below"):
            raise UserError(f"convergence direction must be 'above' or 'below', got {direction!r}")
        return {"metric": str(rule["metric"]), "threshold": float(rule["threshold"]), "direction": direction}
    raise UserError(f"convergence must be text such as \"val_acc>0.9\", got {rule!r}")


def check_metric_variant(variant: Any) -> str:
    """``variant`` if it is one of :data:`latent.collect.metrics.METRIC_VARIANTS`, else a one-line :class:`UserError`."""
    if not isinstance(variant, str) or variant not in METRIC_VARIANTS:
        raise UserError(f"metric_variant must be one of {', '.join(METRIC_VARIANTS)}, got {variant!r}")
    return variant


def _number(name: str, value: Any) -> float:
    """A logged value as a float; None is a missing value (NaN)."""
    if value is None:
        return math.nan
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise UserError(f"logged value {name!r} is a tensor of shape {tuple(value.shape)}; log a number")
        value = value.detach().item()
    elif isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, numbers.Real):
        return float(value)
    raise UserError(f"logged value {name!r} is a {type(value).__name__}, not a number")


class Recorder:
    """Records one seed's weight statistics and your metrics into a study, from any training loop.

    Parameters
    ----------
    store : str or path
        The store directory (``latent``'s default is ``data``).
    study : str
        The study name; created on first use, shared by the recorders of its other seeds.
    seed : int
        This run's seed (its identity in the study; ``latent fit`` reports by seed).
    convergence : str, optional
        When a run has converged, e.g. ``"val_acc>0.9"`` or ``"val_loss<0.1"``
        (:func:`latent.external.parse_convergence`); its metric should be one of the values you
        log. Default: the study's, if it has one (``latent fit`` then needs ``--metric`` and
        ``--threshold`` otherwise). Must agree with the study's.
    include, exclude : str, re.Pattern or sequence of them
        Change which tensors count (:mod:`latent.collect.modules`): globs, or ``"re:REGEX"``.
    heads : int, optional
        Heads of the ``in_proj_weight`` tensors when you log a state dict instead of a module.
    overwrite : bool
        Record a seed that is already done again (its old rows are dropped).
    resume : bool
        Continue this seed's run, unfinished or done: keep its rows before the first step
        logged anew (for a loop that resumes from its own checkpoint, or trains longer).
    flush_every : int
        Write the table after this many logs (default 50) ...
    flush_seconds : float
        ... or at the first log this long after the last write (default 30 s).
    step_unit : str
        What ``step`` counts (``"step"`` or ``"epoch"``), shown on the report's axes.
    metric_variant : {"reference", "paper"}
        The definitions of the 14 columns (:func:`latent.collect.metrics.reference_metrics`):
        ``"reference"`` (the default) is the reference code's, ``"paper"`` the paper's wording
        (population variances for ``var_w``/``var_b``, ``mean_lambda``/``variance_lambda``
        from the pooled singular values). Recorded in ``study.json`` as ``metric_variant``;
        every seed of a study must use the study's (a study that records none is
        ``"reference"``).

    Raises
    ------
    UserError
        If ``metric_variant`` is not one of :data:`latent.collect.metrics.METRIC_VARIANTS`, the study
        was made otherwise (``latent collect``, ``latent import``) or with another convergence
        rule, ``step_unit`` or metric variant, the seed is being recorded by another live
        recorder, or it is done and neither ``overwrite`` nor ``resume`` is set.

    Notes
    -----
    A recorder that is garbage-collected without :meth:`close` releases its seed (the run
    stays unfinished, with the rows written so far); close it to mark the run done.
    """

    def __init__(self, store: str | os.PathLike = "data", study: str | None = None, seed: int | None = None,
                 convergence: str | None = None, *, include=(), exclude=(), heads: int | None = None,
                 overwrite: bool = False, resume: bool = False, flush_every: int = 50,
                 flush_seconds: float = 30.0, step_unit: str = "step", metric_variant: str = "reference"):
        if study is None:
            raise UserError("Recorder needs study=NAME (the study this run belongs to)")
        name = check_study_name(str(study))
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise UserError(f"Recorder needs seed=N, a whole number >= 0, got {seed!r}")
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise UserError(f"flush_every must be a whole number >= 1, got {flush_every!r}")
        if not (isinstance(flush_seconds, (int, float)) and flush_seconds >= 0):
            raise UserError(f"flush_seconds must be a number >= 0, got {flush_seconds!r}")
        self.seed = int(seed)
        self.study = Study(Path(store) / name)
        self.include, self.exclude, self.heads = include, exclude, heads
        self.flush_every, self.flush_seconds = flush_every, float(flush_seconds)
        self.step_unit = str(step_unit)
        self.metric_variant = check_metric_variant(metric_variant)
        self._convergence = _convergence(convergence)
        self._rows: list[dict[str, float]] = []
        self._at: dict[int, int] = {}  # step -> index in _rows
        self._columns: dict[str, None] = {}  # user columns in order of first appearance
        self._kept: list[dict[str, float]] = []  # rows of the earlier run, with resume=True
        self._selection: Selection | None = None
        self._undefined: tuple[str, ...] = ()
        self._meta_columns: set[str] = set()
        self._unsaved = 0
        self._last_write = time.monotonic()
        self._closed = False
        try:
            Path(store).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise store_error(exc, "create", store) from None
        # the seed's lease first (it creates the study directory if need be), then the study lock
        self._lease = locks.try_acquire(self.study.run_lease_path(self.seed))
        if self._lease is None:
            held = locks.holder(self.study.run_lease_path(self.seed))
            raise UserError(f"seed {self.seed} of study {name!r} is being recorded by "
                            f"{locks.describe_holder(held)}; close that Recorder first or record another seed")
        try:
            with locks.acquire(self.study.lock_path):
                self._open(name, overwrite, resume)
            self._lease.note(locks.holder_note(_command()))
        except BaseException:
            self._lease.release()
            raise
        # a forgotten recorder must not keep its seed locked for the rest of the process
        weakref.finalize(self, self._lease.release)

    # -- opening --------------------------------------------------------------------------

    def _open(self, name: str, overwrite: bool, resume: bool) -> None:
        """Under the study lock: check the study, claim the seed, record it in ``study.json``."""
        study = self.study
        for tmp in study.root.glob(f".{study.study_file.name}.*.tmp"):  # the study lock is ours
            tmp.unlink(missing_ok=True)
        meta = study.read_meta() if study.exists() else None
        if meta is None and study.runs_dir.is_dir() and any(study.runs_dir.glob("seed-*")):
            raise UserError(f"{study.runs_dir} holds runs but {study.study_file} is missing; restore study.json "
                            "or record into another study")
        if meta is not None:
            kind = (meta.get("source") or {}).get("kind")
            if meta.get("task") != "external" or kind != SOURCE_KIND:
                made = f"`latent import` ({kind})" if meta.get("task") == "external" else \
                    f"`latent collect --task {meta.get('task')}`"
                raise UserError(f"study {name!r} in {study.root.parent} was made by {made}, not by a Recorder; "
                                "record into another study")
            recorded = meta.get("convergence")
            if self._convergence is None:
                self._convergence = recorded
            elif recorded is not None and recorded != self._convergence:
                raise UserError(f"study {name!r} records the convergence rule {_rule(recorded)}, not "
                                f"{_rule(self._convergence)}; pass the same rule or record into another study")
            if meta.get("step_unit", "step") != self.step_unit:
                raise UserError(f"study {name!r} counts steps in {meta.get('step_unit')!r}, not "
                                f"{self.step_unit!r}; pass step_unit={meta.get('step_unit')!r}")
            self._check_variant(name, meta)
        self._remove_temporaries()
        try:
            manifest = study.read_manifest(self.seed)
        except UserError:
            manifest = None  # unreadable: an unfinished run's (a done run's manifest is written whole)
        if manifest is not None and manifest.get("status") == "done" and not (overwrite or resume):
            raise UserError(f"seed {self.seed} of study {name!r} is already recorded ({manifest.get('rows')} rows); "
                            "pass overwrite=True to record it again, resume=True to continue it, or record "
                            "another seed")
        if resume and not overwrite and manifest is not None and study.run_table_path(self.seed).exists():
            frame = study.read_run(self.seed)
            self._kept = frame.drop(columns=["seed"], errors="ignore").to_dict("records")
        # the manifest goes first, so that no reader sees "done" beside a shorter table
        self._write_manifest("running", rows=len(self._kept))
        if not self._kept:
            try:
                os.unlink(study.run_table_path(self.seed))
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise store_error(exc, "remove", study.run_table_path(self.seed)) from None
        for row in self._kept:
            self._columns.update((k, None) for k in row if k not in RESERVED)
        self._write_meta(meta)

    def _check_variant(self, name: str, meta: Mapping) -> None:
        """Refuse a study recorded with another metric variant (none recorded: ``"reference"``)."""
        recorded = study_variant(meta)
        if recorded == self.metric_variant:
            return
        if recorded not in METRIC_VARIANTS:
            raise UserError(f"{self.study.study_file} records an unknown metric_variant {recorded!r} (known: "
                            f"{', '.join(METRIC_VARIANTS)}); fix the file or record into another study")
        raise UserError(f"study {name!r} in {self.study.root.parent} was recorded with metric_variant={recorded!r}, "
                        f"not {self.metric_variant!r}; pass metric_variant={recorded!r} to record into it, "
                        "or record into another study")

    def _remove_temporaries(self) -> None:
        """Delete temporary files a killed writer of this seed left (we hold its lease)."""
        stem = self.study.run_table_path(self.seed).stem
        for tmp in self.study.runs_dir.glob(f".{stem}.*.tmp") if self.study.runs_dir.is_dir() else []:
            tmp.unlink(missing_ok=True)

    def _write_meta(self, meta: dict | None) -> None:
        """Add this seed and the columns seen so far to ``study.json`` (study lock held)."""
        seeds = set(int(s) for s in (meta or {}).get("seeds", [])) | {self.seed}
        recorded = list((meta or {}).get("metrics", []))
        conv = self._convergence
        columns = list(dict.fromkeys([*REFERENCE_COLUMNS, *recorded, *self._columns,
                                      *([conv["metric"]] if conv else [])]))
        features = [c for c in (meta or {}).get("features", REFERENCE_COLUMNS) if c not in self._undefined]
        source = dict((meta or {}).get("source") or {"kind": SOURCE_KIND})
        source.update(kind=SOURCE_KIND, include=_shown(self.include), exclude=_shown(self.exclude))
        new = external_meta(self.study.name, sorted(seeds), columns, source=source, convergence=conv,
                            step_unit=self.step_unit, features=features, metric_variant=self.metric_variant)
        if meta is not None and "metric_variant" not in meta and \
                {k: v for k, v in new.items() if k != "metric_variant"} == meta:
            new = meta  # a study from before variants is "reference": never rewritten for this alone
        if meta is None or new != meta:
            self.study.write_meta(new)
        self._meta_columns = set(columns)

    def _write_manifest(self, status: str, rows: int, last_step: int | None = None) -> None:
        store.atomic_write_json(self.study.run_manifest_path(self.seed), {
            "format": RUN_FORMAT, "seed": self.seed, "status": status, "rows": int(rows),
            "last_step": last_step, "source": SOURCE_KIND})

    # -- logging --------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Rows of this run so far (written or not)."""
        return len(self._kept) + len(self._rows)

    @property
    def last_step(self) -> int | None:
        """The step of the last row, or None before the first."""
        rows = self._rows or self._kept
        return int(rows[-1]["step"]) if rows else None

    def metrics(self, model) -> dict[str, float]:
        """The 14 reference columns of ``model`` now (an ``nn.Module`` or a state dict), without logging.

        In the recorder's ``metric_variant``.
        """
        if isinstance(model, nn.Module):
            tensors = module_tensors(model)
            signature = tuple((n, tuple(t.shape)) for n, t in tensors.items())
            if self._selection is None or self._selection.signature != signature:
                self._selection = select_module(model, self.include, self.exclude)
        else:
            tensors = check_state_dict(model, "the logged state dict")
            signature = tuple((n, tuple(t.shape)) for n, t in tensors.items())
            if self._selection is None or self._selection.signature != signature:
                self._selection = select_state_dict(tensors, self.include, self.exclude, self.heads,
                                                    "the logged state dict")
        return self._selection.metrics(tensors, self.metric_variant)

    def log(self, step: int, model, **values) -> dict[str, float]:
        """Record one row: the weight statistics of ``model`` at ``step`` and your ``values``.

        Parameters
        ----------
        step : int
            The training step (whole, >= 0, larger than the last logged one).
        model : nn.Module or mapping of str to torch.Tensor
            The model (or its state dict) with the weights of this step.
        **values : number
            Your metrics at this step (``val_acc=0.93``): Python or NumPy numbers or
            one-element tensors; None for a value you did not measure this time.

        Returns
        -------
        dict
            The row as recorded.
        """
        self._check_open()
        step = self._check_step(step)
        row = {k: _number(k, v) for k, v in values.items()}
        self._check_names(row)
        with torch.no_grad():
            stats = self.metrics(model)
        if self._selection.undefined != self._undefined:
            self._undefined = self._selection.undefined
            self._meta_columns = set()  # features shrink in study.json at the next write
        if self._kept and step <= int(self._kept[-1]["step"]):
            self._kept = [r for r in self._kept if int(r["step"]) < step]  # resumed: these are redone
        full = {"step": step, **stats, **row}
        self._at[step] = len(self._rows)
        self._rows.append(full)
        self._columns.update((k, None) for k in row)
        self._unsaved += 1
        if self._unsaved >= self.flush_every or time.monotonic() - self._last_write >= self.flush_seconds:
            self.flush()
        return dict(full)

    def add(self, step: int, **values) -> None:
        """Add (or replace) values of the row already logged at ``step``.

        For values measured after the weights were logged, e.g. an evaluation that runs after
        the training step: ``rec.log(step, model)`` then ``rec.add(step, val_acc=acc)``.
        """
        self._check_open()
        if step not in self._at:
            raise UserError(f"no row was logged at step {step}; log it with rec.log(step, model) first")
        row = {k: _number(k, v) for k, v in values.items()}
        self._check_names(row)
        self._rows[self._at[step]].update(row)
        self._columns.update((k, None) for k in row)
        self._unsaved += 1

    def _check_open(self) -> None:
        if self._closed:
            raise UserError(f"the Recorder of seed {self.seed} of study {self.study.name!r} is closed")

    def _check_step(self, step) -> int:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise UserError(f"step must be a whole number, got {step!r}")
        step = int(step)
        last = int(self._rows[-1]["step"]) if self._rows else None
        if step < 0 or (last is not None and step <= last):
            raise UserError(f"step {step} does not come after the last logged step {last}; steps must increase"
                            if last is not None else f"step must be >= 0, got {step}")
        return step

    @staticmethod
    def _check_names(row: Mapping[str, float]) -> None:
        clash = sorted(k for k in row if k in RESERVED)
        if clash:
            raise UserError(f"logged value name(s) {', '.join(clash)} are taken by the recorder's own columns; "
                            "rename them")

    # -- writing --------------------------------------------------------------------------

    def table(self) -> pd.DataFrame:
        """This run's rows so far: ``seed``, ``step``, the 14 columns, then your values."""
        rows = self._kept + self._rows
        columns = ["seed", "step", *REFERENCE_COLUMNS, *self._columns]
        frame = pd.DataFrame(rows, columns=columns[1:])
        frame.insert(0, "seed", np.full(len(frame), self.seed, dtype=np.int64))
        frame["step"] = frame["step"].astype(np.int64)
        for c in columns[2:]:
            frame[c] = frame[c].astype(np.float64)
        return frame

    def flush(self) -> None:
        """Write the table now (atomically) and note the row count in the run's manifest."""
        self._check_open()
        self._write(status="running")

    def _write(self, status: str) -> None:
        frame = self.table()
        if len(frame):
            store.atomic_write_parquet(self.study.run_table_path(self.seed), frame)
        wanted = set(self._columns) - self._meta_columns
        if wanted or not self._meta_columns:
            with locks.acquire(self.study.lock_path):
                self._write_meta(self.study.read_meta())
        last = int(frame["step"].iloc[-1]) if len(frame) else None
        self._write_manifest(status, rows=len(frame), last_step=last)
        self._unsaved = 0
        self._last_write = time.monotonic()

    def close(self, done: bool = True) -> None:
        """Write what is left, mark the run done (unless ``done=False``), and release the seed.

        A run with no rows is never marked done. Closing twice does nothing.
        """
        if self._closed:
            return
        try:
            if done and not self.rows:
                log.warning("seed %d of study %s: no row was logged; the run is left unfinished",
                            self.seed, self.study.name)
                done = False
            conv = self._convergence
            if done and conv and conv["metric"] not in self._columns:
                log.warning("seed %d of study %s: the convergence metric %r was never logged; `latent fit` "
                            "needs it (log it, or pass --metric)", self.seed, self.study.name, conv["metric"])
            self._write(status="done" if done else "running")
        finally:
            self._closed = True
            self._lease.release()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # an exception inside the with block leaves the run unfinished (partial), rows kept
        self.close(done=exc_type is None)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Recorder(study={self.study.name!r}, seed={self.seed}, rows={self.rows}, {state})"


def _rule(conv: Mapping) -> str:
    return f"{conv['metric']}{'>' if conv.get('direction', 'above') == 'above' else '<'}{conv['threshold']:g}"


def _shown(patterns) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str) or hasattr(patterns, "pattern"):
        patterns = [patterns]
    return [f"re:{p.pattern}" if hasattr(p, "pattern") else str(p) for p in patterns]


def _command() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    return ("Recorder in " + shlex.join(argv))[:200]
