"""The simulator behind the recovery benchmark: structure, planted delays, scoring."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from latent.errors import UserError
from latent.simulate import SimConfig, score, simulate, write_study
from latent.store import Study


def test_structure_and_paths():
    cfg = SimConfig(n_main=3, detours=1, forks=1, p_take=0.4, n_runs=30, n_checkpoints=300, seed=2)
    table, truth = simulate(cfg)
    assert truth.n_states == cfg.n_states == 6
    assert truth.kinds == ["main", "main", "main", "detour", "fork", "fork"]
    assert truth.detours == [3] and truth.optional == [3, 4, 5]
    assert len(table) == 30 * 300 and table.groupby("seed").size().eq(300).all()
    for seed, path in truth.paths.items():
        assert path[0] == 0
        visited = set(path.tolist())
        assert {0, 1}.issubset(visited)
        if 2 in visited:  # converged runs went through exactly one fork branch
            assert len(visited & {4, 5}) == 1
        runs = [k for i, k in enumerate(path) if i == 0 or k != path[i - 1]]
        assert len(runs) == len(set(runs))  # left to right: no state is entered twice
        conv = truth.convergence[seed]
        if conv is not None:
            entered = int(np.argmax(path == 2))
            assert entered * 10 <= conv <= (entered + 2) * 10
            acc = table.loc[table.seed == seed, "val_acc"].to_numpy()
            assert acc[conv // 10] == 0.95 and (conv == 0 or acc[conv // 10 - 1] == 0.5)


def test_planted_delay_is_the_detour_duration():
    # T long enough that no run is cut off: a detour adds its mean duration, a fork branch nothing
    cfg = SimConfig(n_main=3, detours=1, forks=1, p_take=0.3, detour_scale=0.5, n_checkpoints=2000,
                    progress=0.2, seed=5)
    _, truth = simulate(cfg)
    main_time = 0.2 * 2000 / 1.5
    assert truth.delay[3] == pytest.approx(0.5 * main_time * 10, rel=0.02)
    assert truth.delay[4] == 0.0 and truth.delay[5] == 0.0


def test_same_seed_same_study_and_semi_markov_is_more_regular():
    a, _ = simulate(SimConfig(seed=7, n_runs=5))
    b, _ = simulate(SimConfig(seed=7, n_runs=5))
    assert a.equals(b)
    durations = {}
    for family in ("standard", "semi_markov"):
        _, t = simulate(SimConfig(family=family, detours=0, n_main=2, n_runs=300, seed=1, n_checkpoints=400))
        durations[family] = np.array([int(np.argmax(p == 1)) for p in t.paths.values()])
    cv = {f: d.std() / d.mean() for f, d in durations.items()}
    assert cv["standard"] > 0.8 and cv["semi_markov"] < 0.5  # geometric: cv ≈ 1; gamma shape 6: ≈ 0.4


def test_drift_has_no_states():
    table, truth = simulate(SimConfig(family="drift", n_runs=4, n_checkpoints=100, seed=1))
    assert truth.n_states is None and truth.paths == {} and len(table) == 400


def test_bad_configs_are_user_errors():
    for kw in ({"family": "x"}, {"n_main": 1}, {"n_main": 2, "detours": 1, "forks": 1}, {"p_take": 1.0},
               {"n_uninformative": 14}):
        with pytest.raises(UserError):
            SimConfig(**kw)


def test_write_study_is_fittable(tmp_path):
    table, truth = simulate(SimConfig(n_runs=3, n_checkpoints=20, seed=1))
    study = Study(write_study(tmp_path / "sim", table, truth))
    assert study.run_seeds() == [0, 1, 2]
    assert study.read_meta()["convergence"]["metric"] == "val_acc"
    assert (tmp_path / "sim" / "truth.json").exists()
    assert study.status()["status"] == "done"


def test_score_of_a_perfect_and_a_wrong_fit():
    import pandas as pd

    _, truth = simulate(SimConfig(n_main=3, detours=1, forks=1, p_take=0.4, n_runs=40, n_checkpoints=200, seed=3))
    perm = np.array([2, 0, 1, 5, 3, 4])  # fitted labels are a relabelling of the truth
    seeds = sorted(truth.paths)
    paths = pd.DataFrame({"seed": np.repeat(seeds, 200), "step": np.tile(np.arange(200) * 10, len(seeds)),
                          "state": np.concatenate([perm[truth.paths[s]] for s in seeds])})
    visits = {k: sum(bool(np.any(truth.paths[s] == k)) for s in seeds) for k in range(6)}
    delay = {k: truth.delay.get(k, 0.0) for k in range(6)}
    states = [{"state": int(perm[k]), "status": "tested", "delay": delay[k],
               "ci_low": delay[k] - 1, "ci_high": delay[k] + 1} for k in range(6)]
    good = score(truth, paths, {"detours": [{"state": int(perm[3])}], "states": states})
    assert good["k_ok"] and good["state_accuracy"] == 1.0
    estimable = min(visits[3], 40 - visits[3]) >= 5
    assert good["detours_true"] == int(estimable) and good["detours_found"] == int(estimable)
    assert good["found_flagged"] == ([int(perm[3])] if estimable else [])
    assert good["false_detours"] == 0 and all(c[0] for c in good["coverage"])
    bad = score(truth, paths, {"detours": [{"state": int(perm[4])}], "states": states})  # a fork branch
    assert bad["false_detours"] == 1 and bad["detours_found"] == 0 and bad["found_flagged"] == []


def test_cli_simulate_then_fit_reports_against_the_truth(tmp_path, capsys):
    from latent.cli import main

    store = str(tmp_path / "data")
    argv = ["simulate", "--store", store, "--study", "sim", "--n-main", "2", "--detours", "1", "--p-take", "0.5",
            "--runs", "16", "--checkpoints", "80", "--separation", "5", "--seed", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "planted K = 3 (0: main, 1: main, 2: detour)" in out and "latent fit" in out
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err  # never overwrites
    assert main(["fit", "--store", store, "--max-states", "4", "--restarts", "2", "--resamples", "0",
                 "--n-boot", "20", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "planted truth: K = 3 (found)" in out and "planted detours 2: 1 of 1 testable found, 0 false" in out


def test_truth_round_trips_through_json(tmp_path):
    from latent.simulate import truth_from_file

    table, truth = simulate(SimConfig(n_main=3, forks=1, detours=1, n_runs=6, n_checkpoints=50, seed=4))
    write_study(tmp_path / "s", table, truth)
    back = truth_from_file(tmp_path / "s" / "truth.json")
    assert back.n_states == truth.n_states and back.kinds == truth.kinds and back.detours == truth.detours
    assert back.delay == truth.delay and back.convergence == truth.convergence
    assert all(np.array_equal(back.paths[s], truth.paths[s]) for s in truth.paths)
    (tmp_path / "s" / "truth.json").write_text("{not json")
    assert truth_from_file(tmp_path / "s" / "truth.json") is None


def test_a_drift_study_s_truth_has_no_states_and_reads_back(tmp_path):
    from latent.simulate import truth_from_file

    table, truth = simulate(SimConfig(family="drift", n_runs=4, n_checkpoints=30, seed=1))
    write_study(tmp_path / "d", table, truth)
    back = truth_from_file(tmp_path / "d" / "truth.json")
    assert back is not None and back.n_states is None and back.paths == {} and back.kinds == []


def test_a_truth_that_does_not_cover_the_fitted_runs_is_named_and_not_scored():
    import pandas as pd

    from latent.simulate import truth_mismatch

    table, truth = simulate(SimConfig(n_main=3, detours=0, forks=0, n_runs=4, n_checkpoints=20, seed=2))
    paths = pd.DataFrame({"seed": np.repeat([0, 1, 2, 3], 20), "step": np.tile(np.arange(20), 4), "state": 0})
    assert truth_mismatch(truth, paths) is None
    short = {**truth.paths, 1: truth.paths[1][:19]}
    assert truth_mismatch(replace(truth, paths=short), paths) == "run 1: 19 planted checkpoints, 20 fitted"
    missing = {s: p for s, p in truth.paths.items() if s != 2}
    assert truth_mismatch(replace(truth, paths=missing), paths) == "no planted path for run 2"
    wrong = {**truth.paths, 0: truth.paths[0] + truth.n_states}
    assert truth_mismatch(replace(truth, paths=wrong), paths) == "run 0: a planted state outside 0..2"


def test_realistic_family_plants_what_it_says():
    """Offsets, autocorrelation and ramps of the realistic family, measured on its own truth."""
    cfg = SimConfig(family="realistic", n_main=3, detours=0, forks=0, n_runs=60, n_checkpoints=400,
                    ar=0.95, offset=2.0, ramp=5, correlation=0.0, n_uninformative=0, seed=5)
    table, truth = simulate(cfg)
    feats = [c for c in table.columns if c not in ("seed", "step", "epoch", "val_acc")]
    runs = {s: g[feats].to_numpy() for s, g in table.groupby("seed")}
    final = 2
    # the noise: residuals about each run's own mean in the final state, far from its entry
    resid, offsets, centred = [], [], []
    for s, x in runs.items():
        rows = np.flatnonzero(truth.paths[s] == final)
        rows = rows[rows >= rows[0] + 3 * cfg.ramp] if rows.size else rows
        if rows.size >= 150:
            seg = x[rows]
            offsets.append(seg.mean(axis=0) - truth.means[final])
            r = seg - seg.mean(axis=0)
            centred.append(r)
            resid.append((r[1:] * r[:-1]).sum(axis=0) / (r * r).sum(axis=0))
    assert len(offsets) >= 20
    # lag-1 autocorrelation of an AR(0.95) over ~200+ steps (downward bias of demeaning ~ 0.02)
    assert 0.9 < np.median(resid) < 0.97
    # between-run spread of the state's mean: offset sd 2 in units of the state's noise sd,
    # plus the sampling noise of an AR(0.95) mean (small); noise sds differ by state (0.7-1.4)
    spread = np.std(offsets, axis=0, ddof=1)
    noise_sd = np.concatenate(centred).std(axis=0)
    assert 1.5 < np.median(spread / noise_sd) < 2.8
    # ramps: entering a state moves the mean over ramp + 1 checkpoints, not in one jump
    s, x = next((s, x) for s, x in runs.items() if np.any(np.diff(truth.paths[s]) != 0))
    t0 = int(np.flatnonzero(np.diff(truth.paths[s]) != 0)[0]) + 1
    steps = np.linalg.norm(np.diff(x[t0 - 1 : t0 + cfg.ramp + 2], axis=0), axis=1)
    assert steps.max() < 0.6 * np.linalg.norm(x[t0 + cfg.ramp] - x[t0 - 1])


def _state_means_per_run(table, truth, state, skip):
    feats = [c for c in table.columns if c not in ("seed", "step", "epoch", "val_acc")]
    out = {}
    for s, g in table.groupby("seed"):
        rows = np.flatnonzero(truth.paths[s] == state)
        rows = rows[rows >= rows[0] + skip] if rows.size else rows
        if rows.size >= 40:
            out[s] = g[feats].to_numpy()[rows]
    return out


@pytest.mark.parametrize("persistence", [0.0, 0.5, 1.0])
def test_realistic_offsets_persist_across_states_as_asked(persistence):
    # white noise (ar 0), no drift: a run's mean in a state is its offset there, up to the mean's noise
    cfg = SimConfig(family="realistic", n_main=3, detours=0, forks=0, n_runs=200, n_checkpoints=300,
                    ar=0.0, offset=2.0, persistence=persistence, ramp=0, correlation=0.0, n_uninformative=0,
                    progress=0.6, seed=11)
    table, truth = simulate(cfg)
    first, last = _state_means_per_run(table, truth, 1, 0), _state_means_per_run(table, truth, 2, 0)
    runs = sorted(set(first) & set(last))
    assert len(runs) >= 60
    a = np.array([first[r].mean(axis=0) for r in runs]) - truth.means[1]
    b = np.array([last[r].mean(axis=0) for r in runs]) - truth.means[2]
    corr = np.median([np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(a.shape[1])])
    # offsets of sd 2 against the means' noise (sd ~ 1/sqrt(40+)): the correlation is ~ the persistence
    assert abs(corr - persistence) < 0.12, corr


def test_realistic_drift_moves_every_run_at_its_states_velocity_centred_on_the_visit():
    base = dict(family="realistic", n_main=2, detours=0, forks=0, n_runs=40, n_checkpoints=300, ar=0.0,
                offset=0.0, ramp=0, correlation=0.0, n_uninformative=0, seed=3)
    t = np.arange(300)
    for drift in (0.0, 0.1):
        table, truth = simulate(SimConfig(**base, drift=drift))
        visits = _state_means_per_run(table, truth, 1, 0)  # the final state: one visit per run, to the end
        slopes, centred = [], []
        for x in visits.values():
            tt = t[: len(x)] - (len(x) - 1) / 2
            slopes.append((tt[:, None] * x).sum(axis=0) / (tt * tt).sum())
            centred.append(x.mean(axis=0) - truth.means[1])
        slopes = np.array(slopes)
        # the visit's mean is the state's mean: drift is centred on the visit (and offsets are 0)
        assert np.abs(np.median(centred, axis=0)).max() < 0.25
        if drift == 0:
            assert np.abs(slopes).max() < 0.05
        else:
            # one velocity per state, the same for every run: per feature, the slopes agree across runs
            # far beyond their spread, and their size is the drift's (sd 0.1 x the state's noise sd)
            v = np.median(slopes, axis=0)
            assert np.median(np.abs(v) / slopes.std(axis=0)) > 5
            assert 0.03 < np.median(np.abs(v)) < 0.2


def test_cli_simulate_realistic_takes_its_dynamics_and_refuses_them_elsewhere(tmp_path, capsys):
    from latent.cli import main

    assert main(["simulate", "--store", str(tmp_path), "--family", "realistic", "--runs", "6",
                 "--checkpoints", "50", "--ar", "0.9"]) == 0
    import json
    cfg = json.loads((tmp_path / "simulated" / "truth.json").read_text())["config"]
    assert (cfg["ar"], cfg["offset"], cfg["ramp"], cfg["persistence"], cfg["drift"]) == (0.9, 0.9, 5, 0.75, 0.12)
    capsys.readouterr()
    assert main(["simulate", "--store", str(tmp_path), "--study", "s2", "--offset", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--offset" in err[0] and "realistic" in err[0]


# --------------------------------------------------------------------------- regimes planted into real runs


def _real_like_table(n=12, T=60, seed=0):
    """Runs that memorise, plateau and converge (val_acc jumps) at run-specific times."""
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(n):
        conv = int(rng.integers(30, 45))
        t = np.arange(T)
        frames.append(pd.DataFrame({"seed": s, "step": t * 10, "epoch": t * 10.0,
                                    "a": np.log1p(t) + rng.normal(0, 0.01, T), "b": 0.02 * t + rng.normal(0, 0.01, T),
                                    "val_acc": np.where(t >= conv, 0.95, 0.1)}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("delay", [True, False])
def test_planted_regime_moves_convergence_by_exactly_its_length(delay):
    from latent.simulate import PlantConfig, plant_regime

    table = _real_like_table()
    new, truth = plant_regime(table, ["a", "b"], "val_acc", 0.9, PlantConfig(length=8, delay=delay, seed=3))
    assert len(truth.runs) == 6 and truth.delay == (80.0 if delay else 0.0)
    for s, g in table.groupby("seed"):
        h = new[new.seed == s].reset_index(drop=True)
        g = g.reset_index(drop=True)
        assert len(h) == len(g) and (h.step.to_numpy() == g.step.to_numpy()).all()  # same grid, same length
        conv_old = int(np.argmax(g.val_acc > 0.9))
        conv_new = int(np.argmax(h.val_acc > 0.9))
        if s not in truth.runs:
            pd.testing.assert_frame_equal(h, g)
            continue
        t0, L = truth.runs[s]
        assert conv_new == conv_old + (L if delay else 0)
        # before the regime the run is untouched; in it the features left the path
        pd.testing.assert_frame_equal(h.iloc[:t0], g.iloc[:t0])
        assert (h.val_acc.iloc[t0:t0 + L] == g.val_acc.iloc[t0]).all()
        if delay:  # the rest of the run comes after the regime, shifted by its length
            np.testing.assert_array_equal(h[["a", "b"]].to_numpy()[t0 + L:], g[["a", "b"]].to_numpy()[t0:len(g) - L])


def test_plant_score_finds_the_planted_state():
    from latent.simulate import PlantConfig, plant_regime, score_plant

    table = _real_like_table()
    new, truth = plant_regime(table, ["a", "b"], "val_acc", 0.9, PlantConfig(length=8, seed=3))
    rows = []
    for s, g in new.groupby("seed", sort=True):
        state = np.zeros(len(g), dtype=int)
        if s in truth.runs:
            t0, L = truth.runs[s]
            state[t0:t0 + L] = 1
        rows.append(pd.DataFrame({"seed": s, "step": g.step.to_numpy(), "state": state}))
    paths = pd.concat(rows)
    hit = score_plant(truth, paths, {"detours": [{"state": 1}]})
    assert hit["recovered"] and hit["found"] and hit["jaccard"] == 1.0 and hit["false"] == []
    miss = score_plant(truth, paths, {"detours": [{"state": 0}]})
    assert miss["recovered"] and not miss["found"] and miss["false"] == [0]
