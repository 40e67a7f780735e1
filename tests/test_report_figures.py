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
    TOY_NAME,
    TOY_CI_HALF,
    TOY_COEF,
    TOY_CONVERGENCE,
    TOY_DELAY,
    TOY_DETOURS,
    TOY_EDGES,
    TOY_FIRST_N,
    TOY_FOLD_CHOICE,
    TOY_K,
    TOY_MIN_RUNS,
    TOY_N_STEPS,
    TOY_OLD_FIT_ID,
    TOY_P,
    TOY_SE,
    TOY_SEGMENTS,
    TOY_STATUS,
    TOY_STEP_EVERY,
    TOY_TOP_FEATURE,
    TOY_WARNINGS,
    make_fit_study,
    make_old_toy_fit,
    make_rare_fit,
    make_toy_fit,
)
from latent.reports import figures as F
from latent.reports.artifacts import load_fit
from latent.reports.palette import STATE_COLORS, UNDECODED, state_color, state_colors


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
    # the newer fields
    assert {r["state"]: r["status"] for r in fit.state_tests} == TOY_STATUS
    assert fit.state_tests[2]["delay"] == pytest.approx(TOY_DELAY[2])
    assert fit.min_runs == TOY_MIN_RUNS and fit.detour_rule["rule"] == "delay"
    assert fit.warnings == TOY_WARNINGS
    assert fit.fold_choice == TOY_FOLD_CHOICE and fit.n_folds == 3
    assert fit.selection_label == "3-fold CV BIC"
    assert fit.stability["used"] == 19
    assert fit.selection["se"].tolist()[:4] == [TOY_SE[k] for k in (1, 2, 3, 4)]


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
    # edge labels carry run counts out of 6 and the edge's most important feature, by its column name
    for (a, b), runs in TOY_EDGES.items():
        assert info["edge_labels"][(a, b)].startswith(f"{runs}/6 runs")
        assert info["edge_labels"][(a, b)].split("\n")[1].startswith(f"{TOY_TOP_FEATURE} ")
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
    delays = F.plot_delays(_ax(), lin)
    assert delays["hatched"] == [] and delays["status"] == {0: "obligatory", 1: "obligatory", 2: "obligatory"}
    assert delays["bars"] == [None, None, None]  # nothing optional, nothing tested


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
        # the segment from checkpoint i to i + 1 in checkpoint i's colour: one polyline per stretch
        # of equal states, so the polylines read back segment by segment give every segment
        run = fit.runs.loc[fit.runs["seed"] == seed]
        pts = np.column_stack([run["step"].to_numpy(float), run["l2"].to_numpy(float)])
        states = _expected_states(seed)[:-1]
        lines = coll.get_segments()
        got_colours = []
        for line, colour in zip(lines, coll.get_colors()):
            got_colours += [colour] * (len(line) - 1)
        # consecutive polylines share their joining checkpoint; together they are the run, point by point
        for a, b in zip(lines, lines[1:]):
            np.testing.assert_array_equal(a[-1], b[0])
        np.testing.assert_array_equal(np.vstack([line[:-1] for line in lines] + [lines[-1][-1:]]), pts)
        assert len(got_colours) == TOY_N_STEPS - 1
        for i, st in enumerate(states):
            want = undecoded if st < 0 else np.array(to_rgba(state_color(st)))
            np.testing.assert_allclose(got_colours[i][:3], want[:3])
        # one polyline per stretch: as many as the state changes between segments, plus one
        assert len(coll.get_segments()) == 1 + int(np.sum(np.diff(states) != 0))
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


def test_delays_per_state_with_detour_and_untested_states(fit):
    ax = _ax()
    info = F.plot_delays(ax, fit)
    assert info["states"] == list(range(TOY_K))
    assert info["status"] == TOY_STATUS
    # only the tested state gets a bar: its height is the delay, its interval the Welch CI
    assert [b is not None for b in info["bars"]] == [False, False, True, False]
    bar = info["bars"][2]
    assert bar.get_height() == pytest.approx(TOY_DELAY[2])
    assert info["p_adjusted"][2] == pytest.approx(TOY_P[2])
    assert info["ci_low"][2] < TOY_DELAY[2] < info["ci_high"][2]
    # the detour is hatched, outlined and starred; the others are greyed and labelled
    assert info["hatched"] == TOY_DETOURS
    assert bar.get_hatch() == "//" and to_hex(bar.get_facecolor()) == state_color(2).lower()
    assert info["labels"][2].startswith("★ detour")
    assert info["greyed"] == [0, 1, 3]
    assert info["labels"][0] == "obligatory (all 6 runs visit it)"
    assert info["labels"][3] == f"not estimable (< {TOY_MIN_RUNS} runs)"
    assert info["paper_rule"] == [2]
    texts = [t.get_text() for t in ax.texts]
    assert "not estimable\n(< 3 runs)" in texts and "obligatory\n(all 6 runs visit it)" in texts
    assert "τ = 390 epochs" in ax.get_title()


