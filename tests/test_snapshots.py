"""Weight snapshots (latent collect --snapshots N, latent.snapshots): which checkpoints, what the
files hold, resume and batching, and what a bad file or a bad request gets.

Expectations are computed independently: the chosen steps written out by hand (and checked against
the definition with exact fractions), the weights by training the seed with the task's own problem
in a plain loop (no trainer, no writer), resume against an uninterrupted collection.
"""

import io
import logging
import random
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from latent import store
from latent.cli import main
from latent.collect.config import parse_overrides, resolve_config
from latent.collect.seeds import RunSeeds
from latent.collect.study import collect_study
from latent.collect.tasks.modadd import PRESETS, ModAddConfig, ModAddProblem
from latent.errors import UserError
from latent.snapshots import ARRAYS, RunSnapshots, read_run_snapshots, read_snapshots, snapshot_steps
from latent.store import Study

# epochs 12, a checkpoint every 2: 0, 2, …, 12 (7 checkpoints); 4 snapshots: indices 0, 2, 4, 6
MLP = ["p=17", "d_embed=8", "d_hidden=32", "log_every=2", "epochs=12"]
# minibatches (2 steps per epoch at p = 11: 60 training pairs, batch 32), so a step is not an epoch
TRANSFORMER = ["model=transformer", "p=11", "d_model=16", "n_heads=2", "d_mlp=32", "batch_size=32", "log_every=2",
               "epochs=12", "beta2=0.999", "lr=1e-3"]
STEPS = [0, 4, 8, 12]
TOL = dict(rtol=1e-5, atol=1e-7)  # the run tables' tolerance for a seed alone against a seed in a batch


def _collect(root, seeds, overrides, snapshots=4, **kw):
    return collect_study("modadd", seeds, overrides=list(overrides), store=root, threads=1, progress=False,
                         snapshots=snapshots, **kw)


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file() and "locks" not in p.parts}


def _trained_alone(overrides, seed, marks):
    """Seed ``seed`` trained by the task's own problem in a plain loop: its (embed, unembed) after each
    number of epochs in ``marks``."""
    cfg = resolve_config(ModAddConfig, PRESETS, "default", parse_overrides(ModAddConfig, overrides))
    import torch

    problem = ModAddProblem(cfg, [RunSeeds.derive(seed)], torch.device("cpu"))
    names = ("E", "W2") if cfg.model == "mlp" else ("W_E", "W_U")
    out, done = {}, 0
    for epoch in marks:
        for _ in range((epoch - done) * problem.steps_per_epoch):
            problem.train_step()
        done = epoch
        out[epoch] = tuple(problem.params[n].detach()[0].numpy().copy() for n in names)
    return out


# --------------------------------------------------------------------------- which checkpoints


@pytest.mark.parametrize("steps,count,expected", [
    (list(range(0, 13, 2)), 4, [0, 4, 8, 12]),
    (list(range(13)), 5, [0, 3, 6, 9, 12]),
    ([0, 3, 6, 9, 10], 3, [0, 6, 10]),  # the last checkpoint off the grid is still the last
    (list(range(6)), 3, [0, 3, 5]),  # index 2.5: halves round up
    (list(range(0, 13, 2)), 2, [0, 12]),
    (list(range(0, 13, 2)), 7, list(range(0, 13, 2))),
    (list(range(0, 13, 2)), 50, list(range(0, 13, 2))),  # more than there are: all of them
    (list(range(0, 13, 2)), 0, []),
])
def test_snapshot_steps_by_hand(steps, count, expected):
    assert snapshot_steps(steps, count) == expected


def test_snapshot_steps_are_evenly_spread_by_index():
    rng = random.Random(7)
    for _ in range(300):
        k = rng.randint(2, 400)
        steps = sorted(rng.sample(range(10_000), k))
        count = rng.randint(2, k)
        chosen = snapshot_steps(steps, count)
        assert len(chosen) == count and chosen[0] == steps[0] and chosen[-1] == steps[-1]
        idx = [steps.index(s) for s in chosen]
        assert all(b > a for a, b in zip(idx, idx[1:]))
        for i, j in enumerate(idx):  # each the nearest index to i (K - 1) / (count - 1)
            assert abs(j - Fraction(i * (k - 1), count - 1)) <= Fraction(1, 2)
    for bad in (1, -1):
        with pytest.raises(ValueError):
            snapshot_steps([0, 1, 2], bad)


