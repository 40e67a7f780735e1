"""``latent serve``: a local web app over the store (Bokeh server, the ``serve`` extra).

Three kinds of page:

* ``/``: every study in the store with its runs, fits, reports and the comparison pages, linked.
* ``/store/<path>``: the store's own files (reports, figures, comparison pages), read only. A path
  that leaves the store, through ``..`` or a symbolic link, is refused; so is anything but a page,
  an image or a plain-data file.
* ``/live?study=NAME[&fit=STUDY/FIT]``: a study while ``latent collect`` or a Recorder writes it.
  Every ``interval`` seconds the page reads what the store holds (:class:`LiveStudy`), the curves
  grow, and with a fit each run's current state, detour risk and convergence forecast update
  (:func:`latent.predict.predict_run`), with a warning when a run enters a detour state.

The server only reads the store: it never writes, fits or trains. It binds 127.0.0.1 unless told
otherwise. A checkpoint reaches the page within ``interval`` seconds of reaching the store;
``latent collect`` writes its rows at its save points (``--save-every``, default 30 s).
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from latent.errors import UserError
from latent.store import Study, list_studies

from .interactive import (ExploreData, _ring, curve_features, curve_figure, explore_data, map_figure,
                          segment_columns, thin_index)

#: What /store/ serves, by suffix; anything else is refused.
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml",
                 ".json": "application/json", ".csv": "text/csv; charset=utf-8", ".md": "text/plain; charset=utf-8",
                 ".txt": "text/plain; charset=utf-8"}
#: Names of the live page's models (the browser tests read them).
LIVE_NAMES = {"header": "live-header", "status": "live-status", "warnings": "live-warnings", "table": "live-table",
              "rows": "live-rows"}


# --------------------------------------------------------------------------- live data


class LiveStudy:
    """What a live page shows of one study, recomputed from the store at each :meth:`poll`.

    Parameters
    ----------
    study : latent.store.Study
    fmap : latent.predict.FittedMap, optional
        With a fit: each run's decoded path, current state, detour risk and forecast.
    """

    def __init__(self, study: Study, fmap=None, config=None):
        from latent.predict import PredictConfig

        self.study, self.fmap, self.config = study, fmap, config or PredictConfig()
        self.seen: dict[int, int] = {}
        self.results: dict[int, dict] = {}
        self.paths: dict[int, np.ndarray] = {}
        self.table: pd.DataFrame | None = None
        self.warnings: list[str] = []
        self.warned: set[tuple[int, int]] = set()
        self.statuses: dict = {}
        self.problem: str | None = None

    def poll(self) -> bool:
        """Read the study; return whether any run gained checkpoints since the last look."""
        from latent.predict import detour_line, predict_run

        if not self.study.exists():
            self.problem = f"waiting for {self.study.name} to appear in the store"
            return False
        try:
            table, self.statuses = self.study.read_finished_runs(allow_partial=True)
        except UserError:
            self.problem = "no checkpoint saved yet"
            return False
        self.problem = None
        moved = False
        for seed, run in table.groupby("seed", sort=True):
            seed = int(seed)
            if self.seen.get(seed) == len(run):
                continue
            moved = True
            self.seen[seed] = len(run)
            if self.fmap is None:
                continue
            try:
                res = predict_run(self.fmap, run, self.config)
                values = run.sort_values("step")[self.fmap.features].to_numpy(dtype=float)
                good = np.isfinite(values).all(axis=1)
                n = len(values) if good.all() else int(np.flatnonzero(~good)[0])
                path, _ = self.fmap.decode(values[:min(n, self.fmap.first_n)]) if n else (np.array([], int), None)
            except UserError as exc:
                self.results.pop(seed, None)
                self.problem = f"run {seed}: {exc}"
                continue
            self.results[seed] = res
            self.paths[seed] = np.asarray(path, dtype=int)
            if res["in_detour"] and (seed, res["state"]) not in self.warned:
                self.warned.add((seed, res["state"]))
                self.warnings.append(f"{time.strftime('%H:%M:%S')} " + detour_line(self.fmap, f"run {seed}", res))
        if moved:
            self.table = table
        return moved

    def points(self) -> pd.DataFrame:
        """The runs' checkpoints, thinned as the report's curves are, with the decoded state (-1 without a fit)."""
        if self.table is None:
            return pd.DataFrame(columns=["seed", "step", "state"])
        parts = []
        for seed, g in self.table.groupby("seed", sort=True):
            g = g.sort_values("step", kind="stable").reset_index(drop=True)
            state = np.full(len(g), -1)
            path = self.paths.get(int(seed))
            if path is not None:
                state[:len(path)] = path[:len(g)]
            g = g.assign(state=state)
            parts.append(g.iloc[thin_index(len(g))])
        return pd.concat(parts, ignore_index=True)

    def rows(self) -> dict:
        """One row per run for the page's table: run, status, checkpoints, step, state, risk, forecast."""
        from latent.predict import forecast_text

        out = {k: [] for k in ("run", "status", "checkpoints", "step", "state", "risk", "forecast")}
        for seed in sorted(set(self.seen) | set(self.statuses)):
            res = self.results.get(seed)
            status = self.statuses.get(seed)
            out["run"].append(seed)
            out["status"].append(status.status if status is not None else "")
            out["checkpoints"].append(self.seen.get(seed, 0))
            last = None
            if self.table is not None:
                steps = self.table.loc[self.table["seed"] == seed, "step"]
                last = float(steps.max()) if len(steps) else None
            out["step"].append("" if last is None else f"{last:g}")
            if res is None:
                out["state"].append("")
                out["risk"].append("")
                out["forecast"].append("")
                continue
            out["state"].append(f"{res['state']} ({res['p_state']:.2f})" + (" detour" if res["in_detour"] else ""))
            risk = res["detour_risk"]
            out["risk"].append(", ".join(f"{d}: {p:.2f}" for d, p in risk.items()) or "no detour states")
            out["forecast"].append(forecast_text(res["forecast"]))
        return out

    def status_line(self) -> str:
        n = len(self.seen)
        counts: dict[str, int] = {}
        for st in self.statuses.values():
            counts[st.status] = counts.get(st.status, 0) + 1
        parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        newest = "" if self.table is None else f"; newest checkpoint {self.table['step'].max():g}"
        return (f"last look {time.strftime('%H:%M:%S')}: {n} run(s) with checkpoints" + (f" ({parts})" if parts else "")
                + newest + (f"; {self.problem}" if self.problem else ""))


