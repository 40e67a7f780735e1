"""The robustness audit (latent.audit): matching, change points, and the audit of a planted study."""

import json

import numpy as np
import pytest

from latent.audit import alternatives, changepoint_entries, feature_groups, jaccard
from latent.cli import main
from planted import detour_study

FAST = ["--max-states", "5", "--restarts", "2", "--n-iter", "10", "--n-boot", "50", "--resamples", "0",
        "--jobs", "1"]


def test_jaccard_by_hand():
    a = np.array([0, 0, 0, 1, 1, 2])
    b = np.array([1, 1, 0, 0, 0, 0])
    J = jaccard(a, b, 3, 2)
    # state 0 of a = {0,1,2}; b's state 1 = {0,1}: 2 / 3; b's state 0 = {2,3,4,5}: 1 / 6
    assert J[0, 1] == pytest.approx(2 / 3) and J[0, 0] == pytest.approx(1 / 6)
    # a's state 1 = {3,4} inside b's 0: 2 / 4; a's state 2 = {5}: 1 / 4
    assert J[1, 0] == pytest.approx(0.5) and J[2, 0] == pytest.approx(0.25) and J[2, 1] == 0


def test_alternatives_and_feature_groups():
    feats = ["l1", "l2", "mean_lambda", "var_w", "val_loss", "mine"]
    groups = feature_groups(feats)
    assert groups == {"norms": [0, 1], "spectra and sparsity": [2], "weight distribution": [3],
                      "losses and accuracies": [4], "other features": [5]}
    names = [a["name"] for a in alternatives(feats, 4, "gaussian")]
    assert names[:4] == ["K-1 (3 states)", "K+1 (5 states)", "family ar", "family hamilton"]
    assert sum(n.startswith("without ") for n in names) == 5
    assert [a["name"] for a in alternatives(["f0", "f1"], 1, "ar")] == ["K+1 (2 states)", "family gaussian",
                                                                       "family hamilton"]


def test_change_points_confirm_steps_and_not_a_boundary_inside_a_ramp():
    rng = np.random.default_rng(0)
    # a run with two clean steps, at 30 and 70; its path has the same boundaries
    z = np.concatenate([np.zeros(30), np.full(40, 5.0), np.full(30, -3.0)])[:, None] + rng.normal(0, 0.2, (100, 1))
    path = np.repeat([0, 1, 2], [30, 40, 30])
    rows = changepoint_entries([z], [path], 3)
    assert [(r["entries"], r["confirmed"]) for r in rows] == [(0, 0), (1, 1), (1, 1)]
    # a straight ramp cut by the path at 20 of 100: least squares puts its one break mid-ramp
    ramp = np.linspace(0, 10, 100)[:, None] + rng.normal(0, 0.05, (100, 1))
    rows = changepoint_entries([ramp], [np.repeat([0, 1], [20, 80])], 2)
    assert (rows[1]["entries"], rows[1]["confirmed"]) == (1, 0)


def test_audit_of_a_planted_study(tmp_path, capsys):
    _, truth, _ = detour_study(tmp_path / "data" / "toy", n_runs=24, T=90)
    store = tmp_path / "data"
    assert main(["fit", "--store", str(store), *FAST]) == 0
    out = capsys.readouterr().out
    fit_dir = next((store / "toy" / "fits").iterdir())
    analysis = json.loads((fit_dir / "analysis.json").read_text())
    audit = analysis["audit"]
    K = len(analysis["states"])
    assert K == 4
    names = [a["name"] for a in audit["alternatives"]]
    assert names == ["K-1 (3 states)", "K+1 (5 states)", "family ar", "family hamilton"]
    assert all(a["ok"] for a in audit["alternatives"])
    # on independent draws the ar and hamilton families nest the Gaussian HMM (a = 0, φ = 0): every
    # state survives both
    assert all(row["survives"]["family ar"] and row["survives"]["family hamilton"] for row in audit["states"])
    # states 6 noise sds apart enter with a jump: change points confirm (almost) every entry
    cps = audit["changepoints"]["states"]
    assert sum(r["entries"] for r in cps) >= 2 * 24
    assert sum(r["confirmed"] for r in cps) >= 0.95 * sum(r["entries"] for r in cps)
    # the planted detour (truth state 1) is found and is a detour in the ar fit too
    assert [d["state"] for d in analysis["detours"]] == [1]
    assert audit["detours"][0]["survives"]["family ar"]
    assert "robustness (each state against 4 alternative fits" in out and "  detour 1: " in out
    # --no-audit: no block, and its own fit id
    assert main(["fit", "--store", str(store), *FAST, "--no-audit"]) == 0
    other = [p for p in (store / "toy" / "fits").iterdir() if p != fit_dir]
    assert len(other) == 1 and "-noaudit-" in other[0].name
    assert json.loads((other[0] / "analysis.json").read_text())["audit"] is None
