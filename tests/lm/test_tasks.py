"""Task front-ends (lm.tasks): dialogue, streaming speech recognition and translation over the generator."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from antiphon.errors import InputError
from antiphon.lm.conditioners import Condition
from antiphon.lm.tasks import Dialogue, Transcriber, Translator

from .tiny import HIBIKI_LUT, MOSHI, STT, make_tiny_lm

GREEDY = {"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 25}


def frames(config, batch: int, steps: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, config.card, (steps, batch, config.n_q - config.dep_q, 1), generator=g)


def test_dialogue_frames_follow_the_generator_and_lm_gen_config():
    lm = make_tiny_lm(dataclasses.replace(MOSHI, lm_gen_config=GREEDY), seed=1)
    dialogue, gen = Dialogue(lm, 2), lm.generator(2, temp=0, temp_text=0)
    pieces = 0
    for s, user in enumerate(frames(MOSHI, 2, 12)):
        frame, raw = dialogue.step(user), gen.step(user)
        if s == 0:
            assert frame is None and raw is None
            continue
        assert frame.ready.all() and torch.equal(frame.text, raw[:, 0, 0]) and torch.equal(frame.audio, raw[:, 1:])
        assert frame.audio.shape == (2, MOSHI.dep_q, 1)
        silent = (frame.text == MOSHI.existing_text_padding_id) | (frame.text == MOSHI.existing_text_end_padding_id)
        assert torch.equal(frame.is_word, ~silent)
        pieces += int(frame.is_word.sum())
    assert pieces > 0
    dialogue.reset(torch.tensor([True, False]))
    frame = dialogue.step(frames(MOSHI, 2, 1)[0])
    assert frame.ready.tolist() == [False, True] and not frame.is_word[0]


def test_transcriber_times_vad_and_reset():
    config = dataclasses.replace(STT, stt_config={"audio_delay_seconds": 0.5})
    lm = make_tiny_lm(config)
    stt = Transcriber(lm, 2)
    assert stt.generator.temp_text == 0.0  # STT decodes greedily unless told otherwise
    audio = frames(config, 2, 10)
    for s, codes in enumerate(audio[:6]):
        out = stt.step(codes)
        torch.testing.assert_close(out.time, torch.full((2,), s * 0.08 - 0.5))
        assert out.pause.shape == (2, config.extra_heads_num_heads)
        assert ((out.pause > 0) & (out.pause < 1)).all()
        assert torch.equal(out.is_word, (out.text != 0) & (out.text != 3))
    stt.reset(torch.tensor([False, True]))
    out = stt.step(audio[6])
    torch.testing.assert_close(out.time, torch.tensor([6 * 0.08 - 0.5, -0.5]))


def test_tasks_check_the_model_and_options():
    with pytest.raises(InputError, match="dep_q > 0"):
        Dialogue(make_tiny_lm(STT), 1)
    with pytest.raises(InputError, match="text-only model"):
        Transcriber(make_tiny_lm(MOSHI), 1)
    with pytest.raises(InputError, match="unknown generation options"):
        Transcriber(make_tiny_lm(STT), 1, temperature=0.5)


def test_translator_conditions_guides_and_ends():
    lm = make_tiny_lm(HIBIKI_LUT, seed=2)
    translator = Translator(lm, 2, cfg_coef=3.0, temp=0, temp_text=0)
    condition = Condition.cat(lm.condition(2, description="very_good"), lm.condition(2, description="very_bad"))
    raw = lm.generator(2, temp=0, temp_text=0, cfg_coef=3.0, condition=condition)
    source = frames(HIBIKI_LUT, 2, 10)
    source[6, 0] = translator.end_of_input()[0]  # slot 0's source ends at frame 6
    for s, codes in enumerate(source):
        frame, want = translator.step(codes), raw.step(codes)
        if want is None:
            assert frame is None
            continue
        assert torch.equal(frame.text, want[:, 0, 0]) and torch.equal(frame.audio, want[:, 1:])
    assert translator.source_ended.tolist() == [True, False]

    # is_end: the text EOS counts only once the slot's source has ended
    eos = torch.tensor([[[2], [0], [0]], [[2], [0], [0]]])
    translator.generator.step = lambda codes, active=None: eos
    frame = translator.step(source[0])
    assert frame.is_end.tolist() == [True, False] and not frame.is_word.any()
    translator.reset(torch.tensor([True, False]))
    assert not translator.source_ended.any()
    with pytest.raises(InputError, match="0 < dep_q < n_q"):
        Translator(make_tiny_lm(STT), 1)
