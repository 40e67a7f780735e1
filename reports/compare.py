"""The ``latent compare`` page: studies side by side, drawn from their saved fits.

Plot functions take a matplotlib ``Axes`` and return a small dict of what they drew, like
:mod:`latent.reports.figures`::

    import matplotlib.pyplot as plt
    from latent.reports import compare as C

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3))
    C.plot_convergence_box(a, comparison)        # one box + points per study
    C.plot_convergence_ecdf(b, comparison)       # empirical CDFs

``comparison`` is a :class:`latent.compare.Comparison`; the training maps are
:func:`latent.reports.figures.plot_training_map` of each study's :class:`latent.reports.artifacts.FitArtifacts`
(:func:`plot_study_map` adds the study's name). :func:`write_comparison` writes ``index.html``
(self-contained: figures inlined, no script, the same Content-Security-Policy as the report),
``comparison.json`` (the numbers, plain data) and every figure as PNG and SVG.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from latent.compare import CORRECTION_TEXT, Comparison, StudySummary, detour_text
from latent.errors import UserError

from . import figures as F
from .artifacts import FitArtifacts
from .html import CSP, PNG_DPI, STYLE, FigureRecord, install_dir

#: One colour and line style per study (study i takes entry i modulo the length).
STUDY_COLORS = ("#000000", "#0072B2", "#009E73", "#CC79A7", "#56B4E9", "#882255", "#999933")
STUDY_STYLES = ("-", "--", "-.", ":")

#: The paper's Table 1 (reference.md G2), shown under ours for orientation.
PAPER_TABLE1 = (
    ("Modular addition", 0.977, "<0.001", 0.496, "yes"),
    ("Modular, stabilized", 0.514, "<0.001", 0.038, "no"),
    ("CIFAR-100", 0.094, "0.469", 0.028, "no"),
    ("CIFAR-100, destabilized", 0.905, "<0.001", 0.806, "yes"),
    ("Sparse parities", 0.961, "<0.001", 0.183, "yes"),
    ("MNIST", 0.049, "0.611", 0.063, "no"),
)


def study_color(i: int) -> str:
    return STUDY_COLORS[i % len(STUDY_COLORS)]


def _select(comparison: Comparison, studies) -> list[tuple[int, StudySummary]]:
    chosen = [(i, s) for i, s in enumerate(comparison.studies) if studies is None or s.name in studies]
    if not chosen:
        raise ValueError(f"none of {studies!r} is in the comparison")
    return chosen


def _unit_label(unit: str) -> str:
    return unit if unit.endswith("s") else unit + "s"


# --------------------------------------------------------------------------- figures


def plot_convergence_box(ax, comparison: Comparison, studies=None, seed: int = 0) -> dict:
    """Convergence times per study: a horizontal box (quartiles, median, 1.5 IQR whiskers) over
    every run's time as a point, first study on top.

    Censored times (runs that never converged, counted at τ) are open circles. The label of each
    row gives n, the median, the IQR and the CV. Points are jittered vertically with a seeded
    generator, so the figure is the same every time. Pass ``studies`` (names) to draw a subset,
    e.g. the studies of one step unit: times in different units must not share an axis.
    """
    chosen = _select(comparison, studies)
    units = {s.step_unit for _, s in chosen}
    rng = np.random.default_rng(seed)
    rows = list(range(len(chosen)))[::-1]
    data = [np.asarray(s.convergence.times, float) for _, s in chosen]
    nonempty = [j for j, d in enumerate(data) if d.size]
    if nonempty:
        ax.boxplot([data[j] for j in nonempty], positions=[rows[j] for j in nonempty], orientation="horizontal",
                   widths=0.5, showfliers=False, patch_artist=True, manage_ticks=False,
                   boxprops=dict(facecolor="#F2F2F2", edgecolor="#555555"),
                   medianprops=dict(color="#D55E00", lw=2.2), whiskerprops=dict(color="#555555"),
                   capprops=dict(color="#555555"))
    points = {}
    labels = []
    for j, (i, s) in enumerate(chosen):
        c = s.convergence
        y = data[j]
        censored = np.isin(np.asarray(c.seeds), np.asarray(c.censored, dtype=int)) if c.censored else \
            np.zeros(y.size, bool)
        jitter = rows[j] + rng.uniform(-0.18, 0.18, size=y.size)
        color = study_color(i)
        ax.scatter(y[~censored], jitter[~censored], s=14, color=color, alpha=0.75, zorder=3, lw=0)
        if censored.any():
            ax.scatter(y[censored], jitter[censored], s=22, facecolors="none", edgecolors=color, zorder=3, lw=1.2)
        points[s.name] = y.tolist()
        labels.append(f"{s.name}\nn = {c.n}, median {_num(c.median, 4)}\nIQR {_num(c.iqr, 3)}, CV {_num(c.cv, 2)}")
    ax.set_yticks(rows)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(-0.6, len(chosen) - 0.4)
    unit = " / ".join(sorted(_unit_label(u) for u in units))
    ax.set_xlabel(f"convergence time ({unit})")
    ax.grid(axis="x", alpha=0.3)
    has_censored = any(s.convergence.censored for _, s in chosen)
    ax.set_title("Convergence time per run (box: quartiles, orange: median"
                 + ("; open circles: never converged, counted at τ)" if has_censored else ")"), fontsize=9)
    return {"studies": [s.name for _, s in chosen], "rows": dict(zip([s.name for _, s in chosen], rows)),
            "times": points, "medians": {s.name: s.convergence.median for _, s in chosen}, "units": sorted(units)}


def plot_convergence_ecdf(ax, comparison: Comparison, studies=None) -> dict:
    """Empirical cumulative distribution of the convergence times, one step curve per study.

    The curve of a study reaches the fraction of its runs that converged by each time; censored
    times (at τ) are included, so a study whose curve stops below 1 before τ has runs still
    unconverged there. Medians are marked by dotted vertical lines in the study's colour.
    """
    chosen = _select(comparison, studies)
    units = {s.step_unit for _, s in chosen}
    curves = {}
    for i, s in chosen:
        y = np.sort(np.asarray(s.convergence.times, float))
        if not y.size:
            continue
        frac = np.arange(1, y.size + 1) / y.size
        color, style = study_color(i), STUDY_STYLES[i % len(STUDY_STYLES)]
        ax.step(np.concatenate([[y[0]], y]), np.concatenate([[0.0], frac]), where="post", color=color, ls=style,
                lw=1.8, label=f"{s.name} (n = {y.size})")
        if s.convergence.median is not None:
            ax.axvline(s.convergence.median, color=color, ls=":", lw=1.2, alpha=0.8)
        curves[s.name] = (y.tolist(), frac.tolist())
    unit = " / ".join(sorted(_unit_label(u) for u in units))
    ax.set_xlabel(f"convergence time ({unit})")
    ax.set_ylabel("fraction of runs converged")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Cumulative distribution (dotted: medians)", fontsize=9)
    return {"curves": curves, "units": sorted(units)}


def plot_study_map(ax, fit: FitArtifacts, summary: StudySummary) -> dict:
    """:func:`latent.reports.figures.plot_training_map` of one study, titled with the study's name, K and
    its detours."""
    info = F.plot_training_map(ax, fit)
    det = detour_text(summary)
    ax.set_title(f"{summary.name}: K = {summary.n_states}, detours: {det}, "
                 f"forking: {'yes' if summary.forking else 'no'}\n{ax.get_title()}", fontsize=9)
    return info


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _draw_maps(comparison: Comparison, fits: list[FitArtifacts]):
    n = len(fits)
    # side by side while the maps are small; one under the other once a map has many states
    ncols = 2 if n > 1 and max(s.n_states for s in comparison.studies) <= 4 else 1
    nrows = math.ceil(n / ncols)
    heights = []
    for fit in fits:
        lanes = len({y for _, y in F.map_layout(fit).values()})
        heights.append(2.2 + 1.1 * lanes)
    fig = _figure(12.0 if ncols == 2 else 10.0, max(heights) * nrows)
    infos = {}
    for j, (fit, s) in enumerate(zip(fits, comparison.studies)):
        infos[s.name] = plot_study_map(fig.add_subplot(nrows, ncols, j + 1), fit, s)
    return fig, infos, ("Each study's training map as `latent report` draws it: states left to right in canonical "
                        "order (earliest mean first visit first; state numbers are per study and do not correspond "
                        "across studies), node area = share of checkpoints, arrow width = runs taking the "
                        "transition, dashed rings = detour states.")


def _draw_convergence(comparison: Comparison, fits: list[FitArtifacts]):
    units = comparison.units
    fig = _figure(12.0, sum(1.3 + 0.75 * sum(s.step_unit == u for s in comparison.studies) for u in units) + 0.3)
    axes = fig.subplots(len(units), 2, squeeze=False)
    infos = {}
    for r, unit in enumerate(units):
        names = [s.name for s in comparison.studies if s.step_unit == unit]
        infos[unit] = {"box": plot_convergence_box(axes[r, 0], comparison, names),
                       "ecdf": plot_convergence_ecdf(axes[r, 1], comparison, names)}
    caption = ("Left: every run's convergence time with the quartile box; right: the empirical cumulative "
               "distributions. Times are the fit's restricted times (a run that never converges counts as τ).")
    if len(units) > 1:
        caption += (" The studies count time in different units, so each unit has its own row of panels: "
                    + "; ".join(f"{_unit_label(u)}: " + ", ".join(s.name for s in comparison.studies
                                                                  if s.step_unit == u) for u in units) + ".")
    return fig, infos, caption


def figure_records() -> tuple[FigureRecord, ...]:
    """The page's figures in order, each in one place: ``draw(comparison, fits)`` and the HTML under it
    (``after(comparison)``)."""
    return (
        FigureRecord("training_maps", "Training maps", _draw_maps, anchor="maps"),
        FigureRecord("convergence", "Convergence time", _draw_convergence,
                     after=lambda comparison: _stats_html(comparison) + _pairs_html(comparison)),
    )


def build_figures(comparison: Comparison, fits: list[FitArtifacts]) -> list[tuple[str, str, str, object, dict]]:
    """Every figure of the page: ``(name, title, caption, Figure, info)``."""
    out = []
    for rec in figure_records():
        fig, info, caption = rec.draw(comparison, fits)
        out.append((rec.name, rec.title, caption, fig, info))
    return out


def _save(fig, fmt: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, **({"dpi": PNG_DPI} if fmt == "png" else {"metadata": {"Date": None}}))
    return buf.getvalue()


def render_figures(comparison: Comparison, fits: list[FitArtifacts]) -> list[dict]:
    """Draw and encode every figure: ``{"name", "title", "caption", "png", "svg", "info"}``."""
    import matplotlib

    out = []
    # text.parse_math off: every name a user gave (studies, features, metrics) is drawn as written,
    # never as TeX ("$x$" stays "$x$", and an odd "$" cannot crash the drawing)
    with matplotlib.rc_context({"svg.hashsalt": "latent", "font.size": 9, "text.parse_math": False}):
        for name, title, caption, fig, info in build_figures(comparison, fits):
            out.append({"name": name, "title": title, "caption": caption, "png": _save(fig, "png"),
                        "svg": _save(fig, "svg"), "info": info})
    return out


# --------------------------------------------------------------------------- HTML


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _num(x, digits: int = 4) -> str:
    """Plain decimals in the usual range (1550, 0.0123), else ``%g``; ``–`` for missing."""
    if x is None:
        return "–"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "–"
    if v != 0 and 1e-3 <= abs(v) < 1e6:
        decimals = max(digits - 1 - math.floor(math.log10(abs(v))), 0)
        text = f"{v:.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{v:.{digits}g}"


def _signed(x, digits: int = 4) -> str:
    text = _num(x, digits)
    return "+" + text if x is not None and math.isfinite(float(x)) and float(x) > 0 else text


def _r2(x) -> str:
    from latent.compare import _r2 as r2_text

    return r2_text(None if x is None else float(x))


def _p(x) -> str:
    return _num(x, 2)


def _paper_p(x) -> str:
    """p as the paper's Table 1 prints it: ``<0.001`` or three decimals."""
    if x is None or not math.isfinite(float(x)):
        return "–"
    return "&lt;0.001" if float(x) < 0.001 else f"{float(x):.3f}"


