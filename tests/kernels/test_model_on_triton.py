"""The LM's streaming step on the Triton kernels (forced, interpreted on CPU) equals the step on torch:
the fused embedding lookup, fused residual add + RMSNorm, SwiGLU, RoPE on q and k, decode attention over
the ring, weight-only int8 / int4 matmuls, and sampling, through kernels.dispatch, the path CUDA takes;
the codec's RVQ search likewise."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from antiphon.stateful import reset_streaming, start_streaming, stop_streaming
from tests.lm.tiny import MOSHI, TTS, make_tiny_lm, random_codes

# context 5: the ring (capacity 12) wraps within the 20 steps
CONFIGS = {"moshi": MOSHI, "tts-gqa-layer-scale": dataclasses.replace(TTS, cross_attention=False)}


def stream_temporal(lm, x: torch.Tensor, reset_at: int) -> torch.Tensor:
    """x [B, T, D] one step at a time through the temporal transformer, slot 1 restarted at `reset_at`."""
    start_streaming(lm.transformer, x.shape[0])
    try:
        out = []
        for t in range(x.shape[1]):
            if t == reset_at:
                reset_streaming(lm.transformer, torch.tensor([False, True]))
            out.append(lm.transformer(x[:, t: t + 1]))
        return torch.cat(out, dim=1)
    finally:
        stop_streaming(lm.transformer)


def on_both(monkeypatch, run):
    """run() with ANTIPHON_KERNELS=torch, then =triton, without autograd -> (torch's result, Triton's)."""
    results = []
    for kernels in ("torch", "triton"):
        monkeypatch.setenv("ANTIPHON_KERNELS", kernels)
        with torch.no_grad():
            results.append(run())
    return results


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_temporal_steps_on_triton_equal_torch(name, monkeypatch):
    lm = make_tiny_lm(CONFIGS[name]).eval()
    x = torch.randn(2, 20, lm.config.dim)
    expected, got = on_both(monkeypatch, lambda: stream_temporal(lm, x, reset_at=9))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode, group_size", [("int8", 128), ("int4", 32)])
def test_quantized_temporal_steps_on_triton_equal_torch(mode, group_size, monkeypatch):
    from antiphon.lm.quantize import quantize_lm

    lm = make_tiny_lm(dataclasses.replace(MOSHI, dim=64, hidden_scale=1.5)).eval()
    quantize_lm(lm, mode, group_size)
    x = torch.randn(2, 4, lm.config.dim)
    expected, got = on_both(monkeypatch, lambda: stream_temporal(lm, x, reset_at=2))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kv_dtype", ["bfloat16", "int8"])
def test_stored_kv_steps_on_triton_equal_torch(kv_dtype, monkeypatch):
    """The decode kernel reads the stored (bf16 / int8 + scales) ring; torch reads its dequantized window.
    One layer: deeper, the float rounding differences of the two paths flip int8 roundings of the next
    layer's keys, a whole quantization step."""
    lm = make_tiny_lm(dataclasses.replace(MOSHI, num_layers=1)).eval()
    lm.transformer.kv_dtype = kv_dtype
    x = torch.randn(2, 14, lm.config.dim)
    expected, got = on_both(monkeypatch, lambda: stream_temporal(lm, x, reset_at=5))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_the_triton_path_is_taken(monkeypatch):
    """Guards the test above: a wrong decode kernel changes the output (so the kernels do run)."""
    from antiphon.kernels import decode_attention

    lm = make_tiny_lm(MOSHI).eval()
    x = torch.randn(2, 6, lm.config.dim)
    monkeypatch.setenv("ANTIPHON_KERNELS", "torch")
    with torch.no_grad():
        expected = stream_temporal(lm, x, reset_at=3)
    monkeypatch.setenv("ANTIPHON_KERNELS", "triton")
    kernel = decode_attention.decode_attention_triton

    def window_of_one(q, keys, values, key_positions, q_positions, context=None, **scales):
        return kernel(q, keys, values, key_positions, q_positions, 1, **scales)

    monkeypatch.setattr(decode_attention, "decode_attention_triton", window_of_one)
    with torch.no_grad():
        got = stream_temporal(lm, x, reset_at=3)
    assert not torch.allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_the_fused_embedding_follows_the_tables(monkeypatch):
    """The stacked audio tables of the fused lookup are rebuilt when a table changes in place."""
    lm = make_tiny_lm(MOSHI).eval()
    tokens = random_codes(MOSHI, 2, 5)
    monkeypatch.setenv("ANTIPHON_KERNELS", "triton")
    with torch.no_grad():
        first = lm.embed(tokens)
        lm.emb[1].weight.mul_(2)
        got = lm.embed(tokens)
    monkeypatch.setenv("ANTIPHON_KERNELS", "torch")
    with torch.no_grad():
        expected = lm.embed(tokens)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(first, got)


def test_greedy_generation_on_triton_equals_torch(monkeypatch):
    lm = make_tiny_lm(MOSHI).eval()
    inputs = random_codes(MOSHI, 2, 12, zeros=False)[:, 1 + MOSHI.dep_q:]  # the user's streams [B, n_q - dep_q, T]

    def generate() -> list[torch.Tensor]:
        gen = lm.generator(2, temp=0.0, temp_text=0.0)
        return [out for t in range(inputs.shape[-1]) if (out := gen.step(inputs[:, :, t: t + 1])) is not None]

    expected, got = on_both(monkeypatch, generate)
    assert len(got) == len(expected) > 5
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_codec_codes_on_triton_equal_torch(monkeypatch):
    """The RVQ search of the codec's encoder through the Triton kernel (kernels/rvq_search.py)."""
    from tests.codec.tiny import chirp_audio, make_tiny_codec

    codec = make_tiny_codec()
    wav = chirp_audio(2, 4)
    expected, got = on_both(monkeypatch, lambda: codec.encode(wav))
    assert len(expected.unique()) > 8  # codes vary: the comparison says something
    assert torch.equal(got, expected)
