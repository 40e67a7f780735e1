"""latent collect end to end: batch-vs-alone equivalence, the store's behaviour, kill-and-resume."""

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latent.collect.study import collect_study, parse_seeds
from latent.cli import main
from latent.errors import UserError
from latent.store import Study

SMALL = ["p=17", "d_embed=8", "d_hidden=32", "log_every=5"]
TINY_TRANSFORMER = ["model=transformer", "p=11", "d_model=16", "n_heads=2", "d_mlp=32", "batch_size=16",
                    "log_every=2", "beta2=0.999", "lr=1e-3"]


def _collect(store, seeds, overrides, epochs, **kw):
    return collect_study("modadd", seeds, overrides=list(overrides) + [f"epochs={epochs}"], store=store,
                         threads=1, progress=False, **kw)


def _table(store, name, seed):
    return Study(Path(store) / name).read_run(seed)


@pytest.mark.parametrize("overrides,epochs", [(SMALL, 40), (TINY_TRANSFORMER, 8)], ids=["mlp-fullbatch", "transformer-minibatch"])
def test_seed_trained_alone_equals_seed_in_batch(tmp_path, overrides, epochs):
    _collect(tmp_path / "batch", 6, overrides, epochs)
    _collect(tmp_path / "alone", "4", overrides, epochs)  # "4" is a count: seeds 0-3
    _collect(tmp_path / "single", "5-5", overrides, epochs)
    for seed, store in ((2, "alone"), (5, "single")):
        batched = _table(tmp_path / "batch", "modadd", seed)
        alone = _table(tmp_path / store, "modadd", seed)
        assert list(batched.columns) == list(alone.columns)
        assert len(batched) == len(alone) > 3
        np.testing.assert_allclose(alone.to_numpy(float), batched.to_numpy(float), rtol=1e-5, atol=1e-7)
    # ... and different seeds really differ.
    a, b = _table(tmp_path / "batch", "modadd", 0), _table(tmp_path / "batch", "modadd", 1)
    assert not np.allclose(a["l2"], b["l2"])


SMALLEST = {  # each task's smallest config: 40 seeds in a few seconds
    "modadd": ["p=7", "d_embed=4", "d_hidden=8", "epochs=12", "log_every=4"],
    "parity": ["n_bits=10", "hidden=8", "n_train=40", "n_val=20", "batch_size=16", "epochs=3", "log_every=1"],
    "mnist": ["source=digits", "hidden=8", "n_val=50", "n_train=64", "batch_size=32", "epochs=2", "log_every=2",
              "train_eval_size=32"],
}


@pytest.mark.parametrize("task", list(SMALLEST))
def test_seed_trained_alone_equals_seed_in_a_batch_of_40(tmp_path, task):
    collect_study(task, 40, overrides=SMALLEST[task], store=tmp_path / "batch", threads=1, progress=False)
    batch = Study(tmp_path / "batch" / task)
    for seed in (0, 17, 39):
        collect_study(task, f"{seed}-{seed}", overrides=SMALLEST[task], store=tmp_path / f"alone-{seed}", threads=1,
                      progress=False)
        alone = Study(tmp_path / f"alone-{seed}" / task).read_run(seed)
        batched = batch.read_run(seed)
        assert list(alone.columns) == list(batched.columns) and len(alone) == len(batched) >= 3
        np.testing.assert_allclose(alone.to_numpy(float), batched.to_numpy(float), rtol=1e-5, atol=1e-7)
    assert not np.allclose(batch.read_run(0)["l2"], batch.read_run(39)["l2"])


