"""KVRing storing keys and values in bfloat16 or int8 (`kv_dtype`): the same positions, masks and windows
as the ring in the model's dtype, the windows within the storage's rounding; the bytes it holds per slot;
a tiny LM streaming over an int8 ring gives logits close to those over the float ring."""

from __future__ import annotations

import random

import pytest
import torch

from antiphon.kv_ring import PIECE, KVRing
from antiphon.stateful import reset_streaming, start_streaming, stop_streaming

from .lm.tiny import MOSHI, make_tiny_lm, random_codes

LAYERS, SLOTS, KV_HEADS, HEAD_DIM, CONTEXT = 2, 3, 2, 16, 6
CPU = torch.device("cpu")


@pytest.mark.parametrize("kv_dtype, dtype", [("bfloat16", torch.float32), ("int8", torch.float32),
                                             ("int8", torch.bfloat16)])
def test_stored_ring_reads_back_the_float_ring_within_its_rounding(kv_dtype, dtype):
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    rings = [KVRing(LAYERS, SLOTS, KV_HEADS, HEAD_DIM, CONTEXT, CPU, dtype, kv_dtype=kv) for kv in (None, kv_dtype)]
    assert rings[1].keys.dtype == {"bfloat16": torch.bfloat16, "int8": torch.int8}[kv_dtype]
    for _ in range(60):
        reset = torch.tensor([rng.random() < 0.1 for _ in range(SLOTS)])
        active = torch.tensor([rng.random() < 0.8 for _ in range(SLOTS)]) if rng.random() < 0.3 else None
        steps = rng.randint(1, PIECE)
        kv = (torch.randn(2, LAYERS, SLOTS, KV_HEADS, steps, HEAD_DIM, generator=gen)
              * torch.logspace(-2, 2, HEAD_DIM)[torch.randperm(HEAD_DIM, generator=gen)]).to(dtype)  # uneven sizes
        results = []
        for ring in rings:
            ring.reset(reset)
            release = ring.hold(active) if active is not None else None
            step = ring.begin(steps)
            windows = [ring.write(layer, step.index, kv[0, layer], kv[1, layer]) for layer in range(LAYERS)]
            ring.end(steps)
            if release:
                release()
            results.append((step, windows))
        (step, windows), (stored_step, stored_windows) = results
        assert step.window == stored_step.window
        for a, b in [(step.positions, stored_step.positions), (step.index, stored_step.index), (step.mask, stored_step.mask)]:
            assert torch.equal(a, b)
        for float_kv, stored_kv in zip(windows, stored_windows):
            for x, y in zip(float_kv, stored_kv):
                assert y.dtype == dtype and y.shape == x.shape
                x, y = x.float(), y.float()
                if kv_dtype == "bfloat16":
                    torch.testing.assert_close(y, x, rtol=2 ** -8, atol=0)
                else:  # each element within half its vector's scale (absmax / 127), and the model dtype's rounding
                    bound = x.abs().amax(-1, keepdim=True) / 254 + x.abs() * torch.finfo(dtype).eps
                    assert ((y - x).abs() <= bound * (1 + 1e-5)).all()
    assert torch.equal(rings[0].key_positions, rings[1].key_positions) and torch.equal(rings[0].offset, rings[1].offset)


@pytest.mark.parametrize("kv_dtype, dtype, itemsize, scales", [
    (None, torch.float32, 4, 0), (None, torch.bfloat16, 2, 0), ("bfloat16", torch.float32, 2, 0),
    ("int8", torch.float32, 1, 4), ("int8", torch.bfloat16, 1, 4)])
def test_bytes_per_slot(kv_dtype, dtype, itemsize, scales):
    ring = KVRing(LAYERS, SLOTS, KV_HEADS, HEAD_DIM, CONTEXT, CPU, dtype, kv_dtype=kv_dtype)
    steps = CONTEXT + PIECE - 1  # the ring's capacity
    # per ring step: keys and values of each layer and KV head (hd elements and a scale), and a key position
    assert ring.bytes_per_slot() == steps * (2 * LAYERS * KV_HEADS * (HEAD_DIM * itemsize + scales) + 8)


def test_unknown_kv_dtype():
    with pytest.raises(ValueError, match="kv_dtype must be one of None, 'bfloat16', 'int8', got 'fp8'"):
        KVRing(LAYERS, SLOTS, KV_HEADS, HEAD_DIM, CONTEXT, CPU, torch.float32, kv_dtype="fp8")


@pytest.mark.parametrize("kv_dtype, tolerance", [("bfloat16", 0.002), ("int8", 0.005)])
def test_tiny_lm_streams_over_a_stored_ring_as_over_the_float_ring(kv_dtype, tolerance):
    """Single steps past the ring's capacity, one slot reset on the way: the text logits' error, measured:
    0.12% of their norm (bfloat16), 0.33% (int8; 0.67% with a scale off by 128/127, 3.6% off by 5%)."""
    lm, batch, steps = make_tiny_lm(MOSHI), 2, 30
    tokens, model = random_codes(MOSHI, batch, steps), lm.transformer

    def stream(kv):
        model.kv_dtype = kv
        start_streaming(model, batch)
        assert model.state.keys.dtype == (torch.int8 if kv == "int8" else getattr(torch, kv or "float32"))
        logits = []
        for t in range(steps):
            if t == 17:
                reset_streaming(model, torch.tensor([True, False]))
            logits.append(lm.text_linear(lm.forward_hidden(tokens[:, :, t: t + 1])))
        stop_streaming(model)
        return torch.cat(logits, dim=1)

    with torch.no_grad():
        expected, got = stream(None), stream(kv_dtype)
    assert (got - expected).norm() < tolerance * expected.norm()
    assert not torch.equal(got, expected)  # the storage is in effect
