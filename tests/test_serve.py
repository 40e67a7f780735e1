"""``latent serve``: the index, the store's files (never outside it), and live pages, in a real browser.

The live test runs a real ``latent collect`` beside a real ``latent serve`` and checks, from the
store's own files, that every checkpoint the store gains reaches the page within the stated delay
(``--interval`` plus the time one look takes).
"""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from browser import browser, data, need_browser, open_page, problems, prop, settle
from report_fixtures import TOY_FIT_ID, TOY_NAME, make_toy_fit

pytest.importorskip("bokeh")


# --------------------------------------------------------------------------- helpers


class Served:
    """A ``latent serve`` subprocess on a free port; stopped with SIGTERM."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "latent", "serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"serving (http://\S+/)", line)
        assert m, f"no serving line: {line!r} {self.proc.stderr.read() if self.proc.poll() is not None else ''}"
        self.url = m.group(1)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url.rstrip("/") + path, timeout=20) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash (what "never writes" is checked against)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    import matplotlib

    matplotlib.use("Agg")
    from latent.reports.artifacts import load_fit
    from latent.reports.html import write_report

    store = tmp_path_factory.mktemp("serve")
    make_toy_fit(store)
    write_report(load_fit(store), report_command="latent report")
    return store


# --------------------------------------------------------------------------- files and bad input


def test_store_files_never_leave_the_store(toy_store, tmp_path):
    from latent.reports.serve import resolve_store_file

    inside = resolve_store_file(toy_store, f"{TOY_NAME}/reports/{TOY_FIT_ID}/index.html")
    assert inside == (toy_store / TOY_NAME / "reports" / TOY_FIT_ID / "index.html").resolve()
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    link = toy_store / "link.json"
    if not link.exists():
        link.symlink_to(secret)
    for rel in ["../secret.json", f"{TOY_NAME}/../../secret.json", str(secret), "link.json"]:
        with pytest.raises(PermissionError):
            resolve_store_file(toy_store, rel)
    with pytest.raises(PermissionError):  # inside the store, but not a kind of file that is served
        resolve_store_file(toy_store, f"{TOY_NAME}/runs/seed-000.parquet")
    with pytest.raises(FileNotFoundError):
        resolve_store_file(toy_store, f"{TOY_NAME}/nothing.html")
    link.unlink()


def test_index_files_and_refusals_over_http(toy_store):
    before = _tree(toy_store)
    s = Served("--store", str(toy_store))
    try:
        assert s.url.startswith("http://127.0.0.1:")
        status, body = s.get("/")
        page = body.decode()
        assert status == 200 and f"/store/{TOY_NAME}/reports/{TOY_FIT_ID}/index.html" in page
        assert f"'/live?study={TOY_NAME}'" in page
        status, body = s.get(f"/store/{TOY_NAME}/reports/{TOY_FIT_ID}/index.html")
        assert status == 200 and body == (toy_store / TOY_NAME / "reports" / TOY_FIT_ID / "index.html").read_bytes()
        for path in ["/store/%2e%2e/%2e%2e/etc/passwd", "/store/..%2f..%2fetc%2fpasswd",
                     f"/store/{TOY_NAME}/runs/seed-000.parquet"]:
            status, _ = s.get(path)
            assert status in (403, 404), path
        assert s.get(f"/store/{TOY_NAME}/nothing.html")[0] == 404
    finally:
        assert s.stop() == 0
    assert _tree(toy_store) == before  # read only


def test_bad_input_is_one_line(tmp_path, capsys):
    """Each refusal comes before anything listens: one line on stderr, exit 2 (in-process, as the
    command runs them; the subprocess tests above and below cover the real process)."""
    import socket

    from latent.cli import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    try:
        for args, needle in [(["--store", str(tmp_path / "none")], "is not a directory"),
                             (["--store", str(tmp_path), "--interval", "0"], "--interval"),
                             (["--store", str(tmp_path), "--port", "70000"], "--port"),
                             (["--store", str(tmp_path), "--fit", "nosuch"], "nosuch"),
                             (["--store", str(tmp_path), "--port", port], "pass another --port")]:
            capsys.readouterr()
            assert main(["serve", *args]) == 2, args
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and needle in err[0], (args, err)
    finally:
        taken.close()


# --------------------------------------------------------------------------- live data, without a browser


class GrowingStudy:
    """A stand-in for :class:`latent.store.Study` whose runs gain rows as the test says."""

    name = "growing"

    def __init__(self, table: pd.DataFrame):
        self.full, self.upto = table, {}

    def exists(self) -> bool:
        return True

    def read_finished_runs(self, allow_partial=False):
        from latent.store import RunStatus

        parts, statuses = [], {}
        for seed, g in self.full.groupby("seed"):
            n = self.upto.get(int(seed), 0)
            if n:
                parts.append(g.sort_values("step").head(n))
            statuses[int(seed)] = RunStatus(int(seed), "running" if n < len(g) else "done", rows=n)
        if not parts:
            from latent.errors import UserError

            raise UserError("no runs")
        return pd.concat(parts, ignore_index=True), statuses


def _planted_fit(toy_store: Path, tmp_path: Path) -> Path:
    """The toy fit with global scaling (mean 10, sd 2 for every feature), so that a run whose rows sit
    at a state's mean decodes to that state from its first checkpoint on."""
    import json
    import shutil

    fit_dir = tmp_path / TOY_NAME / "fits" / TOY_FIT_ID
    shutil.copytree(toy_store / TOY_NAME / "fits" / TOY_FIT_ID, fit_dir)
    shutil.copy(toy_store / TOY_NAME / "study.json", tmp_path / TOY_NAME / "study.json")
    model = json.loads((fit_dir / "model.json").read_text())
    d = len(model["features"])
    model["scaling"] = {"kind": "global", "mean": [10.0] * d, "std": [2.0] * d}
    (fit_dir / "model.json").write_text(json.dumps(model))
    return fit_dir


