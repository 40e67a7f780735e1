"""Lay the figures out and write the report: ``index.html`` plus each figure as PNG and SVG.

``index.html`` is self-contained: figures are inlined as base64 PNG ``data:`` URIs, styles are
inline, there is no script, and a Content-Security-Policy (``default-src 'none'``, images
only from ``data:``) keeps the browser from fetching anything, so the page opens offline.

The report is rendered into a temporary directory under ``reports/`` and renamed into place
at the end, so a failed render never leaves a half-written report or damages an old one.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np

from latent.family import FAMILY_WORDS
from latent.trainmap import format_metric, format_step, phase_text

from . import figures as F
from .artifacts import FitArtifacts

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
#: The policy of a page with the interactive view: inline scripts may run (BokehJS and the view are
#: inlined; BokehJS compiles the view's callbacks from strings, hence 'unsafe-eval'), and still nothing
#: may be fetched from anywhere (default-src 'none' covers connect-src).
CSP_INTERACTIVE = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; img-src data:; "
                   "style-src 'unsafe-inline'")
PNG_DPI = 150


@dataclass
class RenderedFigure:
    name: str
    title: str
    caption: str
    png: bytes
    svg: bytes
    info: dict


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


@dataclass(frozen=True)
class FigureRecord:
    """One figure of the report, in one place: its anchor name, title, how it is drawn, and the HTML that
    follows it on the page.

    Attributes
    ----------
    name : str
        Section anchor and file stem (``training_map`` → ``training_map.png``).
    title : str
    draw : callable
        ``draw(fit, metrics)`` → ``(Figure, info, caption)``, or None when the fit has nothing to draw.
    after : callable, optional
        ``after(fit)`` → HTML placed under the figure (its tables).
    lead : str, optional
        HTML placed between the title and the figure.
    anchor : str, optional
        The section's id on the page when it differs from ``name``.
    snapshots : bool
        Whether ``draw`` also takes the runs' weight snapshots: ``draw(fit, metrics, snapshots)``
        with ``snapshots`` from :func:`latent.reports.figures.weight_snapshots` (``{}`` when there are none).

    The comparison page (:mod:`latent.reports.compare`) lays out the same records, drawn from the
    comparison and its fits instead of one fit.
    """

    name: str
    title: str
    draw: Callable
    after: Callable | None = None
    lead: str | None = None
    anchor: str | None = None
    snapshots: bool = False

    @property
    def section(self) -> str:
        return self.anchor or self.name


def _draw_model_selection(fit: FitArtifacts, metrics):
    fig = _new_figure(9, 4.6)
    info = F.plot_model_selection(fig.add_subplot(), fit)
    has_se = bool(info["errorbar_k"])
    return fig, info, (f"{F.selection_caption(fit)}. The black curve is the score K was chosen by (lower is better)"
                       + (", with ± the standard error of each K's difference to the best K" if has_se else "")
                       + ". The table below lists every K.")


def _draw_training_map(fit: FitArtifacts, metrics):
    g = fit.graph
    n_lanes = len({y for _, y in F.map_layout(fit).values()})
    width = min(11.0, max(7.0, 1.5 * g.number_of_nodes() + 1.0))
    fig = _new_figure(width, 2.0 + 2.2 * n_lanes)
    info = F.plot_training_map(fig.add_subplot(), fit)
    # as tall as the map needs at this width (equal aspect), plus the title and the legend
    scale = (width - 0.2) * 72 / max(info["width_pt"], 1.0)
    fig.set_size_inches(width, min(max(info["height_pt"] * scale / 72 + 0.8, 2.0), 2.0 + 2.2 * n_lanes))
    node_metrics = F.map_metrics(fit)
    return fig, info, (
        "States left to right in canonical order (earliest mean first visit first); the most travelled "
        "route on one line, other states above and below it. Node area: share of all decoded checkpoints. "
        "Beside each node: that share and the runs visiting it, the "
        f"{fit.step_unit}s where runs sit in it (10th–90th percentile of its checkpoints)"
        + (f" and its mean {' and '.join(node_metrics)}" if node_metrics else "") + ". "
        "Arrow width: number of runs taking the transition. Arrow labels: that number, and the feature with "
        "the highest importance for the transition (the filtered-posterior gradient, docs/fit.md) with the "
        "change of its state mean in z units; the most important feature is not necessarily the one that "
        "changes most. The tables below say what each state means and, per transition, give the top three "
        "features and the convergence of the runs taking it. Dashed rings mark detour states.")


def _draw_trajectories(fit: FitArtifacts, metrics):
    chosen = F.trajectory_metrics(fit, metrics)
    if not chosen:
        return None
    ncols = 2 if len(chosen) > 1 else 1
    nrows = math.ceil(len(chosen) / ncols)
    fig = _new_figure(11, 3.3 * nrows + 0.6)
    infos = {}
    for i, m in enumerate(chosen):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        infos[m] = F.plot_trajectories(ax, fit, m)
    undecoded = bool((fit.runs["state"] < 0).any())
    from matplotlib.lines import Line2D

    handles = F.state_legend_handles(fit, undecoded=undecoded) + [
        Line2D([], [], marker="o", mfc="white", mec="black", ls="none", label="convergence")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8), fontsize=8,
               frameon=False)
    missing = [m for m in metrics if m not in chosen]
    return fig, infos, ("Every run's curve, each segment coloured by its decoded state; circles mark convergence. "
                        + (f"Not in the run tables, so not shown: {', '.join(missing)}. " if missing else "")
                        + (f"The last panel is the most important feature overall ({chosen[-1]})."
                           if chosen[-1] not in metrics else ""))


def _draw_progress(fit: FitArtifacts, metrics):
    panels = F.progress_panels(fit)
    if not panels:
        return None
    fig = _new_figure(11, 9.2)
    grid = fig.add_gridspec(3, 2)
    infos = {}
    for i, m in enumerate(panels):
        ax = fig.add_subplot(grid[i // 2, i % 2])
        infos[m] = F.plot_trajectories(ax, fit, m)
        values = fit.runs[m].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if m in ("restricted_loss", "excluded_loss") and values.size and (values > 0).all():
            ax.set_yscale("log")  # losses fall over orders of magnitude
            ax.set_ylim(values.min() / 1.3, values.max() * 1.3)
    infos["concentration"] = F.plot_fourier_concentration(fig.add_subplot(grid[2, 0]), fit)
    infos["spectrum"] = F.plot_fourier_spectrum(fig.add_subplot(grid[2, 1]), fit)
    return fig, infos, (
        "Fourier progress measures of modular arithmetic, each run coloured by its decoded state "
        "(collect/progress.py, docs/collect.md). Restricted loss: the training loss when the MLP's "
        "neurons keep only their mean and their components along the key frequencies' "
        "cos/sin(w(a+b)); it falls as the generalising circuit forms. Excluded loss: the training loss "
        "with exactly those components removed; it rises while the circuit forms, because the network "
        "comes to rely on it, before the validation accuracy jumps. Gini of the embedding's frequency "
        "norms: how few frequencies carry it. Sum of squared weights: it falls in the cleanup phase, "
        "as weight decay removes the memorising solution. Bottom left: each run's embedding settling on "
        "its own key frequencies (the share of its energy in the five frequencies that carry most at its "
        "end); bottom right: the spectrum of the run that converges at the median time"
        + (f" (run {infos['spectrum']['seed']}; its largest frequencies at the end: "
           f"{', '.join(map(str, infos['spectrum']['top_at_end']))})"
           if infos["spectrum"].get("top_at_end") else "") + ".")


def _draw_weights(fit: FitArtifacts, metrics, snapshots):
    if not snapshots:
        return None
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    runs = F.snapshot_runs(fit, snapshots)
    ncols = min(F.MAX_SNAPSHOT_PANELS, max(len(snapshots[s]) for _, s in runs))
    nrows = 2 * len(runs)
    # a fixed grid in inches (the panels have no ticks, so nothing to measure): a constrained layout
    # of up to 36 axes would cost more than drawing them
    panel, title, gap, left, right, edge = 1.45, 0.46, 0.14, 0.95, 0.85, 0.08
    width = left + ncols * panel + (ncols - 1) * gap + right
    height = edge + nrows * (title + panel) + edge
    fig = Figure(figsize=(width, height))
    grid = fig.add_gridspec(nrows, ncols, left=left / width, right=1 - right / width, bottom=edge / height,
                            top=1 - (edge + title) / height, wspace=gap / panel, hspace=title / panel)
    axes = grid.subplots(squeeze=False)
    info = F.plot_weight_snapshots(axes, fit, snapshots, runs)
    p = F.snapshot_modulus(fit)
    bar_h = min(2.4, 0.8 * height)
    cax = fig.add_axes([(width - right + 0.18) / width, (height - bar_h) / 2 / height, 0.14 / width, bar_h / height])
    bar = fig.colorbar(ScalarMappable(Normalize(0, p), F.TOKEN_CMAP), cax=cax)
    bar.set_label("token a (cyclic)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    shown = {len(r["steps"]) for r in info["runs"]}
    total = {len(snapshots[r["seed"]]) for r in info["runs"]}
    words = {"fastest": "the fastest to converge", "median": "the median", "slowest": "the slowest"}
    if len(info["runs"]) == 1:
        which = f"the only run with snapshots (run {info['runs'][0]['seed']})"
    else:
        roles = [f"{words[r['role']]} (run {r['seed']})" for r in info["runs"]]
        which = f"{len(roles)} of the runs with snapshots: " + ", ".join(roles[:-1]) + " and " + roles[-1] + ","
    return fig, info, (
        f"The token embedding (the first p = {p} rows of each weight snapshot's embedding: the numbers 0..{p - 1}) "
        f"of {which} at "
        + (f"{min(shown)} of {'its' if len(info['runs']) == 1 else 'their'} {max(total)} snapshots (evenly by "
           "index, the first and the last kept)"
           if shown != total else "every snapshot")
        + ". Upper row of each run: the tokens on the embedding's top two principal components (rows centred, by "
        "SVD; each component's sign set so its largest coordinate is positive), coloured by token a on a cyclic "
        "map. Lower row: the tokens on the Fourier circle of the run's key frequency k (the frequency with the most "
        "energy in the embedding over the token axis at its last snapshot): token a's centred embedding projected "
        "on the unit directions of Σ_a cos(2πka/p)·E[a] and Σ_a sin(2πka/p)·E[a]. Once the circuit has formed, "
        "the tokens lie on a circle at angle 2πka/p, and the grey line, which joins them in that order, is a "
        "regular polygon. Above each panel: the step, the run's decoded state there (also the frame's colour) and, "
        "on the circle, k's share of the embedding's non-constant Fourier energy.")


def _draw_occupancy(fit: FitArtifacts, metrics):
    n = len(fit.seeds)
    fig = _new_figure(11, 1.2 + 0.22 * n)
    info = F.plot_occupancy(fig.add_subplot(), fit)
    return fig, info, ("One strip per run, sorted by convergence time (fastest at the top); the black tick marks "
                       "convergence.")


def _draw_detours(fit: FitArtifacts, metrics):
    testable = any((r.get("status") or "") == "tested" for r in fit.state_tests or [])
    if testable or not fit.state_tests:
        fig = _new_figure(max(8.0, 1.1 * fit.n_states + 4.5), 8.4)
        top, bottom = fig.subplots(2, 1)
    else:  # no state could be tested: the delay panel is a strip saying so, not an empty half page
        fig = _new_figure(max(8.0, 1.1 * fit.n_states + 4.5), 5.6)
        top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [1, 3]})
    info = {"delays": F.plot_delays(top, fit), "regression": F.plot_regression(bottom, fit)}
    rule = fit.detour_rule.get("rule")
    mechanical = info["regression"].get("mechanical")
    return fig, info, (
        ("Top: for each state, the mean convergence step of the runs that visit it minus that of the runs "
         "that skip it, with a 95 % Welch interval and the one-sided permutation p adjusted over the tested states (Westfall–Young maxT). "
         "Obligatory, unvisited and not-estimable states (too few runs on one side) are grey and untested. "
         if fit.state_tests else
         "Top: this fit predates per-state delay tests. ")
        + "Bottom: the occupancy-regression contrast of each state with its bootstrap interval; gaps are "
        "states without a coefficient (not visited, or visited by too few runs to estimate it); pale bars "
        "with a dashed edge are coefficients whose interval crosses zero, so their sign is not established. "
        + (f"‡: with runs of equal length, state {mechanical}'s coefficient is negative by construction "
           "(see below). " if mechanical is not None else "")
        + "Hatched bars marked ★ are detour states"
        + (f" (by the {rule} rule)." if rule else ".")
        + " The table below gives every state's numbers.")


def _draw_state_profiles(fit: FitArtifacts, metrics):
    d = len(fit.features)
    fig = _new_figure(max(7.0, 0.75 * d + 3), 1.6 + 0.45 * fit.n_states)
    info = F.plot_state_profiles(fig.add_subplot(), fit)
    return fig, info, (f"Mean of each feature in each state, in z units ({F.scaling_text(fit)}, as the HMM saw "
                       "them). Features are named by their columns everywhere in this report. The table below gives "
                       "the same means in original units.")


def _draw_convergence(fit: FitArtifacts, metrics):
    fig = _new_figure(7, 3.6)
    info = F.plot_convergence_histogram(fig.add_subplot(), fit)
    return fig, info, "Distribution of convergence times over runs."


def _draw_forecasts(fit: FitArtifacts, metrics):
    fig = _new_figure(8, 3.8)
    info = F.plot_forecast_backtest(fig.add_subplot(), fit)
    return fig, info, (
        "What latent predict would have said about these runs part-way through: each run is cut after a "
        "share of its checkpoints and its convergence step forecast from the other runs that were in the "
        f"same state for as long (the run itself left out; the HMM is not refitted, so this is slightly "
        f"optimistic: bench/bench_predict.py holds runs out of the fit too). Blue: share of the runs not yet "
        f"converged at the cut whose {100 * F.forecast_backtest(fit)['level']:.0f} % interval covered the "
        "step they converged at; n above each point is their number. Orange: the interval's median width. "
        "The table below adds the detour calls. See docs/predict.md.")


def _map_tables(fit: FitArtifacts) -> str:
    return _phases_html(fit) + _boundaries_html(fit) + _robustness_html(fit) + _ppc_html(fit) + _transitions_html(fit)


def _profile_tables(fit: FitArtifacts) -> str:
    return f"<h3>In original units</h3>{_table_html(fit)}"


def figure_records() -> tuple[FigureRecord, ...]:
    """The report's figures in page order: each drawn, captioned and followed by its tables here."""
    return (
        FigureRecord("model_selection", "Model selection", _draw_model_selection, lambda fit: _selection_html(fit)),
        FigureRecord("training_map", "Training map", _draw_training_map, _map_tables),
        FigureRecord("trajectories", "Trajectories", _draw_trajectories),
        FigureRecord("progress", "Progress measures (Nanda et al.)", _draw_progress),
        FigureRecord("weights", "Weights: the token embedding at its snapshots", _draw_weights, snapshots=True),
        FigureRecord("occupancy", "State occupancy per run", _draw_occupancy),
        FigureRecord("detours", "Detours", _draw_detours, lambda fit: _states_html(fit),
                     lead=f"<p class=lead><b>What a detour is.</b> {_esc(DETOUR_DEFINITION)}</p>"),
        FigureRecord("state_profiles", "State profiles", _draw_state_profiles, _profile_tables),
        FigureRecord("convergence", "Convergence time", _draw_convergence),
        FigureRecord("forecasts", "Forecasts (latent predict)", _draw_forecasts, lambda fit: _forecasts_html(fit)),
    )