def test_rows_columns_and_study_record(tmp_path):
    res = _collect(tmp_path, 2, SMALL, 12, command="latent collect --task modadd")
    assert res.seeds_trained == [0, 1] and not res.nothing_to_do
    study = Study(tmp_path / "modadd")
    meta = study.read_meta()
    assert meta["task"] == "modadd" and meta["seeds"] == [0, 1]
    assert meta["convergence"] == {"metric": "val_acc", "threshold": 0.9, "direction": "above"}
    assert meta["config"]["p"] == 17 and meta["config"]["epochs"] == 12
    assert meta["command"] == "latent collect --task modadd"
    assert {"torch", "numpy", "latent", "python"} <= set(meta["versions"])
    frame = study.read_run(1)
    assert list(frame.columns[:3]) == ["seed", "step", "epoch"]
    assert set(meta["features"]) <= set(frame.columns)
    assert {"train_loss", "val_loss", "train_acc", "val_acc"} <= set(frame.columns)
    assert frame["step"].tolist() == [0, 5, 10, 12]  # every log_every epochs and the last one
    assert (frame["seed"] == 1).all()
    assert frame[meta["features"]].notna().all().all()
    manifest = json.loads(study.run_manifest_path(1).read_text())
    assert manifest["status"] == "done" and manifest["rows"] == 4
    assert not study.state_dir.exists() or not any(study.state_dir.iterdir())  # no state left behind


def test_train_metrics_at_checkpoint_are_those_of_its_weights(tmp_path):
    # Full-batch training takes train loss from the next step's forward pass; the last
    # checkpoint uses an explicit evaluation. Both must describe the same weights: rerunning
    # with fewer epochs makes an intermediate checkpoint the last one.
    _collect(tmp_path / "long", 1, SMALL, 20)
    _collect(tmp_path / "short", 1, SMALL, 10)
    long, short = _table(tmp_path / "long", "modadd", 0), _table(tmp_path / "short", "modadd", 0)
    row_long = long[long["step"] == 10].iloc[0]
    row_short = short[short["step"] == 10].iloc[0]
    for col in ("train_loss", "train_acc", "val_loss", "val_acc", "l2"):
        assert row_long[col] == pytest.approx(row_short[col], rel=1e-5)


def _snapshot(root):
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
    return out


def test_rerun_finished_study_does_nothing(tmp_path, capsys):
    args = ["collect", "--task", "modadd", "--seeds", "2", "--epochs", "6", "--store", str(tmp_path), "--no-progress",
            "--threads", "1"] + [x for kv in SMALL for x in ("--set", kv)]
    assert main(args) == 0
    import shlex

    assert Study(tmp_path / "modadd").read_meta()["command"] == "latent " + shlex.join(args)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "complete" in out and "nothing to do" in out
    assert _snapshot(tmp_path) == before
    # the line a new user copies next finds the study (2 runs are too few to fit: that is what it says)
    nxt = out.strip().splitlines()[-1]
    assert nxt == f"next: latent fit --store {tmp_path} --study modadd"
    assert main(nxt.split()[2:] + ["--threshold", "0.01"]) == 2
    assert "too few runs for cross-validation: 2 usable" in capsys.readouterr().err


def test_adding_seeds_trains_only_new_ones(tmp_path):
    _collect(tmp_path, 2, SMALL, 6)
    before = _snapshot(tmp_path / "modadd" / "runs")
    res = _collect(tmp_path, 4, SMALL, 6)
    assert res.seeds_trained == [2, 3]
    after = _snapshot(tmp_path / "modadd" / "runs")
    for name in ("seed-000.parquet", "seed-001.parquet", "seed-000.json"):
        assert after[name] == before[name]
    assert Study(tmp_path / "modadd").read_meta()["seeds"] == [0, 1, 2, 3]
    assert Study(tmp_path / "modadd").status() == {"done": 4, "total": 4, "status": "done", "runs": {}}


def test_study_records_its_checkpoint_schedule_and_data(tmp_path):
    _collect(tmp_path / "a", 1, SMALL, 12)
    _collect(tmp_path / "b", 1, SMALL[:-1] + ["log_every=5", "p=19"], 12)
    a, b = (Study(tmp_path / x / "modadd") for x in "ab")
    meta = a.read_meta()
    assert meta["schedule"] == {"every": 5, "last": 12, "steps_per_epoch": 1}
    assert a.schedule() == a.read_run(0)["step"].tolist() == [0, 5, 10, 12]
    assert meta["data"]["source"] == "generated"
    assert meta["data"]["fingerprint"]["shapes"] == {"a": [289], "b": [289], "y": [289]}  # all 17² pairs
    assert b.read_meta()["data"]["fingerprint"]["sha256"] != meta["data"]["fingerprint"]["sha256"]


