"""latent predict / latent watch: decoding, detour risk and convergence forecasts of runs not in a fit.

Checked against independent computations: a hand-written forward algorithm, Monte Carlo draws of
the Markov chain, numpy's quantiles, hand-built analogs, and planted studies whose held-out runs'
true states and convergence steps are known.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import multivariate_normal

from latent.cli import main
from latent.fit import FitConfig, fit_study, write_fit
from latent.predict import (FittedMap, PredictConfig, Watcher, _Analog, backtest, predict, predict_run, sharper,
                            weighted_quantiles)
from latent.simulate import SimConfig, simulate, write_study
from latent.store import Study, atomic_write_json, atomic_write_parquet


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A planted study of 70 runs: the first 40 fitted, the other 30 held out."""
    cfg = SimConfig(n_main=3, detours=1, p_take=0.5, n_runs=70, n_checkpoints=200, separation=4.0, seed=12)
    table, truth = simulate(cfg)
    store = tmp_path_factory.mktemp("store")
    root = write_study(store / "sim", table[table["seed"] < 40].reset_index(drop=True))
    study = Study(root)
    fdir = write_fit(study, fit_study(study, FitConfig(resamples=0, max_states=6), n_jobs=1))
    held = table[table["seed"] >= 40].reset_index(drop=True)
    write_study(store / "new", held)
    return {"store": store, "fit": fdir, "fmap": FittedMap(fdir), "held": held, "truth": truth, "table": table}


def _state_map(fmap, truth):
    """Fit state -> truth state it overlaps most on the fitted runs."""
    counts = {}
    for seed, a in fmap.analogs.items():
        for f, t in zip(a.states, truth.paths[seed]):
            counts[(int(f), int(t))] = counts.get((int(f), int(t)), 0) + 1
    return {f: max((c, t) for (ff, t), c in counts.items() if ff == f)[1] for f in range(fmap.k)}


def test_filtered_posterior_matches_a_hand_written_forward_pass(planted):
    fmap = planted["fmap"]
    model = json.loads((planted["fit"] / "model.json").read_text())
    run = planted["held"][planted["held"]["seed"] == 45].head(37)
    x = (run[fmap.features].to_numpy(float) - np.asarray(model["scaling"]["mean"])) / np.asarray(model["scaling"]["std"])
    start, trans = np.asarray(model["startprob"]), np.asarray(model["transmat"])
    dens = np.column_stack([multivariate_normal(np.asarray(m), np.asarray(c), allow_singular=True).logpdf(x)
                            for m, c in zip(model["means"], model["covars"])])
    log_alpha = np.log(start + 1e-300) + dens[0]
    for t in range(1, len(x)):
        log_alpha = dens[t] + np.logaddexp.reduce(log_alpha[:, None] + np.log(trans + 1e-300), axis=0)
    expected = np.exp(log_alpha - np.logaddexp.reduce(log_alpha))
    got = predict_run(fmap, run)
    np.testing.assert_allclose(got["posterior"], expected, atol=1e-6)
    assert got["state"] == int(np.argmax(expected)) and got["checkpoints"] == 37


def test_current_state_of_held_out_runs_is_the_planted_one(planted):
    fmap, truth = planted["fmap"], planted["truth"]
    m = _state_map(fmap, truth)
    right, total = 0, 0
    for seed, run in planted["held"].groupby("seed"):
        for n in (20, 60, 120):
            res = predict_run(fmap, run.head(n))
            right += m[res["state"]] == truth.paths[int(seed)][n - 1]
            total += 1
    assert right / total >= 0.9


