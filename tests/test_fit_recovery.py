"""End to end: `latent fit`'s defaults recover what was planted in random simulated studies.

A bounded slice of bench/bench_recovery.py (which publishes the rates over many draws in
bench/RESULTS.md): a few draws of the standard family, and a negative control of symmetric forks.
"""

import pytest

from latent.fit import FitConfig, fit_study
from latent.simulate import SimConfig, random_config, score, simulate, write_study
from latent.store import Study

CFG = FitConfig(resamples=0, n_boot=50)


def _fit(tmp_path, family, i, T, n):
    table, truth = simulate(random_config(family, "medium", i, T, n))
    result = fit_study(Study(write_study(tmp_path / f"{family}-{i}", table, truth)), CFG, n_jobs=2)
    return truth, score(truth, result.paths, result.analysis)


@pytest.mark.slow
def test_standard_family_k_states_and_detours(tmp_path):
    scores = [_fit(tmp_path, "standard", i, 200, 40)[1] for i in range(6)]
    assert sum(s["k_ok"] for s in scores) >= 5, [(s["k_true"], s["k_fit"]) for s in scores]
    assert all(s["state_accuracy"] >= 0.9 for s in scores)
    assert sum(s["false_detours"] for s in scores) == 0
    planted = sum(s["detours_true"] for s in scores)
    assert planted >= 3 and sum(s["detours_found"] for s in scores) >= planted - 1


@pytest.mark.slow
def test_symmetric_forks_are_not_detours(tmp_path):
    # negative control: optional states whose visitors converge no later than anyone
    for seed in range(4):
        table, truth = simulate(SimConfig(n_main=4, detours=0, forks=2, p_take=0.5, n_runs=40, n_checkpoints=200,
                                          seed=100 + seed))
        result = fit_study(Study(write_study(tmp_path / f"fork-{seed}", table, truth)), CFG, n_jobs=2)
        s = score(truth, result.paths, result.analysis)
        assert s["k_ok"] and s["flagged"] == [], (s["k_fit"], s["flagged"])
        assert sum(r["status"] == "tested" for r in result.analysis["states"]) >= 2  # the forks were tested
