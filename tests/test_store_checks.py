"""Every run is checked, schedule or not: a hand-made or imported study whose table holds another
seed's rows, a step twice, or negative steps is damaged, never fitted (issue 22, items 1-2)."""

import json

import numpy as np
import pandas as pd
import pytest

from latent.cli import main
from latent.store import Study


def _hand_made(root, n=6, T=30):
    """A study as a user writes it by hand: study.json with task, features, convergence; no schedule."""
    rng = np.random.default_rng(0)
    (root / "runs").mkdir(parents=True)
    for s in range(n):
        conv = int(rng.integers(10, 20))
        frame = pd.DataFrame({"seed": s, "step": np.arange(T) * 10, "f1": np.r_[np.zeros(conv), np.ones(T - conv)]
                              + rng.normal(0, 0.1, T), "f2": rng.normal(0, 1, T),
                              "val_acc": np.r_[np.zeros(conv), np.ones(T - conv)]})
        frame.to_parquet(root / "runs" / f"seed-{s:03d}.parquet")
    (root / "study.json").write_text(json.dumps({"task": "mine", "features": ["f1", "f2"], "seeds": list(range(n)),
                                                 "convergence": {"metric": "val_acc", "threshold": 0.5}}))
    return Study(root)


def _rewrite(study, seed, change):
    path = study.run_table_path(seed)
    frame = pd.read_parquet(path)
    change(frame).to_parquet(path)


