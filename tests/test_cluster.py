"""latent on Dask: collect and fit on a cluster give what a local run gives, faults included.

Every comparison is against an independent local run: an uninterrupted local collection of the
same config and seed batches (its parquet tables), or a local fit of the same study (its
artifacts). The faults are real: a worker process killed with SIGKILL mid-batch, and a worker
frozen with SIGSTOP until the scheduler gives its task to another worker while it still holds
the leases. A LocalCluster of 2 worker processes (1 thread each) is shared by the module.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from latent.collect.study import collect_study
from latent import locks
from latent.cli import main
from latent.errors import UserError
from latent.simulate import SimConfig, simulate, write_study
from latent.store import Study

HAVE_DASK = importlib.util.find_spec("distributed") is not None and importlib.util.find_spec("dask_jobqueue") is not None
needs_dask = pytest.mark.skipif(not HAVE_DASK, reason='needs the cluster extra: pip install -e ".[cluster]"')

# Sparse parity, 2 optimiser steps per epoch: 4 epochs = 8 steps, 5 checkpoints (as tests/test_faults.py).
PARITY = ["n_bits=10", "hidden=8", "n_train=40", "n_val=20", "batch_size=20", "log_every=1"]
EPOCHS = 4
SEEDS = 4
BATCH = 2  # two tasks of two seeds; the local reference is batched the same way, so rows match bit for bit
PAUSE_STEP = 3  # a gated worker holds still right after its save point at this optimiser step

# Run on a worker with client.run(exec, code, names): hold every batch right after its save point
# at STEP until the file GATE exists (the worker is then mid-batch, its leases held).
GATE_HOOK = """
import pathlib, time
import latent.collect.writer as w
if not hasattr(w.StudyWriter, "_unhooked_save"):
    w.StudyWriter._unhooked_save = w.StudyWriter.save
def save(self, step, states, done=False, info=None):
    w.StudyWriter._unhooked_save(self, step, states, done, info)
    while step == STEP and not done and not pathlib.Path(GATE).exists():
        time.sleep(0.02)
w.StudyWriter.save = save
"""
UNHOOK = """
import latent.collect.writer as w
if hasattr(w.StudyWriter, "_unhooked_save"):
    w.StudyWriter.save = w.StudyWriter._unhooked_save
    del w.StudyWriter._unhooked_save
"""


def _cli(store_dir, *extra, seeds=SEEDS):
    args = ["collect", "--task", "parity", "--seeds", str(seeds), "--epochs", str(EPOCHS), "--store", str(store_dir),
            "--threads", "1", "--save-every", "0", "--seed-batch", str(BATCH), "--no-progress", *extra]
    for kv in PARITY:
        args += ["--set", kv]
    return args


def _collect(store_dir, seeds=SEEDS, **kw):
    kw.setdefault("save_every", 0)
    return collect_study("parity", seeds, overrides=PARITY + [f"epochs={EPOCHS}"], store=store_dir, threads=1,
                         seed_batch=BATCH, progress=False, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tables of an uninterrupted local collection, batched as the Dask runs are."""
    root = tmp_path_factory.mktemp("reference")
    _collect(root, save_every=1e9)
    study = Study(root / "parity")
    return {s: study.read_run(s) for s in range(SEEDS)}


def _assert_exact(store_dir, reference, seeds=range(SEEDS)):
    study = Study(Path(store_dir) / "parity")
    for seed in seeds:
        pd.testing.assert_frame_equal(study.read_run(seed), reference[seed], check_exact=True)
        assert study.run_status(seed).status == "done"
    assert not any(study.state_dir.glob("*.npz")) if study.state_dir.exists() else True
    assert not list(Path(store_dir).rglob("*.tmp")), "a temporary file was left behind"


@pytest.fixture(scope="module")
def dask_client():
    if not HAVE_DASK:
        pytest.skip('needs the cluster extra: pip install -e ".[cluster]"')
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
            distributed.Client(lc, set_as_default=False) as client:
        yield client