def test_live_study_warns_once_when_a_run_enters_a_detour(toy_store, tmp_path):
    """The toy fit's detour is state 2. A run planted at the state means, 0×8 → 1×6 → 2×10 (rows at
    10 + 2·mean_z in feature units), is fed a few rows at a time: no warning while it is in states 0
    and 1, one warning at the look where it enters 2, and not again; its decoded path is the plant."""
    import json

    from latent.predict import FittedMap
    from latent.reports.serve import LiveStudy

    fit_dir = _planted_fit(toy_store, tmp_path)
    fmap = FittedMap(fit_dir)
    assert fmap.detours == [2]
    model = json.loads((fit_dir / "model.json").read_text())
    means = np.asarray(model["means"])
    plant = [0] * 8 + [1] * 6 + [2] * 10
    rng = np.random.default_rng(0)
    rows = 10.0 + 2.0 * means[plant] + 0.01 * rng.standard_normal((len(plant), means.shape[1]))
    table = pd.DataFrame(rows, columns=model["features"]).assign(seed=5, step=10 * np.arange(len(plant)),
                                                                  val_acc=0.1)
    study = GrowingStudy(table)
    live = LiveStudy(study, fmap)
    for n in range(1, 15):
        study.upto[5] = n
        assert live.poll()
        assert live.warnings == [], n
        assert not live.poll()  # nothing new: nothing moves
    study.upto[5] = 17
    live.poll()
    assert len(live.warnings) == 1 and "run 5 entered detour state 2 at epoch 140" in live.warnings[0], live.warnings
    study.upto[5] = 24
    live.poll()
    assert len(live.warnings) == 1
    rows = live.rows()
    assert rows["run"] == [5] and rows["state"][0].startswith("2 (") and rows["state"][0].endswith("detour")
    assert rows["checkpoints"] == [24] and rows["step"] == ["230"]
    assert live.points()["state"].tolist() == plant


# --------------------------------------------------------------------------- in the browser


def test_index_and_report_pages_load_in_the_browser(toy_store):
    need_browser()
    s = Served("--store", str(toy_store))
    try:
        with browser() as b:
            page = b.new_page()
            seen = []
            page.on("console", lambda m: seen.append(m.text) if m.type == "error" else None)
            page.goto(s.url)
            page.click(f"text={TOY_FIT_ID}")
            page.wait_for_function("window.Bokeh && Bokeh.documents.length > 0")
            assert page.url.endswith(f"/store/{TOY_NAME}/reports/{TOY_FIT_ID}/index.html")
            settle(page)
            assert len(data(page, "latent-markers")["seed"]) == 6
            assert seen == []
            # a live page with no fit named uses the study's own latest fit: every run on its map
            page, seen = open_page(b, s.url + f"live?study={TOY_NAME}")
            assert f"on the map of fit {TOY_NAME}/{TOY_FIT_ID}" in prop(page, "live-header", "text")
            assert sorted(data(page, "latent-markers")["seed"]) == list(range(6))
            assert len(data(page, "live-rows")["run"]) == 6
            assert problems(page, seen) == []
    finally:
        s.stop()


