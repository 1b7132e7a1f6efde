"""Templated English and French text: statements (objects, colours, numbers, places, days, times,
tastes), question/answer pairs for dialogue, and EN<->FR translation pairs aligned chunk by chunk.

A template is written once per language as chunks separated by " | ": chunk k of the English is
the translation of chunk k of the French, so the two sides align chunk by chunk (words reordered
inside a chunk, "a red apple" / "une pomme rouge", stay in one chunk). Slots name fillers from
`vocabulary` ("{o.en}"); `agree` is the colour in French agreeing with the object.

Held-out rule (for evaluation): held-out sentences over the training vocabulary. A template
rendered with its fillers is an eval sentence when its text (both languages) falls in the eval fifth
by a stable hash (`_eval_sentence`); every other one is a train sentence. A template without slots
(a greeting) is always a train sentence: it has no recombination to hold out. So no eval statement
or question is a train one, and every word of an eval text is heard in training, in other sentences
(answers can be the same: "Seven." answers questions of both splits). Every choice is drawn from
the numpy Generator given.
"""

from __future__ import annotations

import dataclasses
import zlib
from types import SimpleNamespace

import numpy as np

from antiphon.errors import InputError
from antiphon.train import vocabulary as V

SPLITS = ("train", "eval")
EVAL_ONE_IN = 5  # one sentence in five is held out


@dataclasses.dataclass(frozen=True)
class Family:
    """Templates over slots. `templates`: (en, fr) chunked pairs. `answers`: for questions, the
    (en, fr) answer templates, any of which answers any question template, or with `paired`,
    answer k answers question template k only."""

    name: str
    slots: dict[str, list[SimpleNamespace]]
    templates: list[tuple[str, str]]
    answers: list[tuple[str, str]] = ()
    paired: bool = False


@dataclasses.dataclass(frozen=True)
class TextPair:
    """One rendered template in both languages: `chunks` are aligned (en, fr) phrases."""

    family: str
    chunks: tuple[tuple[str, str], ...]
    held_out: bool

    def text(self, language: str) -> str:
        side = _side(language)
        return _sentence(" ".join(c[side] for c in self.chunks if c[side]))

    def word_alignment(self, source: str, target: str) -> list[int]:
        """For each word of the `target` text, the index of the last `source` word it may depend
        on: the last source word of its chunk or of any earlier chunk (monotone, conservative)."""
        src, tgt = _side(source), _side(target)
        out, seen = [], 0
        for chunk in self.chunks:
            seen += len(chunk[src].split())
            out += [max(seen - 1, 0)] * len(chunk[tgt].split())
        return out


@dataclasses.dataclass(frozen=True)
class QuestionAnswer:
    question: str
    answer: str
    language: str
    family: str
    held_out: bool


STATEMENTS = [
    Family("colour", {"o": V.OBJECTS, "c": V.COLOURS}, [
        ("the {o.en} | is | {c.en}.", "{o.fr_the} | est | {agree}."),
        ("I see | a {c.en} {o.en}.", "je vois | {o.fr_a} {agree}."),
        ("my {o.en} | is not | {c.en}.", "{o.fr_my} | n'est pas | {agree}."),
        ("where is | the {c.en} {o.en}?", "où est | {o.fr_the} {agree}?"),
    ]),
    Family("count", {"n": V.COUNTS, "o": V.OBJECTS, "p": V.PEOPLE}, [
        ("I have | {n.en} | {o.en_pl}.", "j'ai | {n.fr} | {o.fr_pl}."),
        ("there are | {n.en} | {o.en_pl} | on the table.", "il y a | {n.fr} | {o.fr_pl} | sur la table."),
        ("{p.en} | bought | {n.en} | {o.en_pl}.", "{p.fr} | a acheté | {n.fr} | {o.fr_pl}."),
    ]),
    Family("place", {"k": V.PLACES, "p": V.PEOPLE}, [
        ("{k.en} | is in {k.country_en}.", "{k.fr} | est {k.fr_in}."),
        ("{p.en} | lives | in {k.en}.", "{p.fr} | habite | à {k.fr}."),
        ("{p.en} | is going | to {k.en}.", "{p.fr} | va | à {k.fr}."),
    ]),
    Family("time", {"d": V.DAYS, "h": V.HOURS}, [
        ("today is | {d.en}.", "aujourd'hui, | c'est {d.fr}."),
        ("it is | {h.en} o'clock.", "il est | {h.fr} heures."),
        ("the meeting is | on {d.en} | at {h.en} o'clock.", "la réunion est | {d.fr} | à {h.fr} heures."),
    ]),
    Family("taste", {"p": V.PEOPLE, "f": V.FOODS}, [
        ("{p.en} | likes | {f.en}.", "{p.fr} | aime | {f.fr}."),
        ("{p.en} | does not like | {f.en}.", "{p.fr} | n'aime pas | {f.fr}."),
        ("{p.en} | wants | {f.en} | for dinner.", "{p.fr} | veut | {f.fr} | pour le dîner."),
    ]),
]

