"""The kernel tests run each Triton kernel on CPU tensors under Triton's interpreter.

Triton decides interpreted or compiled when it decorates a kernel, i.e. when a kernel module is first
imported, so TRITON_INTERPRET=1 is set here, at collection, before the tests import them; a kernel module
that an earlier test file already imported (compiled, useless on CPU) is imported again.

The interpreter rounds float32 -> bfloat16 toward zero where the GPU rounds to nearest: bfloat16
tolerances allow one bfloat16 ulp (2^-7 relative) more than the math needs.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"

for _name in ("rmsnorm", "swiglu", "rope_triton", "sampling", "embedding_sum", "rvq_search", "decode_attention"):
    if f"antiphon.kernels.{_name}" in sys.modules:
        importlib.reload(sys.modules[f"antiphon.kernels.{_name}"])


@pytest.fixture(autouse=True)
def _seed():
    """Unseeded draws in a test are the same on every run."""
    torch.manual_seed(0)
