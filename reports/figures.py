"""One plot function per report figure: ``plot_*(ax, fit, ...) -> dict``.

Each function draws onto a matplotlib ``Axes`` you give it, from a loaded
:class:`reports.artifacts.FitArtifacts`, and returns a small dict describing what it drew
(nodes, edges, lines per seed, highlighted states, …) so notebooks and tests can inspect it.
Nothing here calls pyplot or refits anything; state ``k`` has colour
``reports.palette.state_color(k)`` in every figure.

Example (in a notebook)::

    import matplotlib.pyplot as plt
    from reports import load_fit, figures

    fit = load_fit(store="data", study="modadd")
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4))
    figures.plot_training_map(a, fit)
    figures.plot_trajectories(b, fit, "val_acc")
    figures.plot_delays(c, fit)             # the detour test per state
    fig.legend(handles=figures.state_legend_handles(fit), loc="lower center", ncol=6)
"""

from __future__ import annotations

import math
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


#: Compact symbols for edge labels in the training map.
SYMBOLS = {
    "l1": "L1", "l2": "L2", "trace": "tr", "spectral": "λmax", "code_sparsity": "L1/L2",
    "computational_sparsity": "tr/λmax", "mean_lambda": "μ(λ)", "variance_lambda": "σ²(λ)",
    "mean_w": "μ(w)", "median_w": "med(w)", "var_w": "σ²(w)", "mean_b": "μ(b)", "median_b": "med(b)",
    "var_b": "σ²(b)", "train_loss": "train loss", "val_loss": "val loss", "train_acc": "train acc",
    "val_acc": "val acc",
}


def symbol(name: str) -> str:
    return SYMBOLS.get(name, name)


def metric_label(name: str, with_unit: bool = True) -> str:
    """``"L2 norm (Frobenius, summed over matrices)"`` for ``"l2"``; the name itself if unknown."""
    label, unit = METRIC_LABELS.get(name, (name, "as logged"))
    return f"{label} ({unit})" if with_unit else label


def short_feature(name: str) -> str:
    return METRIC_LABELS.get(name, (name, ""))[0]


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
    ax.set_xlabel("number of hidden states K")
    ax.set_ylabel(f"{label} (nats)")
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
    ax.set_title(title, fontsize=9.5)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(len(handles), 3),
              fontsize=8, frameon=False)
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