# --------------------------------------------------------------------------- what is stored


@pytest.mark.parametrize("overrides,vocab,shapes", [
    (MLP, 17, ((17, 8), (17, 32))),
    (TRANSFORMER, 12, ((12, 16), (16, 12))),
    (TRANSFORMER + ["layernorm=true"], 12, ((12, 16), (16, 12))),
], ids=["mlp", "transformer", "transformer-layernorm"])
def test_files_hold_the_schedules_snapshots_of_the_trained_weights(tmp_path, overrides, vocab, shapes):
    _collect(tmp_path / "with", 2, overrides)
    study = Study(tmp_path / "with" / "modadd")
    plan = study.read_meta()["snapshots"]
    assert plan["steps"] == STEPS and plan["count"] == 4
    mlp = "model=transformer" not in overrides
    assert plan["axes"] == ({"embed": ["vocab", "d_embed"], "unembed": ["vocab", "d_hidden"]} if mlp
                            else {"embed": ["vocab", "d_model"], "unembed": ["d_model", "vocab"]})
    # the file: exactly three plain arrays, loadable without pickle
    with np.load(study.run_snapshots_path(1), allow_pickle=False) as z:
        assert sorted(z.files) == sorted(ARRAYS)
        assert z["steps"].dtype == np.int64 and z["embed"].dtype == z["unembed"].dtype == np.float32
    snaps = read_snapshots(study)
    assert sorted(snaps) == [0, 1]
    run = snaps[1]
    assert run.steps.tolist() == STEPS and run.complete
    assert run.embed.shape == (4, *shapes[0]) and run.unembed.shape == (4, *shapes[1])
    # the weights of seed 1, trained alone in a plain loop, at every snapshot step
    expected = _trained_alone(overrides, 1, STEPS)
    for i, step in enumerate(STEPS):
        np.testing.assert_allclose(run.embed[i], expected[step][0], **TOL)
        np.testing.assert_allclose(run.unembed[i], expected[step][1], **TOL)
        assert np.array_equal(run.at(step)[0], run.embed[i])
    assert not np.allclose(run.embed[0], run.embed[-1])  # training moved them
    assert not np.allclose(snaps[0].embed[0], run.embed[0])  # and seeds differ
    # snapshots only read the weights: the tables are those of a study without them
    _collect(tmp_path / "without", 2, overrides, snapshots=0)
    bare = Study(tmp_path / "without" / "modadd")
    for seed in (0, 1):
        assert study.read_run(seed).equals(bare.read_run(seed))
    assert "snapshots" not in bare.read_meta() and not bare.snapshots_dir.exists()
    assert read_snapshots(bare) == {}


@pytest.mark.parametrize("overrides", [MLP, TRANSFORMER], ids=["mlp-fullbatch", "transformer-minibatch"])
def test_a_seed_alone_has_the_snapshots_it_has_among_others(tmp_path, overrides):
    _collect(tmp_path / "batch", 4, overrides)
    _collect(tmp_path / "alone", "2-2", overrides)
    batched = read_snapshots(Study(tmp_path / "batch" / "modadd"))[2]
    alone = read_snapshots(Study(tmp_path / "alone" / "modadd"))
    assert sorted(alone) == [2]
    assert alone[2].steps.tolist() == batched.steps.tolist() == STEPS
    np.testing.assert_allclose(alone[2].embed, batched.embed, **TOL)
    np.testing.assert_allclose(alone[2].unembed, batched.unembed, **TOL)


