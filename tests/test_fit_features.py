"""Features: the one adapter between the trajectory table and (X, lengths)."""

import logging

import numpy as np
import pandas as pd
import pytest
from scipy.stats import zscore

from latent.errors import UserError
from latent.features import REFERENCE_FEATURES, build_features


def table(n_runs=3, T=20, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(n_runs):
        frames.append(pd.DataFrame({"seed": s, "step": np.arange(T) * 5, "epoch": np.arange(T, dtype=float),
                                    "a": rng.normal(s, 1 + s, T), "b": rng.normal(-s, 2, T), "c": rng.normal(0, 1, T)}))
    return pd.concat(frames[::-1], ignore_index=True).sample(frac=1, random_state=1)  # any row order


def test_per_run_zscore_matches_scipy_population_std():
    t = table()
    fm = build_features(t, ["a", "b"], first_n=15)
    assert fm.seeds == [0, 1, 2] and fm.lengths.tolist() == [15, 15, 15]
    for i, s in enumerate(fm.seeds):
        run = t[t.seed == s].sort_values("step").head(15)
        expect = zscore(run[["a", "b"]].to_numpy(), axis=0, ddof=0)
        np.testing.assert_allclose(fm.split(fm.X)[i], expect)
        np.testing.assert_allclose(fm.split(fm.raw)[i], run[["a", "b"]].to_numpy())
        np.testing.assert_array_equal(fm.split(fm.steps)[i], np.arange(15) * 5)
        assert fm.scaling["per_run"][str(s)]["std"] == pytest.approx(run[["a", "b"]].std(ddof=0).tolist())


def test_global_scaling_pools_runs():
    t = table()
    fm = build_features(t, ["a"], scaling="global")
    raw = t.sort_values(["seed", "step"])["a"].to_numpy()
    np.testing.assert_allclose(fm.X[:, 0], (raw - raw.mean()) / raw.std())
    assert fm.scaling["kind"] == "global"


def test_constant_feature_is_zero_not_nan(caplog):
    t = table()
    t["k"] = 3.0
    t.loc[t.seed == 1, "a"] = 7.0
    with caplog.at_level(logging.WARNING, logger="latent"):
        fm = build_features(t, ["a", "k"])
    assert np.all(np.isfinite(fm.X))
    assert np.all(fm.split(fm.X)[1][:, 0] == 0) and np.all(fm.X[:, 1] == 0)
    assert "constant feature" in caplog.text and "k in 3 run(s)" in caplog.text and "a in 1 run(s)" in caplog.text


def test_nonfinite_run_is_excluded_with_named_warning(caplog):
    t = table()
    t.loc[(t.seed == 1) & (t.step == 10), "b"] = np.nan
    t.loc[(t.seed == 2) & (t.step == 15), "a"] = np.inf
    with caplog.at_level(logging.WARNING, logger="latent"):
        fm = build_features(t, ["a", "b"])
    assert fm.seeds == [0]
    assert set(fm.excluded) == {1, 2}
    assert "seed 1: non-finite values in b" in caplog.text and "seed 2: non-finite values in a" in caplog.text
    # a NaN beyond first_n does not exclude the run
    fm = build_features(t, ["a", "b"], first_n=2)
    assert fm.seeds == [0, 1, 2]


def test_unknown_feature_lists_available():
    with pytest.raises(UserError, match=r"unknown feature\(s\) zz; available: a, b, c"):
        build_features(table(), ["a", "zz"])


def test_all_runs_bad_is_an_error():
    t = table()
    t["a"] = np.nan
    with pytest.raises(UserError, match="no usable run"):
        build_features(t, ["a"])


def test_to_frame_round_trip():
    fm = build_features(table(), ["a", "b", "c"], first_n=7)
    frame = fm.to_frame({"x": np.arange(fm.X.shape[0])})
    assert list(frame.columns) == ["seed", "step", "x"]
    assert frame.groupby("seed").size().tolist() == [7, 7, 7]
    X, lengths = fm.subset([2, 0])
    np.testing.assert_array_equal(X, np.concatenate([fm.split(fm.X)[2], fm.split(fm.X)[0]]))
    assert lengths.tolist() == [7, 7]


def test_reference_features_are_the_14_columns():
    assert len(REFERENCE_FEATURES) == 14 and "variance_lambda" in REFERENCE_FEATURES