def _wait_until(condition, timeout=120.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _saved_at(study, seeds, step):
    """Every seed's manifest records a save point at optimiser step ``step``."""
    for s in seeds:
        try:
            manifest = json.loads(study.run_manifest_path(s).read_text())
        except (OSError, ValueError):
            return False
        if manifest.get("opt_steps") != step:
            return False
    return True


def _in_thread(func, *args, **kwargs):
    box = {}

    def target():
        try:
            box["result"] = func(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _joined(thread, box, timeout=180):
    thread.join(timeout)
    assert not thread.is_alive(), "the collection did not finish"
    if "error" in box:
        raise box["error"]
    return box["result"]


# --------------------------------------------------------------------------- no dask unless asked


def test_local_collect_and_fit_never_import_dask(tmp_path):
    code = f"""
import sys
from latent.cli import main
from latent.errors import UserError
from latent.simulate import SimConfig, simulate, write_study
assert main({_cli(tmp_path / 'store', seeds=2)!r}) == 0
table, truth = simulate(SimConfig(n_main=2, detours=0, n_runs=10, n_checkpoints=40, seed=1))
write_study({str(tmp_path / 'sim' / 'sim')!r}, table, truth)
assert main(["fit", "--store", {str(tmp_path / 'sim')!r}, "--study", "sim", "--max-states", "2", "--restarts", "1",
             "--n-iter", "5", "--n-boot", "10", "--resamples", "2", "--jobs", "1", "--quiet"]) == 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed", "dask_jobqueue"))
print("loaded:", loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "loaded: []" in out.stdout, out.stdout


# --------------------------------------------------------------------------- errors are one line, exit 2


@pytest.mark.parametrize("command", ["collect", "fit"])
def test_scheduler_without_dask_names_the_install_command(tmp_path, monkeypatch, capsys, command):
    for name in ("distributed", "dask_jobqueue"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    args = _cli(tmp_path, "--cluster", "local:2") if command == "collect" else ["fit", "--store", str(tmp_path),
                                                                               "--study", _sim_study(tmp_path),
                                                                               "--scheduler", "tcp://h:8786"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[cluster]"' in err[0], err
    assert not (tmp_path / "parity").exists()


def _sim_study(root) -> str:
    table, truth = simulate(SimConfig(n_main=3, detours=1, n_runs=16, n_checkpoints=60, seed=3))
    write_study(Path(root) / "sim", table, truth)
    return "sim"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_dask
@pytest.mark.parametrize("option,value,needle", [
    ("--cluster", "local", "--cluster expects local:N"),
    ("--cluster", "local:0", "N must be at least 1"),
    ("--cluster", "mesos:4", "--cluster expects local:N"),
    ("--scheduler", "nohost", "is not a scheduler address"),
    ("--scheduler", "bogus://h:1", "is not a scheduler address"),
    ("--scheduler", "tcp://127.0.0.1:{port}", "cannot reach the Dask scheduler at tcp://127.0.0.1:"),
])
@pytest.mark.parametrize("command", ["collect", "fit"])
def test_bad_cluster_spec_or_scheduler_is_one_line(tmp_path, capsys, command, option, value, needle):
    import dask
    import distributed  # noqa: F401  (its config defaults must exist before dask.config.set, which restores on exit)

    value = value.format(port=_free_port())
    if command == "collect":
        args = _cli(tmp_path, option, value)
    else:
        args = ["fit", "--store", str(tmp_path), "--study", _sim_study(tmp_path), option, value]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "parity").exists()  # nothing written before the cluster was there
    assert not (tmp_path / "sim" / "fits").exists()


def test_scheduler_and_cluster_together_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(_cli(tmp_path, "--scheduler", "tcp://h:1", "--cluster", "local:2"))
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@needs_dask
def test_a_mistake_on_a_worker_is_one_line_and_not_retried(tmp_path, dask_client, capsys):
    # The client has no GPU either, but only the workers resolve the device: they may have one.
    assert main(_cli(tmp_path, "--scheduler", dask_client.scheduler.address, "--device", "cuda")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda was asked for but no CUDA device is available" in err[0], err
    assert Study(tmp_path / "parity").status()["done"] == 0


# --------------------------------------------------------------------------- collect


@needs_dask
def test_dask_collect_writes_the_rows_of_a_local_run(tmp_path, dask_client, reference, capsys):
    args = _cli(tmp_path, "--scheduler", dask_client.scheduler.address)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trained 4 seeds in" in out and "4/4 seeds done" not in out and f"study: {tmp_path / 'parity'}" in out
    _assert_exact(tmp_path, reference)
    meta = Study(tmp_path / "parity").read_meta()
    assert meta["seeds"] == list(range(SEEDS)) and f"--scheduler {dask_client.scheduler.address}" in meta["command"]
    assert main(args) == 0  # the same command again: nothing to do, no task submitted
    assert "is complete (4/4 seeds done); nothing to do" in capsys.readouterr().out


@needs_dask
def test_killed_worker_batch_is_retried_and_resumes_from_its_save_point(tmp_path, dask_client, reference):
    gate = tmp_path / "go"
    dask_client.run(exec, GATE_HOOK, {"GATE": str(gate), "STEP": PAUSE_STEP})
    pids = dask_client.run(os.getpid)
    study = Study(tmp_path / "parity")
    try:
        thread, box = _in_thread(_collect, tmp_path, scheduler=dask_client.scheduler.address)
        _wait_until(lambda: _saved_at(study, [0, 1], PAUSE_STEP) or not thread.is_alive(), what="a save point")
        victim = (locks.holder(study.run_lease_path(0)) or {}).get("pid")
        assert victim in pids.values(), (victim, pids)  # a worker, mid-batch, holds seed 0
        os.kill(victim, signal.SIGKILL)
        gate.touch()
        result = _joined(thread, box)
    finally:
        gate.touch()
        dask_client.run(exec, UNHOOK, {})
    assert result.seeds_trained and sorted(result.seeds_trained) == list(range(SEEDS))
    # the batch of seeds 0-1 ran again on another worker, from its save point, not from step 0
    assert result.seeds_resumed == {0: PAUSE_STEP, 1: PAUSE_STEP}
    assert victim not in dask_client.run(os.getpid).values()
    _assert_exact(tmp_path, reference)


# A local `latent collect` that holds its first save point until the file argv[1] exists.
_GATED = """
import sys, time
from pathlib import Path
import latent.store as store
from latent.cli import main
gate, real = Path(sys.argv[1]), store.atomic_write_bytes
def hooked(path, data, *args):
    real(path, data, *args)
    while Path(path).suffix == ".npz" and not gate.exists():
        time.sleep(0.02)
store.atomic_write_bytes = hooked
sys.exit(main(sys.argv[2:]))
"""


@needs_dask
def test_a_local_collection_and_a_dask_collection_train_each_seed_once(tmp_path, dask_client, reference, caplog):
    gate = tmp_path / "go"
    study = Study(tmp_path / "parity")
    local = subprocess.Popen([sys.executable, "-c", _GATED, str(gate), *_cli(tmp_path, seeds="0-1")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until(lambda: study.run_state_path(0).exists() or local.poll() is not None, what="the local collection")
        thread, box = _in_thread(_collect, tmp_path, scheduler=dask_client.scheduler.address)
        waiting = f"seed(s) 0-1 of study 'parity' are being collected by pid {local.pid}"
        _wait_until(lambda: waiting in caplog.text or not thread.is_alive(), what="the Dask collection to wait")
        # its tasks trained seeds 2-3; it waits for 0-1, which the local collection holds mid-run
        assert study.run_status(2).status == study.run_status(3).status == "done"
        assert study.run_status(0).status == "running"
        gate.touch()
        out, err = local.communicate(timeout=300)
        result = _joined(thread, box)
    finally:
        gate.touch()
        if local.poll() is None:
            local.kill()
    assert local.returncode == 0 and "trained 2 seeds" in out, err
    assert result.seeds_trained == [2, 3] and result.seeds_elsewhere == [0, 1]
    _assert_exact(tmp_path, reference)


@needs_dask
@pytest.mark.slow
def test_retried_task_waits_for_a_predecessor_that_is_still_alive(tmp_path, reference, caplog):
    """A worker frozen mid-batch (SIGSTOP) misses its heartbeats; the scheduler gives its task to
    another worker while the frozen process still holds the seeds' leases. The retried task
    must wait for them, not train the seeds beside it."""
    import distributed

    gate = tmp_path / "go"
    study = Study(tmp_path / "parity")
    with distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=":0",
                                  scheduler_kwargs={"worker_ttl": "1s"}) as lc, \
            distributed.Client(lc, set_as_default=False) as client:
        frozen = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", lc.scheduler_address,
                                   "--no-nanny", "--nthreads", "1", "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, 60, "the worker to join")
            client.run(exec, GATE_HOOK, {"GATE": str(gate), "STEP": PAUSE_STEP})
            thread, box = _in_thread(_collect, tmp_path, seeds=2, scheduler=client)
            _wait_until(lambda: _saved_at(study, [0, 1], PAUSE_STEP) or not thread.is_alive(), what="a save point")
            assert locks.holder(study.run_lease_path(0))["pid"] == frozen.pid
            frozen.send_signal(signal.SIGSTOP)
            lc.scale(1)  # a healthy worker for the retry
            waiting = f"seed(s) 0-1 of study 'parity' are being collected by pid {frozen.pid}"
            _wait_until(lambda: waiting in caplog.text, 90, "the retried task to wait for the frozen worker")
            assert study.run_status(0).status == "running" and _saved_at(study, [0, 1], PAUSE_STEP)
            gate.touch()
            frozen.send_signal(signal.SIGCONT)
            result = _joined(thread, box)
        finally:
            gate.touch()
            frozen.send_signal(signal.SIGCONT)
            frozen.kill()
            frozen.wait()
    # the live predecessor finished (or handed over at a save point); nobody trained a seed beside
    # it, and both seeds are this collection's own (its frozen worker's), not another collection's
    assert result.seeds_trained == [0, 1] and result.seeds_elsewhere == []
    _assert_exact(tmp_path, reference, seeds=[0, 1])


# --------------------------------------------------------------------------- fit


@needs_dask
def test_dask_fit_writes_the_artifacts_of_a_local_fit(tmp_path, capsys):
    args = ["fit", "--store", str(tmp_path), "--study", _sim_study(tmp_path), "--max-states", "3", "--restarts", "2",
            "--n-iter", "10", "--n-boot", "50", "--resamples", "4", "--quiet"]
    names = ("model.json", "analysis.json", "paths.parquet")
    assert main(args + ["--jobs", "2"]) == 0
    local = Path(capsys.readouterr().out.strip())
    expected = {name: (local / name).read_bytes() for name in names}
    assert main(args + ["--cluster", "local:2"]) == 0  # rewrites the same fit directory
    dask_fit = Path(capsys.readouterr().out.strip())
    assert dask_fit == local
    for name in names:
        assert (dask_fit / name).read_bytes() == expected[name], name
    model = json.loads(expected["model.json"])
    assert len(model["restarts"]) >= 3 * 2 and json.loads(expected["analysis.json"])["stability"]["used"] == 4


# --------------------------------------------------------------------------- SLURM


@needs_dask
def test_slurm_cluster_job_script_has_the_requested_resources(monkeypatch):
    import dask
    from dask_jobqueue import SLURMCluster

    from latent.cluster import build_cluster, connect

    # What a user puts in ~/.config/dask/jobqueue.yaml (docs/cluster.md), as dask config.
    settings = {"jobqueue.slurm.cores": 8, "jobqueue.slurm.processes": 2, "jobqueue.slurm.memory": "32GiB",
                "jobqueue.slurm.walltime": "02:00:00", "jobqueue.slurm.queue": "gpu",
                "jobqueue.slurm.account": "proj42", "jobqueue.slurm.job-extra-directives": ["--gres=gpu:1"],
                "jobqueue.slurm.scheduler-options": {"dashboard_address": ":0"}}
    submitted = []
    monkeypatch.setattr(SLURMCluster, "scale", lambda self, n=None, jobs=0, **kw: submitted.append(n or jobs))
    with dask.config.set(settings):
        cluster = build_cluster("slurm", 3)
        try:
            script = cluster.job_script()
            assert not cluster.workers and not any(submitted)  # built, nothing submitted
        finally:
            cluster.close()
        with connect(cluster="slurm:3") as client:
            assert client.scheduler_info()["workers"] == {}
    assert [n for n in submitted if n] == [3]  # --cluster slurm:3 asks for 3 jobs, once
    with dask.config.set({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}):
        with pytest.raises(UserError, match="set jobqueue.slurm.cores and .memory in ~/.config/dask/jobqueue.yaml"):
            build_cluster("slurm", 1)
    lines = script.splitlines()
    for directive in ("#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G", "#SBATCH -t 02:00:00", "#SBATCH -p gpu",
                      "#SBATCH -A proj42", "#SBATCH --gres=gpu:1"):
        assert directive in lines, (directive, script)
    assert "--nworkers 2" in script and "--nthreads 4" in script