def _detours_cell(s: StudySummary) -> str:
    if not s.detours:
        return "none"
    items = []
    for d in s.detours:
        parts = []
        if d.get("delay") is not None:
            parts.append(f"delay {_signed(d.get('delay'))} {_esc(_unit_label(s.step_unit))}")
        if d.get("p_adjusted") is not None:
            parts.append(f"adjusted p {_p(d.get('p_adjusted'))}")
        if d.get("rule") == "paper" and d.get("coef") is not None:
            parts.append(f"coef {_signed(d.get('coef'))}")
        stab = d.get("stability") or {}
        if stab.get("of"):
            parts.append(f"a detour again in {_esc(stab.get('detour_found', 0))}/{_esc(stab['of'])} resamples, "
                         f"the state found in {_esc(stab.get('found', '?'))}/{_esc(stab['of'])}")
        else:
            parts.append("stability not measured (fitted with --resamples 0)")
        items.append(f"<b>state {_esc(d['state'])}</b>: " + "; ".join(parts))
    return "<br>".join(items)


def _fork_cell(s: StudySummary) -> str:
    def branches(row):
        return ", ".join(f"→{b} ({r} runs)" for b, r in row["branches"])

    if s.forks:
        text = "yes: " + "; ".join(f"state {row['state']} {branches(row)}" for row in s.forks)
    else:
        text = "no"
    if s.minor_branches:
        text += (f" <span class=dim>(minor branches, fewer than {s.min_runs} runs on all but one: "
                 + "; ".join(f"state {row['state']} {branches(row)}" for row in s.minor_branches) + ")</span>")
    return text


