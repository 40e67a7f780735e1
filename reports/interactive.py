"""The report's interactive view, drawn with Bokeh (the ``serve`` extra).

One layout, linked figures (three, plus one for a study with weight snapshots) and two widgets:

* **the training map**: states where the static map puts them; every run is a small marker
  beside the state it is in at the step the slider shows. Click a state to highlight the runs
  that visit it, its checkpoints on the curves and its row in the phase table; click a run's
  marker to draw its path through the map.
* **the curves**: every run's curve of the feature chosen in the menu, each segment coloured by
  its decoded state. Hover for run, step, state and value; click a curve to pick that run.
* **the embedding spectrum** (modular arithmetic studies that record ``embed_fNN``): the picked
  run's Fourier spectrum at the slider's step.
* **the embedding on its Fourier circle** (studies with weight snapshots, ``latent collect
  --snapshots N``): the picked run's tokens on the circle of its key frequency, at its last
  snapshot at or before the slider's step. The coordinates are computed here, in Python
  (:func:`latent.reports.figures.fourier_circle`), and travel as flat arrays; the page only picks
  the snapshot to show.

The page stays self-contained: BokehJS is inlined (no CDN), the figures' data travel inside the
page, and the glue is a few lines of JavaScript in :data:`GLUE` that only set Bokeh data and CSS
classes (text reaches the page through Bokeh's text models, never as markup).
:func:`explore_parts` gives the pieces the report writes into ``index.html``; the live page of
``latent serve`` (:mod:`latent.reports.serve`) builds on :func:`map_figure` and :func:`curve_figure`.

Curves are thinned to at most :data:`MAX_POINTS` checkpoints per run (evenly by index, first and
last kept); the slider, the map markers and the paths use every decoded checkpoint.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .artifacts import FitArtifacts
from .palette import UNDECODED, state_color

#: Most checkpoints per run drawn on the curves (the slider and the map use all of them).
MAX_POINTS = 200
#: Run markers sit on a ring of this radius (map units: one state apart is 1) around their state,
#: just outside the largest node, so the state's number stays readable under a crowd of runs.
RING = 0.45
#: Columns of a run table that are not features.
NOT_FEATURES = ("seed", "step", "epoch", "state")
#: Names the glue looks models up by (the browser tests use them too).
NAMES = {"map": "latent-map", "curves": "latent-curves", "nodes": "latent-nodes", "markers": "latent-markers",
         "segments": "latent-segments", "path": "latent-path", "slider": "latent-slider",
         "feature": "latent-feature", "info": "latent-info", "spectrum": "latent-spectrum",
         "weights": "latent-weights", "weights_line": "latent-weights-line",
         "weights_index": "latent-weights-index", "weights_coords": "latent-weights-coords",
         "weights_figure": "latent-weights-figure", "ui": "latent-ui"}


def available() -> bool:
    """Whether Bokeh (the ``serve`` extra) is installed."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def _spectrum_columns(columns) -> list[str]:
    return sorted((c for c in columns if re.fullmatch(r"embed_f\d+", c)), key=lambda c: int(c[len("embed_f"):]))


def curve_features(runs: pd.DataFrame) -> list[str]:
    """Numeric, not-all-missing feature columns offered in the menu, the spectrum columns left out."""
    spectrum = set(_spectrum_columns(runs.columns))
    out = []
    for c in runs.columns:
        if c in NOT_FEATURES or c in spectrum or not pd.api.types.is_numeric_dtype(runs[c]):
            continue
        if np.isfinite(runs[c].to_numpy(dtype=float)).any():
            out.append(str(c))
    return out


def thin_index(n: int, most: int = MAX_POINTS) -> np.ndarray:
    """At most ``most`` indices of ``0..n-1``, evenly spread, first and last included."""
    if n <= most:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, most)).astype(int))


