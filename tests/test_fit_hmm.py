"""HMM model selection: planted-state recovery, the three selection procedures, reproducible restarts,
degenerate fits, covariance repair."""

import logging

import numpy as np
import pytest

import latent.hmm as hmm_mod
from latent.errors import UserError
from latent.features import build_features
from latent.hmm import (
    HMMSelector,
    build_hmm,
    criterion_value,
    fold_runs,
    n_parameters,
    repair_covars,
    restart_seed,
    split_runs,
)
from latent.simulate import SimConfig, simulate
from planted import best_agreement

FAST = dict(max_states=5, restarts=2, n_iter=20, random_state=0, n_jobs=2)


@pytest.fixture(scope="module")
def planted():
    """40 runs from an exact 4-state HMM with a detour (simulate: one draw, easy level)."""
    table, truth = simulate(SimConfig(n_main=3, detours=1, p_take=0.4, n_runs=40, n_checkpoints=150,
                                      separation=4.0, seed=11))
    fm = build_features(table, [c for c in table.columns if c not in ("seed", "step", "epoch", "val_acc")],
                        scaling="global")
    return fm, truth


@pytest.fixture(scope="module")
def cv(planted):
    fm, _ = planted
    return HMMSelector(standardize=True, **FAST).fit(fm.X, fm.lengths)


def test_cv_picks_planted_k_and_recovers_states(planted, cv):
    fm, truth = planted
    assert cv.n_states_ == 4
    true = np.concatenate([truth.paths[s] for s in fm.seeds])
    assert best_agreement(true, cv.predict(fm.X, fm.lengths)) >= 0.97
    assert cv.fold_choice_.get(4, 0) >= 4  # the folds agree


def test_canonical_order_and_state_zero_is_where_runs_start(planted, cv):
    fm, _ = planted
    path = cv.predict(fm.X, fm.lengths)
    assert np.bincount([p[0] for p in fm.split(path)]).argmax() == 0
    assert np.all(np.diff(cv.first_visit_) >= 0) and sorted(cv.state_order_) == [0, 1, 2, 3]


def test_cv_table_sums_held_out_runs(planted, cv):
    fm, _ = planted
    folds = [np.array(g) for g in cv.folds_]
    assert sorted(np.concatenate(folds).tolist()) == list(range(40)) and len(folds) == 5
    n = int(fm.lengths.sum())
    d = fm.X.shape[1]
    for row in cv.selection_:
        assert row["bic"] == pytest.approx(-2 * row["loglik"] + n_parameters(row["k"], d, "full") * np.log(n))
        assert row["score"] == pytest.approx(-2 * row["loglik"])  # the default criterion
    # every fit's restart seed is the documented one, per fold
    for rec in cv.restarts_:
        assert rec["random_state"] == restart_seed(0, rec["k"], rec["restart"], rec["fold"])
    assert [r["random_state"] for r in cv.final_restarts_] == [restart_seed(0, 4, r) for r in range(2)]
    # the held-out log-likelihood of K = 4 is what the chosen restart of each fold scores on its runs
    k4 = [r for r in cv.restarts_ if r["k"] == 4]
    total = sum(max((r for r in k4 if r["fold"] == f and r["ok"]), key=lambda r: r["train_loglik"])["loglik"]
                for f in range(5))
    assert total == pytest.approx(next(r for r in cv.selection_ if r["k"] == 4)["loglik"])


def test_one_standard_error_rule_by_hand():
    sel = HMMSelector(selection="cv", one_se=True)
    rows = [{"k": 1, "score": 100.0, "se": 5.0}, {"k": 2, "score": 60.0, "se": 9.0},
            {"k": 3, "score": 52.0, "se": 3.0}, {"k": 4, "score": 50.0, "se": 0.0}]
    assert sel._choose(rows) == 3  # 52 - 50 <= 3; K = 2 is 10 away with se 9
    sel.one_se = False
    assert sel._choose(rows) == 4


def test_split_takes_the_best_restart_and_reference_the_mean(planted):
    fm, _ = planted
    split = HMMSelector(selection="split", criterion="bic", **FAST).fit(fm.X, fm.lengths)
    ref = HMMSelector(selection="reference", criterion="bic", init="kmeans", **FAST).fit(fm.X, fm.lengths)
    n_te = int(fm.lengths[split.test_runs_].sum())
    for sel, pick in ((split, "best"), (ref, "mean")):
        for row in sel.selection_:
            recs = [r for r in sel.restarts_ if r["k"] == row["k"] and r["ok"]]
            bics = [criterion_value("bic", r["loglik"], r["n_params"], n_te) for r in recs]
            best = max(recs, key=lambda r: r["loglik"])
            want = bics[recs.index(best)] if pick == "best" else np.mean(bics)
            assert row["score"] == pytest.approx(want)
        assert sel.n_states_ == min(sel.selection_, key=lambda r: (r["score"], r["k"]))["k"]
    assert set(split.train_runs_).isdisjoint(split.test_runs_) and len(split.test_runs_) == 8


