"""The README's quick start tells the truth: its two commands, run here, give the numbers the README
states (its ``quickstart`` block, written by ``bench/reproduce.py --only modadd``)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _stated() -> dict:
    m = re.search(r"<!-- quickstart-values: (\{.*?\}) -->", README.read_text())
    assert m, "README has no quickstart block; run python bench/reproduce.py --only modadd"
    return json.loads(m.group(1))


def test_the_readme_states_the_quick_start_commands():
    text = README.read_text()
    run = text[text.index("## Install and run"):text.index("## Test")]
    assert "latent collect --task modadd --seeds 40" in run and "\nlatent fit " in run
    stated = _stated()
    # the paragraph says in words what the comment says in numbers
    para = text[text.index("<!-- quickstart:begin -->"):text.index("<!-- quickstart-values")]
    assert f"K = {stated['K']}" in para and f"R² {stated['r2']:.2f}" in para
    assert f"{stated['converged']} of 40 runs" in para


@pytest.mark.slow
def test_the_quick_start_gives_the_numbers_the_readme_states(tmp_path):
    stated = _stated()
    env_cmd = [sys.executable, "-m", "latent"]
    subprocess.run([*env_cmd, "collect", "--task", "modadd", "--seeds", "40", "--store", str(tmp_path), "--no-progress"],
                   check=True, capture_output=True, timeout=540)
    subprocess.run([*env_cmd, "fit", "--store", str(tmp_path), "-q"], check=True, capture_output=True, timeout=540)
    fit = next((tmp_path / "modadd" / "fits").iterdir())
    a = json.loads((fit / "analysis.json").read_text())
    model = json.loads((fit / "model.json").read_text())
    times = [t for t in a["convergence"]["times"].values() if t is not None]
    got = {"K": model["n_states"], "K_at_top": model["n_states"] == model["config"]["max_states"],
           "detours": [d["state"] for d in a["detours"]], "discrete": a["boundaries"]["discrete_transitions"],
           "judged": a["boundaries"]["judged_transitions"], "r2": round(a["regression"]["r2"], 2),
           "converged": len(times), "median": float(np.median(times))}
    assert got == stated, f"the README states {stated}, the commands give {got}; rerun bench/reproduce.py --only modadd"