def test_hmm_detour_risk_equals_monte_carlo_draws_of_the_chain(planted):
    fmap = planted["fmap"]
    assert fmap.detours, "the planted detour should be found"
    rng = np.random.default_rng(0)
    post = np.full(fmap.k, 1.0 / fmap.k)
    d, steps_left = fmap.detours[0], 40
    got = fmap.detour_risk(post, np.array([0]), np.array([0.0]), steps_left, method="hmm")[d]
    T = fmap.transmat / fmap.transmat.sum(axis=1, keepdims=True)
    hits = 0
    n = 20000
    states = rng.choice(fmap.k, size=n, p=post)
    hit = states == d
    for _ in range(steps_left):
        u = rng.random(n)
        states = (T[states].cumsum(axis=1) < u[:, None]).sum(axis=1).clip(max=fmap.k - 1)
        hit |= states == d
    hits = hit.mean()
    assert got == pytest.approx(hits, abs=0.015)
    assert fmap.detour_risk(post, np.array([0, d]), np.array([0.0, 1.0]), 40, method="hmm")[d] == 1.0


def test_weighted_quantiles_with_equal_weights_are_numpys_inverted_cdf():
    rng = np.random.default_rng(3)
    v = rng.normal(size=37)
    for q in (0.05, 0.1, 0.5, 0.9, 0.97):
        assert weighted_quantiles(v, np.ones_like(v), [q])[0] == pytest.approx(np.quantile(v, q, method="inverted_cdf"))
    # weights count like repeated values
    assert weighted_quantiles(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 1.0]), [0.5]) == \
        [float(np.quantile([1.0, 2.0, 2.0, 3.0], 0.5, method="inverted_cdf"))]


def _toy_map(analogs, k=3, detours=(2,)):
    fmap = FittedMap.__new__(FittedMap)
    fmap.analogs = analogs
    fmap.k, fmap.detours = k, list(detours)
    return fmap


def test_aligned_analogs_by_hand():
    # three fitted runs, steps 0..9; state 1 entered at steps 2, 4, 3; convergence at 6, 9, never
    steps = np.arange(10.0)
    a = {0: _Analog(steps, np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 2]), 6.0),
         1: _Analog(steps, np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2]), 9.0),
         2: _Analog(steps, np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2]), math.inf)}
    fmap = _toy_map(a)
    # new run: in state 1 since step 20, now at step 21 (dwell 1), certain of state 1
    path, st = np.array([0, 0, 1, 1]), np.array([18.0, 19.0, 20.0, 21.0])
    post = np.array([0.0, 1.0, 0.0])
    # analog 0: entry 2, aligned step 3, remaining 3 -> 24; analog 1: entry 4, aligned 5, remaining 4 -> 25;
    # analog 2: entry 3, aligned 4, never -> inf.  n_eff = 3: q_lo = floor(4*0.1)/3 = 0 -> low is the current step;
    # q_hi = ceil(4*0.9)/3 > 1 -> open upper end; median = 25
    fc = fmap.forecast(post, path, st, level=0.8, min_analogs=3)
    assert fc["median"] == 25.0 and fc["low"] == 21.0 and fc["high"] is None
    assert fc["p_never"] == pytest.approx(1 / 3) and fc["analogs"] == 3.0
    # detour risk by analogs: all three reach state 2 after their aligned step: (3 + 0.5) / (3 + 1)
    risk = fmap.detour_risk(post, path, st, 10, method="analogs")
    assert risk[2] == pytest.approx(3.5 / 4)
    # with a dwell of 3 in state 1, analog 2 (a stay of 2) is no longer an analog
    fc = fmap.forecast(post, np.array([1, 1, 1, 1]), np.array([20.0, 21.0, 22.0, 23.0]), level=0.5, min_analogs=1)
    assert fc["analogs"] == 2.0 and fc["p_never"] == 0.0
    assert fc["median"] == 23.0 + (6.0 - 5.0)  # analog 0: aligned at 5, converges at 6