QUESTIONS = [
    Family("addition", {"a": V.SMALL_NUMBERS, "b": V.SMALL_NUMBERS}, [
        ("what is {a.en} plus {b.en}?", "combien font {a.fr} plus {b.fr}?"),
        ("how much is {a.en} plus {b.en}?", "ça fait combien, {a.fr} plus {b.fr}?"),
        ("can you add {a.en} and {b.en}?", "peux-tu additionner {a.fr} et {b.fr}?"),
    ], [("{sum.en}.", "{sum.fr}."), ("{a.en} plus {b.en} is {sum.en}.", "{a.fr} plus {b.fr} font {sum.fr}."),
        ("that makes {sum.en}.", "ça fait {sum.fr}.")]),
    Family("colour_of", {"t": V.COLOUR_FACTS}, [
        ("what colour is {t.en}?", "de quelle couleur est {t.fr}?"),
        ("tell me the colour of {t.en}.", "dis-moi la couleur {t.fr_of}."),
    ], [("{t.colour_en}.", "{t.colour_fr}."), ("{t.en} is {t.colour_en}.", "{t.fr} est {t.colour_fr}.")]),
    Family("capital", {"k": V.PLACES}, [
        ("what is the capital of {k.country_en}?", "quelle est la capitale {k.fr_of}?"),
        ("which city is the capital of {k.country_en}?", "quelle ville est la capitale {k.fr_of}?"),
    ], [("{k.en}.", "{k.fr}."), ("the capital of {k.country_en} is {k.en}.", "la capitale {k.fr_of} est {k.fr}."),
        ("it is {k.en}.", "c'est {k.fr}.")]),
    Family("next_day", {"d": V.DAYS}, [
        ("what day comes after {d.en}?", "quel jour vient après {d.fr}?"),
        ("if today is {d.en}, what day is tomorrow?", "si on est {d.fr}, quel jour sera demain?"),
    ], [("{d.next.en}.", "{d.next.fr}."), ("after {d.en} comes {d.next.en}.", "après {d.fr}, c'est {d.next.fr}.")]),
    Family("legs", {"a": V.ANIMALS}, [
        ("how many legs does {a.en_a} have?", "combien de pattes a {a.fr_a}?"),
        ("how many legs has {a.en_a} got?", "{a.fr_a} a combien de pattes?"),
    ], [("{a.legs_en}.", "{a.legs_fr}."), ("{a.en_a} has {a.legs_en} legs.", "{a.fr_a} a {a.legs_fr} pattes.")]),
    Family("greeting", {}, [
        ("hello, how are you?", "bonjour, comment ça va?"),
        ("good morning, are you there?", "bonjour, tu es là?"),
        ("hi, can you hear me?", "salut, tu m'entends?"),
    ], [("I am fine, thank you.", "ça va bien, merci."), ("yes, I am here.", "oui, je suis là."),
        ("yes, I can hear you.", "oui, je t'entends.")], paired=True),
]


