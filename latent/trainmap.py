"""The training map: a networkx DiGraph of states and the transitions runs' Viterbi paths take,
and what each state means (:func:`state_phases`).

Nodes are canonical states; edges j → k (j ≠ k) exist only for transitions that at least one
run's Viterbi path takes (reference.md D, "pruning"); self-transitions are stored on the node
(``self_prob``, ``self_runs``). Attribute names follow docs/artifacts.md (``analysis.json`` ``map``
and ``phases``).
"""

from __future__ import annotations

import math
import re

import networkx as nx
import numpy as np

#: Performance columns written by ``latent collect``, in the order phases list them.
PERFORMANCE_COLUMNS = ("train_loss", "val_loss", "train_acc", "val_acc")
_PERFORMANCE_RE = re.compile(r"^(train|val|valid|validation|test|eval)_(loss|acc|accuracy|error|err|ppl|perplexity)$")
#: Checkpoints on each side of an entry that :func:`state_phases` averages.
ENTRY_WINDOW = 5
#: Percentiles of the steps of a state's checkpoints that give "where runs sit in it".
STEP_PERCENTILES = (10, 90)


PHASE_DEFINITION = {
    "metrics": "mean of each column over the checkpoints decoded (Viterbi) in the state, every run pooled",
    "steps": "min, 10th percentile, median, 90th percentile and max of the steps of those checkpoints "
             "(nearest-rank percentiles, so each is a checkpoint's step); p10-p90 is where runs sit in the state",
    "entry_change": "for every entry into the state (a run's path moving into it from another state), the mean "
                    "z value of each feature over the first min(window, stay) checkpoints in the state minus that "
                    "over the last min(window, stay) checkpoints of the stay before it; averaged over entries and "
                    "ranked by absolute value. A run that starts in a state does not enter it",
    "moving": "how fast each feature moves while runs stay in the state: the mean of z_t - z_(t-1) over every "
              "pair of consecutive checkpoints both decoded in the state (z units per checkpoint), ranked by "
              "absolute value; a state is a place where this is near 0 and a regime of change where it is not",
}


#: Fourier progress measures (collect/progress.py) that say what a state *is* in the mechanistic
#: story (memorisation, circuit formation, cleanup); shown after the performance columns
PROGRESS_PHASE_COLUMNS = ("restricted_loss", "excluded_loss", "embed_gini", "sum_sq_weights")


def performance_columns(columns, convergence_metric: str | None = None) -> list[str]:
    """The columns of a run table that say how well the network does, in a fixed order.

    ``train_loss, val_loss, train_acc, val_acc`` (what ``latent collect`` writes) where present,
    then any other column named ``<train|val|valid|validation|test|eval>_<loss|acc|accuracy|error|err|ppl|perplexity>``
    (sorted), then the convergence metric if it is none of these, then the Fourier progress
    measures :data:`PROGRESS_PHASE_COLUMNS` where the study recorded them. Columns that are absent
    are never invented.

    Parameters
    ----------
    columns : iterable of str
        The run table's columns.
    convergence_metric : str, optional
        The column the convergence rule reads.
    """
    columns = list(columns)
    present = set(columns)
    out = [c for c in PERFORMANCE_COLUMNS if c in present]
    out += sorted(c for c in present if c not in out and _PERFORMANCE_RE.match(c))
    if convergence_metric and convergence_metric in present and convergence_metric not in out:
        out.append(convergence_metric)
    out += [c for c in PROGRESS_PHASE_COLUMNS if c in present and c not in out]
    return out


def nearest_rank(values: np.ndarray, q: float) -> float:
    """The ``q``-th percentile by the nearest-rank rule.

    Parameters
    ----------
    values : array_like
    q : float
        Percent, 0 to 100.

    Returns
    -------
    float
        The smallest value with at least ``q`` % of the values at or below it: always one of the
        values (``q = 0`` gives the minimum); NaN for no values.
    """
    v = np.sort(np.asarray(values, dtype=float))
    if v.size == 0:
        return math.nan
    rank = max(int(math.ceil(q / 100.0 * v.size)), 1)
    return float(v[rank - 1])


def _stays(path: np.ndarray) -> list[tuple[int, int, int]]:
    """``(state, start, stop)`` for each maximal stretch of equal states (``stop`` exclusive)."""
    if len(path) == 0:
        return []
    change = np.flatnonzero(path[1:] != path[:-1]) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(path)]])
    return [(int(path[a]), int(a), int(b)) for a, b in zip(starts, stops)]


