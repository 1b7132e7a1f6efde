"""The codec's public API: shapes, streaming equals offline, per-slot reset, dtypes, bad input."""

from __future__ import annotations

import pytest
import torch

from antiphon.codec import Codec
from antiphon.errors import InputError

from .tiny import chirp_audio, make_tiny_codec

FRAME = 1920


def test_properties(tiny_codec):
    assert (tiny_codec.sample_rate, tiny_codec.frame_rate, tiny_codec.frame_size) == (24000, 12.5, 1920)
    assert tiny_codec.num_codebooks == 8
    full = Codec()
    assert full.frame_size == 1920 and full.config.n_q == 32


def test_encode_decode_shapes_and_padding(tiny_codec):
    wav = chirp_audio(2, 5)[..., : 4 * FRAME + 7]  # 4 frames and a bit: padded to 5
    codes = tiny_codec.encode(wav)
    assert codes.shape == (2, 8, 5) and codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < 64
    assert codes.unique().numel() > 10, "fitted codebooks must give varied codes"
    assert tiny_codec.decode(codes).shape == (2, 1, 5 * FRAME)


def test_offline_padding_is_zeros(tiny_codec):
    wav = chirp_audio(1, 3)
    short = wav[..., : 2 * FRAME + 100]
    padded = torch.cat([short, torch.zeros(1, 1, FRAME - 100)], -1)
    assert torch.equal(tiny_codec.encode(short), tiny_codec.encode(padded))


@pytest.mark.parametrize("chunks", [[1] * 30, [3] * 10, [2, 7, 1, 11, 4, 5]], ids=["1", "3", "ragged"])
@pytest.mark.parametrize("batch", [1, 3])
def test_streaming_equals_offline(tiny_codec, chunks, batch):
    """30 frames = 60 transformer steps, six times the tiny codec's 10-step attention window."""
    wav = chirp_audio(batch, sum(chunks), seed=batch)
    codes = tiny_codec.encode(wav)
    audio = tiny_codec.decode(codes)
    streamed_codes, streamed_audio, pos = [], [], 0
    with tiny_codec.streaming(batch):
        for n in chunks:
            streamed_codes.append(tiny_codec.encode(wav[..., pos * FRAME:(pos + n) * FRAME]))
            streamed_audio.append(tiny_codec.decode(codes[..., pos:pos + n]))
            pos += n
    streamed_codes = torch.cat(streamed_codes, -1)
    assert (streamed_codes == codes).float().mean() >= 0.99
    assert (streamed_codes[:, 0] == codes[:, 0]).float().mean() >= 0.995
    torch.testing.assert_close(torch.cat(streamed_audio, -1), audio, rtol=0, atol=1e-5)


def test_reset_streaming_restarts_chosen_slots_only(tiny_codec):
    wav = chirp_audio(3, 8, seed=7)
    first, second = wav[..., : 5 * FRAME], wav[..., 5 * FRAME:]
    codes = tiny_codec.encode(wav)
    with tiny_codec.streaming(3):
        tiny_codec.encode(first)
        tiny_codec.decode(codes[..., :5])
        tiny_codec.reset_streaming(torch.tensor([False, True, False]))
        after_codes = tiny_codec.encode(second)
        after_audio = tiny_codec.decode(codes[..., 5:])
    with tiny_codec.streaming(3):
        tiny_codec.encode(first)
        tiny_codec.decode(codes[..., :5])
        cont_codes = tiny_codec.encode(second)
        cont_audio = tiny_codec.decode(codes[..., 5:])
    fresh_codes = tiny_codec.encode(second)
    fresh_audio = tiny_codec.decode(codes[..., 5:])
    keep = [0, 2]
    assert torch.equal(after_codes[keep], cont_codes[keep])
    assert torch.equal(after_audio[keep], cont_audio[keep])  # bit-identical
    assert torch.equal(after_codes[1], fresh_codes[1])
    torch.testing.assert_close(after_audio[1], fresh_audio[1], rtol=0, atol=1e-5)
    assert not torch.equal(after_audio[1], cont_audio[1])


@pytest.mark.parametrize("k", [1, 2, 8, 32])
def test_any_number_of_codebooks(k):
    codec = make_tiny_codec(num_codebooks=k)
    wav = chirp_audio(1, 4)
    codes = codec.encode(wav)
    assert codes.shape == (1, k, 4)
    assert codec.decode(codes).shape == (1, 1, 4 * FRAME)


