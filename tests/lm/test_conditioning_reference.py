"""Conditioned LMs against Kyutai's reference (`moshi` 0.2.13): Hibiki's quality label (a LUT conditioner
fused by sum) and Kyutai TTS's cfg / control labels plus speaker embeddings through cross-attention.

Tiny random reference models are built with the reference's own conditioner and fuser factories, saved
under the released names, loaded by `LM.from_pretrained`; the reference's ConditionProvider and antiphon's
`lm.condition` get the same attributes. Teacher-forced logits agree within 1e-4; greedy generation with
CFG coefficient 3 (conditioned rows "very_good", null rows "very_bad") agrees token for token.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("moshi")

from antiphon.lm import LM  # noqa: E402
from antiphon.lm.conditioners import Condition  # noqa: E402

from .reference import make_reference_lm, reference_conditions, save_reference_checkpoint  # noqa: E402
from .tiny import HIBIKI_LUT, SPEAKER_DIM, TTS_CROSS, random_codes  # noqa: E402

pytestmark = pytest.mark.reference

STEPS = 12
ATOL = 1e-4


def _pair(config, tmp_path, seed=1):
    reference = make_reference_lm(config, seed=seed)
    lm = LM.from_pretrained(save_reference_checkpoint(reference, config, tmp_path))
    if config.model_type == "hibiki":  # antiphon's loader does this (lm.checkpoint); do it to the oracle too
        with torch.no_grad():
            reference.text_emb.weight[2] = reference.text_emb.weight[3]
    return reference, lm


def _speakers(batch: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Two speaker slots of 4 positions each: [B, 8, SPEAKER_DIM], mask [B, 8] (row 0: second slot unused)."""
    g = torch.Generator().manual_seed(seed)
    tensor = torch.randn(batch, 8, SPEAKER_DIM, generator=g)
    mask = torch.ones(batch, 8, dtype=torch.bool)
    mask[0, 4:] = False
    tensor[0, 4:] = 0
    return tensor, mask


def _assert_logits_equal(out, expected):
    assert torch.equal(out.text_mask, expected.text_mask) and torch.equal(out.mask, expected.mask)
    torch.testing.assert_close(out.text_logits, expected.text_logits.float(), atol=ATOL, rtol=0, equal_nan=True)
    torch.testing.assert_close(out.logits, expected.logits.float(), atol=ATOL, rtol=0, equal_nan=True)


def test_hibiki_quality_label_teacher_forced(tmp_path):
    from moshi.utils.compile import no_compile

    reference, lm = _pair(HIBIKI_LUT, tmp_path)
    labels = ["very_good", "very_bad", None]  # None: dropped (the learnt padding)
    codes = random_codes(HIBIKI_LUT, batch=3, steps=STEPS, seed=2)
    with torch.no_grad(), no_compile():
        expected = reference(codes, reference_conditions(reference, {"description": labels}))
    condition = lm.condition(description=labels)
    assert condition.sum.shape == (3, HIBIKI_LUT.dim) and condition.cross is None
    _assert_logits_equal(lm(codes, conditions=condition), expected)
    # one row for all rows: broadcast
    one, each = lm(codes, lm.condition(description="very_good")), lm(codes, lm.condition(3, description="very_good"))
    torch.testing.assert_close(one.logits, each.logits, atol=1e-5, rtol=0, equal_nan=True)


def test_tts_speaker_cross_attention_teacher_forced(tmp_path):
    from moshi.utils.compile import no_compile

    reference, lm = _pair(TTS_CROSS, tmp_path)
    labels = {"control": ["ok", "ok", None], "cfg": ["2.0", None, "4.0"]}
    speakers = _speakers(3)
    codes = random_codes(TTS_CROSS, batch=3, steps=STEPS, seed=2)
    with torch.no_grad(), no_compile():
        expected = reference(codes, reference_conditions(reference, labels, {"speaker_wavs": speakers}))
    condition = lm.condition(speaker_wavs=speakers, **labels)
    assert condition.cross.shape == (3, 8, TTS_CROSS.dim)
    _assert_logits_equal(lm(codes, conditions=condition), expected)
    assert lm.transformer.layers[0].cross_attention.in_proj_weight.dtype == torch.float32


def _run_reference(reference, inputs, **kwargs):
    from moshi.models.lm import LMGen
    from moshi.utils.compile import no_compile

    gen = LMGen(reference, use_sampling=False, check=True, **kwargs)
    with no_compile(), gen.streaming(inputs.shape[1]):
        return [gen.step(codes) for codes in inputs]


def _inputs(config, batch: int, steps: int, seed: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, config.card, (steps, batch, config.n_q - config.dep_q, 1), generator=g)
    codes[-6:] = config.card  # the end of the source: all codes set to card (as Hibiki's inference does)
    return codes


def test_hibiki_cfg_generation_equals_the_reference(tmp_path):
    """Acoustic delay 2, LUT conditioning, cfg_coef 3: conditioned "very_good", null "very_bad"."""
    config = dataclasses.replace(HIBIKI_LUT, context=8)
    reference, lm = _pair(config, tmp_path, seed=3)
    batch = 2
    inputs = _inputs(config, batch, steps=30)
    labels = ["very_good"] * batch + ["very_bad"] * batch
    expected = _run_reference(reference, inputs, cfg_coef=3.0,
                              condition_tensors=reference_conditions(reference, {"description": labels}))
    condition = Condition.cat(lm.condition(batch, description="very_good"), lm.condition(batch, description="very_bad"))
    gen = lm.generator(batch, temp=0, temp_text=0, cfg_coef=3.0, condition=condition)
    for step, (codes, want) in enumerate(zip(inputs, expected)):
        got = gen.step(codes)
        assert (got is None) == (want is None), step
        assert got is None or torch.equal(got, want), (step, got[..., 0], want[..., 0])
    assert len({tuple(o[0, :, 0].tolist()) for o in expected if o is not None}) > 5  # not a constant output
    # the guidance matters: without it the tokens differ
    plain = lm.generator(batch, temp=0, temp_text=0, condition=lm.condition(batch, description="very_good"))
    outs = [plain.step(codes) for codes in inputs]
    assert any(not torch.equal(a, b) for a, b in zip(outs, expected) if a is not None)


def test_tts_cross_generation_equals_the_reference(tmp_path):
    """Greedy streaming with speaker cross-attention and the cfg / control labels (no CFG: distilled)."""
    config = dataclasses.replace(TTS_CROSS, context=8)
    reference, lm = _pair(config, tmp_path, seed=5)
    batch = 2
    speakers = _speakers(batch)
    labels = {"control": ["ok"] * batch, "cfg": ["2.0", "3.0"]}
    steps = 20
    inputs = torch.zeros(steps, batch, 0, 1, dtype=torch.long)  # no input audio streams (n_q = dep_q)
    expected = _run_reference(reference, inputs,
                              condition_tensors=reference_conditions(reference, labels, {"speaker_wavs": speakers}))
    gen = lm.generator(batch, temp=0, temp_text=0, condition=lm.condition(speaker_wavs=speakers, **labels))
    for step, (codes, want) in enumerate(zip(inputs, expected)):
        got = gen.step(codes)
        assert (got is None) == (want is None) and (got is None or torch.equal(got, want)), step