def _side_by_side_html(comparison: Comparison, fits: list[FitArtifacts]) -> str:
    studies = comparison.studies
    head = "".join(f"<th>{_esc(s.name)}</th>" for s in studies)

    def row(label, cells):
        return f"<tr><th>{label}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    def conv(s):
        c = s.convergence
        r = s.convergence_rule
        rel = "&gt;" if r.get("direction", "above") == "above" else "&lt;"
        return f"first {_esc(s.step_unit)} where {_esc(r.get('metric'))} {rel} {_esc(r.get('threshold'))}" + (
            f"; τ = {_num(c.tau, 6)}" if c.tau is not None else "")

    rows = [
        row("Study", [f"{_esc(s.name)}<br><span class=dim>{_esc(s.root)}</span>" for s in studies]),
        row("Task / preset", [f"{_esc(s.task or '?')} / {_esc(s.preset or '–')}" for s in studies]),
        row("Fit", [f"<code>{_esc(s.fit_id)}</code> "
                    + ("<b>fitted now</b>" if s.fitted_now else "<span class=dim>reused</span>") for s in studies]),
        row("Runs", [str(s.n_runs) for s in studies]),
        row("Time unit", [_esc(_unit_label(s.step_unit)) for s in studies]),
        row("Convergence", [conv(s) for s in studies]),
        row("K", [f"<b>{s.n_states}</b> <span class=dim>({_esc(s.selection)})</span>" for s in studies]),
        row("Detours", [_detours_cell(s) + f"<br><span class=dim>{_esc(s.detour_rule)} rule</span>"
                         for s in studies]),
        row("Forking map", [_fork_cell(s) for s in studies]),
        row("R² (occupancy regression)", [f"{_r2(s.r2)} <span class=dim>(p = {_p(s.r2_p)}, F = "
                                          f"{_num(s.f_stat, 3)}, {_esc(s.regression_runs)} runs)</span>"
                                          for s in studies]),
        row("Trajectory dissimilarity", [_num(s.dissimilarity, 3) for s in studies]),
        row("Convergence median [IQR]", [f"{_num(s.convergence.median, 6)} [{_num(s.convergence.q1, 6)}, "
                                         f"{_num(s.convergence.q3, 6)}] {_esc(_unit_label(s.step_unit))}"
                                         for s in studies]),
        row("Convergence CV", [_num(s.convergence.cv, 3) for s in studies]),
        row("Fit warnings", [str(len(s.warnings)) for s in studies]),
    ]
    return f"<table class='num side'><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _table1_html(comparison: Comparison) -> str:
    body = "".join(
        f"<tr><td class=l>{_esc(s.name)}</td><td>{_r2(s.r2)}</td><td>{_paper_p(s.r2_p)}</td>"
        f"<td>{_num(s.dissimilarity, 3)}</td><td class=l>{'yes' if s.forking else 'no'}</td>"
        f"<td>{s.n_states}</td><td class=l>{_esc(detour_text(s, prefix='state '))}</td></tr>"
        for s in comparison.studies)
    paper = "".join(
        f"<tr><td class=l>{_esc(name)}</td><td>{r2}</td><td>{p}</td><td>{d}</td><td class=l>{fork}</td></tr>"
        for name, r2, p, d, fork in PAPER_TABLE1).replace("<0.001", "&lt;0.001")
    return (
        "<table class='num table1'><thead><tr><th>Study</th><th>R²</th><th>p</th><th>Dissimilarity (Eq. 1)</th>"
        "<th>Forking map</th><th>K</th><th>detours (a detour again in n/m resamples)</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
        "<p class=dim>R² and p: the occupancy regression of convergence time on the share of time in each state "
        "(F-test). Dissimilarity: the mean Wasserstein distance between runs' state distributions, with the "
        "Euclidean distance between state means (z units) as the ground metric; the paper does not say which "
        "ground metric it used, so our values and the paper's need not agree in scale. Forking map: some state "
        "has at least two outgoing transitions each taken by at least <code>min_runs</code> runs.</p>"
        "<details><summary>The paper's Table 1 (Hu et al. 2023), for orientation</summary>"
        "<table class='num'><thead><tr><th>Dataset</th><th>R²</th><th>p</th><th>Dissimilarity</th>"
        f"<th>Forking map</th></tr></thead><tbody>{paper}</tbody></table></details>")