def test_more_codebooks_reconstruct_the_latent_better(tiny_codec):
    """The RVQ is residual: each added codebook shrinks the quantization error of the latent."""
    wav = chirp_audio(2, 10)
    with torch.inference_mode():
        latent = tiny_codec.encode_to_latent(wav)
        errors = []
        for k in (1, 2, 4, 8, 16, 32):
            tiny_codec.num_codebooks = k
            rest = tiny_codec.quantizer.rvq_rest
            codes = tiny_codec.encode_latent(latent)[:, 1:]
            target = rest.input_proj(latent.transpose(1, 2))
            approx = sum(torch.nn.functional.embedding(codes[:, i], rest.codebooks[i]) for i in range(k - 1)) \
                if k > 1 else torch.zeros_like(target)
            errors.append((target - approx).pow(2).mean().item())
    tiny_codec.num_codebooks = 8
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_bfloat16_runs_and_stays_close(tiny_codec):
    codec = make_tiny_codec().to(torch.bfloat16)
    wav = chirp_audio(1, 6)
    codes = tiny_codec.encode(wav)
    assert (codec.encode(wav) == codes)[:, 0].float().mean() > 0.5
    out, ref = codec.decode(codes), tiny_codec.decode(codes)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("wav, match", [
    (torch.zeros(1920), "rank 1"),
    (torch.zeros(1, 1920), "rank 2"),
    (torch.zeros(1, 2, 1920), "2 channels"),
    (torch.zeros(1, 1, 1920, dtype=torch.int16), "float audio"),
    ([0.0] * 1920, "torch.Tensor"),
])
def test_encode_rejects_bad_audio(tiny_codec, wav, match):
    with pytest.raises(InputError, match=match):
        tiny_codec.encode(wav)


@pytest.mark.parametrize("codes, match", [
    (torch.zeros(8, 3, dtype=torch.long), "rank 2"),
    (torch.zeros(1, 8, 3), "integer codes"),
    (torch.full((1, 8, 3), 64), r"in \[0, 64\)"),
    (torch.full((1, 8, 3), -1), r"in \[0, 64\)"),
    (torch.zeros(1, 33, 3, dtype=torch.long), "1..32 codebooks"),
])
def test_decode_rejects_bad_codes(tiny_codec, codes, match):
    with pytest.raises(InputError, match=match):
        tiny_codec.decode(codes)


def test_streaming_rejects_partial_frames_and_wrong_batch(tiny_codec):
    with tiny_codec.streaming(2):
        with pytest.raises(InputError, match="multiple of 1920"):
            tiny_codec.encode(torch.zeros(2, 1, 1000))
        with pytest.raises(InputError, match="multiple of 1920"):
            tiny_codec.encode(torch.zeros(2, 1, 0))
        with pytest.raises(InputError, match="batch_size 2"):
            tiny_codec.encode(torch.zeros(3, 1, 1920))
        with pytest.raises(InputError, match="batch_size 2"):
            tiny_codec.decode(torch.zeros(1, 8, 1, dtype=torch.long))
        with pytest.raises(InputError, match="bool"):
            tiny_codec.reset_streaming(torch.tensor([1, 0]))
        with pytest.raises(RuntimeError, match="do not nest"):
            with tiny_codec.streaming(2):
                pass
        tiny_codec.encode(torch.zeros(2, 1, 1920))  # the session survives its bad calls
    assert not tiny_codec.is_streaming
    with pytest.raises(RuntimeError, match="streaming"):
        tiny_codec.reset_streaming()


def test_num_codebooks_is_checked(tiny_codec):
    with pytest.raises(InputError, match="1..32"):
        tiny_codec.num_codebooks = 0
    with pytest.raises(InputError, match="1..32"):
        Codec(num_codebooks=33)


def test_loading_a_state_dict_refreshes_the_search_tables(tiny_codec):
    """A codec that loads another's state encodes as that one (the RVQ search tables follow the codebooks),
    as a training run resumed from its state does before it evaluates."""
    fresh = Codec(tiny_codec.config, num_codebooks=tiny_codec.num_codebooks)
    fresh.load_state_dict(tiny_codec.state_dict())
    wav = chirp_audio(1, 3)
    assert torch.equal(fresh.encode(wav), tiny_codec.encode(wav))
