"""latent.collect.recorder: rows equal to brute-force statistics, a study fit accepts, safe under
several processes, kills and misuse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from latent.collect.modules import module_metrics
from latent.collect.recorder import Recorder
from latent.errors import UserError
from latent.store import REFERENCE_COLUMNS, Study
from test_modules import assert_columns, brute_force

ROOT = Path(__file__).resolve().parents[1]


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def _train(store, seed: int, steps: int = 12, every: int = 4, **options):
    """Train a tiny MLP with a Recorder; returns the weights and values at every log."""
    model = _mlp(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(100 + seed)
    x, y = torch.randn(32, 4, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    logged = []
    with Recorder(store, study="exp", seed=seed, convergence="val_acc>0.9", **options) as rec:
        for step in range(steps + 1):
            if step % every == 0:
                acc = float((model(x).argmax(1) == y).float().mean())
                rec.log(step, model, val_acc=acc, val_loss=torch.tensor(1.0 / (step + 1)))
                logged.append((step, [p.detach().clone() for p in model.parameters()], acc))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return logged


def test_rows_are_the_statistics_of_the_weights_at_each_log(tmp_path):
    logged = _train(tmp_path, seed=3)
    table = Study(tmp_path / "exp").read_run(3)
    assert list(table.columns) == ["seed", "step", *REFERENCE_COLUMNS, "val_acc", "val_loss"]
    assert table["step"].tolist() == [0, 4, 8, 12] and (table["seed"] == 3).all()
    assert table["step"].dtype == np.int64
    for (step, (w1, b1, w2, b2), acc), (_, row) in zip(logged, table.iterrows()):
        assert_columns({c: row[c] for c in REFERENCE_COLUMNS}, brute_force([w1, w2], biases=[b1, b2]))
        assert row["val_acc"] == acc
        assert row["val_loss"] == pytest.approx(1.0 / (step + 1))
    # the weights did move, so equal rows would not pass by accident
    assert table["l2"].nunique() == 4


def test_study_json_and_manifests_are_what_fit_reads(tmp_path):
    for seed in (0, 1):
        _train(tmp_path, seed=seed, steps=4)
    study = Study(tmp_path / "exp")
    meta = json.loads(study.study_file.read_text())
    assert meta == {
        "format": "latent.study/1", "name": "exp", "task": "external", "preset": "external",
        "source": {"kind": "recorder", "include": [], "exclude": []}, "seeds": [0, 1], "step_unit": "step",
        "features": list(REFERENCE_COLUMNS), "metrics": [*REFERENCE_COLUMNS, "val_acc", "val_loss"],
        "convergence": {"metric": "val_acc", "threshold": 0.9, "direction": "above"},
        "metric_variant": "reference",
    }
    assert "schedule" not in meta
    manifest = study.read_manifest(1)
    assert manifest["status"] == "done" and manifest["rows"] == 2 and manifest["last_step"] == 4
    table, statuses = study.read_finished_runs()
    assert sorted(table["seed"].unique()) == [0, 1]
    assert {s: st.status for s, st in statuses.items()} == {0: "done", 1: "done"}
    assert study.status()["status"] == "done"


def test_table_is_written_every_n_logs_and_the_seed_shows_running(tmp_path):
    model = _mlp(0)
    rec = Recorder(tmp_path, study="exp", seed=0, flush_every=2, flush_seconds=1e9)
    study = rec.study
    rec.log(0, model, val_acc=0.1)
    assert not study.run_table_path(0).exists()  # buffered
    rec.log(1, model, val_acc=0.2)
    assert len(study.read_run(0)) == 2
    status = study.run_status(0)
    assert status.status == "running" and str(os.getpid()) in status.detail
    rec.log(2, model, val_acc=0.3)
    assert len(study.read_run(0)) == 2
    rec.close()
    assert len(study.read_run(0)) == 3 and study.run_status(0).status == "done"


def test_table_is_written_when_flush_seconds_have_passed(tmp_path):
    rec = Recorder(tmp_path, study="exp", seed=0, flush_every=1000, flush_seconds=0)
    rec.log(0, _mlp(0))
    assert len(rec.study.read_run(0)) == 1
    rec.close()


def test_a_second_recorder_of_a_live_seed_is_refused_and_a_done_seed_needs_overwrite(tmp_path):
    first = Recorder(tmp_path, study="exp", seed=2)
    with pytest.raises(UserError, match=rf"seed 2 of study 'exp' is being recorded by pid {os.getpid()}") as info:
        Recorder(tmp_path, study="exp", seed=2)
    assert "\n" not in str(info.value)
    other = Recorder(tmp_path, study="exp", seed=5)  # another seed of the same study is fine
    for step in (0, 1):
        first.log(step, _mlp(0))
    first.close()
    other.log(0, _mlp(1))
    other.close()
    with pytest.raises(UserError, match="already recorded \\(2 rows\\); pass overwrite=True"):
        Recorder(tmp_path, study="exp", seed=2)
    with Recorder(tmp_path, study="exp", seed=2, resume=True) as more:  # continue a done run
        more.log(1, _mlp(2))  # replaces the old row at step 1
        more.log(2, _mlp(2))
    assert Study(tmp_path / "exp").read_run(2)["step"].tolist() == [0, 1, 2]
    with Recorder(tmp_path, study="exp", seed=2, overwrite=True) as again:
        assert not again.study.run_table_path(2).exists()  # the old rows are gone at once
        again.log(7, _mlp(2))
    assert Study(tmp_path / "exp").read_run(2)["step"].tolist() == [7]
    assert json.loads((tmp_path / "exp" / "study.json").read_text())["seeds"] == [2, 5]


KILLED = """
import os, signal, sys, torch
from torch import nn
from latent.collect.recorder import Recorder
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 3))
rec = Recorder(sys.argv[1], study="exp", seed=4, convergence="val_acc>0.9", flush_every=1)
for step in range(3):
    rec.log(step * 10, model, val_acc=0.5)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_run_is_partial_fit_skips_it_and_a_rerun_restarts_it(tmp_path):
    _train(tmp_path, seed=0, steps=4)
    proc = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], cwd=ROOT, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    study = Study(tmp_path / "exp")
    status = study.run_status(4)
    assert status.status == "partial" and status.rows == 3
    table, statuses = study.read_finished_runs()
    assert table["seed"].unique().tolist() == [0] and statuses[4].status == "partial"
    # resume=True keeps the rows before the first step logged anew
    with Recorder(tmp_path, study="exp", seed=4, resume=True) as rec:
        rec.log(20, _mlp(4), val_acc=0.7)
    assert study.read_run(4)["step"].tolist() == [0, 10, 20]
    assert study.read_run(4)["val_acc"].tolist() == [0.5, 0.5, 0.7]
    # a plain rerun of an unfinished seed starts from no rows
    study.run_manifest_path(4).write_text(json.dumps({"format": "latent.run/1", "seed": 4, "status": "running"}))
    with Recorder(tmp_path, study="exp", seed=4) as rec:
        rec.log(0, _mlp(4), val_acc=0.1)
    assert study.read_run(4)["step"].tolist() == [0]
    assert study.run_status(4).status == "done"


