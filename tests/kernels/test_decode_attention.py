"""Single-query attention over a ring KV cache, split along the cache: the Triton kernels (interpreted on
CPU) equal the torch reference, and the reference equals the LM's masked attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from antiphon.kernels.decode_attention import decode_attention_reference, decode_attention_triton

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _ring(b, kh, s, hd, dtype, gen, filled):
    """A ring cache of capacity s written `filled[b]` times: key positions as RingKVCache keeps them."""
    keys = torch.randn(b, kh, s, hd, generator=gen).to(dtype)
    values = torch.randn(b, kh, s, hd, generator=gen).to(dtype)
    key_positions = torch.full((b, s), -1, dtype=torch.long)
    for i, n in enumerate(filled):
        for p in range(n):
            key_positions[i, p % s] = p
    q_positions = torch.tensor([max(n - 1, 0) for n in filled])
    return keys, values, key_positions, q_positions


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b, h, kh, s, hd, context, splits", [
    (3, 2, 2, 40, 12, None, 1),  # 40 keys in 2 blocks; slot 2 wraps the ring
    (2, 4, 2, 50, 16, 30, 4),    # grouped KV heads, a window shorter than the ring, 4 splits
    (1, 3, 1, 7, 6, 5, 8),       # more splits than blocks: empty parts
])
def test_decode_attention_equals_reference(dtype, b, h, kh, s, hd, context, splits):
    gen = torch.Generator().manual_seed(13)
    keys, values, key_positions, q_positions = _ring(b, kh, s, hd, dtype, gen, [s // 2, s, 2 * s + 3][:b])
    q = torch.randn(b, h, hd, generator=gen).to(dtype)
    out = decode_attention_triton(q, keys, values, key_positions, q_positions, context, splits=splits)
    ref = decode_attention_reference(q, keys, values, key_positions, q_positions, context)
    assert out.shape == q.shape and out.dtype == dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])


def test_decode_attention_reference_equals_masked_sdpa():
    gen = torch.Generator().manual_seed(14)
    b, h, kh, s, hd, context = 2, 4, 2, 20, 8, 9
    keys, values, key_positions, q_positions = _ring(b, kh, s, hd, torch.float32, gen, [13, 31])
    q = torch.randn(b, h, hd, generator=gen)
    delta = q_positions[:, None] - key_positions
    mask = ((key_positions >= 0) & (delta >= 0) & (delta < context))[:, None, None]  # [B, 1, 1, S]
    k, v = keys.repeat_interleave(2, 1), values.repeat_interleave(2, 1)
    expected = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=mask)[:, :, 0]
    torch.testing.assert_close(decode_attention_reference(q, keys, values, key_positions, q_positions, context),
                               expected, rtol=1e-5, atol=1e-5)
    # only the window counts: changing a key outside it changes nothing
    outside = ((key_positions[0] >= 0) & (q_positions[0] - key_positions[0] >= context)).nonzero()[0, 0]
    keys[0, :, outside] += 100.0
    torch.testing.assert_close(decode_attention_triton(q, keys, values, key_positions, q_positions, context),
                               expected, rtol=1e-4, atol=1e-5)


def test_decode_attention_empty_slot_gives_zeros():
    q = torch.randn(2, 2, 4)
    keys = torch.randn(2, 1, 6, 4)
    key_positions = torch.full((2, 6), -1, dtype=torch.long)
    key_positions[1, 0] = 0
    out = decode_attention_triton(q, keys, keys, key_positions, torch.tensor([0, 0]), None, splits=2)
    assert torch.equal(out[0], torch.zeros(2, 4))
    torch.testing.assert_close(out[1], keys[1, 0, 0].expand(2, 4))  # one key: its value
    assert math.isfinite(float(decode_attention_reference(q, keys, keys, key_positions, torch.tensor([0, 0])).sum()))
