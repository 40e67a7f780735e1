"""One plot function per report figure: ``plot_*(ax, fit, ...) -> dict``.

Each function draws onto a matplotlib ``Axes`` you give it, from a loaded
:class:`latent.reports.artifacts.FitArtifacts`, and returns a small dict describing what it drew
(nodes, edges, lines per seed, highlighted states, …) so notebooks and tests can inspect it.
Nothing here calls pyplot or refits anything; state ``k`` has colour
``latent.reports.palette.state_color(k)`` in every figure.

Example (in a notebook)::

    import matplotlib.pyplot as plt
    from latent.reports import load_fit, figures

    fit = load_fit(store="data", study="modadd")
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4))
    figures.plot_training_map(a, fit)
    figures.plot_trajectories(b, fit, "val_acc")
    figures.plot_delays(c, fit)             # the detour test per state
    fig.legend(handles=figures.state_legend_handles(fit), loc="lower center", ncol=6)
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pandas as pd

from .artifacts import FitArtifacts
from .palette import DIVERGING_CMAP, MARK, UNDECODED, state_color, state_rgba

DEFAULT_METRICS = ("l2", "train_acc", "val_acc")

#: Display names and units of the reference metric columns.
METRIC_LABELS = {
    "l1": ("L1 norm", "sum |w|, mean over matrices"),
    "l2": ("L2 norm", "Frobenius, mean over matrices"),
    "trace": ("trace", "diagonal sum, mean over matrices"),
    "spectral": ("spectral norm λmax", "largest singular value"),
    "code_sparsity": ("code sparsity", "L1/L2 ratio"),
    "computational_sparsity": ("computational sparsity", "trace / λmax"),
    "mean_lambda": ("mean singular value μ(λ)", "weight units"),
    "variance_lambda": ("singular-value variance σ²(λ)", "weight units²"),
    "mean_w": ("mean weight μ(w)", "weight units"),
    "median_w": ("median weight", "weight units"),
    "var_w": ("weight variance σ²(w)", "weight units²"),
    "mean_b": ("mean bias μ(b)", "bias units"),
    "median_b": ("median bias", "bias units"),
    "var_b": ("bias variance σ²(b)", "bias units²"),
    "train_loss": ("training loss", "cross-entropy, nats"),
    "val_loss": ("validation loss", "cross-entropy, nats"),
    "train_acc": ("training accuracy", "fraction correct"),
    "val_acc": ("validation accuracy", "fraction correct"),
}


#: Formerly compact symbols for the map's edge labels ("L1/L2" for code_sparsity read as two norms).
#: Every figure and table now names a column by its name (:func:`feature_name`); kept for old imports.
SYMBOLS = {name: name for name in METRIC_LABELS}


def feature_name(name: str) -> str:
    """The one name a feature or metric has in every figure and table: its column name.

    It is the name ``--features`` takes and ``analysis.json`` uses, so the map's arrow labels, the
    heatmap, the tables and ``latent fit``'s summary all agree (a symbol such as ``L1/L2`` for
    ``code_sparsity`` read as two norms). :func:`feature_description` says what it measures.
    """
    return str(name)


def feature_description(name: str) -> str:
    """What a column measures, e.g. ``"code sparsity: L1/L2 ratio"`` for ``code_sparsity``;
    ``""`` for a column we know nothing about."""
    if name not in METRIC_LABELS:
        return ""
    label, unit = METRIC_LABELS[name]
    return f"{label}: {unit}"


def symbol(name: str) -> str:
    """The name of a feature on the training map: :func:`feature_name` (one naming everywhere)."""
    return feature_name(name)


def metric_label(name: str, with_unit: bool = True) -> str:
    """An axis label for a column: ``"l2 (L2 norm: Frobenius, mean over matrices)"`` for ``"l2"``
    (``with_unit=False``: ``"l2 (L2 norm)"``); the name itself if unknown."""
    if name not in METRIC_LABELS:
        return feature_name(name)
    label, unit = METRIC_LABELS[name]
    return f"{feature_name(name)} ({label}: {unit})" if with_unit else f"{feature_name(name)} ({label})"


def short_feature(name: str) -> str:
    """The name of a feature in the heatmap and tables: :func:`feature_name` (one naming everywhere)."""
    return feature_name(name)


# --------------------------------------------------------------------------- fitting into small axes


def axes_points(ax, decorated: bool = True) -> tuple[float, float]:
    """Width and height of ``ax`` in points (1/72 in), from its position in the figure.

    The plot functions use it to scale nodes, fonts and labels to the axes they are given. With
    ``decorated=False`` (an axes without ticks or labels, such as the training map) in a
    constrained layout, the axes will fill nearly all of its grid cell, so the cell's size is
    returned instead of the default subplot position (which leaves room for tick labels).
    """
    fig = ax.figure
    pos = ax.get_position()
    w, h = pos.width * fig.get_figwidth() * 72.0, pos.height * fig.get_figheight() * 72.0
    engine = fig.get_layout_engine()
    spec = ax.get_subplotspec() if hasattr(ax, "get_subplotspec") else None
    if not decorated and spec is not None and engine is not None and type(engine).__name__ == "ConstrainedLayoutEngine":
        nrows, ncols = spec.get_gridspec().get_geometry()
        w = fig.get_figwidth() * 72.0 * len(spec.colspan) / ncols - 12.0
        h = fig.get_figheight() * 72.0 * len(spec.rowspan) / nrows - 12.0
    return w, h


def wrap_text(text: str, width_pt: float, fontsize: float) -> str:
    """``text`` wrapped, line by line, to fit ``width_pt`` points at ``fontsize``.

    Parameters
    ----------
    text : str
    width_pt : float
        Width available, in points.
    fontsize : float
        Font size in points; a character is taken as 0.55 em wide.

    Returns
    -------
    str
        The text with newlines inserted at word boundaries (never fewer than 12 characters a line).
    """
    import textwrap

    chars = max(int(width_pt / (0.55 * fontsize)), 12)
    return "\n".join(textwrap.fill(line, chars, break_on_hyphens=False) or line for line in text.split("\n"))


def _title(ax, text: str, fontsize: float = 9.5) -> None:
    """A title wrapped to the axes' width, smaller in small axes."""
    w, _ = axes_points(ax)
    size = fontsize if w >= 300 else max(fontsize - 1.5, 7.0)
    ax.set_title(wrap_text(text, w, size), fontsize=size)


def _below_legend(ax, handles, fontsize: float, ncol: int) -> object:
    """A legend under the axes, below the tick labels and the x label (whatever their size)."""
    label = ax.xaxis.label
    lines = label.get_text().count("\n") + 1 if label.get_text() else 0
    ticks = ax.get_xticklabels()
    tick_lines = max([t.get_text().count("\n") + 1 for t in ticks if t.get_text()] or [1])
    tick_size = ticks[0].get_fontsize() if ticks else 9
    below_pt = 1.3 * tick_size * tick_lines + 1.25 * label.get_fontsize() * lines + 10
    return ax.legend(handles=handles, fontsize=fontsize, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                     borderaxespad=below_pt / fontsize, ncol=ncol, frameon=False)


