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
* In a study with weight snapshots (``--snapshots N``), the run's snapshot file is held to the
  same rules: done needs exactly the study's snapshot steps in it, a resume needs every one before
  the state's step (later ones are dropped and recomputed), and otherwise the run is trained again.

Training is deterministic, so a run trained again ends with exactly the rows it would have had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import pandas as pd

from latent.snapshots import RunSnapshots, read_run_snapshots
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
    snapshots : RunSnapshots or None
        The saved weight snapshots of the checkpoints before ``start`` (studies with snapshots).
    """

    seed: int
    done: bool = False
    start: int = 0
    rows: pd.DataFrame | None = None
    restart: str | None = None
    snapshots: RunSnapshots | None = None


def _snapshots_problem(snaps: RunSnapshots | None, expected: list[int]) -> str | None:
    """Why a run's snapshots are not exactly those at ``expected`` (None if they are)."""
    if snaps is None:
        return "is missing"
    have = snaps.steps.tolist()
    if have == expected:
        return None
    missing = [s for s in expected if s not in set(have)]
    if missing:
        return f"lacks the snapshots at steps {', '.join(map(str, missing[:4]))}{', …' if len(missing) > 4 else ''}"
    return f"holds steps {', '.join(map(str, have[:6]))}{', …' if len(have) > 6 else ''}, not {expected}"


def plan_run(study: Study, seed: int, schedule: Mapping[str, Any], step_unit: str,
             metrics: Iterable[str] = (), snapshots: Mapping[str, Any] | None = None) -> RunStart:
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
    snapshots : mapping, optional
        ``study.json``'s ``snapshots`` (``steps``, in the step unit, and ``axes``), for a study that
        stores weight snapshots.

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
    snap_steps = [int(s) for s in snapshots["steps"]] if snapshots else []
    snap_path = study.run_snapshots_path(seed)
    snap_rel = snap_path.relative_to(study.root)

    def saved_snapshots() -> RunSnapshots | None:
        # an unreadable file is never overwritten: one line naming every file of the run
        if not snap_path.exists():
            return None
        return read_run_snapshots(snap_path, seed, hint=study.remove_hint(seed), axes=snapshots.get("axes"))

    if manifest is not None and manifest.get("status") == "done":
        problem = "is missing" if frame is None else rows_problem(frame, seed, expected, metrics)
        if problem is None and snap_steps:
            problem = _snapshots_problem(saved_snapshots(), snap_steps)
            rel = snap_rel
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
    kept = None
    if snap_steps:
        saved = saved_snapshots()
        kept = None if saved is None else saved.before(-(-step // per_step))  # steps whose weights precede the state
        problem = _snapshots_problem(kept, [s for s in snap_steps if s * per_step < step])
        if problem is not None:
            return RunStart(seed, restart=f"before its resume state (step {step}) {snap_rel} {problem}")
    return RunStart(seed, start=step, rows=before if len(before) else None, snapshots=kept)