def _stats_html(comparison: Comparison) -> str:
    body = []
    for s in comparison.studies:
        c = s.convergence
        censored = f"{len(c.censored)}" + (f" (at τ = {_num(c.tau, 6)})" if c.censored else "")
        body.append(
            f"<tr><td class=l>{_esc(s.name)}</td><td class=l>{_esc(_unit_label(s.step_unit))}</td><td>{c.n}</td>"
            f"<td>{censored}</td><td>{_num(c.median, 6)}</td><td>{_num(c.q1, 6)}</td><td>{_num(c.q3, 6)}</td>"
            f"<td>{_num(c.iqr, 6)}</td><td>{_num(c.mean, 6)}</td><td>{_num(c.std, 4)}</td><td>{_num(c.cv, 3)}</td>"
            "</tr>")
    return ("<h3>Per study</h3><table class='num conv-stats'><thead><tr><th>study</th><th>unit</th><th>runs</th>"
            "<th>censored</th><th>median</th><th>Q1</th><th>Q3</th><th>IQR</th><th>mean</th><th>sd</th>"
            f"<th>CV</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
            "<p class=dim>Quartiles by linear interpolation (numpy's default); sd with n − 1; CV = sd / mean, "
            "which has no unit. Censored: runs that never converged (or converged after τ) and count as τ, "
            "the last step every run of that study reaches; the mean and CV are then restricted ones.</p>")


