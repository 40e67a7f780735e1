"""The report's weight views (studies collected with ``--snapshots N``): the static figure of a few runs'
token embeddings on their top principal components and on their key frequency's Fourier circle, and the
interactive panel that follows the picked run and the step slider.

Expectations are computed independently of reports/figures.py: principal components by scikit-learn,
Fourier coefficients by numpy's FFT, the snapshots read straight from the ``.npz`` files, convergence
order and decoded states from the fit's own tables. A planted embedding (tokens on a known circle)
must come out on that circle, in order, with its frequency recovered. A real tiny study is collected
with snapshots, fitted and reported; in Chromium (tests/browser.py) the panel must show, at every
slider step tried, the snapshot Python says. A damaged snapshot file costs the weight views and one
line on stderr, never the page.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latent.reports import figures as F

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

P = 31  # the tiny study's modulus
# memorises and generalises within 600 epochs (5 of 6 seeds reach val_acc 0.9), 61 checkpoints, 9 snapshots
OVERRIDES = ["p=31", "d_embed=16", "d_hidden=64", "log_every=10", "epochs=600", "lr=1e-2", "train_frac=0.6"]
SNAPSHOT_STEPS = [0, 80, 150, 230, 300, 380, 450, 530, 600]


# --------------------------------------------------------------------------- independent computations


def sk_pcs(embed: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_components=2, svd_solver="full").fit_transform(np.asarray(embed, dtype=np.float64))


def fft_energy(embed: np.ndarray) -> np.ndarray:
    """Energy of k = 1..(p-1)//2 from numpy's DFT over the tokens: 2 |F_k|² / p, summed over the width."""
    p = embed.shape[0]
    dft = np.fft.fft(np.asarray(embed, dtype=np.float64), axis=0)
    return 2.0 * (np.abs(dft[1:(p - 1) // 2 + 1]) ** 2).sum(axis=1) / p


def fft_circle(embed: np.ndarray, k: int) -> np.ndarray:
    """Centred tokens projected on the unit directions of Re F_k and -Im F_k (F the DFT over tokens)."""
    x = np.asarray(embed, dtype=np.float64)
    x = x - x.mean(axis=0)
    fk = np.fft.fft(x, axis=0)[k]
    return np.column_stack([x @ (fk.real / np.linalg.norm(fk.real)), x @ (-fk.imag / np.linalg.norm(fk.imag))])


def same_up_to_sign(a: np.ndarray, b: np.ndarray, **tol) -> bool:
    return all(np.allclose(a[:, j], b[:, j], **tol) or np.allclose(a[:, j], -b[:, j], **tol) for j in range(a.shape[1]))


def planted(p=P, k=7, r=2.0, phase=0.9, width=12, k2=3, r2=0.6, noise=0.01, seed=0):
    """Tokens on the circle of frequency k (radius r, phase), a weaker circle of k2 in other directions,
    a constant offset and a little noise, rotated into ``width`` dimensions."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(width, width)))
    a = np.arange(p)
    t, t2 = 2 * np.pi * k * a / p + phase, 2 * np.pi * k2 * a / p
    coords = np.zeros((p, width))
    coords[:, 0], coords[:, 1] = r * np.cos(t), r * np.sin(t)
    coords[:, 2], coords[:, 3] = r2 * np.cos(t2), r2 * np.sin(t2)
    coords[:, 4:] = noise * rng.normal(size=(p, width - 4))
    return coords @ basis.T + rng.normal(size=width)


# --------------------------------------------------------------------------- the coordinates


def test_principal_components_are_sklearns_up_to_sign():
    rng = np.random.default_rng(3)
    for width in (2, 5, 16):
        embed = rng.normal(size=(P, width)) * np.linspace(3, 0.5, width) + 4.0
        ours, theirs = F.embedding_pcs(embed), sk_pcs(embed)
        assert ours.shape == (P, 2)
        assert same_up_to_sign(ours, theirs, atol=1e-9)
        for j in range(2):  # the sign rule: each component's largest coordinate is positive
            assert ours[np.argmax(np.abs(ours[:, j])), j] > 0
    # an embedding of one direction has no second component
    line = np.outer(np.arange(P) - 15.0, [1.0, 2.0, 0.5])
    got = F.embedding_pcs(line)
    assert np.allclose(got[:, 1], 0) and same_up_to_sign(got[:, :1], sk_pcs(line)[:, :1], atol=1e-9)


def test_fourier_energy_and_circle_are_the_dfts():
    rng = np.random.default_rng(4)
    for p in (31, 17, 12):
        embed = rng.normal(size=(p, 9)) + 2.0
        assert F.frequency_energy(embed) == pytest.approx(fft_energy(embed - embed.mean(0)), rel=1e-9)
        assert F.key_frequency(embed) == int(np.argmax(fft_energy(embed))) + 1
        for k in (1, 3, (p - 1) // 2):
            assert F.fourier_circle(embed, k) == pytest.approx(fft_circle(embed, k), abs=1e-9)


def test_a_planted_circle_comes_out_on_its_circle_in_token_order():
    for k, phase in ((7, 0.9), (1, -2.0), (12, 0.0)):
        embed = planted(k=k, phase=phase)
        assert F.key_frequency(embed) == k
        xy = F.fourier_circle(embed, k)
        radius = np.hypot(xy[:, 0], xy[:, 1])
        assert radius == pytest.approx(np.full(P, 2.0), rel=0.03)
        angle = np.arctan2(xy[:, 1], xy[:, 0])
        want = 2 * np.pi * k * np.arange(P) / P
        off = np.angle(np.exp(1j * (angle - want)))  # wrapped to (-pi, pi]
        assert np.abs(off).max() < 0.03, (k, off)
        # going round the circle meets the tokens in the order circle_order gives
        assert (np.argsort(np.mod(angle - angle[0], 2 * np.pi)) == F.circle_order(P, k)).all()
        # the weaker circle sits on its own frequency with its own radius
        weak = np.hypot(*F.fourier_circle(embed, 3).T)
        assert weak == pytest.approx(np.full(P, 0.6), rel=0.05)
        # its top two principal components are the key circle too (radius r, up to rotation)
        assert np.hypot(*F.embedding_pcs(embed).T) == pytest.approx(np.full(P, 2.0), rel=0.03)


def test_unplanted_noise_is_no_circle():
    """The check above can fail: a random embedding's key-frequency projection is far from a circle."""
    embed = np.random.default_rng(9).normal(size=(P, 12))
    radius = np.hypot(*F.fourier_circle(embed, F.key_frequency(embed)).T)
    assert radius.std() / radius.mean() > 0.2


# --------------------------------------------------------------------------- a real tiny study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Six modadd seeds collected with 9 snapshots each, fitted (three states on val_acc, train_loss and
    l2) and reported once."""
    import matplotlib

    matplotlib.use("Agg")
    from latent.artifacts import write_fit
    from latent.collect.study import collect_study
    from latent.fit import FitConfig, fit_study
    from latent.reports.artifacts import load_fit
    from latent.reports.html import write_report
    from latent.store import Study

    store = tmp_path_factory.mktemp("snapstore")
    collect_study("modadd", 6, overrides=OVERRIDES, store=store, study="snap", threads=1, progress=False, snapshots=9)
    st = Study(store / "snap")
    result = fit_study(st, FitConfig(features=("val_acc", "train_loss", "l2"), covariance="diag", max_states=3,
                                     restarts=1, n_iter=8, folds=2, n_boot=20, resamples=0, audit=False), n_jobs=1)
    write_fit(st, result)
    fit = load_fit(store, "snap")
    index = write_report(fit, report_command="latent report")
    return store, fit, index


def _files(store) -> dict[int, dict]:
    """Every run's snapshots read straight from its .npz file."""
    out = {}
    for path in sorted((Path(store) / "snap" / "snapshots").glob("seed-*.npz")):
        with np.load(path, allow_pickle=False) as z:
            out[int(path.stem.split("-")[1])] = {k: z[k] for k in ("steps", "embed", "unembed")}
    return out


def _state(fit, seed, step) -> int:
    run = fit.runs[(fit.runs["seed"] == seed) & (fit.runs["step"] == step)]
    assert len(run) == 1
    return int(run["state"].iloc[0])


def test_the_study_has_what_the_views_need(study):
    store, fit, _ = study
    files = _files(store)
    assert sorted(files) == sorted(fit.seeds) == list(range(6))
    assert all(f["steps"].tolist() == SNAPSHOT_STEPS and f["embed"].shape == (9, P, 16) for f in files.values())
    assert fit.n_states >= 2 and len(set(fit.runs["state"])) >= 2  # the panels have states to tell apart
    conv = fit.convergence_times
    assert sum(t is not None for t in conv.values()) >= 3


def test_ls_names_the_studies_with_snapshots(study, tmp_path, capsys):
    import json

    from latent.cli import main

    store, _, _ = study
    # a copy of the study, and beside it the same study without snapshots (as collected without them)
    shutil.copytree(Path(store) / "snap", tmp_path / "snap", ignore=shutil.ignore_patterns("fits"))
    shutil.copytree(Path(store) / "snap", tmp_path / "plain", ignore=shutil.ignore_patterns("fits", "snapshots"))
    meta = json.loads((tmp_path / "plain" / "study.json").read_text())
    del meta["snapshots"]
    (tmp_path / "plain" / "study.json").write_text(json.dumps(meta))
    assert main(["ls", "--store", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "weight snapshots (latent collect --snapshots; `latent report` draws them):" in lines
    assert f"  snap: 9 per finished run, in {tmp_path / 'snap' / 'snapshots'}" in lines
    assert not any(line.startswith("  plain:") for line in lines)
    assert any(line.startswith("plain ") and "6/6" in line and "done" in line for line in lines)


def test_the_figure_draws_the_fastest_median_and_slowest_runs_at_thinned_snapshots(study):
    store, fit, index = study
    from latent.reports.html import build_figures

    files = _files(store)
    snaps = F.weight_snapshots(fit)
    drawn = {name: (caption, fig, info) for name, _, caption, fig, info in build_figures(fit, snapshots=snaps)}
    caption, fig, info = drawn["weights"]
    # the runs: ranked by the fit's convergence step (never converging last), ties by seed
    conv = fit.convergence_times
    ranked = sorted(conv, key=lambda s: (conv[s] is None, conv[s] or 0, s))
    assert [(r["role"], r["seed"]) for r in info["runs"]] == [
        ("fastest", ranked[0]), ("median", ranked[len(ranked) // 2]), ("slowest", ranked[-1])]
    # six of nine snapshots, evenly by index with the first and the last: indices 0, 2, 3, 5, 6, 8
    shown = [SNAPSHOT_STEPS[i] for i in (0, 2, 3, 5, 6, 8)]
    assert all(r["steps"] == shown for r in info["runs"])
    assert len(info["panels"]) == 3 * 2 * 6
    assert sum(bool(ax.get_title()) for ax in fig.axes) == 36
    for r in info["runs"]:
        f = files[r["seed"]]
        k = int(np.argmax(fft_energy(f["embed"][-1][:P]))) + 1
        assert r["k"] == k
        for pan in (x for x in info["panels"] if x["seed"] == r["seed"]):
            i = f["steps"].tolist().index(pan["step"])
            embed = f["embed"][i][:P].astype(np.float64)
            if pan["view"] == "pcs":
                assert same_up_to_sign(pan["coords"], sk_pcs(embed), atol=1e-6)
            else:
                assert pan["k"] == k
                assert pan["coords"] == pytest.approx(fft_circle(embed, k), abs=1e-6)
            assert pan["state"] == _state(fit, r["seed"], pan["step"])
    for pan in info["panels"]:  # every panel's title names its step and its decoded state
        title = fig.axes[pan["row"] * 6 + pan["col"]].get_title()
        assert title.startswith(f"epoch {pan['step']}\nstate {pan['state']}"), (pan["seed"], title)
    assert f"p = {P}" in caption and "principal components" in caption and "Fourier circle" in caption
    # legible: no text under 6 pt, outside the figure, or on another text or on a panel
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    boxes = [t.get_window_extent(renderer) for t in texts]
    panels = [ax.get_window_extent(renderer) for ax in fig.axes[:-1] if ax.axison]
    assert len(panels) == 36
    for t, box in zip(texts, boxes):
        assert t.get_fontsize() >= 6.0, t.get_text()
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, t.get_text()
        assert not any(box.overlaps(b) for b in boxes if b is not box), t.get_text()
        assert not any(box.overlaps(pb) for pb in panels), t.get_text()
    # the page has the section and its files
    page = index.read_text(encoding="utf-8")
    assert "<section id='weights'>" in page and "<a href='#weights'>" in page
    assert (index.parent / "weights.png").stat().st_size > 0 and (index.parent / "weights.svg").stat().st_size > 0


def test_the_interactive_data_are_every_snapshot_on_its_circle(study):
    store, fit, _ = study
    from latent.reports.interactive import NAMES, explore_data

    files = _files(store)
    w = explore_data(fit).weights
    assert w is not None and w.p == P
    assert w.index[["seed", "step"]].values.tolist() == [[s, t] for s in range(6) for t in SNAPSHOT_STEPS]
    for row in w.index.itertuples():
        f = files[row.seed]
        assert row.k == int(np.argmax(fft_energy(f["embed"][-1][:P]))) + 1
        i = SNAPSHOT_STEPS.index(row.step)
        want = fft_circle(f["embed"][i][:P], row.k)
        got = np.column_stack([w.x[row.start:row.start + P], w.y[row.start:row.start + P]])
        assert got == pytest.approx(want, abs=1e-5)
    assert w.at(2, 229) == list(w.index.itertuples()).index(next(r for r in w.index.itertuples()
                                                                  if r.seed == 2 and r.step == 150))
    assert {"weights", "weights_index", "weights_coords"} <= set(NAMES)
    # a fit without snapshots has no panel
    assert explore_data(fit, snapshots={}).weights is None


def test_no_snapshots_no_section(tmp_path):
    """The toy fit (no snapshots): no figure, no panel, nothing read."""
    import matplotlib

    matplotlib.use("Agg")
    from latent.reports.artifacts import load_fit
    from latent.reports.html import figure_records
    from report_fixtures import make_toy_fit

    make_toy_fit(tmp_path)
    fit = load_fit(tmp_path)
    assert F.weight_snapshots(fit) == {}
    rec = next(r for r in figure_records() if r.name == "weights")
    assert rec.draw(fit, F.DEFAULT_METRICS, {}) is None


def test_the_report_reads_snapshots_without_torch(study):
    store = study[0]
    code = ("import sys; from latent.reports.artifacts import load_fit; from latent.reports import figures as F; "
            "from latent.reports.interactive import explore_data; fit = load_fit(sys.argv[1], 'snap'); "
            "s = F.weight_snapshots(fit); assert len(s) == 6 and explore_data(fit, s).weights is not None; "
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


# --------------------------------------------------------------------------- a damaged file


@pytest.fixture(scope="module")
def damaged(study, tmp_path_factory):
    """A copy of the study with seed 1's snapshot file cut in half, reported by the command."""
    import contextlib
    import io

    from latent.cli import main

    store = tmp_path_factory.mktemp("damaged")
    shutil.copytree(study[0] / "snap", store / "snap")
    bad = store / "snap" / "snapshots" / "seed-001.npz"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["report", "--store", str(store), "--study", "snap", "-q"])
    return rc, Path(out.getvalue().strip()), err.getvalue(), bad


def test_a_damaged_snapshot_file_costs_the_views_and_one_line(damaged):
    rc, index, err, bad = damaged
    assert rc == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("latent report: warning: snapshots file ") and str(bad) in lines[0]
    assert "without its weight views" in lines[0] and "Traceback" not in err
    page = index.read_text(encoding="utf-8")
    assert "id='weights'" not in page and "latent-weights" not in page
    assert "id='explore'" in page and "id='progress'" in page  # the rest of the page is there
    assert not (index.parent / "weights.png").exists()


# --------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def chromium(study):
    from browser import browser, need_browser

    need_browser()
    with browser() as b:
        yield b


def _shown(page) -> np.ndarray:
    from browser import data

    d = data(page, "latent-weights")
    return np.column_stack([np.asarray(d["x"], dtype=float), np.asarray(d["y"], dtype=float)])


def _expect(store, fit, seed: int, t: float):
    """What the panel must show for run ``seed`` at slider step ``t``: the file's last snapshot at or
    before t, on the circle of its key frequency at its last snapshot."""
    f = _files(store)[seed]
    at = [i for i, s in enumerate(f["steps"].tolist()) if s <= t]
    i = at[-1]
    k = int(np.argmax(fft_energy(f["embed"][-1][:P]))) + 1
    return int(f["steps"][i]), k, fft_circle(f["embed"][i][:P], k)


def test_the_panel_follows_the_slider_and_the_picked_run(study, chromium):
    from browser import click_data, data, open_page, problems, prop, set_prop, settle

    store, fit, index = study
    page, seen = open_page(chromium, index.as_uri())
    settle(page)
    title = page.evaluate("Bokeh.documents[0].get_model_by_name('latent-weights-figure').title.text")
    seed = int(title.split()[1])  # the run picked at first
    for t in (float(fit.runs["step"].max()), 0.0, 79.0, 80.0, 229.0, 450.0, 599.0):
        set_prop(page, "latent-slider", "value", t)
        settle(page, 250)
        step, k, want = _expect(store, fit, seed, t)
        assert _shown(page) == pytest.approx(want, abs=1e-5), (seed, t)
        title = page.evaluate("Bokeh.documents[0].get_model_by_name('latent-weights-figure').title.text")
        state = _state(fit, seed, step)
        assert title.startswith(f"run {seed} at epoch {step} (state {state}") and title.endswith(f"k = {k}"), title
        line = data(page, "latent-weights-line")
        order = list(F.circle_order(P, k)) + [F.circle_order(P, k)[0]]
        assert np.asarray(line["x"]) == pytest.approx(want[order, 0], abs=1e-5)
    # pick another run by clicking its marker: the panel shows that run at the same step
    other = next(s for s in fit.seeds if s != seed)
    m = data(page, "latent-markers")
    r = m["seed"].index(other)
    click_data(page, "latent-map", m["x"][r], m["y"][r])
    settle(page)
    step, k, want = _expect(store, fit, other, 599.0)
    assert _shown(page) == pytest.approx(want, abs=1e-5)
    assert prop(page, "latent-info", "text").startswith(f"run {other}:")
    assert problems(page, seen) == []
    page.close()


def test_the_damaged_page_loads_clean_without_the_panel(damaged, chromium):
    from browser import open_page, problems, settle

    index = damaged[1]
    page, seen = open_page(chromium, index.as_uri())
    settle(page)
    assert page.evaluate("Bokeh.documents[0].get_model_by_name('latent-weights')") is None
    assert page.locator("#weights").count() == 0
    assert problems(page, seen) == []
    page.close()
