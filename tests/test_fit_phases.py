"""What each state means (analysis.json ``phases``): checked by hand and by brute force.

A hand-made study whose runs are so well separated that the decoded paths are the planted ones;
every number of the phases block is then recomputed here, with plain loops over the planted
paths, the run tables and the saved scaling, never with ``latent.trainmap``.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from latent.fit import FitConfig, fit_id, fit_options, fit_study
from latent.store import Study
from latent.trainmap import nearest_rank, performance_columns, state_phases
from planted import FEATURES, best_agreement, emit, run_table, well_separated_means, write_study

# --------------------------------------------------------------------------- by hand


def test_state_phases_on_two_hand_paths():
    """Two runs of 8 checkpoints, window 2; every expected number worked out by hand below."""
    paths = [np.array([0, 0, 0, 1, 1, 2, 2, 2]), np.array([0, 1, 1, 1, 2, 2, 2, 2])]
    steps = [np.arange(8) * 10, np.arange(8) * 10]
    # feature a is the checkpoint index in run 0 and 10 - 2t in run 1; feature b is 0 except a jump
    z = [np.column_stack([np.arange(8.0), np.zeros(8)]),
         np.column_stack([10 - 2 * np.arange(8.0), [0, 0, 0, 0, 3, 3, 3, 3]])]
    acc = [np.array([.1, .1, .2, .5, .6, .9, 1., 1.]), np.array([.0, .4, .4, np.nan, .8, .9, .9, 1.])]
    out = state_phases(paths, steps, {"val_acc": acc}, z, ["a", "b"], n_states=4, window=2)
    s0, s1, s2, s3 = out
    # occupancy: state 0 holds 3 + 1 checkpoints, state 1 2 + 3, state 2 3 + 4; state 3 none
    assert [r["checkpoints"] for r in out] == [4, 5, 7, 0] and [r["runs"] for r in out] == [2, 2, 2, 0]
    # mean val_acc over each state's checkpoints (the NaN in run 1, state 1 is skipped)
    assert s0["metrics"]["val_acc"] == pytest.approx((.1 + .1 + .2 + .0) / 4)
    assert s1["metrics"]["val_acc"] == pytest.approx((.5 + .6 + .4 + .4) / 4)
    assert s2["metrics"]["val_acc"] == pytest.approx((.9 + 1 + 1 + .8 + .9 + .9 + 1) / 7)
    assert s3["metrics"] == {"val_acc": None} and s3["steps"] is None
    # steps: state 0 sits at 0, 10, 20 (run 0) and 0 (run 1): sorted 0, 0, 10, 20;
    # nearest rank: p10 -> 1st, median -> 2nd, p90 -> 4th value
    assert s0["steps"] == {"min": 0.0, "p10": 0.0, "median": 0.0, "p90": 20.0, "max": 20.0}
    # state 2: 50, 60, 70 and 40, 50, 60, 70 -> 40 50 50 60 60 70 70: ranks 1, 4, 7
    assert s2["steps"] == {"min": 40.0, "p10": 40.0, "median": 60.0, "p90": 70.0, "max": 70.0}
    # entries: state 0 is never entered (runs start there); 1 and 2 once per run
    assert [r["entries"] for r in out] == [0, 2, 2, 0]
    assert s1["entered_from"] == {"0": 2} and s2["entered_from"] == {"1": 2} and s0["entry_change"] == []
    # entering 1: run 0: mean a over t = 3, 4 (3.5) minus over t = 1, 2 (1.5) = +2;
    #             run 1: first two in state 1 (t = 1, 2: 8, 6 -> 7) minus the one before (t = 0: 10) = -3
    #             mean a change (2 - 3) / 2 = -0.5; b does not move: 0
    # entering 2: run 0: t = 5, 6 (5.5) - t = 3, 4 (3.5) = +2; run 1: t = 4, 5 (2, 0 -> 1) - t = 2, 3 (6, 4 -> 5) = -4
    #             a: (2 - 4) / 2 = -1; b: run 0 0, run 1 3 - 0 = 3 -> 1.5
    assert s1["entry_change"] == [{"feature": "a", "change_z": pytest.approx(-0.5)},
                                  {"feature": "b", "change_z": pytest.approx(0.0)}]
    assert s2["entry_change"] == [{"feature": "b", "change_z": pytest.approx(1.5)},
                                  {"feature": "a", "change_z": pytest.approx(-1.0)}]
    # moving: consecutive pairs inside a state. State 0: run 0 t = 0->1, 1->2 (a +1, +1); run 1 none.
    # State 1: run 0 t = 3->4 (a +1); run 1 t = 1->2, 2->3 (a -2, -2): a (1 - 4) / 3 = -1, b 0.
    # State 2: run 0 t = 5->6, 6->7 (a +1 twice); run 1 t = 4->5, 5->6, 6->7 (a -2 thrice), b 0:
    #          a (2 - 6) / 5 = -0.8. State 3: never visited.
    assert s0["moving"] == [{"feature": "a", "rate_z": pytest.approx(1.0)}, {"feature": "b", "rate_z": 0.0}]
    assert s1["moving"] == [{"feature": "a", "rate_z": pytest.approx(-1.0)}, {"feature": "b", "rate_z": 0.0}]
    assert s2["moving"][0] == {"feature": "a", "rate_z": pytest.approx(-0.8)} and s3["moving"] == []


def test_nearest_rank_is_a_value_with_enough_below():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 17, 40):
        v = rng.integers(0, 50, n).astype(float)
        for q in (0, 10, 50, 90, 100):
            got = nearest_rank(v, q)
            # brute force: the smallest value x with at least q % of the values <= x
            want = min(x for x in v if sum(y <= x for y in v) >= q / 100 * n)
            assert got == want, (n, q)


def test_performance_columns_never_invented():
    cols = ["seed", "step", "l1", "val_acc", "train_loss", "lr", "test_error", "val_loss", "valid_ppl"]
    assert performance_columns(cols, "val_acc") == ["train_loss", "val_loss", "val_acc", "test_error", "valid_ppl"]
    # the convergence metric is kept even when it is not loss/accuracy-like; absent ones never appear
    assert performance_columns(["l1", "l2", "score"], "score") == ["score"]
    assert performance_columns(["l1", "l2"], "val_acc") == []


# --------------------------------------------------------------------------- a fitted study, by brute force

T = 60
STEP = 10
N_RUNS = 12


def _planted_study(root):
    """States 0 → (1 for even seeds) → 2; performance columns with known values, one of them missing."""
    rng = np.random.default_rng(11)
    means = well_separated_means(3, len(FEATURES), scale=10.0)
    runs, truth = {}, {}
    for s in range(N_RUNS):
        d0 = 12 + s % 5
        d1 = 14 + s % 3 if s % 2 == 0 else 0
        states = np.concatenate([np.zeros(d0, int), np.ones(d1, int), np.full(T - d0 - d1, 2)])
        x = emit(states, means, rng, noise=0.5)
        extra = {
            "train_loss": np.array([3.0, 0.4, 0.05])[states] + rng.normal(0, 0.01, T),
            "val_loss": np.array([3.1, 4.5, 0.3])[states] + rng.normal(0, 0.01, T),
            "val_acc": np.where(states == 2, 0.95, np.array([0.02, 0.1, 0.0])[states]) + rng.uniform(0, 0.01, T),
            "test_error": np.array([0.9, 0.8, 0.05])[states],
            "lr": np.full(T, 1e-3),  # not a performance column: never summarised
        }
        runs[s] = run_table(s, x, FEATURES, step_every=STEP, **extra)
        truth[s] = states
    return write_study(root, runs), truth


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root, truth = _planted_study(tmp_path_factory.mktemp("phases") / "planted")
    cfg = FitConfig(max_states=3, restarts=2, n_iter=15, folds=3, n_boot=20, resamples=0)
    return root, truth, fit_study(Study(root), cfg, n_jobs=1)


def _brute_phases(root, truth_canonical, model, window=5):
    """Every number of the phases block, with loops (independent of latent.trainmap)."""
    import pandas as pd

    mean = np.array(model["scaling"]["mean"])
    std = np.array(model["scaling"]["std"])
    K = model["n_states"]
    cols = ["train_loss", "val_loss", "val_acc", "test_error"]
    vals = {k: {c: [] for c in cols} for k in range(K)}
    steps = {k: [] for k in range(K)}
    changes = {k: [] for k in range(K)}
    edge_changes = {}
    sources = {k: Counter() for k in range(K)}
    for seed, path in truth_canonical.items():
        run = pd.read_parquet(root / "runs" / f"seed-{seed:03d}.parquet")
        z = (run[FEATURES].to_numpy() - mean) / std
        for t, k in enumerate(path):
            steps[k].append(float(run["step"].iloc[t]))
            for c in cols:
                vals[k][c].append(float(run[c].iloc[t]))
            if t > 0 and path[t - 1] != k:
                j = path[t - 1]
                before, u = [], t - 1
                while u >= 0 and path[u] == j and len(before) < window:
                    before.append(z[u])
                    u -= 1
                after, u = [], t
                while u < len(path) and path[u] == k and len(after) < window:
                    after.append(z[u])
                    u += 1
                changes[k].append(np.mean(after, axis=0) - np.mean(before, axis=0))
                edge_changes.setdefault((int(j), int(k)), []).append(changes[k][-1])
                sources[k][j] += 1
    out = {}
    for k in range(K):
        s = sorted(steps[k])
        n = len(s)

        def pct(q):
            return next(x for x in s if sum(y <= x for y in s) >= q / 100 * n)

        out[k] = {
            "metrics": {c: sum(v) / len(v) for c, v in vals[k].items()},
            "steps": {"min": s[0], "p10": pct(10), "median": pct(50), "p90": pct(90), "max": s[-1]},
            "entries": len(changes[k]),
            "entered_from": {str(j): c for j, c in sorted(sources[k].items())},
            "change": np.mean(changes[k], axis=0) if changes[k] else None,
        }
    out["edges"] = {e: np.mean(v, axis=0) for e, v in edge_changes.items()}
    return out


def test_fitted_phases_equal_brute_force(fitted):
    root, truth, result = fitted
    K = result.selector.n_states_
    assert K == 3
    decoded = {int(s): g["state"].to_numpy() for s, g in result.paths.groupby("seed", sort=True)}
    flat_fit = np.concatenate([decoded[s] for s in sorted(truth)])
    flat_true = np.concatenate([truth[s] for s in sorted(truth)])
    assert best_agreement(flat_true, flat_fit) == 1.0  # the decoded paths are the planted ones
    relabel = {int(t): int(Counter(flat_fit[flat_true == t]).most_common(1)[0][0]) for t in range(3)}
    truth_canonical = {s: np.array([relabel[int(x)] for x in p]) for s, p in truth.items()}

    ph = result.analysis["phases"]
    # the study's performance columns, HMM features or not; train_acc is absent, so it is absent here
    assert ph["metrics"] == ["train_loss", "val_loss", "val_acc", "test_error"]
    assert ph["window"] == 5 and ph["percentiles"] == [10, 90] and ph["scaling"] == "global"
    expect = _brute_phases(root, truth_canonical, result.model)
    for row in ph["states"]:
        k = row["state"]
        e = expect[k]
        assert set(row["metrics"]) == set(ph["metrics"]) and "train_acc" not in row["metrics"]
        for c, v in e["metrics"].items():
            assert row["metrics"][c] == pytest.approx(v, rel=1e-12), (k, c)
        assert row["steps"] == e["steps"], k
        assert row["entries"] == e["entries"] and row["entered_from"] == e["entered_from"], k
        assert row["runs"] == sum(1 for p in truth_canonical.values() if k in p)
        assert row["checkpoints"] == sum(int((p == k).sum()) for p in truth_canonical.values())
        if e["change"] is None:
            assert row["entry_change"] == []
            continue
        got = {c["feature"]: c["change_z"] for c in row["entry_change"]}
        assert got == pytest.approx(dict(zip(FEATURES, e["change"].tolist())), abs=1e-9)
        ranked = [c["feature"] for c in row["entry_change"]]
        assert ranked == sorted(FEATURES, key=lambda f: (-abs(got[f]), FEATURES.index(f)))
    # the planted detour (state 1 in the truth) is entered only from the start state, by the even seeds
    d = ph["states"][relabel[1]]
    assert d["entered_from"] == {str(relabel[0]): N_RUNS // 2} and d["runs"] == N_RUNS // 2


def test_the_maps_arrows_and_the_state_table_report_one_change_on_entering(fitted):
    """Each arrow's feature changes are the data's change on that move (brute force, per edge); for a
    state entered from one state only, they are the state table's "entering it" numbers."""
    root, truth, result = fitted
    decoded = {int(s): g["state"].to_numpy() for s, g in result.paths.groupby("seed", sort=True)}
    expect = _brute_phases(root, decoded, result.model)
    edges = {(e["source"], e["target"]): e for e in result.analysis["map"]["edges"]}
    assert set(edges) == set(expect["edges"])
    for (j, k), edge in edges.items():
        want = dict(zip(FEATURES, expect["edges"][(j, k)].tolist()))
        assert edge["top_features"]
        for f in edge["top_features"]:
            assert f["change_z"] == pytest.approx(want[f["feature"]], abs=1e-9), (j, k, f)
    for row in result.analysis["phases"]["states"]:
        if len(row["entered_from"]) == 1:
            (j,) = [int(x) for x in row["entered_from"]]
            table = {c["feature"]: c["change_z"] for c in row["entry_change"]}
            for f in edges[(j, row["state"])]["top_features"]:
                assert f["change_z"] == pytest.approx(table[f["feature"]], abs=1e-12)


