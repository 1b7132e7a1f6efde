"""Templated text: determinism from the generator, held-out sentences disjoint from training ones
over the training vocabulary, chunk alignment of translation pairs, number words."""

from __future__ import annotations

import numpy as np
import pytest

from antiphon.errors import InputError
from antiphon.train import texts
from antiphon.train.numbers import number_words


def draw(seed: int, split: str, n: int = 300) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        language = ("en", "fr")[i % 2]
        out.append(texts.sample_sentence(rng, language, split))
        out.append(texts.sample_pair(rng, split).text(language))
        qa = texts.sample_question(rng, language, split)
        out += [qa.question]
    return out


def test_same_generator_state_same_texts():
    assert draw(3, "train", 50) == draw(3, "train", 50)
    assert draw(3, "train", 50) != draw(4, "train", 50)


def test_eval_texts_are_never_train_texts():
    train = set(draw(0, "train", 1500))
    held = set(draw(1, "eval", 500))
    assert train.isdisjoint(held)
    rng = np.random.default_rng(0)
    assert all(texts.sample_pair(rng, "eval").held_out for _ in range(50))
    assert not any(texts.sample_pair(rng, "train").held_out for _ in range(50))


def test_texts_are_clean_sentences():
    for text in draw(5, "train", 100) + draw(5, "eval", 100):
        assert text == " ".join(text.split()) and text[0].isupper() and "{" not in text and "|" not in text
        assert text[-1] in ".?!"


def test_word_lists_are_words_of_the_splits_sentences_in_no_sentence():
    rng = np.random.default_rng(2)
    vocabulary = {w.strip(".,?!").lower() for text in draw(0, "train", 1500) for w in text.split()}
    sentences = set(draw(0, "train", 1500))
    lists = [texts.sample_word_list(rng, ("en", "fr")[i % 2], "train") for i in range(200)]
    for text in lists:
        words = text[:-1].split()
        assert 3 <= len(words) <= 8 and text[-1] == "." and text[0].isupper()
        assert {w.lower() for w in words} <= vocabulary and text not in sentences
    assert len(set(lists)) == len(lists)


def test_word_alignment_is_monotone_and_covers_the_target():
    rng = np.random.default_rng(1)
    for _ in range(200):
        pair = texts.sample_pair(rng, "train")
        for source, target in (("en", "fr"), ("fr", "en")):
            alignment = pair.word_alignment(source, target)
            assert len(alignment) == len(pair.text(target).split())
            assert alignment == sorted(alignment)
            assert 0 <= alignment[0] and alignment[-1] == len(pair.text(source).split()) - 1


def test_number_words_are_distinct_and_well_formed():
    for language in ("en", "fr"):
        words = [number_words(n, language) for n in range(1000)]
        assert len(set(words)) == 1000
        assert all(w == " ".join(w.split()) and w for w in words)


def test_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="split"):
        texts.sample_pair(rng, "test")
    with pytest.raises(InputError, match="language"):
        texts.sample_question(rng, "de", "train")
    with pytest.raises(InputError, match="0..999"):
        number_words(1000, "en")


def test_every_eval_word_is_heard_in_training():
    """Held-out sentences, not held-out words: an eval text recombines words heard in training
    (elided French words count apart: "l'Italie" is heard as "l'" and "italie")."""
    words = lambda lines: {w.strip(".,?!").lower() for line in lines for w in line.replace("'", "' ").split()}  # noqa: E731
    train = words(draw(0, "train", 3000))
    held = words(draw(1, "eval", 500))
    assert held <= train, sorted(held - train)[:20]


def test_every_family_with_slots_has_eval_sentences():
    rng = np.random.default_rng(2)
    for family in texts.STATEMENTS + texts.QUESTIONS:
        if family.slots:
            assert texts._choose(family, rng, "eval")[2]
        else:
            with pytest.raises(InputError, match="no eval"):
                texts._choose(family, rng, "eval")
