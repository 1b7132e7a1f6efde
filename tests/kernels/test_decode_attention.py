"""Single-query attention over a ring KV cache, split along the cache: the Triton kernels (interpreted on
CPU) equal the torch reference, and the reference equals the LM's masked attention; with bfloat16 keys
and values, and with int8 ones and their per-position scales, close to attention over the float ones."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from antiphon.kernels.decode_attention import (decode_attention_reference, decode_attention_triton, dequantize_kv,
                                                quantize_kv)

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


CASES = ("b, h, kh, s, hd, context, splits", [
    (3, 2, 2, 40, 12, None, 1),  # 40 keys in 2 blocks; slot 2 wraps the ring
    (2, 4, 2, 50, 16, 30, 4),    # grouped KV heads, a window shorter than the ring, 4 splits
    (1, 3, 1, 7, 6, 5, 8),       # more splits than blocks: empty parts
])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(*CASES)
def test_decode_attention_equals_reference(dtype, b, h, kh, s, hd, context, splits):
    gen = torch.Generator().manual_seed(13)
    keys, values, key_positions, q_positions = _ring(b, kh, s, hd, dtype, gen, [s // 2, s, 2 * s + 3][:b])
    q = torch.randn(b, h, hd, generator=gen).to(dtype)
    out = decode_attention_triton(q, keys, values, key_positions, q_positions, context, splits=splits)
    ref = decode_attention_reference(q, keys, values, key_positions, q_positions, context)
    assert out.shape == q.shape and out.dtype == dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])


@pytest.mark.parametrize("kv", ["bfloat16", "int8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(*CASES)
def test_stored_kv_equals_reference(kv, dtype, b, h, kh, s, hd, context, splits):
    """Keys and values stored in bfloat16 (queries float32 or bfloat16), or int8 with their scales."""
    gen = torch.Generator().manual_seed(16)
    keys, values, key_positions, q_positions = _ring(b, kh, s, hd, torch.float32, gen, [s // 2, s, 2 * s + 3][:b])
    if kv == "int8":
        (keys, k_scale), (values, v_scale) = quantize_kv(keys), quantize_kv(values)
        scales = dict(k_scale=k_scale, v_scale=v_scale)
    else:
        keys, values, scales = keys.bfloat16(), values.bfloat16(), {}
    q = torch.randn(b, h, hd, generator=gen).to(dtype)
    out = decode_attention_triton(q, keys, values, key_positions, q_positions, context, splits=splits, **scales)
    ref = decode_attention_reference(q, keys, values, key_positions, q_positions, context, **scales)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])


def test_quantize_kv_rounds_each_vector_to_its_own_scale():
    x = torch.randn(3, 5, 16) * torch.logspace(-3, 3, 5)[:, None]  # vectors of very different sizes
    x[0, 0] = 0.0
    q, scale = quantize_kv(x)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (3, 5)
    torch.testing.assert_close(scale[1:], x[1:].abs().amax(-1) / 127)
    assert scale[0, 0] > 0 and math.isfinite(scale[0, 0]) and not q[0, 0].any()
    assert q.abs().amax(-1)[1:].eq(127).all()
    assert ((dequantize_kv(q, scale, torch.float32) - x).abs() <= scale[..., None] / 2 * (1 + 1e-5)).all()


def test_int8_kv_is_close_to_float_attention():
    """The output's quantization error, measured: 1.1% of its norm here (at most 0.014 per element). A scale
    off by 128/127 gives 2.4%, a scale per head instead of per position 2.0%, a neighbour's scale 22% or more."""
    gen = torch.Generator().manual_seed(15)
    b, h, kh, s, hd = 4, 8, 4, 128, 64
    keys, values = torch.randn(2, b, kh, s, hd, generator=gen)
    q = 2 * torch.randn(b, h, hd, generator=gen)
    key_positions, q_positions = torch.arange(s).expand(b, s), torch.full((b,), s - 1)
    expected = decode_attention_reference(q, keys, values, key_positions, q_positions)
    (k8, k_scale), (v8, v_scale) = quantize_kv(keys), quantize_kv(values)
    for attend in (decode_attention_reference, decode_attention_triton):
        out = attend(q, k8, v8, key_positions, q_positions, k_scale=k_scale, v_scale=v_scale)
        assert (out - expected).norm() < 0.014 * expected.norm()
        assert (out - expected).abs().max() < 0.02


def test_scales_go_with_int8_keys_only():
    q, keys, key_positions = torch.randn(1, 2, 4), torch.randn(1, 1, 3, 4), torch.zeros(1, 3, dtype=torch.long)
    k8, scale = quantize_kv(keys)
    for kv, scales in [(keys, dict(k_scale=scale, v_scale=scale)), (k8, {}), (k8, dict(k_scale=scale))]:
        for attend in (decode_attention_reference, decode_attention_triton):
            with pytest.raises(ValueError, match="int8 keys and values take k_scale and v_scale"):
                attend(q, kv, kv, key_positions, torch.tensor([0]), **scales)
    with pytest.raises(ValueError, match=r"must be \[B, KH, S\]"):
        decode_attention_reference(q, k8, k8, key_positions, torch.tensor([0]), k_scale=scale[..., :2], v_scale=scale)


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