def test_phases_reach_the_map_nodes_and_the_summary(fitted):
    _, _, result = fitted
    ph = {r["state"]: r for r in result.analysis["phases"]["states"]}
    nodes = {n["id"]: n for n in result.analysis["map"]["nodes"]}
    for k, row in ph.items():
        node = nodes[k]
        assert node["metrics"] == row["metrics"] and node["steps"] == row["steps"]
        assert node["entries"] == row["entries"] and node["entry_change"] == row["entry_change"][:3]
    text = "\n".join(result.summary)
    assert "what each state means" in text
    for k, row in ph.items():
        line = next(ln for ln in result.summary if ln.startswith(f"  state {k} · {row['name']}: train_loss"))
        m = row["metrics"]
        st = row["steps"]
        assert f"val_acc {m['val_acc']:.2f}" in line and f"train_loss {m['train_loss']:.3g}" in line
        assert f"epochs {int(st['p10'])}–{int(st['p90'])} (min–max {int(st['min'])}–{int(st['max'])})" in line
        if row["entries"]:
            top = row["entry_change"][0]
            arrow = "↑" if top["change_z"] > 0 else "↓"
            assert f"entering it: {top['feature']} {arrow}{abs(top['change_z']):.2f} z" in line
        else:
            assert "never entered (runs start in it)" in line
    # the summary's phase lines come right after the per-state lines, then the transitions verdict,
    # then the detours
    i = next(i for i, ln in enumerate(result.summary) if ln.startswith("what each state means"))
    assert result.summary[i - 1].startswith("  state ") and result.summary[i + 4].startswith("transitions (")
    assert result.summary[i + 5].startswith("detour states")


