"""Shared by every test: the models under test are tiny, so torch runs on one thread (more threads
only add contention on a small machine, and make timings of neighbouring tests noisy).

Triton kernels run under Triton's interpreter on CPU: TRITON_INTERPRET=1 must be set before triton is
first imported (triton decorates its own library functions then; antiphon's code imports triton through
kernels.dispatch, so any test module may be first), hence here, before any test module is collected."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
