"""The LM's teacher-forced forward: shapes, delays, masks, input errors; the temporal transformer's
streaming (ring KV cache) against its offline output, and per-slot reset."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from antiphon.errors import InputError
from antiphon.lm.model import delay_streams, undelay_streams
from antiphon.stateful import reset_streaming, start_streaming, stop_streaming

from .tiny import HIBIKI, MOSHI, STT, make_tiny_lm, random_codes


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm(MOSHI)


def test_shapes_and_masks(lm):
    codes = random_codes(MOSHI, 2, 6)
    out = lm(codes)
    assert out.text_logits.shape == (2, 1, 6, MOSHI.text_card) and out.logits.shape == (2, 2, 6, MOSHI.card)
    assert out.mask[:, 1, -1].logical_not().all() and out.logits[:, 1, -1].isnan().all()  # delay 1: no last step
    assert not out.text_mask[0, 0, 2] and not out.mask[1, 0, 3]  # zero-token inputs
    assert out.logits[out.mask].isfinite().all() and out.text_logits[out.text_mask].isfinite().all()


def test_no_depformer_gives_empty_audio_logits():
    out = make_tiny_lm(STT)(random_codes(STT, 1, 4))
    assert out.logits.shape == (1, 0, 4, STT.card) and out.text_mask.shape == (1, 1, 4)


def test_logits_are_causal(lm):
    codes = random_codes(HIBIKI, 1, 8, zeros=False)
    model = make_tiny_lm(HIBIKI)
    changed = codes.clone()
    changed[:, :, 5:] = 7
    a, b = model(codes), model(changed)
    # inputs of step s are the tokens before s (audio: before s - delay), so steps < 5 are unchanged
    assert torch.equal(a.text_logits[..., :5, :], b.text_logits[..., :5, :])
    assert torch.equal(a.logits[:, :, :3].nan_to_num(), b.logits[:, :, :3].nan_to_num())


def test_delay_and_undelay_are_inverse():
    codes = torch.arange(2 * 3 * 5).view(2, 3, 5)
    initial = torch.full((2, 3, 1), -7)
    delayed = delay_streams(codes, (0, 1, 2), initial)
    assert delayed[0, 2].tolist() == [-7, -7, 10, 11, 12]
    back, mask = undelay_streams(delayed.float()[..., None], (0, 1, 2))
    assert torch.equal(back[..., 0][mask], codes.float()[mask])
    assert mask.sum(-1).tolist() == [[5, 4, 3]] * 2


@pytest.mark.parametrize("codes, message", [
    (torch.zeros(1, 4, 3, dtype=torch.long), r"\[B, 1 \+ n_q = 5, T\]"),
    (torch.zeros(1, 5, 3), "integer"),
    (torch.zeros(1, 5, 0, dtype=torch.long), "at least one"),
    (torch.full((1, 5, 3), -2), "text codes must be in"),
    (torch.cat([torch.zeros(1, 1, 3), torch.full((1, 4, 3), MOSHI.card + 1)], 1).long(), "audio codes must be in"),
])
def test_bad_codes(lm, codes, message):
    with pytest.raises(InputError, match=message):
        lm(codes)
    with pytest.raises(InputError, match="no conditioners"):
        lm(random_codes(MOSHI, 1, 4), conditions={"description": "very_good"})


def test_zero_token_embeds_to_zero(lm):
    assert torch.equal(lm.emb[0](torch.tensor([[-1]])), torch.zeros(1, 1, MOSHI.dim))


@pytest.mark.parametrize("chunks", [[1] * 12, [3] * 4, [2, 5, 1, 4]])
def test_streaming_temporal_equals_offline(chunks):
    model = make_tiny_lm(dataclasses.replace(MOSHI, context=4)).transformer
    x = torch.randn(2, 12, MOSHI.dim)
    with torch.no_grad():
        expected = model(x)
        start_streaming(model, 2)
        got = torch.cat([model(piece) for piece in x.split(chunks, dim=1)], dim=1)
        stop_streaming(model)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_streaming_reset_one_slot():
    model = make_tiny_lm(MOSHI).transformer
    x = torch.randn(2, 6, MOSHI.dim)
    with torch.no_grad():
        start_streaming(model, 2)
        model(x[:, :4])
        reset_streaming(model, torch.tensor([True, False]))
        out = model(x[:, 4:])
        stop_streaming(model)
        fresh = model(x[:1, 4:])
        whole = model(x[1:])
    torch.testing.assert_close(out[:1], fresh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:], whole[:, 4:], atol=1e-5, rtol=1e-5)
