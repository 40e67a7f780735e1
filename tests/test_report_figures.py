"""The report's plot functions, checked against the hand-made toy fit (headless, Agg).

We test the data handed to matplotlib (nodes, edges, line collections, colours, hatches),
not pixels; the expected values come from the fixture's constants in report_fixtures.py.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.colors import to_hex, to_rgba
from matplotlib.figure import Figure

from report_fixtures import (
    TOY_COEF,
    TOY_CONVERGENCE,
    TOY_DETOURS,
    TOY_EDGES,
    TOY_FIRST_N,
    TOY_K,
    TOY_N_STEPS,
    TOY_SEGMENTS,
    TOY_STEP_EVERY,
    TOY_TOP_FEATURE,
    make_fit_study,
    make_toy_fit,
)
from reports import figures as F
from reports.artifacts import load_fit
from reports.palette import STATE_COLORS, UNDECODED, state_color, state_colors


@pytest.fixture(scope="module")
def fit(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    make_toy_fit(store)
    return load_fit(store)


def _ax():
    return Figure(figsize=(8, 5)).add_subplot()


def _expected_states(seed: int) -> np.ndarray:
    """Decoded state per checkpoint of the toy fixture; -1 beyond first_n."""
    seq = np.concatenate([np.full(n, s) for s, n in TOY_SEGMENTS[seed]])
    return np.concatenate([seq, np.full(TOY_N_STEPS - TOY_FIRST_N, -1)])


# --------------------------------------------------------------------------- palette


def test_palette_is_distinct_and_stable():
    assert len(set(STATE_COLORS)) == len(STATE_COLORS) >= 17
    assert state_colors(9)[:7] == list(STATE_COLORS[:7])
    assert state_color(3) == state_color(3 + len(STATE_COLORS))
    assert UNDECODED not in STATE_COLORS
    assert "#000000" not in STATE_COLORS  # black is kept for marks and detour outlines


# --------------------------------------------------------------------------- loader


def test_loader_reads_the_contract(fit):
    assert fit.n_states == TOY_K
    assert fit.seeds == sorted(TOY_SEGMENTS)
    assert fit.convergence_times == TOY_CONVERGENCE
    assert fit.detour_states == TOY_DETOURS
    assert fit.feature_ranking[0][0] == TOY_TOP_FEATURE
    for seed in TOY_SEGMENTS:
        got = fit.runs.loc[fit.runs["seed"] == seed, "state"].to_numpy()
        np.testing.assert_array_equal(got, _expected_states(seed))


# --------------------------------------------------------------------------- training map


def test_training_map_nodes_edges_and_detour(fit):
    ax = _ax()
    info = F.plot_training_map(ax, fit)
    assert info["nodes"] == list(range(TOY_K))  # one node per state
    assert sorted(info["edges"]) == sorted(TOY_EDGES)  # one edge per observed transition
    assert len(info["arrows"]) == len(TOY_EDGES)
    assert sum(p in ax.patches for p in info["arrows"]) == len(TOY_EDGES)
    # left to right in canonical order
    xs = [info["pos"][n][0] for n in info["nodes"]]
    assert xs == sorted(xs) and len(set(xs)) == TOY_K
    # the fork: 0->1->3 is the backbone (1->3 and 1->2 tie on runs; 3 is visited by more runs),
    # so the detour 2 sits off that lane
    assert info["pos"][0][1] == info["pos"][1][1] == info["pos"][3][1] != info["pos"][2][1]
    # edge labels carry run counts out of 6 and the top feature change
    for (a, b), runs in TOY_EDGES.items():
        assert info["edge_labels"][(a, b)].startswith(f"{runs}/6 runs")
        assert "λmax" in info["edge_labels"][(a, b)]
    # width follows the number of runs
    assert info["edge_widths"][(0, 1)] > info["edge_widths"][(1, 3)] > info["edge_widths"][(2, 3)]
    assert info["edge_widths"][(1, 3)] == info["edge_widths"][(1, 2)]
    # node size follows occupancy: state 3 holds most checkpoints, state 2 fewest (56/48/42/34)
    sizes = info["node_sizes"]
    assert sizes[3] > sizes[0] > sizes[1] > sizes[2]
    np.testing.assert_allclose(info["node_collection"].get_sizes(), [sizes[n] for n in range(TOY_K)])
    # colours are the shared state palette
    face = [to_hex(c) for c in info["node_collection"].get_facecolors()]
    assert face == [state_color(k).lower() for k in range(TOY_K)]
    # the detour is highlighted: a ring around state 2 only
    assert info["highlighted"] == TOY_DETOURS
    ring = info["ring_collection"]
    assert ring is not None
    np.testing.assert_allclose(ring.get_offsets(), [info["pos"][2]])


def test_linear_fit_has_no_detour_highlight(tmp_path):
    segs = {s: [(0, 5 + s), (1, 10 - s), (2, 5)] for s in range(4)}
    make_fit_study(tmp_path, "lin", segs, n_states=3, n_steps=20, first_n=20, features=["l1", "l2"],
                   coef=[1.0, 2.0, 3.0], ci_half=[0.5, 0.5, 0.5], converged_state=2)
    lin = load_fit(tmp_path, "lin")
    info = F.plot_training_map(_ax(), lin)
    assert info["highlighted"] == [] and info["ring_collection"] is None
    assert sorted(info["edges"]) == [(0, 1), (1, 2)]
    assert {y for _, y in info["pos"].values()} == {0.0}  # a linear map sits on one lane
    reg = F.plot_regression(_ax(), lin)
    assert reg["hatched"] == []


# --------------------------------------------------------------------------- trajectories


def test_trajectory_metrics_default_adds_top_feature(fit):
    assert F.trajectory_metrics(fit) == ["l2", "train_acc", "val_acc", TOY_TOP_FEATURE]
    assert F.trajectory_metrics(fit, ("spectral", "nope")) == ["spectral"]


def test_trajectories_one_line_per_seed_coloured_by_state(fit):
    ax = _ax()
    info = F.plot_trajectories(ax, fit, "l2")
    assert info["seeds"] == sorted(TOY_SEGMENTS)
    assert len(info["lines"]) == len(TOY_SEGMENTS) == len(ax.collections) - 1  # + the convergence marks
    undecoded = np.array(to_rgba(UNDECODED))
    for seed, coll in zip(info["seeds"], info["lines"]):
        segs = coll.get_segments()
        assert len(segs) == TOY_N_STEPS - 1
        colours = coll.get_colors()
        states = _expected_states(seed)[:-1]
        for i, st in enumerate(states):
            want = undecoded if st < 0 else np.array(to_rgba(state_color(st)))
            np.testing.assert_allclose(colours[i][:3], want[:3])
        y = fit.runs.loc[fit.runs["seed"] == seed, "l2"].to_numpy()
        np.testing.assert_allclose([s[0][1] for s in segs], y[:-1])
    # convergence is marked for the five converging seeds, at their convergence step
    marks = info["convergence_marks"]
    assert {s: x for s, (x, _) in marks.items()} == {s: t for s, t in TOY_CONVERGENCE.items() if t is not None}
    assert len(info["mark_collection"].get_offsets()) == 5
    assert ax.get_xlabel() == "training time (epochs)"
    assert "L2 norm" in ax.get_ylabel() and ax.get_title()


def test_trajectories_unknown_metric_is_a_user_error(fit):
    from latent.errors import UserError

    with pytest.raises(UserError, match="not in the run tables"):
        F.plot_trajectories(_ax(), fit, "no_such_metric")


# --------------------------------------------------------------------------- occupancy


def test_occupancy_strips_sorted_by_convergence(fit):
    ax = _ax()
    info = F.plot_occupancy(ax, fit)
    assert info["order"] == [1, 2, 0, 3, 4, 5]
    assert len(info["collections"]) == len(TOY_SEGMENTS)
    e = TOY_STEP_EVERY
    assert info["segments"][4] == [(0.0, 8 * e, 0), (8 * e, 6 * e, 1), (14 * e, 10 * e, 2), (24 * e, 6 * e, 3),
                                   (30 * e, 10 * e, -1)]
    # strip colours follow the states
    coll = info["collections"][info["order"].index(4)]
    got = [to_hex(c) for c in coll.get_facecolors()]
    assert got == [state_color(0).lower(), state_color(1).lower(), state_color(2).lower(),
                   state_color(3).lower(), UNDECODED.lower()]
    assert info["convergence"] == {0: 150.0, 1: 160.0, 2: 170.0, 3: 220.0, 4: 240.0}
    assert ax.get_yticklabels()[-1].get_text() == "seed 5 (never)"


# --------------------------------------------------------------------------- regression


def test_regression_coefficients_and_detour_marked(fit):
    ax = _ax()
    info = F.plot_regression(ax, fit)
    assert info["states"] == list(range(TOY_K))
    assert info["coef"] == TOY_COEF
    assert info["hatched"] == TOY_DETOURS
    for s, bar in enumerate(info["bars"]):
        assert to_hex(bar.get_facecolor()) == state_color(s).lower()
        assert (bar.get_hatch() == "//") == (s in TOY_DETOURS)
    assert "R² = 0.930" in ax.get_title()


# --------------------------------------------------------------------------- profiles, selection, histogram


def test_state_profiles_heatmap_and_table(fit):
    info = F.plot_state_profiles(_ax(), fit)
    np.testing.assert_allclose(info["image"].get_array(), np.asarray(fit.model["means"]))
    table = F.profile_table(fit)
    # original-unit means, recomputed independently from the run tables and the fixture's segments
    for s in range(TOY_K):
        vals = []
        for seed in TOY_SEGMENTS:
            run = fit.runs[fit.runs["seed"] == seed]
            vals.append(run["l2"].to_numpy()[_expected_states(seed) == s])
        np.testing.assert_allclose(table.loc[s, "l2"], np.concatenate(vals).mean())
    assert list(table.columns[2:]) == fit.features


def test_model_selection_marks_chosen_k_and_gaps(fit):
    ax = _ax()
    info = F.plot_model_selection(ax, fit)
    assert info["chosen"] == 4 and info["criterion"] == "bic"
    assert info["failed_k"] == [5]
    assert any(list(line.get_xdata()) == [4, 4] for line in ax.lines)  # the chosen-K line
    assert np.isnan(info["bic"][-1])


def test_convergence_histogram(fit):
    info = F.plot_convergence_histogram(_ax(), fit)
    assert sorted(info["times"]) == [150.0, 160.0, 170.0, 220.0, 240.0]
    assert info["never"] == [5]
    assert info["median"] == 170.0
    assert sum(info["counts"]) == 5


def test_same_state_same_colour_everywhere(fit):
    tmap = F.plot_training_map(_ax(), fit)
    reg = F.plot_regression(_ax(), fit)
    traj = F.plot_trajectories(_ax(), fit, "val_acc")
    for s in range(TOY_K):
        c = state_color(s).lower()
        assert tmap["node_colors"][s].lower() == c
        assert to_hex(reg["bars"][s].get_facecolor()) == c
    seed3 = traj["lines"][traj["seeds"].index(3)].get_colors()
    assert to_hex(seed3[15]) == state_color(2).lower()  # checkpoint 15 of seed 3 is in state 2


def test_transition_table_lists_every_observed_edge(fit):
    table = F.transition_table(fit)
    got = {(r.source, r.target): r.runs for r in table.itertuples()}
    assert got == TOY_EDGES
    assert set(table["of"]) == {6}
    row = table[(table.source == 1) & (table.target == 3)].iloc[0]
    assert row.convergence_mean == pytest.approx(160.0)  # seeds 0, 1, 2 converge at 170, 150, 160
    assert row.top_features.startswith("λmax ")
    assert len(row.top_features.split(", ")) == 3