def test_same_seed_same_model_parallel_or_not(planted, cv):
    fm, _ = planted
    again = HMMSelector(standardize=True, **dict(FAST, n_jobs=1)).fit(fm.X, fm.lengths)
    for key in ("startprob", "transmat", "means", "covars"):
        np.testing.assert_array_equal(again.params_[key], cv.params_[key])
    assert again.selection_ == cv.selection_


def test_restart_seeds_do_not_depend_on_max_states(planted):
    fm, _ = planted
    small = HMMSelector(**dict(FAST, max_states=2, selection="split", n_jobs=1)).fit(fm.X, fm.lengths)
    large = HMMSelector(**dict(FAST, max_states=3, selection="split", n_jobs=1)).fit(fm.X, fm.lengths)
    for k in (1, 2):
        a = [(r["random_state"], r["loglik"]) for r in small.restarts_ if r["k"] == k]
        b = [(r["random_state"], r["loglik"]) for r in large.restarts_ if r["k"] == k]
        assert a == b
    assert len({restart_seed(0, k, r, f) for k in range(1, 9) for r in range(5) for f in (None, 0, 1)}) == 120


def test_degenerate_restarts_are_skipped_and_reported(planted, monkeypatch, caplog):
    fm, _ = planted
    real = hmm_mod.fit_restart

    def flaky(*args, **kw):
        rec = real(*args, **kw)
        if rec["k"] == 2:  # pretend every K = 2 restart produced a non-stochastic row
            rec.update(ok=False, reason="non-stochastic transition row(s) [1]", params=None)
        return rec

    monkeypatch.setattr(hmm_mod, "fit_restart", flaky)
    with caplog.at_level(logging.WARNING, logger="latent"):
        sel = HMMSelector(**dict(FAST, max_states=3, n_iter=5, selection="split", n_jobs=1)).fit(fm.X, fm.lengths)
    row = sel.selection_[1]
    assert row["k"] == 2 and row["n_failed"] == 2 and row["score"] is None and row["bic"] is None
    assert len(row["failures"]) == 2
    assert "no restart of K=2 succeeded" in caplog.text and "non-stochastic" in caplog.text
    assert sel.n_states_ in (1, 3)


def test_degeneracy_checks():
    good = {"startprob": np.array([1.0, 0]), "transmat": np.eye(2), "means": np.zeros((2, 1)),
            "covars": np.ones((2, 1, 1))}
    assert hmm_mod._degeneracy(good) is None
    bad = dict(good, transmat=np.array([[1.0, 0], [0, 0]]))
    assert "non-stochastic" in hmm_mod._degeneracy(bad)
    assert "non-finite" in hmm_mod._degeneracy(dict(good, means=np.array([[np.nan], [0]])))


def test_thin_states_need_rows_for_their_covariance():
    assert hmm_mod.thin_states(np.array([100.0, 14.9, 15.0]), "full", 14) == [1]
    assert hmm_mod.thin_states(np.array([100.0, 1.9, 2.0]), "diag", 14) == [1]
    assert hmm_mod.thin_states(np.array([0.5, 3.0]), "tied", 14) == [0]


def test_failing_restart_never_raises():
    X = np.random.default_rng(0).normal(size=(40, 2))
    X[5, 1] = np.nan
    rec = hmm_mod.fit_restart(X, np.array([20, 20]), X, np.array([20, 20]), 2, 1, "full", 3, 1e-2)
    assert rec["ok"] is False and rec["reason"] and rec["params"] is None


def test_too_few_runs():
    with pytest.raises(UserError, match="too few runs for the held-out split: 2 usable"):
        split_runs(2, 0.2, 0)
    train, test = split_runs(3, 0.2, 0)
    assert len(train) == 2 and len(test) == 1
    with pytest.raises(UserError, match="too few runs for cross-validation"):
        fold_runs(2, 5, 0)
    assert [len(g) for g in fold_runs(3, 5, 0)] == [1, 1, 1]
    assert sorted(np.concatenate(fold_runs(11, 5, 0)).tolist()) == list(range(11))