def test_study_from_before_fingerprints_is_upgraded_once(tmp_path, caplog):
    _collect(tmp_path, 1, SMALL, 6)
    study = Study(tmp_path / "modadd")
    fresh = study.read_meta()
    old = {k: v for k, v in fresh.items() if k != "schedule"}
    old["data"] = {k: v for k, v in fresh["data"].items() if k != "fingerprint"}
    study.write_meta(old)
    table = study.run_table_path(0).read_bytes()
    assert study.run_status(0).status == "done"  # judged by its manifest meanwhile
    _collect(tmp_path, 2, SMALL, 6)
    assert "records no data fingerprint" in caplog.text
    meta = study.read_meta()
    assert meta["schedule"] == fresh["schedule"] and meta["data"] == fresh["data"] and meta["seeds"] == [0, 1]
    assert study.run_table_path(0).read_bytes() == table
    assert study.status()["status"] == "done"


def test_other_config_needs_new_name_or_overwrite(tmp_path):
    _collect(tmp_path, 1, SMALL, 6)
    before = _snapshot(tmp_path)
    with pytest.raises(UserError, match="--study NAME.*--overwrite"):
        _collect(tmp_path, 1, SMALL + ["lr=1e-2"], 6)
    assert _snapshot(tmp_path) == before
    _collect(tmp_path, 1, SMALL + ["lr=1e-2"], 6, study="modadd-lr")
    assert Study(tmp_path / "modadd-lr").read_meta()["config"]["lr"] == 1e-2
    _collect(tmp_path, 1, SMALL + ["lr=1e-2"], 6, overwrite=True)
    assert Study(tmp_path / "modadd").read_meta()["config"]["lr"] == 1e-2


@pytest.mark.parametrize(
    "text,expected",
    [("3", [0, 1, 2]), ("5-7", [5, 6, 7]), ("1,4,2", [1, 2, 4]), ("0-2,9", [0, 1, 2, 9]), (4, [0, 1, 2, 3])],
)
def test_parse_seeds(text, expected):
    assert parse_seeds(text) == expected


BAD = [
    (["--task", "nope"], "unknown task"),
    (["--task", "modadd", "--seeds", "0"], "--seeds"),
    (["--task", "modadd", "--seeds", "-3"], "--seeds"),
    (["--task", "modadd", "--seeds", "many"], "--seeds"),
    (["--task", "modadd", "--set", "nope=1"], "valid keys"),
    (["--task", "modadd", "--set", "lr=fast"], "lr"),
    (["--task", "modadd", "--set", "p=2.5"], "p"),
    (["--task", "modadd", "--preset", "huge"], "unknown preset"),
    (["--task", "modadd", "--study", "a/b"], "study name"),
    (["--task", "modadd", "--study", ".."], "study name"),
    (["--task", "modadd", "--set", "lr=1e-2"], "--overwrite"),  # existing name, other config
    (["--task", "modadd", "--threads", "0"], "--threads"),
]


def test_bad_input_is_one_line_exit_2_and_store_untouched(tmp_path, capsys):
    store = tmp_path / "store"
    _collect(store, 1, [], 2)
    before = _snapshot(store)
    cases = [(args + ["--store", str(store)], needle) for args, needle in BAD]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases.append((["--task", "modadd", "--store", str(blocker / "store")], "not writable"))
    if not __import__("torch").cuda.is_available():
        cases.append((["--task", "modadd", "--device", "cuda", "--store", str(store)], "CUDA"))
    for args, needle in cases:
        capsys.readouterr()
        rc = main(["collect", "--no-progress", "--epochs", "2"] + args)
        err = capsys.readouterr().err
        assert rc == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (args, err)
        assert needle in lines[0], (args, lines[0])
        assert _snapshot(store) == before, args


