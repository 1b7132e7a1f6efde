"""Evaluation measures: word error rates, and pocketsphinx as the independent recognizer."""

from __future__ import annotations

import numpy as np
import pytest

from antiphon.train.evaluate import (answer_recall, edit_distance, normalize, pocketsphinx_transcribe,
                                     speaking_at, stops_speaking_at, word_error_rate)
from antiphon.train.synth import Voice, synthesize
from tests.train.backends import needs_flite


def test_normalize_drops_case_and_punctuation_but_keeps_apostrophes():
    assert normalize("J'ai deux voitures. Quel jour?") == ["j'ai", "deux", "voitures", "quel", "jour"]
    assert normalize(" -- ") == []


def test_edit_distance_counts_substitutions_insertions_and_deletions():
    assert edit_distance("a b c".split(), "a b c".split()) == 0
    assert edit_distance("a b c".split(), "a x c".split()) == 1
    assert edit_distance("a b c".split(), "a c".split()) == 1
    assert edit_distance("a b".split(), "a b c d".split()) == 2
    assert edit_distance([], "a".split()) == 1


def test_word_error_rate_is_over_all_reference_words():
    pairs = [("the red ball", "the red ball"), ("a blue cat", "a cat")]
    assert word_error_rate(pairs) == pytest.approx(1 / 6)
    assert word_error_rate([("Hello, world!", "hello world")]) == 0.0


@needs_flite
def test_pocketsphinx_reads_a_flite_sentence():
    utt = synthesize("What is the capital of Norway?", Voice("flite", "slt", "en"))
    hyp = pocketsphinx_transcribe(utt.pcm, 24000)
    assert word_error_rate([("what is the capital of norway", hyp)]) <= 0.5


def test_answer_recall_counts_the_reference_words_said():
    assert answer_recall("Rome is the capital.", "the capital is Rome") == 1.0
    assert answer_recall("two two", "two") == 0.5
    assert answer_recall("", "anything") == 0.0


def test_stops_speaking_at_finds_the_first_lasting_silence():
    rate, frame = 1000, 10
    loud = np.full(50, 0.5, dtype=np.float32)
    quiet = np.zeros(40, dtype=np.float32)
    pcm = np.concatenate([loud, quiet[:20], loud, quiet])  # a 20-sample gap (2 frames) then 40 (4 frames)
    assert stops_speaking_at(pcm, 0.0, rate, frame) == pytest.approx(0.12)  # the 2-frame gap is too short
    assert stops_speaking_at(pcm, 0.13, rate, frame) == pytest.approx(0.13)  # from the asked time on
    assert stops_speaking_at(np.full(100, 0.5, np.float32), 0.0, rate, frame) is None


def test_speaking_at_looks_at_the_frames_before():
    rate, frame = 1000, 10
    pcm = np.concatenate([np.full(50, 0.5, np.float32), np.zeros(50, np.float32)])  # speech to 0.05 s
    assert speaking_at(pcm, 0.05, rate, frame) and speaking_at(pcm, 0.07, rate, frame)
    assert not speaking_at(pcm, 0.08, rate, frame) and not speaking_at(pcm, 0.0, rate, frame)
