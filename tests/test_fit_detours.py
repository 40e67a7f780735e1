"""Convergence time, detour tests, the occupancy regression and trajectory dissimilarity."""

from itertools import combinations

import numpy as np
import pytest
from scipy import stats
from scipy.stats import wasserstein_distance

from latent.detours import (
    OccupancyRegression,
    convergence_step,
    detour_tests,
    entry_steps,
    paper_detours,
    restricted_times,
    trajectory_dissimilarity,
    wasserstein,
    welch_interval,
)


def test_convergence_step_is_strict_and_directional():
    steps = np.array([0, 10, 20, 30])
    acc = np.array([0.5, 0.9, 0.91, 0.95])
    assert convergence_step(steps, acc, 0.9, "above") == 20  # strictly greater, as the reference
    assert convergence_step(steps, acc, 0.99, "above") is None
    loss = np.array([3.0, 2.0, 1.5, 1.0])
    assert convergence_step(steps, loss, 1.5, "below") == 30


def test_restricted_times():
    y, tau = restricted_times([50, None, 900, 120], [1000, 1000, 800, 990])
    assert tau == 800  # the follow-up every run has
    np.testing.assert_array_equal(y, [50, 800, 800, 120])


def _welch(y, v):
    return stats.ttest_ind(y[v], y[~v], equal_var=False).statistic


def test_permutation_p_values_are_exact():
    # brute-force permutation distribution of both states' Welch t, against the vectorised one
    rng = np.random.default_rng(0)
    n = 10
    y = rng.normal(size=n) * 50 + 500
    visit = np.zeros((n, 2), dtype=bool)
    visit[[1, 4, 7], 0] = True
    visit[[0, 1, 2, 3, 4], 1] = True
    y[visit[:, 0]] += 60
    t_obs = np.array([_welch(y, visit[:, j]) for j in range(2)])
    t_perm = np.array([[_welch(y[p], visit[:, j]) for j in range(2)]
                       for p in (rng.permutation(n) for _ in range(6000))])
    raw = (t_perm >= t_obs - 1e-9).mean(axis=0)
    # step-down maxT: the most significant state is compared with the max over both states
    first = int(np.argmax(t_obs))
    adj_first = (t_perm.max(axis=1) >= t_obs[first] - 1e-9).mean()
    adj_second = max(adj_first, (t_perm[:, 1 - first] >= t_obs[1 - first] - 1e-9).mean())
    rows = detour_tests(visit, y, min_runs=3, n_perm=60_000, random_state=1)
    assert [r["status"] for r in rows] == ["tested", "tested"]
    assert rows[0]["delay"] == pytest.approx(y[visit[:, 0]].mean() - y[~visit[:, 0]].mean())
    assert rows[0]["t"] == pytest.approx(t_obs[0]) and rows[1]["t"] == pytest.approx(t_obs[1])
    for j in range(2):
        assert rows[j]["p_value"] == pytest.approx(raw[j], abs=0.015)
    assert rows[first]["p_adjusted"] == pytest.approx(adj_first, abs=0.015)
    assert rows[1 - first]["p_adjusted"] == pytest.approx(adj_second, abs=0.015)
    assert rows[first]["p_adjusted"] >= rows[first]["p_value"]


def test_groups_without_spread_get_the_exact_permutation_p_value():
    # 5 visitors all at tau, 5 skippers all at one earlier step: Welch t is +inf, and so is every
    # permutation that puts exactly the five late runs first: p = 1 / C(10, 5) = 1/252 exactly.
    y = np.r_[np.full(5, 3000.0), np.full(5, 1000.0)]
    visit = np.zeros((10, 1), dtype=bool)
    visit[:5, 0] = True
    with np.errstate(all="raise"):  # no inf - inf on the way
        row = detour_tests(visit, y, min_runs=5, n_perm=20_000, random_state=0)[0]
    assert row["t"] == np.inf and row["delay"] == 2000
    # binomial Monte Carlo error of 20,000 permutations around 1/252: sd 0.00044
    assert row["p_value"] == pytest.approx(1 / 252, abs=0.0015)
    assert row["p_adjusted"] == pytest.approx(row["p_value"])