# --------------------------------------------------------------------------- the live page


def _arg(doc, key: str) -> str | None:
    args = doc.session_context.request.arguments if doc.session_context is not None else {}
    vals = args.get(key) or []
    return vals[0].decode("utf-8", "replace") if vals else None


def _store_study(store: Path, name: str | None) -> Study:
    """The study called ``name`` in the store. A name that is not a study name (a path, ``..``) is
    refused; a valid name with no study yet is waited for (the page says so at every look)."""
    from latent.store import check_study_name

    if not name:
        raise UserError("name a study: /live?study=NAME")
    if name not in {s.name for s in list_studies(store)}:
        check_study_name(name)
    return Study(store / name)


def live_document(doc, cfg) -> None:
    """Build the live page of the study the URL names into ``doc`` (a Bokeh server document); ``cfg``
    is the command's :class:`latent.cli.serve.ServeConfig`."""
    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, Div, Select

    from latent.artifacts import resolve_fit
    from latent.predict import FittedMap

    from .artifacts import load_fit

    store = Path(cfg.store)
    doc.title = "latent serve: live"
    try:
        study = _store_study(store, _arg(doc, "study"))
        fit_name = _arg(doc, "fit") or cfg.fit
        if not fit_name and study.fits_dir.is_dir() and any(study.fits_dir.iterdir()):
            fit_name = study.name  # the study's own latest fit
        fmap, fit = None, None
        if fit_name:
            fit_dir = resolve_fit(fit_name, str(store))
            fmap = FittedMap(fit_dir)
            fit = load_fit(store, fit_dir.parent.parent, fit_dir.name)
    except UserError as exc:
        doc.add_root(Div(text=f"latent serve: {exc}", render_as_text=True, name=LIVE_NAMES["status"]))
        return
    live = LiveStudy(study, fmap)
    live.poll()
    doc.title = f"latent serve: {study.name} (live)"
    head = (f"{study.name}, live" + (f", on the map of fit {fmap.study}/{fmap.fit_id} (K = {fmap.k}, detour states: "
                                    f"{', '.join(map(str, fmap.detours)) or 'none'})" if fmap else
                                    ", without a fit (add ?fit=STUDY/FIT, or start latent serve with --fit, "
                                    "for states, detour risk and forecasts)"))
    header = Div(text=head, render_as_text=True, name=LIVE_NAMES["header"],
                 styles={"font-size": "1.2em", "font-weight": "bold"})
    status = Div(text=live.status_line(), render_as_text=True, name=LIVE_NAMES["status"])
    warn = Div(text="\n".join(live.warnings), render_as_text=True, name=LIVE_NAMES["warnings"],
               styles={"color": "#a00000", "font-weight": "bold", "white-space": "pre-line"})
    points = live.points()
    features = curve_features(points) if len(points) else []
    feature = next((f for f in ("val_acc", "l2", "train_loss") if f in features), features[0] if features else None)
    data = ExploreData(points=points, changes=points[["seed", "step", "state"]], nodes=pd.DataFrame(),
                       edges=pd.DataFrame(), features=features, spectrum=[], step_unit=fmap.step_unit if fmap else
                       str(_meta(study).get("step_unit", "step")), n_states=fmap.k if fmap else 0)
    curves, segs = curve_figure(data, feature, height=380)
    menu = Select(title="Feature on the curves", value=feature or "", options=features, width=260)
    # the table is a Div of escaped HTML (Bokeh's DataTable did not redraw when its data was replaced
    # from the server); its columns also stay in a data source, for scripts and tests
    heads = (("run", "run"), ("status", "status"), ("checkpoints", "checkpoints"), ("step", data.step_unit),
             ("state", "state (p)"), ("risk", "detour risk"), ("forecast", "convergence forecast"))
    rows = ColumnDataSource(live.rows(), name=LIVE_NAMES["rows"])
    table = Div(text=rows_html(rows.data, heads), name=LIVE_NAMES["table"], sizing_mode="stretch_width")
    markers, where = None, {}
    parts = [header, status, warn]
    if fit is not None:
        fit_data = explore_data(fit)
        map_fig, src = map_figure(fit_data, height=340)
        markers = src["markers"]
        where = {int(s): (float(x), float(y)) for s, x, y in zip(fit_data.nodes["state"], fit_data.nodes["x"],
                                                                   fit_data.nodes["y"])}
        markers.data = live_markers(live, where)
        parts.append(row(map_fig, curves, sizing_mode="stretch_width"))
    else:
        parts.append(curves)
    parts += [menu, table]
    doc.add_root(column(*parts, sizing_mode="stretch_width"))
    doc.add_root(rows)  # drawn by no glyph: a root of its own, so that it reaches the page

    def redraw():
        pts = live.points()
        segs.data = segment_columns(pts, menu.value if menu.value in pts.columns else None)
        curves.title.text = f"Every run's {menu.value}, coloured by state" if menu.value else "no checkpoint yet"

    def on_feature(attr, old, new):
        redraw()

    menu.on_change("value", on_feature)

    def tick():
        moved = live.poll()
        status.text = live.status_line()
        if moved:
            if not menu.options:
                pts = live.points()
                menu.options = curve_features(pts)
                menu.value = next((f for f in ("val_acc", "l2", "train_loss") if f in menu.options),
                                  menu.options[0] if menu.options else "")
            redraw()
            rows.data = live.rows()
            table.text = rows_html(rows.data, heads)
            warn.text = "\n".join(live.warnings)
            if markers is not None:
                markers.data = live_markers(live, where)

    doc.add_periodic_callback(tick, int(cfg.interval * 1000))


