"""The training map: edges and counts equal a brute-force count of Viterbi transitions."""

from collections import defaultdict

import numpy as np
import pytest

from latent.fit import FitConfig, fit_study
from latent.store import Study
from latent.trainmap import build_map, map_from_data, map_to_data
from planted import emit, run_table, write_study


def brute(paths):
    runs = defaultdict(set)
    for i, p in enumerate(paths):
        for t in range(len(p) - 1):
            runs[(int(p[t]), int(p[t + 1]))].add(i)
    return {e: len(r) for e, r in runs.items()}


def test_map_edges_equal_brute_force_on_toy():
    paths = [np.array([0, 0, 1, 1, 2]), np.array([0, 2, 2, 2, 2]), np.array([0, 1, 0, 1, 2]), np.array([1, 1, 1, 1, 1])]
    raw = [np.arange(10.0).reshape(5, 2) + i for i in range(4)]
    params = {"transmat": np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.0, 0.0, 1.0]]),
              "means": np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])}
    conv = [40, 10, None, 30]
    G = build_map(paths, raw, params, ["a", "b"], conv)
    counts = brute(paths)
    expected_edges = {e: n for e, n in counts.items() if e[0] != e[1]}
    assert {(u, v): d["runs"] for u, v, d in G.edges(data=True)} == expected_edges
    assert G.edges[0, 1]["prob"] == 0.3
    # runs taking 0→1: run 0 (40) and run 2 (never converged) → mean over converged runs only
    assert G.edges[0, 1]["convergence_mean"] == 40 and G.edges[0, 1]["convergence_std"] == 0
    assert G.edges[1, 0]["convergence_mean"] is None
    assert G.edges[0, 2]["convergence_mean"] == 10
    for k in range(3):
        node = G.nodes[k]
        assert node["self_runs"] == counts.get((k, k), 0)
        assert node["self_prob"] == params["transmat"][k, k]
        assert node["n_runs"] == sum(1 for p in paths if k in p)
        allp = np.concatenate(paths)
        assert node["occupancy"] == pytest.approx(np.mean(allp == k))
        rows = np.concatenate(raw)[allp == k]
        assert node["mean"] == pytest.approx({"a": rows[:, 0].mean(), "b": rows[:, 1].mean()})
        assert node["mean_z"] == {"a": params["means"][k, 0], "b": params["means"][k, 1]}
    G2 = map_from_data(map_to_data(G))
    assert sorted(G2.edges) == sorted(G.edges) and G2.nodes[1] == G.nodes[1]
    assert "metrics" not in G.nodes[0]  # without phases, nodes carry no phase attributes


def test_map_nodes_carry_what_each_state_means():
    """build_map(phases=...) copies each state's phases onto its node; entry changes cut to ``top``."""
    paths = [np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 2, 2])]
    phases = [{"state": k, "checkpoints": 3, "runs": 2, "metrics": {"val_acc": 0.1 * k},
               "steps": {"min": 0.0, "p10": 0.0, "median": 10.0, "p90": 20.0 + k, "max": 30.0},
               "entries": k, "entered_from": {}, "entry_change": [{"feature": f, "change_z": float(i)}
                                                                  for i, f in enumerate("abcd")]}
              for k in range(3)]
    params = {"transmat": np.full((3, 3), 1 / 3), "means": np.zeros((3, 2))}
    raw = [np.zeros((5, 2)), np.zeros((5, 2))]
    G = build_map(paths, raw, params, ["a", "b"], [10, 20], phases=phases, top=2)
    for k in range(3):
        node = G.nodes[k]
        assert node["metrics"] == {"val_acc": 0.1 * k} and node["steps"]["p90"] == 20.0 + k
        assert node["entries"] == k and [c["feature"] for c in node["entry_change"]] == ["a", "b"]
    assert map_from_data(map_to_data(G)).nodes[2] == G.nodes[2]


def test_fitted_map_matches_brute_force_count(tmp_path):
    """A forking 3-state toy: runs go 0→1→2 or 0→2; the map agrees with paths.parquet.

    Global scaling: per-run z-scoring would move a run that skips state 1 relative to the others.
    """
    rng = np.random.default_rng(7)
    means = np.array([[0.0, 0, 0, 0], [8, 8, 0, 4], [0, 8, 8, 8]])
    runs = {}
    for s in range(16):
        if s % 3 == 0:
            states = np.repeat([0, 2], [20, 40])
        else:
            states = np.repeat([0, 1, 2], [15, 20, 25])
        acc = np.where(states == 2, 0.95, 0.1)
        runs[s] = run_table(s, emit(states, means, rng), ["f0", "f1", "f2", "f3"], val_acc=acc)
    root = write_study(tmp_path / "toy", runs)
    result = fit_study(Study(root), FitConfig(max_states=3, restarts=5, n_iter=20, n_boot=50, scaling="global"), n_jobs=1)
    assert result.selector.n_states_ == 3
    paths = [g["state"].to_numpy() for _, g in result.paths.groupby("seed", sort=True)]
    counts = brute(paths)
    data = result.analysis["map"]
    edges = {(e["source"], e["target"]): e["runs"] for e in data["edges"]}
    assert edges == {e: n for e, n in counts.items() if e[0] != e[1]}
    assert edges == {(0, 1): 10, (1, 2): 10, (0, 2): 6}
    # every observed edge has importance annotations, ranked
    for e in data["edges"]:
        tops = e["top_features"]
        assert len(tops) == 3 and tops[0]["importance"] >= tops[1]["importance"] >= tops[2]["importance"]
    assert {(i["source"], i["target"]) for i in result.analysis["importance"]} == set(edges)
    occ = {n["id"]: n["n_runs"] for n in data["nodes"]}
    assert occ == {0: 16, 1: 10, 2: 16}
