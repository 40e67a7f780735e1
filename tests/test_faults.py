"""Store integrity under faults: kills at every phase of a save point, a full disk at every write,
files deleted or damaged between runs, readers racing a collection, two collectors on one study.

Every scenario ends with either exactly the rows of an uninterrupted run or one clear error line
that changes nothing; never with a study that is silently wrong.
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latent.collect.study import collect_study
from latent import locks, store
from latent.cli import main
from latent.errors import UserError
from latent.store import Study

# Sparse parity, 2 steps per epoch: 4 epochs = 8 optimiser steps, 5 checkpoints; with
# --save-every 0 a save point follows every step, so one seed makes 24 atomic writes:
# study.json, then (table, state, manifest) at steps 1..7, then the final table and manifest.
PARITY = ["n_bits=10", "hidden=8", "n_train=40", "n_val=20", "batch_size=20", "log_every=1"]
EPOCHS = 4
WRITES = 1 + 3 * 7 + 2


class Killed(BaseException):
    """Stands in for SIGKILL inside the test process: nothing after the write happens."""


def _collect(store_dir, seeds=1, epochs=EPOCHS, overrides=PARITY, **kw):
    kw.setdefault("save_every", 0)
    return collect_study("parity", seeds, overrides=list(overrides) + [f"epochs={epochs}"], store=store_dir,
                         threads=1, progress=False, **kw)


def _cli(store_dir, seeds=1, epochs=EPOCHS, overrides=PARITY, extra=()):
    args = ["collect", "--task", "parity", "--seeds", str(seeds), "--epochs", str(epochs), "--store", str(store_dir),
            "--threads", "1", "--save-every", "0", "--no-progress", *extra]
    for kv in overrides:
        args += ["--set", kv]
    return args


_REFERENCES = {}


def _reference(tmp_path_factory, seeds=1, epochs=EPOCHS, overrides=PARITY):
    """Tables of an uninterrupted collection (computed once per configuration)."""
    key = (seeds, epochs, tuple(overrides))
    if key not in _REFERENCES:
        root = tmp_path_factory.mktemp("reference")
        _collect(root, seeds, epochs, overrides, save_every=1e9)  # save points do not change the rows
        study = Study(root / "parity")
        _REFERENCES[key] = {s: study.read_run(s) for s in range(seeds)}
    return _REFERENCES[key]


def _assert_exact(store_dir, reference):
    study = Study(Path(store_dir) / "parity")
    for seed, expected in reference.items():
        pd.testing.assert_frame_equal(study.read_run(seed), expected)
        assert study.run_status(seed).status == "done"
    assert not any(study.state_dir.glob("*.npz")) if study.state_dir.exists() else True
    assert not list(Path(store_dir).rglob("*.tmp")), "a temporary file was left behind"


def _every_file_readable(store_dir, temporaries=False):
    """What a kill or a failed write leaves is always whole: old or new, never torn. Only a real
    SIGKILL leaves ``temporaries`` (of writes still in flight); the next collection removes them."""
    for p in Path(store_dir).rglob("*"):
        if p.suffix == ".parquet":
            pd.read_parquet(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                [z[k] for k in z.files]
    assert temporaries or not list(Path(store_dir).rglob("*.tmp"))


def _kill_after(monkeypatch, predicate):
    """Raise :class:`Killed` right after the first atomic write for which ``predicate(path, n)`` holds
    (``n`` counts the writes so far, from 1)."""
    real = store.atomic_write_bytes
    count = [0]

    def hooked(path, data, *args):
        real(path, data, *args)
        count[0] += 1
        if predicate(Path(path), count[0]):
            raise Killed(str(path))

    monkeypatch.setattr(store, "atomic_write_bytes", hooked)
    return count


# --------------------------------------------------------------------------- kills


def test_killed_after_every_write_resumes_to_the_exact_rows(tmp_path, tmp_path_factory, monkeypatch):
    reference = _reference(tmp_path_factory)
    for n in range(1, WRITES + 1):
        root = tmp_path / f"kill-{n}"
        with monkeypatch.context() as m:
            _kill_after(m, lambda path, count: count == n)
            with pytest.raises(Killed):
                _collect(root)
        _every_file_readable(root)
        _collect(root)
        _assert_exact(root, reference)


_CHILD = """
import os, signal, sys
from pathlib import Path
import latent.store as store
from latent.cli import main
suffix, occurrence = sys.argv[1], int(sys.argv[2])
real, seen = store.atomic_write_bytes, [0]
def hooked(path, data, *args):
    real(path, data, *args)
    if Path(path).suffix == suffix and Path(path).parent.name in ("runs", "state"):
        seen[0] += 1
        if seen[0] == occurrence:
            os.kill(os.getpid(), signal.SIGKILL)
