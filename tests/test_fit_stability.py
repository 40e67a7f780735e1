"""Stability under resampling of runs: planted states and detours recur, a fork branch does not become one."""

import numpy as np
import pytest

from latent.fit import FitConfig, fit_study
from latent.simulate import SimConfig, simulate, write_study
from latent.stability import match_states, resample_stability
from latent.store import Study


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    table, truth = simulate(SimConfig(n_main=3, detours=1, forks=1, p_take=0.4, detour_scale=1.2, n_runs=40,
                                      n_checkpoints=150, separation=4.0, seed=21))
    root = write_study(tmp_path_factory.mktemp("stab") / "s", table, truth)
    cfg = FitConfig(max_states=7, restarts=2, n_iter=20, n_boot=50, resamples=12, criterion="loglik")
    return fit_study(Study(root), cfg, n_jobs=2), truth


def test_planted_detour_recurs_and_fork_does_not(fitted):
    result, truth = fitted
    assert result.selector.n_states_ == truth.n_states == 6
    stab = result.analysis["stability"]
    assert stab["used"] == 12 and stab["failures"] == []
    assert all(found >= 10 for found in stab["state_found"])
    detours = result.analysis["detours"]
    assert len(detours) == 1
    assert detours[0]["stability"]["detour_found"] >= 10
    assert sum(stab["new_detours"].values()) <= 3
    assert stab["k_folds"].get("6", 0) >= 4


def test_resampling_is_seeded_and_independent_of_jobs(fitted):
    result, _ = fitted
    fm = result.features
    y = np.array([result.analysis["convergence"]["times"][str(s)] or 10**9 for s in fm.seeds], dtype=float)
    flagged = [d["state"] for d in result.analysis["detours"]]
    args = (fm.X, fm.lengths, result.selector.params_, "full", y, np.ones(len(y), bool), flagged)
    a = resample_stability(*args, resamples=4, n_iter=10, random_state=3, n_jobs=1)
    b = resample_stability(*args, resamples=4, n_iter=10, random_state=3, n_jobs=2)
    c = resample_stability(*args, resamples=4, n_iter=10, random_state=4, n_jobs=2)
    assert a == b
    assert a["seed"] == 3 and c["seed"] == 4


def test_match_states_is_a_permutation_by_nearest_means():
    ref = np.array([[0.0, 0], [5, 0], [0, 5]])
    moved = ref[[2, 0, 1]] + 0.1
    assert match_states(ref, moved).tolist() == [1, 2, 0]


def test_each_state_entry_gets_an_interval_that_covers_where_the_truth_enters_it(fitted):
    """The median entry step of each planted state over all runs lies inside the interval the
    resamples give the fitted state matched to it (and the intervals are ordered like the chain)."""
    from scipy.optimize import linear_sum_assignment

    result, truth = fitted
    stab = result.analysis["stability"]
    paths = result.paths.sort_values(["seed", "step"])
    fit_states = paths["state"].to_numpy()
    true_states = np.concatenate([truth.paths[s][:int((paths["seed"] == s).sum())] for s in sorted(truth.paths)])
    K = truth.n_states
    conf = np.zeros((K, K))
    np.add.at(conf, (true_states, fit_states), 1)
    rows, cols = linear_sum_assignment(-conf)
    step = truth.config.step_every
    covered = 0
    for t, f in zip(rows, cols):
        entries = [np.argmax(truth.paths[s] == t) * step for s in truth.paths if np.any(truth.paths[s] == t)]
        iv = stab["entry_interval"][f]
        if t == 0 or iv is None:
            continue
        covered += iv["low"] - step <= np.median(entries) <= iv["high"] + step
    assert covered >= K - 2  # all but the start state, one miss allowed


def test_library_failures_are_said_in_the_tools_words():
    import numpy as np

    from latent.hmm import failure_reason

    said = failure_reason(ValueError("'covars' must be symmetric, positive-definite"))
    assert said == "a state's covariance collapsed (no longer positive definite)" and "covars" not in said
    assert failure_reason(np.linalg.LinAlgError("Singular matrix")) == "a state's covariance could not be inverted"
    assert failure_reason(RuntimeError("something else")) == "the EM fit failed (RuntimeError)"