def _pairs_html(comparison: Comparison) -> str:
    many = comparison.n_tested > 1
    body = []
    for p in comparison.pairs:
        if p.unit is None:
            body.append(f"<tr class=untested><td class=l>{_esc(p.a)} vs {_esc(p.b)}</td>"
                        f"<td class=l colspan={8 if many else 6}>not tested: {_esc(p.reason)}"
                        f"{'' if p.cv_ratio is None else f'; CV ratio {_num(p.cv_ratio, 3)}'}</td></tr>")
            continue
        unit = _esc(_unit_label(p.unit))
        if not p.tested:
            body.append(f"<tr class=untested><td class=l>{_esc(p.a)} vs {_esc(p.b)}</td>"
                        f"<td>{_signed(p.median_diff)} {unit}</td>"
                        f"<td class=l colspan={7 if many else 5}>not tested: {_esc(p.reason)}</td></tr>")
            continue
        bf = (f"<td>{_num(p.bf_w, 4)}</td><td>{_p(p.bf_p)}</td>" + (f"<td>{_p(p.bf_p_adjusted)}</td>" if many else "")
              if p.bf_p is not None else f"<td class=l colspan={3 if many else 2}>{_esc(p.reason)}</td>")
        body.append(
            f"<tr><td class=l>{_esc(p.a)} vs {_esc(p.b)}</td><td>{_signed(p.median_diff)} {unit}</td>"
            f"<td>{_num(p.prob_superiority, 3)}</td><td>{_num(p.mw_u, 6)}</td><td>{_p(p.mw_p)}</td>"
            + (f"<td>{_p(p.mw_p_adjusted)}</td>" if many else "")
            + bf + f"<td>{_num(p.iqr_ratio, 3)}</td><td>{_num(p.cv_ratio, 3)}</td></tr>")
    adj = "<th>Holm-adjusted p</th>" if many else ""
    note = (f"{comparison.n_tested} pairs are tested: {_esc(CORRECTION_TEXT)}." if many
            else "At most one pair is tested, so there is no multiple-testing adjustment.")
    return (
        "<h3>Tests of the difference</h3><table class='num pairs'><thead><tr><th>pair (a vs b)</th>"
        "<th>median b − a</th><th>P(a later than b)</th><th>Mann–Whitney U</th><th>p (location)</th>"
        f"{adj}<th>Brown–Forsythe W</th><th>p (spread)</th>{adj}<th>IQR b / a</th><th>CV b / a</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
        "<p class=dim>Location: two-sided Mann–Whitney U test of a's times against b's "
        "(<code>scipy.stats.mannwhitneyu</code>; exact for small samples without ties, else the normal "
        "approximation with continuity correction); U counts the pairs of runs where a's run is later, ties "
        "½, and U / (n<sub>a</sub> n<sub>b</sub>) estimates P(a later than b). Spread: the Brown–Forsythe test, "
        "Levene's test centred on the median (<code>scipy.stats.levene(center='median')</code>), which stays "
        f"valid for skewed times. {note} Pairs in different time units are not tested.</p>")


