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
from report_fixtures import TOY_FIT_ID, TOY_NAME, make_toy_fit

FIGURES = ["model_selection", "training_map", "trajectories", "occupancy", "regression", "state_profiles",
           "convergence"]


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
    page = (store / TOY_NAME / "reports" / TOY_FIT_ID / "index.html").read_text()
    # every figure inlined as a PNG data URI, identical to the PNG written beside it
    imgs = re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(imgs) == len(FIGURES) == page.count("<img")
    for data, f in zip(imgs, FIGURES):
        assert base64.b64decode(data) == (store / TOY_NAME / "reports" / TOY_FIT_ID / f"{f}.png").read_bytes()
    # nothing that could load from anywhere else: no scripts, no stylesheet links, no remote URLs
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*['"]?\s*(https?:|//)""", page, re.I)
    assert not re.search(r"url\(", page, re.I)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    # the summary: task, preset, seeds, features, K and criterion, detours, R² and p, median, commands
    for needle in ["modadd / default", "6 decoded: 0–5", "l1, l2, spectral, var_w", "K = 4, chosen by BIC",
                   "state 2 (coef 130", "R² = 0.93, p = 0.00042", "median 170 epochs over 5 converged runs",
                   "1 never converged", "latent collect --task modadd --seeds 6 --name toy",
                   "latent fit --study toy --max-states 5", "latent report --store"]:
        assert needle in page, needle
    # the table in original units lists every state
    assert page.count("<tr><th><span class=sw") == 4
    # the transitions table under the map: one row per observed edge
    assert page.count("<tr><td><span class=sw") == 4 and "<h3>Transitions</h3>" in page


def test_choose_fit_and_study(store):
    from reports.artifacts import load_fit

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
        (lambda d: _drop_key(d / "analysis.json", "regression"), ["analysis.json", "missing regression"]),
        (lambda d: _drop_key(d / "model.json", "means"), ["model.json", "missing means"]),
        (lambda d: _set_key(d / "model.json", "n_states", 7), ["model.json", "n_states=7"]),
        (lambda d: _set_key(d / "analysis.json", "map", {"nodes": [{"x": 1}], "edges": [{"a": 0}]}),
         ["analysis.json", "map"]),
        (lambda d: (d.parent.parent / "runs" / "seed-003.parquet").unlink(), ["seed-003.parquet", "not found"]),
    ],
    ids=["model-truncated", "analysis-missing", "analysis-not-object", "paths-missing", "paths-corrupt",
         "analysis-key", "model-key", "model-shape", "map-corrupt", "run-missing"],
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

    import reports.html

    real = reports.html.render_figures

    def boom(*a, **k):  # fails after the temp directory exists, before anything is renamed
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(reports.html, "render_figures", boom)
    with pytest.raises(RuntimeError):
        main(["report", "--store", str(store)])
    assert {p.name: p.read_bytes() for p in report_dir.iterdir()} == before
    assert [p.name for p in report_dir.parent.iterdir()] == [TOY_FIT_ID]  # temp dir cleaned up

    monkeypatch.setattr(reports.html, "render_figures", real)
    (report_dir / "index.html").write_text("old")
    rc, _ = _report(store, capsys=capsys)
    assert rc == 0 and (report_dir / "index.html").read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in report_dir.parent.iterdir()] == [TOY_FIT_ID]


@pytest.fixture()
def fake_write(monkeypatch):
    """Replace the (slow) rendering with a recorder, for tests of the command's own logic."""
    import reports.html

    calls = []

    def fake(fit, out_dir=None, report_command=None, metrics=None):
        calls.append({"fit": fit.fit_id, "metrics": metrics, "command": report_command})
        return fit.report_dir / "index.html"

    monkeypatch.setattr(reports.html, "write_report", fake)
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
    """40 runs × 1,000 checkpoints, the whole command in a fresh process (imports included)."""
    import time

    from report_fixtures import make_big_fit

    make_big_fit(tmp_path)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "latent", "report", "--store", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    assert elapsed <= 15.0, f"report took {elapsed:.1f} s"