def test_an_exception_in_the_with_block_leaves_the_run_unfinished(tmp_path):
    with pytest.raises(RuntimeError):
        with Recorder(tmp_path, study="exp", seed=1, flush_every=100) as rec:
            rec.log(0, _mlp(1), val_acc=0.2)
            raise RuntimeError("training diverged")
    status = Study(tmp_path / "exp").run_status(1)
    assert status.status == "partial" and status.rows == 1  # the rows were kept


WRITER = """
import sys, time, torch
from torch import nn
from latent.collect.recorder import Recorder
seed = int(sys.argv[2])
torch.manual_seed(seed)
model = nn.Sequential(nn.Linear(4, 3))
with Recorder(sys.argv[1], study="shared", seed=seed, flush_seconds=0) as rec:
    for step in range(20):
        # every log writes, and each process brings new columns, so study.json changes under contention
        rec.log(step, model, **{f"m{seed}_{step // 5}": float(step)})
"""


def test_processes_recording_different_seeds_into_one_study(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(s)], cwd=ROOT,
                              stderr=subprocess.PIPE) for s in (0, 1)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()[-2000:]
    study = Study(tmp_path / "shared")
    meta = study.read_meta()
    assert meta["seeds"] == [0, 1]
    assert {f"m{s}_{k}" for s in range(2) for k in range(4)} <= set(meta["metrics"])
    assert all(study.run_status(s).status == "done" and study.run_status(s).rows == 20 for s in range(2))


def test_studies_made_otherwise_or_with_another_rule_are_refused(tmp_path):
    collected = tmp_path / "modadd"
    collected.mkdir()
    (collected / "study.json").write_text(json.dumps({"task": "modadd", "seeds": [0]}))
    with pytest.raises(UserError, match="made by `latent collect --task modadd`, not by a Recorder"):
        Recorder(tmp_path, study="modadd", seed=1)
    imported = tmp_path / "imp"
    imported.mkdir()
    (imported / "study.json").write_text(json.dumps({"task": "external", "source": {"kind": "table"}}))
    with pytest.raises(UserError, match="made by `latent import` \\(table\\)"):
        Recorder(tmp_path, study="imp", seed=1)
    Recorder(tmp_path, study="exp", seed=0, convergence="val_acc>0.9").close(done=False)
    with pytest.raises(UserError, match="records the convergence rule val_acc>0.9, not val_loss<0.1"):
        Recorder(tmp_path, study="exp", seed=1, convergence="val_loss<0.1")
    with pytest.raises(UserError, match="counts steps in 'step', not 'epoch'"):
        Recorder(tmp_path, study="exp", seed=1, step_unit="epoch")
    # no rule given: the study's applies
    rec = Recorder(tmp_path, study="exp", seed=1)
    rec.close(done=False)
    assert Study(tmp_path / "exp").read_meta()["convergence"]["metric"] == "val_acc"