def _equal_html(comparison: Comparison) -> str:
    """The comparison at equal size: a table of values (median [min–max] for subsampled studies) and a
    sentence per pair."""
    from latent.compare import equal_cell, equal_verdicts
    from latent.equal_size import QUANTITIES

    n = comparison.equal_n
    head = "".join(f"<th>{_esc(label)}</th>" for _, label in QUANTITIES)
    spreads = {sp.study: sp for sp in comparison.spreads}
    body = []
    for s in comparison.studies:
        sp = spreads.get(s.name)
        how = (f"{len(sp.draws)} subsamples of {n} of its {sp.of_runs} runs"
               + (f", {len(sp.failed)} failed" if sp.failed else "")) if sp else f"its {s.n_runs} runs"
        body.append(f"<tr><td class=l>{_esc(s.name)} <span class=dim>({_esc(how)})</span></td>"
                    + "".join(f"<td>{_esc(equal_cell(comparison, s, key))}</td>" for key, _ in QUANTITIES) + "</tr>")
    verdicts = "".join(f"<li>{_esc(v)}</li>" for v in equal_verdicts(comparison))
    return (f"<table class='num equal'><thead><tr><th>study (fitted on)</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table><ul>{verdicts}</ul>"
            f"<p class=dim>Each larger study is refitted, with its fit's settings, on random subsamples of {n} of "
            "its runs (the smallest study's size): median [min–max] over the subsamples. Under the same dynamics "
            "the smaller study's value is one more draw from that spread; the two-sided Monte Carlo p counts the "
            "subsamples at least as extreme (ties against a difference) and is Holm-adjusted over every pair and "
            "quantity. A quantity is called different only when the adjusted p is at most the fit's alpha. "
            "Convergence times need no refit: their tests below use every run.</p>")


