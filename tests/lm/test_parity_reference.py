"""Parity of antiphon's LM with Kyutai's reference (`moshi` 0.2.13 `LMModel.forward`, teacher-forced).

For each family (Moshi: depformer, delays 0/1; STT: no depformer, extra heads, zero delays; Hibiki:
acoustic delay 2; TTS-like: depformer weight schedule, low-rank and demuxed embeddings, kv_repeat,
layer scale, sin positions in the depformer) a tiny random reference model is saved under the
released legacy names with its config.json, loaded by `LM.from_pretrained`, and both models'
logits must agree within 1e-4 (fp32), with equal masks. 12 steps exceed the 5-step attention window.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("moshi")

from antiphon.lm import LM  # noqa: E402

from .reference import make_reference_lm, save_reference_checkpoint  # noqa: E402
from .tiny import FAMILIES, random_codes  # noqa: E402

pytestmark = pytest.mark.reference

STEPS = 12
ATOL = 1e-4


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_teacher_forced_logits_equal_the_reference(family, tmp_path):
    from moshi.utils.compile import no_compile

    config = FAMILIES[family]
    reference = make_reference_lm(config, seed=1)
    lm = LM.from_pretrained(save_reference_checkpoint(reference, config, tmp_path))
    if config.model_type == "hibiki":  # the reference loader does this too (lm.checkpoint)
        with torch.no_grad():
            reference.text_emb.weight[2] = reference.text_emb.weight[3]
    codes = random_codes(config, batch=3, steps=STEPS, seed=2)
    if not config.dep_q:  # the reference's forward asserts a depformer: give it an empty one
        reference.forward_depformer_training = lambda seq, out: out.new_zeros(3, 0, STEPS, config.card)
    with torch.no_grad(), no_compile():
        expected = reference(codes)
    out = lm(codes)
    assert torch.equal(out.text_mask, expected.text_mask)
    assert torch.equal(out.mask, expected.mask)
    torch.testing.assert_close(out.text_logits, expected.text_logits, atol=ATOL, rtol=0, equal_nan=True)
    torch.testing.assert_close(out.logits, expected.logits.float(), atol=ATOL, rtol=0, equal_nan=True)
    assert out.logits.shape == (3, config.dep_q, STEPS, config.card)
    if config.dep_q:
        assert out.mask.any() and not out.mask.all()  # delays and zero tokens leave holes


def test_rope_concat_equals_the_reference(tmp_path):
    """The non-interleaved RoPE ("rope_concat": channel i pairs with i + head_dim/2), in both
    transformers; the interleaved logits would differ."""
    import dataclasses

    from moshi.utils.compile import no_compile

    config = dataclasses.replace(FAMILIES["moshi"], positional_embedding="rope_concat", depformer_pos_emb="rope_concat")
    reference = make_reference_lm(config, seed=3)
    lm = LM.from_pretrained(save_reference_checkpoint(reference, config, tmp_path / "concat"))
    interleaved = dataclasses.replace(config, positional_embedding="rope", depformer_pos_emb="rope")
    lm_interleaved = LM.from_pretrained(save_reference_checkpoint(reference, interleaved, tmp_path / "interleaved"))
    codes = random_codes(config, batch=2, steps=STEPS, seed=4)
    with torch.no_grad(), no_compile():
        expected = reference(codes)
    out = lm(codes)
    torch.testing.assert_close(out.text_logits, expected.text_logits, atol=ATOL, rtol=0, equal_nan=True)
    torch.testing.assert_close(out.logits, expected.logits.float(), atol=ATOL, rtol=0, equal_nan=True)
    assert not torch.allclose(lm_interleaved(codes).text_logits.nan_to_num(), out.text_logits.nan_to_num(), atol=1e-3)
