"""The published grokking-delay laws (latent.delay_law) against hand-computed passage times on runs
whose trajectories follow each law exactly, and their place in the backtest."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from latent.delay_law import LogitLaw, NormLaw, passage, recent_drift
from latent.predict import _law_covered, _median_error


def test_recent_drift_is_the_least_squares_slope_of_the_window():
    steps = np.arange(0, 100, 10.0)
    y = 2.0 + 0.03 * steps
    x, slope, se, m = recent_drift(steps, y, window=0.5, min_points=3)
    assert (x, m) == (y[-1], 5) and slope == pytest.approx(0.03) and se == pytest.approx(0.0, abs=1e-12)
    # with noise: numpy's polyfit on the same five points, and the textbook standard error
    rng = np.random.default_rng(0)
    noisy = y + rng.normal(0, 0.1, len(y))
    _, slope, se, m = recent_drift(steps, noisy, window=0.5, min_points=3)
    s, v = steps[-5:], noisy[-5:]
    b, a = np.polyfit(s, v, 1)
    resid = v - (a + b * s)
    assert slope == pytest.approx(b) and se == pytest.approx(math.sqrt((resid ** 2).sum() / 3 / ((s - s.mean()) ** 2).sum()))
    assert recent_drift(steps[:2], y[:2], 0.5, 3) is None
    assert recent_drift(np.full(5, 3.0), np.arange(5.0), 1.0, 3) is None  # no spread in steps


def test_passage_by_hand():
    out = passage(100.0, 1.0, np.array([2.0, 0.5, 1.0]), 0.01)
    assert out[0] == pytest.approx(200.0)  # (2 - 1) / 0.01 steps later
    assert math.isinf(out[1])  # moving away from it
    assert out[2] == 100.0  # already there
    assert math.isinf(passage(0.0, 1.0, np.array([2.0]), 0.0)[0])


def _norm_run(seed, rate, steps, start=1.0):
    return pd.DataFrame({"seed": seed, "step": steps, "l2": np.exp(start + rate * steps)})


def test_norm_law_levels_and_an_exact_first_passage():
    steps = np.arange(0, 201, 10.0)
    # fitted runs: log l2 = 1 + r t, converging at 100, 150, 200: their levels are 1 + r c, by hand
    table = pd.concat([_norm_run(s, 0.01, steps) for s in range(3)])
    levels = NormLaw().levels(table, {0: 100.0, 1: 150.0, 2: 200.0})
    assert levels == pytest.approx({0: 2.0, 1: 2.5, 2: 3.0})
    assert NormLaw().levels(table, {0: None, 1: math.inf, 2: 200.0}) == pytest.approx({2: 3.0})
    # a new run at the same rate seen to step 50 reaches 2.0, 2.5, 3.0 at 100, 150, 200 exactly
    run = _norm_run(9, 0.01, np.arange(0, 51, 10.0))
    fc = NormLaw().forecast(run, levels, 0.8)
    assert fc["method"] == "norm law" and fc["drift"] == pytest.approx(0.01) and fc["drift_se"] == pytest.approx(0, abs=1e-9)
    assert fc["median"] == pytest.approx(150.0)
    # three levels: order statistics at 80 % leave the sample on both sides (n = 3), so low is "now"
    # and high is open
    assert fc["low"] == 50.0 and fc["high"] is None
    # leaving out a level: the lower median of the other two (the smallest passage with half the
    # runs at or before it, as the analog forecast's median)
    assert NormLaw().forecast(run, levels, 0.8, exclude=2)["median"] == pytest.approx(100.0)
    assert NormLaw().forecast(run, levels, 0.8, exclude=0)["median"] == pytest.approx(150.0)
    # a norm that moves away from every level: the law says never
    away = NormLaw().forecast(_norm_run(9, -0.01, np.arange(0, 51, 10.0)), levels, 0.8)
    assert away["never"] and away["median"] is None
    assert NormLaw().forecast(run.drop(columns="l2"), levels, 0.8)["method"] == "none"


def test_logit_law_on_a_logistic_accuracy_curve():
    # val_acc = sigmoid(a + b t): logit is linear, the 0.9 crossing is (logit(0.9) - a) / b exactly
    a, b = -6.0, 0.02
    steps = np.arange(0, 201, 10.0)
    run = pd.DataFrame({"seed": 0, "step": steps, "val_acc": 1 / (1 + np.exp(-(a + b * steps)))})
    want = (math.log(0.9 / 0.1) - a) / b
    fc = LogitLaw().forecast(run, "val_acc", 0.9, 0.8)
    assert fc["method"] == "logit law" and fc["median"] == pytest.approx(want)
    assert fc["low"] == pytest.approx(want) and fc["high"] == pytest.approx(want)  # no noise: no drift error
    # a loss falling exponentially, threshold below: the log scale
    loss = pd.DataFrame({"seed": 0, "step": steps, "val_loss": 5 * np.exp(-0.01 * steps)})
    fc = LogitLaw().forecast(loss, "val_loss", 0.5, 0.8)
    assert fc["median"] == pytest.approx(math.log(10) / 0.01)
    # a flat plateau at chance: never
    flat = run.assign(val_acc=0.02)
    assert LogitLaw().forecast(flat, "val_acc", 0.9, 0.8)["never"]


def test_coverage_and_error_of_law_forecasts():
    assert _law_covered({"method": "none"}, 10.0) is None
    assert _law_covered({"method": "logit law", "never": True}, math.inf) is True
    assert _law_covered({"method": "logit law", "never": True}, 10.0) is False
    assert _law_covered({"method": "logit law", "low": 5.0, "high": None}, 1e9) is True
    assert _law_covered({"method": "logit law", "low": 5.0, "high": 8.0}, 10.0) is False
    # median absolute error over the converging runs; a missing forecast counts as infinitely wrong
    assert _median_error([10.0, 30.0, None, 5.0], [12.0, 20.0, 50.0, None]) == 10.0
    assert math.isinf(_median_error([None, None, 1.0], [1.0, 2.0, 3.0]))


def test_backtest_scores_both_laws_on_the_same_cuts(tmp_path):
    from latent.fit import FitConfig, fit_study, write_fit
    from latent.predict import FittedMap, backtest
    from latent.simulate import SimConfig, simulate, write_study
    from latent.store import Study

    table, truth = simulate(SimConfig(n_runs=12, n_checkpoints=60, seed=2))
    study = Study(write_study(tmp_path / "sim", table, truth))
    fdir = write_fit(study, fit_study(study, FitConfig(max_states=4, restarts=1, resamples=0, audit=False, folds=3)))
    bt = backtest(FittedMap(fdir), study.read_runs(), fractions=(0.2, 0.5))
    row = bt["rows"][0]
    for law in ("norm", "logit"):
        assert {f"{law}_low", f"{law}_high", f"{law}_median", f"{law}_method", f"{law}_covered"} <= set(row)
        for s in bt["summary"]:
            assert f"{law}_coverage" in s and f"{law}_median_error" in s and s[f"{law}_n"] <= s["n"]
    assert not backtest(FittedMap(fdir), study.read_runs(), fractions=(0.2,), law=False)["summary"][0].get("norm_n")
