"""Process settings of the collector: how many threads it takes by default."""

import os

import pytest

from latent.collect.runtime import default_threads


def _cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.parametrize("value, expected", [("3", 3), ("1", 1), (" 2 ", 2), ("", None), ("0", None),
                                             ("-2", None), ("four", None), ("1.5", None)])
def test_default_threads_follow_omp_num_threads_when_it_is_a_positive_integer(monkeypatch, value, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert default_threads() == (expected if expected is not None else _cores())


def test_default_threads_without_omp_num_threads_are_every_core_this_process_may_use(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads() == _cores()


def test_a_collect_without_threads_takes_omp_num_threads(tmp_path):
    """The whole command: a study collected under OMP_NUM_THREADS=1 ran its training on one thread
    (the child reports torch's thread count after the collect)."""
    import subprocess
    import sys

    code = ("import torch, sys; from latent.cli import main; "
            "rc = main(['collect', '--task', 'parity', '--seeds', '1', '--epochs', '2', '--store', sys.argv[1], "
            "'--no-progress', '-q']); print('threads', torch.get_num_threads()); sys.exit(rc)")
    for env_value, expected in (("1", 1), ("2", 2)):
        env = {**os.environ, "OMP_NUM_THREADS": env_value}
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / env_value)], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert f"threads {expected}" in out.stdout, out.stdout
