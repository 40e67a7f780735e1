"""Optional metric groups (latent collect --metric-groups): recorded, checked on resume, and what
each task writes.

Expectations: column lists written out here; a study.json edited back to what a latent from before
groups wrote; the function group's values recomputed from the problem's own probe.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from latent.collect.function_space import FUNCTION_COLUMNS
from latent.collect.progress import PROGRESS_FEATURES
from latent.cli import main
from latent.store import REFERENCE_COLUMNS, Study

MODADD = ["--task", "modadd", "--set", "p=17", "--set", "d_embed=8", "--set", "d_hidden=16", "--set", "epochs=6",
          "--set", "log_every=3", "--no-progress"]
LOSSES = ["train_loss", "val_loss", "train_acc", "val_acc"]


def _cli(store, seeds, *extra):
    return main(["collect", *MODADD, "--seeds", str(seeds), "--store", str(store), *extra])


def _snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and "locks" not in p.parts}


def test_a_new_study_records_every_group_and_its_columns(tmp_path):
    assert _cli(tmp_path, 2) == 0
    study = Study(tmp_path / "modadd")
    meta = study.read_meta()
    assert meta["metric_groups"] == ["function", "progress"]
    assert meta["groups"]["weights"] == list(REFERENCE_COLUMNS) and meta["groups"]["losses"] == LOSSES
    assert meta["groups"]["progress"] == list(PROGRESS_FEATURES)  # the features; key frequencies are not
    assert meta["groups"]["function"] == list(FUNCTION_COLUMNS)
    frame = study.read_run(1)
    spectrum = [f"embed_f{k:02d}" for k in range(1, 9)]  # p = 17: frequencies 1..8
    keys = [f"key_freq_{i}" for i in range(1, 6)]
    assert set(meta["metrics"]) == set(REFERENCE_COLUMNS) | set(LOSSES) | set(PROGRESS_FEATURES) | set(
        FUNCTION_COLUMNS) | set(keys) | set(spectrum)
    assert set(meta["metrics"]) <= set(frame.columns)
    assert frame[meta["metrics"]].notna().all().all()
    np.testing.assert_allclose(frame[spectrum].sum(axis=1), 1.0, rtol=1e-9)  # shares of the embedding's energy
    assert frame[keys].isin(range(1, 9)).all().all()


def test_none_records_only_the_weights_and_losses(tmp_path):
    assert _cli(tmp_path, 1, "--metric-groups", "none") == 0
    study = Study(tmp_path / "modadd")
    assert study.read_meta()["metric_groups"] == []
    assert set(study.read_run(0).columns) == {"seed", "step", "epoch", *REFERENCE_COLUMNS, *LOSSES}


def test_resuming_with_other_groups_is_refused_in_one_line_and_the_store_is_untouched(tmp_path, capsys):
    assert _cli(tmp_path, 2, "--metric-groups", "function") == 0
    before = _snapshot(tmp_path)
    for extra, seeds in ((("--metric-groups", "all"), 2), (("--metric-groups", "progress,function"), 3)):
        capsys.readouterr()
        assert _cli(tmp_path, seeds, *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "metric groups function" in err[0] and "--overwrite" in err[0]
        assert _snapshot(tmp_path) == before
    # leaving it out means: as the study records
    assert _cli(tmp_path, 3) == 0
    study = Study(tmp_path / "modadd")
    assert study.read_meta()["metric_groups"] == ["function"]
    assert "pred_entropy" in study.read_run(2).columns and "restricted_loss" not in study.read_run(2).columns
    capsys.readouterr()
    assert _cli(tmp_path, 2, "--metric-groups", "bogus") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown group(s) bogus" in err[0] and "function, llc, progress" in err[0]


def test_a_study_from_before_groups_resumes_and_extends_as_it_was(tmp_path):
    assert _cli(tmp_path, 2, "--metric-groups", "none") == 0
    study = Study(tmp_path / "modadd")
    meta = study.read_meta()
    for key in ("metric_groups", "groups"):  # what an older latent wrote
        meta.pop(key)
    meta["config"].pop("key_freqs")
    study.study_file.write_text(json.dumps(meta))
    assert _cli(tmp_path, 2) == 0  # nothing to do, no complaint about the config
    assert _cli(tmp_path, 3) == 0  # extending trains the new seed as the old ones were trained
    assert set(study.read_run(2).columns) == set(study.read_run(0).columns)
    assert study.read_meta()["metric_groups"] == []


@pytest.mark.parametrize("task,extra", [
    ("parity", ["n_bits=10", "hidden=8", "n_train=40", "n_val=20", "batch_size=16", "epochs=2", "log_every=1"]),
    ("mnist", ["hidden=16", "n_train=64", "n_val=32", "batch_size=32", "epochs=1", "log_every=1"]),
])
def test_every_task_records_the_function_group(tmp_path, task, extra):
    args = ["collect", "--task", task, "--seeds", "2", "--store", str(tmp_path), "--no-progress"]
    for e in extra:
        args += ["--set", e]
    assert main(args) == 0
    study = Study(tmp_path / task)
    assert study.read_meta()["metric_groups"] == ["function"]
    frame = study.read_run(1)
    assert frame[list(FUNCTION_COLUMNS)].notna().all().all()
    assert (frame["loss_q10"] <= frame["loss_q50"]).all() and (frame["loss_q50"] <= frame["loss_q90"]).all()
    assert (frame["effective_dim"] >= 1 - 1e-9).all() and (frame["pred_entropy"] >= 0).all()


def test_fit_takes_group_names_for_features(tmp_path, capsys):
    from latent.errors import UserError
    from latent.fit import FitConfig

    assert _cli(tmp_path, 1, "--metric-groups", "progress") == 0
    meta = Study(tmp_path / "modadd").read_meta()
    resolve = lambda *names: FitConfig(features=names).resolve(meta).features  # noqa: E731
    assert resolve("progress") == tuple(PROGRESS_FEATURES)
    assert resolve("weights", "progress") == tuple(REFERENCE_COLUMNS) + tuple(PROGRESS_FEATURES)
    assert resolve("all") == tuple(REFERENCE_COLUMNS) + tuple(PROGRESS_FEATURES)  # every group but losses
    assert resolve("losses", "l2", "val_acc") == ("train_loss", "val_loss", "train_acc", "val_acc", "l2")
    with pytest.raises(UserError, match="records no function group"):
        resolve("function")
    # a study from before groups: weights are its features, losses its loss columns
    old = {k: v for k, v in meta.items() if k not in ("groups", "metric_groups")}
    assert FitConfig(features=("all",)).resolve(old).features == tuple(REFERENCE_COLUMNS)