def _warnings_html(comparison: Comparison) -> str:
    items = []
    for s in comparison.studies:
        if s.warnings:
            lis = "".join(f"<li>{_esc(w)}</li>" for w in s.warnings)
            items.append(f"<details><summary>{_esc(s.name)}: {len(s.warnings)} warning(s) from "
                         f"<code>latent fit</code></summary><ul>{lis}</ul></details>")
    return "".join(items) or "<p class=dim>No fit logged a warning.</p>"


def _commands_html(comparison: Comparison, fits: list[FitArtifacts], command: str | None) -> str:
    lines = []
    if command:
        lines.append(f"compare: <code>{_esc(command)}</code>")
    for s, fit in zip(comparison.studies, fits):
        if fit.model.get("command"):
            lines.append(f"{_esc(s.name)}, fit: <code>{_esc(fit.model['command'])}</code>")
        lines.append(f"{_esc(s.name)}, full report: <code>latent report --store {_esc(fit.study.root.parent)} "
                     f"--study {_esc(s.name)} --fit {_esc(s.fit_id)}</code>")
    return "<br>".join(lines)


EXTRA_STYLE = """
table.side th{white-space:normal}table.side td{text-align:left;min-width:14em}
table.side tr{border-bottom:1px solid #eee}
table.side tbody th{color:#444;white-space:nowrap}tr.untested td{color:#777}
section.notes{background:#FFF6E0;border-left:4px solid #E69F00;padding:.1em 1em .4em;margin-top:1em}
section.notes h2{border-bottom:none;margin-top:.5em}details{margin:.4em 0}
"""


