"""``latent report`` end to end on the hand-made toy fit: files written, self-contained page,
bad input -> one line and exit 2, a failed report never damages the store, no torch import."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from latent.cli import main
from report_fixtures import (
    TOY_FIT_ID,
    TOY_NAME,
    TOY_OLD_FIT_ID,
    TOY_WARNINGS,
    make_old_toy_fit,
    make_rare_fit,
    make_toy_fit,
)

FIGURES = ["model_selection", "training_map", "trajectories", "occupancy", "detours", "state_profiles",
           "convergence", "forecasts"]


@pytest.fixture()
def store(tmp_path):
    make_toy_fit(tmp_path)
    return tmp_path


def _report(store, *extra, capsys=None):
    rc = main(["report", "--store", str(store), *extra])
    out = capsys.readouterr() if capsys is not None else None
    return rc, out


def _one_line_error(capsys_out, *needles):
    err = capsys_out.err.strip()
    assert "\n" not in err, err
    assert err.startswith("latent report: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The toy fit rendered once, by the CLI in a fresh process (which must not import torch)."""
    store = tmp_path_factory.mktemp("rendered")
    make_toy_fit(store)
    code = ("import sys; from latent.cli import main; rc = main(['report', '--store', sys.argv[1]]); "
            "print('torch imported:', 'torch' in sys.modules); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return store, res.stdout.strip().splitlines()


def test_static_page_has_no_script(tmp_path):
    """``--static`` writes the page as it was before the interactive view: no script anywhere, and a
    policy that forbids scripts."""
    make_toy_fit(tmp_path)
    from latent.cli import main

    assert main(["report", "--store", str(tmp_path), "--static", "--quiet"]) == 0
    page = (tmp_path / TOY_NAME / "reports" / TOY_FIT_ID / "index.html").read_text()
    assert "<script" not in page.lower() and "script-src" not in page and "id='explore'" not in page
    assert page.count("<img") == len(FIGURES)


def test_report_does_not_import_torch(rendered):
    _, lines = rendered
    assert lines[-1] == "torch imported: False"


def test_report_writes_page_and_figures(rendered):
    store, lines = rendered
    report_dir = store / TOY_NAME / "reports" / TOY_FIT_ID
    assert lines[0] == str(report_dir / "index.html")  # the path is printed
    names = sorted(p.name for p in report_dir.iterdir())
    assert names == sorted(["index.html"] + [f"{f}.{ext}" for f in FIGURES for ext in ("png", "svg")])
    for f in FIGURES:
        assert (report_dir / f"{f}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (report_dir / f"{f}.svg").read_bytes()[:2000]
    # no temp directories left behind
    assert [p.name for p in (store / TOY_NAME / "reports").iterdir()] == [TOY_FIT_ID]


def test_page_is_self_contained_and_has_the_summary(rendered):
    store, _ = rendered
    whole = (store / TOY_NAME / "reports" / TOY_FIT_ID / "index.html").read_text()
    # the interactive view's scripts are all inline (BokehJS and the view's data); the markup around them
    # is what the rest of this test reads
    scripts = re.findall(r"<script\b([^>]*)>", whole, re.I)
    assert scripts and not any("src" in attrs.lower() for attrs in scripts)
    page = re.sub(r"<script\b.*?</script>", "", whole, flags=re.S | re.I)
    # every figure inlined as a PNG data URI, identical to the PNG written beside it
    imgs = re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(imgs) == len(FIGURES) == page.count("<img")
    for data, f in zip(imgs, FIGURES):
        assert base64.b64decode(data) == (store / TOY_NAME / "reports" / TOY_FIT_ID / f"{f}.png").read_bytes()
    # nothing that could load from anywhere else: no stylesheet links, no remote URLs, and a policy that
    # lets inline scripts run but forbids every fetch (default-src 'none' covers connect-src)
    assert "<link" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*['"]?\s*(https?:|//)""", page, re.I)
    assert not re.search(r"url\(", page, re.I)
    assert "Content-Security-Policy" in page
    assert "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval';" in page and "connect-src" not in page
    # the summary: task, preset, seeds, features, K with procedure and fold agreement, detours with delay,
    # CI, adjusted p and stability, the detour rule, R² and p, median, commands
    for needle in ["modadd / default", "6 decoded: 0–5", "l1, l2, spectral, var_w",
                   "K = 4, chosen by 3-fold CV BIC (the smallest K within one standard error of the best); "
                   "2 of 3 folds choose K = 4 on their own held-out runs; runner-up K = 3; not fragile",
                   "state 2: delay +123.3 epochs (95 % CI -103.9 to +350.5), adjusted p = 0.05; significant; "
                   "3 runs visit it, 3 skip it; found in 15/19 resamples; detour in 14/19",
                   "<th>Detour rule</th><td>delay: runs visiting the state converge later",
                   "adjusted over the tested states by Westfall–Young maxT: p &lt; 0.1); a state is tested only when at least 3 runs visit it",
                   "19 of 20 bootstrap resamples", "state 3: 8/19",
                   "R² = 0.93, p = 0.00042", "median 170 epochs over 5 converged runs",
                   "1 never converged", "latent collect --task modadd --seeds 6 --name toy",
                   "latent fit --study toy --max-states 5", "latent report --store"]:
        assert needle in page, needle
    # the table in original units: one column per state, one row per feature (narrow whatever d is)
    table = page[page.index("<table class='num profile'>"):]
    table = table[:table.index("</table>")]
    assert table.count("<th><span class=sw") == 4
    assert re.findall(r"data-feature='([^']+)'", table) == ["l1", "l2", "spectral", "var_w"]
    # the transitions table under the map: one row per observed edge
    assert page.count("<tr><td><span class=sw") == 4 and "<h3>Transitions</h3>" in page


def _page(store, fit_id=TOY_FIT_ID, study=TOY_NAME) -> str:
    """The page's markup, its inline scripts (BokehJS and the interactive view's data) left out."""
    page = (store / study / "reports" / fit_id / "index.html").read_text()
    return re.sub(r"<script\b.*?</script>", "", page, flags=re.S | re.I)


def _cells(page: str, state: int) -> list[str]:
    """The cells of one row of the per-state table, tags stripped."""
    m = re.search(rf"<tr class='state-row[^']*' data-state='{state}'>(.*?)</tr>", page)
    assert m, f"no per-state row for state {state}"
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", m.group(1))]


def test_per_state_table(rendered):
    store, _ = rendered
    page = _page(store)
    assert "<h3 id='state-tests'>Per-state tests</h3>" in page
    assert page.count("<tr class='state-row") == 4
    # state, visiting, skipping, status, delay [CI], adjusted p, detour, paper rule, coef [interval], stability
    assert _cells(page, 2) == ["state 2 ★", "3", "3", "tested", "+123.3 [-103.9, +350.5]", "0.05", "yes ★", "yes",
                               "+130 [+90, +170]", "found in 15/19 resamples; detour in 14/19"]
    assert _cells(page, 0) == ["state 0", "6", "0", "obligatory (all 6 runs visit it)", "–", "–", "no", "no",
                               "-40 [-60, -20]", "found in 19/19 resamples"]
    s3 = _cells(page, 3)
    assert s3[3] == "not estimable (&lt; 3 runs)" and s3[4].startswith("not estimable (&lt; 3 runs)")
    assert s3[5] == "–" and s3[6] == "no" and s3[9] == "found in 8/19 resamples"
    # the selection table under the model-selection figure: every K, the chosen one marked, its SE
    rows = re.findall(r"<tr class='sel-row' data-k='(\d+)'>(.*?)</tr>", page)
    assert [int(k) for k, _ in rows] == [1, 2, 3, 4, 5]
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", rows[3][1])]
    assert cells[0] == "4 ★ chosen" and cells[2] == "1000" and cells[3] == "0" and cells[-1] == "2"
    assert "3-fold CV BIC (score)" in page


def test_warnings_section_near_the_top(rendered):
    store, _ = rendered
    page = _page(store)
    # after the title and navigation, before the summary and every figure
    assert page.index("</nav>") < page.index("<section id='warnings'") < page.index("<h2 id='summary'>")
    assert page.index("<h2 id='summary'>") < page.index("<section id='model_selection'>")
    section = page[page.index("<section id='warnings'"):page.index("</section>")]
    items = re.findall(r"<li>(.*?)</li>", section)
    assert len(items) == len(TOY_WARNINGS) == 3
    import html

    assert [html.unescape(i) for i in items] == TOY_WARNINGS  # every warning, in order, escaped
    assert "&lt;diag&gt;" in section and "<diag>" not in page
    assert "<a href='#warnings'>Warnings (3)</a>" in page


def test_no_warnings_section_when_there_are_none(store):
    from latent.reports.artifacts import load_fit
    from latent.reports.html import page_html

    _set_key(store / TOY_NAME / "fits" / TOY_FIT_ID / "analysis.json", "warnings", [])
    page = page_html(load_fit(store), [], None)
    assert "id='warnings'" not in page and "Warnings" not in page
    assert "Per-state tests" in page  # the rest of the page is still there


def test_not_estimable_state_reads_as_such(tmp_path):
    from latent.reports.artifacts import load_fit
    from latent.reports.html import page_html

    make_rare_fit(tmp_path)
    page = page_html(load_fit(tmp_path, "rare"), [], None)
    cells = _cells(page, 2)
    assert cells[3] == "not estimable (&lt; 3 runs)"
    assert cells[4] == "not estimable (&lt; 3 runs) (observed +65, untested)"
    assert cells[5] == "–" and cells[6] == "no" and "★" not in cells[0]
    assert cells[8] == "none"  # no regression coefficient either
    # no detour, and the page says why: the only optional state is visited by too few runs to test
    assert ("<th>Detour states</th><td>none: the optional states (2) are visited or skipped by fewer than 3 runs, "
            "too few to test whether they delay convergence <span class=dim>(what a detour is") in page
    assert "significant" not in page.split("<h2 id='summary'>")[1].split("</table>")[0]
    assert "observed delay +65" in page  # the fit's warning says why


def test_report_says_what_to_run_next_on_stderr(tmp_path, capsys):
    make_old_toy_fit(tmp_path)
    rc, out = _report(tmp_path, "--fit", TOY_OLD_FIT_ID, capsys=capsys)
    assert rc == 0
    assert out.out.strip().endswith("index.html") and len(out.out.strip().splitlines()) == 1
    assert f"next: latent predict --store {tmp_path} --fit {TOY_NAME}/{TOY_OLD_FIT_ID} RUN" in out.err


def test_old_format_fit_renders(tmp_path, capsys):
    """A fit written before per-state delay tests renders, with the old summary and no new sections."""
    make_old_toy_fit(tmp_path)
    rc, out = _report(tmp_path, "--fit", TOY_OLD_FIT_ID, capsys=capsys)
    assert rc == 0, out.err
    page = _page(tmp_path, TOY_OLD_FIT_ID)
    assert "state 2 (coef 130, interval 90 to 170, significant" in page
    assert "K = 4, chosen by BIC" in page
    assert "id='warnings'" not in page and "<th>Detour rule</th>" not in page and "<th>Stability</th>" not in page
    assert "This fit predates per-state delay tests" in page
    assert "<tr class='state-row" not in page
    assert page.count("<img") == len(FIGURES)


def test_choose_fit_and_study(store):
    from latent.reports.artifacts import load_fit

    # a second, newer fit becomes the default; --fit picks the older one explicitly
    src = store / TOY_NAME / "fits" / TOY_FIT_ID
    dst = store / TOY_NAME / "fits" / "k4-newer"
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    os.utime(dst / "model.json", (2e9, 2e9))
    assert load_fit(store, TOY_NAME).fit_id == "k4-newer"
    assert load_fit(store, None, TOY_FIT_ID).fit_id == TOY_FIT_ID
    assert load_fit(store, str(store / TOY_NAME), "k4-newer").report_dir == store / TOY_NAME / "reports" / "k4-newer"


# --------------------------------------------------------------------------- bad input


def test_no_fit_in_study(store, capsys):
    import shutil

    shutil.rmtree(store / TOY_NAME / "fits")
    rc, out = _report(store, capsys=capsys)
    assert rc == 2
    _one_line_error(out, "has no fit yet", "latent fit")


def test_unknown_fit_and_study(store, capsys):
    rc, out = _report(store, "--fit", "nope", capsys=capsys)
    assert rc == 2
    _one_line_error(out, "fit 'nope' not found", TOY_FIT_ID)
    rc, out = _report(store, "--study", "nope", capsys=capsys)
    assert rc == 2
    _one_line_error(out, "study 'nope' not found")
    rc, out = _report(store, "--fit", "../x", capsys=capsys)
    assert rc == 2
    _one_line_error(out, "invalid fit id")


def test_no_study_at_all(tmp_path, capsys):
    rc, out = _report(tmp_path, capsys=capsys)
    assert rc == 2
    _one_line_error(out, "no study in store")


@pytest.mark.parametrize(
    "damage, needles",
    [
        (lambda d: (d / "model.json").write_text('{"n_states": 4, '), ["model.json", "corrupt"]),
        (lambda d: (d / "analysis.json").unlink(), ["analysis.json", "not found"]),
        (lambda d: (d / "analysis.json").write_text("[]"), ["analysis.json", "corrupt"]),
        (lambda d: (d / "paths.parquet").unlink(), ["paths.parquet", "not found"]),
        (lambda d: (d / "paths.parquet").write_bytes(b"PAR1 garbage"), ["paths.parquet", "corrupt"]),
        (lambda d: _drop_key(d / "analysis.json", "regression"), ["analysis.json", "'regression' is missing"]),
        (lambda d: _drop_key(d / "model.json", "means"), ["model.json", "'means' is missing"]),
        (lambda d: _set_key(d / "model.json", "n_states", 7), ["model.json", "n_states=7"]),
        (lambda d: _set_key(d / "analysis.json", "map", {"nodes": [{"x": 1}], "edges": [{"a": 0}]}),
         ["analysis.json", "map"]),
        (lambda d: (d.parent.parent / "runs" / "seed-003.parquet").unlink(), ["seed-003.parquet", "not found"]),
        (lambda d: _set_key(d / "analysis.json", "states", [{"state": 0}]), ["analysis.json", "lists states [0], model.json has 4"]),
        (lambda d: _set_key(d / "analysis.json", "states", [{"state": k, "status": "maybe"} for k in range(4)]),
         ["analysis.json", "'states[0].status' must be", "(got 'maybe')"]),
        (lambda d: _set_key(d / "analysis.json", "warnings", "oops"), ["analysis.json", "'warnings' must be a list (got 'oops')"]),
    ],
    ids=["model-truncated", "analysis-missing", "analysis-not-object", "paths-missing", "paths-corrupt",
         "analysis-key", "model-key", "model-shape", "map-corrupt", "run-missing", "states-short",
         "states-status", "warnings-type"],
)
def test_missing_or_corrupt_fit_files(store, capsys, damage, needles):
    fit_dir = store / TOY_NAME / "fits" / TOY_FIT_ID
    damage(fit_dir)
    rc, out = _report(store, capsys=capsys)
    assert rc == 2
    _one_line_error(out, *needles)
    assert not (store / TOY_NAME / "reports").exists() or not any((store / TOY_NAME / "reports").iterdir())


def _drop_key(path: Path, key: str) -> None:
    obj = json.loads(path.read_text())
    del obj[key]
    path.write_text(json.dumps(obj))


def _set_key(path: Path, key: str, value) -> None:
    obj = json.loads(path.read_text())
    obj[key] = value
    path.write_text(json.dumps(obj))


def test_failed_render_keeps_the_old_report_and_rerun_replaces_it(store, capsys, monkeypatch):
    rc, _ = _report(store, capsys=capsys)
    assert rc == 0
    report_dir = store / TOY_NAME / "reports" / TOY_FIT_ID
    before = {p.name: p.read_bytes() for p in report_dir.iterdir()}

    import latent.reports.html

    real = latent.reports.html.render_figures

    def boom(*a, **k):  # fails after the temp directory exists, before anything is renamed
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(latent.reports.html, "render_figures", boom)
    with pytest.raises(RuntimeError):
        main(["report", "--store", str(store)])
    assert {p.name: p.read_bytes() for p in report_dir.iterdir()} == before
    assert [p.name for p in report_dir.parent.iterdir()] == [TOY_FIT_ID]  # temp dir cleaned up

    monkeypatch.setattr(latent.reports.html, "render_figures", real)
    (report_dir / "index.html").write_text("old")
    rc, _ = _report(store, capsys=capsys)
    assert rc == 0 and (report_dir / "index.html").read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in report_dir.parent.iterdir()] == [TOY_FIT_ID]


@pytest.fixture()
def fake_write(monkeypatch):
    """Replace the (slow) rendering with a recorder, for tests of the command's own logic."""
    import latent.reports.html

    calls = []

    def fake(fit, out_dir=None, report_command=None, metrics=None, interactive=True):
        calls.append({"fit": fit.fit_id, "metrics": metrics, "command": report_command, "interactive": interactive})
        return fit.report_dir / "index.html"

    monkeypatch.setattr(latent.reports.html, "write_report", fake)
    return calls


def test_metrics_flag(store, capsys, fake_write):
    rc, _ = _report(store, "--metrics", "val_loss, l1", capsys=capsys)
    assert rc == 0 and fake_write[-1]["metrics"] == ("val_loss", "l1")
    assert "--metrics" in fake_write[-1]["command"]
    rc, out = _report(store, "--metrics", "val_loss,bogus", capsys=capsys)
    assert rc == 2
    _one_line_error(out, "bogus")


def test_open_uses_the_default_browser(store, capsys, monkeypatch, fake_write):
    import webbrowser

    opened = []

    class Fake:
        def open(self, url):
            opened.append(url)
            return True

    monkeypatch.setattr(webbrowser, "get", lambda *a: Fake())
    rc, out = _report(store, "--open", capsys=capsys)
    assert rc == 0
    assert opened == [Path(out.out.strip()).resolve().as_uri()]

    def none(*a):
        raise webbrowser.Error("could not locate runnable browser")

    monkeypatch.setattr(webbrowser, "get", none)
    rc, out = _report(store, "--open", capsys=capsys)
    assert rc == 0 and "no browser found" in out.err


@pytest.mark.slow
def test_big_fit_renders_within_15_seconds(tmp_path):
    """40 runs × 1,000 checkpoints, the whole command in a fresh process (imports included).

    The budget is the command's CPU time on one thread (user + system, of the child process), which
    on an idle machine is its wall time: the suite runs two tests at once on two cores, and a wall
    clock would time the neighbour too. Even CPU time grows by 30-40 % when the neighbour shares
    the caches (12-13 s alone, up to 16.8 s beside another test on this project's 2-core machine), so
    an over-budget render is timed once more and the faster of the two counts (interference adds
    time; the second run also finds the files in the page cache, a small bias in its favour).
    bench/bench_report.py times the wall clock on its own."""
    import os
    import resource
    import time

    from report_fixtures import make_big_fit

    make_big_fit(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    timings = []
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "latent", "report", "--store", str(tmp_path)],
                             capture_output=True, text=True, timeout=120, env=env)
        elapsed = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert res.returncode == 0, res.stderr
        timings.append(((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), elapsed))
        if timings[-1][0] <= 15.0:
            break
    cpu, elapsed = min(timings)
    assert cpu <= 15.0, "report took " + ", then ".join(f"{c:.1f} s of CPU ({w:.1f} s wall)" for c, w in timings)


# --------------------------------------------------------------------------- what each state means, detours explained


def _phase_cells(page: str, state: int) -> list[str]:
    m = re.search(rf"<tr class='phase-row' data-state='{state}'>(.*?)</tr>", page)
    assert m, f"no phase row for state {state}"
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", m.group(1))]


def _nearest_rank(values, q):
    s = sorted(values)
    return next(x for x in s if sum(y <= x for y in s) >= q / 100 * len(s))


def test_phase_table_recomputed_by_hand(store):
    """The toy fit predates the phases block: the page computes it from the saved paths; every
    cell is checked against the fixture's segments and run tables."""
    import pandas as pd

    from latent.reports.artifacts import load_fit
    from latent.reports.html import RenderedFigure, page_html
    from report_fixtures import TOY_FIRST_N, TOY_SEGMENTS, TOY_STEP_EVERY

    fit = load_fit(store)
    blank = RenderedFigure("training_map", "Training map", "", b"\x89PNG\r\n\x1a\n" + b"\0" * 24, b"", {})
    page = page_html(fit, [blank], None)  # the phases table hangs under the training map
    assert "<h3 id='phases'>What each state means</h3>" in page and "predates the phases block" in page
    runs = {s: pd.read_parquet(store / TOY_NAME / "runs" / f"seed-{s:03d}.parquet").head(TOY_FIRST_N)
            for s in TOY_SEGMENTS}
    seq = {s: [st for st, n in segs for _ in range(n)] for s, segs in TOY_SEGMENTS.items()}
    for k in range(4):
        steps = [t * TOY_STEP_EVERY for s in seq for t, st in enumerate(seq[s]) if st == k]
        cells = _phase_cells(page, k)
        assert cells[1] == str(sum(k in seq[s] for s in seq))  # runs visiting
        assert cells[3] == f"{_nearest_rank(steps, 10)}–{_nearest_rank(steps, 90)}"
        assert cells[4] == f"{min(steps)}–{max(steps)}"
        for i, col in enumerate(["train_loss", "val_loss", "train_acc", "val_acc"]):
            vals = [runs[s][col].iloc[t] for s in seq for t, st in enumerate(seq[s]) if st == k]
            mean = sum(vals) / len(vals)
            assert cells[5 + i] == (f"{mean:.2f}" if col.endswith("acc") else f"{mean:.3g}"), (k, col)
    # state 0 is where every run starts: never entered; state 2 is entered from 1 by seeds 3, 4, 5
    # (columns end: entering it, moving in it, entered from)
    assert _phase_cells(page, 0)[-1] == "– (runs start in it)" and _phase_cells(page, 0)[-3] == "–"
    assert _phase_cells(page, 2)[-1] == "1 (3)"
    # the summary row says it in one line per state, e.g. "state 1: ..., val_acc 0.05; epochs 80–140 ..."
    summary = page[page.index("<th>What each state means</th>"):]
    summary = summary[:summary.index("</tr>")]
    assert re.search(r"state 3: train_loss [\d.]+, val_loss [\d.]+, train_acc 1\.00, val_acc 0\.97; epochs", summary)


def test_saved_phases_block_is_what_the_page_shows(store):
    from latent.reports.artifacts import load_fit
    from latent.reports.html import summary_rows

    path = store / TOY_NAME / "fits" / TOY_FIT_ID / "analysis.json"
    rows = [{"state": k, "checkpoints": 10, "runs": 6, "metrics": {"val_acc": 0.123 + k},
             "steps": {"min": 0.0, "p10": 240.0, "median": 500.0, "p90": 920.0, "max": 1000.0}, "entries": 0,
             "entered_from": {}, "entry_change": []} for k in range(4)]
    _set_key(path, "phases", {"metrics": ["val_acc"], "window": 5, "percentiles": [10, 90], "states": rows})
    fit = load_fit(store)
    assert fit.phases["computed"] is False and fit.phases["states"][1]["metrics"]["val_acc"] == 1.123
    row = dict(summary_rows(fit, None))["What each state means"]
    assert "state 1: val_acc 1.12; epochs 240–920 (min–max 0–1000)" in row
    # a phases block that does not list every state is a corrupt fit
    _set_key(path, "phases", {"states": rows[:2]})
    with pytest.raises(Exception, match="phases list states"):
        load_fit(store)


def test_detour_is_defined_and_none_is_explained(tmp_path):
    from report_fixtures import make_fit_study
    from latent.reports.artifacts import load_fit
    from latent.reports.html import DETOUR_DEFINITION, page_html

    make_toy_fit(tmp_path)
    page = page_html(load_fit(tmp_path), [], None)
    assert DETOUR_DEFINITION[:60] in page  # defined on the page (under Detours once it is rendered)
    # every run visits every state: nothing is optional, so nothing can be a detour, and the page says so
    segs = {s: [(0, 5 + s), (1, 10 - s), (2, 5)] for s in range(4)}
    make_fit_study(tmp_path, "lin", segs, n_states=3, n_steps=20, first_n=20, features=["l1", "l2"],
                   coef=[1.0, 2.0, 3.0], ci_half=[0.5, 0.5, 0.5], converged_state=2)
    page = page_html(load_fit(tmp_path, "lin"), [], None)
    assert ("<th>Detour states</th><td>none: every run (4) visits every state, so no state is optional, and a "
            "detour is a state that some runs skip") in page
    # a tested state that is not significant: the page names it with its delay and adjusted p
    path = tmp_path / TOY_NAME / "fits" / TOY_FIT_ID / "analysis.json"
    obj = json.loads(path.read_text())
    obj["detours"] = []
    obj["states"][2].update(detour=False, p_adjusted=0.3)
    path.write_text(json.dumps(obj))
    import html

    page = html.unescape(page_html(load_fit(tmp_path, TOY_NAME), [], None))
    assert ("none: no tested state's visitors converge significantly later than the runs that skip it "
            "(adjusted p < 0.1 needed): state 2: delay +123.3 epochs, adjusted p = 0.3") in page


def test_coefficients_crossing_zero_and_equal_length_runs(store):
    import pandas as pd

    from latent.reports.artifacts import load_fit
    from latent.reports.html import page_html

    page = page_html(load_fit(store), [], None)
    # TOY_COEF ± TOY_CI_HALF: state 1 is +15 [-15, +45], the only interval containing 0
    assert _cells(page, 1)[8] == "+15 [-15, +45] (crosses 0)"
    assert _cells(page, 0)[8] == "-40 [-60, -20]" and "crosses" not in _cells(page, 2)[8]
    # all six runs have 30 decoded checkpoints and five of six end in state 3: its coefficient is
    # negative by construction, which the page marks and explains
    assert _cells(page, 3)[8] == "-25 [-45, -5] ‡"
    note = re.search(r"<p class='note equal-length'>(.*?)</p>", page).group(1)
    assert "same number of decoded checkpoints (30)" in note and "reaching state 3, where 83% of runs end" in note
    assert "(here -25 epochs)" in note
    # runs of unequal length: no such note, no mark
    paths_file = store / TOY_NAME / "fits" / TOY_FIT_ID / "paths.parquet"
    paths = pd.read_parquet(paths_file)
    paths.drop(paths.index[(paths["seed"] == 0) & (paths["step"] >= 270)]).to_parquet(paths_file, index=False)
    page = page_html(load_fit(store), [], None)
    assert "equal-length" not in page and "‡" not in _cells(page, 3)[8]