def test_bad_settings_are_user_errors():
    X, lengths = np.zeros((10, 1)), np.array([5, 5])
    for kw in ({"max_states": 0}, {"restarts": 0}, {"covariance_type": "banana"}, {"criterion": "x"},
               {"selection": "x"}, {"init": "x"}, {"folds": 1}):
        with pytest.raises(UserError):
            HMMSelector(**kw).fit(X, lengths)


@pytest.mark.parametrize("cov", ["full", "diag", "spherical", "tied"])
def test_build_hmm_round_trip(cov):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    from hmmlearn.hmm import GaussianHMM

    m = GaussianHMM(2, covariance_type=cov, n_iter=3, random_state=0).fit(X)
    p = hmm_mod.model_params(m)
    assert p["covars"].shape == (2, 2, 2)
    m2 = build_hmm(p, cov)
    assert m2.score(X) == pytest.approx(m.score(X))
    np.testing.assert_array_equal(m2.predict(X), m.predict(X))


def test_singular_saved_covariance_is_repaired_not_a_traceback():
    # a constant feature and an exact duplicate: the covariance has rank 1 in 3 dimensions
    cov = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    params = {"startprob": [1.0, 0.0], "transmat": [[0.9, 0.1], [0.0, 1.0]], "means": np.zeros((2, 3)),
              "covars": [cov, np.eye(3) * 1e-300]}
    hmm = build_hmm(params, "full")
    assert np.isfinite(hmm.score(np.zeros((4, 3))))
    fixed = repair_covars(np.array([cov]))[0]
    assert np.linalg.eigvalsh(fixed).min() >= 1e-6 * 2 * 0.999
    healthy = np.array([[[2.0, 0.3], [0.3, 1.0]]])
    assert repair_covars(healthy)[0] is not healthy[0] and np.array_equal(repair_covars(healthy), healthy)
    for broken in ({**params, "covars": [cov]}, {**params, "means": [[np.nan] * 3] * 2},
                   {**params, "transmat": [[-1.0, 2.0], [0.0, 1.0]]}):
        with pytest.raises(UserError, match="refit"):
            build_hmm(broken, "full")


def test_underflowing_restart_is_refitted_in_log_space():
    # Held-out rows ~60 sd from every state: densities below 1e-308 make hmmlearn's "scaling"
    # forward pass underflow; the restart must be refitted with "log" and succeed.
    from latent.hmm import fit_restart

    rng = np.random.default_rng(0)
    X_tr = rng.normal(size=(200, 2))
    X_te = rng.normal(size=(50, 2)) + 60.0
    rec = fit_restart(X_tr, [100, 100], X_te, [50], 2, 7, "full", 10, 1e-2)
    assert rec["ok"], rec["reason"]
    assert rec["implementation"] == "log"
    assert rec["loglik"] < -1e4  # the held-out rows really are that improbable
    rec_in = fit_restart(X_tr, [100, 100], X_tr[:50], [50], 2, 7, "full", 10, 1e-2)
    assert rec_in["ok"] and rec_in["implementation"] == "scaling"


def test_a_chosen_k_that_cannot_be_refitted_on_all_runs_steps_down_with_a_warning(planted, caplog):
    """Every refit of the chosen K degenerate on all runs (forced here): the next smaller scored K
    is refitted and used, and the fit says so; with no K left it is one clear error."""
    fm, truth = planted
    X, lengths = fm.X, fm.lengths

    class Flaky(HMMSelector):
        broken = ()

        def _run_jobs(self, jobs, data, desc):
            out = super()._run_jobs(jobs, data, desc)
            if any(desc == f"refit K={k}" for k in self.broken):
                for rec in out:
                    rec.update(ok=False, reason="forced degenerate")
            return out

    sel = Flaky(standardize=True, **dict(FAST, n_jobs=1))
    sel.broken = (truth.n_states,)
    with caplog.at_level(logging.WARNING, logger="latent"):
        sel.fit(X, lengths)
    assert sel.n_states_ == truth.n_states - 1 and len(sel.params_["startprob"]) == truth.n_states - 1
    assert any(f"K = {truth.n_states - 1}, the next smaller one scored, is used instead" in r.getMessage()
               for r in caplog.records)
    sel = Flaky(standardize=True, **dict(FAST, n_jobs=1))
    sel.broken = tuple(range(1, truth.n_states + 1))
    with pytest.raises(UserError, match="every refit of K = "):
        sel.fit(X, lengths)
