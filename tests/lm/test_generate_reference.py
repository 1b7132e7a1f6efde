"""Streaming generation against Kyutai's reference (`moshi` 0.2.13 `LMGen`, greedy): token for token.

A tiny random reference LM is saved under the released names and loaded by `LM.from_pretrained` (as in
test_parity_reference). Both generate greedily for 34 steps from the same input codes, with an attention
context of 8 steps (the ring KV cache wraps four times): Moshi-like (depformer, delays 0/1), Hibiki-like
(acoustic delay 2) and STT-like (no depformer, zero delays; the VAD extra-head probabilities are compared
too); batch 1 and 3. CFG is compared with the reference's sum fuser fed the same condition rows.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("moshi")

from antiphon.lm import LM  # noqa: E402

from .reference import make_reference_lm, save_reference_checkpoint  # noqa: E402
from .tiny import HIBIKI, MOSHI, STT  # noqa: E402

pytestmark = pytest.mark.reference

STEPS = 34
CONFIGS = {name: dataclasses.replace(c, context=8) for name, c in (("moshi", MOSHI), ("hibiki", HIBIKI), ("stt", STT))}


def _pair(config, tmp_path):
    reference = make_reference_lm(config, seed=3)
    lm = LM.from_pretrained(save_reference_checkpoint(reference, config, tmp_path))
    if config.model_type == "hibiki":  # antiphon's loader does this (lm.checkpoint); do it to the oracle too
        with torch.no_grad():
            reference.text_emb.weight[2] = reference.text_emb.weight[3]
    return reference, lm


def _inputs(config, batch: int, seed: int = 4) -> torch.Tensor:
    """[STEPS, B, n_q - dep_q, 1] input codes, with a few zero tokens and an end-of-input marker."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, config.card, (STEPS, batch, config.n_q - config.dep_q, 1), generator=g)
    codes[5, 0, 0] = -1
    codes[9, -1, -1] = config.card
    return codes


def _run_reference(reference, inputs, extra_heads: bool, **kwargs):
    from moshi.models.lm import LMGen
    from moshi.utils.compile import no_compile

    gen = LMGen(reference, use_sampling=False, check=True, **kwargs)
    outs, heads = [], []
    with no_compile(), gen.streaming(inputs.shape[1]):
        for codes in inputs:
            out = gen.step_with_extra_heads(codes) if extra_heads else gen.step(codes)
            if extra_heads and out is not None:
                out, probs = out
                heads.append(torch.stack([p[:, 0] for p in probs], dim=1))
            outs.append(out)
    return outs, heads


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_greedy_generation_equals_the_reference(family, batch, tmp_path):
    config = CONFIGS[family]
    reference, lm = _pair(config, tmp_path)
    inputs = _inputs(config, batch)
    expected, expected_heads = _run_reference(reference, inputs, extra_heads=bool(config.extra_heads_num_heads))
    gen = lm.generator(batch, temp=0, temp_text=0)
    emitted = 0
    for step, (codes, want) in enumerate(zip(inputs, expected)):
        got = gen.step(codes)
        if want is None:
            assert got is None, step
            continue
        assert got.shape == (batch, 1 + config.dep_q, 1)
        assert torch.equal(got, want), (step, got[..., 0], want[..., 0])
        if expected_heads:
            torch.testing.assert_close(gen.last_extra_heads, expected_heads[emitted], atol=1e-5, rtol=0)
        emitted += 1
    assert emitted == STEPS - max(config.delays)
    assert len({tuple(o[0, :, 0].tolist()) for o in expected if o is not None}) > 5  # not a constant output


def test_cfg_generation_equals_the_reference(tmp_path):
    """cfg_coef 3 with different conditioned and null rows, through the reference's sum fuser."""
    config = CONFIGS["moshi"]
    reference, lm = _pair(config, tmp_path)
    batch = 2
    condition = torch.randn(2 * batch, config.dim, generator=torch.Generator().manual_seed(5))

    class SumFuser:  # the part of the reference's fuser LMGen uses
        def get_sum(self, tensors):
            return tensors["sum"]

        def get_cross(self, tensors):
            return None

    reference.fuser = SumFuser()
    inputs = _inputs(config, batch)
    expected, _ = _run_reference(reference, inputs, False, cfg_coef=3.0,
                                 condition_tensors={"sum": condition[:, None]})
    gen = lm.generator(batch, temp=0, temp_text=0, cfg_coef=3.0, condition=condition)
    got = [gen.step(codes) for codes in inputs]
    for step, (g, want) in enumerate(zip(got, expected)):
        assert (g is None) == (want is None) and (g is None or torch.equal(g, want)), step


def test_cfg_without_text_equals_the_reference(tmp_path):
    """cfg_coef 3 on an unconditioned model, the null rows reading no text (cfg_is_no_text): the audio
    is guided, the text sampled from the conditioned rows."""
    config = CONFIGS["moshi"]
    reference, lm = _pair(config, tmp_path)
    inputs = _inputs(config, 2)
    expected, _ = _run_reference(reference, inputs, False, cfg_coef=3.0, cfg_is_no_text=True)
    unguided, _ = _run_reference(reference, inputs, False)
    gen = lm.generator(2, temp=0, temp_text=0, cfg_coef=3.0, cfg_is_no_text=True)
    got = [gen.step(codes) for codes in inputs]
    for step, (g, want) in enumerate(zip(got, expected)):
        assert (g is None) == (want is None) and (g is None or torch.equal(g, want)), step
    assert any(not torch.equal(a, b) for a, b in zip(expected, unguided) if a is not None)  # guidance acted