@pytest.mark.parametrize("change,needle", [
    (lambda f: f.assign(seed=1), "holds rows of seed(s) 1, not only of seed 0"),
    (lambda f: f.assign(step=0), "has step 0 more than once"),
    (lambda f: pd.concat([f, f.iloc[[3]]]), "has step 30 more than once"),
    (lambda f: f.assign(step=f["step"] - 100), "has negative steps"),
    (lambda f: f.assign(step=f["step"].astype(float).where(f.index != 2)), "missing or not a finite number"),
])
def test_a_run_that_cannot_be_one_seeds_trajectory_is_damaged_and_never_fitted(tmp_path, capsys, change, needle):
    study = _hand_made(tmp_path / "data" / "mine")
    _rewrite(study, 0, change)
    status = study.run_status(0, study.read_meta())
    assert status.status == "damaged" and needle in status.detail
    assert study.run_status(1, study.read_meta()).status == "done"
    capsys.readouterr()
    assert main(["fit", "--store", str(tmp_path / "data"), "--max-states", "2", "--resamples", "0", "--no-audit",
                 "--jobs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged: seed(s) 0" in err[0] and needle in err[0]
    # latent ls lists it, damaged, and every other study too
    _hand_made(tmp_path / "data" / "fine")
    assert main(["ls", "--store", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "mine" in out and "damaged" in out and "fine" in out


def test_names_with_dollars_are_drawn_as_written(tmp_path, capsys):
    """Feature and study names are text: `$\\nope$` is neither TeX nor a crash (matplotlib's mathtext)."""
    root = tmp_path / "data" / "odd$name"
    study = _hand_made(root)
    odd = {"f1": "$\\nope{$ loss", "f2": "cost $5"}
    for s in range(6):
        _rewrite(study, s, lambda f: f.rename(columns=odd))
    meta = json.loads((root / "study.json").read_text())
    meta["features"] = list(odd.values())
    (root / "study.json").write_text(json.dumps(meta))
    assert main(["fit", "--store", str(tmp_path / "data"), "--max-states", "2", "--resamples", "0", "--no-audit",
                 "--jobs", "1", "-q"]) == 0
    capsys.readouterr()
    assert main(["report", "--store", str(tmp_path / "data")]) == 0, capsys.readouterr().err
    svg = next(root.glob("reports/*/state_profiles.svg")).read_text()
    assert "nope" in svg  # the literal name, not a rendered (or failed) formula


def test_more_features_than_the_runs_can_carry_is_refused_at_once(tmp_path, capsys):
    """1,000 features over 6 runs of 30 checkpoints: a full covariance needs 1,001 rows per state and
    each fold trains on 144; refused in one line before any fit (it used to run for minutes)."""
    import time

    root = tmp_path / "data" / "wide"
    study = _hand_made(root)
    rng = np.random.default_rng(1)
    cols = [f"w{i}" for i in range(1000)]
    for s in range(6):
        _rewrite(study, s, lambda f: pd.concat([f, pd.DataFrame(rng.normal(size=(len(f), 1000)), columns=cols)],
                                               axis=1))
    meta = json.loads((root / "study.json").read_text())
    meta["features"] = cols
    (root / "study.json").write_text(json.dumps(meta))
    capsys.readouterr()
    t0 = time.perf_counter()
    assert main(["fit", "--store", str(tmp_path / "data"), "--jobs", "1"]) == 2
    assert time.perf_counter() - t0 < 20
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1000 features with --covariance full need at least 1001 checkpoints" in err[0]
    assert "--covariance diag" in err[0]


def test_trainer_state_that_is_absurdly_deep_or_holds_text_is_said_so(tmp_path, caplog):
    import logging

    from latent.collect.checkpoints import trainer_scalars
    from latent.errors import UserError

    run = tmp_path / "run"
    run.mkdir()
    (run / "trainer_state.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="cannot read .*trainer_state.json .*RecursionError"):
        trainer_scalars(run, [])
    (run / "trainer_state.json").write_text(json.dumps({"log_history": [
        {"step": 10, "loss": 1.5, "eval_loss": "0.9"}, {"step": 20, "loss": 1.2, "eval_loss": 0.8}]}))
    with caplog.at_level(logging.WARNING, logger="latent"):
        got = trainer_scalars(run, [])
    assert got == {10: {"loss": 1.5}, 20: {"loss": 1.2, "eval_loss": 0.8}}
    assert any("1 logged value(s) of eval_loss are not numbers" in r.getMessage() for r in caplog.records)


def test_what_killed_fits_and_reports_left_is_cleaned_and_a_stranded_fit_restored(tmp_path, capsys):
    from latent import locks
    from latent.store import replace_lock_path

    study = _hand_made(tmp_path / "data" / "mine")
    fits, reports = study.fits_dir, study.reports_dir
    # killed between the two renames of a refit: the previous fit is set aside, the new one not in yet
    (fits / ".old-abc-1x2y" / "fit").mkdir(parents=True)
    (fits / ".old-abc-1x2y" / "fit" / "model.json").write_text("{}")
    (fits / ".tmp-abc-9z8w").mkdir()
    (fits / ".old-def-0000" / "fit").mkdir(parents=True)  # set aside, and the new one did land
    (fits / "def").mkdir()
    (fits / "def" / "model.json").write_text("{}")
    (reports / ".def.tmp-q1w2").mkdir(parents=True)
    # a live writer of "ghi": its temporary directory is left alone
    (fits / ".tmp-ghi-live").mkdir()
    held = locks.acquire(replace_lock_path(fits, "ghi"))
    try:
        capsys.readouterr()
        assert main(["ls", "--store", str(tmp_path / "data")]) == 0
        out = capsys.readouterr().out
    finally:
        held.release()
    assert (fits / "abc" / "model.json").is_file() and "restored abc" in out
    left = sorted(p.name for p in fits.iterdir() if p.name != ".locks")
    assert left == [".tmp-ghi-live", "abc", "def"]
    assert not any(reports.glob(".def.tmp-*"))
    assert sorted(study.fit_ids()) == ["abc", "def"]


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGTERM"), reason="needs SIGTERM")
def test_sigterm_during_a_fit_cleans_up_like_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from latent.simulate import SimConfig, simulate, write_study

    table, truth = simulate(SimConfig(n_main=4, detours=1, n_runs=30, n_checkpoints=300, seed=3))
    write_study(tmp_path / "sim", table, truth)
    proc = subprocess.Popen([sys.executable, "-m", "latent", "fit", "--store", str(tmp_path), "--study", "sim",
                             "--jobs", "2", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # inside model selection
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "latent fit: terminated (SIGTERM); rerun the same command to resume"
    fits = tmp_path / "sim" / "fits"
    assert not fits.exists() or not any(p.name.startswith((".tmp-", ".old-")) for p in fits.iterdir())