def sample_pair(rng: np.random.Generator, split: str) -> TextPair:
    """A statement in both languages, aligned chunk by chunk, from `split`'s templates and fillers."""
    family = STATEMENTS[rng.integers(len(STATEMENTS))]
    index, values, held_out = _choose(family, rng, split)
    en, fr = (_render(t, values) for t in family.templates[index])
    en_chunks, fr_chunks = en.split(" | "), fr.split(" | ")
    return TextPair(family.name, tuple(zip(en_chunks, fr_chunks)), held_out)


def sample_sentence(rng: np.random.Generator, language: str, split: str) -> str:
    """A statement or a question in `language`, from `split`. (Answers are left out: short ones,
    "Seven.", are the same in both splits; dialogues have them.)"""
    if rng.random() < 0.5:
        return sample_pair(rng, split).text(language)
    return sample_question(rng, language, split).question


def sample_word_list(rng: np.random.Generator, language: str, split: str) -> str:
    """3-8 words in no grammatical order, each a word of a different sentence of `split` in `language`
    (so as frequent as in the sentences): speech whose words a recognizer must read from the audio,
    with no sentence around them to guess them from."""
    words = []
    for _ in range(int(rng.integers(3, 9))):
        sentence = sample_sentence(rng, language, split).split()
        words.append(sentence[rng.integers(len(sentence))].strip(".,?!"))
    return _sentence(" ".join(words)) + "."


def sample_question(rng: np.random.Generator, language: str, split: str) -> QuestionAnswer:
    """A question and its (correct) answer in `language`, from `split`."""
    side = _side(language)
    families = QUESTIONS if split == "train" else [f for f in QUESTIONS if f.slots]  # greetings: train only
    family = families[rng.integers(len(families))]
    index, values, held_out = _choose(family, rng, split)
    answer = family.answers[index if family.paired else rng.integers(len(family.answers))]
    question_text = _sentence(_render(family.templates[index][side], values).replace(" | ", " "))
    return QuestionAnswer(question_text, _sentence(_render(answer[side], values)), language, family.name, held_out)


def _choose(family: Family, rng: np.random.Generator, split: str) -> tuple[int, dict, bool]:
    """(template index, slot values, held out) for `split` under the held-out rule: draws until the
    sentence is of `split` (one in five is an eval one, so a few draws)."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}: choose train or eval")
    if split == "eval" and not family.slots:
        raise InputError(f"{family.name!r} has no eval sentences (a template without slots is always a train one)")
    while True:
        index = rng.integers(len(family.templates))
        picks = {s: fillers[rng.integers(len(fillers))] for s, fillers in family.slots.items()}
        values = _values(family, picks)
        held_out = _eval_sentence(family, index, values)
        if held_out == (split == "eval"):
            return index, values, held_out


def _eval_sentence(family: Family, index: int, values: dict) -> bool:
    """Whether template `index` rendered with `values` is an eval sentence: a stable coin on its
    text, the same on every machine and run."""
    if not family.slots:
        return False
    en, fr = (_render(t, values) for t in family.templates[index])
    return zlib.crc32(f"{en}\n{fr}".encode()) % EVAL_ONE_IN == 0


def _values(family: Family, picks: dict[str, SimpleNamespace]) -> dict:
    """Slot values plus the derived ones: `agree` (colour agreeing with the object), `sum`."""
    values = dict(picks)
    if "o" in picks and "c" in picks:
        values["agree"] = picks["c"].fr_f if picks["o"].g == "f" else picks["c"].fr_m
    if "a" in picks and "b" in picks:
        total = picks["a"].n + picks["b"].n
        values["sum"] = SimpleNamespace(en=V.number_words(total, "en"), fr=V.number_words(total, "fr"))
    return values


def _render(template: str, values: dict) -> str:
    return template.format(**values)


def _sentence(text: str) -> str:
    """Capitalized first letter, single spaces."""
    text = " ".join(text.split())
    return text[:1].upper() + text[1:]


def _side(language: str) -> int:
    if language not in ("en", "fr"):
        raise InputError(f"unknown language {language!r}: choose en or fr")
    return 0 if language == "en" else 1