def test_the_baseline_is_the_unconverged_runs_own_quantiles_by_hand():
    # 19 fitted runs converging at 100, 200, ..., 1900 and one that never does
    steps = np.arange(3.0)
    a = {i: _Analog(steps, np.zeros(3, dtype=int), 100.0 * (i + 1)) for i in range(19)}
    a[19] = _Analog(steps, np.zeros(3, dtype=int), math.inf)
    fmap = _toy_map(a)
    base = fmap.baseline(step=950.0, level=0.8)
    # unconverged at 950: 1000..1900 and never, n = 11; levels floor(12*0.1)/11 = 1/11 and ceil(12*0.9)/11 = 1:
    # the lower quantile is the 1st value (1000), the upper the 11th (never: open), the median the 6th (1500)
    assert base["runs"] == 11 and base["low"] == 1000.0 and base["median"] == 1500.0 and base["high"] is None
    # every run: n = 20, levels floor(2.1)/20 = 0.1 and ceil(18.9)/20 = 0.95: the 2nd (200) and 19th (1900)
    assert base["study_low"] == 200.0 and base["study_high"] == 1900.0 and base["study_median"] == 1000.0
    assert fmap.baseline(step=950.0, level=0.8, exclude=19)["high"] == 1900.0  # 10 left: the 10th value
    # a forecast is "sharper" only when its interval is narrower than the baseline's
    assert sharper({"low": 960.0, "high": 1200.0}, {"low": 1000.0, "high": 1900.0}) is True
    assert sharper({"low": 960.0, "high": 2000.0}, {"low": 1000.0, "high": 1900.0}) is False
    assert sharper({"low": 960.0, "high": None}, {"low": 1000.0, "high": 1900.0}) is False
    assert sharper({"low": 960.0, "high": None}, {"low": 1000.0, "high": None}) is None


def test_forecasts_carry_their_baseline_and_the_backtest_its_sharpness(planted, capsys):
    fmap = planted["fmap"]
    run = planted["held"][planted["held"]["seed"] == 45].head(30)
    fc = predict_run(fmap, run)["forecast"]
    if fc["method"] != "observed":
        assert fc["baseline"] == fmap.baseline(float(run["step"].max()), 0.8)
        assert fc["sharper"] == sharper(fc, fc["baseline"])
    table = planted["table"][planted["table"]["seed"] < 40]
    bt = backtest(fmap, table, fractions=(0.2, 0.5))
    rows = pd.DataFrame(bt["rows"])
    for item in bt["summary"]:
        grp = rows[(rows["fraction"] == item["fraction"]) & rows["covered"].notna()]
        widths = (grp["high"] - grp["low"]).dropna()
        base = (grp["baseline_high"] - grp["baseline_low"]).dropna()
        if len(widths) and len(base):
            assert item["sharpness_gain"] == pytest.approx(1 - widths.median() / base.median())
        scored = grp[grp["baseline_covered"].notna()]
        if len(scored):
            assert item["baseline_coverage"] == pytest.approx(scored["baseline_covered"].astype(bool).mean())


def test_forecast_intervals_cover_held_out_convergence_at_about_the_nominal_rate(planted):
    fmap, truth = planted["fmap"], planted["truth"]
    covered, n = 0, 0
    for seed, run in planted["held"].groupby("seed"):
        true = truth.convergence[int(seed)]
        for cut in (30, 60):
            res = predict_run(fmap, run.head(cut), PredictConfig(level=0.8))
            if res["converged_at"] is not None:
                assert res["converged_at"] == true  # the observed crossing is the planted one
                continue
            fc = res["forecast"]
            hi = math.inf if fc["high"] is None else fc["high"]
            covered += fc["low"] <= (math.inf if true is None else true) <= hi
            n += 1
    assert n >= 30
    # 80 % nominal; with n ~ 40-60 a binomial 99 % band is about +-15 points
    assert 0.65 <= covered / n <= 0.99


def test_backtest_leaves_each_run_out_of_its_own_analogs(planted):
    fmap = planted["fmap"]
    table = planted["table"][planted["table"]["seed"] < 40]
    bt = backtest(fmap, table, fractions=(0.2,))
    rows = pd.DataFrame(bt["rows"])
    assert len(rows) == 40 and set(bt["summary"][0]) >= {"coverage", "n", "median_width"}
    # leaving a run out changes its own forecast when it is an analog of itself
    seed = max(planted["truth"].convergence[s] or 10**9 for s in range(40))
    seed = next(s for s in range(40) if (planted["truth"].convergence[s] or 10**9) == seed)
    run = table[table["seed"] == seed].head(5)
    with_self = predict_run(fmap, run)["forecast"]
    without = predict_run(fmap, run, exclude=seed)["forecast"]
    assert with_self["method"] != "observed"
    assert with_self["analogs"] > without["analogs"]


