"""Evaluation measures: word error rates, and pocketsphinx as the independent recognizer."""

from __future__ import annotations

import pytest

from antiphon.train.evaluate import edit_distance, normalize, pocketsphinx_transcribe, word_error_rate
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
