"""Streaming convolutions: streaming equals offline for any chunking; reset(mask) is per slot."""

from __future__ import annotations

import pytest
import torch

from antiphon.codec.conv import StreamingConv1d, StreamingConvTranspose1d
from antiphon.stateful import reset_streaming, start_streaming, stop_streaming

CONVS = [
    dict(in_channels=3, out_channels=5, kernel_size=7),
    dict(in_channels=4, out_channels=6, kernel_size=8, stride=4),
    dict(in_channels=4, out_channels=4, kernel_size=3, dilation=2),
    dict(in_channels=6, out_channels=6, kernel_size=4, stride=2, bias=False, pad_mode="replicate"),
    dict(in_channels=4, out_channels=2, kernel_size=1),
]
CONV_TRANSPOSES = [
    dict(in_channels=6, out_channels=3, kernel_size=16, stride=8),
    dict(in_channels=4, out_channels=4, kernel_size=4, stride=2, groups=4, bias=False),
    dict(in_channels=5, out_channels=3, kernel_size=10, stride=5),
]
CHUNKINGS = {"1": [1] * 12, "3": [3] * 4, "ragged": [2, 5, 1, 4]}


def _stream(module, x, chunks, unit):
    start_streaming(module, x.shape[0])
    try:
        out, pos = [], 0
        for n in chunks:
            out.append(module(x[..., pos:pos + n * unit]))
            pos += n * unit
        return torch.cat(out, dim=-1)
    finally:
        stop_streaming(module)


@pytest.mark.parametrize("kwargs", CONVS, ids=lambda k: str(sorted(k.items())))
@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_conv_streaming_equals_offline(kwargs, chunking):
    torch.manual_seed(0)
    conv = StreamingConv1d(**kwargs)
    stride = kwargs.get("stride", 1)
    x = torch.randn(2, kwargs["in_channels"], 12 * stride)
    with torch.no_grad():
        offline = conv(x)
        streamed = _stream(conv, x, CHUNKINGS[chunking], stride)
    assert offline.shape == (2, kwargs["out_channels"], 12)
    torch.testing.assert_close(streamed, offline, rtol=1e-5, atol=1e-6)


def test_conv_is_causal():
    torch.manual_seed(0)
    conv = StreamingConv1d(2, 3, 5, stride=1)
    x = torch.randn(1, 2, 20)
    y = x.clone()
    y[..., 10:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(conv(x)[..., :10], conv(y)[..., :10])
        assert not torch.allclose(conv(x)[..., 10:], conv(y)[..., 10:])


def test_replicate_padding_uses_the_first_sample():
    conv = StreamingConv1d(1, 1, 4, stride=2, bias=False, pad_mode="replicate")
    with torch.no_grad():
        conv.conv.weight.fill_(1.0)
        x = torch.full((1, 1, 2), 3.0)
        assert conv(x).item() == 12.0  # two padded samples equal to 3, plus the two real ones


@pytest.mark.parametrize("kwargs", CONV_TRANSPOSES, ids=lambda k: str(sorted(k.items())))
@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_conv_transpose_streaming_equals_offline(kwargs, chunking):
    torch.manual_seed(0)
    convtr = StreamingConvTranspose1d(**kwargs)
    x = torch.randn(2, kwargs["in_channels"], 12)
    with torch.no_grad():
        offline = convtr(x)
        streamed = _stream(convtr, x, CHUNKINGS[chunking], 1)
    assert offline.shape == (2, kwargs["out_channels"], 12 * kwargs["stride"])
    torch.testing.assert_close(streamed, offline, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", CONV_TRANSPOSES, ids=lambda k: str(sorted(k.items())))
def test_conv_transpose_matches_torch(kwargs):
    """The matmul + overlap-add path taken for short inputs equals torch's transposed conv."""
    torch.manual_seed(0)
    convtr = StreamingConvTranspose1d(**kwargs)
    overlap = kwargs["kernel_size"] - kwargs["stride"]
    for steps in (1, 2, 7):
        x = torch.randn(3, kwargs["in_channels"], steps)
        with torch.no_grad():
            expected = convtr.convtr(x)[..., :-overlap]
            torch.testing.assert_close(convtr(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: StreamingConv1d(3, 4, 6, stride=2, pad_mode="replicate"),
                                  lambda: StreamingConvTranspose1d(3, 4, 6, stride=2)])
def test_reset_restarts_chosen_slots_only(make):
    torch.manual_seed(0)
    module = make()
    unit = 2 if isinstance(module, StreamingConv1d) else 1
    a = torch.randn(3, 3, 4 * unit)
    b = torch.randn(3, 3, 4 * unit)
    with torch.no_grad():
        start_streaming(module, 3)
        module(a)
        reset_streaming(module, torch.tensor([False, True, False]))
        after_reset = module(b)
        stop_streaming(module)
        without_reset = _stream(module, torch.cat([a, b], -1), [4, 4], unit)[..., -after_reset.shape[-1]:]
        fresh = module(b)  # offline = a fresh slot
    assert torch.equal(after_reset[[0, 2]], without_reset[[0, 2]])  # other slots: bit-identical
    torch.testing.assert_close(after_reset[1], fresh[1])