def test_fork_branches_are_not_penalised_twice():
    # the two branches of a fork are one comparison seen from both sides (t_B = -t_A): maxT turns
    # the pair into one two-sided test, where Holm would double the smaller p-value
    rng = np.random.default_rng(8)
    a = rng.random(40) < 0.5
    y = 500 + rng.exponential(100, 40) + 30 * a
    fork = detour_tests(np.column_stack([a, ~a]), y, n_perm=20_000)
    p = fork[0]["p_value"]
    assert fork[1]["t"] == pytest.approx(-fork[0]["t"])
    assert 0.005 < p < 0.1  # a case where the adjustment matters
    t_obs = _welch(y, a)
    perm = np.array([_welch(y[rng.permutation(40)], a) for _ in range(6000)])
    assert fork[0]["p_adjusted"] == pytest.approx(np.mean(np.abs(perm) >= abs(t_obs) - 1e-9), abs=0.006)
    assert fork[0]["p_adjusted"] < 1.5 * p


def test_welch_interval_matches_scipy():
    rng = np.random.default_rng(2)
    a, b = rng.normal(3, 1, 7), rng.normal(0, 3, 30)
    lo, hi = welch_interval(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_status_of_each_kind_of_state():
    n = 20
    visited = np.zeros((n, 4), dtype=bool)
    visited[:, 0] = True  # obligatory
    visited[:3, 1] = True  # 3 visitors: not estimable with min_runs 5
    visited[:10, 2] = True  # tested
    y = np.arange(n, dtype=float)
    rows = detour_tests(visited, y, min_runs=5, n_perm=2000)
    assert [r["status"] for r in rows] == ["obligatory", "not_estimable", "tested", "unvisited"]
    assert rows[1]["delay"] == pytest.approx(1.0 - 11.0) and rows[1]["p_value"] is None and not rows[1]["detour"]
    assert rows[0]["delay"] is None and rows[3]["runs_visiting"] == 0
    # runs 0..9 visit state 2 and converge *earlier*: a negative delay is never a detour
    assert rows[2]["delay"] == pytest.approx(-10) and not rows[2]["detour"] and rows[2]["p_value"] > 0.9


def test_planted_delay_is_found_and_covered():
    rng = np.random.default_rng(3)
    n = 40
    visited = np.zeros((n, 2), dtype=bool)
    visited[:, 0] = rng.random(n) < 0.4  # a detour adding ~300 steps
    visited[:, 1] = rng.random(n) < 0.5  # irrelevant
    y = 1000 + rng.exponential(200, n) + np.where(visited[:, 0], 300 + rng.exponential(100, n) - 100, 0)
    rows = detour_tests(visited, y, n_perm=5000, random_state=0)
    assert rows[0]["detour"] and rows[0]["p_adjusted"] < 0.01
    assert rows[0]["ci_low"] < 300 < rows[0]["ci_high"]
    assert not rows[1]["detour"]


def test_symmetric_fork_is_not_a_detour_over_many_draws():
    # negative control: branch A or B with the same duration law; the family-wise error is held
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(300):
        a = rng.random(40) < 0.5
        visited = np.column_stack([a, ~a])
        y = 500 + rng.exponential(150, 40)
        hits += any(r["detour"] for r in detour_tests(visited, y, n_perm=400, random_state=int(rng.integers(1e6))))
    assert hits / 300 <= 0.07


def test_entry_steps_count_only_what_happens_before_convergence():
    steps = np.arange(6) * 10.0
    paths = [np.array([0, 0, 1, 1, 2, 2]), np.array([0, 2, 2, 1, 1, 1]), np.array([0, 1, 1, 2, 2, 2]),
             np.array([0, 0, 1, 1, 1, 1])]
    # run 0 converges at 35, run 1 at 20, run 2 at 15; run 3 never (restricted at tau = 50)
    y = np.array([35.0, 20.0, 15.0, 50.0])
    entry = entry_steps(paths, [steps] * 4, y, 3, converged=[True, True, True, False])
    # run 0: 0 at 0, 1 at 20; state 2 is entered at 40, after converging
    np.testing.assert_array_equal(entry[0], [0.0, 20.0, np.nan])
    # run 1: state 2 entered at 10 (before 20), state 1 at 30 only after
    np.testing.assert_array_equal(entry[1], [0.0, np.nan, 10.0])
    # run 2: converges at 15 while in state 1, entered at 10: it entered it before converging
    np.testing.assert_array_equal(entry[2], [0.0, 10.0, np.nan])
    # run 3 never converges: every state it enters up to tau counts
    np.testing.assert_array_equal(entry[3], [0.0, 20.0, np.nan])


def test_a_state_reached_only_after_convergence_is_never_a_detour():
    # the slow half of the runs ends up in a place of its own *after* converging (a seed offset
    # of the converged weights): the old test, counting any visit, called it a detour
    rng = np.random.default_rng(11)
    n, T = 40, 100
    y = np.where(np.arange(n) < 20, rng.integers(30, 40, n), rng.integers(50, 60, n)) * 10.0
    steps = np.arange(T) * 10.0
    paths = []
    for i in range(n):
        p = np.zeros(T, dtype=int)
        p[steps >= y[i]] = 1
        if i >= 20:
            p[steps >= y[i] + 100] = 2
        paths.append(p)
    entry = entry_steps(paths, [steps] * n, y, 3)
    visited_any = np.array([[np.any(p == k) for k in range(3)] for p in paths])
    rows = detour_tests(entry, y, visited_any=visited_any, n_perm=2000)
    assert rows[2]["status"] == "after_convergence" and not rows[2]["detour"]
    assert np.isnan(entry[:, 2]).all()
    # counting every visit, as before, would have called it one (visitors are exactly the slow runs)
    assert detour_tests(visited_any, y, n_perm=2000)[2]["detour"]


def test_a_state_only_slow_runs_live_to_reach_is_not_testable():
    # immortal-time bias: every run still unconverged at step 600 drifts into state 1; entering it
    # changes nothing, but its visitors are exactly the slow runs. Over 100 draws it is never called
    # a detour, while a test that ignores when runs enter it calls it one every time.
    rng = np.random.default_rng(12)
    called_now = called_naive = 0
    for _ in range(100):
        y = rng.uniform(300, 1000, 40)
        entry = np.full((40, 2), np.nan)
        entry[:, 0] = 0.0
        late = y > 620
        entry[late, 1] = 600.0 + rng.integers(0, 3, late.sum()) * 10
        rows = detour_tests(entry, y, n_perm=400, random_state=int(rng.integers(1e6)))
        called_now += rows[1]["detour"]
        assert rows[1]["status"] == "not_estimable" and rows[1]["runs_at_risk"] < 5
        called_naive += detour_tests(np.isfinite(entry), y, n_perm=400, random_state=0)[1]["detour"]
    assert called_now == 0 and called_naive >= 95


def test_a_detour_entered_mid_run_is_still_found():
    # a real detour entered at 200-400 by 16 of 40 runs, adding 300 steps: most skippers are still
    # unconverged when visitors enter it, so the state is tested, and found
    rng = np.random.default_rng(13)
    n = 40
    take = np.arange(n) < 16
    start = rng.uniform(200, 400, n)
    y = start + rng.uniform(300, 600, n) + np.where(take, 300, 0)
    entry = np.column_stack([np.zeros(n), np.where(take, start, np.nan)])
    row = detour_tests(entry, y, n_perm=4000)[1]
    assert row["status"] == "tested" and row["runs_at_risk"] >= 20 and row["detour"]
    assert row["ci_low"] < 300 < row["ci_high"]


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
    assert reg.p_value_ == pytest.approx(stats.f.sf(f, 2, 27))
    truth = beta - w @ beta
    assert np.all(reg.ci_low_[:3] < truth) and np.all(truth < reg.ci_high_[:3])
    again = OccupancyRegression(n_boot=200, random_state=1).fit(occ, y)
    np.testing.assert_array_equal(again.ci_low_, reg.ci_low_)


def test_reference_coefficients_are_sklearns():
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(5)
    occ = rng.dirichlet(np.ones(4), 25)
    y = occ @ np.array([10.0, 200, 30, 400]) + rng.normal(0, 3, 25)
    reg = OccupancyRegression(n_boot=0).fit(occ, y)
    np.testing.assert_allclose(reg.coef_reference_, LinearRegression().fit(occ, y).coef_, rtol=1e-8, atol=1e-8)


def test_rank_deficient_design():
    # states 1 and 2 are only ever visited together, in fixed proportion: not identifiable apart
    rng = np.random.default_rng(6)
    n = 20
    occ = np.zeros((n, 4))
    occ[:, 0] = rng.uniform(0.2, 0.5, n)
    both = rng.random(n) < 0.5
    occ[both, 1] = 0.1
    occ[both, 2] = 0.2
    occ[:, 3] = 1 - occ[:, :3].sum(axis=1)
    y = 100 + 500 * occ[:, 0] + 300 * both + rng.normal(0, 5, n)
    reg = OccupancyRegression(n_boot=50, min_runs=2).fit(occ, y)
    assert reg.rank_ == 3 and reg.df_model_ == 2 and reg.df_resid_ == n - 3
    assert np.isnan(reg.coef_[1]) and np.isnan(reg.coef_[2])  # reported as not estimable
    assert np.isfinite(reg.coef_[0]) and np.isfinite(reg.coef_[3])
    assert not reg.estimable_[1] and reg.estimable_[0]
    assert reg.not_estimable_ == [None, "collinear", "collinear", None]
    # a rarely visited state is not estimable either
    rare = OccupancyRegression(n_boot=0, min_runs=11).fit(occ, y)
    assert not rare.estimable_[1:3].any()


def test_paper_rule_flags_both_branches_of_a_symmetric_fork():
    # why the default rule differs: every pre-convergence state gets a positive coefficient, so
    # the paper's rule calls both branches of a fork detours; the delay test rarely calls either
    rng = np.random.default_rng(7)
    n, T, draws = 40, 200, 100
    paper_both = delay_any = 0
    for _ in range(draws):
        a = rng.random(n) < 0.5
        d0, dfork = rng.geometric(1 / 30, n), rng.geometric(1 / 30, n)
        conv = np.minimum(d0 + dfork, T - 1)
        occ = np.column_stack([d0, np.where(a, dfork, 0), np.where(a, 0, dfork), T - conv]).astype(float)
        occ = np.clip(occ, 0, None)
        occ /= occ.sum(axis=1, keepdims=True)
        visited = occ > 0
        reg = OccupancyRegression(n_boot=0).fit(occ, conv * 10.0)
        paper_both += paper_detours(reg.coef_, visited, np.ones(n, dtype=bool)) == [1, 2]
        rows = detour_tests(visited, conv * 10.0, n_perm=500, random_state=int(rng.integers(1e6)))
        delay_any += rows[1]["detour"] or rows[2]["detour"]
    assert paper_both / draws >= 0.9
    assert delay_any / draws <= 0.1


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


def test_phase_of_equal_length_in_every_run():
    # state 0 takes the same share of every run: its effect cannot be told from the mean, the
    # others' contrasts can (reference level: the mean over the comparable states)
    rng = np.random.default_rng(9)
    n = 30
    occ = np.column_stack([np.full(n, 0.2), rng.dirichlet(np.ones(3), n) * 0.8])
    beta = np.array([500.0, 100.0, 900.0, 300.0])
    y = occ @ beta + rng.normal(0, 5, n)
    reg = OccupancyRegression(n_boot=100).fit(occ, y)
    assert reg.not_estimable_ == ["collinear", None, None, None]
    assert np.isnan(reg.coef_[0]) and np.all(np.isfinite(reg.coef_[1:]))
    # independently: drop state 0 (its constant share is in the span of the others) and contrast
    b, *_ = np.linalg.lstsq(occ[:, 1:], y, rcond=None)
    w = occ[:, 1:].mean(axis=0) / occ[:, 1:].mean(axis=0).sum()
    np.testing.assert_allclose(reg.coef_[1:], b - w @ b, rtol=1e-8)
    truth = beta[1:] - w @ beta[1:]
    assert np.all(reg.ci_low_[1:] < truth) and np.all(truth < reg.ci_high_[1:])
    assert reg.reference_weights_[0] == 0 and reg.reference_weights_.sum() == pytest.approx(1)