@dataclass(frozen=True)
class WeightData:
    """Every snapshot of every run that has them, each run's tokens on its key frequency's Fourier circle.

    Attributes
    ----------
    index : DataFrame
        One row per (run, snapshot), runs in seed order and snapshots in step order: ``seed, step,
        k`` (the run's key frequency at its last snapshot, the same on all its rows) and ``start``
        (where the snapshot's p tokens begin in ``x`` and ``y``).
    x, y : numpy.ndarray
        float32: token a of row i at ``start[i] + a``
        (:func:`latent.reports.figures.fourier_circle` of the snapshot's first p embedding rows).
    p : int
        The modulus: tokens 0..p-1.
    """

    index: pd.DataFrame
    x: np.ndarray
    y: np.ndarray
    p: int

    def at(self, seed: int, step: float) -> int | None:
        """The row of ``index`` the view shows for run ``seed`` at slider step ``step``: its last
        snapshot at or before it (None: no such snapshot)."""
        rows = self.index[(self.index["seed"] == int(seed)) & (self.index["step"] <= step)]
        return int(rows.index[-1]) if len(rows) else None


def weight_data(fit: FitArtifacts, snapshots) -> WeightData | None:
    """The Fourier-circle coordinates of every run's snapshots (``snapshots``: :func:`latent.reports.
    figures.weight_snapshots`), or None when there are none."""
    from . import figures as F

    p = F.snapshot_modulus(fit)
    if not snapshots or p is None:
        return None
    rows, xs, ys = [], [], []
    start = 0
    for seed in sorted(snapshots):
        run = snapshots[seed]
        if not len(run):
            continue
        k = F.key_frequency(F.token_embedding(run, len(run) - 1, p))
        for i, step in enumerate(run.steps.tolist()):
            xy = F.fourier_circle(F.token_embedding(run, i, p), k)
            rows.append({"seed": int(seed), "step": int(step), "k": k, "start": start})
            xs.append(xy[:, 0])
            ys.append(xy[:, 1])
            start += p
    if not rows:
        return None
    return WeightData(pd.DataFrame(rows, columns=["seed", "step", "k", "start"]),
                      np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32), p)


@dataclass(frozen=True)
class ExploreData:
    """What the interactive view draws, as plain columns.

    Attributes
    ----------
    points : DataFrame
        Thinned checkpoints, runs contiguous and in step order: ``seed, step, state`` and one column
        per feature (and per spectrum frequency).
    changes : DataFrame
        Every decoded checkpoint where a run's state changes (its first included): ``seed, step,
        state``, runs contiguous and in step order.
    nodes : DataFrame
        One row per state: ``state, x, y, share, runs, label, detour``.
    edges : DataFrame
        One row per observed transition between two states: ``source, target, runs``.
    weights : WeightData or None
        The runs' embeddings on their Fourier circles, for a study with weight snapshots.
    first_run : int or None
        The run picked when the page opens: the one that converges at the median time (the median
        seed when none converges).
    """

    points: pd.DataFrame
    changes: pd.DataFrame
    nodes: pd.DataFrame
    edges: pd.DataFrame
    features: list[str]
    spectrum: list[str]
    step_unit: str
    n_states: int
    weights: WeightData | None = None
    first_run: int | None = None