def test_a_default_study_records_no_snapshots(tmp_path):
    _collect(tmp_path / "a", 1, MLP, snapshots=None)
    _collect(tmp_path / "b", 1, MLP, snapshots=0)
    for root in ("a", "b"):
        study = Study(tmp_path / root / "modadd")
        assert "snapshots" not in study.read_meta()
        assert not study.snapshots_dir.exists() and read_snapshots(study) == {}


# --------------------------------------------------------------------------- resume


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after the write happens."""


def _kill_after(monkeypatch, folder, count):
    """Raise :class:`Killed` right after the ``count``-th write of seed 0's file in ``folder``."""
    real = store.atomic_write_bytes
    seen = [0]

    def hooked(path, data, *args):
        real(path, data, *args)
        if Path(path).parent.name == folder and Path(path).stem == "seed-000":
            seen[0] += 1
            if seen[0] == count:
                raise Killed(str(path))

    monkeypatch.setattr(store, "atomic_write_bytes", hooked)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    _collect(root, 2, TRANSFORMER)
    study = Study(root / "modadd")
    return {s: (study.read_run(s), read_snapshots(study)[s]) for s in (0, 1)}


# 2 optimiser steps per epoch, 24 in all; with a save point after every step, seed 0's snapshot file
# is written at steps 1 (epoch 0), 9 (epochs 0, 4), 17 (0, 4, 8) and at the end
@pytest.mark.parametrize("folder,count", [
    ("snapshots", 2),  # the file holds epoch 4 (step 8), the resume state is at step 8: it is dropped
    ("snapshots", 3),
    ("state", 7),  # a resume state between snapshots
    ("runs", 17),  # the table at step 17, before that save point's snapshots
    ("runs", 24),  # the final table, before the final snapshots
])
def test_resume_after_a_kill_gives_the_uninterrupted_snapshots(tmp_path, monkeypatch, uninterrupted, folder, count):
    with monkeypatch.context() as m:
        _kill_after(m, folder, count)
        with pytest.raises(Killed):
            _collect(tmp_path, 2, TRANSFORMER, save_every=0)
    study = Study(tmp_path / "modadd")
    state = study.run_state_path(0)
    assert state.exists()  # a save point to resume from
    with np.load(state) as z:
        at = int(z["meta/step"])
    if folder == "snapshots":  # the kill left a snapshot that the resume state has not reached
        on_disk = read_run_snapshots(study.run_snapshots_path(0))
        assert on_disk.steps[-1] * 2 >= at  # 2 optimiser steps per epoch: a snapshot the resume recomputes
    res = _collect(tmp_path, 2, TRANSFORMER, save_every=0)
    assert res.seeds_resumed.get(0) == at  # seed 0 resumed from its save point, not started over
    snaps = read_snapshots(study)
    for seed, (rows, reference) in uninterrupted.items():
        # (the weights are exact; a few float64 statistics of the table differ in the last bits after a
        # resume, with or without snapshots)
        np.testing.assert_allclose(study.read_run(seed).to_numpy(float), rows.to_numpy(float), rtol=1e-12, atol=1e-15)
        assert snaps[seed].complete and snaps[seed].steps.tolist() == reference.steps.tolist()
        assert np.array_equal(snaps[seed].embed, reference.embed)
        assert np.array_equal(snaps[seed].unembed, reference.unembed)


def test_a_finished_run_without_its_snapshots_is_trained_again(tmp_path, caplog):
    _collect(tmp_path, 2, MLP)
    study = Study(tmp_path / "modadd")
    before = study.run_snapshots_path(1).read_bytes()
    study.run_snapshots_path(1).unlink()
    with caplog.at_level(logging.WARNING, logger="latent.collect"):
        res = _collect(tmp_path, 2, MLP)
    assert res.seeds_trained == [1]
    assert "seed 1: it was marked done but snapshots/seed-001.npz is missing" in caplog.text
    (tmp_path / "before.npz").write_bytes(before)
    old, new = read_run_snapshots(tmp_path / "before.npz"), read_snapshots(study)[1]
    assert new.complete and np.array_equal(new.steps, old.steps)
    assert np.array_equal(new.embed, old.embed) and np.array_equal(new.unembed, old.unembed)


