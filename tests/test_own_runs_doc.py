"""docs/own-runs.md cannot rot: its training script and its commands are run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from latent.store import Study

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-runs.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def _latent(argv: list[str], cwd: Path) -> str:
    # the `latent` console script, run as its entry point (the same code, without relying on PATH)
    code = "import sys; from latent.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_tutorial_script_trains_and_its_study_fits_and_reports(tmp_path):
    script = next(b for b in _blocks("python") if "Recorder(STORE" in b)
    assert 30 <= len(script.strip().splitlines()) <= 50  # the ~40-line script the doc promises
    (tmp_path / "train.py").write_text(script)
    commands = [line.split() for line in next(b for b in _blocks("bash") if "latent fit" in b).splitlines()]
    assert commands[0] == ["python", "train.py"]
    proc = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("val_acc 1.00") == 8  # every seed learns the parity

    study = Study(tmp_path / "data" / "parity")
    assert study.status()["status"] == "done" and study.read_meta()["seeds"] == list(range(8))
    assert all(len(study.read_run(s)) == 61 for s in range(8))

    fit_cmd, report_cmd = commands[1], commands[2]
    assert fit_cmd[:2] == ["latent", "fit"] and report_cmd[:2] == ["latent", "report"]
    # the documented fit; fewer stability refits and bootstrap draws (they do not change K)
    out = _latent(fit_cmd[1:] + ["--resamples", "0", "--n-boot", "100"], tmp_path)
    (fit_id,) = study.fit_ids()
    model = json.loads((study.fits_dir / fit_id / "model.json").read_text())
    assert model["n_states"] == 2, out  # "the fit finds two states", as the doc says
    _latent(report_cmd[1:], tmp_path)
    assert (study.reports_dir / fit_id / "index.html").is_file()
