"""The report opened in a real browser: Debian's headless Chromium (never a downloaded one).

How (see docs/report.md, "Checked in a real browser"):

1. Render the toy fit. Copy ``index.html`` to a probe page that differs only by an inline
   script (and ``script-src 'unsafe-inline'`` added to its Content-Security-Policy so the
   script may run). The script records every image's natural size and on-page box, every inline
   SVG's box, every resource the page fetched (``performance.getEntriesByType('resource')``) and
   every CSP violation (a blocked fetch), and writes them as JSON into the DOM after ``load``.
   ``chromium --dump-dom`` prints that DOM.
2. Screenshot the unmodified ``index.html`` at laptop width and full page height and check that
   the page is not blank and that every figure's box holds a drawing, not background.
3. A negative control injects a remote image and a broken one into the probe page and checks
   that the same probe catches both, so the assertions above can fail.
4. No table overflows at laptop width, neither the page nor inside itself (a table that scrolls
   sideways in its own box, as the original-units table did with 14 features, is caught too),
   on the toy report and on the report of a real ``latent fit`` of a study with the 14 reference
   features; a negative control injects a wide table and checks that the probe sees it overflow.

Chromium runs with ``--host-resolver-rules`` mapping every host to nothing, so even a
regression could not reach the network during the test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from report_fixtures import TOY_FIT_ID, TOY_NAME, make_toy_fit

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install chromium); CI installs it, so this runs there",
)

WIDTH = 1366  # a common laptop screen width in CSS pixels
N_FIGURES = 8

PROBE = """<script>
var __viol = [];
document.addEventListener('securitypolicyviolation', function (e) {
  __viol.push(e.violatedDirective + ' ' + e.blockedURI);
});
window.addEventListener('load', function () {
  function box(el) {
    var r = el.getBoundingClientRect();
    return {x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height};
  }
  var imgs = [].slice.call(document.images).map(function (i) {
    return {complete: i.complete, nw: i.naturalWidth, nh: i.naturalHeight, box: box(i)};
  });
  var svgs = [].slice.call(document.querySelectorAll('svg')).map(function (s) {
    var b = s.getBBox(); return {w: b.width, h: b.height, box: box(s)};
  });
  var tables = [].slice.call(document.querySelectorAll('table')).map(function (t) {
    return {cls: t.className, scrollWidth: t.scrollWidth, clientWidth: t.clientWidth, box: box(t)};
  });
  var out = {imgs: imgs, svgs: svgs, tables: tables, violations: __viol,
             resources: performance.getEntriesByType('resource').map(function (r) { return r.name; }),
             scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
             scrollHeight: document.documentElement.scrollHeight};
  var pre = document.createElement('pre');
  pre.id = 'latent-probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--force-device-scale-factor=1", "--hide-scrollbars", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def _probe_page(page: str, inject: str = "") -> str:
    assert "default-src 'none';" in page
    page = page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
    return page.replace("</title>", "</title>" + PROBE, 1).replace("</main>", inject + "</main>", 1)


def _run_probe(tmp: Path, html: str) -> dict:
    path = tmp / f"probe-{len(list(tmp.glob('probe-*')))}.html"
    path.write_text(html, encoding="utf-8")
    res = _chromium(tmp, f"--window-size={WIDTH},800", "--dump-dom", path.as_uri())
    m = re.search(r'<pre id="latent-probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"probe did not report (rc {res.returncode}); stderr tail: {res.stderr[-800:]}"
    import html as _html

    return json.loads(_html.unescape(m.group(1)))


def _overflowing_tables(info: dict) -> list[dict]:
    """Tables wider than their box (they scroll sideways inside it) or reaching past the window."""
    return [t for t in info["tables"]
            if t["scrollWidth"] > t["clientWidth"] + 1 or t["box"]["x"] + t["box"]["w"] > info["innerWidth"] + 1]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    import matplotlib

    matplotlib.use("Agg")
    from latent.reports.artifacts import load_fit
    from latent.reports.html import write_report

    store = tmp_path_factory.mktemp("store")
    make_toy_fit(store)
    index = write_report(load_fit(store), report_command="latent report")
    assert index == store / TOY_NAME / "reports" / TOY_FIT_ID / "index.html"
    return index


def test_every_figure_renders_and_nothing_is_fetched(report, tmp_path):
    info = _run_probe(tmp_path, _probe_page(report.read_text(encoding="utf-8")))
    assert len(info["imgs"]) == N_FIGURES
    for img in info["imgs"]:
        assert img["complete"] and img["nw"] > 0 and img["nh"] > 0, img
        assert img["box"]["w"] > 200 and img["box"]["h"] > 100, img
        assert img["box"]["x"] + img["box"]["w"] <= WIDTH, img  # fits a laptop screen
    for svg in info["svgs"]:
        assert svg["w"] > 0 and svg["h"] > 0, svg
    assert info["resources"] == []  # the page fetched nothing (data: images are not fetches)
    assert info["violations"] == []  # and tried to fetch nothing
    assert info["scrollWidth"] <= info["innerWidth"]  # no horizontal scrolling at laptop width


def test_screenshot_shows_every_figure(report, tmp_path):
    from PIL import Image

    info = _run_probe(tmp_path, _probe_page(report.read_text(encoding="utf-8")))
    height = min(int(info["scrollHeight"]) + 50, 16000)
    shot = tmp_path / "shot.png"
    res = _chromium(tmp_path, f"--window-size={WIDTH},{height}", f"--screenshot={shot}", report.as_uri())
    assert shot.exists(), res.stderr[-800:]
    im = Image.open(shot).convert("RGB")
    assert im.size == (WIDTH, height)

    def ink(region) -> float:
        """Fraction of pixels that are not (near-)white background."""
        gray = region.convert("L")
        hist = gray.histogram()
        return 1.0 - sum(hist[245:]) / max(sum(hist), 1)

    assert ink(im) > 0.03, "the screenshot is blank"
    assert len(im.getcolors(maxcolors=1 << 20) or []) > 200  # colour figures, not a flat page
    for img in info["imgs"]:
        b = img["box"]
        region = im.crop((int(b["x"]), int(b["y"]), int(b["x"] + b["w"]), int(b["y"] + b["h"])))
        assert ink(region) > 0.02, f"figure at {b} is blank in the screenshot"


def test_probe_catches_remote_and_broken_images(report, tmp_path):
    """Negative control: the same probe fails a page with a remote and a broken image."""
    inject = ("<img src='http://example.invalid/pixel.png' alt=remote>"
              "<img src='data:image/png;base64,AAAA' alt=broken>")
    info = _run_probe(tmp_path, _probe_page(report.read_text(encoding="utf-8"), inject))
    assert len(info["imgs"]) == N_FIGURES + 2
    assert any("example.invalid" in v for v in info["violations"]) or any(
        "example.invalid" in r for r in info["resources"])
    broken = info["imgs"][-1]
    assert broken["nw"] == 0


@pytest.fixture(scope="module")
def wide_report(tmp_path_factory):
    """A real `latent fit` of a small study with the 14 reference features and the four loss and
    accuracy columns, reported: the widest tables a collected study gives."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from latent.fit import FitConfig, fit_study, write_fit
    from latent.store import REFERENCE_COLUMNS, Study
    from planted import emit, run_table, well_separated_means, write_study
    from latent.reports.artifacts import load_fit
    from latent.reports.html import write_report

    rng = np.random.default_rng(5)
    features = list(REFERENCE_COLUMNS)
    means = well_separated_means(3, len(features), scale=8.0)
    runs = {}
    for s in range(8):
        states = np.repeat([0, 1, 2], [10 + s % 3, 12, 18 - s % 3])
        perf = {"train_loss": np.array([2.0, 0.5, 0.01])[states], "val_loss": np.array([2.1, 3.0, 0.2])[states],
                "train_acc": np.array([0.1, 0.9, 1.0])[states], "val_acc": np.array([0.05, 0.2, 0.97])[states]}
        runs[s] = run_table(s, emit(states, means, rng) * 1e-3, features, **perf)
    root = write_study(tmp_path_factory.mktemp("wide") / "data" / "wide", runs, features=features)
    result = fit_study(Study(root), FitConfig(max_states=3, restarts=1, n_iter=8, folds=2, n_boot=20, resamples=0),
                       n_jobs=1)
    write_fit(Study(root), result)
    return write_report(load_fit(root.parent, "wide"), report_command="latent report")


def test_no_table_overflows_at_laptop_width(report, wide_report, tmp_path):
    for page in (report, wide_report):
        info = _run_probe(tmp_path, _probe_page(page.read_text(encoding="utf-8")))
        assert len(info["tables"]) >= 5 and any(t["cls"] == "num profile" for t in info["tables"])
        assert _overflowing_tables(info) == [], page
        assert info["scrollWidth"] <= info["innerWidth"]


def test_probe_catches_a_table_that_overflows(report, tmp_path):
    """Negative control: a 30-column table in the page's own table style scrolls inside its box;
    the probe reports it, though the page itself does not scroll."""
    row = "".join(f"<td>-0.0{i}12345</td>" for i in range(30))
    inject = f"<table class=num><tbody><tr>{row}</tr></tbody></table>"
    info = _run_probe(tmp_path, _probe_page(report.read_text(encoding="utf-8"), inject))
    assert info["scrollWidth"] <= info["innerWidth"]  # the old page-level check would pass ...
    bad = _overflowing_tables(info)
    assert len(bad) == 1 and bad[0]["cls"] == "num"  # ... this one does not
