"""The report's interactive view in a real browser (Debian's Chromium, driven by Playwright).

Every expectation is computed here from the toy fit's own tables (tests/report_fixtures.py says
what they hold: seeds 3-5 visit state 2; seed 3 goes 0 → 1 → 2 → 3), never read back from the page's
code: the page must load with no console error, no exception and no blocked fetch; clicking a state
highlights exactly its runs, its checkpoints and its phase-table row; clicking a run draws its path;
the slider moves every run to the state it is in at that step; the feature menu swaps the curves;
names holding markup stay text; with scripts off the static figures remain.
"""

from __future__ import annotations

import numpy as np
import pytest

from browser import browser, click_data, data, need_browser, open_page, problems, prop, set_prop, settle
from report_fixtures import TOY_FIT_ID, TOY_NAME, make_toy_fit

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    need_browser()
    import matplotlib

    matplotlib.use("Agg")
    from latent.reports.artifacts import load_fit
    from latent.reports.html import write_report

    store = tmp_path_factory.mktemp("store")
    make_toy_fit(store)
    fit = load_fit(store)
    index = write_report(fit, report_command="latent report")
    with browser() as b:
        yield fit, index, b


#: Images that are not the report's own PNG figures, in the document and every (open) shadow root.
DEEP_IMAGES = """(() => {
  let n = 0;
  (function walk(root) {
    root.querySelectorAll('img').forEach(function (i) { if (!i.src.startsWith('data:image/png')) n++; });
    root.querySelectorAll('*').forEach(function (el) { if (el.shadowRoot) walk(el.shadowRoot); });
  })(document);
  return n; })()"""


def _state_at(fit, seed: int, t: float) -> int:
    run = fit.runs[(fit.runs["seed"] == seed) & (fit.runs["step"] <= t)].sort_values("step")
    return int(run["state"].iloc[-1]) if len(run) else -1


def _node_xy(page) -> dict[int, tuple[float, float]]:
    n = data(page, "latent-nodes")
    return {int(s): (x, y) for s, x, y in zip(n["state"], n["x"], n["y"])}


def _check_markers(page, fit, t: float) -> None:
    m = data(page, "latent-markers")
    pos = _node_xy(page)
    for seed, x, y, dx, dy in zip(m["seed"], m["x"], m["y"], m["dx"], m["dy"]):
        want = _state_at(fit, int(seed), t)
        if want < 0:
            assert x is None or np.isnan(x), (seed, t)
        else:
            assert (x, y) == pytest.approx((pos[want][0] + dx, pos[want][1] + dy)), (seed, t, want)


def test_loads_clean_offline_with_runs_at_their_last_state(toy):
    fit, index, b = toy
    page, seen = open_page(b, index.as_uri())
    settle(page)
    assert problems(page, seen) == []
    fetched = page.evaluate("performance.getEntriesByType('resource').map(r => r.name)")
    assert [u for u in fetched if not u.startswith("data:")] == []
    assert set(_node_xy(page)) == {0, 1, 2, 3}
    # the run picked at first converges at the median time: seeds 1, 2, 0, 3, 4 converge at 150, 160, 170,
    # 220, 240 (seed 5 never), so seed 0
    assert data(page, "latent-ui")["run"] == [0]
    _check_markers(page, fit, float(fit.runs["step"].max()))
    # the curves carry every run's checkpoints (the toy has fewer than the thinning limit)
    segs = data(page, "latent-segments")
    assert len(segs["seed"]) == sum(len(g) - 1 for _, g in fit.runs.groupby("seed"))
    page.close()


def test_clicking_a_state_highlights_its_runs_checkpoints_and_row(toy):
    fit, index, b = toy
    page, seen = open_page(b, index.as_uri())
    x, y = _node_xy(page)[2]
    click_data(page, "latent-map", x, y)
    settle(page)
    m = data(page, "latent-markers")
    assert sorted(s for s, hl in zip(m["seed"], m["hl"]) if hl) == [3, 4, 5]
    segs = data(page, "latent-segments")
    bold = {i for i, a in enumerate(segs["alpha"]) if a == 1.0}
    assert bold == {i for i, s in enumerate(segs["state"]) if s == 2} and bold
    marked = page.evaluate("[...document.querySelectorAll('tr.phase-row.latent-hl')].map(tr => tr.dataset.state)")
    assert marked == ["2"]
    assert prop(page, "latent-info", "text").startswith("state 2")
    assert "3 of 6 runs (3, 4, 5)" in prop(page, "latent-info", "text")
    # empty space clears it
    click_data(page, "latent-map", x + 0.5, y + 0.6)
    settle(page)
    assert not any(data(page, "latent-markers")["hl"])
    assert page.evaluate("document.querySelectorAll('tr.latent-hl').length") == 0
    assert problems(page, seen) == []
    page.close()