# --------------------------------------------------------------------------- bad files


def _object_npz(good):
    buf = io.BytesIO()
    np.savez(buf, steps=np.array([0, "four"], dtype=object), embed=good.embed[:2], unembed=good.unembed[:2])
    return buf.getvalue()


def _arrays_npz(steps, embed, unembed):
    buf = io.BytesIO()
    np.savez(buf, steps=steps, embed=embed, unembed=unembed)
    return buf.getvalue()


def test_a_bad_file_is_one_line_naming_it_and_what_to_do(tmp_path):
    _collect(tmp_path, 1, MLP)
    study = Study(tmp_path / "modadd")
    path = study.run_snapshots_path(0)
    good_bytes = path.read_bytes()
    good = read_snapshots(study)[0]
    nan = good.embed.copy()
    nan[2, 0, 0] = np.nan
    cases = {
        "corrupt": (b"not an archive at all" * 10, "is corrupt"),
        "truncated": (good_bytes[: len(good_bytes) // 2], "is corrupt"),
        "object array": (_object_npz(good), "holds Python objects"),
        "wrong shape": (_arrays_npz(good.steps, good.embed[:3], good.unembed), "'embed' must have shape"),
        "transposed": (_arrays_npz(good.steps, good.embed, good.unembed.transpose(0, 2, 1)), "its axis vocab has 32"),
        "missing array": (_no_unembed(good), "lacks the array(s) unembed"),
        "float steps": (_arrays_npz(good.steps.astype(float), good.embed, good.unembed), "'steps' must be integers"),
        "steps not increasing": (_arrays_npz(good.steps[::-1], good.embed, good.unembed), "strictly increasing"),
        "foreign steps": (_arrays_npz(good.steps + 1, good.embed, good.unembed), "not the first 4"),
        "not finite": (_arrays_npz(good.steps, nan, good.unembed), "non-finite values (NaN or inf) at step 8"),
        "text embed": (_arrays_npz(good.steps, good.embed.astype(str), good.unembed), "floating-point"),
    }
    for name, (data, words) in cases.items():
        path.write_bytes(data)
        with pytest.raises(UserError) as info:
            read_snapshots(study)
        text = str(info.value)
        assert len(text.splitlines()) == 1 and "Traceback" not in text, name
        assert str(path) in text and words in text, (name, text)
        assert text.endswith("together (then `latent collect` trains seed 0 again from scratch)"), (name, text)
        assert "snapshots/seed-000.npz" in text.split(";")[-1], (name, text)  # among the files to remove
        if name in ("transposed", "foreign steps"):  # wrong only against what study.json records
            assert read_run_snapshots(path).complete is None
        else:  # the file alone gets the same checks
            with pytest.raises(UserError) as alone:
                read_run_snapshots(path)
            assert words in str(alone.value) and str(alone.value).endswith("; delete it"), (name, str(alone.value))
    path.write_bytes(good_bytes)
    assert read_snapshots(study)[0].complete


def _no_unembed(good):
    buf = io.BytesIO()
    np.savez(buf, steps=good.steps, embed=good.embed)
    return buf.getvalue()


def test_a_bad_file_of_a_finished_run_stops_the_collection_and_is_left_alone(tmp_path, capsys):
    args = ["collect", "--task", "modadd", "--seeds", "1", "--store", str(tmp_path), "--no-progress", "--threads", "1",
            "--snapshots", "4"] + [x for kv in MLP for x in ("--set", kv)]
    assert main(args) == 0
    study = Study(tmp_path / "modadd")
    path = study.run_snapshots_path(0)
    path.write_bytes(path.read_bytes()[:200])
    before = _files(tmp_path)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "snapshots file" in err and "is corrupt" in err
    assert "remove runs/seed-000.parquet, runs/seed-000.json and snapshots/seed-000.npz from" in err
    assert _files(tmp_path) == before


# --------------------------------------------------------------------------- bad requests


def _cli(store_dir, *extra, task="modadd", sets=MLP):
    return ["collect", "--task", task, "--seeds", "1", "--store", str(store_dir), "--no-progress", "--threads", "1",
            *[x for kv in sets for x in ("--set", kv)], *extra]


PARITY = ["n_bits=10", "hidden=8", "n_train=40", "n_val=20", "batch_size=16", "epochs=2", "log_every=1"]


@pytest.mark.parametrize("task,sets,n,words", [
    ("parity", PARITY, "4", "--snapshots applies only to task modadd"),
    ("modadd", MLP, "-3", "--snapshots must be 0 (none) or at least 2"),
    ("modadd", MLP, "1", "--snapshots must be 0 (none) or at least 2"),
    ("modadd", MLP, "many", "--snapshots"),
])
def test_a_bad_request_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, task, sets, n, words):
    store_dir = tmp_path / "store"
    capsys.readouterr()
    try:
        rc = main(_cli(store_dir, "--snapshots", n, task=task, sets=sets))
    except SystemExit as exc:  # argparse: not a number
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert words in err, err
    assert not store_dir.exists()
    if task == "parity":
        assert "task 'parity' has none" in err
        assert main(_cli(store_dir, "--snapshots", "0", task=task, sets=sets)) == 0  # 0 is none: fine anywhere
    with pytest.raises(UserError, match="--snapshots"):
        collect_study(task, 1, overrides=sets, store=tmp_path / "lib", snapshots=int(n) if n.lstrip("-").isdigit()
                      else n, progress=False)
    assert not (tmp_path / "lib").exists()


def test_more_snapshots_than_checkpoints_store_them_all_and_say_so(tmp_path, capsys):
    assert main(_cli(tmp_path, "--snapshots", "50")) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["latent collect: warning: --snapshots 50 is more than the 7 checkpoints of this schedule: "
                   "storing a snapshot at every checkpoint"]
    study = Study(tmp_path / "modadd")
    assert read_snapshots(study)[0].steps.tolist() == list(range(0, 13, 2)) == study.schedule()
    assert main(_cli(tmp_path, "--snapshots", "7")) == 0  # the same snapshots: resumes (here: nothing to do)


def test_resuming_or_extending_with_other_snapshots_is_refused_and_the_store_is_untouched(tmp_path, capsys):
    assert main(_cli(tmp_path)) == 0  # no snapshots
    before = _files(tmp_path)
    for extra, words in ((["--snapshots", "4"], "stores no weight snapshots, not --snapshots 4"),):
        capsys.readouterr()
        assert main(_cli(tmp_path, *extra, "--seeds", "2")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and "--overwrite" in err[0], err
        assert _files(tmp_path) == before
    assert main(_cli(tmp_path, "--snapshots", "4", "--overwrite")) == 0
    assert main(_cli(tmp_path, "--seeds", "2")) == 0  # left out: the study's own
    study = Study(tmp_path / "modadd")
    assert sorted(read_snapshots(study)) == [0, 1] and study.read_meta()["snapshots"]["count"] == 4
    before = _files(tmp_path)
    capsys.readouterr()
    assert main(_cli(tmp_path, "--snapshots", "3")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stores 4 weight snapshots per run, not --snapshots 3" in err[0], err
    assert _files(tmp_path) == before


def test_reading_a_folder_of_files_and_a_study_that_is_not_there(tmp_path):
    _collect(tmp_path, 1, MLP)
    study = Study(tmp_path / "modadd")
    for where in (study, study.root, str(study.root), study.snapshots_dir):
        got = read_snapshots(where)
        assert sorted(got) == [0] and got[0].complete and got[0].axes["unembed"] == ("vocab", "d_hidden")
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "seed-007.npz").write_bytes(study.run_snapshots_path(0).read_bytes())
    got = read_snapshots(loose)
    assert sorted(got) == [7] and got[7].complete is None and got[7].axes == {}
    assert isinstance(got[7], RunSnapshots) and len(got[7]) == 4
    with pytest.raises(UserError, match="neither a study"):
        read_snapshots(tmp_path / "nowhere")
    with pytest.raises(KeyError, match="no snapshot at step 5"):
        got[7].at(5)
