"""bench/slow_road.py (the slow group, the weight-norm rise and the slow runs' own states) and the
family-start bench's transition mask, by hand."""

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from slow_road import convergence_by_run, own_states, rises, slowest_runs  # noqa: E402


def _table():
    # three runs, checkpoints every 100 epochs; seed 2 never converges, seed 1 converges at 600
    rows = []
    for seed, conv, l2 in [(0, 300, [5, 4, 3, 3, 3, 3, 3, 3]),
                           (1, 600, [5, 4, 3, 3.2, 3.3, 3.1, 3, 3]),
                           (2, None, [5, 4, 3, 3.04, 3.0, 3.0, 3, 3])]:
        for i, x in enumerate(l2):
            step = 100 * i
            rows.append({"seed": seed, "step": step, "l2": x,
                         "val_acc": 0.95 if conv is not None and step >= conv else 0.1})
    return pd.DataFrame(rows)


def test_slow_group_and_rise_by_hand():
    t = _table()
    conv = convergence_by_run(t, {"metric": "val_acc", "threshold": 0.9, "direction": "above"})
    assert conv == {0: 300, 1: 600, 2: None}
    assert slowest_runs(conv, 1) == ([2], []) and slowest_runs(conv, 2) == ([1, 2], [])
    # ties at the cut are reported: seeds 5 and 7 converge together, only one fits in the group
    assert slowest_runs({3: 100, 5: 400, 7: 400, 9: None}, 2) == ([5, 9], [7])
    # window 200..500: value at epoch 200 is 3; seed 1 reaches 3.3 (> 3.05), seed 2 only 3.04
    assert rises(t, "l2", 200, 500, 0.05) == {0: False, 1: True, 2: False}
    # a window starting between checkpoints takes the first checkpoint at or after it (epoch 300)
    assert rises(t, "l2", 250, 500, 0.05) == {0: False, 1: True, 2: False}
    assert rises(t, "l2", 250, 500, 0.2) == {0: False, 1: False, 2: False}
    # a window after the last checkpoint has no run in it
    assert rises(t, "l2", 900, 1000, 0.05) == {}
    # no value at the window's first checkpoint: the run is left out, not counted as flat
    t.loc[(t["seed"] == 1) & (t["step"] == 200), "l2"] = float("nan")
    assert rises(t, "l2", 200, 500, 0.05) == {0: False, 2: False}


def test_own_states_by_hand():
    paths = pd.DataFrame({"seed": [0, 0, 1, 1, 2, 2, 3, 3, 4, 4],
                          "state": [0, 2, 0, 1, 0, 1, 0, 2, 0, 2]})
    rows, own, n_slow, n_rest = own_states(paths, slow=[1, 2])
    shares = {r["state"]: (r["slow"], r["rest"]) for r in rows}
    assert shares == {0: (1.0, 1.0), 1: (1.0, 0.0), 2: (0.0, 1.0)}
    assert own == [1] and (n_slow, n_rest) == (2, 3)
    # a state half the slow runs and a third of the others visit is not theirs (1/3 > 1/4)
    assert own_states(paths, slow=[0, 1])[1] == []
    # slow runs missing from the paths: nothing is compared, and the counts say so
    assert own_states(paths, slow=[8, 9]) == ([], [], 0, 5)


def test_transition_rows_of_the_family_start_bench_by_hand():
    import numpy as np
    from bench_family_start import transition_rows

    # switches at 2 and 5 in the first run, none in the second; ramp 2: a switch and 2 checkpoints after it
    got = transition_rows([np.array([0, 0, 1, 1, 1, 2, 2]), np.array([3, 3, 3])], ramp=2)
    assert got.tolist() == [False, False, True, True, True, True, True, False, False, False]
