"""Short descriptive names for fitted states, read off each state's own evidence, and the map's story.

A state's number says nothing; its columns usually say a lot. :func:`name_states` gives each state
a name by a fixed rule over the phases block of ``analysis.json`` (:func:`latent.trainmap.state_phases`:
mean performance in the state, how fast the HMM features move in it) and the convergence rule:

1. **generalised**: the convergence metric's mean in the state passes the threshold (e.g.
   ``val_acc`` > 0.9); **cleanup** instead when the fit has the progress measures and the sum of
   squared weights falls inside the state (Nanda et al.'s last phase);
2. **fitting**: otherwise, when the study records ``train_acc`` and its mean in the state is below
   0.99 (the training set is not fit yet);
3. otherwise: **circuit forming** when the fit has the progress measures and excluded loss rises
   inside the state; else, by how far the convergence metric has come from where runs start (the
   lowest state mean, or the highest for a metric that must fall) toward the threshold: less than
   a fifth of the way, **memorised** when ``train_acc`` says the training set is fit, **not
   generalised** when the study does not record it; further, **generalising**;
4. states with no decoded checkpoint are **unvisited**; states that share a name get letters in
   the order runs sit in them (median step): ``memorised a``, ``memorised b``.

The names are labels for reading, not findings: they say where a state's averages sit, and a state
named "memorised" in one fit and another in a second fit need not be the same stretch of training.
tests/test_phase_names.py checks the rule on planted phase blocks.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

#: the rule, in words, as ``analysis.json`` records it (``phases.naming``)
NAMING_RULE = (
    "generalised: the convergence metric's mean in the state passes the threshold (cleanup instead when the "
    "progress measures show the sum of squared weights falling in it); fitting: otherwise, train_acc below 0.99; "
    "otherwise circuit forming when the progress measures show excluded loss rising in it, else by how far the "
    "convergence metric has come from the states' lowest mean toward the threshold: under a fifth of the way "
    "memorised (train_acc at least 0.99) or not generalised (no train_acc recorded), further generalising; "
    "unvisited: no checkpoint decoded in it; shared names get letters a, b, ... by median step"
)

TRAIN_FIT = 0.99
#: share of the way from where runs start to the threshold below which a state has not generalised
MEMORISED_BELOW = 0.2


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _rate(row: Mapping, feature: str) -> float | None:
    for m in row.get("moving") or []:
        if m.get("feature") == feature and _finite(m.get("rate_z")):
            return float(m["rate_z"])
    return None


def _progress_toward(value: float, start: float, threshold: float) -> float:
    """How far ``value`` has come from ``start`` toward ``threshold``: 0 at the start, 1 at it."""
    span = threshold - start
    return 1.0 if span == 0 else (value - start) / span


def start_level(states: Sequence[Mapping], convergence: Mapping) -> float | None:
    """Where runs start on the convergence metric: the lowest state mean (the highest for a metric
    that must fall below its threshold); None when no state has it."""
    metric = convergence.get("metric", "val_acc")
    values = [float(r["metrics"][metric]) for r in states
              if r.get("checkpoints") and _finite((r.get("metrics") or {}).get(metric))]
    if not values:
        return None
    return min(values) if convergence.get("direction", "above") == "above" else max(values)


def name_state(row: Mapping, convergence: Mapping, progress: bool = False, start: float | None = None) -> str:
    """The name of one state by the module's rule (before letters are added).

    Parameters
    ----------
    row : mapping
        One entry of ``analysis.json`` ``phases.states`` (``metrics``, ``checkpoints``, ``moving``).
    convergence : mapping
        ``metric``, ``threshold`` and ``direction`` (``"above"`` or ``"below"``).
    progress : bool
        Whether the fit's features include the progress measures (``excluded_loss``,
        ``sum_sq_weights``).
    start : float, optional
        Where runs start on the convergence metric (:func:`start_level`); default: this state's
        own value, which makes it "memorised" (or "not generalised") unless it passes the threshold.
    """
    if not row.get("checkpoints"):
        return "unvisited"
    metrics = row.get("metrics") or {}
    metric, threshold = convergence.get("metric", "val_acc"), convergence.get("threshold")
    direction = convergence.get("direction", "above")
    value = metrics.get(metric)
    if _finite(value) and _finite(threshold):
        reached = value > threshold if direction == "above" else value < threshold
        if reached:
            falling = _rate(row, "sum_sq_weights")
            return "cleanup" if progress and falling is not None and falling < 0 else "generalised"
    train_acc = metrics.get("train_acc")
    if _finite(train_acc) and train_acc < TRAIN_FIT:
        return "fitting"
    rising = _rate(row, "excluded_loss")
    if progress and rising is not None and rising > 0:
        return "circuit forming"
    knows_train = _finite(train_acc)
    if _finite(value) and _finite(threshold):
        base = float(value) if start is None else float(start)
        if _progress_toward(float(value), base, float(threshold)) >= MEMORISED_BELOW:
            return "generalising"
    return "memorised" if knows_train else "not generalised"


def name_states(states: Sequence[Mapping], convergence: Mapping, progress: bool = False) -> list[str]:
    """Names for every state of a phases block, in its order, with letters where names repeat.

    Parameters
    ----------
    states : sequence of mapping
        ``analysis.json`` ``phases.states``.
    convergence, progress
        As for :func:`name_state`.

    Returns
    -------
    list of str
    """
    start = start_level(states, convergence)
    base = [name_state(r, convergence, progress, start) for r in states]
    out = list(base)
    for name in set(base):
        idx = [i for i, b in enumerate(base) if b == name]
        if len(idx) < 2 or name == "unvisited":
            continue
        order = sorted(idx, key=lambda i: ((states[i].get("steps") or {}).get("median", math.inf), i))
        for letter, i in zip("abcdefghijklmnopqrstuvwxyz", order):
            out[i] = f"{name} {letter}"
    return out


def _fmt_step(x) -> str:
    return f"{x:,.0f}" if _finite(x) else "?"


def map_story(states: Sequence[Mapping], names: Sequence[str], n_runs: int, step_unit: str,
              convergence: Mapping, median_convergence: float | None, detours: Sequence[Mapping] = ()) -> str:
    """One paragraph that tells the map in words, from the states' own numbers.

    Every visited state, in the order runs sit in them (median step), each with its name, the runs
    visiting it (states on different branches follow each other here too: the counts say which
    runs take them) and where they sit in it (10th-90th percentile of its steps); then when runs
    converge, and the detours with their delays.
    """
    visited = [(r, n) for r, n in zip(states, names) if r.get("checkpoints")]
    visited.sort(key=lambda rn: ((rn[0].get("steps") or {}).get("median", math.inf), rn[0]["state"]))
    parts = []
    for r, n in visited:
        st = r.get("steps") or {}
        where = f"{step_unit}s {_fmt_step(st.get('p10'))}–{_fmt_step(st.get('p90'))}"
        parts.append(f"state {r['state']} · {n} ({r.get('runs', 0)}/{n_runs} runs, {where})")
    text = ("The states in the order runs sit in them (median step): " + "; ".join(parts) + "."
            if parts else "No state was decoded.")
    rel = ">" if convergence.get("direction", "above") == "above" else "<"
    if median_convergence is not None:
        text += (f" Runs reach {convergence.get('metric', '?')} {rel} {convergence.get('threshold', '?')} at a median "
                 f"{step_unit} {_fmt_step(median_convergence)}.")
    for d in detours:
        k = int(d["state"])
        delay = d.get("delay")
        text += (f" State {k} · {names[k]} is a detour: the runs visiting it converge "
                 + (f"{_fmt_step(abs(delay))} {step_unit}s {'later' if delay > 0 else 'earlier'}" if _finite(delay)
                    else "later") + " than those skipping it.")
    if not detours:
        text += " No state delays convergence (no detour)."
    return text
