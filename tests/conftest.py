"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_thread():
    """One intra-op torch thread, as the collector runs in tests (two threads on a busy 2-core box thrash)."""
    import torch  # only the files that use this fixture need torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
