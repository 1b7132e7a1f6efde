"""SiLU-gated product: the Triton kernel (interpreted on CPU) equals the torch reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from antiphon.kernels import swiglu
from antiphon.kernels.swiglu import swiglu_reference, swiglu_triton

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 1, 2 * 37), (2, 4, 2 * 64), (5, 2 * 1)])
def test_swiglu_equals_reference(dtype, shape):
    u = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    out = swiglu_triton(u)
    assert out.shape == shape[:-1] + (shape[-1] // 2,) and out.dtype == dtype
    torch.testing.assert_close(out, swiglu_reference(u), **TOL[dtype])


def test_swiglu_gate_is_the_first_half():
    h = 5
    u = torch.randn(2, 2 * h)
    expected = F.silu(u[:, :h]) * u[:, h:]
    torch.testing.assert_close(swiglu_triton(u), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(swiglu_triton(u), F.silu(u[:, h:]) * u[:, :h])


def test_swiglu_spans_several_blocks(monkeypatch):
    monkeypatch.setattr(swiglu, "BLOCK_H", 16)  # H = 50 -> 4 blocks, the last one partial
    u = torch.randn(3, 100)
    torch.testing.assert_close(swiglu_triton(u), swiglu_reference(u), rtol=1e-5, atol=1e-6)


def test_swiglu_rejects_an_odd_width():
    with pytest.raises(ValueError, match="even"):
        swiglu_triton(torch.randn(2, 7))