def test_phases_survive_the_json_round_trip(fitted, tmp_path):
    _, _, result = fitted
    text = json.dumps(result.analysis["phases"], sort_keys=True)
    assert json.loads(text) == result.analysis["phases"]
    assert not re.search(r"NaN|Infinity", text)


# --------------------------------------------------------------------------- fit ids name their options


def test_fit_id_names_the_options_that_differ_from_the_defaults():
    default = FitConfig(metric="val_acc", threshold=0.9, direction="above")
    assert re.fullmatch(r"full-loglik-[0-9a-f]{8}", fit_id(default))
    assert fit_options(default) == []
    ref = FitConfig.reference(metric="val_acc", threshold=0.9, direction="above")
    assert re.fullmatch(r"full-bic-reference-[0-9a-f]{8}", fit_id(ref))
    odd = FitConfig(metric="val_acc", threshold=0.9, direction="above", features=("l1", "l2"), covariance="diag",
                    max_states=6, resamples=0, one_se=False, scaling="per_run", alpha=0.01, test_fraction=0.25)
    assert fit_options(odd) == ["2feat", "perrun", "max6", "bestk", "test0.25", "alpha0.01", "resamples0"]
    assert fit_id(odd).startswith("diag-loglik-2feat-perrun-max6-bestk-test0.25-alpha0.01-resamples0-")
    # different settings never share an id, even when no token names the difference (the threshold)
    other = FitConfig(metric="val_acc", threshold=0.8, direction="above")
    assert fit_options(other) == [] and fit_id(other) != fit_id(default)
    # the reference's model selection alone is not the reference's procedure
    alone = FitConfig(metric="val_acc", threshold=0.9, direction="above", selection="reference")
    assert fit_options(alone) == ["refselect"]


def test_report_recomputes_the_same_phases_for_a_fit_without_them(fitted):
    """A fit written before the phases block: the report's fallback, from paths.parquet, the run
    tables and model.json's scaling, gives what `latent fit` would have written."""
    import matplotlib

    matplotlib.use("Agg")
    from latent.fit import write_fit
    from latent.reports.artifacts import load_fit

    root, _, result = fitted
    fit_dir = write_fit(Study(root), result)
    analysis = json.loads((fit_dir / "analysis.json").read_text())
    saved = analysis.pop("phases")
    (fit_dir / "analysis.json").write_text(json.dumps(analysis))
    computed = load_fit(root.parent, root.name, fit_dir.name).phases
    assert computed["computed"] is True and computed["metrics"] == saved["metrics"]
    for got, want in zip(computed["states"], saved["states"]):
        assert got["metrics"] == pytest.approx(want["metrics"]) and got["steps"] == want["steps"]
        assert got["entries"] == want["entries"] and got["entered_from"] == want["entered_from"]
        assert [c["feature"] for c in got["entry_change"]] == [c["feature"] for c in want["entry_change"]]
        assert [c["change_z"] for c in got["entry_change"]] == pytest.approx(
            [c["change_z"] for c in want["entry_change"]], abs=1e-9)
