"""Where each run of a collection starts: done, resumed from its saved state, or from scratch.

The rules a database would keep:

* A run is **done** only if its manifest says so *and* its table holds exactly the study's
  checkpoints (``study.json``'s ``schedule``). A done mark over a missing or short table is
  not believed: the run is trained again from scratch, with a warning.
* A run **resumes** from its resume state only if its table covers every checkpoint before
  the state's step. Rows after that step were written after the state and are recomputed;
  a gap before it (a deleted or replaced table) means the run restarts from step 0, with a
  warning, instead of finishing with a hole that nobody notices.
* A file that exists but cannot be read is never overwritten: that is an error naming every
  file of the run, to be removed together.

Training is deterministic, so a run trained again ends with exactly the rows it would have had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import pandas as pd

from latent.store import Study, rows_problem, schedule_steps

from .writer import read_state_step


@dataclass
class RunStart:
    """How one run of a collection begins.

    Attributes
    ----------
    seed : int
    done : bool
        Nothing to do.
    start : int
        Optimiser steps already taken (0: from scratch).
    rows : DataFrame or None
        The saved rows of the checkpoints before ``start``.
    restart : str or None
        Why a run with saved files is trained again from scratch (said as a warning).
    """

    seed: int
    done: bool = False
    start: int = 0
    rows: pd.DataFrame | None = None
    restart: str | None = None


def plan_run(study: Study, seed: int, schedule: Mapping[str, Any], step_unit: str,
             metrics: Iterable[str] = ()) -> RunStart:
    """Decide how run ``seed`` continues, from its manifest, table and resume state.

    Parameters
    ----------
    study : Study
    seed : int
    schedule : mapping
        ``study.json``'s ``schedule`` (``every``, ``last``, ``steps_per_epoch``).
    step_unit : {"epoch", "step"}
        What the table's ``step`` counts.
    metrics : iterable of str
        Columns every saved row must have.

    Raises
    ------
    UserError
        If the run's table, manifest or resume state exists but cannot be read; the message
        names every file of the run to remove together.
    """
    metrics = list(metrics)
    expected = schedule_steps(schedule)
    per_step = int(schedule["steps_per_epoch"]) if step_unit == "epoch" else 1
    total = expected[-1] * per_step
    table = study.run_table_path(seed)
    rel = table.relative_to(study.root)
    manifest = study.read_manifest(seed)
    frame = study.read_run(seed) if table.exists() else None

    if manifest is not None and manifest.get("status") == "done":
        problem = "is missing" if frame is None else rows_problem(frame, seed, expected, metrics)
        if problem is None:
            return RunStart(seed, done=True)
        return RunStart(seed, restart=f"it was marked done but {rel} {problem}")

    state = study.run_state_path(seed)
    if not state.exists():
        # No resume point: any rows on disk were saved before a state ever was and are
        # recomputed. A manifest means a state was saved once, so it went missing.
        lost = manifest is not None and frame is not None and len(frame) > 0
        return RunStart(seed, restart=f"its resume state {state.relative_to(study.root)} is missing" if lost else None)

    step, owner = read_state_step(state, study, seed)
    if owner is not None and owner != seed:
        return RunStart(seed, restart=f"its resume state {state.relative_to(study.root)} belongs to seed {owner}")
    if not 0 < step < total:
        return RunStart(seed, restart=f"its resume state is at step {step}, outside 1..{total - 1}")
    needed = [s for s in expected if s * per_step < step]
    if frame is None:
        return RunStart(seed, restart=f"{rel} is missing ({len(needed)} checkpoints were saved before "
                                      f"its resume state at step {step})")
    before = frame[frame["step"] * per_step < step].reset_index(drop=True)
    problem = rows_problem(before, seed, needed, metrics)
    if problem is not None:
        return RunStart(seed, restart=f"before its resume state (step {step}) {rel} {problem}")
    return RunStart(seed, start=step, rows=before if len(before) else None)
