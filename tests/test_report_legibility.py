"""Every plot function stays legible in a user's small Axes, and the training map has no empty margins.

Each figure is drawn into a 4 × 3 inch constrained-layout figure, as a notebook user would, and
rendered with Agg; then, from the renderer's own boxes: no text is smaller than 6 pt or falls
outside the figure, neighbouring tick labels do not overlap, the layout did not collapse, and the
map's nodes do not overlap each other.
"""

from __future__ import annotations

import itertools
import math
import warnings

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from report_fixtures import make_fit_study, make_toy_fit
from latent.reports import figures as F
from latent.reports.artifacts import load_fit

PLOTS = {
    "model_selection": F.plot_model_selection,
    "training_map": F.plot_training_map,
    "trajectories": lambda ax, fit: F.plot_trajectories(ax, fit, "l2"),
    "occupancy": F.plot_occupancy,
    "delays": F.plot_delays,
    "regression": F.plot_regression,
    "state_profiles": F.plot_state_profiles,
    "convergence": F.plot_convergence_histogram,
    "forecasts": F.plot_forecast_backtest,
}


def _seven_state_fit(store):
    """Twelve runs through seven states with two optional ones: a crowded map and wide bar charts."""
    segs = {}
    for s in range(12):
        route = [0, 1, 2, 4, 6] if s % 3 == 0 else ([0, 1, 3, 4, 5, 6] if s % 3 == 1 else [0, 1, 4, 5, 6])
        lengths = [6 + s % 3] * (len(route) - 1)
        segs[s] = [(st, n) for st, n in zip(route[:-1], lengths)] + [(route[-1], 60 - sum(lengths))]
    make_fit_study(store, "seven", segs, n_states=7, n_steps=60, first_n=60, features=["l1", "l2", "spectral", "var_w"],
                   coef=[-30.0, 5.0, 80.0, 60.0, -10.0, 20.0, -50.0], ci_half=[10.0] * 7, converged_state=6,
                   fit_id="k7", min_runs=3)
    return load_fit(store, "seven")


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    store = tmp_path_factory.mktemp("legible")
    make_toy_fit(store)
    toy = load_fit(store, "toy")
    return {"toy": toy, "seven": _seven_state_fit(store)}


def _draw(fn, fit, size=(4.0, 3.0)):
    fig = Figure(figsize=size, layout="constrained", dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = fn(ax, fit)
        fig.canvas.draw()
    return fig, ax, info, [str(w.message) for w in caught]


def _texts(fig):
    """Every text drawn: visible, non-empty, and (tick labels) of a tick inside the view."""
    drawn_ticks = set()
    for ax in fig.axes:
        if not ax.axison:  # axis turned off (the training map): no tick is drawn
            continue
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis._update_ticks():  # the ticks the axis draws
                drawn_ticks.update({id(tick.label1), id(tick.label2)})
    tick_ids = {id(t.label1) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
                for t in axis.get_major_ticks() + axis.get_minor_ticks()}
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip():
            continue
        if id(t) in tick_ids and id(t) not in drawn_ticks:
            continue
        yield t


def _overlap(a, b, tol=1.0) -> bool:
    return a.x0 < b.x1 - tol and b.x0 < a.x1 - tol and a.y0 < b.y1 - tol and b.y0 < a.y1 - tol


@pytest.mark.parametrize("which", ["toy", "seven"])
@pytest.mark.parametrize("name", list(PLOTS))
def test_plot_is_legible_in_a_small_axes(fits, name, which):
    fig, ax, info, caught = _draw(PLOTS[name], fits[which])
    assert not [w for w in caught if "constrained_layout not applied" in w], caught
    renderer = fig.canvas.get_renderer()
    W, H = fig.bbox.width, fig.bbox.height
    for t in _texts(fig):
        box = t.get_window_extent(renderer)
        if box.width == 0:
            continue
        assert t.get_fontsize() >= 6.0, (name, t.get_text(), t.get_fontsize())
        assert box.x0 >= -2 and box.y0 >= -2 and box.x1 <= W + 2 and box.y1 <= H + 2, \
            (name, t.get_text(), box.bounds, (W, H))
    for axis in (a for a in fig.axes if a.axison):
        for ticks in (axis.get_xticklabels(), axis.get_yticklabels()):
            boxes = [t.get_window_extent(renderer) for t in ticks if t.get_visible() and t.get_text().strip()]
            for a, b in zip(boxes, boxes[1:]):
                assert not _overlap(a, b), (name, "tick labels overlap", a.bounds, b.bounds)
    if name == "training_map":
        scale = fig.dpi / 72.0
        pos = {n: ax.transData.transform(p) for n, p in info["pos"].items()}
        for a, b in itertools.combinations(info["nodes"], 2):
            ra = math.sqrt(info["node_sizes"][a]) / 2 * scale
            rb = math.sqrt(info["node_sizes"][b]) / 2 * scale
            assert math.dist(pos[a], pos[b]) >= ra + rb, (a, b)
    if name == "state_profiles" and info["annotated"]:
        cell_w = abs(ax.transData.transform((1, 0))[0] - ax.transData.transform((0, 0))[0])
        for t in ax.texts:
            assert t.get_window_extent(renderer).width <= cell_w


def test_small_map_drops_texts_before_it_crowds(fits):
    """In a 4 × 3 inch axes a seven-state map has no room for node texts: they are left out (and
    said to be), the arrows keep at most their run counts."""
    _, _, info, _ = _draw(F.plot_training_map, fits["seven"])
    assert info["node_labels"] == {}
    assert all("\n" not in label for label in info["edge_labels"].values())
    _, _, big, _ = _draw(F.plot_training_map, fits["seven"], size=(12.0, 6.5))
    assert set(big["node_labels"]) == set(range(7)) and all("\n" in v for v in big["edge_labels"].values())


def test_report_map_is_trimmed_to_what_it_draws(fits):
    """The report's map figure is as tall as its nodes, texts and arcs: the drawn content fills
    nearly all of the axes' height (it used to sit in a fixed 3 in + 1.8 in per lane)."""
    from latent.reports.html import build_figures

    for fit in fits.values():
        fig, ax = next((f, f.axes[0]) for name, _, _, f, _ in build_figures(fit) if name == "training_map")
        FigureCanvasAgg(fig)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = [t.get_window_extent(renderer) for t in ax.texts if t.get_text().strip()]
        boxes += [c.get_window_extent(renderer) for c in ax.collections]
        boxes += [p.get_window_extent(renderer) for p in ax.patches]
        top = max(b.y1 for b in boxes)
        bottom = min(b.y0 for b in boxes)
        assert (top - bottom) >= 0.8 * ax.bbox.height, (top - bottom, ax.bbox.height)
        assert fig.get_size_inches()[1] <= 2.2 + 1.6 * len({y for _, y in F.map_layout(fit).values()})