def entry_changes(paths, z_runs, window: int = ENTRY_WINDOW) -> dict[tuple[int, int], tuple[np.ndarray, int]]:
    """The change of every feature on each move from state j into state k, summed over the moves:
    ``{(j, k): (sum over moves of after − before, number of moves)}``, where *after* is the mean z
    over the first ``min(window, stay)`` checkpoints in k and *before* the mean over the last
    ``min(window, stay)`` checkpoints of the stay in j just before. The one definition of "change on
    entering" that the state table (per state, over every source) and the map's arrows (per edge)
    both report."""
    out: dict[tuple[int, int], tuple[np.ndarray, int]] = {}
    for path, z in zip(paths, z_runs):
        path, z = np.asarray(path), np.asarray(z, dtype=float)
        stays = _stays(path)
        for (j, a0, b0), (k, a1, b1) in zip(stays[:-1], stays[1:]):
            change = z[a1:min(a1 + window, b1)].mean(axis=0) - z[max(b0 - window, a0):b0].mean(axis=0)
            total, n = out.get((j, k), (0.0, 0))
            out[(j, k)] = (total + change, n + 1)
    return out


def state_phases(
    paths,
    steps,
    metrics: dict,
    z_runs,
    features: list[str],
    n_states: int,
    window: int = ENTRY_WINDOW,
) -> list[dict]:
    """What each state means: performance in it, when runs sit in it, what moves on entering it.

    Parameters
    ----------
    paths : list of ndarray (T_i,)
        Viterbi paths per run (canonical states).
    steps : list of ndarray (T_i,)
        The ``step`` of each decoded checkpoint, per run.
    metrics : dict
        ``{column: [ndarray (T_i,) per run]}``, the performance columns
        (:func:`performance_columns`) at the decoded checkpoints; NaN where a value is missing.
    z_runs : list of ndarray (T_i, d)
        The HMM features per run, in the fit's z units.
    features : list of str
    n_states : int
    window : int
        Checkpoints averaged on each side of an entry.

    Returns
    -------
    list of dict
        One per state, in state order:

        - ``state``; ``checkpoints`` (decoded checkpoints in it, all runs); ``runs`` (runs visiting it);
        - ``metrics``: ``{column: mean over the checkpoints in the state}`` (None when no value is finite);
        - ``steps``: ``{"min", "p10", "median", "p90", "max"}`` of the steps of those checkpoints,
          percentiles by the nearest-rank rule (:func:`nearest_rank`), so each is a checkpoint's
          step; None for an unvisited state;
        - ``entries``: how often a run enters the state from another one (a run that starts in it
          does not enter it); ``entered_from``: ``{"j": count}``;
        - ``entry_change``: every feature as ``{"feature", "change_z"}``, ranked by ``|change_z|``
          (ties: feature order), where ``change_z`` is the mean over entries of (mean z over the
          first ``min(window, stay)`` checkpoints in the state) − (mean z over the last
          ``min(window, stay)`` checkpoints of the stay just before); empty without entries;
        - ``moving``: every feature as ``{"feature", "rate_z"}``, ranked by ``|rate_z|``, the mean of
          z_t − z_(t−1) over consecutive checkpoints both in the state (z per checkpoint); empty
          when no run stays in it for two checkpoints.
    """
    features = list(features)
    d = len(features)
    K = int(n_states)
    paths = [np.asarray(p) for p in paths]
    steps = [np.asarray(s) for s in steps]
    all_states = np.concatenate(paths) if paths else np.empty(0, dtype=int)
    all_steps = np.concatenate(steps) if steps else np.empty(0)
    stacked = {name: np.concatenate([np.asarray(v, dtype=float) for v in runs]) if runs else np.empty(0)
               for name, runs in metrics.items()}
    sums = np.zeros((K, d))
    entries = np.zeros(K, dtype=int)
    sources: list[dict[int, int]] = [{} for _ in range(K)]
    inc_sums = np.zeros((K, d))
    inc_counts = np.zeros(K, dtype=int)
    for path, z in zip(paths, z_runs):
        z = np.asarray(z, dtype=float)
        if len(path) > 1:
            same = path[1:] == path[:-1]
            np.add.at(inc_sums, path[1:][same], (z[1:] - z[:-1])[same])
            np.add.at(inc_counts, path[1:][same], 1)
    for (j, k), (total, n) in entry_changes(paths, z_runs, window).items():
        sums[k] += total
        entries[k] += n
        sources[k][j] = sources[k].get(j, 0) + n
    out = []
    for k in range(K):
        mask = all_states == k
        n = int(mask.sum())
        row = {"state": k, "checkpoints": n, "runs": int(sum(1 for p in paths if np.any(p == k)))}
        means = {}
        for name, values in stacked.items():
            v = values[mask]
            v = v[np.isfinite(v)]
            means[name] = float(v.mean()) if v.size else None
        row["metrics"] = means
        if n:
            s = all_steps[mask]
            lo, hi = STEP_PERCENTILES
            row["steps"] = {"min": float(s.min()), f"p{lo}": nearest_rank(s, lo), "median": nearest_rank(s, 50),
                            f"p{hi}": nearest_rank(s, hi), "max": float(s.max())}
        else:
            row["steps"] = None
        row["entries"] = int(entries[k])
        row["entered_from"] = {str(j): c for j, c in sorted(sources[k].items())}
        if entries[k]:
            change = sums[k] / entries[k]
            order = sorted(range(d), key=lambda i: (-abs(change[i]), i))
            row["entry_change"] = [{"feature": features[i], "change_z": float(change[i])} for i in order]
        else:
            row["entry_change"] = []
        if inc_counts[k]:
            rate = inc_sums[k] / inc_counts[k]
            order = sorted(range(d), key=lambda i: (-abs(rate[i]), i))
            row["moving"] = [{"feature": features[i], "rate_z": float(rate[i])} for i in order]
        else:
            row["moving"] = []
        out.append(row)
    return out


