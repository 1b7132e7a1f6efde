"""Kyutai TTS against the reference (`moshi` 0.2.13): moshi's TTSModel built around a tiny random TTS LM
(its own StateMachine, script_to_entries, voice-file loading and LMGen hooks), greedy, against antiphon's
Speaker loaded from the same checkpoint: the same audio codes token for token, the same words at the
same steps, the same end steps. The text head is tilted so that the model samples WORD and PAD itself
(not only the forced ones)."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("moshi")
spm = pytest.importorskip("sentencepiece")

from antiphon.lm import LM  # noqa: E402
from antiphon.lm.tasks import Speaker  # noqa: E402

from .reference import make_reference_lm, save_reference_checkpoint  # noqa: E402
from .test_checkpoint import _train_tokenizer  # noqa: E402
from .tiny import SPEAKER_DIM, TTS_CROSS  # noqa: E402

pytestmark = pytest.mark.reference

TEXTS = ["hello world the model speaks", "quick brown foxes jump"]


@pytest.mark.parametrize("padding_bonus", [0.0, 1.5])
def test_speaker_equals_moshi_tts(tmp_path, padding_bonus):
    """Kyutai TTS 1.6B's way: the guidance distilled into the cfg conditioner."""
    config = dataclasses.replace(TTS_CROSS, context=8, tts_config={"audio_delay": 0.32, "second_stream_ahead": 2})
    _compare_with_moshi_tts(tmp_path, config, padding_bonus=padding_bonus, cfg=2.0, cfg_coef=1.0)


def test_two_pass_guidance_equals_moshi_tts(tmp_path):
    """A TTS model without a cfg conditioner: two-pass guidance, the null rows without text or voice
    (the reference's cfg_is_no_text), coefficient 2."""
    conditioners = {k: v for k, v in TTS_CROSS.conditioners.items() if k != "cfg"}
    fuser = dict(TTS_CROSS.fuser, sum=["control"])
    config = dataclasses.replace(TTS_CROSS, context=8, tts_config={"audio_delay": 0.32, "second_stream_ahead": 2},
                                 conditioners=conditioners, fuser=fuser)
    _compare_with_moshi_tts(tmp_path, config, padding_bonus=0.0, cfg=None, cfg_coef=2.0)


def _compare_with_moshi_tts(tmp_path, config, padding_bonus: float, cfg: float | None, cfg_coef: float):
    from moshi.models.tts import StateMachine, TokenIds, TTSModel
    from moshi.utils.compile import no_compile

    reference = make_reference_lm(config, seed=5)
    with torch.no_grad():  # WORD and PAD logits of opposite signs, large: the model's own actions vary
        reference.text_linear.weight[0] = -reference.text_linear.weight[3]
        reference.text_linear.weight[[0, 3]] *= 30
    lm = LM.from_pretrained(save_reference_checkpoint(reference, config, tmp_path))
    _train_tokenizer(tmp_path, config.text_card)
    tokenizer = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok.model"))
    voice = tmp_path / "ex03.sig@240.safetensors"
    save_file({"speaker_wavs": torch.randn(1, SPEAKER_DIM, 4, generator=torch.Generator().manual_seed(0))}, str(voice))

    machine = StateMachine(TokenIds(config.text_card + 1), second_stream_ahead=2, max_padding=8, initial_padding=2)
    tts = TTSModel(lm=reference, mimi=types.SimpleNamespace(frame_rate=12.5), tokenizer=tokenizer, voice_suffix="",
                   voice_repo="", machine=machine, delay_steps=4, n_q=config.dep_q, temp=0, max_gen_length=200,
                   padding_bonus=padding_bonus, cfg_coef=cfg_coef)
    entries = [tts.prepare_script([t], padding_between=1) for t in TEXTS]
    attributes = [tts.make_condition_attributes([voice], cfg_coef=cfg) for _ in TEXTS]
    with no_compile():
        expected = tts.generate(entries, attributes)
    sampled = [token for token, _ in expected.logged_text_tokens[0]]
    assert {0, 3} <= set(sampled)  # the model asked for words itself, and for pads

    speaker = Speaker(lm, len(TEXTS), voice=voice, cfg=cfg, cfg_coef=cfg_coef, tokenizer=tokenizer, temp=0,
                      temp_text=0, padding_bonus=padding_bonus)
    for slot, text in enumerate(TEXTS):
        speaker.push(slot, text)
        speaker.end(slot)
    lag = speaker.generator.max_delay  # moshi's frames start at the first non-None step
    frames = [speaker.step() for _ in range(len(expected.frames) + lag)]
    for i, want in enumerate(expected.frames):
        assert torch.equal(frames[i + lag].audio, want[:, 1:]), i
    assert [m.end_step for m in speaker.machines] == expected.end_steps
    words = [w for f in frames for w in f.words]
    for slot, transcript in enumerate(expected.all_transcripts):
        assert [(w.text, round(w.start / 0.08)) for w in words if w.slot == slot] == transcript
