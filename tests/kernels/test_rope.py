"""Fused interleaved RoPE: the Triton kernel (interpreted on CPU) equals kernels/rope.apply_rope."""

from __future__ import annotations

import pytest
import torch

from antiphon.kernels.rope import apply_rope, rope_rotation
from antiphon.kernels.rope_triton import rope_reference, rope_triton

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b, t, h, kh, hd", [(3, 1, 3, 1, 6), (2, 5, 4, 2, 16), (1, 3, 5, 5, 2)])
def test_rope_equals_apply_rope(dtype, b, t, h, kh, hd):
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(b, t, h, hd, generator=gen).to(dtype)
    k = torch.randn(b, t, kh, hd, generator=gen).to(dtype)
    positions = torch.randint(0, 500, (b, t), generator=gen)
    out_q, out_k = rope_triton(q, k, positions, 10_000.0)
    rotation = rope_rotation(positions, hd, 10_000.0)
    assert out_q.dtype == dtype and out_q.shape == q.shape and out_k.shape == k.shape
    torch.testing.assert_close(out_q, apply_rope(q, rotation), **TOL[dtype])
    torch.testing.assert_close(out_k, apply_rope(k, rotation), **TOL[dtype])


def test_rope_on_strided_views_and_shared_positions():
    # q, k as views of a fused projection [B, T, (H + 2 KH) hd]; positions [1, T] shared by the batch
    b, t, h, kh, hd = 2, 4, 3, 1, 8
    proj = torch.randn(b, t, (h + 2 * kh) * hd)
    q = proj[..., : h * hd].unflatten(-1, (h, hd))
    k = proj[..., h * hd: (h + kh) * hd].unflatten(-1, (kh, hd))
    positions = torch.arange(7, 7 + t)[None]
    out_q, out_k = rope_triton(q, k, positions, 100.0)
    ref_q, ref_k = rope_reference(q.contiguous(), k.contiguous(), positions, 100.0)
    torch.testing.assert_close(out_q, ref_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_k, ref_k, rtol=1e-5, atol=1e-5)


def test_rope_far_positions_keep_float32_accuracy():
    # a session of hours: the angle t * w_0 = t is far beyond 2 pi
    q = torch.randn(1, 3, 2, 4, dtype=torch.float64).float()
    positions = torch.tensor([[45_000, 123_457, 1_000_003]])
    out_q, _ = rope_triton(q, q, positions, 10_000.0)
    torch.testing.assert_close(out_q, apply_rope(q, rope_rotation(positions, 4, 10_000.0)), rtol=1e-5, atol=2e-5)


def test_rope_moves_values():
    q = torch.randn(1, 2, 1, 4)
    out_q, _ = rope_triton(q, q, torch.tensor([[0, 1]]), 10_000.0)
    torch.testing.assert_close(out_q[:, 0], q[:, 0])  # position 0: identity
    assert not torch.allclose(out_q[:, 1], q[:, 1], atol=1e-3)


def test_rope_rejects_bad_positions():
    q = torch.randn(2, 3, 1, 4)
    with pytest.raises(ValueError, match="positions"):
        rope_triton(q, q, torch.zeros(2, 4, dtype=torch.long), 10_000.0)