@pytest.mark.parametrize("call, text", [
    (lambda r, m: r.log(-1, m), "step must be >= 0"),
    (lambda r, m: r.log(1.5, m), "step must be a whole number"),
    (lambda r, m: r.log(0, m, acc="high"), "'acc' is a str, not a number"),
    (lambda r, m: r.log(0, m, acc=torch.ones(3)), "'acc' is a tensor of shape (3,)"),
    (lambda r, m: r.log(0, m, l2=1.0), "l2 are taken by the recorder's own columns"),
    (lambda r, m: r.log(0, "model"), "not a state dict"),
    (lambda r, m: r.add(5, acc=1.0), "no row was logged at step 5"),
])
def test_bad_logs_are_one_line_errors(tmp_path, call, text):
    with Recorder(tmp_path, study="exp", seed=0) as rec:
        rec.log(3, _mlp(0)) if "step 5" in text else None
        with pytest.raises(UserError) as info:
            call(rec, _mlp(0))
        assert text in str(info.value) and "\n" not in str(info.value)


def test_steps_must_increase_and_a_closed_recorder_refuses(tmp_path):
    rec = Recorder(tmp_path, study="exp", seed=0)
    rec.log(5, _mlp(0))
    with pytest.raises(UserError, match="step 5 does not come after the last logged step 5"):
        rec.log(5, _mlp(0))
    rec.close()
    rec.close()  # twice is fine
    with pytest.raises(UserError, match="is closed"):
        rec.log(6, _mlp(0))


@pytest.mark.parametrize("kwargs, text", [
    ({"study": "exp", "seed": -1}, "seed=N, a whole number >= 0"),
    ({"study": "exp", "seed": True}, "seed=N"),
    ({"study": "a/b", "seed": 0}, "invalid study name"),
    ({"seed": 0}, "needs study=NAME"),
    ({"study": "exp", "seed": 0, "convergence": "val_acc>>1"}, "cannot read the convergence rule"),
    ({"study": "exp", "seed": 0, "flush_every": 0}, "flush_every must be"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, text):
    with pytest.raises(UserError, match=text.replace("(", "\\(").replace(")", "\\)")):
        Recorder(tmp_path, **kwargs)


def test_values_can_be_added_to_a_logged_row(tmp_path):
    with Recorder(tmp_path, study="exp", seed=0) as rec:
        rec.log(0, _mlp(0), train_loss=2.0)
        rec.log(10, _mlp(0), train_loss=1.0)
        rec.add(10, val_acc=0.95)
        rec.add(0, val_acc=0.1)
    table = Study(tmp_path / "exp").read_run(0)
    assert table["val_acc"].tolist() == [0.1, 0.95] and table["train_loss"].tolist() == [2.0, 1.0]


def test_a_state_dict_can_be_logged_and_a_missing_value_is_nan(tmp_path):
    model = _mlp(0)
    with Recorder(tmp_path, study="exp", seed=0) as rec:
        rec.log(0, model.state_dict(), val_acc=None)
    row = Study(tmp_path / "exp").read_run(0).iloc[0]
    assert {c: row[c] for c in REFERENCE_COLUMNS} == module_metrics(model)
    assert np.isnan(row["val_acc"])


def test_a_bias_free_model_leaves_the_bias_columns_out_of_the_features(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.Linear(6, 2, bias=False))
    with Recorder(tmp_path, study="nobias", seed=0, convergence="acc>0.5") as rec:
        rec.log(0, model, acc=0.1)
    meta = Study(tmp_path / "nobias").read_meta()
    assert meta["features"] == [c for c in REFERENCE_COLUMNS if not c.endswith("_b")]
    assert pd.isna(Study(tmp_path / "nobias").read_run(0)["mean_b"]).all()


def test_a_forgotten_recorder_releases_its_seed(tmp_path):
    import gc

    rec = Recorder(tmp_path, study="exp", seed=0, flush_every=1)
    rec.log(0, _mlp(0))
    del rec
    gc.collect()
    assert Study(tmp_path / "exp").run_status(0).status == "partial"  # not running, not done
    Recorder(tmp_path, study="exp", seed=0).close(done=False)  # the seed is free again


def test_closing_without_rows_does_not_mark_the_run_done(tmp_path, caplog):
    Recorder(tmp_path, study="exp", seed=0).close()
    assert "no row was logged" in caplog.text
    assert Study(tmp_path / "exp").run_status(0).status == "partial"


def test_the_core_package_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        import latent.store, latent.external, latent.fit, latent.cli
        assert "torch" not in sys.modules, "latent imported torch"
    """)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