def rows_html(rows: dict, heads) -> str:
    """The live table as HTML, every cell escaped (``heads``: ``(column, title)`` pairs)."""
    style = ("<style>table.live{border-collapse:collapse;font:13px system-ui,sans-serif}table.live td,"
             "table.live th{border-bottom:1px solid #ddd;padding:.25em .7em;text-align:left}</style>")
    head = "".join(f"<th>{html.escape(str(t))}</th>" for _, t in heads)
    n = len(next(iter(rows.values()))) if rows else 0
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(rows[c][i]))}</td>" for c, _ in heads) + "</tr>"
                   for i in range(n))
    return f"{style}<table class=live><tr>{head}</tr>{body}</table>"


def _meta(study: Study) -> dict:
    try:
        return study.read_meta()
    except UserError:
        return {}


def live_markers(live: LiveStudy, where: dict[int, tuple[float, float]]) -> dict:
    """Marker columns (as :func:`latent.reports.interactive.marker_columns` has them) with each run
    beside its current state on the fit's map (``where``: state -> node position)."""
    seeds = sorted(live.results)
    dx, dy = _ring(len(seeds))
    x, y, state = [], [], []
    for i, s in enumerate(seeds):
        st = int(live.results[s]["state"])
        p = where.get(st)
        x.append(p[0] + dx[i] if p else float("nan"))
        y.append(p[1] + dy[i] if p else float("nan"))
        state.append(st)
    n = len(seeds)
    return {"seed": seeds, "dx": list(dx), "dy": list(dy), "first": [0] * n, "last": [0] * n, "pfirst": [0] * n,
            "plast": [0] * n, "x": x, "y": y, "state": state, "hl": [0] * n, "alpha": [0.9] * n, "size": [8.0] * n}


