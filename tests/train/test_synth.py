"""The synthesizers: every word timed in order inside the audio, timings that follow the audio,
determinism, rate and pitch, voices and their held-out split, errors."""

from __future__ import annotations

import numpy as np
import pytest

from antiphon.errors import InputError
from antiphon.train import alignment, synth, texts
from antiphon.train.synth import SAMPLE_RATE, SynthesisError, Voice

from .backends import needs_festival, needs_flite

EN = "Hello there, what is two plus three? I am fine, thank you."
FR = "Été comme hiver, la pomme est verte. Il est quatre-vingt-dix heures."
ESPEAK_EN = Voice("espeak-ng", "en-us", "en")
ESPEAK_FR = Voice("espeak-ng", "fr", "fr")


def check_words(utt: synth.Utterance) -> None:
    """Every token timed, in order, without overlap, inside the audio, and audible."""
    assert [w for w, _, _ in utt.words] == utt.text.split()
    previous_stop = 0.0
    for _, start, stop in utt.words:
        assert previous_stop - 1e-3 <= start <= stop <= utt.duration + 1e-3
        previous_stop = stop
    energy = alignment.frame_energy_db(utt.pcm, SAMPLE_RATE)
    speech = np.zeros(len(energy), dtype=bool)
    for _, start, stop in utt.words:
        speech[int(start / alignment.FRAME_S):int(stop / alignment.FRAME_S)] = True
    assert np.median(energy[speech]) > np.median(energy[~speech]) + 10  # words are where the sound is


@pytest.mark.parametrize("text,voice", [(EN, ESPEAK_EN), (FR, ESPEAK_FR), (EN, Voice("espeak-ng", "en-gb-x-rp+f3", "en"))])
def test_espeak_times_every_word_inside_the_audio(text, voice):
    utt = synth.synthesize(text, voice)
    assert utt.pcm.dtype == np.float32 and utt.pcm.ndim == 1
    check_words(utt)


def test_espeak_boundaries_fall_in_quiet_spots_more_than_shifted_ones():
    """Touching word boundaries land in the quietest quarter of the speech more often at the
    reported times than 20 or 40 ms away, and more often than chance."""
    rng = np.random.default_rng(0)
    voices = synth.backend("espeak-ng").voices()
    shares, measured, chance = dict.fromkeys((-0.04, -0.02, 0.0, 0.02, 0.04), 0), 0, []
    for i in range(30):
        language = ("en", "fr")[i % 2]
        choices = [v for v in voices if v.language == language]
        utt = synth.synthesize(texts.sample_sentence(rng, language, "train"), choices[rng.integers(len(choices))])
        for offset in shares:
            n, quiet, c = alignment.boundary_quietness(utt.words, utt.pcm, SAMPLE_RATE, offset)
            shares[offset] += quiet
            measured += n if offset == 0.0 else 0
            chance += [c] if offset == 0.0 else []
    assert measured > 30
    assert all(shares[0.0] > shares[o] for o in shares if o != 0.0)
    assert shares[0.0] / measured > np.mean(chance)


def same_whatever_came_before(voice: Voice, other: Voice) -> bool:
    """The same text and voice give the same samples and timings, with other syntheses between."""
    first = synth.synthesize(EN, voice)
    synth.synthesize("Something else, said before.", other.with_prosody(1.2, 0.9))
    again = synth.synthesize(EN, voice)
    return np.array_equal(first.pcm, again.pcm) and first.words == again.words


def test_espeak_is_deterministic():
    assert same_whatever_came_before(ESPEAK_EN, Voice("espeak-ng", "fr+f3", "fr"))


def test_espeak_rate_and_pitch():
    base = synth.synthesize(EN, ESPEAK_EN)
    fast = synth.synthesize(EN, ESPEAK_EN.with_prosody(1.3, 1.0))
    high = synth.synthesize(EN, ESPEAK_EN.with_prosody(1.0, 1.3))
    assert fast.duration < 0.9 * base.duration
    assert _pitch_hz(high.pcm) > 1.1 * _pitch_hz(base.pcm)


def test_voices_cover_both_languages_and_split_by_name():
    voices = synth.list_voices()
    train, held = synth.list_voices(split="train"), synth.list_voices(split="eval")
    assert {v.key for v in train}.isdisjoint(v.key for v in held)
    assert len(train) + len(held) == len(voices)
    for language in ("en", "fr"):
        espeak = [v for v in voices if v.backend == "espeak-ng" and v.language == language]
        assert any(v.held_out for v in espeak) and not all(v.held_out for v in espeak)
    assert all(v.held_out == synth.held_out_voice(v.with_prosody(1.2, 0.9)) for v in voices)


def test_errors():
    with pytest.raises(SynthesisError, match="no voice"):
        synth.synthesize("Hello.", Voice("espeak-ng", "xx-nowhere", "en"))
    with pytest.raises(InputError, match="empty"):
        synth.synthesize("  ", ESPEAK_EN)
    with pytest.raises(InputError, match="language"):
        synth.list_voices("de")
    with pytest.raises(InputError, match="backend"):
        synth.backend("sam")


@needs_flite
def test_flite_times_words_and_follows_rate():
    voices = synth.backend("flite").voices()
    assert voices and all(v.language == "en" and v.name != "awb_time" for v in voices)
    voice = next(v for v in voices if v.name == "slt") if any(v.name == "slt" for v in voices) else voices[0]
    utt = synth.synthesize(EN, voice)
    check_words(utt)
    assert all(same_whatever_came_before(v, voices[0]) for v in voices)
    assert synth.synthesize(EN, voice.with_prosody(1.3, 1.0)).duration < 0.9 * utt.duration


@needs_festival
def test_festival_times_words_with_punctuation():
    voices = synth.backend("festival").voices()
    assert voices
    utt = synth.synthesize('She said "yes", then left.', voices[0])
    check_words(utt)


def _pitch_hz(pcm: np.ndarray) -> float:
    """Median autocorrelation pitch of the loud 40 ms frames, 60-400 Hz."""
    frame, estimates = int(0.04 * SAMPLE_RATE), []
    lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
    threshold = 0.1 * np.abs(pcm).max()
    for start in range(0, len(pcm) - frame, frame):
        x = pcm[start:start + frame].astype(np.float64)
        if np.abs(x).max() < threshold:
            continue
        ac = np.correlate(x, x, mode="full")[frame - 1:]
        estimates.append(SAMPLE_RATE / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(estimates))