def median_run(convergence: dict[int, float | None]) -> int | None:
    """The run that converges at the median time (rank n // 2 of the converging runs by step, then
    seed), or the median seed when none converges; None without runs."""
    done = sorted((t, s) for s, t in convergence.items() if t is not None)
    if done:
        return int(done[len(done) // 2][1])
    seeds = sorted(convergence)
    return int(seeds[len(seeds) // 2]) if seeds else None


def state_changes(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``seed, step, state`` (runs contiguous, steps increasing) where each run's state
    differs from its previous row; every run's first row is kept."""
    t = table[["seed", "step", "state"]].sort_values(["seed", "step"], kind="stable")
    seed = t["seed"].to_numpy()
    state = t["state"].to_numpy()
    keep = np.ones(len(t), dtype=bool)
    keep[1:] = (seed[1:] != seed[:-1]) | (state[1:] != state[:-1])
    return t[keep].reset_index(drop=True)


def explore_data(fit: FitArtifacts, snapshots=None) -> ExploreData:
    """The columns :func:`explore_layout` draws, from a loaded fit.

    ``snapshots``: the runs' weight snapshots as plain arrays (``{seed: RunSnapshots}``,
    :func:`latent.reports.figures.weight_snapshots`; read from the study when None; ``{}`` for none).
    """
    from . import figures as F

    if snapshots is None:
        snapshots = F.weight_snapshots(fit)

    runs = fit.runs.sort_values(["seed", "step"], kind="stable").reset_index(drop=True)
    features = curve_features(runs)
    spectrum = _spectrum_columns(runs.columns)
    parts = []
    for _, g in runs.groupby("seed", sort=True):
        parts.append(g.iloc[thin_index(len(g))])
    points = pd.concat(parts, ignore_index=True)[["seed", "step", "state", *features, *spectrum]]
    pos = F.map_layout(fit)
    g = fit.graph
    names = fit.state_names
    detours = set(fit.detour_states)
    rows = []
    for s in sorted(int(n) for n in g.nodes):
        data = g.nodes[s]
        label = f"state {s}" + (f": {names[s]}" if names.get(s) else "")
        rows.append({"state": s, "x": pos[s][0], "y": pos[s][1],
                     "share": float(data.get("occupancy") or 0), "runs": int(data.get("n_runs") or 0),
                     "label": label, "detour": s in detours})
    nodes = pd.DataFrame(rows, columns=["state", "x", "y", "share", "runs", "label", "detour"])
    edges = pd.DataFrame([{"source": int(a), "target": int(b), "runs": int(d.get("runs") or 0)}
                          for a, b, d in g.edges(data=True) if int(a) != int(b)],
                         columns=["source", "target", "runs"])
    return ExploreData(points=points, changes=state_changes(runs), nodes=nodes, edges=edges, features=features,
                       spectrum=spectrum, step_unit=fit.step_unit, n_states=fit.n_states,
                       weights=weight_data(fit, snapshots), first_run=median_run(fit.convergence_times))


# --------------------------------------------------------------------------- sources


def _colors(states) -> list[str]:
    return [state_color(s) if s >= 0 else UNDECODED for s in np.asarray(states, dtype=int)]


def segment_columns(points: pd.DataFrame, feature: str | None) -> dict:
    """One segment per pair of consecutive thinned checkpoints of a run: ``i`` (the index of its
    first point in ``points``), ``seed, x0, x1, state, color, alpha, width, y0, y1``."""
    seed = points["seed"].to_numpy()
    same = np.flatnonzero(seed[1:] == seed[:-1]) if len(points) else np.array([], dtype=int)
    step = points["step"].to_numpy(dtype=float)
    state = points["state"].to_numpy(dtype=int)
    values = (points[feature].to_numpy(dtype=float) if feature is not None else np.full(len(points), np.nan))
    return {"i": same.astype(np.int32), "seed": seed[same].astype(np.int32), "x0": step[same], "x1": step[same + 1],
            "state": state[same].astype(np.int32), "color": _colors(state[same]),
            "alpha": np.full(len(same), 0.8), "width": np.full(len(same), 1.2),
            "y0": values[same], "y1": values[same + 1]}


def _ring(n: int) -> tuple[np.ndarray, np.ndarray]:
    angle = 2 * math.pi * np.arange(n) / max(n, 1) + math.pi / 2
    return RING * np.cos(angle), RING * 0.85 * np.sin(angle)


def marker_columns(changes: pd.DataFrame, points: pd.DataFrame) -> dict:
    """One marker per run: its ring offset and where its rows start and end in ``changes`` and in
    ``points`` (``first, last, pfirst, plast``: half-open ranges), placed at its last state."""
    seeds = sorted(set(int(s) for s in changes["seed"]))
    dx, dy = _ring(len(seeds))
    cs = changes["seed"].to_numpy()
    ps = points["seed"].to_numpy()
    first = np.searchsorted(cs, seeds, side="left")
    last = np.searchsorted(cs, seeds, side="right")
    pfirst = np.searchsorted(ps, seeds, side="left")
    plast = np.searchsorted(ps, seeds, side="right")
    return {"seed": np.asarray(seeds, dtype=np.int32), "dx": dx, "dy": dy,
            "first": first.astype(np.int32), "last": last.astype(np.int32),
            "pfirst": pfirst.astype(np.int32), "plast": plast.astype(np.int32),
            "x": np.full(len(seeds), np.nan), "y": np.full(len(seeds), np.nan),
            "state": np.full(len(seeds), -1, dtype=np.int32), "hl": np.zeros(len(seeds), dtype=np.int32),
            "alpha": np.full(len(seeds), 0.85), "size": np.full(len(seeds), 6.0)}


def _float32_columns(frame: pd.DataFrame, columns: list[str]) -> dict:
    # float32 halves what the page carries; the curves are drawn, not computed on
    return {c: frame[c].to_numpy(dtype=np.float32) for c in columns}


# --------------------------------------------------------------------------- the glue

#: JavaScript shared by every callback: it moves markers, highlights a state or a run, and
#: draws a run's path. Only Bokeh data and CSS classes change; text goes through Div.text with
#: render_as_text, so no name from the store is ever parsed as markup.
GLUE = r"""
const N = nodes.data, M = markers.data, C = changes.data, S = segs.data, P = points.data;
const where = {};
for (let k = 0; k < N.state.length; k++) where[N.state[k]] = [N.x[k], N.y[k]];
function stateAt(r, t) {
  const lo = M.first[r], hi = M.last[r];
  if (hi <= lo || C.step[lo] > t) return -1;
  let a = lo, b = hi - 1;  // last change at or before t
  while (a < b) { const m = (a + b + 1) >> 1; if (C.step[m] <= t) a = m; else b = m - 1; }
  return C.state[a];
}
function placeMarkers(t) {
  for (let r = 0; r < M.seed.length; r++) {
    const s = stateAt(r, t);
    const p = where[s];
    M.state[r] = s;
    M.x[r] = p ? p[0] + M.dx[r] : NaN;
    M.y[r] = p ? p[1] + M.dy[r] : NaN;
  }
  markers.change.emit();
}
function pointAt(r, t) {
  let best = -1;
  for (let i = M.pfirst[r]; i < M.plast[r]; i++) { if (P.step[i] <= t) best = i; else break; }
  return best < 0 ? M.pfirst[r] : best;
}
function drawSpectrum() {
  if (spectrum === null || freqs.length === 0) return;
  const r = M.seed.indexOf(ui.data.run[0]);
  if (r < 0) return;
  const i = pointAt(r, slider.value);
  const top = freqs.map(function (c) { return P[c][i]; });
  spectrum.data = {k: spectrum.data.k, top: top};
  spectrum_title.text = "run " + M.seed[r] + " at " + unit + " " + P.step[i] + ": embedding spectrum";
}
function drawWeights() {
  if (weights === null) return;
  const seed = ui.data.run[0], W = wix.data, n = weights.data.token.length;
  let j = -1;  // rows are in seed, then step order: the last of this run at or before the slider
  for (let i = 0; i < W.seed.length; i++) if (W.seed[i] === seed && W.step[i] <= slider.value) j = i;
  if (j < 0) {
    weights.data = {token: weights.data.token, color: weights.data.color,
                    x: new Float32Array(n).fill(NaN), y: new Float32Array(n).fill(NaN)};
    weights_line.data = {x: [], y: []};
    weights_title.text = "run " + seed + ": no weight snapshot at or before " + unit + " " + slider.value;
    return;
  }
  const s = W.start[j], k = W.k[j], X = wxy.data.x.slice(s, s + n), Y = wxy.data.y.slice(s, s + n);
  weights.data = {token: weights.data.token, color: weights.data.color, x: X, y: Y};
  const order = Array.from({length: n}, function (_, a) { return a; })
    .sort(function (a, b) { return (k * a) % n - (k * b) % n; });
  order.push(order[0]);
  weights_line.data = {x: order.map(function (a) { return X[a]; }), y: order.map(function (a) { return Y[a]; })};
  const r = M.seed.indexOf(seed), st = r < 0 ? -1 : stateAt(r, W.step[j]), q = N.state.indexOf(st);
  weights_title.text = "run " + seed + " at " + unit + " " + W.step[j] + " (" + (q < 0 ? "not decoded" : N.label[q]) +
    ")\ntokens on its Fourier circle, k = " + k;
}
function paint(segAlpha, segWidth, markHl) {
  for (let j = 0; j < S.seed.length; j++) { S.alpha[j] = segAlpha(j); S.width[j] = segWidth(j); }
  segs.change.emit();
  for (let r = 0; r < M.seed.length; r++) {
    const on = markHl(r);
    M.hl[r] = on ? 1 : 0;
    M.alpha[r] = on === null ? 0.85 : (on ? 1.0 : 0.15);
    M.size[r] = on ? 9 : 6;
  }
  markers.change.emit();
}
function rows(state) {
  document.querySelectorAll("tr.phase-row").forEach(function (tr) {
    tr.classList.toggle("latent-hl", state !== null && tr.dataset.state === String(state));
  });
}
function showState(s) {
  const visits = new Set();
  for (let i = 0; i < C.state.length; i++) if (C.state[i] === s) visits.add(C.seed[i]);
  paint(function (j) { return S.state[j] === s ? 1.0 : (visits.has(S.seed[j]) ? 0.25 : 0.05); },
        function (j) { return S.state[j] === s ? 2.2 : 1.0; },
        function (r) { return visits.has(M.seed[r]); });
  path.data = {x: [], y: []};
  rows(s);
  const k = N.state.indexOf(s);
  info.text = N.label[k] + ": visited by " + visits.size + " of " + M.seed.length + " runs" +
    (visits.size ? " (" + Array.from(visits).sort(function (a, b) { return a - b; }).join(", ") + ")" : "") +
    (N.detour[k] ? "; a detour state" : "") + ". Its checkpoints are bold on the curves.";
  ui.data = {run: ui.data.run, state: [s]};
}
function showRun(seed) {
  const r = M.seed.indexOf(seed);
  if (r < 0) return;
  const xs = [], ys = [], seq = [];
  for (let i = M.first[r]; i < M.last[r]; i++) {
    const p = where[C.state[i]];
    seq.push(C.state[i] < 0 ? "undecoded" : String(C.state[i]));
    if (!p) continue;
    xs.push(p[0] + M.dx[r]); ys.push(p[1] + M.dy[r]);
  }
  path.data = {x: xs, y: ys};
  paint(function (j) { return S.seed[j] === seed ? 1.0 : 0.06; },
        function (j) { return S.seed[j] === seed ? 2.6 : 1.0; },
        function (r2) { return M.seed[r2] === seed; });
  rows(null);
  info.text = "run " + seed + ": " + seq.join(" \u2192 ") + ". Its path is drawn on the map, its curve in bold.";
  ui.data = {run: [seed], state: [-1]};
  drawSpectrum();
  drawWeights();
}
function clearAll() {
  paint(function () { return 0.8; }, function () { return 1.2; }, function () { return null; });
  path.data = {x: [], y: []};
  rows(null);
  info.text = hint;
  ui.data = {run: ui.data.run, state: [-1]};
}
"""


def _callback(code: str, **args):
    from bokeh.models import CustomJS

    return CustomJS(args=args, code=GLUE + code)


# --------------------------------------------------------------------------- figures


def map_figure(data: ExploreData, height: int = 360):
    """The training map (nodes, transitions, run markers, the picked run's path) as a Bokeh figure.

    Returns ``(figure, sources)`` with sources ``nodes``, ``markers`` and ``path``.
    """
    from bokeh.models import Arrow, ColumnDataSource, HoverTool, LabelSet, NormalHead, Range1d, TapTool
    from bokeh.plotting import figure

    nodes = data.nodes
    share = nodes["share"].to_numpy(dtype=float)
    biggest = share.max() if len(share) and share.max() > 0 else 1.0
    node_src = ColumnDataSource({
        "state": nodes["state"].to_numpy(dtype=np.int32), "x": nodes["x"].to_numpy(dtype=float),
        "y": nodes["y"].to_numpy(dtype=float), "size": 22 + 34 * np.sqrt(share / biggest),
        "color": _colors(nodes["state"]), "label": nodes["label"].tolist(), "text": [str(s) for s in nodes["state"]],
        "share": [f"{100 * s:.1f} %" for s in share], "runs": nodes["runs"].to_numpy(dtype=np.int32),
        "detour": nodes["detour"].to_numpy(dtype=bool), "dash": ["dashed" if d else "solid" for d in nodes["detour"]],
        "outline": [2.5 if d else 1.0 for d in nodes["detour"]]}, name=NAMES["nodes"])
    xs = nodes["x"].to_numpy(dtype=float) if len(nodes) else np.zeros(1)
    ys = nodes["y"].to_numpy(dtype=float) if len(nodes) else np.zeros(1)
    fig = figure(name=NAMES["map"], height=height, sizing_mode="stretch_width", tools="tap,reset,save",
                 toolbar_location="right", x_range=Range1d(xs.min() - 0.8, xs.max() + 0.8),
                 y_range=Range1d(ys.min() - 0.8, ys.max() + 0.8), title="Training map: where every run is")
    fig.axis.visible = False
    fig.grid.visible = False
    pos = dict(zip(nodes["state"].astype(int), zip(xs, ys)))
    e = data.edges
    if len(e):
        most = max(int(e["runs"].max()), 1)
        x0, y0, x1, y1 = [], [], [], []
        for a, b in zip(e["source"], e["target"]):
            (ax, ay), (bx, by) = pos[int(a)], pos[int(b)]
            d = math.hypot(bx - ax, by - ay) or 1.0
            ux, uy = (bx - ax) / d, (by - ay) / d
            x0.append(ax + 0.22 * ux), y0.append(ay + 0.22 * uy)
            x1.append(bx - 0.22 * ux), y1.append(by - 0.22 * uy)
        edge_src = ColumnDataSource({"x0": x0, "y0": y0, "x1": x1, "y1": y1,
                                     "width": 1.0 + 4.0 * e["runs"].to_numpy(dtype=float) / most})
        fig.add_layout(Arrow(source=edge_src, x_start="x0", y_start="y0", x_end="x1", y_end="y1",
                             line_width="width", line_color="#777777", line_alpha=0.6,
                             end=NormalHead(size=9, fill_color="#777777", line_color="#777777")))
    node_r = fig.scatter("x", "y", source=node_src, size="size", fill_color="color", fill_alpha=0.55,
                         line_color="black", line_width="outline", line_dash="dash")
    node_r.nonselection_glyph = node_r.glyph.clone()
    node_r.selection_glyph = node_r.glyph.clone(fill_alpha=0.9)
    fig.add_layout(LabelSet(x="x", y="y", text="text", source=node_src, text_align="center",
                            text_baseline="middle", text_font_size="11pt", text_font_style="bold"))
    path_src = ColumnDataSource({"x": [], "y": []}, name=NAMES["path"])
    fig.line("x", "y", source=path_src, line_color="black", line_width=3, line_alpha=0.75)
    fig.scatter("x", "y", source=path_src, size=6, color="black")
    marker_src = ColumnDataSource(marker_columns(data.changes, data.points), name=NAMES["markers"])
    mark_r = fig.scatter("x", "y", source=marker_src, size="size", fill_color="white", line_color="black",
                         fill_alpha="alpha", line_alpha="alpha")
    mark_r.nonselection_glyph = mark_r.glyph.clone()
    mark_r.selection_glyph = mark_r.glyph.clone()
    fig.add_tools(HoverTool(renderers=[node_r], tooltips=[("", "@label"), ("checkpoints", "@share"),
                                                          ("runs visiting", "@runs")]))
    fig.add_tools(HoverTool(renderers=[mark_r], tooltips=[("run", "@seed"), ("state", "@state")]))
    fig.select_one(TapTool).renderers = [node_r, mark_r]
    return fig, {"nodes": node_src, "markers": marker_src, "path": path_src}


def curve_figure(data: ExploreData, feature: str | None, height: int = 360):
    """Every run's curve of ``feature``, each segment coloured by its decoded state, as a Bokeh figure.

    Returns ``(figure, segments_source)``.
    """
    from bokeh.models import ColumnDataSource, HoverTool, TapTool
    from bokeh.plotting import figure

    seg_src = ColumnDataSource(segment_columns(data.points, feature), name=NAMES["segments"])
    fig = figure(name=NAMES["curves"], height=height, sizing_mode="stretch_width",
                 tools="pan,wheel_zoom,box_zoom,tap,reset,save", toolbar_location="right",
                 title=f"Every run's {feature or 'feature'}, coloured by state", x_axis_label=data.step_unit)
    seg_r = fig.segment("x0", "y0", "x1", "y1", source=seg_src, line_color="color", line_alpha="alpha",
                        line_width="width")
    seg_r.nonselection_glyph = seg_r.glyph.clone()
    seg_r.selection_glyph = seg_r.glyph.clone()
    fig.add_tools(HoverTool(renderers=[seg_r], tooltips=[("run", "@seed"), (data.step_unit, "@x0"),
                                                         ("state", "@state"), ("value", "@y0")]))
    fig.select_one(TapTool).renderers = [seg_r]
    return fig, seg_src


def weights_figure(data: ExploreData, size: int = 380):
    """The picked run's tokens on its Fourier circle (:class:`WeightData`) as a Bokeh figure, drawn by
    the glue's ``drawWeights``; ``(None, args)`` without snapshots. Returns ``(figure, callback args)``."""
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    w = data.weights
    if w is None:
        return None, dict(weights=None, wix=None, wxy=None, weights_line=None, weights_title=None)
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    from . import figures as F

    cmap = colormaps[F.TOKEN_CMAP]
    shown = ColumnDataSource({"token": np.arange(w.p, dtype=np.int32),
                              "color": [to_hex(cmap(a / w.p)) for a in range(w.p)],
                              "x": np.full(w.p, np.nan, dtype=np.float32), "y": np.full(w.p, np.nan, dtype=np.float32)},
                             name=NAMES["weights"])
    line = ColumnDataSource({"x": [], "y": []}, name=NAMES["weights_line"])
    index = ColumnDataSource({"seed": w.index["seed"].to_numpy(dtype=np.int32),
                              "step": w.index["step"].to_numpy(dtype=float),
                              "k": w.index["k"].to_numpy(dtype=np.int32),
                              "start": w.index["start"].to_numpy(dtype=np.int32)}, name=NAMES["weights_index"])
    coords = ColumnDataSource({"x": w.x, "y": w.y}, name=NAMES["weights_coords"])
    fig = figure(name=NAMES["weights_figure"], width=size, height=size, match_aspect=True,
                 tools="pan,wheel_zoom,reset,save", toolbar_location="right",
                 title="the picked run's embedding on its Fourier circle")
    fig.xaxis.visible = False
    fig.yaxis.visible = False
    fig.line("x", "y", source=line, line_color="#999999", line_width=1)
    dots = fig.scatter("x", "y", source=shown, size=8, fill_color="color", line_color="#333333", line_width=0.5)
    fig.add_tools(HoverTool(renderers=[dots], tooltips=[("token", "@token")]))
    return fig, dict(weights=shown, wix=index, wxy=coords, weights_line=line, weights_title=fig.title)


def explore_layout(data: ExploreData, feature: str | None = None):
    """The whole interactive view (map, curves, spectrum, Fourier circle, feature menu, step slider) as a
    Bokeh layout; the spectrum and the circle only where ``data`` has them."""
    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, Div, Select, Slider, Span
    from bokeh.plotting import figure

    features = data.features
    if feature is None or feature not in features:
        feature = next((f for f in ("val_acc", "l2", "train_loss") if f in features), features[0] if features else None)
    map_fig, src = map_figure(data)
    curves, segs = curve_figure(data, feature)
    points = ColumnDataSource({"seed": data.points["seed"].to_numpy(dtype=np.int32),
                               "step": data.points["step"].to_numpy(dtype=float),
                               **_float32_columns(data.points, features + data.spectrum)})
    changes = ColumnDataSource({"seed": data.changes["seed"].to_numpy(dtype=np.int32),
                                "step": data.changes["step"].to_numpy(dtype=float),
                                "state": data.changes["state"].to_numpy(dtype=np.int32)})
    steps = data.changes["step"].to_numpy(dtype=float)
    lo, hi = (float(steps.min()), float(steps.max())) if len(steps) else (0.0, 1.0)
    every = np.unique(data.points["step"].to_numpy(dtype=float))
    step = float(np.median(np.diff(every))) if len(every) > 1 else 1.0
    slider = Slider(name=NAMES["slider"], start=lo, end=max(hi, lo + step), value=hi, step=step,
                    title=f"{data.step_unit} (the map shows where every run is)", sizing_mode="stretch_width")
    menu = Select(name=NAMES["feature"], title="Feature on the curves", value=feature or "",
                  options=features, width=260)
    hint = ("Click a state on the map to highlight its runs, its checkpoints and its row in the phase table; "
            "click a run's marker or curve to draw its path; drag the slider to move the runs; click empty space "
            "to clear.")
    info = Div(name=NAMES["info"], text=hint, render_as_text=True, sizing_mode="stretch_width")
    first = data.first_run if data.first_run is not None else median_run(
        {int(x): None for x in data.changes["seed"].unique()})
    ui = ColumnDataSource({"run": [first if first is not None else -1], "state": [-1]}, name=NAMES["ui"])
    spectrum_src, spectrum_fig = None, None
    if data.spectrum:
        ks = [int(c[len("embed_f"):]) for c in data.spectrum]
        spectrum_src = ColumnDataSource({"k": ks, "top": np.zeros(len(ks))}, name=NAMES["spectrum"])
        spectrum_fig = figure(height=220, sizing_mode="stretch_width", tools="save", title="embedding spectrum",
                              x_axis_label="frequency k", y_axis_label="share of energy")
        spectrum_fig.vbar(x="k", top="top", width=0.8, source=spectrum_src, color="#555555")
    weights_fig, weights_args = weights_figure(data)
    cursor = Span(location=hi, dimension="height", line_color="black", line_dash="dotted", line_width=1)
    curves.add_layout(cursor)
    args = dict(nodes=src["nodes"], markers=src["markers"], path=src["path"], changes=changes, segs=segs,
                points=points, slider=slider, info=info, ui=ui, hint=hint, spectrum=spectrum_src,
                spectrum_title=spectrum_fig.title if spectrum_fig is not None else None,
                freqs=list(data.spectrum), unit=data.step_unit, **weights_args)
    slider.js_on_change("value", _callback("placeMarkers(slider.value); cursor.location = slider.value; "
                                           "drawSpectrum(); "
                                           "drawWeights();", cursor=cursor, **args))
    menu.js_on_change("value", _callback(
        "const f = menu.value, v = P[f];\n"
        "for (let j = 0; j < S.i.length; j++) { S.y0[j] = v[S.i[j]]; S.y1[j] = v[S.i[j] + 1]; }\n"
        "segs.change.emit(); curves.title.text = \"Every run's \" + f + \", coloured by state\";",
        menu=menu, curves=curves, **args))
    map_fig.js_on_event("tap", _callback(
        "const mi = markers.selected.indices, ni = nodes.selected.indices;\n"
        "if (mi.length) showRun(M.seed[mi[0]]); else if (ni.length) showState(N.state[ni[0]]); else clearAll();",
        **args))
    curves.js_on_event("tap", _callback(
        "const si = segs.selected.indices;\nif (si.length) showRun(S.seed[si[0]]); else clearAll();", **args))
    # place the markers and draw the spectrum once the page is up (explore_parts attaches it)
    init = _callback("placeMarkers(slider.value); drawSpectrum(); drawWeights();", **args)
    top = row(map_fig, curves, sizing_mode="stretch_width")
    parts = [info, row(slider, menu, sizing_mode="stretch_width"), top]
    below = [f for f in (spectrum_fig, weights_fig) if f is not None]
    if len(below) == 2:
        parts.append(row(*below, sizing_mode="stretch_width"))
    elif below:
        parts.append(below[0])
    layout = column(*parts, sizing_mode="stretch_width")
    return layout, init


def explore_parts(fit: FitArtifacts, snapshots=None) -> tuple[str, str, str]:
    """``(resources, div, script)``: BokehJS inlined, the view's placeholder ``div`` and the ``script``
    that draws it, for :func:`latent.reports.html.page_html`; ``snapshots`` as for :func:`explore_data`."""
    from bokeh.document import Document
    from bokeh.embed import components
    from bokeh.events import DocumentReady
    from bokeh.resources import Resources

    layout, init = explore_layout(explore_data(fit, snapshots))
    doc = Document()
    doc.add_root(layout)
    doc.js_on_event(DocumentReady, init)
    script, div = components(layout)
    resources = Resources(mode="inline", components=["bokeh", "bokeh-widgets"]).render_js()
    return resources, div, script
