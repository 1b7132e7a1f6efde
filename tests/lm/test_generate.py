"""Streaming generation (lm.generate): greedy generation equals the teacher-forced forward over a session
longer than the attention context, per-slot reset, sampling (top-k, seeds, distribution), CFG plumbing,
the depformer's one-codebook step, input errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from antiphon.errors import InputError
from antiphon.lm.generate import UNGENERATED
from antiphon.lm.sampling import cfg_mix, sample

from .tiny import HIBIKI, MOSHI, STT, TTS, make_tiny_lm

STEPS = 30
SHORT = {name: dataclasses.replace(c, context=8) for name, c in (("moshi", MOSHI), ("hibiki", HIBIKI), ("stt", STT))}


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm(SHORT["moshi"], seed=1)


def inputs(config, batch: int, steps: int = STEPS, seed: int = 0) -> torch.Tensor:
    """[steps, B, n_q - dep_q, 1] input codes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.card, (steps, batch, config.n_q - config.dep_q, 1), generator=g)


def generate(gen, codes: torch.Tensor) -> list[torch.Tensor | None]:
    return [gen.step(frame) for frame in codes]


@pytest.mark.parametrize("family", sorted(SHORT))
def test_greedy_generation_equals_teacher_forcing_beyond_the_context(family):
    """The emitted frames and the input frames, laid out in natural time, teacher-forced through the
    offline forward (same window of 8 steps): every generated token is the argmax of its logits."""
    config = SHORT[family]
    model = make_tiny_lm(config, seed=2)
    codes_in = inputs(config, batch=3)
    outs = generate(model.generator(3, temp=0, temp_text=0), codes_in)
    delay = max(config.delays)
    assert all(o is None for o in outs[:delay]) and all(o is not None for o in outs[delay:])
    frames = STEPS - max(delay, 1)
    # output of step s is frame s - max_delay; the input given at step s is frame s - 1 (frame 0 of the
    # input is replaced by initial tokens, reference §3.1)
    generated = torch.cat(outs[delay: delay + frames], dim=2)  # [B, 1 + dep_q, F]
    given = torch.cat(list(codes_in[1: 1 + frames]), dim=2)  # [B, n_in, F]
    forced = model(torch.cat([generated, given], dim=1))
    assert torch.equal(forced.text_logits.argmax(-1), generated[:, :1])
    mask = forced.mask
    assert mask.sum() > mask.numel() // 2 or not config.dep_q
    assert torch.equal(forced.logits.argmax(-1)[mask], generated[:, 1:][mask])


def test_step_leaves_the_model_offline(lm):
    codes = torch.randint(0, MOSHI.card, (1, MOSHI.num_codebooks, 4))
    before = lm(codes).text_logits
    gen = lm.generator(1)
    gen.step(inputs(MOSHI, 1)[0])
    assert torch.equal(lm(codes).text_logits, before)


def test_reset_restarts_a_slot_and_leaves_the_others_bit_identical(lm):
    codes = inputs(MOSHI, 3, seed=1)
    whole = lm.generator(3, temp=0, temp_text=0)
    reset = lm.generator(3, temp=0, temp_text=0)
    fresh = lm.generator(3, temp=0, temp_text=0)
    at = 11
    for s, frame in enumerate(codes):
        if s == at:
            reset.reset(torch.tensor([False, True, False]))
        a, b = whole.step(frame), reset.step(frame)
        if s >= at:  # slot 1 restarted at `at` on the frames from `at` on: like a fresh slot
            c = fresh.step(frame)
            if s == at:
                assert c is None and torch.equal(b[1], torch.full_like(b[1], UNGENERATED))
            else:
                assert torch.equal(b[1], c[1])
        if a is not None:
            assert torch.equal(a[[0, 2]], b[[0, 2]])
    for module, state in whole.states.items():
        other = reset.states[module]
        for key in ("keys", "values"):
            assert torch.equal(getattr(state, key)[:, [0, 2]], getattr(other, key)[:, [0, 2]])
    assert torch.equal(whole.tokens[[0, 2]], reset.tokens[[0, 2]]) and torch.equal(reset.tokens[1], fresh.tokens[1])


def test_reset_all_returns_to_step_zero(lm):
    gen = lm.generator(2, temp=0, temp_text=0)
    codes = inputs(MOSHI, 2)
    first = generate(gen, codes[:5])
    gen.reset(torch.ones(2, dtype=torch.bool))
    again = generate(gen, codes[:5])
    assert again[0] is None and all(torch.equal(a, b) for a, b in zip(first[1:], again[1:]))