def test_not_estimable_state_is_never_shown_as_a_detour(tmp_path):
    make_rare_fit(tmp_path)
    rare = load_fit(tmp_path, "rare")
    row = rare.state_tests[2]
    assert row["status"] == "not_estimable" and row["delay"] > 50  # a large observed delay ...
    assert rare.detour_states == []
    ax = _ax()
    info = F.plot_delays(ax, rare)
    assert info["bars"] == [None] * 4 and info["hatched"] == []  # ... but no bar, no hatch, no star
    assert info["labels"][2] == "not estimable (< 3 runs)"
    assert not any("detour" in t.get_text() for t in ax.texts)
    # its regression coefficient is null: a gap, explained
    reg = F.plot_regression(_ax(), rare)
    assert reg["bars"][2] is None and reg["gaps"] == {2: "not estimable (< 3 runs)"}
    assert all(b is not None for i, b in enumerate(reg["bars"]) if i != 2)


def test_old_format_fit_still_loads_and_plots(tmp_path):
    make_old_toy_fit(tmp_path)
    old = load_fit(tmp_path, None, TOY_OLD_FIT_ID)
    assert old.state_tests == [] and old.warnings == [] and old.stability is None
    assert old.detour_rule == {} and old.fold_choice == {} and old.procedure is None
    assert old.detour_states == TOY_DETOURS
    sel = F.plot_model_selection(_ax(), old)
    assert sel["chosen"] == 4 and sel["label"] == "BIC" and sel["errorbar_k"] == []
    assert sel["score"][:4] == old.selection["bic"].tolist()[:4]  # the score falls back to the BIC column
    delays = F.plot_delays(_ax(), old)
    assert delays["states"] == [] and delays["bars"] == []
    reg = F.plot_regression(_ax(), old)
    assert reg["coef"] == TOY_COEF and reg["hatched"] == TOY_DETOURS
    assert F.plot_training_map(_ax(), old)["highlighted"] == TOY_DETOURS


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
    assert info["chosen"] == 4 and info["criterion"] == "bic" and info["procedure"] == "cv"
    assert info["label"] == "3-fold CV BIC"
    assert info["failed_k"] == [5]
    assert any(list(line.get_xdata()) == [4, 4] for line in ax.lines)  # the chosen-K line
    assert np.isnan(info["score"][-1]) and np.isnan(info["bic"][-1])
    # the primary curve is the score K was chosen by (BIC here), labelled with the procedure
    np.testing.assert_allclose(info["score_line"].get_ydata()[:4], [1360.0, 1160.0, 1040.0, 1000.0])
    assert info["score_line"].get_label().startswith("3-fold CV BIC")
    # ± SE bars on every K with a non-zero SE (not the best K, whose SE is 0; not the failed K)
    assert info["errorbar_k"] == [1, 2, 3]
    segs = info["errorbar"].lines[2][0].get_segments()
    assert [(round(s[0][1]), round(s[1][1])) for s in segs] == [(1300, 1420), (1115, 1205), (1010, 1070)]
    # fold agreement and fragility in the title
    assert info["fold_choice"] == TOY_FOLD_CHOICE and (info["folds_agree"], info["folds_total"]) == (2, 3)
    title = " ".join(ax.get_title().split())  # titles are wrapped to the axes' width
    assert "2 of 3 folds choose K = 4" in title and "not fragile" in title
    assert info["runner_up"] == 3 and info["fragile"] is False