def test_predict_api_and_errors(planted):
    res = predict(planted["fit"], planted["held"][planted["held"]["seed"].isin([41, 42])])
    assert [r["seed"] for r in res] == [41, 42]
    json.dumps(res)  # plain data
    bad = planted["held"][planted["held"]["seed"] == 41].drop(columns=["l1"])
    from latent.errors import UserError
    with pytest.raises(UserError, match="l1"):
        predict(planted["fit"], bad)
    with pytest.raises(UserError, match="level"):
        predict(planted["fit"], planted["held"], PredictConfig(level=1.5))


def test_cli_predict_table_json_and_one_line_errors(planted, capsys):
    store = str(planted["store"])
    assert main(["predict", "--store", store, "--fit", "sim", "new:41", "new:42"]) == 0
    out = capsys.readouterr().out
    assert "new:41" in out and "risk" in out and "next:" in out
    assert main(["predict", "--store", store, "--fit", "sim", "new:41", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"]["new:41"]["converged_at"] == planted["truth"].convergence[41]
    for argv, needle in ((["predict", "--store", store, "--fit", "nosuch", "new"], "nosuch"),
                         (["predict", "--store", store, "--fit", "sim", "new:x"], "STUDY:SEED"),
                         (["predict", "--store", store, "--fit", "sim", "new", "--level", "2"], "--level")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err


def test_watch_warns_once_per_detour_and_stops_when_done(planted, tmp_path, capsys):
    fmap = planted["fmap"]
    d = fmap.detours[0]
    # a run that visits the detour, written as it grows: partial manifests, then done
    seed = next(s for s, p in planted["truth"].paths.items() if s >= 40 and d in _fit_states(fmap, planted, s))
    run = planted["held"][planted["held"]["seed"] == seed].reset_index(drop=True)
    root = tmp_path / "growing"
    atomic_write_json(root / "study.json", {"format": "latent.study/1", "name": "growing", "task": "simulated",
                                            "seeds": [seed], "step_unit": "step", "features": fmap.features,
                                            "convergence": {"metric": "val_acc", "threshold": 0.9, "direction": "above"}})
    study = Study(root)
    watcher = Watcher(fmap, study)
    warnings = 0
    for n in range(20, len(run) + 1, 20):
        atomic_write_parquet(study.run_table_path(seed), run.head(n))
        atomic_write_json(study.run_manifest_path(seed), {"format": "latent.run/1", "seed": seed,
                                                          "status": "done" if n == len(run) else "running",
                                                          "rows": n, "last_step": int(run["step"].iloc[n - 1])})
        lines, finished = watcher.poll()
        warnings += sum(line.startswith("warning:") for line in lines)
        assert finished == (n == len(run))
        again, _ = watcher.poll()
        assert again == []  # nothing new, nothing printed
    assert warnings == 1
    assert main(["watch", "--store", str(tmp_path), "--fit", str(planted["fit"]), "--study", "growing", "--once"]) == 0
    out = capsys.readouterr().out
    assert "every run of growing is done" in out and f"seed {seed}" in out


def _fit_states(fmap, planted, seed):
    run = planted["held"][planted["held"]["seed"] == seed]
    path, _ = fmap.decode(run[fmap.features].to_numpy(float))
    # the first decoded entry must come at a later checkpoint than the first poll
    return set(path[25:].tolist()) - set(path[:25].tolist())


def test_a_closed_pipe_is_not_an_error(planted):
    """`latent predict ... | head -1`: the reader leaving early is no error line and exit 0."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "latent", "predict", "--store", str(planted["store"]), "--fit",
                             "sim", "new", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "error" not in err and "Traceback" not in err
