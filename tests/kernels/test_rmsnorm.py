"""Fused residual add + RMSNorm: the Triton kernel (interpreted on CPU) equals the torch reference."""

from __future__ import annotations

import pytest
import torch

from antiphon.kernels.rmsnorm import rmsnorm_reference, rmsnorm_triton

# bfloat16: Triton's interpreter rounds float32 -> bfloat16 toward zero (the GPU to nearest), up to one
# bfloat16 ulp (2^-7 relative) away from torch's rounding of the same float32 value
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}
SUM_TOL = {torch.float32: dict(rtol=0, atol=0), torch.bfloat16: dict(rtol=2 ** -7, atol=0)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 1, 37), (2, 5, 64), (1, 200)])
@pytest.mark.parametrize("with_residual", [True, False])
def test_rmsnorm_equals_reference(dtype, shape, with_residual):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    residual = torch.randn(shape, generator=gen).to(dtype) if with_residual else None
    alpha = (torch.rand(1, 1, shape[-1], generator=gen) + 0.5).to(dtype)  # stored [1, 1, D]
    out, h = rmsnorm_triton(x, residual, alpha, 1e-8)
    ref_out, ref_h = rmsnorm_reference(x, residual, alpha, 1e-8)
    assert out.dtype == dtype and h.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(h, ref_h, **SUM_TOL[dtype])  # one rounding of the same sum
    torch.testing.assert_close(out, ref_out, **TOL[dtype])


def test_rmsnorm_reference_matches_the_formula():
    x = torch.tensor([[3.0, 4.0]])
    out, h = rmsnorm_reference(x, torch.zeros_like(x), torch.tensor([1.0, 2.0]), eps=0.0)
    rms = (12.5) ** 0.5
    torch.testing.assert_close(out, torch.tensor([[3.0 / rms, 8.0 / rms]]))
    assert torch.equal(h, x)


def test_rmsnorm_eps_matters_for_tiny_rows():
    x = torch.full((1, 8), 1e-5)
    alpha = torch.ones(8)
    out, _ = rmsnorm_triton(x, None, alpha, 1e-5)
    ref, _ = rmsnorm_reference(x, None, alpha, 1e-5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-7)
    assert out.max() < 0.01  # eps dominates mean(x^2) = 1e-10


def test_rmsnorm_rejects_a_wrong_alpha():
    with pytest.raises(ValueError, match="alpha"):
        rmsnorm_triton(torch.randn(2, 8), None, torch.ones(7))
