"""Settings shared by the whole suite."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    # Tiny models: one intra-op thread is faster, and far faster on a loaded shared machine
    # (OpenMP threads spin-wait when cores are oversubscribed). Subprocesses are unaffected.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