def observed_transitions(paths) -> dict[tuple[int, int], set[int]]:
    """``{(j, k): {run positions taking j → k}}`` over consecutive pairs, self-pairs included."""
    out: dict[tuple[int, int], set[int]] = {}
    for i, path in enumerate(paths):
        path = np.asarray(path)
        for j, k in set(zip(path[:-1].tolist(), path[1:].tolist())):
            out.setdefault((j, k), set()).add(i)
    return out


def build_map(
    paths,
    raw_runs,
    params: dict,
    features: list[str],
    convergence: list,
    importance: list[dict] | None = None,
    top: int = 3,
    phases: list[dict] | None = None,
    boundaries: list[dict] | None = None,
) -> nx.DiGraph:
    """Build the training map.

    Parameters
    ----------
    paths : list of ndarray (T_i,)
        Viterbi paths per run (canonical states).
    raw_runs : list of ndarray (T_i, d)
        Features per run in original units.
    params : dict
        ``transmat`` (K, K) and ``means`` (K, d) in z units.
    features : list of str
    convergence : list
        Convergence step per run (None when it never converged).
    importance : list of dict, optional
        Output of :func:`latent.importance.transition_importance`; gives ``top_features``.
    top : int
        Features annotated per edge (and per node, for the entry changes).
    phases : list of dict, optional
        Output of :func:`state_phases`; gives each node ``metrics``, ``steps``, ``entries`` and
        ``entry_change`` (its first ``top`` features).
    boundaries : list of dict, optional
        ``transitions`` of :func:`latent.boundaries.boundary_sharpness`; gives each edge
        ``discrete`` (True: most of its boundaries are jumps; False: cuts through continuous
        change; None: too few to judge) and ``jumps``/``boundaries``.
    """
    transmat = np.asarray(params["transmat"])
    means_z = np.asarray(params["means"])
    K = transmat.shape[0]
    all_states = np.concatenate(paths)
    all_raw = np.concatenate(raw_runs)
    n_total = len(all_states)
    trans = observed_transitions(paths)
    imp = {(e["source"], e["target"]): e for e in (importance or [])}
    sharp = {(b["source"], b["target"]): b for b in (boundaries or [])}
    G = nx.DiGraph()
    for k in range(K):
        mask = all_states == k
        mean_raw = all_raw[mask].mean(axis=0) if mask.any() else None
        G.add_node(
            k,
            state=k,
            occupancy=float(mask.sum() / n_total),
            n_runs=int(sum(1 for p in paths if np.any(np.asarray(p) == k))),
            mean={f: (float(mean_raw[i]) if mean_raw is not None else None) for i, f in enumerate(features)},
            mean_z={f: float(means_z[k, i]) for i, f in enumerate(features)},
            self_prob=float(transmat[k, k]),
            self_runs=len(trans.get((k, k), ())),
        )
        if phases is not None:
            ph = phases[k]
            G.nodes[k].update(metrics=dict(ph["metrics"]), steps=None if ph["steps"] is None else dict(ph["steps"]),
                              entries=ph["entries"], entry_change=list(ph["entry_change"][:top]))
            if ph.get("name"):
                G.nodes[k]["name"] = ph["name"]
    for (j, k), runs in sorted(trans.items()):
        if j == k:
            continue
        conv = [convergence[i] for i in sorted(runs) if convergence[i] is not None]
        e = imp.get((j, k))
        G.add_edge(
            j,
            k,
            runs=len(runs),
            prob=float(transmat[j, k]),
            convergence_mean=float(np.mean(conv)) if conv else None,
            convergence_std=float(np.std(conv)) if conv else None,
            top_features=e["features"][:top] if e else [],
            discrete=sharp[(j, k)]["discrete"] if (j, k) in sharp else None,
            jumps=sharp[(j, k)]["jumps"] if (j, k) in sharp else None,
            boundaries=sharp[(j, k)]["boundaries"] if (j, k) in sharp else None,
        )
    return G


