"""The kernel tests run each Triton kernel on CPU tensors under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton).

The interpreter rounds float32 -> bfloat16 toward zero where the GPU rounds to nearest: bfloat16
tolerances allow one bfloat16 ulp (2^-7 relative) more than the math needs.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Unseeded draws in a test are the same on every run."""
    torch.manual_seed(0)
