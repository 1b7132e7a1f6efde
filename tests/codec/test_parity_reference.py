"""Parity of antiphon's codec with Kyutai's reference implementation (`moshi` 0.2.13).

A small random Mimi is built with `moshi`, its codebooks fitted to its own latents, and saved in the
released checkpoint format (see tests/codec/reference.py). antiphon loads that file with
`Codec.from_pretrained` and must reproduce the reference's codes (offline and streaming, with the
same chunking) and its decoded audio (within 1e-4 of the output's peak), at 8 and 32 codebooks,
batch 1 and 4. The audio is a few seconds long, beyond the 32-step attention context of the test
config, so the sliding attention window is exercised.

Streaming and the window: antiphon's streaming attention sees exactly the last `context` steps, as
offline does. The reference's streaming drops the oldest keys of the early steps of each call once
the stream is longer than the window (see the test that records it). So streaming is compared with
the reference's streaming while the stream is within the window, and with the reference's offline
output (the exact window) over the whole stream.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("moshi")

from antiphon.codec import Codec  # noqa: E402

from .reference import (CHECKPOINT_NAME, CONFIG_NAME, EPSILON, make_reference_checkpoint,  # noqa: E402
                        make_test_audio, released_state_dict, small_config)

pytestmark = pytest.mark.reference

FRAMES = 36  # streamed audio: 36 frames = 2.88 s = 72 encoder steps, divisible by 1 and 3
WITHIN = 15  # frames streamed before the window is full (30 steps <= context 32), divisible by 3
OFFLINE_EXTRA = 700  # offline audio is not a whole number of frames: the codec pads it
MIN_CODE_AGREEMENT = 0.99
MIN_SEMANTIC_AGREEMENT = 0.995
DECODE_RTOL = 1e-4  # max |antiphon - reference| <= DECODE_RTOL * max |reference|


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def config():
    return small_config()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, config):
    with torch.no_grad():
        return make_reference_checkpoint(tmp_path_factory.mktemp("mimi-reference"), config, seed=0)


@pytest.fixture(scope="module")
def reference(checkpoint):
    return checkpoint[1]


@pytest.fixture(scope="module")
def codecs(checkpoint):
    """antiphon codecs loaded from the reference checkpoint, one per number of codebooks."""
    path = checkpoint[0]
    cache: dict[int, Codec] = {}

    def get(num_codebooks: int) -> Codec:
        if num_codebooks not in cache:
            cache[num_codebooks] = Codec.from_pretrained(path, num_codebooks=num_codebooks)
        return cache[num_codebooks]

    return get


@pytest.fixture(scope="module")
def audio(config):
    """[4, 1, FRAMES * 1920] test audio (not the audio the codebooks were fitted on)."""
    return make_test_audio(4, FRAMES * config.frame_size, seed=1234, sample_rate=config.sample_rate)


@pytest.fixture(scope="module")
def offline_audio(config):
    return make_test_audio(4, FRAMES * config.frame_size + OFFLINE_EXTRA, seed=4321,
                           sample_rate=config.sample_rate)


def _rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    # batch 1 takes a middle row, so that it is not merely the first row of the batch-4 case
    return x[1:2] if batch == 1 else x[:batch]


# ------------------------------------------------------------------------------------------- helpers
def _reference_encode(ref, wav: torch.Tensor, num_codebooks: int, chunk_frames: int | None = None) -> torch.Tensor:
    ref.set_num_codebooks(num_codebooks)
    with torch.no_grad():
        if chunk_frames is None:
            return ref.encode(wav)
        step = chunk_frames * ref.frame_size
        with ref.streaming(wav.shape[0]):
            return torch.cat([ref.encode(wav[..., i:i + step]) for i in range(0, wav.shape[-1], step)], -1)


def _antiphon_encode(codec: Codec, wav: torch.Tensor, chunk_frames: int | None = None) -> torch.Tensor:
    with torch.no_grad():
        if chunk_frames is None:
            return codec.encode(wav)
        step = chunk_frames * codec.frame_size
        with codec.streaming(wav.shape[0]):
            return torch.cat([codec.encode(wav[..., i:i + step]) for i in range(0, wav.shape[-1], step)], -1)


def _reference_decode(ref, codes: torch.Tensor, streaming: bool) -> torch.Tensor:
    ref.set_num_codebooks(codes.shape[1])
    with torch.no_grad():
        if not streaming:
            return ref.decode(codes)
        with ref.streaming(codes.shape[0]):
            return torch.cat([ref.decode(codes[..., t:t + 1]) for t in range(codes.shape[-1])], -1)


def _antiphon_decode(codec: Codec, codes: torch.Tensor, streaming: bool) -> torch.Tensor:
    with torch.no_grad():
        if not streaming:
            return codec.decode(codes)
        with codec.streaming(codes.shape[0]):
            return torch.cat([codec.decode(codes[..., t:t + 1]) for t in range(codes.shape[-1])], -1)


def assert_codes_agree(got: torch.Tensor, want: torch.Tensor, what: str = "", hint=None) -> None:
    """`hint`, if given, is called on failure only; it returns a line added to the message."""
    assert got.dtype == torch.int64, f"{what}: codes are {got.dtype}, not int64"
    assert got.shape == want.shape, f"{what}: codes shape {list(got.shape)} != reference {list(want.shape)}"
    same = got == want
    total, semantic = same.float().mean().item(), same[:, 0].float().mean().item()
    if total >= MIN_CODE_AGREEMENT and semantic >= MIN_SEMANTIC_AGREEMENT:
        return
    per_codebook = ", ".join(f"{v:.3f}" for v in same.float().mean((0, 2)).tolist())
    per_frame = ", ".join(f"{v:.2f}" for v in same.float().mean((0, 1)).tolist())
    b, k, t = (~same).nonzero()[0].tolist()
    pytest.fail(
        f"{what}: codes agree on {total:.4f} of all (need {MIN_CODE_AGREEMENT}) and {semantic:.4f} of the "
        f"semantic codebook (need {MIN_SEMANTIC_AGREEMENT}); first mismatch at batch {b}, codebook {k}, "
        f"frame {t}: {got[b, k, t].item()} vs {want[b, k, t].item()}\n"
        f"agreement per codebook: {per_codebook}\nagreement per frame: {per_frame}"
        + (f"\n{hint(got)}" if hint else "")
    )


def assert_audio_close(got: torch.Tensor, want: torch.Tensor, what: str = "", hint=None) -> None:
    assert got.shape == want.shape, f"{what}: audio shape {list(got.shape)} != reference {list(want.shape)}"
    assert got.dtype == torch.float32, f"{what}: audio is {got.dtype}, not float32"
    peak = want.abs().max().item()
    diff = (got - want).abs()
    worst = diff.max().item()
    if worst <= DECODE_RTOL * peak:
        return
    b, _, t = (diff == worst).nonzero()[0].tolist()
    frame_size = small_config().frame_size
    per_frame = diff.amax((0, 1)).view(-1, frame_size).amax(-1) / peak
    pytest.fail(
        f"{what}: max |diff| {worst:.3e} = {worst / peak:.3e} of the reference peak {peak:.3e} "
        f"(allowed {DECODE_RTOL:g}), at batch {b}, sample {t} (frame {t // frame_size}); "
        f"mean |diff| {diff.mean().item():.3e}\n"
        f"max |diff| / peak per frame: {', '.join(f'{v:.1e}' for v in per_frame.tolist())}"
        + (f"\n{hint(got)}" if hint else "")
    )


# ------------------------------------------------------------------------ the oracle and its file
def test_checkpoint_is_in_the_released_format(checkpoint, config):
    from safetensors import safe_open

    path, _ = checkpoint
    assert path.name == CHECKPOINT_NAME and (path.parent / CONFIG_NAME).is_file()
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        tensors = {k: f.get_tensor(k) for k in keys}
    assert all(t.dtype == torch.float32 for t in tensors.values())
    for tr in ("encoder_transformer", "decoder_transformer"):
        for i in range(config.num_layers):
            prefix = f"{tr}.transformer.layers.{i}.self_attn."
            assert prefix + "in_proj_weight" in keys and prefix + "out_proj.weight" in keys
    assert not [k for k in keys if "in_projs" in k or "out_projs" in k]
    usage = tensors["quantizer.rvq_rest.vq.layers.3._codebook.cluster_usage"]
    assert (usage > 0).all() and usage.std() > 1.0 and (usage < EPSILON).any()
    assert tensors["quantizer.rvq_first.vq.layers.0._codebook._initialized"].item() == 1.0
    assert len([k for k in keys if k.endswith("_codebook.embedding_sum")]) == config.n_q


def test_oracle_names_match_the_released_key_list():
    """At the released size, the oracle's file layout is exactly the released one: the 318 names and
    shapes of tests/data/mimi_keys.tsv (built on the meta device: no memory, no time)."""
    from moshi.models.loaders import get_mimi

    from antiphon.codec import CodecConfig

    listing = Path(__file__).resolve().parents[1] / "data" / "mimi_keys.tsv"
    if not listing.is_file():
        pytest.skip(f"{listing} not found")
    expected = {}
    for line in listing.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            expected[key] = (shape, dtype)
    model = get_mimi(None, CodecConfig().to_kyutai(), device="meta", num_codebooks=32)
    names = {k: (str(list(v.shape)), "F32" if v.dtype == torch.float32 else str(v.dtype))
             for k, v in released_state_dict(model).items()}
    assert sorted(set(names) ^ set(expected)) == []
    assert names == expected


def test_oracle_codes_vary_and_depend_on_the_attention_window(reference, audio, config):
    """Guards the tests below against a degenerate oracle: every codebook uses many entries, and the
    codes change when the attention window is removed (so a wrong window cannot pass)."""
    from moshi.modules.transformer import set_attention_context

    codes = _reference_encode(reference, audio, config.n_q)
    distinct = [len(codes[:, k].unique()) for k in range(config.n_q)]
    assert min(distinct) >= 16, f"distinct codes per codebook: {distinct}"
    try:
        set_attention_context(reference.encoder_transformer, None)
        unwindowed = _reference_encode(reference, audio, config.n_q)
    finally:
        set_attention_context(reference.encoder_transformer, config.context)
    late = slice(config.context // 2 + 2, None)  # frames whose window reaches back past the context
    changed = (unwindowed[..., late] != codes[..., late]).float().mean().item()
    assert changed > 0.2, f"only {changed:.3f} of the codes depend on the attention window"
    assert torch.equal(_reference_encode(reference, audio, config.n_q), codes)


def test_reference_streaming_window_is_one_short_for_early_steps_of_a_chunk(reference, audio, config):
    """A property of the oracle, recorded because the streaming parity tests inherit it.

    moshi's streaming attention writes a call's T keys into a ring of `context` slots *before*
    attending, so once more than `context` steps have streamed, the i-th step of a T-step call sees
    only context - (T - 1 - i) keys instead of `context`: its oldest keys were overwritten by the
    call's later ones. One code frame is 2 transformer steps, so every first step of a frame loses one
    key. Hence the reference's streaming output equals its offline output up to step `context` and
    differs from it after, while 1-step calls match offline throughout."""
    layer = reference.encoder_transformer
    with torch.no_grad():
        latent = reference.encoder(audio[:1])  # 2 * FRAMES steps, more than the context
        offline = layer(latent)[0]
        steps = latent.shape[-1]
        by = {}
        for chunk in (1, 2):
            with layer.streaming(1):
                by[chunk] = torch.cat([layer(latent[..., i:i + chunk])[0] for i in range(0, steps, chunk)], -1)
    peak = offline.abs().max()
    err = {chunk: ((out - offline).abs().amax((0, 1)) / peak) for chunk, out in by.items()}
    assert err[1].max() < 1e-5
    assert err[2][: config.context].max() < 1e-5
    assert err[2][config.context::2].min() > 1e-4, err[2]


def test_metadata(codecs, reference, config):
    codec = codecs(8)
    assert codec.sample_rate == reference.sample_rate == 24000
    assert codec.frame_rate == reference.frame_rate == 12.5
    assert codec.frame_size == reference.frame_size == 1920
    assert codec.num_codebooks == 8 and codecs(32).num_codebooks == 32


# ------------------------------------------------------------------------------------------ encode
@pytest.mark.parametrize("batch", [1, 4], ids=["b1", "b4"])
@pytest.mark.parametrize("num_codebooks", [8, 32], ids=["k8", "k32"])
def test_offline_codes_match(codecs, reference, offline_audio, batch, num_codebooks):
    wav = _rows(offline_audio, batch)
    want = _reference_encode(reference, wav, num_codebooks)
    assert want.shape == (batch, num_codebooks, FRAMES + 1)
    got = _antiphon_encode(codecs(num_codebooks), wav)
    assert_codes_agree(got, want, f"offline encode, batch {batch}, {num_codebooks} codebooks")


@pytest.mark.parametrize("chunk_frames", [1, 3], ids=["by1", "by3"])
@pytest.mark.parametrize("batch", [1, 4], ids=["b1", "b4"])
@pytest.mark.parametrize("num_codebooks", [8, 32], ids=["k8", "k32"])
def test_streaming_codes_match(codecs, reference, audio, batch, num_codebooks, chunk_frames):
    wav = _rows(audio, batch)
    got = _antiphon_encode(codecs(num_codebooks), wav, chunk_frames)
    assert got.shape == (batch, num_codebooks, FRAMES)
    within = wav[..., :WITHIN * 1920]
    assert_codes_agree(got[..., :WITHIN], _reference_encode(reference, within, num_codebooks, chunk_frames),
                       f"streaming encode by {chunk_frames} frame(s) within the window, batch {batch}, "
                       f"{num_codebooks} codebooks, against the reference's streaming")
    assert_codes_agree(got, _reference_encode(reference, wav, num_codebooks),
                       f"streaming encode by {chunk_frames} frame(s), batch {batch}, {num_codebooks} codebooks, "
                       f"against the reference's offline codes")


# ------------------------------------------------------------------------------------------ decode
@pytest.fixture(scope="module")
def reference_codes(reference, audio, config):
    """Codes of the test audio by the reference, all codebooks: [4, n_q, FRAMES]."""
    return _reference_encode(reference, audio, config.n_q)


@pytest.mark.parametrize("streaming", [False, True], ids=["offline", "streaming"])
@pytest.mark.parametrize("batch", [1, 4], ids=["b1", "b4"])
@pytest.mark.parametrize("num_codebooks", [8, 32], ids=["k8", "k32"])
def test_decode_matches(codecs, reference, reference_codes, batch, num_codebooks, streaming):
    codes = _rows(reference_codes, batch)[:, :num_codebooks].contiguous()
    got = _antiphon_decode(codecs(num_codebooks), codes, streaming)
    assert got.shape == (batch, 1, FRAMES * 1920)
    mode = "streaming" if streaming else "offline"
    if streaming:
        assert_audio_close(got[..., :WITHIN * 1920], _reference_decode(reference, codes[..., :WITHIN], True),
                           f"streaming decode within the window, batch {batch}, {num_codebooks} codebooks, "
                           f"against the reference's streaming")
    assert_audio_close(got, _reference_decode(reference, codes, False),
                       f"{mode} decode, batch {batch}, {num_codebooks} codebooks, against the reference's offline")


# ------------------------------------------------------------------------------- streaming resets
def test_reset_streaming_matches(codecs, reference, audio, reference_codes, config):
    """Restarting one slot of a streaming batch: encode and decode follow the reference for both the
    restarted slot (fresh state) and the untouched one (carried-over state)."""
    k, frame = 8, config.frame_size
    wav, codes = audio[:2], reference_codes[:2, :k].contiguous()
    mask = torch.tensor([True, False])
    second = torch.stack([audio[2], audio[1]])  # slot 0 restarts on new audio, slot 1 carries on
    first_part, cut, end = 6, 6 * frame, WITHIN  # all within the window: the reference's streaming is exact

    codec = codecs(k)
    reference.set_num_codebooks(k)
    with torch.no_grad():
        with reference.streaming(2):
            want = [reference.encode(wav[..., i:i + frame]) for i in range(0, cut, frame)]
            reference.reset_streaming(mask)
            want += [reference.encode(second[..., i:i + frame]) for i in range(cut, end * frame, frame)]
        with codec.streaming(2):
            got = [codec.encode(wav[..., i:i + frame]) for i in range(0, cut, frame)]
            codec.reset_streaming(mask)
            got += [codec.encode(second[..., i:i + frame]) for i in range(cut, end * frame, frame)]
    assert_codes_agree(torch.cat(got, -1), torch.cat(want, -1), "streaming encode with a reset of slot 0")

    second_codes = torch.stack([reference_codes[2, :k], codes[1]])
    with torch.no_grad():
        with reference.streaming(2):
            want = [reference.decode(codes[..., t:t + 1]) for t in range(first_part)]
            reference.reset_streaming(mask)
            want += [reference.decode(second_codes[..., t:t + 1]) for t in range(first_part, end)]
        with codec.streaming(2):
            got = [codec.decode(codes[..., t:t + 1]) for t in range(first_part)]
            codec.reset_streaming(mask)
            got += [codec.decode(second_codes[..., t:t + 1]) for t in range(first_part, end)]
    assert_audio_close(torch.cat(got, -1), torch.cat(want, -1), "streaming decode with a reset of slot 0")