# --------------------------------------------------------------------------- index and files


def _link(href: str, text: str) -> str:
    return f"<a href='{html.escape(href, quote=True)}'>{html.escape(text)}</a>"


def index_html(cfg) -> str:
    """The front page: every study with its runs, fits, reports and live page; the comparison pages."""
    store = Path(cfg.store)
    rows = []
    for study in list_studies(store):
        meta = _meta(study)
        seeds = meta.get("seeds") or []
        # hidden names are a fit being written or replaced
        fits = (sorted(p.name for p in study.fits_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
                if study.fits_dir.is_dir() else [])
        fit_cells = []
        for fid in fits:
            report = study.reports_dir / fid / "index.html"
            if report.is_file():
                fit_cells.append(_link(f"/store/{quote(study.name)}/reports/{quote(fid)}/index.html", fid))
            else:
                fit_cells.append(html.escape(fid) + " <span class=dim>(no report yet: latent report --study "
                                 f"{html.escape(study.name)} --fit {html.escape(fid)})</span>")
        live = f"/live?study={quote(study.name)}"  # the live page picks the fit: --fit, else the study's latest
        rows.append(f"<tr><td>{html.escape(study.name)}</td><td>{html.escape(str(meta.get('task', '?')))}</td>"
                    f"<td>{len(seeds)}</td><td>{'<br>'.join(fit_cells) or '<span class=dim>none</span>'}</td>"
                    f"<td>{_link(live, 'live')}</td></tr>")
    comparisons = sorted((store / "comparisons").glob("*/*/index.html")) if (store / "comparisons").is_dir() else []
    comp = "".join("<li>" + _link("/store/" + quote(p.relative_to(store).as_posix()),
                                  f"{p.parent.parent.name} / {p.parent.name}") + "</li>" for p in comparisons)
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>latent serve</title>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            "<style>body{font:15px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}"
            "table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left;"
            "vertical-align:top}.dim{color:#777}a{color:#0072B2}</style></head><body>"
            f"<h1>latent serve</h1><p class=dim>The store {html.escape(str(store.resolve()))}, read only. A live page "
            f"looks at the store every {cfg.interval:g} s"
            + (f"; states and forecasts from fit {html.escape(cfg.fit)}" if cfg.fit else
               "; it uses the study's latest fit, or start with --fit for another") + ".</p>"
            "<h2>Studies</h2><table><tr><th>study</th><th>task</th><th>runs</th><th>fits (report)</th><th></th></tr>"
            + "".join(rows) + "</table>"
            + (f"<h2>Comparisons</h2><ul>{comp}</ul>" if comp else "") + "</body></html>")


def resolve_store_file(store: Path, rel: str) -> Path:
    """The file under ``store`` that ``rel`` names, or UserError when it leaves the store (``..``, an
    absolute path or a symbolic link pointing out), does not exist, or is not a kind served."""
    root = store.resolve()
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise PermissionError(f"{rel} is outside the store")
    if not target.is_file():
        raise FileNotFoundError(rel)
    if target.suffix.lower() not in CONTENT_TYPES:
        raise PermissionError(f"{target.suffix or 'this kind of file'} is not served")
    return target


def make_server(cfg):
    """The Bokeh server (not started; ``cfg`` a :class:`latent.cli.serve.ServeConfig`) with the index, the
    store's files and the live pages."""
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server
    from tornado.web import HTTPError, RequestHandler

    class Index(RequestHandler):
        def get(self):
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.write(index_html(cfg))

    class StoreFile(RequestHandler):
        def get(self, rel):
            try:
                path = resolve_store_file(Path(cfg.store), rel)
            except PermissionError as exc:
                raise HTTPError(403, str(exc))
            except FileNotFoundError:
                raise HTTPError(404)
            self.set_header("Content-Type", CONTENT_TYPES[path.suffix.lower()])
            self.set_header("X-Content-Type-Options", "nosniff")
            self.write(path.read_bytes())

    app = Application(FunctionHandler(lambda doc: live_document(doc, cfg)))
    origins = [f"{cfg.host}:{cfg.port}", f"127.0.0.1:{cfg.port}", f"localhost:{cfg.port}"]
    return Server({"/live": app}, address=cfg.host, port=cfg.port, allow_websocket_origin=origins,
                  redirect_root=False, extra_patterns=[(r"/", Index), (r"/store/(.*)", StoreFile)],
                  check_unused_sessions_milliseconds=5000, unused_session_lifetime_milliseconds=15000)
