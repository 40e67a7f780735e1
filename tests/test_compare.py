"""`latent compare`: statistics against direct numpy/scipy computations on planted convergence times,
fits reused (never refitted), units kept apart, Holm over pairs, one-line errors, the page."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from latent.cli import main
from latent.compare import convergence_stats, describe_times, holm, map_forks
from planted import FEATURES, emit, run_table, well_separated_means, write_study

T = 40  # checkpoints per run
EVERY = 10  # steps between checkpoints
TAU = (T - 1) * EVERY  # the last step every run reaches
FAST = ["--max-states", "3", "--restarts", "1", "--n-iter", "10", "--n-boot", "20", "--resamples", "0",
        "--min-runs", "3", "--jobs", "1"]

# convergence checkpoint of each run (None: never converges), so the times are known in advance
PLANTED = {
    "quick": [8, 9, 10, 10, 11, 12, 13, 14, 15, 16],
    "slow": [10, 13, 15, 18, 20, 22, 25, 28, 30, None],
    "wide": [6, 7, 9, 12, 16, 21, 26, 31, 33, 34],
}


def make_study(root: Path, conv, step_unit: str = "epoch", seed: int = 0) -> Path:
    """Runs 0 -> 1 -> 2 (three well-separated states) whose val_acc jumps to 0.95 at the planted
    checkpoint; a run planted as None never converges."""
    rng = np.random.default_rng(seed)
    means = well_separated_means(3, len(FEATURES))
    runs = {}
    for s, c in enumerate(conv):
        stop = c if c is not None else T - 5
        first = max(2, stop // 2)
        states = np.concatenate([np.zeros(first, int), np.ones(stop - first, int), np.full(T - stop, 2)])
        acc = np.full(T, 0.5) if c is None else np.where(np.arange(T) >= c, 0.95, 0.5)
        runs[s] = run_table(s, emit(states, means, rng, noise=0.5), FEATURES, step_every=EVERY, val_acc=acc)
    return write_study(root, runs, step_unit=step_unit)


def expected_times(conv) -> np.ndarray:
    """The restricted convergence times, computed from the plan: step of convergence, τ if never."""
    return np.array([TAU if c is None else c * EVERY for c in conv], dtype=float)


@pytest.fixture()
def store(tmp_path):
    for i, (name, conv) in enumerate(PLANTED.items()):
        make_study(tmp_path / name, conv, seed=i)
    return tmp_path


def compare(store, *argv):
    """The exit status of ``latent compare`` (argparse's own errors exit through SystemExit)."""
    try:
        return main(["compare", "--store", str(store), *FAST, *argv])
    except SystemExit as exc:
        return exc.code


def only_dir(path: Path) -> Path:
    (d,) = [p for p in path.iterdir() if not p.name.startswith(".")]
    return d


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(path.rglob("*"))
            if p.is_file()}


# --------------------------------------------------------------------------- end to end


