"""The codec transformer: streaming equals offline, also beyond the attention window; per-slot reset."""

from __future__ import annotations

import pytest
import torch

from antiphon.codec import CodecConfig
from antiphon.codec.transformer import CodecTransformer
from antiphon.kernels.rope import apply_rope, rope_rotation
from antiphon.stateful import reset_streaming, start_streaming, stop_streaming

CONFIG = CodecConfig(dimension=16, num_heads=2, num_layers=2, dim_feedforward=32, context=6)


def _transformer(seed=0):
    torch.manual_seed(seed)
    t = CodecTransformer(CONFIG).eval()
    with torch.no_grad():
        for p in t.parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.5)
    return t


def _stream(t, x, chunks):
    start_streaming(t, x.shape[0])
    try:
        out, pos = [], 0
        for n in chunks:
            out.append(t(x[..., pos:pos + n]))
            pos += n
        return torch.cat(out, -1)
    finally:
        stop_streaming(t)


@pytest.mark.parametrize("chunks", [[1] * 20, [3] * 7, [2, 7, 1, 5, 6], [20]], ids=["1", "3", "ragged", "whole"])
def test_streaming_equals_offline_beyond_the_window(chunks):
    t = _transformer()
    x = torch.randn(2, 16, sum(chunks))
    with torch.no_grad():
        torch.testing.assert_close(_stream(t, x, chunks), t(x), rtol=1e-5, atol=1e-5)


def test_attention_window_is_context_steps():
    """Output at step s depends on inputs s-context+1..s only (one layer: no stacking of windows)."""
    cfg = CodecConfig(dimension=16, num_heads=2, num_layers=1, dim_feedforward=32, context=6)
    torch.manual_seed(0)
    t = CodecTransformer(cfg).eval()
    x = torch.randn(1, 16, 20)
    y = x.clone()
    y[..., 5] += torch.randn(16)  # not a constant: LayerNorm would remove that
    with torch.no_grad():
        diff = (t(x) - t(y)).abs().amax(dim=1)[0]
    assert torch.all(diff[:5] == 0)
    assert torch.all(diff[5:11] > 0)  # steps 5..10 see step 5
    assert torch.all(diff[11:] == 0)  # step 11 looks back to step 6 only


def test_reset_restarts_one_slot_and_leaves_the_others_bit_identical():
    t = _transformer()
    a = torch.randn(3, 16, 9)
    b = torch.randn(3, 16, 4)
    with torch.no_grad():
        start_streaming(t, 3)
        t(a)
        reset_streaming(t, torch.tensor([True, False, False]))
        after_reset = t(b)
        stop_streaming(t)
        continued = _stream(t, torch.cat([a, b], -1), [9, 4])[..., -4:]
        fresh = t(b)
    assert torch.equal(after_reset[1:], continued[1:])
    torch.testing.assert_close(after_reset[0], fresh[0], rtol=1e-5, atol=1e-5)


def test_rope_rotates_interleaved_pairs():
    x = torch.zeros(1, 1, 1, 4)
    x[..., 0] = 1.0  # the pair (x0, x1) = (1, 0)
    out = apply_rope(x, rope_rotation(torch.tensor([[3]]), head_dim=4, max_period=10000.0))[0, 0, 0]
    torch.testing.assert_close(out, torch.tensor([torch.cos(torch.tensor(3.0)), torch.sin(torch.tensor(3.0)), 0, 0]))
    # relative positions only: <rope(q, m), rope(k, n)> depends on m - n
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def dot(m, n):
        rq, rk = rope_rotation(torch.tensor([[m]]), 8, 100.0), rope_rotation(torch.tensor([[n]]), 8, 100.0)
        return (apply_rope(q, rq) * apply_rope(k, rk)).sum()

    torch.testing.assert_close(dot(7, 3), dot(104, 100), rtol=1e-5, atol=1e-5)
