"""Posterior predictive checks (latent.ppc) and the families' samplers (StateFamily.sample).

Expectations: statistics of hand-made runs computed by hand; samplers checked against the moments
their parameters imply; a model that matches the data passes its checks and one that ignores the
data's autocorrelation fails exactly that check.
"""

import numpy as np
import pytest

from latent.family import get_family
from latent.hmm import HMMSelector
from latent.ppc import posterior_predictive, study_statistics


def test_study_statistics_by_hand():
    # one run: 12 checkpoints in state 0 alternating +1/-1 (autocorrelation of the demeaned stretch:
    # sum of products -11 over sum of squares 12), then 3 in state 1 (too short to count)
    z = np.r_[np.tile([1.0, -1.0], 6), [5.0, 6.0, 7.0]][:, None]
    path = np.r_[np.zeros(12, int), np.ones(3, int)]
    st = study_statistics([z, z], [path, path], 2)
    assert st["autocorrelation"] == pytest.approx(-11 / 12)
    assert st["dwell"] == pytest.approx(7.5) and st["visits"] == pytest.approx(2.0)
    # run-to-run spread needs 3 runs with >= 5 rows in a state: three runs whose state-0 means are 0, 1, 2
    runs = [np.r_[np.tile([1.0, -1.0], 6) + m][:, None] for m in (0.0, 1.0, 2.0)]
    st = study_statistics(runs, [np.zeros(12, int)] * 3, 1)
    within = np.sqrt(np.var(np.tile([1.0, -1.0], 6), ddof=1))
    assert st["run_spread"] == pytest.approx(1.0 / within)


def test_samplers_draw_what_their_parameters_say():
    rng = np.random.default_rng(0)
    d = 2
    base = {"startprob": np.array([1.0, 0.0]), "transmat": np.array([[0.9, 0.1], [0.0, 1.0]]),
            "means": np.array([[0.0, 0.0], [4.0, -2.0]]), "covars": np.array([np.eye(d) * 0.25] * 2)}
    runs, paths = get_family("gaussian").sample(base, [400] * 30, rng)
    X, P = np.concatenate(runs), np.concatenate(paths)
    assert (np.stack(paths)[:, 0] == 0).all()
    np.testing.assert_allclose(X[P == 1].mean(axis=0), [4.0, -2.0], atol=0.05)
    np.testing.assert_allclose(X[P == 1].std(axis=0), [0.5, 0.5], atol=0.05)
    # the first stay in state 0 is geometric with mean 1 / 0.1
    first_stay = [np.argmax(p == 1) for p in paths if (p == 1).any()]
    assert np.mean(first_stay) == pytest.approx(10, rel=0.25)
    ham = dict(base, phi=np.array([0.9, 0.5]), start_var=np.array([0.25, 0.25]))
    runs, paths = get_family("hamilton").sample(ham, [400] * 30, rng)
    dev = np.concatenate([r[1:] - ham["means"][p[1:]] for r, p in zip(runs, paths)])
    prev = np.concatenate([r[:-1] - ham["means"][p[:-1]] for r, p in zip(runs, paths)])
    slope = (dev * prev).sum(axis=0) / (prev * prev).sum(axis=0)
    np.testing.assert_allclose(slope, [0.9, 0.5], atol=0.03)


def _ar_runs(n=20, T=200, rho=0.95, seed=1):
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(n):
        level = np.where(np.arange(T) < rng.integers(60, 120), 0.0, 3.0)
        e = np.zeros(T)
        for t in range(1, T):
            e[t] = rho * e[t - 1] + np.sqrt(1 - rho**2) * 0.3 * rng.normal()
        runs.append(np.column_stack([level + e, -level + e[::-1]]))
    return runs


def test_the_model_that_matches_the_data_passes_and_the_one_that_does_not_fails():
    for rho, family, expect_ac_outside in ((0.0, "gaussian", False), (0.95, "gaussian", True)):
        runs = _ar_runs(rho=rho)
        X, L = np.concatenate(runs), np.array([len(r) for r in runs])
        sel = HMMSelector(max_states=2, restarts=1, n_jobs=1, family=family, random_state=0).fit(X, L)
        path = sel.predict(X, L)
        off = np.concatenate([[0], np.cumsum(L)])
        out = posterior_predictive(sel.params_, family, "full", runs, [path[off[i]:off[i + 1]] for i in range(len(L))],
                                   n_sims=20, random_state=0)
        by = {r["name"]: r for r in out["statistics"]}
        assert by["autocorrelation"]["outside"] is expect_ac_outside, (rho, by["autocorrelation"])
        assert not by["dwell"]["outside"] and not by["visits"]["outside"]
        assert out["n_sims"] == 20