def test_clicking_a_run_draws_its_path(toy):
    fit, index, b = toy
    page, seen = open_page(b, index.as_uri())
    set_prop(page, "latent-slider", "value", 150.0)  # seed 3 sits in state 1 at epoch 150
    settle(page)
    m = data(page, "latent-markers")
    r = m["seed"].index(3)
    click_data(page, "latent-map", m["x"][r], m["y"][r])
    settle(page)
    path = data(page, "latent-path")
    pos = _node_xy(page)
    want = [0, 1, 2, 3]  # report_fixtures: seed 3 is 0×8 → 1×6 → 2×8 → 3×8, then undecoded
    assert path["x"] == pytest.approx([pos[s][0] + m["dx"][r] for s in want])
    assert path["y"] == pytest.approx([pos[s][1] + m["dy"][r] for s in want])
    segs = data(page, "latent-segments")
    assert {s for s, a in zip(segs["seed"], segs["alpha"]) if a == 1.0} == {3}
    assert prop(page, "latent-info", "text").startswith("run 3: 0 → 1 → 2 → 3 → undecoded")
    assert problems(page, seen) == []
    page.close()


def test_the_slider_moves_every_run(toy):
    fit, index, b = toy
    page, seen = open_page(b, index.as_uri())
    # a real key press on the slider's handle: Home takes it to the first checkpoint, where all sit in state 0
    handle = page.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    page.keyboard.press("Home")
    settle(page)
    start = prop(page, "latent-slider", "value")
    assert start == float(fit.runs["step"].min())
    _check_markers(page, fit, start)
    assert set(data(page, "latent-markers")["state"]) == {0}
    for t in (100.0, 150.0, 220.0, 300.0):
        set_prop(page, "latent-slider", "value", t)
        settle(page, 250)
        _check_markers(page, fit, t)
    assert problems(page, seen) == []
    page.close()


def test_the_feature_menu_swaps_the_curves(toy):
    fit, index, b = toy
    page, seen = open_page(b, index.as_uri())
    menu = page.locator("select").first
    menu.scroll_into_view_if_needed()
    menu.select_option("l1")
    settle(page)
    segs = data(page, "latent-segments")
    runs = fit.runs.sort_values(["seed", "step"])
    want = np.concatenate([g["l1"].to_numpy()[:-1] for _, g in runs.groupby("seed", sort=True)])
    assert np.asarray(segs["y0"]) == pytest.approx(want.astype(np.float32), rel=1e-6)
    assert page.evaluate("Bokeh.documents[0].get_model_by_name('latent-curves').title.text") == \
        "Every run's l1, coloured by state"
    assert problems(page, seen) == []
    page.close()


def test_names_holding_markup_stay_text(toy, tmp_path):
    """A feature and a state name that are HTML (as an imported column could be) are shown as text."""
    b = toy[2]
    import matplotlib

    matplotlib.use("Agg")
    from latent.reports.artifacts import load_fit
    from latent.reports.html import write_report

    make_toy_fit(tmp_path)
    fit = load_fit(tmp_path)
    evil = "<img src=x onerror=\"window.__pwned=1\">"
    import dataclasses

    fit = dataclasses.replace(fit, runs=fit.runs.assign(**{evil: fit.runs["l1"]}))
    fit.__dict__["state_names"] = {2: evil + "</script><script>window.__pwned=2</script>"}
    index = write_report(fit, out_dir=tmp_path / "page", report_command="latent report")
    page, seen = open_page(b, index.as_uri())
    options = page.locator("select").first.evaluate("s => [...s.options].map(o => o.textContent)")
    assert evil in options
    page.locator("select").first.select_option(evil)
    x, y = _node_xy(page)[2]
    click_data(page, "latent-map", x, y)
    settle(page)
    assert evil in prop(page, "latent-info", "text")
    assert page.evaluate("window.__pwned") is None
    # no element was made from the names, in the page or inside any widget's shadow root: the page's
    # images are the report's own figures
    assert page.evaluate(DEEP_IMAGES) == 0
    assert problems(page, seen) == []
    page.close()


def test_with_scripts_off_the_static_figures_remain(toy):
    fit, index, b = toy
    ctx = b.new_context(java_script_enabled=False)
    page = ctx.new_page()
    page.goto(index.as_uri())
    assert page.locator("img").count() == 8
    assert page.locator("img").first.evaluate("i => i.complete && i.naturalWidth > 0")
    assert "Scripts are off" in page.locator("#explore").inner_text()
    ctx.close()


def test_median_run_by_hand():
    from latent.reports.interactive import median_run

    assert median_run({0: 170.0, 1: 150.0, 2: 160.0, 3: 220.0, 4: 240.0, 5: None}) == 0
    assert median_run({7: 10.0, 3: 10.0}) == 7  # ties by seed: (10, 3), (10, 7); rank 1 is seed 7
    assert median_run({4: None, 2: None, 9: None}) == 4
    assert median_run({}) is None


def test_without_bokeh_the_page_is_static(tmp_path, monkeypatch):
    """Bokeh missing (the serve extra not installed): the page is written without the view, and the command says so."""
    import latent.reports.interactive as I
    from latent.cli import main

    monkeypatch.setattr(I, "available", lambda: False)
    make_toy_fit(tmp_path)
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["report", "--store", str(tmp_path)]) == 0
    page = (tmp_path / TOY_NAME / "reports" / TOY_FIT_ID / "index.html").read_text()
    assert "<script" not in page and "id='explore'" not in page
    assert "no interactive view: Bokeh is not installed" in err.getvalue()
