"""Examples: the same (kind, seed, split, index) gives the same audio bit for bit; words are timed
inside the audio; dialogues interrupt, overlap and backchannel as promised; translations lag
behind their source word by word; the eval split speaks with held-out voices."""

from __future__ import annotations

import numpy as np
import pytest

from antiphon.errors import InputError
from antiphon.train import dataset, synth
from antiphon.train.alignment import FRAME_S, frame_energy_db
from antiphon.train.vocabulary import BACKCHANNELS

ESPEAK = ("espeak-ng",)


def same(a: dataset.Example, b: dataset.Example) -> bool:
    return (np.array_equal(a.pcm, b.pcm) and a.info == b.info
            and [(c.role, c.voice, c.words) for c in a.channels] == [(c.role, c.voice, c.words) for c in b.channels])


@pytest.mark.parametrize("kind", dataset.KINDS)
def test_same_arguments_same_example_bit_for_bit(kind):
    first = [dataset.make_example(kind, 7, i, backends=ESPEAK) for i in range(2)]
    again = [dataset.make_example(kind, 7, i, backends=ESPEAK) for i in reversed(range(2))][::-1]
    assert all(same(a, b) for a, b in zip(first, again))
    assert not same(first[0], first[1])


def test_same_arguments_same_example_with_every_backend():
    first = [dataset.make_example("asr", 3, i) for i in range(3)]
    assert all(same(a, dataset.make_example("asr", 3, i)) for i, a in enumerate(first))


@pytest.mark.parametrize("kind", dataset.KINDS)
def test_words_are_ordered_inside_the_audio(kind):
    for i in range(3):
        example = dataset.make_example(kind, 1, i, backends=ESPEAK)
        assert example.pcm.dtype == np.float32 and example.pcm.shape[0] == len(example.channels)
        for channel in example.channels:
            assert channel.words and channel.text == " ".join(w for w, _, _ in channel.words)
            starts = [start for _, start, _ in channel.words]
            assert starts == sorted(starts)
            assert all(0 <= a <= b <= example.duration for _, a, b in channel.words)


def test_clean_speech_is_loud_inside_words_and_quiet_outside():
    for i in range(4):
        example = dataset.make_example("tts", 2, i, backends=ESPEAK)
        energy = frame_energy_db(example.pcm[0], synth.SAMPLE_RATE)
        inside = np.zeros(len(energy), dtype=bool)
        for _, a, b in example.channels[0].words:
            inside[int(a / FRAME_S):int(b / FRAME_S)] = True
        assert np.median(energy[inside]) > np.median(energy[~inside]) + 20


@pytest.fixture(scope="module")
def dialogues() -> list[dataset.Example]:
    return [dataset.make_example("dialogue", 5, i, backends=ESPEAK) for i in range(12)]


def test_dialogues_have_every_turn_variant(dialogues):
    variants = {v for d in dialogues for v in d.info["turns"]}
    assert variants == set(dataset.TURN_VARIANTS)
    assert all([c.role for c in d.channels] == ["model", "user"] for d in dialogues)


def test_interrupted_answers_stop_within_half_a_second(dialogues):
    checked = 0
    for d in dialogues:
        model, user = d.channels
        for cut in d.info["interruptions"]:
            starts, stops = cut["user_starts_s"], cut["model_stops_s"]
            assert 0 < stops - starts <= dataset.MAX_CUT_S
            assert any(abs(a - starts) < 1e-3 for _, a, _ in user.words)  # the user does start there
            later = [a for _, a, _ in model.words if a > stops]
            assert all(not (a < stops < b) or b <= stops + 1e-3 for _, a, b in model.words)
            quiet_until = min(later, default=d.duration)
            after = d.pcm[0, int((stops + dataset.FADE_S) * synth.SAMPLE_RATE):int(quiet_until * synth.SAMPLE_RATE)]
            assert np.abs(after).max(initial=0.0) < 1e-3  # the model is silent (-60 dBFS) from the cut on
            checked += 1
    assert checked > 0


def test_backchannels_and_overlaps_happen(dialogues):
    said = {w.strip(".,!?").lower() for d in dialogues for w, _, _ in d.channels[0].words}
    assert said & {b.split()[0].lower() for b in BACKCHANNELS["en"] + BACKCHANNELS["fr"]}
    overlapping = 0
    for d in dialogues:
        model, user = d.channels
        overlapping += any(ua < mb and ma < ub for _, ma, mb in model.words for _, ua, ub in user.words)
    assert overlapping > 0


def test_translation_target_words_follow_their_source_words():
    for i in range(6):
        example = dataset.make_example("translation", 4, i, backends=ESPEAK)
        target, source = example.channels
        assert {target.language, source.language} == {"en", "fr"}
        alignment, lag = example.info["alignment"], example.info["lag_s"]
        assert len(alignment) == len(target.words)
        for (_, start, _), depends_on in zip(target.words, alignment):
            assert start >= source.words[depends_on][2] + lag - 1e-3


def test_word_lists_take_their_share_and_leave_share_zero_datasets_unchanged():
    plain = [dataset.make_example("asr", 5, i, backends=ESPEAK) for i in range(3)]
    assert all(same(a, dataset.make_example("asr", 5, i, backends=ESPEAK, word_lists=0.0)) for i, a in enumerate(plain))
    lists = [dataset.make_example("tts", 5, i, backends=ESPEAK, word_lists=1.0) for i in range(3)]
    for example in lists:
        words = example.channels[0].words
        assert 3 <= len(words) <= 8 and words[-1][0].endswith(".")
        assert all(w[-1] not in ".,?!" for w, _, _ in words[:-1])


def test_eval_split_speaks_with_held_out_voices():
    for kind in ("asr", "dialogue", "translation"):
        example = dataset.make_example(kind, 0, 0, split="eval", backends=ESPEAK)
        for channel in example.channels:
            backend, name = channel.voice["voice"].split("/", 1)
            assert synth.held_out_voice(synth.Voice(backend, name, channel.language))
    example = dataset.make_example("asr", 0, 0, split="train", backends=ESPEAK)
    backend, name = example.channels[0].voice["voice"].split("/", 1)
    assert not synth.held_out_voice(synth.Voice(backend, name, example.channels[0].language))


def test_errors():
    with pytest.raises(InputError, match="kind"):
        dataset.make_example("music", 0, 0)
    with pytest.raises(InputError, match="split"):
        dataset.make_example("asr", 0, 0, split="dev")
    with pytest.raises(InputError, match="non-negative"):
        dataset.make_example("asr", -1, 0)
    with pytest.raises(InputError, match="backends"):
        dataset.make_example("asr", 0, 0, backends=("sam",))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        dataset.make_example("asr", 0, 0, word_lists=1.5)
    with pytest.raises(InputError, match="asr and tts"):
        dataset.make_example("dialogue", 0, 0, word_lists=0.5)