def map_to_data(G: nx.DiGraph) -> dict:
    """Node-link data (``edges`` key) for ``analysis.json``."""
    return nx.node_link_data(G, edges="edges")


def map_from_data(data: dict) -> nx.DiGraph:
    """The inverse of :func:`map_to_data`."""
    return nx.node_link_graph(data, directed=True, edges="edges")


# --------------------------------------------------------------------------- printing phases


def format_metric(name: str, value) -> str:
    """A performance value as the summary and the report print it.

    Parameters
    ----------
    name : str
        The column; names ending in ``acc`` or ``accuracy`` get two decimals.
    value : float or None

    Returns
    -------
    str
        ``"0.16"`` for an accuracy, three significant digits (``"0.00312"``) otherwise, ``"n/a"``
        when missing or not finite.
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if re.search(r"(acc|accuracy)$", name):
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_step(x) -> str:
    """A step as printed: ``"240"`` for 240.0, four significant digits otherwise, ``"n/a"`` if missing."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return str(int(x)) if float(x).is_integer() else f"{x:.4g}"


def _plural(unit: str) -> str:
    return unit if unit.endswith("s") else unit + "s"


def phase_text(row: dict, step_unit: str, top: int = 3) -> str:
    """One state's meaning in a line.

    Parameters
    ----------
    row : dict
        One entry of :func:`state_phases` (``analysis.json`` ``phases.states``).
    step_unit : str
        ``"epoch"`` or ``"step"``.
    top : int
        How many entry features to name (0: none, and nothing about entries).

    Returns
    -------
    str
        E.g. ``"train_acc 1.00, val_acc 0.16; epochs 240–920 (min–max 200–1400); entering it:
        l2 ↑1.30 z, …"``.
    """
    parts = []
    metrics = ", ".join(f"{k} {format_metric(k, v)}" for k, v in (row.get("metrics") or {}).items() if v is not None)
    if metrics:
        parts.append(metrics)
    st = row.get("steps")
    if st:
        lo, hi = (f"p{q}" for q in STEP_PERCENTILES)
        parts.append(f"{_plural(step_unit)} {format_step(st[lo])}–{format_step(st[hi])} "
                     f"(min–max {format_step(st['min'])}–{format_step(st['max'])})")
    else:
        parts.append("never visited")
    if top <= 0:
        return "; ".join(parts)
    changes = (row.get("entry_change") or [])[:top]
    if changes:
        parts.append("entering it: " + ", ".join(
            f"{c['feature']} {'↑' if c['change_z'] > 0 else '↓'}{abs(c['change_z']):.2f} z" for c in changes))
    elif st:
        parts.append("never entered (runs start in it)")
    moving = (row.get("moving") or [])[:min(top, 2)]
    if moving:
        parts.append("moving in it: " + ", ".join(
            f"{m['feature']} {'↑' if m['rate_z'] > 0 else '↓'}{_rate(abs(m['rate_z']))} z/checkpoint" for m in moving))
    return "; ".join(parts)


def _rate(value: float) -> str:
    return f"{value:.2g}" if value < 0.01 else f"{value:.3f}"


def phase_lines(phases: dict, step_unit: str) -> list[str]:
    """The summary's block on what each state means, as ``latent fit`` prints it.

    Parameters
    ----------
    phases : dict
        ``analysis.json`` ``phases`` (its ``states`` and ``window``).
    step_unit : str

    Returns
    -------
    list of str
        A header that defines the numbers, then one indented line per state (:func:`phase_text`).
    """
    lo, hi = STEP_PERCENTILES
    lines = [f"what each state means (means over the checkpoints decoded in it; {_plural(step_unit)}: "
             f"the {lo}th-{hi}th percentile of their steps, then min-max; entering it: the features that move "
             f"most, mean change over up to {phases.get('window', ENTRY_WINDOW)} checkpoints either side, z units; "
             "moving in it: the fastest mean change per checkpoint while runs stay in it):"]
    for row in phases["states"]:
        name = f" · {row['name']}" if row.get("name") else ""
        lines.append(f"  state {row['state']}{name}: {phase_text(row, step_unit)}")
    return lines
