"""Kyutai TTS pieces (lm.tts) and the Speaker front-end (lm.tasks): the padding state machine with
scripted sampled tokens, word timestamps, voice files, and the generator's TTS hooks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from antiphon.errors import InputError
from antiphon.lm.tasks import Speaker
from antiphon.lm.tts import Entry, PaddingMachine, load_voice, speaker_source, text_to_entries

from .tiny import SPEAKER_DIM, TTS, TTS_CROSS, make_tiny_lm

WORD, PAD, CARD = 0, 3, 40  # new_word, pad, text_card


def run(machine: PaddingMachine, sampled: list[int]) -> list[int]:
    """Feed scripted sampled tokens; check that `choices` announced each decision."""
    fed = []
    for step, token in enumerate(sampled):
        if_pad, if_word = machine.choices(step)
        fed.append(machine.advance(step, token))
        assert fed[-1] == (if_word if token == WORD else if_pad), step
    return fed


def machine(entries, ahead=0, **options) -> PaddingMachine:
    m = PaddingMachine(CARD, second_stream_ahead=ahead, **options)
    m.push(entries)
    m.end()
    return m


def test_initial_padding_then_a_word_fed_in_order():
    m = machine([Entry((10, 11, 12), "abc"), Entry((13,), "d")], initial_padding=2, max_padding=8)
    fed = run(m, [WORD, WORD, WORD, WORD, WORD, WORD, 7, WORD, PAD])
    # steps 0-1 forced PAD; WORD at 2 pops "abc"; its tokens follow whatever is sampled; 7 reads as PAD
    assert fed == [PAD, PAD, WORD, 10, 11, 12, PAD, WORD, 13]
    assert [(w.text, w.start, w.stop) for w in m.said] == [("abc", 2, 6), ("d", 7, 9)]


def test_max_padding_forces_a_word_and_the_end():
    m = machine([Entry((10, 11), "ab", padding=1)], initial_padding=2, max_padding=3)
    fed = run(m, [PAD] * 12)
    # budget 2 spent at steps 0-1 -> WORD forced at 2; then 10, 11 (budget 3 -> 1), forced pad (padding 1)
    # at 5 (budget 0), WORD forced at 6 with nothing left: the end
    assert fed[:7] == [PAD, PAD, WORD, 10, 11, PAD, PAD]
    assert m.end_step == 6 and all(t == PAD for t in fed[7:])


def test_padding_between_and_pauses():
    class Tokenizer:
        def encode(self, word):
            return [10 + len(word)] * len(word)  # one token per letter

    entries = text_to_entries(Tokenizer(), 'ab (c):d <break time="0.4s"/> ef\u2019', padding_between=1, first_token=1)
    assert entries == [Entry((1, 12, 12), "ab", 3), Entry((11,), "c", 1), Entry((11,), "d", 1), Entry((), "", 5),
                       Entry((13, 13, 13), "ef'", 3)]
    m = machine(entries[3:], initial_padding=0, max_padding=8)
    fed = run(m, [WORD] * 12)
    # the pause pops at 0 and reads as PAD (5 forced PADs including it), then "ef'" at 5
    assert fed[:9] == [PAD] * 5 + [WORD, 13, 13, 13]


def test_lookahead_stream_multiplexes_word_i_plus_2():
    words = [Entry((10,), "a"), Entry((11, 12), "b"), Entry((13, 14), "c"), Entry((15,), "d")]
    m = machine(words, ahead=2, initial_padding=0, max_padding=8)
    fed = run(m, [WORD, PAD, WORD, PAD, PAD, WORD, PAD, PAD, WORD, PAD, WORD, PAD])

    def pack(second, main):
        return (second + 1) * (CARD + 1) + main
    assert fed == [pack(WORD, 10), pack(13, PAD),  # "a" rides with its WORD marker; "c" (2 ahead) follows
                   pack(WORD, 11), pack(14, 12), pack(15, PAD),  # "b"; the rest of "c", then "d", ahead
                   pack(WORD, 13), pack(-1, 14), pack(-1, PAD),  # "c": nothing 2 words ahead of it
                   pack(WORD, 15), pack(-1, PAD),
                   pack(WORD, PAD), pack(-1, PAD)]  # a WORD past the last word: marked once, the end
    assert m.end_step == 10
    assert [(w.text, w.start, w.stop) for w in m.said] == [("a", 0, 1), ("b", 2, 4), ("c", 5, 7), ("d", 8, 9)]


def test_a_slot_waits_for_lookahead_words():
    m = PaddingMachine(CARD, second_stream_ahead=2, initial_padding=0, max_padding=2)
    m.push([Entry((10,), "a"), Entry((11,), "b")])
    assert m.waiting
    assert run(m, [WORD] * 5) == [PAD] * 5  # stalls (second stream empty: -1), budget untouched
    assert m.budget == 0 and m.end_step is None  # (initial budget = initial_padding)
    m.push([Entry((12,), "c")])
    assert not m.waiting and m.advance(5, PAD) == (WORD + 1) * (CARD + 1) + 10  # no budget left: WORD forced
    with pytest.raises(InputError, match="ended"):
        m.end(), m.push([Entry((1,), "x")])


# ---------------------------------------------------------------------------------------- voices
def test_voice_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    voice = torch.randn(1, SPEAKER_DIM, 4, generator=g)
    path = tmp_path / "ex01.abc@240.safetensors"
    save_file({"speaker_wavs": voice}, str(path))
    assert torch.equal(load_voice(path, SPEAKER_DIM), voice[0].t())
    assert torch.equal(load_voice(voice[0]), voice[0].t())
    source, mask = speaker_source([load_voice(path)])
    assert source.shape == (1, 5 * 4, SPEAKER_DIM) and mask[0].tolist() == [True] * 4 + [False] * 16
    with pytest.raises(InputError, match="not found"):
        load_voice(tmp_path / "missing.safetensors")
    save_file({"embeddings": voice}, str(tmp_path / "key.safetensors"))
    with pytest.raises(InputError, match="no 'speaker_wavs' tensor"):
        load_voice(tmp_path / "key.safetensors")
    save_file({"speaker_wavs": voice[0, 0]}, str(tmp_path / "rank.safetensors"))
    with pytest.raises(InputError, match=r"must be a float tensor \[1, C, T\]"):
        load_voice(tmp_path / "rank.safetensors")
    with pytest.raises(InputError, match="C = 12 channels, this model's speaker conditioner takes 512"):
        load_voice(path, 512)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_voice(tmp_path / "junk.safetensors")


# ---------------------------------------------------------------------------------------- generator hooks
def test_generator_forces_text_pad_bonus_and_audio_delay():
    lm = make_tiny_lm(TTS, seed=1)
    none = torch.zeros(2, 0, 1, dtype=torch.long)
    gen = lm.generator(2, temp=0, temp_text=0, audio_delay=3)
    raw = lm.generator(2, temp=0, temp_text=0, audio_delay=3)
    for step in range(8):
        forced = torch.tensor([[5, 6], [-1, -1]])
        out, want = gen.step(none, text=forced, pad_bonus=torch.tensor([0.0, 100.0])), raw.step(none)
        assert gen.last_text[1] == 3  # the bonus makes slot 1 sample PAD
        assert step or gen.last_text[0] == raw.last_text[0]  # (slot 0's input then follows the forced tokens)
        if out is not None:
            assert out[0, 0, 0] == (6 if gen.last_text[0] == 0 else 5)
            frame = step - gen.max_delay  # audio of frame f is the zero token while f < audio_delay
            assert ((out[:, 1:] == -1).all() if frame < 3 else (out[:, 1:] >= 0).all()), step
            assert (want[:, 1:] == -1).all() == (frame < 3)
    with pytest.raises(InputError, match=r"\[B\] or \[B, 2\]"):
        gen.step(none, text=torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError, match="pad_bonus"):
        gen.step(none, pad_bonus=torch.zeros(3))


# ---------------------------------------------------------------------------------------- Speaker
class LetterTokenizer:
    def encode(self, word):
        return [4 + (ord(c) % 30) for c in word]


def test_speaker_words_timestamps_and_end(tmp_path):
    config = dataclasses.replace(TTS_CROSS, tts_config={"audio_delay": 0.24, "second_stream_ahead": 2})
    lm = make_tiny_lm(config, seed=3)
    save_file({"speaker_wavs": torch.randn(1, SPEAKER_DIM, 4)}, str(tmp_path / "v.safetensors"))
    speaker = Speaker(lm, 2, voice=tmp_path / "v.safetensors", tokenizer=LetterTokenizer(), temp=0, temp_text=0,
                      padding_bonus=torch.tensor([0.0, 3.0]))
    assert speaker.delay_steps == 3
    speaker.push(0, "hi there")
    assert speaker.waiting == [True, True]
    speaker.push(0, "you")
    speaker.end(0)
    speaker.push(1, "a b")
    speaker.end(1)
    frames = [speaker.step() for _ in range(60)]
    words = [w for f in frames for w in f.words]
    assert [w.text for w in words if w.slot == 0] == ["hi", "there", "you"]
    assert [w.text for w in words if w.slot == 1] == ["a", "b"]
    for slot in (0, 1):
        said = {w.text: w for w in words if w.slot == slot}
        steps = speaker.machines[slot].said
        assert all((said[s.text].start, said[s.text].stop) == pytest.approx((s.start * 0.08, s.stop * 0.08))
                   for s in steps)
        assert all(a.stop <= b.start for a, b in zip(steps, steps[1:]))
        end = speaker.machines[slot].end_step + 3 + 4  # + delay_steps + final_padding
        ready = [bool(f.ready[slot]) for f in frames]
        frame_of = [s - 2 for s in range(60)]  # max_delay 2
        assert ready == [3 <= f < end for f in frame_of]
        assert [s for s, f in enumerate(frames) if f.last[slot]] == [end - 1 + 2]
        assert all((f.audio[slot] >= 0).all() for f in frames if f.ready[slot])
    assert speaker.machines[0].said[0].start == 2  # initial padding 2
    speaker.reset(torch.tensor([True, False]))
    assert speaker.steps[0] == 0 and not speaker.machines[0].entries and speaker.started == [False, True]


def test_speaker_checks():
    lm = make_tiny_lm(TTS_CROSS)
    with pytest.raises(InputError, match="pass voice="):
        Speaker(lm, 1, tokenizer=LetterTokenizer())
    with pytest.raises(InputError, match="must be one of"):
        Speaker(lm, 1, voice=torch.randn(1, SPEAKER_DIM, 4), cfg=1.7, tokenizer=LetterTokenizer())
    with pytest.raises(InputError, match="needs a TTS model"):
        Speaker(make_tiny_lm(dataclasses.replace(TTS, tts_config={})), 1)
    with pytest.raises(InputError, match="CFG distillation"):
        Speaker(lm, 1, voice=torch.randn(1, SPEAKER_DIM, 4), cfg_coef=2.0, tokenizer=LetterTokenizer())
    speaker = Speaker(lm, 1, voice=torch.randn(1, SPEAKER_DIM, 4), tokenizer=LetterTokenizer())
    with pytest.raises(InputError, match="slot must be"):
        speaker.push(1, "hello")
