"""Shared by every test: the models under test are tiny, so torch runs on one thread (more threads
only add contention on a small machine, and make timings of neighbouring tests noisy)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
