"""Drive Debian's Chromium (never a downloaded browser) through Playwright, for the interactive pages.

``open_page`` starts a headless Chromium with every host mapped to nothing (a regression could not
reach the network), records console errors, uncaught exceptions and CSP violations, and waits
until BokehJS has drawn the page. ``model``/``data`` read a Bokeh model by name; ``click_data``
clicks a figure at data coordinates the way a user would (mouse events on its canvas).
"""

from __future__ import annotations

import contextlib
import shutil

import pytest

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)

#: Recorded in the page before any of its own scripts run.
WATCH = """
window.__problems = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__problems.push('csp: ' + e.violatedDirective + ' ' + e.blockedURI);
});
"""


def need_browser():
    """Skip unless Chromium and Playwright are both here (CI installs both)."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); CI installs it")
    pytest.importorskip("playwright.sync_api", reason="Playwright is in the test extra")


@contextlib.contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    need_browser()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
        try:
            yield b
        finally:
            b.close()


def open_page(b, url: str, width: int = 1366, height: int = 900):
    """A new page at ``url``; returns ``(page, problems)`` where ``problems`` collects console errors,
    uncaught exceptions and (via :func:`problems`) CSP violations."""
    page = b.new_page(viewport={"width": width, "height": height})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"exception: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.add_init_script(WATCH)
    page.goto(url)
    page.wait_for_function("window.Bokeh && Bokeh.documents.length > 0 && [...Bokeh.index.roots].length > 0",
                           timeout=20000)
    return page, problems


def problems(page, seen: list[str]) -> list[str]:
    return seen + page.evaluate("window.__problems")


def data(page, name: str) -> dict:
    """The ``data`` of the ColumnDataSource called ``name``, as plain lists."""
    return page.evaluate("""(name) => {
      const m = Bokeh.documents[0].get_model_by_name(name);
      const out = {};
      for (const [k, v] of (m.data instanceof Map ? m.data.entries() : Object.entries(m.data))) out[k] = Array.from(v);
      return out; }""", name)


def prop(page, name: str, attr: str):
    return page.evaluate("([n, a]) => Bokeh.documents[0].get_model_by_name(n)[a]", [name, attr])


def set_prop(page, name: str, attr: str, value) -> None:
    page.evaluate("([n, a, v]) => { Bokeh.documents[0].get_model_by_name(n)[a] = v; }", [name, attr, value])


def click_data(page, figure: str, x: float, y: float) -> None:
    """Click figure ``figure`` at data coordinates ``(x, y)`` with the mouse."""
    where = page.evaluate("""([name, x, y]) => {
      const fig = Bokeh.documents[0].get_model_by_name(name);
      let view = null;
      for (const root of Bokeh.index.roots) { view = root.owner.find_one(fig); if (view) break; }
      view.el.scrollIntoView({block: 'center'});
      const box = view.canvas_view.el.getBoundingClientRect();
      return {x: box.left + view.frame.x_scale.compute(x), y: box.top + view.frame.y_scale.compute(y)};
    }""", [figure, x, y])
    page.mouse.click(where["x"], where["y"])


def settle(page, ms: int = 400) -> None:
    """Bokeh runs callbacks asynchronously: give them a moment."""
    page.wait_for_timeout(ms)