def plot_training_map(ax, fit: FitArtifacts, max_size: float = 2600.0, min_size: float = 350.0) -> dict:
    """The training map: one node per state, one arrow per observed transition.

    Node area follows occupancy (fraction of all decoded checkpoints), arrow width the number
    of runs that take the edge; each arrow is labelled with that count and the top feature
    change (z units); :func:`transition_table` has the rest (top three features, probability,
    convergence of the runs taking it). Detour states get a dashed black ring.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    g = fit.graph
    n_total = len(fit.seeds)
    pos = map_layout(fit)
    nodes = sorted(int(n) for n in g.nodes)
    occ = {n: float(g.nodes[n].get("occupancy") or 0.0) for n in nodes}
    top = max(occ.values()) if occ and max(occ.values()) > 0 else 1.0
    sizes = {n: min_size + (max_size - min_size) * occ[n] / top for n in nodes}
    colors = {n: state_color(n) for n in nodes}
    xs = [pos[n][0] for n in nodes]
    ys = [pos[n][1] for n in nodes]
    node_coll = ax.scatter(xs, ys, s=[sizes[n] for n in nodes], c=[colors[n] for n in nodes],
                           edgecolors="white", linewidths=1.5, zorder=3)
    highlighted = [n for n in nodes if n in fit.detour_states]
    ring = None
    if highlighted:
        ring = ax.scatter([pos[n][0] for n in highlighted], [pos[n][1] for n in highlighted],
                          s=[sizes[n] * 1.6 for n in highlighted], facecolors="none", edgecolors=MARK,
                          linewidths=2.5, linestyles="--", zorder=2, label="detour state")
    for n in nodes:
        x, y = pos[n]
        ax.annotate(f"{n}", (x, y), ha="center", va="center", fontsize=11, fontweight="bold",
                    color="white" if n % 17 in (0, 3, 7, 13, 14) else "black", zorder=4)
        ax.annotate(f"{occ[n]:.0%} of time\n{g.nodes[n].get('n_runs', '?')}/{n_total} runs", (x, y),
                    xytext=(0, -math.sqrt(sizes[n] * (1.6 if n in highlighted else 1.0)) / 2 - 4), textcoords="offset points",
                    ha="center", va="top", fontsize=7.5, color="#333333", zorder=6)

    edges, widths, labels, arrows = [], {}, {}, []
    max_runs = max([d.get("runs") or 0 for _, _, d in g.edges(data=True)] + [1])
    for a, b, d in sorted(g.edges(data=True)):
        a, b = int(a), int(b)
        if a == b:
            continue
        runs = int(d.get("runs") or 0)
        width = 0.8 + 5.0 * runs / max_runs
        (x1, y1), (x2, y2) = pos[a], pos[b]
        same_lane_skip = y1 == y2 and abs(x2 - x1) > 1
        rad = 0.0
        if g.has_edge(b, a):  # both directions observed: bend each to its own side
            rad = 0.4
        elif same_lane_skip:
            rad = -0.35 if (a + b) % 2 else 0.35
        arrow = FancyArrowPatch((x1, y1), (x2, y2), arrowstyle="-|>", mutation_scale=12 + 2 * width,
                                lw=width, color="#444444", alpha=0.85,
                                connectionstyle=f"arc3,rad={rad}",
                                shrinkA=math.sqrt(sizes[a]) / 2 + 2, shrinkB=math.sqrt(sizes[b]) / 2 + 2,
                                zorder=1)
        ax.add_patch(arrow)
        arrows.append(arrow)
        tops = d.get("top_features") or []
        text = [f"{runs}/{n_total} runs"]
        if tops:
            t = tops[0]
            text.append(f"{symbol(t['feature'])} {_fmt_change(t.get('change_z'))} z")
        label = "\n".join(text)
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        mx, my = mx + 0.5 * rad * (y2 - y1), my - 0.5 * rad * (x2 - x1)
        straight = rad == 0.0  # put the label just above a straight arrow so the arrow stays visible
        ax.annotate(label, (mx, my), xytext=(0, 5 if straight else 0), textcoords="offset points", ha="center",
                    va="bottom" if straight else "center", fontsize=7.5, zorder=5,
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="#999999", alpha=0.9))
        edges.append((a, b))
        widths[(a, b)] = width
        labels[(a, b)] = label

    ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    ax.set_ylim(min(ys + [0]) - 0.75, max(ys + [0]) + 0.6)
    ax.set_yticks([])
    ax.set_xticks(sorted(set(xs)))
    ax.set_xticklabels([f"{int(x)}" for x in sorted(set(xs))])
    ax.set_xlabel("state (canonical order: earliest mean first visit on the left)")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"Training map: {len(nodes)} states, {len(edges)} observed transitions, {n_total} runs")
    handles = state_legend_handles(fit)
    if ring is not None:
        handles.append(Line2D([], [], marker="o", ms=12, mfc="none", mec=MARK, mew=2, ls="none",
                              label="detour state (dashed ring)"))
    handles.append(Line2D([], [], color="#444444", lw=3, label="edge width ∝ runs taking it"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(len(handles), 4),
              fontsize=8, frameon=False)
    return {"nodes": nodes, "pos": pos, "node_sizes": sizes, "node_colors": colors, "edges": edges,
            "edge_widths": widths, "edge_labels": labels, "highlighted": highlighted,
            "node_collection": node_coll, "ring_collection": ring, "arrows": arrows}


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
            "top_features": ", ".join(f"{symbol(t['feature'])} {_fmt_change(t.get('change_z'))}" for t in tops[:3]),
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

    One ``LineCollection`` per seed (checkpoints beyond the decoded range are grey); a white
    dot with a black edge marks each run's convergence time.
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
        segs = np.stack([pts[:-1], pts[1:]], axis=1)
        coll = LineCollection(segs, colors=rgba[st[:-1]], linewidths=linewidth, alpha=0.85)
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
    ax.set_xlabel(time_label(fit))
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric_label(metric, with_unit=False)}: {len(lines)} runs, coloured by state")
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
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([f"seed {s}" + ("" if conv[s] is not None else " (never)") for s in order],
                       fontsize=7 if len(order) > 20 else 8)
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.set_xlim(float(fit.runs["step"].min()), float(fit.runs["step"].max()))
    ax.set_xlabel(time_label(fit))
    ax.set_ylabel("run (sorted by convergence time)")
    ax.set_title("Decoded state over time, one strip per run, fastest to converge at the top")
    undecoded = bool((fit.runs["state"] < 0).any())
    ax.legend(handles=state_legend_handles(fit, undecoded=undecoded) + [mark], loc="upper left",
              bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return {"order": order, "segments": segments, "collections": colls, "convergence": dict(zip(cy, cx))}


# --------------------------------------------------------------------------- detours


#: How a state without a delay test reads, by status (``{n}``: runs, ``{m}``: min_runs).
STATUS_TEXT = {
    "obligatory": "obligatory (all {n} runs visit it)",
    "unvisited": "not visited",
    "not_estimable": "not estimable (< {m} runs)",
    "tested": "tested",
}
NO_TEST = "#EEEEEE"  # background of states without a delay test


def status_text(fit: FitArtifacts, row: dict) -> str:
    """``"not estimable (< 5 runs)"`` etc. for a row of ``fit.state_tests``."""
    status = row.get("status") or "?"
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


def plot_delays(ax, fit: FitArtifacts) -> dict:
    """Convergence delay per state: mean (restricted) convergence step of the runs visiting it
    minus that of the runs skipping it, with its 95 % Welch interval.

    Only tested states get a bar (state colour; adjusted p above it). Detour states are
    hatched with a thick black edge and starred (★). Obligatory, unvisited and not-estimable
    states (fewer than ``min_runs`` visiting or skipping runs) get a grey column and a label,
    never a bar, so they can never look significant. Fits without per-state tests (older
    format) get a note instead.
    """
    from matplotlib.patches import Patch

    rows = fit.state_tests
    detours = set(fit.detour_states)
    unit = fit.step_unit
    states = [int(r["state"]) for r in rows]
    info = {"states": states, "status": {}, "delay": [], "ci_low": [], "ci_high": [], "p_adjusted": [],
            "bars": [], "hatched": [], "greyed": [], "labels": {}, "detours": sorted(detours),
            "paper_rule": [], "colors": []}
    if not rows:
        ax.text(0.5, 0.5, "no per-state delay tests in this fit (it predates them);\n"
                "rerun `latent fit` to get them", transform=ax.transAxes, ha="center", va="center",
                fontsize=10, color="#555555")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("Convergence delay per state")
        return info
    rule = fit.detour_rule
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
            ax.axvspan(i - 0.42, i + 0.42, color=NO_TEST, zorder=0, lw=0)
            text = status_text(fit, r)
            ax.text(i, 0.5, text.replace(" (", "\n("), transform=ax.get_xaxis_transform(), rotation=90,
                    ha="center", va="center", fontsize=8, color="#555555", zorder=4,
                    bbox=dict(boxstyle="round,pad=0.25", fc=NO_TEST, ec="none"))
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
        ax.annotate(text, (i, top), xytext=(0, 4), textcoords="offset points", ha="center", va="bottom",
                    fontsize=8, fontweight="bold" if is_detour else "normal", zorder=5)
    ax.axhline(0, color=MARK, lw=0.8)
    ax.margins(y=0.25)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"state {s}" + ("\n(paper rule)" if s in info["paper_rule"] else "") for s in states])
    ax.set_ylabel(f"delay ({unit}s)")
    tau = fit.analysis["convergence"].get("tau")
    how = []
    if rule.get("rule"):
        how.append(f"{rule['rule']} rule")
    if rule.get("alpha") is not None:
        how.append(f"maxT-adjusted p < {rule['alpha']:g}")
    if rule.get("min_runs") is not None:
        how.append(f"tested when ≥ {rule['min_runs']} runs visit and ≥ {rule['min_runs']} skip")
    ax.set_xlabel("state" + (f" (detours: {', '.join(how)})" if how else ""))
    ax.set_title("Convergence delay per state: mean convergence of the runs visiting it minus the runs skipping it"
                 + (f"\n(convergence steps restricted at τ = {float(tau):g} {unit}s)" if tau is not None else ""),
                 fontsize=9.5, wrap=True)
    handles = []
    if any(b is not None for b in info["bars"]):
        handles.append(Patch(facecolor="white", edgecolor=MARK, label="95 % Welch interval"))
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.92, "no state could be tested", transform=ax.transAxes, ha="center", va="top",
                fontsize=9, color="#555555", zorder=5, bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="none"))
    if info["hatched"]:
        handles.append(Patch(facecolor="#DDDDDD", edgecolor=MARK, hatch="//", lw=2, label="★ detour state"))
    if info["greyed"]:
        handles.append(Patch(facecolor=NO_TEST, edgecolor="none", label="not tested (see label)"))
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return info


# --------------------------------------------------------------------------- regression


def plot_regression(ax, fit: FitArtifacts) -> dict:
    """Regression contrast of convergence time on occupancy, per state, with bootstrap intervals.

    Bars take the state colours; detour states are hatched with a thick black edge and starred.
    States without a coefficient are gaps on a grey column, labelled "not visited", "not
    estimable" (fewer than ``min_runs`` runs visit them) or "not identifiable" (their share of
    checkpoints is an exact combination of other states', e.g. the same in every run).
    """
    from matplotlib.patches import Patch

    reg = fit.regression
    k = fit.n_states
    states = [int(s) for s in (reg.get("states") or range(k))]

    def col(name):
        vals = reg.get(name) or [None] * len(states)
        return [math.nan if v is None else float(v) for v in vals]

    coef, lo, hi = col("coef"), col("ci_low"), col("ci_high")
    estimable = reg.get("estimable") or [None] * len(states)
    reasons = reg.get("not_estimable") or [None] * len(states)
    min_runs = reg.get("min_runs", fit.min_runs)
    detours = set(fit.detour_states)
    bars, hatched, colors, gaps = [], [], [], {}
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
            ax.axvspan(i - 0.42, i + 0.42, color=NO_TEST, zorder=0, lw=0)
            ax.text(i, 0.5, text.replace(" (", "\n("), transform=ax.get_xaxis_transform(), rotation=90,
                    ha="center", va="center", fontsize=8, color="#555555", zorder=4,
                    bbox=dict(boxstyle="round,pad=0.25", fc=NO_TEST, ec="none"))
            gaps[s] = text
            bars.append(None)
            continue
        is_detour = s in detours
        bar = ax.bar(i, c, color=color, edgecolor=MARK if is_detour else "none", linewidth=2.0 if is_detour else 0,
                     hatch="//" if is_detour else None, width=0.7, zorder=2)[0]
        bars.append(bar)
        if is_detour:
            hatched.append(s)
        if math.isfinite(lo[i]) and math.isfinite(hi[i]):
            ax.errorbar(i, c, yerr=[[c - lo[i]], [hi[i] - c]], color=MARK, capsize=4, lw=1.2, zorder=3)
        if is_detour:
            top = hi[i] if math.isfinite(hi[i]) else c
            ax.annotate("★ detour", (i, top), xytext=(0, 4), textcoords="offset points", ha="center",
                        va="bottom", fontsize=8, fontweight="bold")
    if not any(math.isfinite(c) for c in coef):
        ax.text(0.5, 0.9, "no state's coefficient can be estimated on this design", transform=ax.transAxes,
                ha="center", va="center", fontsize=10, color="#555555")
    ax.axhline(0, color=MARK, lw=0.8)
    ax.margins(y=0.15)
    ax.set_xlim(-0.6, len(states) - 0.4)
    ax.set_xticks(range(len(states)))
    ax.set_xticklabels([f"state {s}" for s in states])
    unit = fit.step_unit
    ax.set_ylabel(f"coefficient ({unit}s)" if reg.get("estimable") is not None
                  else f"coefficient ({reg.get('target') or 'convergence time'} per unit of time fraction)")
    ax.set_xlabel("state (regressor: fraction of a run's checkpoints spent in it)")
    r2, p = reg.get("r2"), reg.get("p_value")
    stats = []
    if r2 is not None:
        stats.append(f"R² = {float(r2):.3f}")
    if p is not None:
        stats.append(f"p = {float(p):.2g}")
    n_boot = reg.get("n_boot")
    ax.set_title("Occupancy regression: convergence time vs. time spent in each state"
                 + (f"\n({', '.join(stats)})" if stats else ""), fontsize=9.5)
    handles = [Patch(facecolor="white", edgecolor=MARK, label=f"{'bootstrap ' if n_boot else ''}interval"
                     + (f" ({n_boot} resamples)" if n_boot else ""))]
    if hatched:
        handles.append(Patch(facecolor="#DDDDDD", edgecolor=MARK, hatch="//", lw=2, label="★ detour state"))
    if gaps:
        handles.append(Patch(facecolor=NO_TEST, edgecolor="none", label="gap: no coefficient (see label)"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return {"states": states, "coef": coef, "ci_low": lo, "ci_high": hi, "detours": sorted(detours),
            "hatched": hatched, "colors": colors, "bars": bars, "gaps": gaps}


# --------------------------------------------------------------------------- state profiles


def plot_state_profiles(ax, fit: FitArtifacts, annotate: bool | None = None) -> dict:
    """Heatmap of per-state feature means in z units (rows: states, columns: features)."""
    from matplotlib.patches import Rectangle

    m = fit.means_z
    k, d = m.shape
    lim = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
    lim = lim or 1.0
    im = ax.imshow(m, cmap=DIVERGING_CMAP, vmin=-lim, vmax=lim, aspect="auto")
    if annotate is None:
        annotate = k * d <= 400
    if annotate:
        for i in range(k):
            for j in range(d):
                v = m[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 * lim else "black")
    ax.set_xticks(range(d))
    ax.set_xticklabels([short_feature(f) for f in fit.features], rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(k))
    ax.set_yticklabels([f"state {s}" + (" ★" if s in fit.detour_states else "") for s in range(k)])
    for s in range(k):  # a swatch of the state colour left of each row
        ax.add_patch(Rectangle((-0.5 - 0.25, s - 0.5), 0.25, 1.0, color=state_color(s), clip_on=False))
    ax.set_xlim(-0.75, d - 0.5)
    ax.set_xlabel("feature")
    ax.set_ylabel("state (★ = detour)")
    ax.set_title("State profiles: mean of each feature per state (z-units)")
    cbar = ax.figure.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cbar.set_label("state mean (z-units)")
    return {"matrix": m, "features": fit.features, "states": list(range(k)), "image": im}


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
    ax.set_xlabel(f"convergence time ({fit.step_unit}s; {rule})")
    ax.set_ylabel("number of runs")
    ax.set_title("Convergence time")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return {"times": times.tolist(), "never": never, "median": median, "counts": np.asarray(counts).tolist(),
            "bin_edges": np.asarray(edges).tolist()}