store.atomic_write_bytes = hooked
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("phase,suffix,occurrence", [
    ("after the table", ".parquet", 3), ("after the state", ".npz", 3), ("after the manifest", ".json", 3),
    ("after the final table", ".parquet", 15), ("after the final manifest", ".json", 15),
])
def test_sigkill_at_each_phase_of_a_save_point(tmp_path, tmp_path_factory, phase, suffix, occurrence):
    reference = _reference(tmp_path_factory, seeds=2)
    root = tmp_path / "store"
    child = subprocess.run([sys.executable, "-c", _CHILD, suffix, str(occurrence), *_cli(root, seeds=2)],
                           capture_output=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    _every_file_readable(root, temporaries=True)
    _collect(root, seeds=2)
    _assert_exact(root, reference)


# --------------------------------------------------------------------------- full disk and other OS errors


def _fail_write(monkeypatch, at, err=errno.ENOSPC):
    """Make the ``at``-th atomic write fail like a full disk: half the bytes land in the temp file."""
    real = store._write_synced
    count = [0]

    def failing(fd, data, *args):
        count[0] += 1
        if count[0] == at:
            os.write(fd, data[: len(data) // 2])
            os.close(fd)
            raise OSError(err, os.strerror(err))
        real(fd, data, *args)

    monkeypatch.setattr(store, "_write_synced", failing)


def test_disk_full_at_every_write_is_one_line_and_resumable(tmp_path, tmp_path_factory, monkeypatch, capsys):
    reference = _reference(tmp_path_factory)
    for n in range(1, WRITES + 1):
        root = tmp_path / f"full-{n}"
        capsys.readouterr()
        with monkeypatch.context() as m:
            _fail_write(m, n)
            assert main(_cli(root)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("latent collect: error: cannot write ") and "no space left on the device" in err, err
        assert "rerun the same command to resume" in err
        _every_file_readable(root)
        assert main(_cli(root)) == 0
        _assert_exact(root, reference)


@pytest.mark.parametrize("err,needle", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system"),
                                        (errno.ENOENT, "no such file or directory"), (errno.EIO, "input/output error")])
def test_os_errors_are_one_line(tmp_path, monkeypatch, capsys, err, needle):
    with monkeypatch.context() as m:
        _fail_write(m, 5, err)
        assert main(_cli(tmp_path)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "runs/seed-000" in lines[0], lines


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_study_directory_is_one_line(tmp_path, capsys):
    assert main(_cli(tmp_path, epochs=1)) == 0
    runs = tmp_path / "parity" / "runs"
    before = {p: p.read_bytes() for p in runs.iterdir()}
    runs.chmod(0o555)
    try:
        capsys.readouterr()
        assert main(_cli(tmp_path, seeds=2, epochs=1)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "permission denied" in lines[0], lines
        assert {p: p.read_bytes() for p in runs.iterdir() if p in before} == before
    finally:
        runs.chmod(0o755)


def test_os_error_outside_the_store_is_still_one_line(tmp_path, monkeypatch, capsys):
    def broken(_store):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path))

    monkeypatch.setattr("latent.cli.ls.list_studies", broken)
    assert main(["ls", "--store", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latent ls: error: input/output error") and str(tmp_path) in lines[0]


def test_lock_file_that_cannot_be_created_is_one_line(tmp_path, monkeypatch, capsys):
    real = os.open

    def refusing(path, flags, *args):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, flags, *args)

    monkeypatch.setattr(locks.os, "open", refusing)
    assert main(_cli(tmp_path)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot create lock file" in lines[0] and "read-only file system" in lines[0]


# --------------------------------------------------------------------------- files deleted or damaged between runs


def _partial(root, state_writes, seeds=1, epochs=EPOCHS, monkeypatch=None):
    """A collection killed right after its ``state_writes``-th resume-state write."""
    with monkeypatch.context() as m:
        seen = [0]

        def at_state(path, _):
            seen[0] += path.suffix == ".npz"
            return seen[0] == state_writes

        _kill_after(m, at_state)
        with pytest.raises(Killed):
            _collect(root, seeds, epochs)


def test_deleted_table_of_a_partial_run_restarts_it_from_scratch(tmp_path, tmp_path_factory, monkeypatch, caplog):
    # The case: killed after 11 checkpoints, the table deleted as the old message advised.
    full = ["n_bits=10", "hidden=8", "n_train=40", "n_val=20", "batch_size=40", "log_every=1"]
    reference = _reference(tmp_path_factory, epochs=60, overrides=full)
    root = tmp_path / "store"
    with monkeypatch.context() as m:
        seen = [0]

        def at_state(path, _):
            seen[0] += path.suffix == ".npz"
            return seen[0] == 11

        _kill_after(m, at_state)
        with pytest.raises(Killed):
            _collect(root, epochs=60, overrides=full)
    study = Study(root / "parity")
    assert study.read_run(0)["step"].tolist() == list(range(11))  # 11 checkpoints saved, state at step 11
    study.run_table_path(0).unlink()
    _collect(root, epochs=60, overrides=full)
    assert ("seed 0: runs/seed-000.parquet is missing (11 checkpoints were saved before its resume state "
            "at step 11)") in caplog.text
    assert "training it again from step 0" in caplog.text
    assert len(study.read_run(0)) == 61
    _assert_exact(root, reference)


def test_deleted_table_of_a_finished_run_is_damaged_then_retrained(tmp_path, tmp_path_factory, capsys, caplog):
    reference = _reference(tmp_path_factory, seeds=2)
    assert main(_cli(tmp_path, seeds=2)) == 0
    study = Study(tmp_path / "parity")
    study.run_table_path(1).unlink()
    assert study.status()["status"] == "damaged" and study.status()["done"] == 1
    capsys.readouterr()
    assert main(["ls", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1/2" in out and "damaged: seed 1" in out
    assert "parity seed 1: marked done but runs/seed-001.parquet is missing" in out
    assert main(_cli(tmp_path, seeds=2)) == 0
    assert "trained 1 seeds" in capsys.readouterr().out
    assert "seed 1: it was marked done but runs/seed-001.parquet is missing" in caplog.text
    _assert_exact(tmp_path, reference)


def test_short_table_of_a_finished_run_is_retrained(tmp_path, tmp_path_factory, caplog):
    reference = _reference(tmp_path_factory)
    _collect(tmp_path)
    study = Study(tmp_path / "parity")
    store.atomic_write_parquet(study.run_table_path(0), study.read_run(0).drop(index=[1, 2]))
    assert study.run_status(0).status == "damaged"
    assert "has 3 of the 5 checkpoints (missing steps 1, 2)" in study.run_status(0).detail
    with pytest.raises(UserError, match="no finished runs"):
        study.read_finished_runs()
    _collect(tmp_path)
    assert "has 3 of the 5 checkpoints" in caplog.text
    _assert_exact(tmp_path, reference)


@pytest.mark.parametrize("victim", ["table", "manifest"])
def test_corrupt_file_of_a_finished_run_names_every_file_to_remove(tmp_path, tmp_path_factory, capsys, victim):
    reference = _reference(tmp_path_factory)
    assert main(_cli(tmp_path)) == 0
    study = Study(tmp_path / "parity")
    path = study.run_table_path(0) if victim == "table" else study.run_manifest_path(0)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    before = {p: p.read_bytes() for p in study.runs_dir.iterdir()}
    capsys.readouterr()
    assert main(_cli(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is corrupt" in err, err
    assert "remove runs/seed-000.parquet and runs/seed-000.json from" in err and "together" in err
    assert {p: p.read_bytes() for p in study.runs_dir.iterdir()} == before  # nothing touched
    assert study.run_status(0).status == "damaged"
    study.run_table_path(0).unlink()
    study.run_manifest_path(0).unlink()
    assert main(_cli(tmp_path)) == 0
    _assert_exact(tmp_path, reference)


def test_corrupt_state_of_a_partial_run_names_every_file_to_remove(tmp_path, tmp_path_factory, monkeypatch, capsys):
    reference = _reference(tmp_path_factory)
    _partial(tmp_path, 4, monkeypatch=monkeypatch)
    study = Study(tmp_path / "parity")
    state = study.run_state_path(0)
    state.write_bytes(state.read_bytes()[:100])
    capsys.readouterr()
    assert main(_cli(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resume state" in err and "is unreadable" in err, err
    assert "remove runs/seed-000.parquet, runs/seed-000.json and state/seed-000.npz from" in err
    for p in (study.run_table_path(0), study.run_manifest_path(0), state):
        p.unlink()
    assert main(_cli(tmp_path)) == 0
    _assert_exact(tmp_path, reference)


def test_corrupt_table_of_a_partial_run_is_refused(tmp_path, monkeypatch, capsys):
    _partial(tmp_path, 3, monkeypatch=monkeypatch)
    study = Study(tmp_path / "parity")
    table = study.run_table_path(0)
    table.write_bytes(b"PAR1" + bytes(40))
    capsys.readouterr()
    assert main(_cli(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert "run table" in err and "is corrupt" in err and "state/seed-000.npz" in err and len(err.splitlines()) == 1


def test_missing_or_foreign_state_restarts_the_run(tmp_path, tmp_path_factory, monkeypatch, caplog):
    reference = _reference(tmp_path_factory, seeds=2)
    _partial(tmp_path, 8, seeds=2, monkeypatch=monkeypatch)  # both seeds saved states at step 4
    study = Study(tmp_path / "parity")
    study.run_state_path(0).unlink()
    shutil.copy(study.run_state_path(1), study.run_state_path(0))  # seed 1's state under seed 0's name
    _collect(tmp_path, seeds=2)
    assert "seed 0: its resume state state/seed-000.npz belongs to seed 1" in caplog.text
    _assert_exact(tmp_path, reference)
    _partial(tmp_path / "b", 3, monkeypatch=monkeypatch)
    Study(tmp_path / "b" / "parity").run_state_path(0).unlink()
    caplog.clear()
    _collect(tmp_path / "b")
    assert "its resume state state/seed-000.npz is missing" in caplog.text
    _assert_exact(tmp_path / "b", {0: reference[0]})


def test_study_file_lost_beside_its_runs_is_refused(tmp_path):
    _collect(tmp_path)
    (tmp_path / "parity" / "study.json").unlink()
    with pytest.raises(UserError, match="holds runs but .*study.json is missing"):
        _collect(tmp_path)


# --------------------------------------------------------------------------- statuses seen by readers


def test_statuses_and_what_readers_get(tmp_path, monkeypatch, capsys):
    _collect(tmp_path, seeds=3)
    _partial(tmp_path, 6, seeds=4, monkeypatch=monkeypatch)  # seed 3: killed mid-run; 0-2 stay done
    study = Study(tmp_path / "parity")
    store.atomic_write_parquet(study.run_table_path(2), study.read_run(2).iloc[:-1])
    statuses = {s: study.run_status(s) for s in range(4)}
    assert [statuses[s].status for s in range(4)] == ["done", "done", "damaged", "partial"]
    # Killed after the state of step 6: epochs 0, 1 and 2 (steps 0, 2, 4) were saved.
    assert statuses[3].detail == "3 of 5 checkpoints saved" and statuses[3].rows == 3
    table, found = study.read_finished_runs()
    assert sorted(table["seed"].unique()) == [0, 1] and found[3].status == "partial"
    table, _ = study.read_finished_runs(allow_partial=True)
    assert sorted(table["seed"].unique()) == [0, 1, 3]  # damaged runs never
    lease = locks.acquire(study.run_lease_path(3))
    lease.note(locks.holder_note("latent collect --task parity"))
    try:
        assert study.run_status(3).status == "running" and f"pid {os.getpid()}" in study.run_status(3).detail
        capsys.readouterr()
        main(["ls", "--store", str(tmp_path)])
        out = capsys.readouterr().out
        assert "2/4" in out and "damaged: seed 2" in out
    finally:
        lease.release()
    assert study.run_status(3).status == "partial"
    store.atomic_write_parquet(study.run_table_path(2), study.read_run(0))  # rows of another seed
    assert "holds rows of another seed than 2" in study.run_status(2).detail


def test_hand_made_study_without_schedule_or_manifests_is_done(tmp_path):
    root = tmp_path / "hand"
    (root / "runs").mkdir(parents=True)
    (root / "study.json").write_text(json.dumps({"task": "mine", "features": ["l2"],
                                                 "convergence": {"metric": "val_acc", "threshold": 0.9}}))
    pd.DataFrame({"seed": [0, 0], "step": [0, 1], "l2": [1.0, 2.0], "val_acc": [0.1, 0.95]}).to_parquet(
        root / "runs" / "seed-000.parquet")
    study = Study(root)
    assert study.run_status(0).status == "done"
    assert study.status()["status"] == "done"
    (root / "runs" / "seed-000.json").write_text(json.dumps({"status": "done", "rows": 3}))
    assert study.run_status(0).status == "damaged" and "has 2 rows but its manifest records 3" in study.run_status(0).detail


# --------------------------------------------------------------------------- concurrency


def _spawn(args):
    return subprocess.Popen([sys.executable, "-m", "latent", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_until(condition, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_readers_see_whole_files_while_a_collection_rewrites_them(tmp_path, tmp_path_factory):
    seeds, epochs = 3, 40
    reference = _reference(tmp_path_factory, seeds=seeds, epochs=epochs)
    proc = _spawn(_cli(tmp_path, seeds=seeds, epochs=epochs))
    study = Study(tmp_path / "parity")
    reads, failures, finished_reads = 0, [], 0
    _wait_until(lambda: all(study.run_table_path(s).exists() for s in range(seeds)) or proc.poll() is not None)
    while proc.poll() is None:
        for seed in range(seeds):
            try:
                frame = study.read_run(seed)
                table, statuses = study.read_finished_runs(allow_partial=True)
            except UserError as exc:
                failures.append(str(exc))
                continue
            reads += 1
            expected = reference[seed].iloc[: len(frame)].reset_index(drop=True)
            pd.testing.assert_frame_equal(frame, expected)  # always a prefix of the final rows
            if statuses[seed].status == "done":
                finished_reads += 1
                done_rows = table[table["seed"] == seed].reset_index(drop=True)
                pd.testing.assert_frame_equal(done_rows, reference[seed])
    assert proc.wait() == 0, proc.stderr.read().decode()
    assert reads > 20 and not failures, failures[:3]
    _assert_exact(tmp_path, reference)


_GATED = """
import sys, time
from pathlib import Path
import latent.store as store
from latent.cli import main
gate, real = Path(sys.argv[1]), store.atomic_write_bytes
def hooked(path, data, *args):
    real(path, data, *args)
    while Path(path).suffix == ".npz" and not gate.exists():  # hold the first save point until the test says
        time.sleep(0.02)
store.atomic_write_bytes = hooked
sys.exit(main(sys.argv[2:]))
"""


def test_two_collectors_never_train_the_same_seed(tmp_path, tmp_path_factory):
    reference = _reference(tmp_path_factory, seeds=4)
    gate = tmp_path / "go"
    store_dir = tmp_path / "store"
    first = subprocess.Popen([sys.executable, "-c", _GATED, str(gate), *_cli(store_dir, seeds="0-1")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    study = Study(store_dir / "parity")
    _wait_until(lambda: study.run_state_path(0).exists() or first.poll() is not None)  # seeds 0-1 leased, training
    second = _spawn(_cli(store_dir, seeds=4))
    waiting = second.stderr.readline().decode()  # after training 2-3, while 0-1 are still held
    assert f"seed(s) 0-1 of study 'parity' are being collected by pid {first.pid}" in waiting, waiting
    assert "waiting for them" in waiting
    gate.touch()  # let the first go on
    out1, err1 = first.communicate(timeout=300)
    out2, err2 = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, (err1.decode(), err2.decode())
    assert "trained 2 seeds" in out1.decode()
    assert "trained 2 seeds" in out2.decode() and "seed(s) 0-1 were trained by another collection" in out2.decode()
    _assert_exact(store_dir, reference)


@pytest.mark.slow
def test_the_same_command_twice_at_once_trains_each_seed_once(tmp_path, tmp_path_factory):
    reference = _reference(tmp_path_factory, seeds=3, epochs=30)
    procs = [_spawn(_cli(tmp_path, seeds=3, epochs=30)) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e.decode() for _, e in outs]
    trained = sum(int(m) for o, _ in outs for m in re.findall(r"^trained (\d+) seeds", o.decode(), re.M))
    assert trained == 3  # together, each seed exactly once
    _assert_exact(tmp_path, reference)


def test_overwrite_is_refused_while_another_collection_runs(tmp_path):
    _collect(tmp_path)
    study = Study(tmp_path / "parity")
    lease = locks.acquire(study.run_lease_path(0))
    try:
        with pytest.raises(UserError, match=f"being collected by pid {os.getpid()}|being collected by another"):
            _collect(tmp_path, overrides=PARITY + ["lr=0.05"], overwrite=True)
    finally:
        lease.release()
    assert study.read_meta()["config"]["lr"] == 0.1
    _collect(tmp_path, overrides=PARITY + ["lr=0.05"], overwrite=True)
    assert study.read_meta()["config"]["lr"] == 0.05
    assert not list(tmp_path.glob(".parity.replaced-*"))


def test_a_lease_dies_with_its_holder(tmp_path):
    path = tmp_path / "seed-000.lock"
    code = ("import os, sys, time; from latent import locks; l = locks.acquire(sys.argv[1]); "
            "l.note({'pid': os.getpid()}); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    assert locks.holder(path) == {"pid": proc.pid} and locks.try_acquire(path) is None
    assert locks.describe_holder(locks.holder(path)) == f"pid {proc.pid}"
    proc.kill()
    proc.wait()
    assert locks.holder(path) is None  # no stale lock after kill -9
    with locks.acquire(path) as lock:
        assert locks.holder(path) is not None
        assert locks.describe_holder(locks.holder(path)) == "another process"  # the dead holder's note is ignored
        lock.note(locks.holder_note("x"))
        assert locks.holder(path)["pid"] == os.getpid()
    assert locks.holder(path) is None and path.read_bytes() == b""  # a clean release clears the note


def test_store_reads_parquet_without_arrow_threads(tmp_path, monkeypatch):
    # Arrow's thread pool aborts a few processes in a hundred at exit after a threaded read
    # (apache/arrow#34314: `latent ls` exited 134 in 2 of 30 runs), so the store's reader must not use it.
    path = tmp_path / "t.parquet"
    pd.DataFrame({"step": [0, 1], "x": [0.5, 1.5]}).to_parquet(path, index=False)
    calls = []
    real = pd.read_parquet
    monkeypatch.setattr(store.pd, "read_parquet", lambda src, **kw: calls.append(kw) or real(src, **kw))
    frame = store.read_parquet(path, "run table")
    assert frame["x"].tolist() == [0.5, 1.5]
    assert calls == [{"use_threads": False}]


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_sigkill_of_latent_fit_leaves_no_worker_behind(tmp_path):
    """A kill -9 of `latent fit` (an OOM kill, a batch scheduler's hard kill) takes its pool workers
    with it; before, they ran on, re-parented to init."""
    from latent.simulate import SimConfig, simulate, write_study

    table, truth = simulate(SimConfig(n_main=4, detours=1, n_runs=30, n_checkpoints=300, seed=3))
    write_study(tmp_path / "sim", table, truth)
    proc = subprocess.Popen([sys.executable, "-m", "latent", "fit", "--store", str(tmp_path), "--study", "sim",
                             "--jobs", "2", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(workers) < 2:
        workers = _children(proc.pid)
        time.sleep(0.05)
    assert len(workers) >= 2, "the fit never started its pool"
    time.sleep(0.5)  # the workers are in their jobs now
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), f"workers {[w for w in workers if _alive(w)]} outlived their parent"