def test_model_selection_says_when_k_is_fragile(tmp_path):
    import json

    make_toy_fit(tmp_path)
    path = tmp_path / "toy" / "fits" / "k4-bic-toy" / "analysis.json"
    obj = json.loads(path.read_text())
    obj["selection"].update(fragile=True, fold_choice={"3": 2, "4": 1})
    path.write_text(json.dumps(obj))
    ax = _ax()
    info = F.plot_model_selection(ax, load_fit(tmp_path))
    assert info["fragile"] is True and info["folds_agree"] == 1
    title = " ".join(ax.get_title().split())  # titles are wrapped to the axes' width
    assert "fragile: within the restart spread of K = 3" in title
    assert "1 of 3 folds choose K = 4" in title


def test_convergence_histogram(fit):
    info = F.plot_convergence_histogram(_ax(), fit)
    assert sorted(info["times"]) == [150.0, 160.0, 170.0, 220.0, 240.0]
    assert info["never"] == [5]
    assert info["median"] == 170.0
    assert sum(info["counts"]) == 5


def test_same_state_same_colour_everywhere(fit):
    tmap = F.plot_training_map(_ax(), fit)
    reg = F.plot_regression(_ax(), fit)
    delays = F.plot_delays(_ax(), fit)
    assert to_hex(delays["bars"][2].get_facecolor()) == state_color(2).lower()
    traj = F.plot_trajectories(_ax(), fit, "val_acc")
    for s in range(TOY_K):
        c = state_color(s).lower()
        assert tmap["node_colors"][s].lower() == c
        assert to_hex(reg["bars"][s].get_facecolor()) == c
    seed3 = traj["lines"][traj["seeds"].index(3)]
    steps = fit.runs.loc[fit.runs["seed"] == 3, "step"].to_numpy()
    at_15 = [c for line, c in zip(seed3.get_segments(), seed3.get_colors()) if line[0, 0] <= steps[15] < line[-1, 0]]
    assert [to_hex(c) for c in at_15] == [state_color(2).lower()]  # checkpoint 15 of seed 3 is in state 2


def test_transition_table_lists_every_observed_edge(fit):
    table = F.transition_table(fit)
    got = {(r.source, r.target): r.runs for r in table.itertuples()}
    assert got == TOY_EDGES
    assert set(table["of"]) == {6}
    row = table[(table.source == 1) & (table.target == 3)].iloc[0]
    assert row.convergence_mean == pytest.approx(160.0)  # seeds 0, 1, 2 converge at 170, 150, 160
    assert row.top_features.startswith(f"{TOY_TOP_FEATURE} ")  # the column name, as everywhere
    assert len(row.top_features.split(", ")) == 3


# --------------------------------------------------------------------------- report clarity


def test_regression_marks_intervals_crossing_zero_and_the_final_state(fit):
    from matplotlib.patches import Rectangle

    ax = _ax()
    info = F.plot_regression(ax, fit)
    # TOY_COEF ± TOY_CI_HALF: only state 1's interval [-15, 45] contains 0
    crossing = [s for s in range(TOY_K) if TOY_COEF[s] - TOY_CI_HALF[s] <= 0 <= TOY_COEF[s] + TOY_CI_HALF[s]]
    assert info["crosses_zero"] == crossing == [1]
    assert [b.get_alpha() for b in info["bars"]] == [1.0, 0.35, 1.0, 1.0]
    assert info["bars"][1].get_linestyle() == "--"
    # equal-length runs, five of six ending in state 3: its coefficient is marked as mechanical
    assert info["mechanical"] == 3 and any(t.get_text() == "‡" for t in ax.texts)
    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[0] == "bootstrap interval (1000 resamples)" and "interval crosses 0 (sign not established)" in texts
    assert not isinstance(legend.legend_handles[0], Rectangle)  # the interval's key is an error bar, not a box
    assert ax.get_ylabel() == "coefficient (epochs)"


def test_old_fit_regression_label_is_short(tmp_path):
    make_old_toy_fit(tmp_path)
    ax = _ax()
    F.plot_regression(ax, load_fit(tmp_path, None, TOY_OLD_FIT_ID))
    assert ax.get_ylabel() == "coefficient (epochs)"  # was a 60-character label, clipped in the report