def page_html(comparison: Comparison, fits: list[FitArtifacts], rendered: list[dict], command: str | None) -> str:
    """The whole ``index.html`` as a string."""
    names = [s.name for s in comparison.studies]
    title = "latent compare: " + " vs ".join(names)
    fitted = [s.name for s in comparison.studies if s.fitted_now]
    provenance = ("Drawn from the saved fits; " + (f"fitted by this command: {', '.join(fitted)}; the others "
                                                   "were reused unchanged." if fitted else "nothing was refitted."))
    notes = ""
    if comparison.notes:
        notes = ("<section id='notes' class=notes><h2>Read this first</h2><ul>"
                 + "".join(f"<li>{_esc(n)}</li>" for n in comparison.notes) + "</ul></section>")
    figs = {r["name"]: r for r in rendered}

    def figure(name):
        r = figs[name]
        data = base64.b64encode(r["png"]).decode()
        width = int.from_bytes(r["png"][16:20], "big") * 100 // PNG_DPI
        return (f"<figure><img src='data:image/png;base64,{data}' width='{width}' alt='{_esc(r['title'])}: "
                f"{_esc(r['caption'])}'><figcaption>{_esc(r['caption'])} <span class=files>Files: "
                f"<a href='{name}.png'>{name}.png</a><a href='{name}.svg'>{name}.svg</a></span></figcaption></figure>")

    nav = "".join(f"<a href='#{a}'>{t}</a>" for a, t in (
        ("notes", "Read this first") if comparison.notes else ("", ""),
        ("side-by-side", "Side by side"), ("equal-size", "At equal size") if comparison.spreads else ("", ""),
        ("table1", "Table 1"), *((rec.section, rec.title) for rec in figure_records()),
        ("warnings", "Fit warnings"), ("commands", "Commands")) if a)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_esc(title)}</title><style>{STYLE}{EXTRA_STYLE}</style></head><body><main>"
        f"<h1>{_esc(title)}</h1><p class=dim>{_esc(provenance)}</p><nav>{nav}</nav>{notes}"
        f"<h2 id='side-by-side'>Side by side</h2>{_side_by_side_html(comparison, fits)}"
        "<p class=dim>A detour is a state that some runs pass through and that delays their convergence "
        "(the fit's detour rule; see each study's report). Stability: in how many bootstrap resamples of the "
        "runs the state is a detour again. State numbers are per study.</p>"
        + (f"<h2 id='equal-size'>At equal size: {comparison.equal_n} runs</h2>{_equal_html(comparison)}"
           if comparison.spreads else "")
        + f"<h2 id='table1'>Table 1, as in the paper</h2>{_table1_html(comparison)}"
        + "".join(f"<section id='{rec.section}'><h2>{rec.title}</h2>{figure(rec.name)}"
                  f"{rec.after(comparison) if rec.after else ''}</section>" for rec in figure_records())
        + f"<h2 id='warnings'>Fit warnings</h2>{_warnings_html(comparison)}"
        f"<h2 id='commands'>Commands</h2><p>{_commands_html(comparison, fits, command)}</p>"
        "</main></body></html>\n")


# --------------------------------------------------------------------------- write


def check_out_dir(out_dir) -> Path:
    """``out_dir`` as a Path if a comparison may be written there: absent, empty, or a previous comparison.

    Raises
    ------
    UserError
        ``out_dir`` is a file, or a non-empty directory without ``comparison.json``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f"--out {out_dir} is a file; pass a directory")
        if any(out_dir.iterdir()) and not (out_dir / "comparison.json").is_file():
            raise UserError(f"--out {out_dir} is a non-empty directory that holds no comparison; "
                            "pass a new or empty directory")
    return out_dir


def write_comparison(comparison: Comparison, fits: list[FitArtifacts], out_dir, command: str | None = None) -> Path:
    """Write ``index.html``, ``comparison.json`` and the figures into ``out_dir``; return the page.

    Everything goes into a temporary sibling directory first, renamed into place at the end; a
    previous comparison in ``out_dir`` is replaced only once the new one is complete. An existing
    ``out_dir`` that is neither empty nor a comparison (no ``comparison.json``) is refused.

    Raises
    ------
    UserError
        ``out_dir`` is a file, or a non-empty directory that is not a comparison.
    """
    out_dir = check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        rendered = render_figures(comparison, fits)
        for r in rendered:
            (tmp / f"{r['name']}.png").write_bytes(r["png"])
            (tmp / f"{r['name']}.svg").write_bytes(r["svg"])
        data = comparison.to_dict()
        data["command"] = command
        (tmp / "comparison.json").write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
        (tmp / "index.html").write_text(page_html(comparison, fits, rendered, command), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    install_dir(tmp, out_dir)
    return out_dir / "index.html"