def build_figures(fit: FitArtifacts, metrics=F.DEFAULT_METRICS,
                  snapshots: dict | None = None) -> list[tuple[str, str, str, object, dict]]:
    """Draw every report figure; returns ``(name, title, caption, Figure, info)`` tuples.

    ``snapshots``: the runs' weight snapshots (:func:`latent.reports.figures.weight_snapshots`, which
    reads them when None is given).
    """
    if snapshots is None:
        snapshots = F.weight_snapshots(fit)
    out = []
    for rec in figure_records():
        drawn = rec.draw(fit, metrics, snapshots) if rec.snapshots else rec.draw(fit, metrics)
        if drawn is not None:
            fig, info, caption = drawn
            out.append((rec.name, rec.title, caption, fig, info))
    return out


def _save(fig, fmt: str) -> bytes:
    buf = io.BytesIO()
    kwargs = {"dpi": PNG_DPI} if fmt == "png" else {"metadata": {"Date": None}}
    fig.savefig(buf, format=fmt, **kwargs)
    return buf.getvalue()


def render_figures(fit: FitArtifacts, metrics=F.DEFAULT_METRICS, snapshots: dict | None = None) -> list[RenderedFigure]:
    """Draw and encode every figure as PNG and SVG (headless, no pyplot); ``snapshots`` as for
    :func:`build_figures`."""
    import matplotlib

    rendered = []
    # text.parse_math off: every name a user gave (studies, features, metrics) is drawn as written,
    # never as TeX ("$x$" stays "$x$", and an odd "$" cannot crash the drawing)
    with matplotlib.rc_context({"svg.hashsalt": "latent", "font.size": 9, "text.parse_math": False}):
        for name, title, caption, fig, info in build_figures(fit, metrics, snapshots):
            rendered.append(RenderedFigure(name, title, caption, _save(fig, "png"), _save(fig, "svg"), info))
    return rendered


