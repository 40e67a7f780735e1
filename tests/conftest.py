"""Fixtures shared by several test files."""

from __future__ import annotations

import os

import pytest

# Two xdist workers share the machine's cores: each test's torch (and every `latent collect` it
# starts, which defaults to $OMP_NUM_THREADS) gets one thread, since two processes of two threads
# each on two cores thrash (the grokking test took 117 s instead of 23 s). Set before any test
# module imports torch; a user's own OMP_NUM_THREADS wins. Results do not depend on it: the default
# modadd study's rows are the same to the bit with one thread and two.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def one_thread():
    """One intra-op torch thread, as the collector runs in tests (two threads on a busy 2-core box thrash)."""
    import torch  # only the files that use this fixture need torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """The slow end-to-end tests first, each handed to whichever worker is free (pyproject's
    ``--maxschedchunk 1``): longest jobs first keeps the two workers busy to the end. In file order
    the quick start (six minutes) started late and ran alone for minutes; the order is the same
    on every worker, as pytest-xdist requires."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order within each