def test_cli_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["collect", "--task", "modadd", "--epochs", "ten"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--epochs" in err[0]


# --------------------------------------------------------------------------- kill and resume

KILL_ARGS = ["--task", "modadd", "--seeds", "3", "--epochs", "150", "--threads", "1", "--save-every", "0",
             "--no-progress", "--set", "p=23", "--set", "d_hidden=64", "--set", "batch_size=64", "--set", "log_every=3"]


def _run_cli(store, timeout=None):
    cmd = [sys.executable, "-m", "latent", "collect", *KILL_ARGS, "--store", str(store)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_kill_minus_9_and_resume_gives_the_uninterrupted_rows(tmp_path):
    ref = _run_cli(tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    rng = random.Random(1234)
    store = tmp_path / "killed"
    kills = 0
    for attempt in range(6):
        proc = _run_cli(store)
        state_dir = store / "modadd" / "state"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not (state_dir.exists() and any(state_dir.iterdir())):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        # What is on disk after a kill is always readable.
        for p in (store / "modadd" / "runs").glob("*.parquet"):
            pd.read_parquet(p)
        if attempt >= 2:
            break
    assert kills >= 1
    final = _run_cli(store)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()
    if b"nothing to do" not in out:  # the last kill left save points: the resume says where each starts
        # (seeds are saved one after another, so a kill can leave them at different steps)
        said = re.findall(rb"latent collect: resuming seed\(s\) ([\d,-]+) from step [\d,]+ \(their last save point\)",
                          err)
        assert said, err
    for seed in range(3):
        pd.testing.assert_frame_equal(_table(store, "modadd", seed), _table(tmp_path / "ref", "modadd", seed))
    assert not any((store / "modadd" / "state").glob("*.npz"))
    again = _run_cli(store)
    out, _ = again.communicate(timeout=120)
    assert b"nothing to do" in out


def test_paper_preset_and_layernorm_variant_run_end_to_end(tmp_path, capsys):
    # The reference transformer (p = 113, batch 2048) for one epoch; then the stabilised variant.
    args = ["collect", "--task", "modadd", "--preset", "paper", "--seeds", "2", "--epochs", "1", "--log-every", "1",
            "--store", str(tmp_path), "--no-progress", "--threads", "1"]
    assert main(args) == 0
    study = Study(tmp_path / "modadd-paper")
    meta = study.read_meta()
    assert meta["preset"] == "paper" and meta["config"]["model"] == "transformer"
    assert meta["config"]["batch_size"] == 2048 and meta["config"]["p"] == 113
    frame = study.read_run(1)
    assert frame["step"].tolist() == [0, 1]
    assert frame[meta["features"]].notna().all().all()
    assert main(args + ["--layernorm"]) == 0
    ln = Study(tmp_path / "modadd-paper-ln").read_meta()["config"]
    assert ln["layernorm"] is True and ln["batch_size"] == 256  # the paper's stabilised setting
    assert ln["epochs"] == 1  # --epochs wins over the variant's default


def test_paper_layernorm_variant_defaults_to_the_papers_300_epochs(tmp_path, monkeypatch):
    # reference.md A1: the stabilised runs have checkpoints at epochs 0-290 (30 points), batch 256.
    import latent.collect.study

    seen = {}
    monkeypatch.setattr(latent.collect.study, "collect_study", lambda task, seeds, **kw: seen.update(kw) or (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        main(["collect", "--task", "modadd", "--preset", "paper", "--layernorm", "--seeds", "1", "--store", str(tmp_path)])
    assert seen["overrides"]["epochs"] == 290 and seen["overrides"]["batch_size"] == 256
    assert seen["overrides"]["layernorm"] is True and seen["study"] == "modadd-paper-ln"


def test_the_tasks_declare_their_variants_and_the_command_line_offers_exactly_those(tmp_path, monkeypatch, capsys):
    import latent.collect.study
    from latent.cli import build_parser
    from latent.cli.collect import VARIANT_FLAGS
    from latent.collect.tasks import TASKS

    declared = {v.name: t.name for t in TASKS.values() for v in t.variants}
    assert declared == {"layernorm": "modadd", "no-batchnorm": "cifar", "no-residual": "cifar"}
    collect = build_parser()._subparsers._group_actions[0].choices["collect"]
    help_text = " ".join(collect.format_help().split())
    for name, task in declared.items():
        assert f"{task}: " in help_text and name in help_text
    assert set(VARIANT_FLAGS) <= set(declared)  # every shorthand flag is a declared variant
    # the shorthand and --variant are one thing; the variant's preset defaults and suffix come from the task
    seen = []
    monkeypatch.setattr(latent.collect.study, "collect_study", lambda task, seeds, **kw: seen.append(kw) or (_ for _ in ()).throw(SystemExit(0)))
    for flags in (["--layernorm"], ["--variant", "layernorm"], ["--variant", "layernorm", "--layernorm"]):
        with pytest.raises(SystemExit):
            main(["collect", "--task", "modadd", "--preset", "contrast", *flags, "--store", str(tmp_path)])
    assert all(kw["study"] == "modadd-contrast-ln" and kw["overrides"] == {"layernorm": True, "batch_size": 256, "epochs": 400}
               for kw in seen) and len(seen) == 3
    capsys.readouterr()
    assert main(["collect", "--task", "parity", "--variant", "layernorm", "--store", str(tmp_path)]) == 2
    assert "does not apply to task 'parity' (it has none)" in capsys.readouterr().err


@pytest.mark.cifar
def test_cifar_variant_flags_name_the_study_and_set_the_threshold(tmp_path, capsys):
    base = ["collect", "--task", "cifar", "--seeds", "1", "--epochs", "1", "--log-every", "1", "--store", str(tmp_path),
            "--no-progress", "--threads", "1", "--set", "n_train=32", "--set", "n_val=16", "--set", "batch_size=16"]
    assert main(base + ["--no-batchnorm", "--no-residual"]) == 0
    cfg = Study(tmp_path / "cifar-destab").read_meta()["config"]
    assert (cfg["batchnorm"], cfg["residual"], cfg["threshold"]) == (False, False, 0.4)
    assert main(base + ["--no-residual"]) == 0
    cfg = Study(tmp_path / "cifar-nores").read_meta()["config"]
    assert (cfg["batchnorm"], cfg["residual"], cfg["threshold"]) == (True, False, 0.6)
    capsys.readouterr()
    assert main(["collect", "--task", "modadd", "--no-batchnorm", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--variant no-batchnorm does not apply to task 'modadd' (its variants: layernorm)" in err
    assert err.count("\n") == 1


@pytest.mark.cifar
def test_task_default_threads_apply_only_without_threads_flag(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        collect_study("cifar", 1, overrides=["n_train=32", "n_val=16", "batch_size=16", "epochs=1", "log_every=1"],
                      store=tmp_path, progress=False)
        assert torch.get_num_threads() == 1  # cifar's default_threads
        torch.set_num_threads(2)
        collect_study("cifar", 1, overrides=["n_train=32", "n_val=16", "batch_size=16", "epochs=1", "log_every=1"],
                      store=tmp_path, study="c2", threads=2, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_contrast_preset_is_the_searched_config_on_both_sides(tmp_path, monkeypatch):
    # `--preset contrast` must train exactly what bench/search_contrast.py measured as "t59f"
    # (docs/results.md quotes those numbers), with and without --layernorm.
    import sys as _sys

    import latent.collect.study
    from latent.collect.tasks.modadd import PRESETS, ModAddConfig

    _sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from search_contrast import variant_overrides

    seen = []
    monkeypatch.setattr(latent.collect.study, "collect_study",
                        lambda task, seeds, **kw: seen.append(kw) or (_ for _ in ()).throw(SystemExit(0)))
    for extra in ([], ["--layernorm"]):
        with pytest.raises(SystemExit):
            main(["collect", "--task", "modadd", "--preset", "contrast", "--seeds", "40", "--store", str(tmp_path), *extra])
    for kw, variant in zip(seen, ("plain", "ln")):
        resolved = {**ModAddConfig().__dict__, **PRESETS[kw["preset"]], **kw["overrides"]}
        searched = {**ModAddConfig().__dict__, **variant_overrides("t59f", variant)}
        assert resolved == searched, variant
    assert [kw["study"] for kw in seen] == [None, "modadd-contrast-ln"]