@pytest.mark.slow
def test_live_page_grows_while_a_real_collect_runs(toy_store, tmp_path):
    """A real collect writes a study (save points every second); the live page, on the toy fit's map,
    must show every checkpoint the store gains within --interval (1 s) plus one look (2 s slack
    in all), and place each run on the map."""
    need_browser()
    store = tmp_path / "store"
    store.mkdir()
    interval = 1.0
    collect = subprocess.Popen([sys.executable, "-m", "latent", "collect", "--task", "modadd", "--seeds", "2",
                                "--epochs", "3000", "--log-every", "20", "--save-every", "1", "--store", str(store),
                                "--study", "live", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    fit_dir = toy_store / TOY_NAME / "fits" / TOY_FIT_ID
    s = Served("--store", str(store), "--interval", str(interval), "--fit", str(fit_dir))
    delays = []
    try:
        table = store / "live" / "runs" / "seed-000.parquet"
        deadline = time.monotonic() + 60
        while not table.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with browser() as b:
            page, seen = open_page(b, s.url + "live?study=live")

            def page_max() -> float:
                segs = data(page, "latent-segments")
                return max([x for x, sd in zip(segs["x1"], segs["seed"]) if sd == 0], default=-1.0)

            last = -1.0
            while collect.poll() is None and len(delays) < 6:
                try:
                    on_disk = float(pd.read_parquet(table)["step"].max())
                except Exception:  # caught mid-rename: look again
                    continue
                if on_disk <= last:
                    time.sleep(0.05)
                    continue
                t0 = time.monotonic()
                while page_max() < on_disk and time.monotonic() - t0 < 10:
                    time.sleep(0.05)
                delays.append(time.monotonic() - t0)
                assert page_max() >= on_disk, f"step {on_disk} not on the page after 10 s"
                last = on_disk
            assert len(delays) >= 3, f"the collection ended before three saves were seen ({delays})"
            assert max(delays) <= interval + 2.0, delays
            markers = data(page, "latent-markers")
            assert sorted(markers["seed"]) == [0, 1] and all(st in range(4) for st in markers["state"])
            assert "2 run(s) with checkpoints" in prop(page, "live-status", "text")
            # the table on the screen (not only its data) moves on with the rows: run 0's step. The
            # browser redraws the table's markup after it applies the new data, so it gets the same
            # bound as the curves (one look plus 2 s) rather than none
            def table_step() -> tuple[list[str], float]:
                cells = page.locator("table.live tr").nth(1).locator("td").all_inner_texts()
                return cells, float(cells[3].replace(",", "")) if len(cells) > 3 else -1.0

            t0 = time.monotonic()
            cells, shown = table_step()
            while shown < last and time.monotonic() - t0 < interval + 2.0:
                time.sleep(0.05)
                cells, shown = table_step()
            assert cells[0] == "0" and shown >= last, (cells, last)
            assert problems(page, seen) == []
    finally:
        collect.kill() if collect.poll() is None else None
        collect.wait(timeout=30)
        assert s.stop() == 0


def test_imported_names_holding_markup_stay_text_on_the_live_page(tmp_path):
    """An imported study whose column name is HTML: whatever name the store keeps for it (the importer
    makes it an identifier) is what the live page offers, as text, and no handler runs. (The report's
    test feeds the same widgets raw markup.)"""
    need_browser()
    from latent.cli import main

    evil = "<img src=x onerror=window.__pwned=1>"
    rng = np.random.default_rng(1)
    csv = tmp_path / "runs.csv"
    pd.DataFrame({"run": np.repeat([0, 1], 20), "step": np.tile(np.arange(20), 2),
                  evil: rng.standard_normal(40), "val_acc": np.tile(np.linspace(0, 1, 20), 2)}).to_csv(csv, index=False)
    store = tmp_path / "store"
    assert main(["import", "table", str(csv), "--run-col", "run", "--study", "marked", "--store", str(store),
                 "--convergence", "val_acc>0.9", "-q"]) == 0
    s = Served("--store", str(store), "--interval", "0.5")
    try:
        with browser() as b:
            page, seen = open_page(b, s.url + "live?study=marked")
            settle(page, 1200)
            options = page.locator("select").first.evaluate("s => [...s.options].map(o => o.textContent)")
            stored = [c for c in pd.read_parquet(next((store / "marked" / "runs").glob("*.parquet"))).columns
                      if "img" in c]
            assert len(stored) == 1 and stored[0] in options
            page.locator("select").first.select_option(stored[0])
            settle(page, 800)
            assert page.evaluate("window.__pwned") is None
            from test_report_interactive import DEEP_IMAGES

            assert page.evaluate(DEEP_IMAGES) == 0
            assert problems(page, seen) == []
            page.goto(s.url)
            assert page.evaluate("window.__pwned") is None and "marked" in page.inner_text("body")
    finally:
        s.stop()


def test_live_page_refuses_paths_and_waits_for_a_new_study(toy_store, tmp_path):
    need_browser()
    store = tmp_path / "store"
    store.mkdir()
    s = Served("--store", str(store), "--interval", "0.5")
    try:
        with browser() as b:
            for bad in ["..%2F" + TOY_NAME, "%2Fetc"]:
                page, seen = open_page(b, s.url + "live?study=" + bad)
                assert "invalid study name" in prop(page, "live-status", "text"), bad
                page.close()
            page, seen = open_page(b, s.url + "live?study=later")
            settle(page, 1200)
            assert "waiting for later to appear in the store" in prop(page, "live-status", "text")
            assert problems(page, seen) == []
    finally:
        s.stop()
    assert list(store.iterdir()) == []  # nothing written


def test_without_bokeh_serve_says_what_to_install(tmp_path, capsys, monkeypatch):
    from latent.cli import main

    monkeypatch.setitem(sys.modules, "bokeh", None)  # `import bokeh` now raises ImportError
    assert main(["serve", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'latent-dynamics[serve]'" in err[0], err