def test_sampling_is_seeded_and_top_k_one_is_greedy(lm):
    codes = inputs(MOSHI, 2)

    def run(seed=None, **kwargs):
        rng = None if seed is None else torch.Generator().manual_seed(seed)
        return torch.cat(generate(lm.generator(2, rng=rng, **kwargs), codes)[1:], dim=2)

    assert torch.equal(run(7), run(7)) and not torch.equal(run(7), run(8))
    assert torch.equal(run(top_k=1, top_k_text=1, seed=3), run(temp=0, temp_text=0))


def test_sample_stays_in_the_top_k_and_follows_the_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 50, generator=g)
    ids = sample(logits, temp=1.0, top_k=5, rng=g)
    assert (logits.topk(5).indices == ids[:, None]).any(-1).all()
    assert torch.equal(sample(logits, temp=0.0), logits.argmax(-1))
    assert torch.equal(sample(logits, temp=0.9, top_k=1, rng=g), logits.argmax(-1))
    peaked = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0]).expand(40000, 5)
    for temp, top_k in ((0.7, 0), (1.0, 3)):
        want = torch.softmax(peaked[0] / temp, -1)
        if top_k:
            want[top_k:] = 0
            want /= want.sum()
        freq = torch.bincount(sample(peaked, temp, top_k, rng=g), minlength=5).float() / peaked.shape[0]
        torch.testing.assert_close(freq, want, atol=0.01, rtol=0)


def test_cfg_mix_and_plumbing(lm):
    cond, null = torch.randn(2, 3, 7).unbind(0)
    torch.testing.assert_close(cfg_mix(torch.cat([cond, null]), 2.5), null + 2.5 * (cond - null))
    # identical conditioned and null rows: guidance changes nothing
    condition = torch.randn(2, MOSHI.dim)
    codes = inputs(MOSHI, 2)
    plain = generate(lm.generator(2, temp=0, temp_text=0, condition=condition), codes)
    guided = generate(lm.generator(2, temp=0, temp_text=0, cfg_coef=3.0, condition=condition.repeat(2, 1)), codes)
    assert all(torch.equal(a, b) for a, b in zip(plain[1:], guided[1:]))
    with pytest.raises(InputError, match="cfg_coef=2.0 needs conditioned and null rows"):
        lm.generator(2, cfg_coef=2.0)
    with pytest.raises(InputError, match=r"condition must be \[2B, D\]"):
        lm.generator(2, cfg_coef=2.0, condition=condition)


def test_stt_generates_text_and_vad_probabilities():
    model = make_tiny_lm(SHORT["stt"])
    gen = model.generator(2, temp=0, temp_text=0)
    out = gen.step(inputs(STT, 2)[0])
    assert out.shape == (2, 1, 1) and (out >= 0).all() and (out < STT.text_card).all()
    assert gen.last_extra_heads.shape == (2, STT.extra_heads_num_heads, STT.extra_heads_dim)
    torch.testing.assert_close(gen.last_extra_heads.sum(-1), torch.ones(2, STT.extra_heads_num_heads))


def test_depformer_step_equals_its_forward():
    """Codebook by codebook over the KV cache = all codebooks at once (TTS-like: weight schedule, sin
    positions, kv_repeat)."""
    depformer = make_tiny_lm(TTS).depformer
    x = torch.randn(3, TTS.dep_q, TTS.depformer_dim)
    with torch.no_grad():
        expected = depformer(x)
        cache = depformer.init_cache(3)
        got = torch.cat([depformer.step(x[:, k: k + 1], k, cache) for k in range(TTS.dep_q)], dim=1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("codes, message", [
    (torch.zeros(2, 3, 1, dtype=torch.long), r"\[B, n_q - dep_q, 1\] = \[2, 2, 1\]"),
    (torch.zeros(2, 2, 2, dtype=torch.long), r"\[B, n_q - dep_q, 1\]"),
    (torch.zeros(1, 2, 1, dtype=torch.long), r"\[B, n_q - dep_q, 1\]"),
    (torch.zeros(2, 2, 1), "integer"),
    (torch.full((2, 2, 1), MOSHI.card + 1), r"in \[-1, 24\]"),
    (torch.full((2, 2, 1), -2), r"in \[-1, 24\]"),
])
def test_bad_input(lm, codes, message):
    gen = lm.generator(2)
    with pytest.raises(InputError, match=message):
        gen.step(codes)
    with pytest.raises(InputError, match="reset mask"):
        gen.reset(torch.tensor([1, 0]))
    with pytest.raises(InputError, match="batch_size"):
        lm.generator(0)