def test_two_studies_statistics_match_direct_computation_and_second_run_reuses_fits(store, capsys):
    assert compare(store, "quick", "slow") == 0
    out = capsys.readouterr().out
    assert out.count("fitting it now") == 2 and "reusing" not in out
    page = Path(out.strip().splitlines()[-2].removeprefix("wrote "))
    assert page.name == "index.html" and page.is_file()
    assert page.parent.parent == store / "comparisons" / "quick-vs-slow"
    data = json.loads((page.parent / "comparison.json").read_text())
    assert data["format"] == "latent.compare/1" and [s["name"] for s in data["studies"]] == ["quick", "slow"]

    for s in data["studies"]:
        y = expected_times(PLANTED[s["name"]])
        c = s["convergence"]
        np.testing.assert_allclose(c["times"], y)
        q1, med, q3 = np.percentile(y, [25, 50, 75])
        assert c["median"] == pytest.approx(med) and c["q1"] == pytest.approx(q1) and c["q3"] == pytest.approx(q3)
        assert c["iqr"] == pytest.approx(q3 - q1)
        assert c["cv"] == pytest.approx(np.std(y, ddof=1) / np.mean(y))
        assert c["tau"] == TAU and c["n"] == len(y)
        assert s["step_unit"] == "epoch" and s["fitted_now"] is True and s["n_states"] >= 1
    assert data["studies"][1]["convergence"]["censored"] == [9]  # the run planted to never converge
    assert data["studies"][0]["convergence"]["median"] == 11.5 * EVERY  # by hand: (11 + 12) / 2 checkpoints

    a, b = expected_times(PLANTED["quick"]), expected_times(PLANTED["slow"])
    (pair,) = data["pairs"]
    assert pair["tested"] and pair["unit"] == "epoch"
    # U by hand: pairs where quick's run is later than slow's, ties counted one half
    u = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
    assert pair["mw_u"] == pytest.approx(u)
    assert pair["prob_superiority"] == pytest.approx(u / (len(a) * len(b)))
    assert pair["mw_p"] == pytest.approx(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    # Brown–Forsythe by hand: one-way ANOVA of the absolute deviations from each group's median
    bf = stats.f_oneway(np.abs(a - np.median(a)), np.abs(b - np.median(b)))
    assert pair["bf_w"] == pytest.approx(bf.statistic) and pair["bf_p"] == pytest.approx(bf.pvalue)
    assert pair["bf_p"] == pytest.approx(stats.levene(a, b, center="median").pvalue)
    assert pair["mw_p_adjusted"] == pair["mw_p"]  # one pair: nothing to adjust
    assert pair["median_diff"] == pytest.approx(np.median(b) - np.median(a))
    assert pair["mw_p"] < 0.05  # the planted shift is found

    # the text table carries the same numbers
    assert re.search(r"^quick\s+epoch\s+10\s", out, re.M) and re.search(r"^slow\s+epoch\s+10\s", out, re.M)
    assert f"Mann–Whitney U = {u:g}" in out and "Brown–Forsythe W = " in out
    assert out.strip().splitlines()[-1].startswith("next: ")

    html = page.read_text()
    for needle in ("latent compare: quick vs slow", "Table 1, as in the paper", "Mann–Whitney", "Brown–Forsythe",
                   "Forking map", "Trajectory dissimilarity", "fitted by this command: quick, slow",
                   "default-src 'none'", "data:image/png;base64,", "1 (at τ = 390)"):
        assert needle in html, needle
    assert "http://" not in html and "https://" not in html and "<script" not in html
    for name in ("training_maps", "convergence"):
        assert (page.parent / f"{name}.png").stat().st_size > 1000 and (page.parent / f"{name}.svg").is_file()

    # second run: the same fits, untouched; says so; the page says nothing was refitted
    fits = {n: snapshot(store / n / "fits") for n in ("quick", "slow")}
    assert compare(store, "quick", "slow") == 0
    out2 = capsys.readouterr().out
    assert out2.count("reusing fit") == 2 and "fitting" not in out2
    for n in ("quick", "slow"):
        assert snapshot(store / n / "fits") == fits[n], n
    assert "nothing was refitted" in page.read_text()
    data2 = json.loads((page.parent / "comparison.json").read_text())
    assert [s["fitted_now"] for s in data2["studies"]] == [False, False]
    assert data2["pairs"] == data["pairs"]

    # --no-fit with fits present works; other fit settings are another fit id (so --no-fit refuses)
    assert compare(store, "slow", "quick", "--no-fit") == 0
    assert (store / "comparisons" / "slow-vs-quick").is_dir()
    capsys.readouterr()
    assert compare(store, "quick", "slow", "--no-fit", "--covariance", "diag") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latent compare: error: --no-fit: no fit with these settings for quick") and "\n" not in err
    assert "made with other settings" in err

    # a run collected after the fit: the fit is still reused, and the page and stdout say it is stale
    from latent.store import atomic_write_parquet, run_stem

    extra = run_table(10, np.zeros((T, len(FEATURES))), FEATURES, step_every=EVERY, val_acc=np.full(T, 0.95))
    atomic_write_parquet(store / "quick" / "runs" / f"{run_stem(10)}.parquet", extra)
    assert compare(store, "quick", "slow", "--no-fit") == 0
    out3 = capsys.readouterr().out
    assert "note: quick: the study now holds 1 run(s) the fit never saw (seeds 10)" in out3
    assert snapshot(store / "quick" / "fits") == fits["quick"]


def test_many_studies_holm_and_units_kept_apart(store, capsys):
    make_study(store / "steps", PLANTED["quick"], step_unit="step", seed=7)
    assert compare(store, "quick", "slow", "wide", "steps") == 0
    out = capsys.readouterr().out
    page = Path(out.strip().splitlines()[-2].removeprefix("wrote "))
    data = json.loads((page.parent / "comparison.json").read_text())
    pairs = {(p["a"], p["b"]): p for p in data["pairs"]}
    assert list(pairs) == list(combinations(["quick", "slow", "wide", "steps"], 2))

    # pairs across units are not tested, and say why
    for key, p in pairs.items():
        if "steps" in key:
            assert not p["tested"] and p["unit"] is None and p["mw_p"] is None and p["bf_p"] is None
            assert "different units" in p["reason"] and "epochs" in p["reason"] and "steps" in p["reason"]
            assert p["cv_ratio"] is not None  # the CV has no unit
    assert any("different units" in n for n in data["notes"])
    assert "not tested (different units" in out

    # the three epoch pairs: raw p from scipy on the planted times, Holm over those three
    tested = [k for k in pairs if "steps" not in k]
    raw_mw = [stats.mannwhitneyu(expected_times(PLANTED[a]), expected_times(PLANTED[b]),
                                 alternative="two-sided").pvalue for a, b in tested]
    raw_bf = [stats.levene(expected_times(PLANTED[a]), expected_times(PLANTED[b]), center="median").pvalue
              for a, b in tested]

    def holm_by_hand(p):
        order = np.argsort(p)
        adj = np.minimum(1, np.maximum.accumulate([(len(p) - i) * p[j] for i, j in enumerate(order)]))
        out = np.empty(len(p))
        out[order] = adj
        return out

    for k, mw, bf, mw_adj, bf_adj in zip(tested, raw_mw, raw_bf, holm_by_hand(np.array(raw_mw)),
                                         holm_by_hand(np.array(raw_bf))):
        p = pairs[k]
        assert p["mw_p"] == pytest.approx(mw) and p["bf_p"] == pytest.approx(bf)
        assert p["mw_p_adjusted"] == pytest.approx(mw_adj) and p["bf_p_adjusted"] == pytest.approx(bf_adj)
    assert data["correction"] == "holm" and "Holm" in data["correction_text"]
    assert "Holm" in out

    html = page.read_text()
    assert "Holm-adjusted p" in html and "Read this first" in html and "different units" in html
    assert "steps: steps" in html  # the convergence caption names each unit's studies


def test_bad_input_is_one_line_and_exit_2(store, capsys):
    make_study(store / "unfitted", PLANTED["quick"], seed=5)
    before = snapshot(store)

    def error(*argv):
        assert compare(store, *argv) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert "\n" not in err and "Traceback" not in err, err
        assert err.startswith("latent compare: error: "), err
        return err

    assert "at least two studies" in error("quick")
    assert "given twice" in error("quick", "quick")
    assert "given twice" in error("quick", str(store / "quick"))
    assert "'nope' not found" in error("quick", "nope")
    assert "--no-fit" in error("quick", "unfitted", "--no-fit")
    assert "--max-states" in error("quick", "slow", "--max-states", "0")
    assert "--jobs" in error("quick", "slow", "--jobs", "0")
    assert "expected a number" in error("quick", "slow", "--threshold", "abc")  # argparse
    assert snapshot(store) == before  # nothing fitted, nothing written
    with pytest.raises(SystemExit) as exc:  # argparse: no study at all
        main(["compare"])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("latent compare: error:")

    (store / "mine").mkdir()
    (store / "mine" / "notes.txt").write_text("keep me")
    assert "holds no comparison" in error("quick", "slow", "--out", str(store / "mine"))
    assert (store / "mine" / "notes.txt").read_text() == "keep me"


def test_no_torch_import():
    code = ("import sys, latent.compare, latent.cli.compare, latent.reports.compare; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


# --------------------------------------------------------------------------- units


def test_describe_times_matches_numpy():
    y = [300.0, 120.0, 90.0, 450.0, 120.0, 210.0, 980.0]
    d = describe_times(y)
    q1, med, q3 = np.percentile(y, [25, 50, 75])
    assert d == pytest.approx({"n": 7, "median": med, "q1": q1, "q3": q3, "iqr": q3 - q1, "mean": np.mean(y),
                               "std": np.std(y, ddof=1), "cv": np.std(y, ddof=1) / np.mean(y)})
    assert d["median"] == 210.0 and d["q1"] == 120.0 and d["q3"] == 375.0  # by hand
    one = describe_times([5.0])
    assert one["median"] == 5.0 and one["std"] is None and one["cv"] is None
    assert describe_times([])["median"] is None


def test_convergence_stats_restrict_and_exclude():
    conv = {"times": {"0": 100, "1": None, "2": 250, "10": 900}, "tau": 500}
    r = convergence_stats(conv, "restrict")
    assert r.seeds == (0, 1, 2, 10) and r.times == (100.0, 500.0, 250.0, 500.0)  # never -> τ, 900 -> τ
    assert r.censored == (1, 10) and r.excluded == () and r.median == pytest.approx(375.0)
    e = convergence_stats(conv, "exclude")
    assert e.seeds == (0, 2, 10) and e.times == (100.0, 250.0, 500.0) and e.excluded == (1,)


def test_holm_by_hand():
    # sorted: 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> monotone 0.06; None stays out of m
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([0.2]) == [0.2] and holm([None]) == [None]


def test_map_forks_counts_branches_with_enough_runs():
    data = {"edges": [{"source": 0, "target": 1, "runs": 7}, {"source": 0, "target": 2, "runs": 5},
                      {"source": 1, "target": 2, "runs": 7}, {"source": 2, "target": 3, "runs": 11},
                      {"source": 2, "target": 1, "runs": 1}, {"source": 3, "target": 3, "runs": 12}]}
    forks, minor = map_forks(data, min_runs=5)
    assert forks == [{"state": 0, "branches": ((1, 7), (2, 5))}]
    assert minor == [{"state": 2, "branches": ((3, 11), (1, 1))}]
    assert map_forks(data, min_runs=6) == ([], [{"state": 0, "branches": ((1, 7), (2, 5))},
                                                {"state": 2, "branches": ((3, 11), (1, 1))}])


def test_plot_functions_draw_on_a_small_axes():
    from matplotlib.figure import Figure

    from latent.compare import StudySummary, compare_studies
    from latent.reports.compare import plot_convergence_box, plot_convergence_ecdf

    def summary(name, times, unit="epoch"):
        conv = convergence_stats({"times": {str(i): t for i, t in enumerate(times)}, "tau": 1000})
        return StudySummary(name=name, root="", fit_id="x", fitted_now=False, task=None, preset=None, step_unit=unit,
                            n_runs=len(times), n_states=3, selection="", detours=(), detour_rule="delay",
                            resamples_used=0, r2=None, r2_p=None, f_stat=None, regression_runs=None,
                            dissimilarity=None, forking=False, forks=(), minor_branches=(), min_runs=5,
                            convergence=conv)

    comp = compare_studies([summary("a", [100, 200, 300, None]), summary("b", [150, 160, 170, 180])])
    ax = Figure(figsize=(3, 2)).add_subplot()
    info = plot_convergence_box(ax, comp)
    assert info["medians"] == {"a": 250.0, "b": 165.0} and info["times"]["a"] == [100, 200, 300, 1000]
    assert info["rows"] == {"a": 1, "b": 0}  # first study on top
    info = plot_convergence_ecdf(Figure(figsize=(3, 2)).add_subplot(), comp, ["b"])
    assert list(info["curves"]) == ["b"] and info["curves"]["b"][1][-1] == 1.0


def test_the_comparisons_folder_is_not_a_study_name(tmp_path, capsys):
    from latent.cli import main as cli

    assert cli(["collect", "--task", "parity", "--seeds", "1", "--study", "comparisons", "--store", str(tmp_path),
                "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reserved" in err[0]
    assert not (tmp_path / "comparisons").exists()


def test_studies_collected_with_different_metric_variants_get_a_note():
    from dataclasses import replace

    from latent.compare import StudySummary, compare_studies

    conv = convergence_stats({"times": {"0": 100, "1": 200, "2": 300}, "tau": 1000})
    a = StudySummary(name="a", root="", fit_id="x", fitted_now=False, task=None, preset=None, step_unit="epoch",
                     n_runs=3, n_states=3, selection="", detours=(), detour_rule="delay", resamples_used=0, r2=None,
                     r2_p=None, f_stat=None, regression_runs=None, dissimilarity=None, forking=False, forks=(),
                     minor_branches=(), min_runs=5, convergence=conv)
    same = compare_studies([a, replace(a, name="b")])
    assert not any("metric-variant" in n for n in same.notes)
    mixed = compare_studies([a, replace(a, name="b", metric_variant="paper")])
    assert any("--metric-variant (a: reference; b: paper)" in n for n in mixed.notes)
    # metrics imported as logged have no variant: no note beside either kind
    imported = replace(a, name="c", metric_variant=None)
    assert not any("metric-variant" in n for n in compare_studies([imported, replace(a, metric_variant="paper")]).notes)


def test_metric_variant_of_a_study_from_its_study_json():
    from latent.compare import _metric_variant

    assert _metric_variant({"task": "modadd"}) == "reference"  # collected before variants existed
    assert _metric_variant({"task": "modadd", "metric_variant": "paper"}) == "paper"
    assert _metric_variant({"task": "external", "source": {"kind": "table"}}) is None
    assert _metric_variant({"task": "external", "metric_variant": "paper"}) == "paper"  # Recorder, checkpoints


def test_ls_lists_comparison_pages_after_the_studies(tmp_path, capsys):
    from latent.cli import main
    from latent.simulate import SimConfig, simulate, write_study

    table, _ = simulate(SimConfig(n_runs=3, n_checkpoints=20, seed=1))
    write_study(tmp_path / "a", table)
    page = tmp_path / "comparisons" / "a-vs-b" / "full-loglik-12345678" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html></html>")
    capsys.readouterr()
    assert main(["ls", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    study_rows = [line.split()[0] for line in out.splitlines()[1:] if line and not line.startswith((" ", "comparisons"))]
    assert study_rows == ["a"]  # the comparisons folder is not a study
    assert f"a-vs-b (full-loglik-12345678): {page}" in out


def test_unequal_or_overlapping_studies_are_said_to_be_so():
    """Two studies with identical dynamics by construction (one is a subset of the other's runs): the
    comparison must say that they differ in size and share runs, not leave K or R² to speak."""
    from dataclasses import replace

    from latent.compare import StudySummary, compare_studies, summarize_fit

    meta = {"task": "modadd", "config": {"p": 59, "epochs": 2000}, "metric_variant": "reference",
            "schedule": {"every": 10, "last": 2000, "steps_per_epoch": 1}}
    model = {"n_states": 3, "config": {"first_n": 1000, "max_states": 8}, "seeds": {"used": list(range(40))}}
    big = summarize_fit("big", meta, model, {}, fit_id="f")
    small = summarize_fit("small", meta, {**model, "seeds": {"used": list(range(12))}}, {}, fit_id="f")
    assert big.run_identity == small.run_identity and big.checkpoints == 201 and small.seeds == tuple(range(12))
    notes = compare_studies([big, small]).notes
    assert any("different numbers of runs (big: 40; small: 12)" in n for n in notes)
    assert any("big and small share 12 runs" in n and "small's runs are all in the other" in n for n in notes)
    assert not any("checkpoints" in n or "settings" in n for n in notes)  # same schedule, same fit settings
    # another config: the same seeds are other runs; a shorter schedule and other fit settings are said
    other = summarize_fit("other", {**meta, "config": {"p": 59, "epochs": 1000},
                                    "schedule": {"every": 10, "last": 1000, "steps_per_epoch": 1}},
                          {**model, "config": {"first_n": 1000, "max_states": 6}}, {}, fit_id="g")
    notes = compare_studies([big, other]).notes
    assert not any("share" in n for n in notes)
    assert any("(big: 201; other: 101 per finished run" in n for n in notes)
    assert any("differ in their settings (max_states)" in n for n in notes)
    # imported studies (a source, no latent config) are never matched by seed
    imported = replace(small, name="imp", run_identity=None)
    assert not any("share" in n for n in compare_studies([big, imported]).notes)
    assert isinstance(big, StudySummary)