def test_one_name_per_feature_everywhere(fit):
    """Map labels, heatmap, transition and profile tables name a feature by its column, nothing else."""
    names = set(fit.features)
    tmap = F.plot_training_map(_ax(), fit)
    for label in tmap["edge_labels"].values():
        assert label.split("\n")[1].split(" ")[0] in names
    ax = _ax()
    F.plot_state_profiles(ax, fit)
    assert [t.get_text() for t in ax.get_xticklabels()] == fit.features
    for cell in F.transition_table(fit)["top_features"]:
        assert {part.split(" ")[0] for part in cell.split(", ")} <= names
    for cell in F.phase_table(fit)["entering"]:
        assert not cell or {part.split(" ")[0] for part in cell.split(", ")} <= names
    assert F.symbol("code_sparsity") == F.short_feature("code_sparsity") == F.feature_name("code_sparsity") == \
        "code_sparsity"


def test_map_nodes_say_what_each_state_means(fit):
    info = F.plot_training_map(Figure(figsize=(9, 5)).add_subplot(), fit)
    # seeds' first 30 checkpoints, every 10 epochs: state 3 holds checkpoints from epoch 150 (seed 1) on
    steps3 = sorted(t * TOY_STEP_EVERY for s in TOY_SEGMENTS for t, st in enumerate(_expected_states(s)[:TOY_FIRST_N])
                    if st == 3)
    p10 = next(x for x in steps3 if sum(y <= x for y in steps3) >= 0.1 * len(steps3))
    p90 = next(x for x in steps3 if sum(y <= x for y in steps3) >= 0.9 * len(steps3))
    lines = info["node_labels"][3].split("\n")
    assert lines[0] == "31% of time, 5/6 runs" and lines[1] == f"epochs {p10}–{p90}"
    acc = fit.runs.loc[fit.runs["state"] == 3, ["train_acc", "val_acc"]].mean()
    assert lines[2:] == [f"train_acc {acc['train_acc']:.2f}", f"val_acc {acc['val_acc']:.2f}"]


def test_report_figures_keep_the_requested_trajectory_metrics(fit):
    from latent.reports.html import build_figures

    figs = {name: info for name, _, _, _, info in build_figures(fit)}
    assert list(figs["trajectories"]) == ["l2", "train_acc", "val_acc", TOY_TOP_FEATURE]
    figs = {name: info for name, _, _, _, info in build_figures(fit, ("val_loss",))}
    assert list(figs["trajectories"]) == ["val_loss", TOY_TOP_FEATURE]


def test_progress_figure_only_with_progress_measures_and_the_median_runs_spectrum(tmp_path):
    """A study without progress columns gets no progress figure; with them, the spectrum panel is
    the run converging at the median time, and each run's line ends at its own top-5 share."""
    import pandas as pd

    from latent.store import Study
    from latent.reports.html import build_figures

    store = tmp_path / "store"
    make_toy_fit(store)
    names = [f[0] for f in build_figures(load_fit(store))]
    assert "progress" not in names
    study = Study(store / TOY_NAME)
    rng = np.random.default_rng(0)
    for seed in TOY_SEGMENTS:
        frame = study.read_run(seed)
        T = len(frame)
        frame["restricted_loss"] = np.linspace(4, 0.01, T)
        frame["excluded_loss"] = np.linspace(4, 6, T)
        frame["embed_gini"] = np.linspace(0.05, 0.4, T)
        frame["sum_sq_weights"] = np.linspace(900, 700, T)
        shares = rng.dirichlet(np.ones(6), T)
        shares[-1] = [0.5, 0.2, 0.1, 0.1, 0.05, 0.05][:: 1 if seed % 2 else -1]  # the last row: known top frequencies
        for k in range(6):
            frame[f"embed_f{k + 1:02d}"] = shares[:, k]
        frame.to_parquet(study.run_table_path(seed))
    figs = {f[0]: f for f in build_figures(load_fit(store))}
    info = figs["progress"][4]
    conv = {s: t for s, t in TOY_CONVERGENCE.items() if t is not None}
    ranked = sorted(conv, key=lambda s: (conv[s], s))
    assert info["spectrum"]["seed"] == ranked[len(ranked) // 2]
    assert info["spectrum"]["top_at_end"][0] == (1 if info["spectrum"]["seed"] % 2 else 6)
    assert info["concentration"]["seeds"] == sorted(TOY_SEGMENTS)
    assert set(info) >= {"restricted_loss", "excluded_loss", "embed_gini", "sum_sq_weights"}
    assert "restricted loss" in figs["progress"][2].lower()