# --------------------------------------------------------------------------- HTML


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt_seeds(seeds: list[int]) -> str:
    """``0–39`` style ranges."""
    seeds = sorted(seeds)
    parts, start, prev = [], None, None
    for s in seeds + [None]:
        if start is None:
            start = prev = s
            continue
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(f"{start}" if start == prev else f"{start}–{prev}")
        start = prev = s
    return ", ".join(parts)


def _fmt_num(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return _esc(x)
    if not math.isfinite(v):
        return "–"
    if v != 0 and 1e-3 <= abs(v) < 1e6:  # plain decimals in the usual range: 1550, not 1.55e+03
        decimals = max(digits - 1 - math.floor(math.log10(abs(v))), 0)
        text = f"{v:.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{v:.{digits}g}"


def _fmt_signed(x, digits: int = 4) -> str:
    text = _fmt_num(x, digits)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return text
    return "+" + text if math.isfinite(v) and v > 0 else text


def _fmt_p(x) -> str:
    return _fmt_num(x, 2)


def _stability_text(stab: dict | None, detour: bool = True) -> str:
    """``found in 19/20 resamples; detour in 14/20``, or ``""``."""
    if not isinstance(stab, dict) or not stab.get("of"):
        return ""
    text = f"found in {stab.get('found', '?')}/{stab['of']} resamples"
    if detour or stab.get("detour_found"):
        text += f"; detour in {stab.get('detour_found', 0)}/{stab['of']}"
    return text


def _detour_text(fit: FitArtifacts, d: dict) -> str:
    """One detour for the summary (plain text; the caller escapes it)."""
    unit = fit.step_unit
    s = d.get("state")
    if "delay" not in d and "rule" not in d:  # an older fit: the coefficient and its interval
        return (f"state {s} (coef {_fmt_num(d.get('coef'), 3)}, "
                f"interval {_fmt_num(d.get('ci_low'), 3)} to {_fmt_num(d.get('ci_high'), 3)}"
                f"{', significant' if d.get('significant') else ', not significant'}; "
                f"{d.get('runs_visiting', '?')} runs visit it, {d.get('converged_runs_skipping', '?')} "
                "converged runs skip it)")
    parts = []
    if d.get("delay") is not None:
        delay = f"delay {_fmt_signed(d.get('delay'))} {unit}s"
        if d.get("ci_low") is not None and d.get("ci_high") is not None:
            delay += (f" (95 % CI {_fmt_signed(d['ci_low'])} to {_fmt_signed(d['ci_high'])}), "
                      f"adjusted p = {_fmt_p(d.get('p_adjusted'))}")
        else:
            delay += " (not tested)"
        parts.append(delay)
    if d.get("rule") == "paper":
        parts.append(f"regression coefficient {_fmt_signed(d.get('coef'))} (interval "
                     f"{_fmt_signed(d.get('coef_ci_low'))} to {_fmt_signed(d.get('coef_ci_high'))})")
    parts.append("significant" if d.get("significant") else "not significant")
    parts.append(f"{d.get('runs_visiting', '?')} runs visit it, {d.get('runs_skipping', '?')} skip it")
    stab = _stability_text(d.get("stability"))
    if stab:
        parts.append(stab)
    return f"state {s}: " + "; ".join(parts)


DETOUR_DEFINITION = (
    "A detour is a state that some runs pass through and others skip, and whose visitors converge later than "
    "the runs that skip it (by the delay rule: significantly later, by a one-sided permutation test adjusted over "
    "the states tested; by the paper's rule: a positive occupancy-regression coefficient). A state that every run "
    "visits is obligatory and can never be a detour; a state that too few runs visit or skip cannot be tested."
)


def no_detour_reason(fit: FitArtifacts) -> str:
    """Why a fit has no detour state.

    Parameters
    ----------
    fit : FitArtifacts
        A fit whose ``detours`` is empty.

    Returns
    -------
    str
        One sentence starting with ``none``: every run visits every state (nothing is optional);
        the optional states are visited or skipped by too few runs to test; or no tested state's
        visitors converge significantly later (each with its delay and adjusted p). Just
        ``"none"`` for fits without per-state tests.
    """
    rows = fit.state_tests
    if not rows:
        return "none"
    m = fit.min_runs if fit.min_runs is not None else "min_runs"
    visited = [r for r in rows if r.get("status") != "unvisited"]
    optional = [r for r in visited if r.get("status") in ("tested", "not_estimable")]
    tested = [r for r in optional if r.get("status") == "tested"]
    if not optional:
        n = (int(visited[0].get("runs_visiting") or 0) + int(visited[0].get("runs_skipping") or 0)) if visited else 0
        return (f"none: every run ({n}) visits every state, so no state is optional, and a detour is a state that "
                "some runs skip; the runs differ only in how long they stay in each state")
    if not tested:
        return ("none: the optional states (" + ", ".join(str(r["state"]) for r in optional) + f") are visited or "
                f"skipped by fewer than {m} runs, too few to test whether they delay convergence")
    if fit.detour_rule.get("rule") == "paper":
        return ("none: no optional state has a positive occupancy-regression coefficient "
                "(the paper's rule)")
    alpha = fit.detour_rule.get("alpha")
    parts = [f"state {r['state']}: delay {_fmt_signed(r.get('delay'))} {fit.step_unit}s, adjusted p = "
             f"{_fmt_p(r.get('p_adjusted'))}" for r in tested]
    return ("none: no tested state's visitors converge significantly later than the runs that skip it"
            + (f" (adjusted p < {alpha:g} needed)" if alpha is not None else "") + ": " + "; ".join(parts))


def _rule_text(fit: FitArtifacts) -> str | None:
    rule = fit.detour_rule
    if not rule:
        return None
    m, alpha = rule.get("min_runs", "?"), rule.get("alpha", "?")
    if rule.get("rule") == "paper":
        text = ("paper: an optional state (some converging runs skip it) with a positive occupancy-regression "
                "coefficient")
    else:
        text = (f"delay: runs visiting the state converge later than runs skipping it (one-sided permutation "
                f"test of the Welch t, adjusted over the tested states by Westfall–Young maxT: p &lt; {_esc(alpha)})")
    return (f"{text}; a state is tested only when at least {_esc(m)} runs visit it and at least {_esc(m)} "
            "skip it, otherwise it is not estimable")


def summary_rows(fit: FitArtifacts, report_command: str | None) -> list[tuple[str, str]]:
    """(label, HTML value) pairs for the summary table."""
    meta, model, reg = fit.meta, fit.model, fit.regression
    conv = fit.convergence_times
    times = sorted(t for t in conv.values() if t is not None)
    never = [s for s, t in conv.items() if t is None]
    import statistics

    median = statistics.median(times) if times else None
    seeds_info = model.get("seeds") or {}
    excluded = seeds_info.get("excluded") or {}
    det_txt = "<br>".join(_esc(_detour_text(fit, d)) for d in fit.detours) or _esc(no_detour_reason(fit))
    det_txt += " <span class=dim>(what a detour is: see <a href='#detours'>Detours</a>)</span>"
    c = fit.analysis["convergence"]
    k_txt = (_esc(F.selection_caption(fit, sentence=False))
             if fit.selection_info else f"K = {fit.n_states}, chosen by {_esc(fit.criterion.upper())}")
    rows = [
        ("Study", f"{_esc(fit.study.name)} <span class=dim>({_esc(fit.study.root)})</span>"),
        ("Task / preset", f"{_esc(meta.get('task', '?'))} / {_esc(meta.get('preset', '–'))}"),
        ("Seeds", f"{len(fit.seeds)} decoded: {_esc(_fmt_seeds(fit.seeds))}"
         + (f"; held out for selection: {_esc(_fmt_seeds([int(s) for s in seeds_info['test']]))}"
            if seeds_info.get("test") else "")
         + (f"; excluded: {_esc(', '.join(f'{k} ({v})' for k, v in excluded.items()))}" if excluded else "")),
        ("Features", _esc(", ".join(fit.features))),
        ("Fit", f"{_esc(fit.fit_id)}; state family {_esc(str(model.get('family', 'gaussian')))} "
                f"({_esc(FAMILY_WORDS.get(str(model.get('family', 'gaussian')), '?'))}); "
                f"covariance {_esc(model.get('covariance_type', '?'))}"),
        ("States", k_txt),
        ("What each state means", "<br>".join(
            f"{_swatch(r['state'])}state {int(r['state'])}: {_esc(phase_text(r, fit.step_unit, top=0))}"
            for r in sorted(fit.phases.get("states") or [], key=lambda r: int(r["state"])))
         + " <span class=dim>(details under the training map)</span>"),
        ("Detour states", det_txt),
    ]
    rule = _rule_text(fit)
    if rule:
        rows.append(("Detour rule", rule))
    stab = fit.stability
    if stab:
        used, total = stab.get("used", 0), stab.get("resamples", "?")
        found = stab.get("state_found") or []
        text = (f"{_esc(used)} of {_esc(total)} bootstrap resamples of the runs refitted"
                + (f" (seed {_esc(stab['seed'])})" if stab.get("seed") is not None else ""))
        if found and used:
            text += "; each state found again in: " + ", ".join(
                f"state {i}: {_esc(n)}/{_esc(used)}" for i, n in enumerate(found))
        det = stab.get("detour_found") or {}
        if det and used:
            text += "; detours found again: " + ", ".join(
                f"state {_esc(k)}: {_esc(v)}/{_esc(used)}" for k, v in det.items())
        new = {k: v for k, v in (stab.get("new_detours") or {}).items() if v}
        text += ("; states that become detours only in resamples: " + ", ".join(
            f"state {_esc(k)} ({_esc(v)}/{_esc(used)})" for k, v in new.items())) if new else ""
        if stab.get("failures"):
            text += f"; {len(stab['failures'])} resample(s) failed"
        rows.append(("Stability", text))
    rows += [
        ("Regression", f"R² = {_fmt_num(reg.get('r2'), 3)}, p = {_fmt_num(reg.get('p_value'), 2)}"
         f" (F = {_fmt_num(reg.get('f_stat'), 3)}, {_esc(reg.get('n_runs', '?'))} runs)"
         + (f"; {_esc(reg['note'])}" if reg.get("note") and reg.get("note") != c.get("rule") else "")),
        ("Convergence", f"first {_esc(fit.step_unit)} where {_esc(c.get('metric', '?'))} "
         f"{'&gt;' if c.get('direction', 'above') == 'above' else '&lt;'} {_esc(c.get('threshold', '?'))}; "
         f"median {_fmt_num(median, 6)} {_esc(fit.step_unit)}s over {len(times)} converged runs; "
         f"{len(never)} never converged" + (f" ({_esc(c['rule'])})" if c.get("rule") else "")),
    ]
    diss = fit.analysis.get("dissimilarity") or {}
    if diss.get("value") is not None:
        rows.append(("Trajectory dissimilarity", f"{_fmt_num(diss.get('value'), 3)} "
                     f"<span class=dim>(ground metric: {_esc(diss.get('ground_metric', '?'))})</span>"))
    cmds = [("collect", meta.get("command")), ("fit", model.get("command")), ("report", report_command)]
    first_n = (model.get("config") or {}).get("first_n")
    note = ("<span class=dim>The fit command spells out every setting, defaults included"
            + (f"; <code>--first-n {_esc(first_n)}</code>: at most the first {_fmt_num(first_n, 6)} checkpoints of "
               "each run are fitted" if first_n is not None else "") + ".</span>")
    rows.append(("Commands", "".join(f"<code class=cmd>{_esc(cmd)}</code><br>" for _, cmd in cmds if cmd) + note))
    return rows


def _swatch(s: int) -> str:
    return f"<span class=sw style='background:{F.state_color(int(s))}'></span>"


def _states_html(fit: FitArtifacts, heading: bool = True) -> str:
    """The per-state table under the detours figure: tests, rules, regression and stability."""
    rows = fit.state_tests
    head = "<h3 id='state-tests'>Per-state tests</h3>" if heading else ""
    if not rows:
        return (f"{head}<p class=dim>This fit predates per-state delay tests "
                "(no <code>states</code> in analysis.json); rerun <code>latent fit</code> to get them.</p>")
    unit = _esc(fit.step_unit)
    detours = set(fit.detour_states)
    note = F.equal_length_note(fit)
    mechanical = F.final_state(fit) if note is not None else None
    body = []
    for r in rows:
        s = int(r["state"])
        status = r.get("status") or "?"
        text = F.status_text(fit, r)
        if status == "tested":
            delay = _fmt_signed(r.get("delay"))
            if r.get("ci_low") is not None and r.get("ci_high") is not None:
                delay += f" [{_fmt_signed(r['ci_low'])}, {_fmt_signed(r['ci_high'])}]"
            p = _fmt_p(r.get("p_adjusted"))
        elif status == "not_estimable":
            delay = _esc(text) + (f" <span class=dim>(observed {_fmt_signed(r['delay'])}, untested)</span>"
                                  if r.get("delay") is not None else "")
            p = "–"
        else:
            delay, p = "–", "–"
        is_detour = s in detours
        coef = _fmt_signed(r.get("coef"))
        if r.get("coef") is None:
            coef = "<span class=dim>none</span>"
        elif r.get("coef_ci_low") is not None and r.get("coef_ci_high") is not None:
            coef += f" [{_fmt_signed(r['coef_ci_low'])}, {_fmt_signed(r['coef_ci_high'])}]"
            if F.crosses_zero(r["coef_ci_low"], r["coef_ci_high"]):
                coef += " <span class='dim crosses'>(crosses 0)</span>"
        if r.get("coef") is not None and s == mechanical:
            coef += " ‡"
        stab = _stability_text(r.get("stability"), detour=is_detour) or "–"
        body.append(
            f"<tr class='state-row{' detour' if is_detour else ''}' data-state='{s}'>"
            f"<td class=l>{_swatch(s)}state {s}{' ★' if is_detour else ''}</td>"
            f"<td>{_esc(r.get('runs_visiting', '?'))}</td><td>{_esc(r.get('runs_skipping', '?'))}</td>"
            f"<td class=l>{_esc(text)}</td><td class=l>{delay}</td><td>{p}</td>"
            f"<td class=l>{'<b>yes ★</b>' if is_detour else 'no'}</td>"
            f"<td class=l>{'yes' if r.get('paper_rule') else 'no'}</td>"
            f"<td class=l>{coef}</td><td class=l>{_esc(stab)}</td></tr>")
    rule = fit.detour_rule.get("rule")
    return (f"{head}<table class='num states'><thead><tr><th>state</th>"
            "<th>runs visiting</th><th>runs skipping</th><th>status</th>"
            f"<th>delay ({unit}s) [95 % CI]</th><th>adjusted p</th>"
            f"<th>detour{f' ({_esc(rule)} rule)' if rule else ''}</th><th>paper rule</th>"
            f"<th>regression coef ({unit}s) [bootstrap interval]</th><th>stability</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
            "<p class=dim>Delay: mean convergence step of the runs visiting the state minus that of the runs "
            "skipping it. Paper rule: optional state with a positive regression coefficient (shown for "
            "comparison). Regression coef: (crosses 0) marks an interval that contains zero, so the sign of the "
            "coefficient is not established. Stability: in how many bootstrap resamples of the runs the state "
            "reappears, and is a detour again.</p>"
            + (f"<p class='note equal-length'>‡ {_esc(note)}</p>" if note else ""))


def _selection_html(fit: FitArtifacts) -> str:
    """Every K of the selection table, the chosen one marked."""
    sel = fit.selection
    label = _esc(fit.selection_label)
    body = []
    for _, r in sel.iterrows():
        k = int(r["k"])
        mark = " ★ chosen" if k == fit.n_states else (" runner-up" if k == fit.runner_up else "")
        ok = "–" if math.isnan(r["n_converged"]) else f"{int(r['n_converged'])}"
        failed = "" if math.isnan(r["n_failed"]) or not r["n_failed"] else f", {int(r['n_failed'])} failed"
        folds = fit.fold_choice.get(k, 0) if fit.fold_choice else None
        loglik = r["loglik"] if math.isfinite(r["loglik"]) else r["loglik_mean"]  # older fits: the mean
        body.append(
            f"<tr class='sel-row' data-k='{k}'><td class=l>{k}{mark}</td><td>{_fmt_num(r['n_params'], 6)}</td>"
            f"<td>{_fmt_num(r['score'], 7)}</td><td>{_fmt_num(r['se'], 4)}</td><td>{_fmt_num(r['spread'], 4)}</td>"
            f"<td>{_fmt_num(loglik, 7)}</td><td>{ok}{failed}</td>"
            + (f"<td>{folds}</td>" if folds is not None else "") + "</tr>")
    return ("<table class=num><thead><tr><th>K</th><th>parameters</th>"
            f"<th>{label} (score)</th><th>SE of difference to best</th><th>restart spread</th>"
            "<th>held-out log-likelihood</th><th>restarts converged</th>"
            + ("<th>folds choosing it</th>" if fit.fold_choice else "")
            + f"</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _warnings_html(fit: FitArtifacts) -> str:
    warnings = fit.warnings
    if not warnings:
        return ""
    items = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
    return (f"<section id='warnings' class=warnings><h2>Warnings</h2>"
            f"<p class=dim>{len(warnings)} warning(s) logged by <code>latent fit</code>:</p>"
            f"<ul>{items}</ul></section>")


def _transitions_html(fit: FitArtifacts) -> str:
    table = F.transition_table(fit)
    if table.empty:
        return "<p class=dim>No transitions between states were observed.</p>"
    unit = _esc(fit.step_unit)

    def conv_text(r) -> str:
        if r["convergence_mean"] is None or r["convergence_mean"] != r["convergence_mean"]:
            return "–"
        return _fmt_num(r["convergence_mean"], 5) + (
            "" if r["convergence_std"] is None or r["convergence_std"] != r["convergence_std"]
            else f" ± {_fmt_num(r['convergence_std'], 3)}")

    convs = [conv_text(r) for _, r in table.iterrows()]
    # a column that is the same on every row (in a chain every run takes every transition) says
    # nothing per row: it becomes one sentence under the table
    same = len(table) > 1 and len(set(convs)) == 1
    body = []
    for (_, r), conv in zip(table.iterrows(), convs):
        sw = lambda s: f"<span class=sw style='background:{F.state_color(int(s))}'></span>{int(s)}"  # noqa: E731
        body.append(f"<tr><td>{sw(r['source'])} → {sw(r['target'])}</td><td>{int(r['runs'])}/{int(r['of'])}</td>"
                    f"<td>{_fmt_num(r['prob'], 3)}</td><td class=l>{_esc(r['top_features'])}</td>"
                    + ("" if same else f"<td>{conv}</td>") + "</tr>")
    note = (f"<p class=dim>The runs taking each transition converge alike: {convs[0]} {unit}s (mean ± sd) on "
            "every row, so that column is left out.</p>" if same else "")
    return ("<h3>Transitions</h3><table class=num><thead><tr><th>edge</th><th>runs</th><th>HMM probability</th>"
            "<th>top features by importance (their change on this move, z units)</th>"
            + ("" if same else f"<th>convergence of these runs ({unit}s)</th>")
            + f"</tr></thead><tbody>{''.join(body)}</tbody></table>{note}")


def _state_head(fit: FitArtifacts, s: int) -> str:
    name = fit.state_names.get(int(s))
    return (f"<span class=sw style='background:{F.state_color(int(s))}'></span>state {int(s)}"
            + (f" · {_esc(name)}" if name else "") + (" ★" if int(s) in fit.detour_states else ""))


def _story_html(fit: FitArtifacts) -> str:
    """The map in one paragraph of words, at the top of the page (fits from before state names: none)."""
    from latent.phase_names import map_story

    states = fit.phases.get("states") or []
    if not states or not all(r.get("name") for r in states):
        return ""
    times = [t for t in (fit.analysis["convergence"].get("times") or {}).values() if t is not None]
    story = map_story(states, [r["name"] for r in states], len(fit.seeds), fit.step_unit,
                      fit.analysis["convergence"], float(np.median(times)) if times else None, fit.detours)
    return (f"<p class=lead id='story'><b>The map in words.</b> {_esc(story)} <span class=dim>State names come "
            f"from each state's own numbers by a fixed rule ({_esc(fit.phases.get('naming', ''))}); they are "
            "labels for reading, not findings.</span></p>")


def _table_html(fit: FitArtifacts) -> str:
    """State means in original units: one row per feature, one column per state (so it stays narrow
    however many features the fit has)."""
    table = F.profile_table(fit)
    states = [int(s) for s in table.index]
    head = "".join(f"<th>{_state_head(fit, s)}</th>" for s in states)

    def share(x):
        return "–" if x is None or x != x else f"{float(x):.1%}"

    def runs(x):
        return "–" if x is None or x != x else _esc(int(x))

    share_cells = "".join(f"<td>{share(table.loc[s, 'occupancy'])}</td>" for s in states)
    run_cells = "".join(f"<td>{runs(table.loc[s, 'runs'])}</td>" for s in states)
    body = [f"<tr><th>time share</th>{share_cells}</tr>", f"<tr><th>runs</th>{run_cells}</tr>"]
    for f in fit.features:
        desc = F.feature_description(f)
        body.append(f"<tr class='feature-row' data-feature='{_esc(f)}'><th>{_esc(F.feature_name(f))}"
                    + (f" <span class=dim>{_esc(desc)}</span>" if desc else "") + "</th>"
                    + "".join(f"<td>{_fmt_num(table.loc[s, f])}</td>" for s in states) + "</tr>")
    return (f"<table class='num profile'><thead><tr><th>feature</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _phases_html(fit: FitArtifacts) -> str:
    """What each state means: performance in it, when runs sit in it, what moves on entering it."""
    ph = fit.phases
    table = F.phase_table(fit)
    if table.empty:
        return ""
    unit = _esc(fit.step_unit if fit.step_unit.endswith("s") else fit.step_unit + "s")
    metrics = list(ph.get("metrics") or [])
    occ = {int(n): fit.graph.nodes[n].get("occupancy") for n in fit.graph.nodes}
    rows_by_state = {int(r["state"]): r for r in ph.get("states") or []}
    body = []
    for s, row in table.iterrows():
        s = int(s)
        r = rows_by_state.get(s, {})
        if row["step_p10"] is None or row["step_p10"] != row["step_p10"]:
            where, span = "never visited", "–"
        else:
            where = f"{format_step(row['step_p10'])}–{format_step(row['step_p90'])}"
            span = f"{format_step(row['step_min'])}–{format_step(row['step_max'])}"
        cells = "".join(f"<td>{'–' if row[m] != row[m] else _esc(format_metric(m, float(row[m])))}</td>"
                        for m in metrics)
        sources = r.get("entered_from") or {}
        came = ", ".join(f"{k} ({v})" for k, v in sources.items()) or (
            "– (runs start in it)" if r.get("checkpoints") else "–")
        o = occ.get(s)
        body.append(
            f"<tr class='phase-row' data-state='{s}'><td class=l>{_state_head(fit, s)}</td>"
            f"<td>{_esc(row['runs'])}</td><td>{'–' if o is None else f'{float(o):.1%}'}</td>"
            f"<td>{where}</td><td>{span}</td>{cells}"
            f"<td class=l>{_esc(row['entering']) or '–'}</td><td class=l>{_esc(row['moving']) or '–'}</td>"
            f"<td class=l>{_esc(came)}</td></tr>")
    heads = "".join(f"<th>{_esc(F.feature_name(m))}</th>" for m in metrics)
    lo, hi = ph.get("percentiles") or [10, 90]
    window = ph.get("window", 5)
    note = (f"Means over the checkpoints decoded (Viterbi) in each state, every run pooled; performance columns "
            f"are read from the run tables whether or not they are HMM features"
            + ("" if metrics else " (these run tables have none)") + f". Where runs sit: the {lo}th–{hi}th "
            f"percentile of the steps of the state's checkpoints (nearest rank, so each is a checkpoint's step); "
            f"min–max: all of them. Entering it: for each time a run moves into the state from another one, the "
            f"mean z value of each feature over the first {window} checkpoints in the state (fewer if it stays "
            f"less) minus that over the last {window} checkpoints before; averaged over entries, the three "
            f"largest in absolute value. Moving in it: the mean change per checkpoint of each feature while runs stay "
            f"in the state (z units), the two fastest; near 0 for a place, not for a regime of change. Entered "
            f"from: the states runs come from, with counts.")
    if ph.get("computed"):
        note += " This fit predates the phases block of analysis.json; the table was computed from its saved paths."
    return (f"<h3 id='phases'>What each state means</h3><table class='num phases'><thead><tr><th>state</th>"
            f"<th>runs</th><th>time share</th><th>{unit} where runs sit<br><span class=dim>p{lo}–p{hi}</span></th>"
            f"<th>min–max</th>{heads}<th>entering it<br><span class=dim>top features, z units</span></th>"
            f"<th>moving in it<br><span class=dim>z per checkpoint</span></th>"
            f"<th>entered from</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<p class=dim>{_esc(note)}</p>")


def _boundaries_html(fit: FitArtifacts) -> str:
    """Which transitions are jumps and which cut through continuous change (latent.boundaries)."""
    b = fit.analysis.get("boundaries")
    if not isinstance(b, dict) or not b.get("transitions"):
        return ""
    body = []
    for r in b["transitions"]:
        if r.get("discrete") is None:
            verdict = f"too few boundaries to judge (fewer than {_esc(b.get('min_count', 5))})"
        elif r["discrete"]:
            verdict = "<b>discrete</b>: most boundaries jump"
        else:
            verdict = "continuous: the runs drift across it"
        share = "–" if r.get("share") is None else f"{float(r['share']):.0%}"
        body.append(f"<tr><td class=l>{_esc(r['source'])} → {_esc(r['target'])}</td><td>{_esc(r['boundaries'])}</td>"
                    f"<td>{_esc(r['jumps'])}</td><td>{share}</td><td class=l>{verdict}</td></tr>")
    widths = [int(w) for w in b.get("ramps") or [0]]
    ramps = [w for w in widths if w > 0]
    near = f"within {int(b.get('shift', 0))} checkpoints of" if int(b.get("shift", 0)) else "at"
    change = ("a step " + near + " the boundary" if not ramps else
              ("the best of a step and " if 0 in widths else "the best of ")
              + f"straight ramps over {', '.join(map(str, ramps))} checkpoints, their middle {near} the boundary,")
    note = (f"At each boundary the runs are projected on the direction the model says they move (from one state's "
            f"mean to the other's) and {change} is compared with a smooth curve (a quadratic in time) "
            f"over {2 * int(b.get('window', 8))} checkpoints; the boundary is a jump when that change explains more "
            f"than at {float(b.get('quantile', 0.95)):.0%} of the checkpoints inside the two states (same direction, "
            f"no boundary nearby). A transition is discrete when at least {float(b.get('share', 0.5)):.0%} of its "
            f"boundaries jump. States joined only by continuous transitions are stretches of one steady change, "
            f"not separate phases; dotted arrows on the map.")
    return ("<h3 id='transitions'>Discrete transitions or continuous change?</h3>"
            f"<p>{_esc(b.get('verdict', ''))}.</p>"
            "<table class='num'><thead><tr><th>transition</th><th>boundaries judged</th><th>jumps</th><th>share</th>"
            "<th>verdict</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>"
            f"<p class=dim>{_esc(note)}</p>")


def _ppc_html(fit: FitArtifacts) -> str:
    """The posterior predictive checks (latent.ppc): does the fitted model produce runs like these?"""
    ppc = fit.analysis.get("ppc")
    if not isinstance(ppc, dict) or not ppc.get("statistics"):
        return ""
    body = []
    for r in ppc["statistics"]:
        if r.get("data") is None or r.get("low") is None:
            cells, verdict = "<td>–</td><td>–</td>", "not defined here"
        else:
            cells = f"<td>{float(r['data']):.3g}</td><td>{float(r['low']):.3g} to {float(r['high']):.3g}</td>"
            verdict = "<b>outside: the model does not produce this</b>" if r.get("outside") else "inside"
        body.append(f"<tr><td class=l>{_esc(r.get('description', r.get('name')))}</td>{cells}"
                    f"<td class=l>{verdict}</td></tr>")
    note = (f"{_esc(ppc.get('n_sims'))} studies of the same shape were drawn from the fitted model and decoded with "
            "it, like the data. Where the data fall outside the range those studies span, the model misdescribes "
            "how the runs move, and the states and detours built on it should be read with that in mind.")
    return ("<h3 id='ppc'>Posterior predictive checks: does the model produce runs like these?</h3>"
            "<table class='num'><thead><tr><th>statistic</th><th>data</th><th>model</th><th>verdict</th></tr></thead>"
            "<tbody>" + "".join(body) + f"</tbody></table><p class=dim>{note}</p>")


def _robustness_html(fit: FitArtifacts) -> str:
    """The audit (latent.audit): which states and detours survive a change of method, in words."""
    audit = fit.analysis.get("audit")
    if not isinstance(audit, dict) or not audit.get("states"):
        return ""
    cps = {int(r["state"]): r for r in (audit.get("changepoints") or {}).get("states", [])}
    body = []
    for row in audit["states"]:
        st = int(row["state"])
        lost = [name for name, ok in (row.get("survives") or {}).items() if not ok]
        cp = cps.get(st) or {}
        verdict = "robust" if row.get("robust") else "<b>not robust</b>"
        cp_text = f"{cp.get('confirmed')} of {cp.get('entries')}" if cp.get("entries") else "–"
        body.append(f"<tr><td class=l>{_state_head(fit, st)}</td><td class=l>{verdict}</td>"
                    f"<td>{_esc(row.get('survived'))} / {_esc(row.get('of'))}</td>"
                    f"<td class=l>{_esc(', '.join(lost)) or '–'}</td><td>{_esc(cp_text)}</td></tr>")
    for row in audit.get("detours") or []:
        lost = [name for name, ok in (row.get("survives") or {}).items() if not ok]
        verdict = "robust detour" if row.get("robust") else "<b>detour does not survive a change of method</b>"
        body.append(f"<tr class=detour><td class=l>detour {_esc(row['state'])}</td><td class=l>{verdict}</td>"
                    f"<td>{_esc(row.get('survived'))} / {_esc(row.get('of'))}</td>"
                    f"<td class=l>{_esc(', '.join(lost)) or '–'}</td><td>–</td></tr>")
    alts = ", ".join(a["name"] + ("" if a.get("ok") else " (could not be fitted)") for a in audit.get("alternatives", []))
    cpm = audit.get("changepoints") or {}
    note = (f"Each state is compared with the states of {len(audit.get('alternatives', []))} alternative fits of the "
            f"same runs ({alts}): {audit.get('rule', '')}. Change points: {cpm.get('method', '')}; an entry into a "
            f"state counts when a change point lies within {cpm.get('tolerance', '?')} checkpoints of it. A state "
            "that is not robust is one reading of the runs among several; a detour that does not survive should "
            "not be reported as a finding.")
    return ("<h3 id='robustness'>Robustness: does each phase survive a change of method?</h3>"
            "<table class='num'><thead><tr><th>state</th><th>verdict</th><th>survives</th><th>lost in</th>"
            "<th>entries at a change point</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>"
            f"<p class=dim>{_esc(note)}</p>")


STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;
 margin:0;background:#fff}
main{max-width:1150px;margin:0 auto;padding:1.2em 1.5em 3em}
h1{font-size:1.6em;margin:.2em 0 .1em}h2{font-size:1.2em;margin:1.6em 0 .3em;border-bottom:1px solid #ddd}
nav a{margin-right:.9em;color:#0072B2}
tr.latent-hl td{background:#fff1b8}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .6em;vertical-align:top;text-align:left}
table.summary th{white-space:nowrap;color:#444}table.summary tr{border-bottom:1px solid #eee}
table.num td{text-align:right;font-variant-numeric:tabular-nums}table.num td.l{text-align:left}table.num{font-size:.9em;display:block;
 overflow-x:auto}table.num thead th{border-bottom:1px solid #999}
code{font:.9em ui-monospace,Menlo,Consolas,monospace;background:#f4f4f4;padding:.1em .3em;overflow-wrap:anywhere}
figure{margin:.4em 0 1em}figure img{max-width:100%;height:auto;display:block}
figcaption{color:#444;font-size:.92em;margin-top:.3em}.dim{color:#777;font-size:.9em}
.sw{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:-.1em;border-radius:2px}
.files a{margin-right:.6em;font-size:.9em}
section.warnings{background:#FFF6E0;border-left:4px solid #E69F00;padding:.1em 1em .4em;margin-top:1em}
section.warnings h2{border-bottom:none;margin-top:.5em}section.warnings li{margin:.2em 0}
table.states tr.detour{background:#F3F3F3}
table.profile th .dim{font-weight:normal;display:block}p.lead{margin:.3em 0 .6em}
p.note{color:#444;font-size:.92em;border-left:3px solid #999;padding-left:.6em}
"""


def _forecasts_html(fit: FitArtifacts) -> str:
    """Per cut: runs forecast, coverage, median width, and per detour the calls (risk >= 0.5)."""
    bt = F.forecast_backtest(fit)
    detours = bt["detours"]
    head = ("<thead><tr><th>seen</th><th>runs not converged</th><th>interval covered</th><th>median width</th>"
            "<th>without the state: covered</th><th>median width</th><th>sharpness gain</th>"
            + "".join(f"<th>detour {d}: runs still to enter / not</th><th>called right / falsely</th>" for d in detours)
            + "</tr></thead>")
    body = []
    pct = lambda x: "–" if x is None else f"{100 * x:.0f} %"  # noqa: E731
    for s in bt["summary"]:
        gain = s.get("sharpness_gain")
        cells = [f"{100 * s['fraction']:.0f} %", str(s["n"]),  # width in steps, as the forecasts
                 pct(s["coverage"]), _fmt_num(s["median_width"]),
                 pct(s.get("baseline_coverage")), _fmt_num(s.get("baseline_median_width")),
                 "–" if gain is None else (f"{100 * gain:+.0f} %" + (" (no sharper)" if gain <= 0 else ""))]
        for d in detours:
            c = s[f"detour_{d}"]
            cells += [f"{c['enter']} / {c['pending'] - c['enter']}", f"{c['called_right']} / {c['false_calls']}"]
        body.append("<tr>" + "".join(f"<td>{_esc(x)}</td>" for x in cells) + "</tr>")
    note = ("" if detours else "<p>No detour state, so no detour calls.</p>")
    note += ("<p class=dim>Without the state: the interval from every fitted run not converged by the same step "
             "(what a forecaster knows who only knows the run has not converged yet); sharpness gain: 1 − the "
             "forecast's median width / that interval's. A forecast is worth its state only when it gains at the "
             "same coverage.</p>")
    return (f"<h3>By share of the run seen</h3>{note}<table class=num>{head}<tbody>{''.join(body)}</tbody></table>"
            + _laws_html(bt) +
            f"<p class=dim>Forecast a run in progress: <code>latent predict --fit {_esc(fit.study.name)}/"
            f"{_esc(fit.fit_id)} STUDY</code>; follow a collection: <code>latent watch --fit ... --study STUDY</code>.</p>")


def _laws_html(bt: dict) -> str:
    """The forecast against the published laws of grokking delay (latent.delay_law) on the same cuts:
    median absolute error of each point forecast, and each law's interval coverage and width."""
    from latent.delay_law import LAW_TEXT
    from latent.predict import LAWS

    rows = [s for s in bt["summary"] if s["n"]]
    if not rows or not any(s.get(f"{law}_n") for s in rows for law in LAWS):
        return ""
    pct = lambda x: "–" if x is None else f"{100 * x:.0f} %"  # noqa: E731
    head = ("<thead><tr><th>seen</th><th>median error: forecast</th><th>without the state</th>"
            + "".join(f"<th>{law} law</th>" for law in LAWS)
            + "".join(f"<th>{law} law: covered</th><th>median width</th>" for law in LAWS) + "</tr></thead>")
    body = []
    for s in rows:
        cells = [f"{100 * s['fraction']:.0f} %", _fmt_num(s.get("median_error")), _fmt_num(s.get("baseline_median_error"))]
        cells += [_fmt_num(s.get(f"{law}_median_error")) for law in LAWS]
        for law in LAWS:
            cells += [pct(s.get(f"{law}_coverage")), _fmt_num(s.get(f"{law}_median_width"))]
        body.append("<tr>" + "".join(f"<td>{_esc(x)}</td>" for x in cells) + "</tr>")
    laws = "; ".join(f"<b>{law} law</b>: {_esc(LAW_TEXT[law])}" for law in LAWS)
    return ("<h3>Against published laws of grokking delay</h3><p class=dim>The same cuts, forecast by two published "
            f"first-passage laws that need no states: {laws}. Median error: the median absolute difference between a "
            "point forecast and the true convergence step over the runs that converge (– where half or more have no "
            "finite forecast). A law wins where its error is smaller at a coverage near the nominal one "
            "(docs/predict.md, 'Against published laws').</p>"
            f"<table class=num>{head}<tbody>{''.join(body)}</tbody></table>")


def _png_width(png: bytes) -> int:
    """Pixel width from a PNG's IHDR chunk."""
    return int.from_bytes(png[16:20], "big")


def _explore_html(parts: tuple[str, str, str] | None) -> str:
    if parts is None:
        return ""
    return ("<section id='explore'><h2>Explore</h2><p class=lead>The map, every run's curves and the slider are "
            "linked: click a state to highlight the runs that visit it, its checkpoints on the curves and its row "
            "in the phase table; click a run's marker or curve to draw its path through the map; drag the slider "
            "to see where every run is at that step; choose any feature for the curves. Under them, where the study "
            "has them, the picked run's embedding spectrum and its tokens on their Fourier circle (from its weight "
            "snapshots) follow the slider. The static figures below show the same fit.</p><noscript>"
            "<p class=dim>Scripts are off, so the interactive view is not drawn; "
            f"the figures below are the whole report.</p></noscript>{parts[1]}</section>")


def page_html(fit: FitArtifacts, rendered: list[RenderedFigure], report_command: str | None,
              interactive: tuple[str, str, str] | None = None) -> str:
    """The whole ``index.html`` as a string.

    ``interactive``: ``(resources, div, script)`` from :func:`latent.reports.interactive.explore_parts`,
    or None for a page without scripts.
    """
    title = f"latent report: {fit.study.name} / {fit.fit_id}"
    summary = "".join(f"<tr><th>{_esc(k)}</th><td>{v}</td></tr>" for k, v in summary_rows(fit, report_command))
    warnings = _warnings_html(fit)
    nav = ((f"<a href='#warnings'>Warnings ({len(fit.warnings)})</a>" if warnings else "")
           + "<a href='#summary'>Summary</a>" + ("<a href='#explore'>Explore</a>" if interactive else "")
           + "".join(f"<a href='#{r.name}'>{_esc(r.title)}</a>"
                     + ("<a href='#phases'>What each state means</a>" if r.name == "training_map" else "")
                     + ("<a href='#robustness'>Robustness</a>"
                        if r.name == "training_map" and fit.analysis.get("audit") else "")
                     for r in rendered)
           + ("<a href='#state-tests'>Per-state tests</a>" if any(r.name == "detours" for r in rendered)
              else "<a href='#states'>Per-state tests</a>"))
    sections = []
    records = {rec.name: rec for rec in figure_records()}
    for r in rendered:
        data = base64.b64encode(r.png).decode()
        rec = records.get(r.name)
        extra = rec.after(fit) if rec is not None and rec.after is not None else ""
        lead = (rec.lead or "") if rec is not None else ""
        sections.append(
            f"<section id='{r.name}'><h2>{_esc(r.title)}</h2>{lead}<figure>"
            f"<img src='data:image/png;base64,{data}' width='{_png_width(r.png) * 100 // PNG_DPI}' "
            f"alt='{_esc(r.title)}: {_esc(r.caption)}'>"
            f"<figcaption>{_esc(r.caption)} <span class=files>Files: <a href='{r.name}.png'>{r.name}.png</a>"
            f"<a href='{r.name}.svg'>{r.name}.svg</a></span></figcaption></figure>{extra}</section>"
        )
    if not any(r.name == "detours" for r in rendered):  # no detours figure to hang the table under
        sections.append(f"<section id='states'><h2>Per-state tests</h2>"
                        f"<p class=lead><b>What a detour is.</b> {_esc(DETOUR_DEFINITION)}</p>"
                        f"{_states_html(fit, heading=False)}</section>")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP_INTERACTIVE if interactive else CSP}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_esc(title)}</title><style>{STYLE}</style>{interactive[0] if interactive else ''}</head><body><main>"
        f"<h1>{_esc(title)}</h1><p class=dim>Drawn from the saved fit in {_esc(fit.fit_dir)}; "
        "nothing was refitted.</p>"
        f"<nav>{nav}</nav>{warnings}{_story_html(fit)}<h2 id='summary'>Summary</h2><table class=summary>{summary}</table>"
        f"{_explore_html(interactive)}{''.join(sections)}</main>{interactive[2] if interactive else ''}</body></html>\n"
    )


# --------------------------------------------------------------------------- write


def write_report(fit: FitArtifacts, out_dir: str | Path | None = None, report_command: str | None = None,
                 metrics=F.DEFAULT_METRICS, interactive: bool = True) -> Path:
    """Render ``fit`` into ``out_dir`` (default ``<study>/reports/<fit-id>/``); return ``index.html``.

    ``interactive``: add the linked, scriptable view (:mod:`latent.reports.interactive`) when Bokeh
    (the ``serve`` extra) is installed; False writes a page without any script.

    The study's weight snapshots, when it has them, are read once (only the fit's runs) for the
    weights figure and the view's Fourier-circle panel. A snapshot file that cannot be read costs
    the page those two and nothing else: one ``latent report: warning: …`` line on stderr names it
    (:func:`latent.reports.figures.weight_snapshots`).

    Everything is written into a temporary sibling directory first and renamed into place at
    the end; an existing report is replaced only once the new one is complete.
    """
    from latent import locks
    from latent.store import replace_lock_path, tidy_replaced

    out_dir = Path(out_dir) if out_dir is not None else fit.report_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with locks.acquire(replace_lock_path(out_dir.parent, out_dir.name)):
        tidy_replaced(out_dir.parent, out_dir.name, f".{out_dir.name}.tmp-*", f".{out_dir.name}.old-*")
        return _render_into(fit, out_dir, report_command, metrics, interactive)


def _render_into(fit: FitArtifacts, out_dir: Path, report_command: str | None, metrics,
                 interactive: bool = True) -> Path:
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a report should be as readable as its siblings
    try:
        # read once for the figure and the view; a damaged file is one warning line and no weight views
        snapshots = F.weight_snapshots(fit)
        rendered = render_figures(fit, metrics, snapshots)
        for r in rendered:
            (tmp / f"{r.name}.png").write_bytes(r.png)
            (tmp / f"{r.name}.svg").write_bytes(r.svg)
        parts = None
        if interactive:
            from . import interactive as I

            parts = I.explore_parts(fit, snapshots=snapshots) if I.available() else None
        (tmp / "index.html").write_text(page_html(fit, rendered, report_command, parts), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    install_dir(tmp, out_dir)
    return out_dir / "index.html"


def install_dir(tmp: Path, out_dir: Path) -> None:
    """Put the finished directory ``tmp`` in place of ``out_dir``: the previous one is moved
    aside, the new one renamed in, then the old one dropped; on failure the old one comes back."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
        out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except BaseException:
        if old is not None:
            old.rename(out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