def _side_legend(ax, handles, fontsize: float = 8) -> object:
    """A legend right of the axes when they are wide, below them (under the x label) when narrow."""
    w, _ = axes_points(ax)
    if w >= 330:
        return ax.legend(handles=handles, fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                         frameon=False)
    size = min(fontsize, 6.5)
    widest = max(len(line) for h in handles for line in (h.get_label() or "").split("\n")) * 0.55 * size + 30
    return _below_legend(ax, handles, size, ncol=max(1, min(2, int(w // widest))))


def _state_ticks(ax, states, suffix=None) -> None:
    """``state k`` tick labels under bars, just ``k`` when each state has little room."""
    w, _ = axes_points(ax)
    per = w / max(len(states), 1)
    suffix = suffix or {}
    if per >= 55:
        labels = [f"state {s}" + suffix.get(s, "") for s in states]
        size = 9 if per >= 75 else 7.5
    else:
        labels = [f"{s}" + ("*" if suffix.get(s) else "") for s in states]
        size = 8 if per >= 14 else 6
    ax.set_xticks(range(len(states)))
    ax.set_xticklabels(labels, fontsize=size)


def time_label(fit: FitArtifacts) -> str:
    unit = fit.step_unit
    return f"training time ({unit}s)" if not unit.endswith("s") else f"training time ({unit})"


def state_legend_handles(fit: FitArtifacts, undecoded: bool = False):
    """Legend handles (coloured patches) for every state, optionally plus "not decoded"."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=state_color(k), edgecolor="none",
                     label=f"state {k}" + (" (detour)" if k in fit.detour_states else ""))
               for k in range(fit.n_states)]
    if undecoded:
        handles.append(Patch(facecolor=UNDECODED, edgecolor="none", label="not decoded"))
    return handles


# --------------------------------------------------------------------------- model selection


def plot_model_selection(ax, fit: FitArtifacts) -> dict:
    """The criterion K was chosen by (``score``, lower is better) vs K, with ± SE bars.

    The primary curve is the selection table's ``score``, labelled with the criterion and the
    procedure (e.g. "5-fold CV BIC"); in cross-validation each K carries ± the standard error of
    its difference to the best K (the one-SE rule takes the smallest K within it). The other
    information criterion is drawn dashed and grey for comparison only. The chosen K is marked
    by a vertical line and a star, the runner-up by an open diamond; the title says how many
    folds choose K on their own held-out runs and whether K is fragile (its score within the
    restart spread of the runner-up's). K values where no restart succeeded are gaps.
    """
    from matplotlib.lines import Line2D

    sel = fit.selection
    k = sel["k"].to_numpy()
    chosen = fit.n_states
    score = sel["score"].to_numpy(dtype=float)
    se = sel["se"].to_numpy(dtype=float)
    label = fit.selection_label
    handles = []
    (score_line,) = ax.plot(k, score, "o-", color=MARK, lw=1.8, zorder=3, label=f"{label} (lower is better)")
    handles.append(score_line)
    bars = np.isfinite(se) & np.isfinite(score) & (se > 0)
    err = None
    if bars.any():
        err = ax.errorbar(k[bars], score[bars], yerr=se[bars], fmt="none", ecolor=MARK, capsize=4, lw=1.2,
                          zorder=3)
        handles.append(Line2D([], [], color=MARK, marker="|", ms=10, mew=1.2, ls="none",
                              label="± SE of the difference to the best K"))
    other = {"bic": "aic", "aic": "bic"}.get(fit.criterion, "bic")
    other_vals = sel[other].to_numpy(dtype=float)
    other_line = None
    if np.isfinite(other_vals).any() and not np.allclose(other_vals, score, equal_nan=True):
        (other_line,) = ax.plot(k, other_vals, "s--", color="#999999", lw=1.0, ms=4, zorder=2,
                                label=f"{other.upper()} (for comparison; not used to choose K)")
        handles.append(other_line)
    w_pt, h_pt = axes_points(ax)
    ax.set_xlabel("number of hidden states K")
    ax.set_ylabel(wrap_text(f"{label} (nats)", 0.75 * h_pt, 9))
    ax.set_xticks(k)
    chosen_line = ax.axvline(chosen, color="#D55E00", lw=2, alpha=0.8, zorder=1, label=f"chosen K = {chosen}")
    handles.append(chosen_line)
    row = sel[sel["k"] == chosen]
    chosen_score = float(row["score"].iloc[0]) if len(row) else math.nan
    if math.isfinite(chosen_score):
        ax.plot([chosen], [chosen_score], marker="*", ms=16, color="#D55E00", zorder=5)
    finite = np.isfinite(score)
    best_k = int(k[finite][np.argmin(score[finite])]) if finite.any() else None
    runner = fit.runner_up
    if runner is not None and runner in set(k.tolist()):
        r_score = float(sel.loc[sel["k"] == runner, "score"].iloc[0])
        if math.isfinite(r_score):
            (rmark,) = ax.plot([runner], [r_score], marker="D", ms=9, mfc="none", mec="#0072B2", mew=2,
                               ls="none", zorder=6, label=f"runner-up K = {runner}")
            handles.append(rmark)
    failed = [int(x) for x, v in zip(k, score) if not math.isfinite(v)]
    for x in failed:
        ax.text(x, 0.5, "no restart\nsucceeded", transform=ax.get_xaxis_transform(), ha="center", va="center",
                fontsize=8, color="#555555")
    if len(k):
        ax.set_xlim(float(k.min()) - 0.4, float(k.max()) + 0.4)

    folds_total = sum(fit.fold_choice.values())
    folds_agree = fit.fold_choice.get(chosen, 0)
    title = f"Model selection: K = {chosen} by {label}"
    if fit.selection_info.get("one_se") and fit.procedure == "cv" and best_k is not None and best_k != chosen:
        title += f" (one-SE rule; lowest score at K = {best_k})"
    notes = []
    if folds_total:
        notes.append(f"{folds_agree} of {folds_total} folds choose K = {chosen} on their own held-out runs")
    if fit.selection_info:
        notes.append(f"fragile: within the restart spread of K = {runner}" if fit.fragile else "not fragile")
    if failed:
        notes.append(f"no restart succeeded for K = {', '.join(map(str, failed))}")
    if notes:
        title += "\n" + "; ".join(notes)
    _title(ax, title)
    _below_legend(ax, handles, 8 if w_pt >= 300 else 6.5,
                  ncol=min(len(handles), 3 if w_pt >= 400 else 2 if w_pt >= 250 else 1))
    ax.grid(alpha=0.3)
    return {"k": k.tolist(), "score": score.tolist(), "se": se.tolist(),
            "errorbar_k": [int(x) for x in k[bars]], "errorbar": err,
            "bic": sel["bic"].tolist(), "aic": sel["aic"].tolist(),
            "loglik_mean": sel["loglik_mean"].tolist(), "loglik_std": sel["loglik_std"].tolist(),
            "chosen": chosen, "best_k": best_k, "runner_up": runner, "criterion": fit.criterion,
            "procedure": fit.procedure, "label": label, "fold_choice": dict(fit.fold_choice),
            "folds_agree": folds_agree, "folds_total": folds_total, "fragile": fit.fragile,
            "failed_k": failed, "title": title, "score_line": score_line, "other_line": other_line}


def selection_caption(fit: FitArtifacts, sentence: bool = True) -> str:
    """How K was chosen, fold agreement, fragility: ``"K = 6 was chosen by 5-fold CV BIC (…); 2 of 5
    folds choose K = 6 …"`` (``sentence=False``: ``"K = 6, chosen by …"``)."""
    label = fit.selection_label
    parts = [f"K = {fit.n_states} {'was chosen' if sentence else ', chosen'} by {label}".replace(" ,", ",")]
    if fit.procedure == "cv" and fit.selection_info.get("one_se"):
        parts[0] += " (the smallest K within one standard error of the best)"
    total = sum(fit.fold_choice.values())
    if total:
        parts.append(f"{fit.fold_choice.get(fit.n_states, 0)} of {total} folds choose K = {fit.n_states} "
                     "on their own held-out runs")
    if fit.runner_up is not None:
        parts.append(f"runner-up K = {fit.runner_up}")
    if fit.selection_info:
        parts.append("fragile (its score is within the restart spread of the runner-up's)" if fit.fragile
                     else "not fragile")
    return "; ".join(parts)


# --------------------------------------------------------------------------- training map


def main_route(fit: FitArtifacts) -> list[int]:
    """The backbone of the map: a greedy heaviest path through the observed transitions.

    Starts at the state most runs start in and repeatedly follows the out-edge taken by the most
    runs (ties: the target visited by more runs, then the lower state) to a state not yet on the
    path.
    """
    g = fit.graph
    firsts = Counter(int(st) for st in fit.paths.groupby("seed", sort=True)["state"].first())
    if not firsts:
        return []
    node = max(firsts.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    route = [node]
    while True:
        options = [(int(b), d) for _, b, d in g.out_edges(node, data=True) if int(b) not in route]
        if not options:
            return route
        node = max(options, key=lambda o: (o[1].get("runs") or 0, g.nodes[o[0]].get("n_runs") or 0, -o[0]))[0]
        route.append(node)


def map_layout(fit: FitArtifacts) -> dict[int, tuple[float, float]]:
    """Node positions: x = canonical state index (left to right), y = lane.

    States on the backbone (:func:`main_route`) sit on lane 0; the others alternate above and
    below (+1, -1, +2, …) in state order, so forks separate vertically.
    """
    route = set(main_route(fit))
    nodes = sorted(int(n) for n in fit.graph.nodes)
    lanes = [1, -1, 2, -2, 3, -3]
    pos, i = {}, 0
    for n in nodes:
        if n in route:
            pos[n] = (float(n), 0.0)
        else:
            pos[n] = (float(n), float(lanes[i % len(lanes)] * (1 + i // len(lanes))))
            i += 1
    return pos


def _fmt_change(change: float) -> str:
    if change is None or not math.isfinite(change):
        return ""
    return f"{'↑' if change > 0 else '↓'}{abs(change):.2f}"


def map_metrics(fit: FitArtifacts) -> list[str]:
    """The performance columns the map's nodes show.

    Parameters
    ----------
    fit : FitArtifacts

    Returns
    -------
    list of str
        The convergence metric, after its training counterpart when the run tables have one
        (``["train_acc", "val_acc"]``); empty when the phases have neither.
    """
    have = list(fit.phases.get("metrics") or [])
    metric = fit.analysis["convergence"].get("metric")
    out = []
    if metric and metric.startswith("val_") and "train_" + metric[4:] in have:
        out.append("train_" + metric[4:])
    if metric in have:
        out.append(metric)
    return out


def node_text(fit: FitArtifacts, state: int, n_total: int, metrics=None) -> str:
    """What the map writes beside a node.

    Parameters
    ----------
    fit : FitArtifacts
    state : int
    n_total : int
        Runs in the fit (the denominator of "runs visiting").
    metrics : list of str, optional
        Performance columns to show (default :func:`map_metrics`).

    Returns
    -------
    str
        Lines: time share and runs visiting, where runs sit in the state (p10–p90 of its
        checkpoints' steps), then one line per metric with its mean in the state.
    """
    from latent.trainmap import format_metric, format_step

    g = fit.graph
    attrs = g.nodes[state] if state in g.nodes else {}
    occ = float(attrs.get("occupancy") or 0.0)
    lines = [f"{occ:.0%} of time, {attrs.get('n_runs', '?')}/{n_total} runs"]
    name = fit.state_names.get(int(state))
    if name:
        lines.insert(0, name)
    rows = {int(r["state"]): r for r in fit.phases.get("states") or []}
    row = rows.get(int(state))
    if row:
        st = row.get("steps")
        if st:
            unit = fit.step_unit if fit.step_unit.endswith("s") else fit.step_unit + "s"
            lines.append(f"{unit} {format_step(st.get('p10'))}–{format_step(st.get('p90'))}")
        vals = row.get("metrics") or {}
        for m in (map_metrics(fit) if metrics is None else metrics):
            if vals.get(m) is not None:
                lines.append(f"{feature_name(m)} {format_metric(m, vals[m])}")
    return "\n".join(lines)


def plot_training_map(ax, fit: FitArtifacts, max_size: float = 2600.0, min_size: float = 350.0) -> dict:
    """The training map: one node per state, one arrow per observed transition.

    Node area follows occupancy (fraction of all decoded checkpoints), arrow width the number
    of runs that take the edge. Beside each node (below it on the backbone, outward on other
    lanes): its share of the checkpoints and the runs visiting it, where runs sit in it (10th–90th
    percentile of its checkpoints' steps) and the mean of the convergence metric (and its
    training counterpart) in it. Each arrow is labelled with the runs taking it and the feature
    with the highest *importance* for the transition (the filtered-posterior gradient,
    docs/fit.md), with the change of its state mean in z units; that is not necessarily the
    feature that changes most. :func:`transition_table` has the top three features, the
    probability and the convergence of the runs taking it. Detour states get a dashed black ring.

    One unit is the same length across and up (equal aspect), so arcs and their labels agree.
    Everything scales with the width of the axes: node sizes (``max_size``, ``min_size``: the
    largest and smallest node areas in points² when there is room), the gap between lanes (just
    enough for the node texts), fonts, and which labels are drawn: in small axes the node texts,
    then the edge features, are left out (``info["node_labels"]``, ``info["edge_labels"]`` say
    what was drawn). ``info["height_pt"]`` is the height the map needs at this width (without
    title and legend), so a caller can size its figure to fit.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    g = fit.graph
    n_total = len(fit.seeds)
    lanes = map_layout(fit)
    nodes = sorted(int(n) for n in g.nodes)
    occ = {n: float(g.nodes[n].get("occupancy") or 0.0) for n in nodes}
    top = max(occ.values()) if occ and max(occ.values()) > 0 else 1.0
    highlighted = [n for n in nodes if n in fit.detour_states]
    xs0 = [lanes[n][0] for n in nodes]
    lane_of = {n: lanes[n][1] for n in nodes}
    lane_lo, lane_hi = min(list(lane_of.values()) + [0.0]), max(list(lane_of.values()) + [0.0])

    # scale: points per unit from the width; then how much room the labels need
    w_pt, h_pt = axes_points(ax, decorated=False)
    h_eff = max(h_pt - 36.0, 20.0)  # a constrained layout takes about this for the title and legend
    x_span = (max(xs0) - min(xs0) + 1.4) if xs0 else 1.4
    px = 0.92 * w_pt / x_span
    n_metrics = len(map_metrics(fit)) + (1 if fit.state_names else 0)  # the name is one more line

    def plan(px, labels):
        d = min(math.sqrt(max_size), 0.5 * px)
        size = 7.5 if px >= 90 else 6.5
        text_pt = (2 + n_metrics) * 1.22 * size + 6 if labels else 0.0
        ring = 0.5 * d * math.sqrt(1.6) + 3
        gap_pt = max(px, d + text_pt + 14)  # between lanes
        outward = max(ring, 0.5 * d + text_pt) + 4
        height = (lane_hi - lane_lo) * gap_pt + 2 * outward
        return d, size, text_pt, gap_pt, outward, height

    full_labels = False
    if px >= 70:  # node texts when they fit, with nodes (and the map) shrunk down to 70 pt per state if need be
        for trial in np.linspace(px, 70.0, 8):
            if plan(trial, True)[-1] <= h_eff:
                px, full_labels = float(trial), True
                break
    d_max, label_size, text_pt, gap_pt, outward, height = plan(px, full_labels)
    if height > h_eff:  # too short even without node texts: shrink everything to the height
        px *= h_eff / height
        d_max, label_size, text_pt, gap_pt, outward, height = plan(px, False)
    gap = gap_pt / px  # lane spacing in data units (x: one unit per state)
    pos = {n: (float(lanes[n][0]), float(lanes[n][1]) * gap) for n in nodes}
    xs = [pos[n][0] for n in nodes]
    ys = [pos[n][1] for n in nodes]
    edge_mode = "full" if px >= 60 else ("runs" if px >= 30 else "none")
    big, small = d_max ** 2, d_max ** 2 * min_size / max_size
    sizes = {n: small + (big - small) * occ[n] / top for n in nodes}
    number_size = float(np.clip(0.45 * math.sqrt(min(sizes.values())) + 2, 6.0, 11.0)) if sizes else 9.0

    colors = {n: state_color(n) for n in nodes}
    node_coll = ax.scatter(xs, ys, s=[sizes[n] for n in nodes], c=[colors[n] for n in nodes],
                           edgecolors="white", linewidths=1.5, zorder=3)
    ring = None
    if highlighted:
        ring = ax.scatter([pos[n][0] for n in highlighted], [pos[n][1] for n in highlighted],
                          s=[sizes[n] * 1.6 for n in highlighted], facecolors="none", edgecolors=MARK,
                          linewidths=2.0 if d_max >= 25 else 1.2, linestyles="--", zorder=2, label="detour state")
    node_labels = {}
    above = {n: lane_of[n] > 0 for n in nodes}  # texts go outward: above upper lanes, below the rest
    for n in nodes:
        x, y = pos[n]
        ax.annotate(f"{n}", (x, y), ha="center", va="center", fontsize=number_size, fontweight="bold",
                    color="white" if n % 17 in (0, 3, 7, 13, 14) else "black", zorder=4)
        if full_labels:
            text = node_text(fit, n, n_total)
            node_labels[n] = text
            off = math.sqrt(sizes[n] * (1.6 if n in highlighted else 1.0)) / 2 + 3
            ax.annotate(text, (x, y), xytext=(0, off if above[n] else -off), textcoords="offset points",
                        ha="center", va="bottom" if above[n] else "top", fontsize=label_size, color="#333333",
                        zorder=6, bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.75))

    edges, widths, labels, arrows, peaks = [], {}, {}, [], []
    n_smooth = 0
    max_runs = max([d.get("runs") or 0 for _, _, d in g.edges(data=True)] + [1])
    width_scale = 1.0 if d_max >= 30 else 0.5
    for a, b, d in sorted(g.edges(data=True)):
        a, b = int(a), int(b)
        if a == b:
            continue
        runs = int(d.get("runs") or 0)
        width = (0.8 + 5.0 * runs / max_runs) * width_scale
        (x1, y1), (x2, y2) = pos[a], pos[b]
        dist = math.hypot(x2 - x1, y2 - y1) or 1.0
        rad = 0.0
        if g.has_edge(b, a):  # both directions observed: bend each to its own side
            rad = min(0.4, 0.5 / dist)
        elif y1 == y2 and abs(x2 - x1) > 1:  # a skip along a lane: arc away from the node texts
            # arc3 puts the control point at mid + rad * (dy, -dx): rad > 0 bends a left-to-right arc down
            up = lane_of[a] <= 0  # texts sit below the backbone and lower lanes, above upper lanes
            rad = 0.3 * (-1 if up else 1) * (1 if x2 > x1 else -1)
        smooth = d.get("discrete") is False  # a cut through continuous change, not a jump
        n_smooth += smooth
        arrow = FancyArrowPatch((x1, y1), (x2, y2), arrowstyle="-|>", mutation_scale=(12 + 2 * width) * width_scale,
                                lw=width, color="#999999" if smooth else "#444444", alpha=0.85,
                                linestyle=(0, (1.5, 1.5)) if smooth else "-",
                                connectionstyle=f"arc3,rad={rad}",
                                shrinkA=math.sqrt(sizes[a]) / 2 + 2, shrinkB=math.sqrt(sizes[b]) / 2 + 2,
                                zorder=1)
        ax.add_patch(arrow)
        arrows.append(arrow)
        # the arc's midpoint (equal aspect: data and display agree up to scale)
        mx, my = (x1 + x2) / 2 + 0.5 * rad * (y2 - y1), (y1 + y2) / 2 - 0.5 * rad * (x2 - x1)
        peaks.append(my)
        tops = d.get("top_features") or []
        text = [f"{runs}/{n_total} runs" if edge_mode == "full" else f"{runs}/{n_total}"]
        if tops and edge_mode == "full":
            t = tops[0]
            text.append(f"{feature_name(t['feature'])} {_fmt_change(t.get('change_z'))} z")
        label = "\n".join(text)
        if edge_mode != "none":
            straight = rad == 0.0  # put the label just above a straight arrow so the arrow stays visible
            ax.annotate(label, (mx, my), xytext=(0, 4 if straight else 0), textcoords="offset points",
                        ha="center", va="bottom" if straight else "center", fontsize=label_size, zorder=5,
                        bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="#999999", alpha=0.9))
            labels[(a, b)] = label
        edges.append((a, b))
        widths[(a, b)] = width

    # tight limits: room for the rings, the node texts and the arcs, nothing more
    margin = outward / px
    edge_pad = (2 * 1.22 * label_size + 6) / px if edge_mode != "none" else 0.1
    y_top = max([max(ys) + margin] + [p + edge_pad / 2 for p in peaks])
    y_bottom = min([min(ys) - margin] + [p - edge_pad / 2 for p in peaks])
    ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    ax.set_ylim(y_bottom, y_top)
    ax.set_aspect("equal", adjustable="box")
    ax.set_axis_off()
    _title(ax, f"Training map: {len(nodes)} states, {len(edges)} observed transitions, {n_total} runs")
    handles = []
    if ring is not None:
        handles.append(Line2D([], [], marker="o", ms=9, mfc="none", mec=MARK, mew=1.5, ls="none",
                              label="detour state (dashed ring)"))
    handles.append(Line2D([], [], color="#444444", lw=3, label="arrow width ∝ runs taking it"))
    if n_smooth:
        handles.append(Line2D([], [], color="#999999", lw=2, ls=(0, (1.5, 1.5)),
                              label="dotted: no jump (a cut through continuous change)"))
    if h_pt >= 120:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles),
                  fontsize=7.5 if w_pt >= 300 else 6.5, frameon=False)
    return {"nodes": nodes, "pos": pos, "node_sizes": sizes, "node_colors": colors, "edges": edges,
            "edge_widths": widths, "edge_labels": labels, "node_labels": node_labels, "highlighted": highlighted,
            "node_collection": node_coll, "ring_collection": ring, "arrows": arrows, "node_diameter_max": d_max,
            "points_per_unit": px, "height_pt": (y_top - y_bottom) * px, "width_pt": (max(xs) - min(xs) + 1.4) * px}


def transition_table(fit: FitArtifacts) -> pd.DataFrame:
    """One row per observed transition: runs taking it, probability, top features, convergence."""
    rows = []
    n_total = len(fit.seeds)
    for a, b, d in sorted(fit.graph.edges(data=True)):
        if a == b:
            continue
        tops = d.get("top_features") or []
        cm, cs = d.get("convergence_mean"), d.get("convergence_std")
        rows.append({
            "source": int(a), "target": int(b), "runs": int(d.get("runs") or 0), "of": n_total,
            "prob": d.get("prob"),
            "top_features": ", ".join(f"{feature_name(t['feature'])} {_fmt_change(t.get('change_z'))}"
                                      for t in tops[:3]),
            "convergence_mean": None if cm is None else float(cm),
            "convergence_std": None if cs is None else float(cs),
        })
    return pd.DataFrame(rows, columns=["source", "target", "runs", "of", "prob", "top_features",
                                       "convergence_mean", "convergence_std"])


# --------------------------------------------------------------------------- trajectories


def trajectory_metrics(fit: FitArtifacts, metrics=DEFAULT_METRICS) -> list[str]:
    """``metrics`` that exist in the run tables, plus the most important feature not already listed."""
    chosen = [m for m in metrics if m in fit.runs.columns]
    for feat, _ in fit.feature_ranking:
        if feat in fit.runs.columns:
            if feat not in chosen:
                chosen.append(feat)
            break
    return chosen


def plot_trajectories(ax, fit: FitArtifacts, metric: str, seeds=None, linewidth: float = 1.0) -> dict:
    """Every seed's ``metric`` over training, each segment coloured by the decoded state.

    One ``LineCollection`` per seed, holding one polyline per stretch of the run in one state (the
    segment from checkpoint i to i + 1 takes checkpoint i's state; checkpoints beyond the decoded
    range are grey); a white dot with a black edge marks each run's convergence time.
    """
    from matplotlib.collections import LineCollection

    from latent.errors import UserError

    if metric not in fit.runs.columns:
        raise UserError(f"metric {metric!r} is not in the run tables of study {fit.study.name!r}; "
                        f"choose one of: {', '.join(c for c in fit.runs.columns if c not in ('seed', 'step', 'state'))}")
    seeds = fit.seeds if seeds is None else list(seeds)
    rgba = state_rgba(fit.n_states)
    conv = fit.convergence_times
    lines, states_by_seed, marks = [], {}, {}
    xmin, xmax, ymin, ymax = math.inf, -math.inf, math.inf, -math.inf
    for seed, g in fit.runs[fit.runs["seed"].isin(seeds)].groupby("seed", sort=True):
        x = g["step"].to_numpy(dtype=float)
        y = g[metric].to_numpy(dtype=float)
        st = g["state"].to_numpy()
        pts = np.column_stack([x, y])
        # a polyline per stretch in one state, not a path per segment: the same picture, drawn and
        # encoded about twice as fast (40 runs x 1,000 checkpoints x 4 panels in every report)
        starts = np.flatnonzero(np.r_[True, st[1:-1] != st[:-2]]) if len(st) > 1 else np.zeros(0, dtype=int)
        ends = np.r_[starts[1:], len(st) - 1]
        coll = LineCollection([pts[a:b + 1] for a, b in zip(starts, ends)], colors=rgba[st[starts]],
                               linewidths=linewidth, alpha=0.85)
        coll.set_rasterized(True)
        coll.set_gid(f"seed-{seed}")
        ax.add_collection(coll)
        lines.append(coll)
        states_by_seed[int(seed)] = st
        finite = np.isfinite(y)
        if finite.any():
            xmin, xmax = min(xmin, x.min()), max(xmax, x.max())
            ymin, ymax = min(ymin, y[finite].min()), max(ymax, y[finite].max())
        t = conv.get(int(seed))
        if t is not None:
            idx = np.searchsorted(x, t)
            if idx < len(x):
                marks[int(seed)] = (float(x[idx]), float(y[idx]))
    mark_coll = None
    if marks:
        mx, my = zip(*marks.values())
        mark_coll = ax.scatter(mx, my, s=22, facecolors="white", edgecolors=MARK, linewidths=1.0, zorder=3,
                               label="convergence")
    if math.isfinite(xmin):
        pad = 0.03 * (ymax - ymin or 1.0)
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymin - pad, ymax + pad)
    _, h_pt = axes_points(ax)
    ax.set_xlabel(time_label(fit))
    size = 9 if h_pt >= 200 else 7.5
    ax.set_ylabel(wrap_text(metric_label(metric), 0.75 * h_pt, size), fontsize=size)
    _title(ax, f"{metric_label(metric, with_unit=False)}: {len(lines)} runs, coloured by state", 10)
    ax.grid(alpha=0.3)
    return {"metric": metric, "seeds": sorted(states_by_seed), "lines": lines, "states": states_by_seed,
            "convergence_marks": marks, "mark_collection": mark_coll}


# --------------------------------------------------------------------------- occupancy strips


def convergence_order(fit: FitArtifacts) -> list[int]:
    """Seeds sorted by convergence time (fastest first); runs that never converged last."""
    conv = fit.convergence_times
    return sorted(fit.seeds, key=lambda s: (conv[s] is None, conv[s] if conv[s] is not None else 0, s))


def plot_occupancy(ax, fit: FitArtifacts) -> dict:
    """One horizontal strip per seed showing its decoded state over time, fastest run on top.

    A black bar marks each run's convergence time; checkpoints that were not decoded are grey.
    """
    order = convergence_order(fit)
    rgba = state_rgba(fit.n_states)
    conv = fit.convergence_times
    by_seed = {int(s): g for s, g in fit.runs.groupby("seed", sort=True)}
    segments, colls = {}, []
    for row, seed in enumerate(order):
        g = by_seed[seed]
        x = g["step"].to_numpy(dtype=float)
        st = g["state"].to_numpy()
        gap = float(np.median(np.diff(x))) if len(x) > 1 else 1.0
        ends = np.append(x[1:], x[-1] + gap)
        change = np.flatnonzero(np.concatenate([[True], st[1:] != st[:-1]]))
        stops = np.append(change[1:], len(st)) - 1
        spans = [(float(x[a]), float(ends[b] - x[a]), int(st[a])) for a, b in zip(change, stops)]
        segments[seed] = spans
        coll = ax.broken_barh([(s, w) for s, w, _ in spans], (row - 0.4, 0.8),
                              facecolors=[rgba[s] for _, _, s in spans], edgecolor="none")
        coll.set_rasterized(True)
        colls.append(coll)
    cx = [conv[s] for s in order if conv[s] is not None]
    cy = [i for i, s in enumerate(order) if conv[s] is not None]
    mark = ax.scatter(cx, cy, marker="|", s=120, color=MARK, linewidths=2, zorder=3, label="convergence")
    _, h_pt = axes_points(ax)
    row_pt = h_pt / max(len(order), 1)
    every = max(int(math.ceil(7.0 / row_pt)), 1)  # label every run when a row is at least 7 pt tall
    shown = list(range(0, len(order), every))
    ax.set_yticks(shown)
    ax.set_yticklabels([f"seed {order[i]}" + ("" if conv[order[i]] is not None else " (never)") for i in shown],
                       fontsize=float(np.clip(0.9 * row_pt * every, 6.0, 8.0)))
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.set_xlim(float(fit.runs["step"].min()), float(fit.runs["step"].max()))
    ax.set_xlabel(time_label(fit))
    ax.set_ylabel(wrap_text("run (sorted by convergence time)", 0.75 * h_pt, 9))
    _title(ax, "Decoded state over time, one strip per run, fastest to converge at the top", 10)
    undecoded = bool((fit.runs["state"] < 0).any())
    _side_legend(ax, state_legend_handles(fit, undecoded=undecoded) + [mark])
    return {"order": order, "segments": segments, "collections": colls, "convergence": dict(zip(cy, cx))}


# --------------------------------------------------------------------------- detours


#: How a state without a delay test reads, by status (``{n}``: runs, ``{m}``: min_runs).
STATUS_TEXT = {
    "obligatory": "obligatory (all {n} runs visit it)",
    "unvisited": "not visited",
    "after_convergence": "visited only after converging",
    "converging": "where runs converge",
    "not_estimable": "not estimable (< {m} runs)",
    "tested": "tested",
}
NO_TEST = "#EEEEEE"  # background of states without a delay test


def status_text(fit: FitArtifacts, row: dict) -> str:
    """``"not estimable (< 5 runs)"`` etc. for a row of ``fit.state_tests``."""
    status = row.get("status") or "?"
    if status == "not_estimable" and row.get("reason"):
        return f"not estimable: {row['reason']}"
    n = int(row.get("runs_visiting") or 0) + int(row.get("runs_skipping") or 0)
    m = fit.min_runs if fit.min_runs is not None else "min_runs"
    return STATUS_TEXT.get(status, status).format(n=n, m=m)


def _num(x) -> float:
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _interval_handle(label: str):
    """A legend entry that looks like the error bars it explains (a capped vertical line)."""
    from matplotlib.collections import LineCollection
    from matplotlib.container import ErrorbarContainer
    from matplotlib.lines import Line2D

    data = Line2D([], [], ls="none", color=MARK)
    caps = (Line2D([], [], ls="none", marker="_", ms=8, mew=1.2, color=MARK),)
    bar = LineCollection([[(0, 0), (0, 1)]], colors=MARK, linewidths=1.2)
    return ErrorbarContainer((data, caps, (bar,)), has_yerr=True, label=label)


def _column_text(ax, i: int, text: str) -> str | None:
    """The grey column of a state without a bar, labelled when there is room; returns the label drawn."""
    w_pt, h_pt = axes_points(ax)
    n = max(len(ax.get_xticks()), 1)
    ax.axvspan(i - 0.42, i + 0.42, color=NO_TEST, zorder=0, lw=0)
    if w_pt / n < 14 or h_pt < 90:
        return None
    size = 8 if h_pt >= 200 else 6.5
    shown = text.replace(" (", "\n(") if h_pt >= 150 else text.split(" (")[0]
    ax.text(i, 0.5, shown, transform=ax.get_xaxis_transform(), rotation=90, ha="center", va="center",
            fontsize=size, color="#555555", zorder=4, bbox=dict(boxstyle="round,pad=0.25", fc=NO_TEST, ec="none"))
    return shown


def plot_delays(ax, fit: FitArtifacts) -> dict:
    """Convergence delay per state: mean (restricted) convergence step of the runs visiting it
    minus that of the runs skipping it, with its 95 % Welch interval.

    Only tested states get a bar (state colour; adjusted p above it). Detour states are
    hatched with a thick black edge and starred (★). Obligatory, unvisited and not-estimable
    states (fewer than ``min_runs`` visiting or skipping runs) get a grey column and a label,
    never a bar, so they can never look significant. Fits without per-state tests (older
    format) get a note instead. Labels shorten in small axes.
    """
    from matplotlib.patches import Patch

    rows = fit.state_tests
    detours = set(fit.detour_states)
    unit = fit.step_unit
    states = [int(r["state"]) for r in rows]
    info = {"states": states, "status": {}, "delay": [], "ci_low": [], "ci_high": [], "p_adjusted": [],
            "bars": [], "hatched": [], "greyed": [], "labels": {}, "detours": sorted(detours),
            "paper_rule": [], "colors": []}
    w_pt, _ = axes_points(ax)
    if not rows:
        ax.text(0.5, 0.5, wrap_text("no per-state delay tests in this fit (it predates them); "
                                    "rerun `latent fit` to get them", w_pt, 10), transform=ax.transAxes,
                ha="center", va="center", fontsize=10 if w_pt >= 300 else 8, color="#555555")
        ax.set_xticks([])
        ax.set_yticks([])
        _title(ax, "Convergence delay per state")
        return info
    rule = fit.detour_rule
    ax.set_xticks(range(len(rows)))
    small = w_pt / max(len(rows), 1) < 55
    for i, r in enumerate(rows):
        s = int(r["state"])
        status = r.get("status") or "?"
        d, lo, hi, padj = (_num(r.get(key)) for key in ("delay", "ci_low", "ci_high", "p_adjusted"))
        info["status"][s] = status
        info["delay"].append(d)
        info["ci_low"].append(lo)
        info["ci_high"].append(hi)
        info["p_adjusted"].append(padj)
        info["colors"].append(state_color(s))
        if r.get("paper_rule"):
            info["paper_rule"].append(s)
        if status != "tested" or not math.isfinite(d):
            text = status_text(fit, r)
            _column_text(ax, i, text)
            info["greyed"].append(s)
            info["labels"][s] = text
            info["bars"].append(None)
            continue
        is_detour = s in detours
        bar = ax.bar(i, d, color=state_color(s), edgecolor=MARK if is_detour else "none",
                     linewidth=2.0 if is_detour else 0, hatch="//" if is_detour else None, width=0.7, zorder=2)[0]
        info["bars"].append(bar)
        if is_detour:
            info["hatched"].append(s)
        if math.isfinite(lo) and math.isfinite(hi):
            ax.errorbar(i, d, yerr=[[d - lo], [hi - d]], color=MARK, capsize=4, lw=1.2, zorder=3)
        top = max(hi if math.isfinite(hi) else d, d, 0.0)
        text = ("★ detour\n" if is_detour else "") + (f"adj. p = {padj:.2g}" if math.isfinite(padj) else "")
        info["labels"][s] = text
        shown = ("★\n" if is_detour else "") + (f"{padj:.2g}" if math.isfinite(padj) else "") if small else text
        ax.annotate(shown, (i, top), xytext=(0, 4), textcoords="offset points", ha="center", va="bottom",
                    fontsize=8 if not small else 6.5, fontweight="bold" if is_detour else "normal", zorder=5)
    ax.axhline(0, color=MARK, lw=0.8)
    ax.margins(y=0.25)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    _state_ticks(ax, states, {s: "\n(paper rule)" for s in info["paper_rule"]})
    ax.set_ylabel(f"delay ({unit}s)")
    tau = fit.analysis["convergence"].get("tau")
    how = []
    if rule.get("rule"):
        how.append(f"{rule['rule']} rule")
    if rule.get("alpha") is not None:
        how.append(f"maxT-adjusted p < {rule['alpha']:g}")
    if rule.get("min_runs") is not None:
        how.append(f"tested when ≥ {rule['min_runs']} runs visit and ≥ {rule['min_runs']} skip")
    xlabel = "state" + (f" (detours: {', '.join(how)})" if how else "")
    if small and info["paper_rule"]:
        xlabel += "; * the paper's rule would flag it"
    ax.set_xlabel(wrap_text(xlabel, w_pt, 9), fontsize=9 if w_pt >= 300 else 7.5)
    _title(ax, "Convergence delay per state: the runs visiting it minus the runs skipping it"
           + (f"\n(convergence steps restricted at τ = {float(tau):g} {unit}s)" if tau is not None else ""))
    handles = []
    if any(b is not None for b in info["bars"]):
        handles.append(_interval_handle("95 % Welch interval"))
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.92, "no state could be tested", transform=ax.transAxes, ha="center", va="top",
                fontsize=9 if w_pt >= 300 else 7, color="#555555", zorder=5,
                bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="none"))
    if info["hatched"]:
        handles.append(Patch(facecolor="#DDDDDD", edgecolor=MARK, hatch="//", lw=2, label="★ detour state"))
    if info["greyed"]:
        handles.append(Patch(facecolor=NO_TEST, edgecolor="none", label="not tested (see label)"))
    if handles:
        _side_legend(ax, handles)
    ax.grid(axis="y", alpha=0.3)
    return info


# --------------------------------------------------------------------------- regression


def final_state(fit: FitArtifacts) -> int | None:
    """The state most runs' decoded paths end in (ties: the lower state); None without paths."""
    last = fit.paths.groupby("seed", sort=True)["state"].last()
    if last.empty:
        return None
    counts = Counter(int(s) for s in last)
    return max(counts, key=lambda s: (counts[s], -s))


def equal_length_note(fit: FitArtifacts) -> str | None:
    """Why the final state's regression coefficient is negative by construction, for runs of equal length.

    The occupancy fractions of a run sum to 1, and with equal lengths a run's convergence time
    is close to (its number of checkpoints before convergence) × (the checkpoint spacing): the
    larger the share of the state runs end in (the converged plateau), the earlier the run
    converged. The final state's coefficient is therefore negative whatever the states mean.

    Parameters
    ----------
    fit : FitArtifacts

    Returns
    -------
    str or None
        A sentence naming the final state (the one most runs' decoded paths end in), its share of
        runs and its coefficient; None when the runs' decoded lengths differ.
    """
    counts = fit.paths.groupby("seed").size()
    if counts.empty or counts.nunique() != 1:
        return None
    last = fit.paths.groupby("seed", sort=True)["state"].last()
    final = final_state(fit)
    coef = None
    reg = fit.regression
    states = [int(s) for s in (reg.get("states") or range(fit.n_states))]
    if final in states and reg.get("coef"):
        coef = reg["coef"][states.index(final)]
    n = int(counts.iloc[0])
    share = sum(int(s) == final for s in last) / len(last)
    text = (f"Every run has the same number of decoded checkpoints ({n}), so a run's state shares sum to 1, and "
            f"its convergence time is roughly the time it spends before reaching state {final}, where "
            f"{share:.0%} of runs end: the bigger a run's share of state {final}, the earlier it converged. "
            f"State {final}'s coefficient is therefore negative by construction")
    if coef is not None:
        text += f" (here {coef:+.4g} {fit.step_unit}s)"
    return text + ", not evidence that the state speeds convergence; compare the other states with each other."


def crosses_zero(lo, hi) -> bool:
    """Whether the interval ``[lo, hi]`` contains 0.

    Parameters
    ----------
    lo, hi : float or None
        The interval's ends (None or NaN: missing).

    Returns
    -------
    bool
        False when either end is missing.
    """
    lo, hi = _num(lo), _num(hi)
    return math.isfinite(lo) and math.isfinite(hi) and lo <= 0.0 <= hi


def plot_regression(ax, fit: FitArtifacts) -> dict:
    """Regression contrast of convergence time on occupancy, per state, with bootstrap intervals.

    Bars take the state colours; detour states are hatched with a thick black edge and starred.
    A coefficient whose interval crosses zero is drawn pale with a dashed outline (its sign is not
    established; ``info["crosses_zero"]``). States without a coefficient are gaps on a grey
    column, labelled "not visited", "not estimable" (fewer than ``min_runs`` runs visit them) or
    "not identifiable" (their share of checkpoints is an exact combination of other states',
    e.g. the same in every run). With runs of equal length the final state's coefficient is
    negative by construction (:func:`equal_length_note`); it is marked "‡".
    """
    from matplotlib.patches import Patch

    reg = fit.regression
    k = fit.n_states
    states = [int(s) for s in (reg.get("states") or range(k))]
    w_pt, _ = axes_points(ax)

    def col(name):
        vals = reg.get(name) or [None] * len(states)
        return [math.nan if v is None else float(v) for v in vals]

    coef, lo, hi = col("coef"), col("ci_low"), col("ci_high")
    estimable = reg.get("estimable") or [None] * len(states)
    reasons = reg.get("not_estimable") or [None] * len(states)
    min_runs = reg.get("min_runs", fit.min_runs)
    detours = set(fit.detour_states)
    mechanical = final_state(fit) if equal_length_note(fit) is not None else None
    ax.set_xticks(range(len(states)))
    bars, hatched, colors, gaps, pale = [], [], [], {}, []
    for i, s in enumerate(states):
        c = coef[i]
        color = state_color(s)
        colors.append(color)
        if not math.isfinite(c):
            visited = (fit.graph.nodes[s].get("n_runs") or 0) if s in fit.graph.nodes else 0
            if not visited:
                text = "not visited"
            elif reasons[i] == "collinear":
                text = "not identifiable (collinear)"
            elif estimable[i] is False:
                text = f"not estimable (< {min_runs} runs)" if min_runs is not None else "not estimable"
            else:
                text = "no estimate"
            _column_text(ax, i, text)
            gaps[s] = text
            bars.append(None)
            continue
        is_detour = s in detours
        unsure = crosses_zero(lo[i], hi[i])
        bar = ax.bar(i, c, color=color, edgecolor=MARK if is_detour else (color if unsure else "none"),
                     linewidth=2.0 if is_detour else (1.2 if unsure else 0), hatch="//" if is_detour else None,
                     linestyle="--" if unsure and not is_detour else "-", width=0.7, zorder=2,
                     alpha=0.35 if unsure else 1.0)[0]
        bars.append(bar)
        if unsure:
            pale.append(s)
        if is_detour:
            hatched.append(s)
        if math.isfinite(lo[i]) and math.isfinite(hi[i]):
            ax.errorbar(i, c, yerr=[[c - lo[i]], [hi[i] - c]], color=MARK, capsize=4, lw=1.2, zorder=3)
        marks = ("★ detour" if is_detour else "") + (" ‡" if s == mechanical else "")
        if marks:
            top = (hi[i] if math.isfinite(hi[i]) else c) if c >= 0 else max(hi[i] if math.isfinite(hi[i]) else c, 0)
            ax.annotate(marks.strip(), (i, top), xytext=(0, 4), textcoords="offset points", ha="center",
                        va="bottom", fontsize=8 if w_pt >= 300 else 6.5, fontweight="bold")
    if not any(math.isfinite(c) for c in coef):
        ax.text(0.5, 0.9, wrap_text("no state's coefficient can be estimated on this design", w_pt, 10),
                transform=ax.transAxes, ha="center", va="center", fontsize=10 if w_pt >= 300 else 8,
                color="#555555")
    ax.axhline(0, color=MARK, lw=0.8)
    ax.margins(y=0.15)
    ax.set_xlim(-0.6, len(states) - 0.4)
    _state_ticks(ax, states)
    unit = fit.step_unit
    ax.set_ylabel(f"coefficient ({unit}s)")
    ax.set_xlabel(wrap_text("state (regressor: fraction of a run's checkpoints spent in it)", w_pt, 9),
                  fontsize=9 if w_pt >= 300 else 7.5)
    r2, p = reg.get("r2"), reg.get("p_value")
    stats = []
    if r2 is not None:
        stats.append(f"R² = {float(r2):.3f}")
    if p is not None:
        stats.append(f"p = {float(p):.2g}")
    n_boot = reg.get("n_boot")
    _title(ax, "Occupancy regression: convergence time vs. time spent in each state"
           + (f"\n({', '.join(stats)})" if stats else ""))
    handles = [_interval_handle(f"{'bootstrap ' if n_boot else ''}interval"
                                + (f" ({n_boot} resamples)" if n_boot else ""))]
    if pale:
        handles.append(Patch(facecolor="#BBBBBB", alpha=0.5, edgecolor="#777777", ls="--",
                             label="interval crosses 0 (sign not established)"))
    if hatched:
        handles.append(Patch(facecolor="#DDDDDD", edgecolor=MARK, hatch="//", lw=2, label="★ detour state"))
    if mechanical is not None and mechanical in states and bars[states.index(mechanical)] is not None:
        handles.append(Patch(facecolor="none", edgecolor="none",
                             label=f"‡ state {mechanical}: negative by\nconstruction (equal-length runs)"))
    if gaps:
        handles.append(Patch(facecolor=NO_TEST, edgecolor="none", label="gap: no coefficient (see label)"))
    _side_legend(ax, handles)
    ax.grid(axis="y", alpha=0.3)
    return {"states": states, "coef": coef, "ci_low": lo, "ci_high": hi, "detours": sorted(detours),
            "hatched": hatched, "colors": colors, "bars": bars, "gaps": gaps, "crosses_zero": pale,
            "mechanical": mechanical}


# --------------------------------------------------------------------------- state profiles


def scaling_text(fit: FitArtifacts) -> str:
    """How the fit's z units were made: ``"z-scored over all runs pooled"`` (``global``) or
    ``"z-scored within each run"`` (``per_run``)."""
    return {"global": "z-scored over all runs pooled", "per_run": "z-scored within each run"}.get(
        fit.scaling_kind or "", "z-scored")


def plot_state_profiles(ax, fit: FitArtifacts, annotate: bool | None = None) -> dict:
    """Heatmap of per-state feature means in z units (rows: states, columns: features).

    Features are named by their columns, as everywhere in the report. Cells carry their value
    when they are large enough to hold it (``annotate=None``; pass True or False to force it).
    """
    from matplotlib.patches import Rectangle

    m = fit.means_z
    k, d = m.shape
    w_pt, h_pt = axes_points(ax)
    cell_w, cell_h = 0.85 * w_pt / max(d, 1), 0.85 * h_pt / max(k, 1)
    lim = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
    lim = lim or 1.0
    im = ax.imshow(m, cmap=DIVERGING_CMAP, vmin=-lim, vmax=lim, aspect="auto")
    if annotate is None:
        annotate = k * d <= 400 and cell_w >= 26 and cell_h >= 11
    cell_size = float(np.clip(min(cell_w / 4.0, cell_h * 0.6), 6.0, 7.0))
    if annotate:
        for i in range(k):
            for j in range(d):
                v = m[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=cell_size,
                        color="white" if abs(v) > 0.6 * lim else "black")
    tick_size = float(np.clip(cell_w * 0.8, 6.0, 8.0))
    ax.set_xticks(range(d))
    if cell_w >= 40:
        ax.set_xticklabels([feature_name(f) for f in fit.features], rotation=35, ha="right", fontsize=tick_size)
    else:
        ax.set_xticklabels([feature_name(f) for f in fit.features], rotation=90, ha="center", fontsize=tick_size)
    ax.set_yticks(range(k))
    ax.set_yticklabels([f"state {s}" + (" ★" if s in fit.detour_states else "") for s in range(k)],
                       fontsize=float(np.clip(cell_h * 0.8, 6.0, 9.0)))
    for s in range(k):  # a swatch of the state colour left of each row
        ax.add_patch(Rectangle((-0.5 - 0.25, s - 0.5), 0.25, 1.0, color=state_color(s), clip_on=False))
    groups = feature_groups_of(fit)
    spans = _runs_of(groups)
    if len(spans) > 1:  # features from several groups: a line between groups, their names on top
        for name, lo, hi in spans:
            if lo > 0:
                ax.axvline(lo - 0.5, color="black", lw=1.2)
            ax.text((lo + hi - 1) / 2, -0.5, name, ha="center", va="bottom", fontsize=8, fontweight="bold",
                    transform=ax.transData, clip_on=False)
    ax.set_xlim(-0.75, d - 0.5)
    ax.set_xlabel("feature")
    ax.set_ylabel(wrap_text("state (★ = detour)", 0.75 * h_pt, 9))
    _title(ax, f"State profiles: mean of each feature per state (z units, {scaling_text(fit)})", 10)
    cbar = ax.figure.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cbar.set_label("state mean (z units)", fontsize=9 if h_pt >= 150 else 7)
    cbar.ax.tick_params(labelsize=8 if h_pt >= 150 else 6.5)
    return {"matrix": m, "features": fit.features, "states": list(range(k)), "image": im, "annotated": bool(annotate),
            "groups": spans}


#: the progress measures the report draws, when the run tables have them (collect/progress.py)
PROGRESS_PANELS = ("restricted_loss", "excluded_loss", "embed_gini", "sum_sq_weights")


def progress_panels(fit: FitArtifacts) -> list[str]:
    """The progress measures of :data:`PROGRESS_PANELS` that the study recorded."""
    return [m for m in PROGRESS_PANELS if m in fit.runs.columns]


def _spectrum_columns(fit: FitArtifacts) -> list[str]:
    return sorted(c for c in fit.runs.columns if re.fullmatch(r"embed_f\d+", c))


def plot_fourier_concentration(ax, fit: FitArtifacts, top: int = 5) -> dict:
    """One line per run: the share of its embedding's Fourier energy in the ``top`` frequencies
    that carry the most at its last checkpoint, over training, each segment coloured by the
    decoded state. It rises as the run's embedding settles on its key frequencies (the circles
    of Nanda et al.); each run has its own."""
    from matplotlib.collections import LineCollection

    cols = _spectrum_columns(fit)
    if not cols:
        ax.set_axis_off()
        return {"seeds": []}
    rgba = state_rgba(fit.n_states)
    tops = {}
    for seed, g in fit.runs.groupby("seed", sort=True):
        g = g.sort_values("step")
        last = g[cols].iloc[-1].to_numpy()
        keep = np.argsort(-last)[:top]
        tops[int(seed)] = [int(cols[i][len("embed_f"):]) for i in keep]
        y = g[cols].to_numpy()[:, keep].sum(axis=1)
        x = g["step"].to_numpy(dtype=float)
        st = g["state"].to_numpy()
        pts = np.column_stack([x, y])
        coll = LineCollection(np.stack([pts[:-1], pts[1:]], axis=1), colors=rgba[np.clip(st[:-1], 0, None)],
                              linewidths=1.0, alpha=0.85)
        coll.set_rasterized(True)
        ax.add_collection(coll)
    ax.autoscale()
    ax.set_ylim(0, 1)
    ax.set_xlabel(fit.step_unit)
    ax.set_ylabel(f"share in its {top} final top frequencies")
    _title(ax, f"Embedding settling on its key frequencies (each run's own {top}), coloured by state", 10)
    ax.grid(alpha=0.3)
    return {"seeds": sorted(tops), "top_frequencies": tops}


def plot_fourier_spectrum(ax, fit: FitArtifacts, seed: int | None = None) -> dict:
    """One run's embedding spectrum over training: for each checkpoint step (x) and frequency k
    (y), the share of the embedding's energy in k (``embed_fNN`` columns). ``seed`` None: the run
    that converges at the median time. Bright bands are its key frequencies forming."""
    cols = _spectrum_columns(fit)
    if not cols:
        ax.set_axis_off()
        return {"frequencies": [], "steps": [], "seed": None}
    if seed is None:
        conv = {s: t for s, t in fit.convergence_times.items() if t is not None}
        ranked = sorted(conv, key=lambda s: (conv[s], s)) or sorted(fit.seeds)
        seed = ranked[len(ranked) // 2]
    run = fit.runs[fit.runs["seed"] == seed].sort_values("step")
    img = run[cols].to_numpy().T  # (K, steps)
    steps = run["step"].to_numpy(dtype=float)
    im = ax.imshow(img, aspect="auto", origin="lower", cmap="magma", interpolation="nearest",
                   extent=(steps[0], steps[-1], 0.5, len(cols) + 0.5))
    ax.set_xlabel(fit.step_unit)
    ax.set_ylabel("frequency k")
    _title(ax, f"Run {seed} (median convergence): its embedding's Fourier spectrum", 10)
    cbar = ax.figure.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cbar.set_label("share of energy", fontsize=8)
    top = run[cols].iloc[-1].sort_values(ascending=False).index[:5]
    return {"frequencies": [int(c[len("embed_f"):]) for c in cols], "steps": steps.tolist(), "image": im,
            "seed": int(seed), "top_at_end": [int(c[len("embed_f"):]) for c in top]}


def feature_groups_of(fit: FitArtifacts) -> list[str]:
    """The group of each of the fit's features (``study.json`` ``groups``; ``other`` for a column
    in none)."""
    from latent.features import study_groups

    owner = {}
    for name, cols in study_groups(fit.meta or {}).items():
        for c in cols:
            owner.setdefault(c, name)
    return [owner.get(f, "other") for f in fit.features]


def _runs_of(labels: list[str]) -> list[tuple[str, int, int]]:
    """``(label, start, stop)`` of each run of equal consecutive labels."""
    out: list[tuple[str, int, int]] = []
    for i, lab in enumerate(labels):
        if out and out[-1][0] == lab:
            out[-1] = (lab, out[-1][1], i + 1)
        else:
            out.append((lab, i, i + 1))
    return out


def profile_table(fit: FitArtifacts) -> pd.DataFrame:
    """Per-state feature means in original units (from the map's nodes), plus occupancy and runs."""
    g = fit.graph
    rows = []
    for s in range(fit.n_states):
        attrs = g.nodes[s] if s in g.nodes else {}
        mean = attrs.get("mean") or {}
        row = {"state": s, "occupancy": attrs.get("occupancy"), "runs": attrs.get("n_runs")}
        for f in fit.features:
            v = mean.get(f)
            row[f] = math.nan if v is None else float(v)
        rows.append(row)
    return pd.DataFrame(rows).set_index("state")


def _fmt_rate(value) -> str:
    if value is None or not math.isfinite(float(value)):
        return "–"
    v = float(value)
    return f"{'↑' if v > 0 else '↓'}{abs(v):.2g}" if abs(v) < 0.01 else f"{'↑' if v > 0 else '↓'}{abs(v):.3f}"


def phase_table(fit: FitArtifacts, top: int = 3) -> pd.DataFrame:
    """What each state means, one row per state (:attr:`FitArtifacts.phases`), indexed by state.

    Parameters
    ----------
    fit : FitArtifacts
    top : int
        Entry features to name per state.

    Returns
    -------
    DataFrame
        Columns: ``runs``, ``checkpoints``, ``step_p10``, ``step_p90``, ``step_min``, ``step_max``
        (steps of the state's checkpoints; percentiles by the nearest-rank rule), one column per
        performance metric of the study (its mean over the state's checkpoints; absent columns
        are absent), ``entries``, ``entering`` (the ``top`` features that move most on
        entering the state, e.g. ``"l2 ↑1.30 z, var_w ↓0.52 z"``) and ``moving`` (the two that
        move fastest while runs stay in it, z per checkpoint, e.g. ``"l2 ↑0.012"``).
    """
    ph = fit.phases
    metrics = list(ph.get("metrics") or [])
    rows = []
    for r in sorted(ph.get("states") or [], key=lambda r: int(r["state"])):
        st = r.get("steps") or {}
        row = {"state": int(r["state"]), "runs": r.get("runs"), "checkpoints": r.get("checkpoints"),
               "step_p10": st.get("p10"), "step_p90": st.get("p90"), "step_min": st.get("min"),
               "step_max": st.get("max")}
        vals = r.get("metrics") or {}
        for m in metrics:
            row[m] = math.nan if vals.get(m) is None else float(vals[m])
        row["entries"] = r.get("entries")
        row["entering"] = ", ".join(f"{feature_name(c['feature'])} {_fmt_change(c.get('change_z'))} z"
                                    for c in (r.get("entry_change") or [])[:top])
        row["moving"] = ", ".join(f"{feature_name(m['feature'])} {_fmt_rate(m.get('rate_z'))}"
                                  for m in (r.get("moving") or [])[:2])
        rows.append(row)
    columns = ["state", "runs", "checkpoints", "step_p10", "step_p90", "step_min", "step_max", *metrics,
               "entries", "entering", "moving"]
    return pd.DataFrame(rows, columns=columns).set_index("state")


# --------------------------------------------------------------------------- convergence


def plot_convergence_histogram(ax, fit: FitArtifacts, bins: int | str = "auto") -> dict:
    """Histogram of convergence times; the median is marked and non-converging runs counted."""
    conv = fit.convergence_times
    times = np.array([t for t in conv.values() if t is not None], dtype=float)
    never = [s for s, t in conv.items() if t is None]
    c = fit.analysis["convergence"]
    rule = f"first {fit.step_unit} where {c.get('metric', '?')} {'>' if c.get('direction', 'above') == 'above' else '<'} {c.get('threshold', '?')}"
    counts, edges = np.array([]), np.array([])
    median = None
    if times.size:
        nb = bins if not (isinstance(bins, str) and times.size < 4) else max(times.size, 1)
        counts, edges, _ = ax.hist(times, bins=nb, color="#777777", edgecolor="white",
                                   label=f"{times.size} converged runs")
        median = float(np.median(times))
        ax.axvline(median, color="#D55E00", lw=2, ls="--", label=f"median {median:g} {fit.step_unit}s")
    else:
        ax.text(0.5, 0.5, "no run converged", transform=ax.transAxes, ha="center", va="center", fontsize=11,
                color="#555555")
    if never:
        ax.plot([], [], " ", label=f"{len(never)} run(s) never converged")
    w_pt, _ = axes_points(ax)
    ax.set_xlabel(wrap_text(f"convergence time ({fit.step_unit}s; {rule})", w_pt, 9))
    ax.set_ylabel("number of runs")
    _title(ax, "Convergence time", 10)
    ax.legend(fontsize=8 if w_pt >= 300 else 6.5)
    ax.grid(axis="y", alpha=0.3)
    return {"times": times.tolist(), "never": never, "median": median, "counts": np.asarray(counts).tolist(),
            "bin_edges": np.asarray(edges).tolist()}


#: where the report's forecast check cuts each run (share of its checkpoints seen)
FORECAST_CUTS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def forecast_backtest(fit: FitArtifacts) -> dict:
    """:func:`latent.predict.backtest` of the fit's own runs, each left out of its own analogs (cached)."""
    cached = getattr(fit, "_forecast_backtest", None)
    if cached is None:
        from latent.predict import FittedMap, backtest

        runs = fit.runs.drop(columns=["state"], errors="ignore")
        # the files the report has read already, not read again
        cached = backtest(FittedMap(fit.fit_dir, (fit.model, fit.paths, fit.analysis)), runs, FORECAST_CUTS)
        object.__setattr__(fit, "_forecast_backtest", cached)
    return cached


def plot_forecast_backtest(ax, fit: FitArtifacts, backtest: dict | None = None) -> dict:
    """How often the convergence forecast's interval held, by how much of a run had been seen.

    Each run is cut after a share of its checkpoints and forecast from the others (leave one
    run out); coverage counts the runs not yet converged at the cut, whose number shrinks as
    runs converge (printed above each point). The grey line is the baseline's median width: the
    interval from every other run not converged by the same step, the run's state ignored.
    """
    bt = backtest if backtest is not None else forecast_backtest(fit)
    rows = [s for s in bt["summary"] if s["n"] > 0]
    x = np.array([100 * s["fraction"] for s in rows])
    cov = np.array([100 * s["coverage"] for s in rows])
    span = float(fit.runs["step"].max() - fit.runs["step"].min()) or 1.0
    width = np.array([np.nan if s["median_width"] is None else 100 * s["median_width"] / span for s in rows])
    w_pt, _ = axes_points(ax)
    small = w_pt < 300
    level = 100 * bt["level"]
    ax.axhline(level, color="#555555", ls="--", lw=1, label=f"nominal {level:.0f} %")
    if len(rows):
        ax.plot(x, cov, "o-", color="#0072B2", lw=2, label="interval covered\nthe true step")
        ax.plot(x, width, "s:", color="#D55E00", lw=1.5, label=f"median interval width\n(% of the {fit.step_unit}s)")
        base = np.array([np.nan if s.get("baseline_median_width") is None else
                         100 * s["baseline_median_width"] / span for s in rows])
        if np.isfinite(base).any():
            ax.plot(x, base, "s-", color="#999999", lw=1, ms=4, zorder=1,
                    label="median width without\nthe state (baseline)")
        if not small:
            for xi, ci, s in zip(x, cov, rows):
                ax.annotate(f"n={s['n']}", (xi, ci), textcoords="offset points", xytext=(0, 6), ha="center",
                            fontsize=7, color="#0072B2")
    else:
        ax.text(0.5, 0.5, "every run had converged at the first cut", transform=ax.transAxes, ha="center",
                va="center", fontsize=10, color="#555555")
    ax.set_ylim(0, 110)
    ax.set_xlim(0, 100)
    ax.set_xlabel(wrap_text("share of a run's checkpoints seen when forecasting (%)", w_pt, 9))
    ax.set_ylabel("%")
    _title(ax, "Convergence forecasts, checked on this study's runs", 10)
    handles, _ = ax.get_legend_handles_labels()
    _side_legend(ax, handles)
    ax.grid(alpha=0.3)
    return {"fractions": x.tolist(), "coverage": cov.tolist(), "width": width.tolist(), "n": [s["n"] for s in rows],
            "baseline_width": [None if s.get("baseline_median_width") is None else 100 * s["baseline_median_width"] / span
                               for s in rows]}


# --------------------------------------------------------------------------- weight snapshots

#: Most snapshots drawn per run in the weight figure (evenly by index, the first and the last kept).
MAX_SNAPSHOT_PANELS = 6
#: The cyclic colour map tokens are coloured by (token a at a/p of the way round).
TOKEN_CMAP = "twilight"


def snapshot_modulus(fit: FitArtifacts) -> int | None:
    """The modulus p of a modular-arithmetic study (``study.json``'s ``config.p``), else None."""
    p = ((fit.meta or {}).get("config") or {}).get("p")
    try:
        p = int(p)
    except (TypeError, ValueError):
        return None
    return p if p >= 3 else None


def weight_snapshots(fit: FitArtifacts, warn=None) -> dict:
    """The fit's runs' weight snapshots (:func:`latent.snapshots.read_snapshots`), by seed, or ``{}``.

    ``{}`` for a study without snapshots or without a modulus p. A snapshot file that cannot be
    read (damaged, truncated, inconsistent with ``study.json``) or whose embedding has fewer
    than p rows gives ``{}`` too, after one line to ``warn`` (default: ``latent report: warning:
    …`` on stderr) that names the file: the report is then drawn without its weight views.
    """
    import sys

    from latent.errors import UserError
    from latent.snapshots import read_snapshots

    p = snapshot_modulus(fit)
    if p is None or not fit.study.snapshots_dir.is_dir():
        return {}
    if warn is None:
        def warn(line):
            print(f"latent report: warning: {line}", file=sys.stderr)
    try:
        snaps = read_snapshots(fit.study, seeds=fit.seeds)
        for run in snaps.values():
            if run.embed.shape[1] < p:
                raise UserError(f"snapshots file {run.path} holds an embedding of {run.embed.shape[1]} tokens, fewer "
                                f"than the modulus p = {p} in study.json")
    except UserError as exc:
        warn(f"{exc}; the report is written without its weight views")
        return {}
    return {s: r for s, r in snaps.items() if len(r)}


def token_embedding(run, i: int, p: int) -> np.ndarray:
    """Run ``run``'s token embedding at its ``i``-th snapshot: the first ``p`` rows of ``embed`` (the
    numbers 0..p-1; a transformer's ``=`` tokens left out), as float64."""
    return np.asarray(run.embed[i][:p], dtype=np.float64)


def _fourier_coefficients(embed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(C, S)``, each (K, width): the embedding's coefficients on the orthonormal cos(2πka/p) and
    sin(2πka/p) vectors over the tokens a = 0..p-1, k = 1..K = (p-1)//2 (collect/progress.py's basis)."""
    p = embed.shape[0]
    a = np.arange(p)
    k = np.arange(1, (p - 1) // 2 + 1)
    ang = 2 * np.pi * k[:, None] * a[None, :] / p
    scale = math.sqrt(2.0 / p)
    return (np.cos(ang) * scale) @ embed, (np.sin(ang) * scale) @ embed


def frequency_energy(embed: np.ndarray) -> np.ndarray:
    """Energy of each frequency k = 1..(p-1)//2 of a (p, width) token embedding over the token axis:
    ‖C_k‖² + ‖S_k‖², C_k and S_k its coefficients on the orthonormal cos(2πka/p) and sin(2πka/p)
    (= 2 |DFT_k|² / p summed over the width; the constant term, k = 0, is left out). Index k-1 is k."""
    c, s = _fourier_coefficients(np.asarray(embed, dtype=np.float64))
    return (c * c).sum(axis=1) + (s * s).sum(axis=1)


def key_frequency(embed: np.ndarray) -> int:
    """The frequency k in 1..(p-1)//2 with the most energy in a (p, width) token embedding
    (:func:`frequency_energy`; the smallest k on a tie)."""
    return int(np.argmax(frequency_energy(embed))) + 1


def embedding_pcs(embed: np.ndarray) -> np.ndarray:
    """Each token's coordinates on the top two principal components of a (p, width) embedding.

    The rows are centred (the mean token subtracted) and decomposed by SVD, ``E - Ē = U Σ Vᵀ``;
    token a's coordinates are ``(E[a] - Ē) · V[:, :2]`` (= ``U[a, :2] Σ[:2]``). Each component's
    sign is fixed so that its largest coordinate in absolute value is positive (sklearn's
    ``svd_flip`` rule); a component the embedding does not have (width 1, or rank < 2) is 0.

    Returns
    -------
    numpy.ndarray
        Shape (p, 2), float64.
    """
    x = np.asarray(embed, dtype=np.float64)
    x = x - x.mean(axis=0)
    out = np.zeros((x.shape[0], 2))
    if not x.size:
        return out
    u, sv, _ = np.linalg.svd(x, full_matrices=False)
    scores = u * sv
    for j in range(min(2, scores.shape[1])):
        col = scores[:, j]
        if sv[j] <= 1e-12 * max(sv[0], 1e-300):
            continue
        out[:, j] = col * (1.0 if col[np.argmax(np.abs(col))] >= 0 else -1.0)
    return out


def fourier_circle(embed: np.ndarray, k: int) -> np.ndarray:
    """Each token's coordinates on frequency ``k``'s Fourier circle of a (p, width) embedding.

    With C_k = Σ_a cos(2πka/p) E[a] and S_k = Σ_a sin(2πka/p) E[a] (vectors in the embedding's
    width; up to a factor, the real part and minus the imaginary part of the DFT of E over the
    token axis at k), token a's coordinates are ``((E[a] - Ē) · C_k/‖C_k‖, (E[a] - Ē) · S_k/‖S_k‖)``.
    An embedding E[a] = r (cos(2πka/p + φ) u + sin(2πka/p + φ) v) (+ other frequencies in directions
    orthogonal to u, v) comes out as token a at angle 2πka/p on a circle of radius r. A direction
    of norm 0 gives coordinate 0.

    Returns
    -------
    numpy.ndarray
        Shape (p, 2), float64.
    """
    x = np.asarray(embed, dtype=np.float64)
    x = x - x.mean(axis=0)
    c, s = _fourier_coefficients(x)
    out = np.zeros((x.shape[0], 2))
    for j, d in enumerate((c[k - 1], s[k - 1])):
        norm = float(np.linalg.norm(d))
        if norm > 1e-12:
            out[:, j] = x @ (d / norm)
    return out


def circle_order(p: int, k: int) -> np.ndarray:
    """The tokens in the order they sit around frequency ``k``'s circle: sorted by k·a mod p
    (for a prime p: 0, k⁻¹, 2k⁻¹, … mod p)."""
    return np.argsort((k * np.arange(p)) % p, kind="stable")


def snapshot_runs(fit: FitArtifacts, snapshots: dict, count: int = 3) -> list[tuple[str, int]]:
    """Up to ``count`` (3) runs with snapshots to draw, in rank order: the fastest, the median and the
    slowest to converge, as ``(role, seed)``. Runs are ranked by convergence step (ties by seed), runs
    that never converge last; the median is the run at rank n // 2. Two runs give the fastest and the
    slowest, one run ``("only run", seed)``."""
    have = [s for s in fit.seeds if s in snapshots]
    conv = fit.convergence_times
    ranked = sorted(have, key=lambda s: (conv.get(s) is None, conv.get(s) or 0.0, s))
    if not ranked:
        return []
    n = len(ranked)
    if n == 1:
        return [("only run", ranked[0])]
    picks: dict[int, str] = {}
    for role, i in (("fastest", 0), ("slowest", n - 1), ("median", n // 2))[:count]:
        picks.setdefault(i, role)  # two runs: the fastest and the slowest
    return [(picks[i], ranked[i]) for i in sorted(picks)]


def state_at(fit: FitArtifacts, seed: int, step) -> int:
    """Run ``seed``'s decoded state at ``step``: the state of its last checkpoint at or before it
    (-1 where that checkpoint was not decoded, or there is none)."""
    run = fit.runs[fit.runs["seed"] == seed]
    steps = run["step"].to_numpy(dtype=float)
    at = steps <= float(step)
    if not at.any():
        return -1
    return int(run["state"].to_numpy()[at][np.argmax(steps[at])])


def _state_words(fit: FitArtifacts, state: int) -> str:
    if state < 0:
        return "not decoded"
    name = fit.state_names.get(int(state))
    return f"state {state}" + (f": {name}" if name else "")


def plot_embedding_snapshot(ax, fit: FitArtifacts, run, index: int, view: str = "pcs", k: int | None = None,
                            title: bool = True) -> dict:
    """One run's token embedding at one snapshot, on its top two principal components (``view="pcs"``,
    :func:`embedding_pcs`) or on frequency ``k``'s Fourier circle (``view="fourier"``,
    :func:`fourier_circle`; ``k`` defaults to the run's key frequency at its last snapshot).

    Points are the tokens a = 0..p-1 coloured by a on a cyclic map (:data:`TOKEN_CMAP`); on the
    Fourier circle a grey line joins them in the order they sit on a formed circle
    (:func:`circle_order`). The frame takes the colour of the run's decoded state at that step;
    the title gives the step and the state.

    Returns
    -------
    dict
        ``seed, step, index, view, k, state, coords`` ((p, 2) array), ``share`` (the Fourier view:
        frequency k's share of the embedding's non-constant energy).
    """
    from matplotlib.colors import Normalize

    p = snapshot_modulus(fit)
    embed = token_embedding(run, index, p)
    step = int(run.steps[index])
    state = state_at(fit, run.seed, step)
    share = None
    if view == "fourier":
        k = key_frequency(token_embedding(run, len(run) - 1, p)) if k is None else int(k)
        coords = fourier_circle(embed, k)
        energy = frequency_energy(embed)
        share = float(energy[k - 1] / energy.sum()) if energy.sum() > 0 else 0.0
        order = circle_order(p, k)
        ring = np.append(order, order[0])
        ax.plot(coords[ring, 0], coords[ring, 1], color="#999999", lw=0.6, zorder=1)
    elif view == "pcs":
        coords = embedding_pcs(embed)
    else:
        raise ValueError(f"view must be 'pcs' or 'fourier', got {view!r}")
    ax.scatter(coords[:, 0], coords[:, 1], c=np.arange(p), cmap=TOKEN_CMAP, norm=Normalize(0, p), s=9,
               linewidths=0.3, edgecolors="#333333", zorder=2)
    span = float(np.abs(coords).max()) if coords.size else 0.0
    span = span * 1.12 if span > 0 else 1.0
    ax.set_xlim(-span, span)
    ax.set_ylim(-span, span)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    color = state_color(state) if state >= 0 else UNDECODED
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(2.0)
    if title:
        w, _ = axes_points(ax)
        text = f"{fit.step_unit} {step}\n{_state_words(fit, state)}"
        if share is not None:
            text += f"\nk = {k}: {100 * share:.0f} % of energy"
        ax.set_title(wrap_text(text, w + 12, 7), fontsize=7, linespacing=1.1)
    return {"seed": int(run.seed), "step": step, "index": int(index), "view": view, "k": k, "state": state,
            "coords": coords, "share": share}


def plot_weight_snapshots(axes, fit: FitArtifacts, snapshots: dict, runs: list[tuple[str, int]] | None = None,
                          most: int = MAX_SNAPSHOT_PANELS) -> dict:
    """The token embedding of a few runs at their snapshots, two ways: ``axes`` is a grid (rows ×
    columns) with two rows per run, its top principal components above and its key frequency's
    Fourier circle below (:func:`plot_embedding_snapshot`), one column per snapshot shown (at most
    ``most``, evenly thinned by index, the first and the last kept). Unused axes are switched off.

    Parameters
    ----------
    axes : 2-D array of Axes
        At least ``2 * len(runs)`` rows and ``min(most, snapshots)`` columns.
    snapshots : dict of int to RunSnapshots
        :func:`weight_snapshots`.
    runs : list of (role, seed), optional
        Default :func:`snapshot_runs`.

    Returns
    -------
    dict
        ``runs``: one dict per run (``role, seed, k, convergence, steps, indices, states``);
        ``panels``: every panel's info (:func:`plot_embedding_snapshot`) with its ``row`` and ``col`` in ``axes``.
    """
    from latent.trainmap import format_step

    from .interactive import thin_index

    axes = np.asarray(axes, dtype=object).reshape(len(axes), -1)
    runs = snapshot_runs(fit, snapshots) if runs is None else runs
    p = snapshot_modulus(fit)
    out_runs, panels = [], []
    for r, (role, seed) in enumerate(runs):
        run = snapshots[seed]
        idx = thin_index(len(run), most)
        k = key_frequency(token_embedding(run, len(run) - 1, p))
        conv = fit.convergence_times.get(seed)
        steps, states = [], []
        for c in range(axes.shape[1]):
            for view, row in (("pcs", 2 * r), ("fourier", 2 * r + 1)):
                ax = axes[row, c]
                if c >= len(idx):
                    ax.set_axis_off()
                    continue
                info = plot_embedding_snapshot(ax, fit, run, int(idx[c]), view, k)
                panels.append({**info, "row": row, "col": c})
                if c == 0:
                    when = (f"converges at {format_step(conv)}" if conv is not None else "never converges")
                    label = (f"run {seed} ({role};\n{when})\n" if view == "pcs" else "") + (
                        "top 2 PCs" if view == "pcs" else f"Fourier circle\nk = {k}")
                    ax.set_ylabel(label, fontsize=7)
            if c < len(idx):
                steps.append(int(run.steps[idx[c]]))
                states.append(panels[-1]["state"])
        out_runs.append({"role": role, "seed": int(seed), "k": k, "convergence": conv, "steps": steps,
                         "indices": [int(i) for i in idx], "states": states})
    for row in range(2 * len(runs), axes.shape[0]):
        for ax in axes[row]:
            ax.set_axis_off()
    return {"runs": out_runs, "panels": panels}
