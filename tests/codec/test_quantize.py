"""The int8 codec (Codec.quantize): which weights it takes, that it sounds like the float codec on the
embedded model, that streaming still equals offline, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from antiphon.audio_io import read_audio
from antiphon.codec import Codec
from antiphon.embedded import embedded
from antiphon.errors import InputError
from antiphon.quantize import QuantizedWeight

from .tiny import TINY, chirp_audio

SAMPLE = Path(__file__).parents[2] / "demos" / "sample.wav"


def _stream_codes(codec: Codec, wav: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(), codec.streaming(wav.shape[0]):
        return torch.cat([codec.encode(frame) for frame in wav.split(codec.frame_size, dim=-1)], dim=-1)


def _stream_audio(codec: Codec, codes: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(), codec.streaming(codes.shape[0]):
        return torch.cat([codec.decode(codes[..., i:i + 1]) for i in range(codes.shape[-1])], dim=-1)


def test_quantize_takes_the_latent_rate_weights():
    codec = Codec(TINY, num_codebooks=8)
    # 2 transformers x 2 layers x 4 linears + the downsampling conv + 2 SEANet convs on each side
    assert codec.quantize() == 2 * TINY.num_layers * 4 + 1 + 2 + 2
    quantized = {name for name, m in codec.named_modules() if isinstance(m, QuantizedWeight)}
    assert "decoder.model.2.convtr.weight" in quantized and "encoder.model.14.conv.weight" in quantized
    assert "encoder.model.9.conv.weight" not in quantized  # a 16-step conv: read for many rows, stays float
    assert codec.is_quantized


def test_int8_codec_sounds_like_the_float_one():
    wav = torch.from_numpy(read_audio(SAMPLE, mono=True))[None]
    wav = wav[..., : 40 * 1920]
    floating = Codec.from_pretrained(embedded("codec"))
    int8 = Codec.from_pretrained(embedded("codec"), quantize="int8")
    codes, codes8 = _stream_codes(floating, wav), _stream_codes(int8, wav)
    # the deep residual codebooks flip on near-ties (the latent moves by ~0.5%); the semantic one holds
    assert (codes[:, 0] == codes8[:, 0]).float().mean() >= 0.9
    ref = wav[0, 0].numpy()

    def snr(codec, c):
        out = _stream_audio(codec, c)[0, 0].numpy()
        return 10 * np.log10((ref ** 2).sum() / ((ref - out) ** 2).sum())

    from pystoi import stoi

    audio, audio8 = _stream_audio(floating, codes)[0, 0].numpy(), _stream_audio(int8, codes8)[0, 0].numpy()
    assert abs(stoi(ref, audio8, 24000) - stoi(ref, audio, 24000)) < 0.01
    assert abs(snr(int8, codes8) - snr(floating, codes)) < 0.3
    # decoding the same codes: the int8 decoder within -40 dB of the float one
    same = _stream_audio(int8, codes)[0, 0].numpy()
    assert 10 * np.log10((audio ** 2).sum() / ((audio - same) ** 2).sum()) > 40


def test_int8_streaming_matches_int8_offline():
    # streaming runs the CPU int8 kernel (bfloat16 activations) on a few rows, offline (80 steps of
    # 25 Hz per slot: more than CPU_ROWS) the float32 reference
    torch.manual_seed(0)
    codec = Codec(TINY, num_codebooks=8)
    codec.quantize()
    codes = torch.randint(0, TINY.codebook_size, (2, 8, 40))
    with torch.inference_mode():
        offline = codec.decode(codes)
    streamed = _stream_audio(codec, codes)
    assert ((streamed - offline).norm() / offline.norm()).item() < 1e-2
    with torch.inference_mode():
        assert _stream_codes(codec, chirp_audio(2, 6)).shape == (2, 8, 6)


def test_quantize_refuses_what_it_cannot_do(tmp_path):
    codec = Codec(TINY, num_codebooks=8)
    with pytest.raises(InputError, match="int8 only"):
        codec.quantize("int4")
    codec.quantize()
    with pytest.raises(InputError, match="already quantized"):
        codec.quantize()
    with pytest.raises(InputError, match="quantized codec is not saved"):
        codec.save_pretrained(tmp_path)
    assert not any(tmp_path.iterdir())
