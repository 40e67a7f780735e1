"""State names (latent.phase_names): the rule on planted phase blocks, letters for repeats, the story,
and the names reaching analysis.json, the map and the fit's summary."""

from __future__ import annotations

import pytest

from latent.phase_names import map_story, name_state, name_states

RULE = {"metric": "val_acc", "threshold": 0.9, "direction": "above"}


def row(state, train_acc=None, val_acc=None, median=0.0, moving=(), checkpoints=10, runs=40, p10=None, p90=None):
    metrics = {k: v for k, v in (("train_acc", train_acc), ("val_acc", val_acc)) if v is not None}
    return {"state": state, "checkpoints": checkpoints, "runs": runs, "metrics": metrics,
            "steps": {"median": median, "p10": median if p10 is None else p10, "p90": median if p90 is None else p90},
            "moving": [{"feature": f, "rate_z": r} for f, r in moving]}


def test_the_grokking_story_by_the_rule():
    states = [row(0, 0.40, 0.02, 50), row(1, 1.00, 0.03, 400), row(2, 1.00, 0.60, 700), row(3, 1.00, 0.99, 1500)]
    assert name_states(states, RULE) == ["fitting", "memorised", "generalising", "generalised"]
    # the boundaries of the rule, each side of them (runs start at val_acc 0.1 here: a fifth of the way is 0.26)
    assert name_state(row(0, 0.989, 0.1), RULE, start=0.1) == "fitting"
    assert name_state(row(0, 0.99, 0.1), RULE, start=0.1) == "memorised"
    assert name_state(row(0, 1.0, 0.259), RULE, start=0.1) == "memorised"
    assert name_state(row(0, 1.0, 0.261), RULE, start=0.1) == "generalising"
    assert name_state(row(0, 0.5, 0.91), RULE, start=0.1) == "generalised"  # the convergence metric decides first
    assert name_state(row(0, 1.0, 0.9), RULE, start=0.1) == "generalising"  # the threshold must be passed, not met
    assert name_state(row(0, val_acc=0.2), RULE, start=0.1) == "not generalised"  # no train_acc: no memorisation claim
    assert name_state(row(0, 1.0, 0.2, checkpoints=0), RULE) == "unvisited"


def test_where_runs_start_sets_half_way():
    # a binary task: chance is 0.5, so a state at 0.55 has barely moved (0.55 < 0.5 + 0.2 * 0.4); the lowest
    # state mean is the start
    states = [row(0, 1.0, 0.50, 100), row(1, 1.0, 0.55, 300), row(2, 1.0, 0.75, 600), row(3, 1.0, 0.95, 900)]
    assert name_states(states, RULE) == ["memorised a", "memorised b", "generalising", "generalised"]
    # a simulated study: val_acc only, 0.5 until convergence
    sim = [row(k, val_acc=0.5, median=100 * k) for k in range(3)] + [row(3, val_acc=0.95, median=900)]
    assert name_states(sim, RULE) == ["not generalised a", "not generalised b", "not generalised c", "generalised"]


def test_progress_measures_name_circuit_formation_and_cleanup():
    forming = row(1, 1.0, 0.05, moving=[("restricted_loss", -0.03), ("excluded_loss", 0.04)])
    assert name_state(forming, RULE, progress=True) == "circuit forming"
    assert name_state(forming, RULE, progress=False) == "memorised"  # without the measures, no such claim
    falling = row(2, 1.0, 0.97, moving=[("sum_sq_weights", -0.02)])
    assert name_state(falling, RULE, progress=True) == "cleanup"
    assert name_state(row(2, 1.0, 0.97, moving=[("sum_sq_weights", 0.01)]), RULE, progress=True) == "generalised"
    assert name_state(row(1, 1.0, 0.05, moving=[("excluded_loss", -0.01)]), RULE, progress=True) == "memorised"


def test_a_metric_that_must_fall_below_its_threshold():
    rule = {"metric": "val_loss", "threshold": 0.1, "direction": "below"}
    states = [{"state": k, "checkpoints": 5, "metrics": {"val_loss": v, "train_acc": 1.0}, "steps": {"median": k}}
              for k, v in enumerate((2.1, 1.9, 1.5, 0.05))]  # runs start at 2.1: a fifth of the way is 1.7
    assert name_states(states, rule) == ["memorised a", "memorised b", "generalising", "generalised"]


def test_repeated_names_get_letters_in_the_order_runs_sit_in_them():
    states = [row(0, 1.0, 0.02, median=900), row(1, 0.3, 0.0, median=10), row(2, 1.0, 0.03, median=300),
              row(3, 1.0, 0.95, median=2000), row(4, checkpoints=0), row(5, checkpoints=0)]
    assert name_states(states, RULE) == ["memorised b", "fitting", "memorised a", "generalised", "unvisited",
                                         "unvisited"]


def test_the_story_tells_the_states_in_order_with_their_numbers():
    states = [row(1, 1.0, 0.03, median=400, p10=150, p90=800, runs=40), row(0, 0.4, 0.02, median=50, p10=0, p90=140),
              row(2, 1.0, 0.99, median=1500, p10=850, p90=2000, runs=40), row(3, 1.0, 0.04, median=600, p10=500,
                                                                                p90=700, runs=12)]
    names = name_states(states, RULE)
    text = map_story(states, names, 40, "epoch", RULE, 872.0, [{"state": 3, "delay": 187.4}])
    assert text.startswith("The states in the order runs sit in them (median step): state 0 · fitting (40/40 "
                           "runs, epochs 0–140); state 1 · memorised a (40/40 runs, epochs 150–800); state 3 · "
                           "memorised b (12/40 runs, epochs 500–700); state 2 · generalised (40/40 runs, epochs "
                           "850–2,000).")
    assert "Runs reach val_acc > 0.9 at a median epoch 872." in text
    assert "State 3 · memorised b is a detour: the runs visiting it converge 187 epochs later" in text
    assert "no detour" not in text
    assert "No state delays convergence (no detour)." in map_story(states, names, 40, "epoch", RULE, None, [])


@pytest.mark.slow
def test_names_reach_the_analysis_the_map_and_the_report(tmp_path):
    from latent.cli import main
    from latent.reports.artifacts import load_fit

    assert main(["simulate", "--study", "sim", "--store", str(tmp_path), "--runs", "12", "--checkpoints", "200"]) == 0
    assert main(["fit", "--store", str(tmp_path), "--study", "sim", "--max-states", "4", "--restarts", "1",
                 "--resamples", "0", "--no-audit"]) == 0
    fit = load_fit(tmp_path, "sim")
    states = fit.analysis["phases"]["states"]
    names = [r["name"] for r in states]
    assert names == name_states(states, fit.analysis["convergence"])  # stored = the rule applied to the block
    nodes = {n["id"]: n for n in fit.analysis["map"]["nodes"]}
    assert all(nodes[r["state"]].get("name") == r["name"] for r in states if r["checkpoints"])
    assert main(["report", "--store", str(tmp_path), "--study", "sim"]) == 0
    page = next((tmp_path / "sim" / "reports").glob("*/index.html")).read_text()
    assert "The map in words." in page and f"state {states[0]['state']} · {names[0]}" in page
