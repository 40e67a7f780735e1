"""Convergence time, the occupancy regression, detour states and trajectory dissimilarity."""

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from latent.detours import (
    OccupancyRegression,
    convergence_step,
    find_detours,
    trajectory_dissimilarity,
    wasserstein,
)
from latent.fit import FitConfig, fit_study
from latent.store import Study
from planted import detour_study, match_states


def test_convergence_step_is_strict_and_directional():
    steps = np.array([0, 10, 20, 30])
    acc = np.array([0.5, 0.9, 0.91, 0.95])
    assert convergence_step(steps, acc, 0.9, "above") == 20  # strictly greater, as the reference
    assert convergence_step(steps, acc, 0.99, "above") is None
    loss = np.array([3.0, 2.0, 1.5, 1.0])
    assert convergence_step(steps, loss, 1.5, "below") == 30


def test_regression_matches_intercept_parametrisation():
    rng = np.random.default_rng(0)
    occ = rng.dirichlet(np.ones(4), 30)
    occ[:, 3] = 0  # a state no run visits
    occ /= occ.sum(1, keepdims=True)
    beta = np.array([100.0, 300.0, 50.0])
    y = occ[:, :3] @ beta + rng.normal(0, 5, 30)
    reg = OccupancyRegression(n_boot=200, random_state=1).fit(occ, y)
    assert reg.states_ == [0, 1, 2] and np.isnan(reg.coef_[3]) and np.isnan(reg.ci_low_[3])
    # the same model written as intercept + 2 free fractions, solved independently
    A = np.column_stack([np.ones(30), occ[:, 1], occ[:, 2]])
    c, *_ = np.linalg.lstsq(A, y, rcond=None)
    b = np.array([c[0], c[0] + c[1], c[0] + c[2]])
    np.testing.assert_allclose(reg.beta_[:3], b)
    w = occ[:, :3].mean(axis=0)  # mean occupancy: the contrast's weights
    np.testing.assert_allclose(reg.coef_[:3], b - w @ b)
    assert reg.intercept_ == pytest.approx(w @ b) and reg.intercept_ == pytest.approx(y.mean())
    resid = y - A @ c
    r2 = 1 - resid @ resid / ((y - y.mean()) ** 2).sum()
    assert reg.r2_ == pytest.approx(r2)
    f = (r2 / 2) / ((1 - r2) / 27)
    assert reg.f_stat_ == pytest.approx(f) and reg.df_model_ == 2 and reg.df_resid_ == 27
    from scipy.stats import f as fdist

    assert reg.p_value_ == pytest.approx(fdist.sf(f, 2, 27))
    # the planted contrasts lie inside the bootstrap intervals
    truth = beta - w @ beta
    assert np.all(reg.ci_low_[:3] < truth) and np.all(truth < reg.ci_high_[:3])
    again = OccupancyRegression(n_boot=200, random_state=1).fit(occ, y)
    np.testing.assert_array_equal(again.ci_low_, reg.ci_low_)


def test_detour_rule():
    visited = np.array([[1, 1, 1], [1, 0, 1], [1, 0, 1], [1, 1, 0]], dtype=bool)
    converged = np.array([True, True, False, True])
    coef = np.array([5.0, 3.0, -8.0])
    lo, hi = np.array([1.0, -1.0, -9.0]), np.array([9.0, 7.0, -7.0])
    out = find_detours(coef, lo, hi, visited, converged)
    # state 0 is visited by every run; state 2 is optional but has a negative coefficient
    assert [d["state"] for d in out] == [1]
    assert out[0] == {"state": 1, "coef": 3.0, "ci_low": -1.0, "ci_high": 7.0, "significant": False,
                      "runs_visiting": 2, "converged_runs_skipping": 1}


def test_wasserstein_matches_scipy_on_a_line():
    rng = np.random.default_rng(0)
    pts = np.array([0.0, 1.0, 3.0, 7.0])
    ground = np.abs(pts[:, None] - pts[None, :])
    for _ in range(5):
        p, q = rng.dirichlet(np.ones(4)), rng.dirichlet(np.ones(4))
        assert wasserstein(p, q, ground) == pytest.approx(wasserstein_distance(pts, pts, p, q), abs=1e-9)


def test_dissimilarity_is_mean_pairwise_distance():
    occ = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    ground = np.array([[0, 1, 2], [1, 0, 1], [2, 1, 0]], dtype=float)
    # pairs: (0,1)=1, (0,2)=2, (1,2)=1 → 2/(3·2)·4
    assert trajectory_dissimilarity(occ, ground) == pytest.approx(4 / 3)
    assert trajectory_dissimilarity(occ[[0, 0]], ground) == 0.0


@pytest.fixture(scope="module")
def detour_fit(tmp_path_factory):
    root, truth, beta = detour_study(tmp_path_factory.mktemp("detour") / "s")
    result = fit_study(Study(root), FitConfig(max_states=5, restarts=2, n_iter=20, n_boot=300), n_jobs=2)
    return result, truth, beta


def test_planted_detour_is_recovered(detour_fit):
    result, truth, beta = detour_fit
    assert result.selector.n_states_ == 4
    path = result.paths["state"].to_numpy()
    true = np.concatenate([truth[s] for s in result.features.seeds])
    m = match_states(true, path)
    assert sorted(m.values()) == [0, 1, 2, 3]
    reg = result.analysis["regression"]
    occ_true = np.mean([np.bincount(truth[s], minlength=4) / len(truth[s]) for s in result.features.seeds], axis=0)
    expect = beta - occ_true @ beta  # planted contrasts against the mean-occupancy-weighted level
    det = m[1]
    assert reg["coef"][det] == pytest.approx(expect[1], rel=0.15)
    assert reg["coef"][m[3]] == pytest.approx(expect[3], rel=0.15)
    assert reg["r2"] > 0.9 and reg["p_value"] < 1e-6
    detours = result.analysis["detours"]
    assert [d["state"] for d in detours] == [det]
    assert detours[0]["significant"] and detours[0]["ci_low"] > 0
    assert detours[0]["runs_visiting"] == 18 and detours[0]["converged_runs_skipping"] == 18
    # obligatory states have positive coefficients too, but every run visits them: not detours
    assert reg["coef"][m[0]] > 0 and reg["coef"][m[2]] > 0


def test_planted_convergence_times_and_occupancy(detour_fit):
    result, truth, _ = detour_fit
    conv = result.analysis["convergence"]
    assert conv["never_converged"] == []
    for s in result.features.seeds:
        entered = int(np.argmax(truth[s] == 3))
        assert entered * 10 <= conv["times"][str(s)] <= (entered + 4) * 10
    occ = result.analysis["occupancy"]
    assert all(sum(v) == pytest.approx(1) for v in occ.values())
    assert result.analysis["dissimilarity"]["value"] > 0
