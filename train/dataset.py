"""Training and evaluation examples of synthetic speech, each a pure function of (kind, seed, split,
index, backends) on a given machine: every random choice is drawn from one numpy Generator seeded
with (seed, kind, split, index), and the synthesizers are deterministic, so the same arguments give
the same samples bit for bit, whatever was generated before or alongside.

Kinds (`KINDS`), all at 24 kHz, PCM [C, T] float32 with one `Channel` per row:
- "asr": one speaker saying 1-3 sentences (or, for a chosen share, a word list), with leading and
  trailing silence, augmented (noise, reverberation, level); words timed. "tts": the same, level only
  (clean audio).
- "dialogue": row 0 the model, row 1 the user. 1-3 turns of question then answer, each turn
  either plain (a 0.2-0.8 s gap), overlapping (the answer starts 50-300 ms before the question
  ends), with a backchannel (the user makes a statement, the model says "mhm" in the pause, the
  user then asks), or interrupted (the user cuts into a long answer with a new question; the answer
  stops 0.1-0.5 s after the user starts, then the new question is answered). The user's row is
  augmented; the model's is clean, level only.
- "translation": row 0 the target (model) speech, row 1 the source; the target is placed so that
  every target word starts at least `lag_s` after the end of the last source word it depends on
  (`TextPair.word_alignment`), as Hibiki's training data are. Source augmented, target clean.

Splits: "train" draws training voices and texts, "eval" the held-out ones (`synth.held_out_voice`,
`texts` module rule), so no eval voice or sentence is ever trained on.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from antiphon.errors import InputError
from antiphon.train import augment, texts
from antiphon.train.alignment import Word, shift
from antiphon.train.synth import BACKENDS, LANGUAGES, SAMPLE_RATE, Utterance, Voice, backend, list_voices, synthesize
from antiphon.train.vocabulary import BACKCHANNELS, INTERRUPTIONS

KINDS = ("asr", "tts", "dialogue", "translation")
LANGUAGE_WEIGHTS = {"en": 0.6, "fr": 0.4}
RATE_RANGE = (0.8, 1.3)
PITCH_RANGE = (0.8, 1.25)
TURN_VARIANTS = {"plain": 0.45, "overlap": 0.15, "backchannel": 0.15, "interruption": 0.25}
MAX_CUT_S = 0.5  # an interrupted answer stops at most this long after the user starts
FADE_S = 0.02


@dataclasses.dataclass
class Channel:
    """One row of an example: who speaks, in what language and voice, and the words spoken
    (absolute times in seconds within the example)."""

    role: str
    language: str
    voice: dict  # {"voice": backend/name, "rate": factor, "pitch": factor}
    words: list[Word]

    @property
    def text(self) -> str:
        return " ".join(w for w, _, _ in self.words)


@dataclasses.dataclass
class Example:
    kind: str
    split: str
    seed: int
    index: int
    pcm: np.ndarray  # [C, T] float32 at SAMPLE_RATE
    channels: list[Channel]
    info: dict  # what else was drawn: augmentation, turn variants, alignment

    @property
    def duration(self) -> float:
        return self.pcm.shape[-1] / SAMPLE_RATE


def make_example(kind: str, seed: int, index: int, split: str = "train",
                 backends: tuple[str, ...] = BACKENDS, word_lists: float = 0.0) -> Example:
    """Example number `index` of `kind` for (`seed`, `split`), spoken by voices of `backends`
    only (all by default; espeak-ng alone is the fastest). asr and tts: a `word_lists` share of the
    examples say a word list (`texts.sample_word_list`) instead of sentences."""
    check_arguments(kind, seed, split, backends, word_lists)
    if index < 0:
        raise InputError(f"index must be non-negative, got {index}")
    rng = np.random.default_rng([seed, KINDS.index(kind), texts.SPLITS.index(split), index])
    draw = _Draw(rng, split, tuple(sorted(set(backends))), word_lists)
    make = {"asr": _speech, "tts": _speech, "dialogue": _dialogue, "translation": _translation}[kind]
    pcm, channels, info = make(draw, kind)
    return Example(kind, split, seed, index, pcm, channels, info)


def check_arguments(kind: str, seed: int, split: str, backends: tuple[str, ...], word_lists: float = 0.0) -> None:
    """Raise InputError unless `make_example` can take these."""
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}: choose from {', '.join(KINDS)}")
    if not 0 <= word_lists <= 1:
        raise InputError(f"the word-list share is in [0, 1], got {word_lists}")
    if word_lists and kind not in ("asr", "tts"):
        raise InputError(f"word lists are for asr and tts data, not {kind}")
    if split not in texts.SPLITS:
        raise InputError(f"unknown split {split!r}: choose train or eval")
    if seed < 0:
        raise InputError(f"seed must be non-negative, got {seed}")
    unknown = {b for b in backends if b.partition("/")[0] not in BACKENDS}
    if unknown or not backends:
        raise InputError(f"unknown backends {sorted(unknown)}: choose from {', '.join(BACKENDS)} "
                         "(or name voices as backend/voice)")


# ---------------------------------------------------------------------- kinds
def _speech(d: "_Draw", kind: str):
    language = d.language()
    if d.word_lists and d.rng.random() < d.word_lists:  # no draw at share 0: older datasets stay the same
        text = texts.sample_word_list(d.rng, language, d.split)
    else:
        text = " ".join(texts.sample_sentence(d.rng, language, d.split) for _ in range(int(d.rng.integers(1, 4))))
    utt = synthesize(text, d.voice(language))
    lead, tail = d.rng.uniform(0.1, 0.6, size=2)
    track = _Track()
    track.add(utt, float(lead))
    pcm = track.render(track.end + float(tail))
    pcm, applied = augment.random_augment(pcm, d.rng) if kind == "asr" else (augment.random_level(pcm, d.rng), {})
    return pcm[None], [Channel("speech", language, _describe(utt.voice), track.words)], {"augment": applied}


def _dialogue(d: "_Draw", kind: str):
    language = d.language()
    user_voice = d.voice(language)
    model_voice = d.voice(language, avoid=user_voice.key)
    model, user = _Track(), _Track()
    now, variants, interruptions = float(d.rng.uniform(0.2, 0.8)), [], []
    for _ in range(int(d.rng.integers(1, 4))):
        variant = _weighted(d.rng, TURN_VARIANTS)
        variants.append(variant)
        now = _turn(d, variant, language, user_voice, model_voice, user, model, now, interruptions)
        now += float(d.rng.uniform(0.3, 1.2))
    length = max(model.end, user.end) + float(d.rng.uniform(0.2, 0.6))
    user_pcm, applied = augment.random_augment(user.render(length), d.rng)
    model_pcm = augment.random_level(model.render(length), d.rng, -24.0, -18.0)
    channels = [Channel("model", language, _describe(model_voice), model.words),
                Channel("user", language, _describe(user_voice), user.words)]
    info = {"turns": variants, "interruptions": interruptions, "augment": {"user": applied}}
    return np.stack([model_pcm, user_pcm]), channels, info


def _turn(d: "_Draw", variant: str, language: str, user_voice: Voice, model_voice: Voice,
          user: "_Track", model: "_Track", now: float, interruptions: list[dict]) -> float:
    """Add one exchange starting at `now` to the two tracks; return when it ends. An interruption
    is recorded in `interruptions` as {user_starts_s, model_stops_s}."""
    rng = d.rng
    qa = texts.sample_question(rng, language, d.split)
    if variant == "backchannel":
        user.add(synthesize(texts.sample_pair(rng, d.split).text(language), user_voice), now)
        pause = float(rng.uniform(0.5, 0.9))
        backchannel = synthesize(BACKCHANNELS[language][rng.integers(len(BACKCHANNELS[language]))], model_voice)
        model.add(backchannel, user.speech_end + float(rng.uniform(0.05, 0.2)))
        now = user.speech_end + pause
    user.add(synthesize(qa.question, user_voice), now)
    if variant == "interruption":
        long_answer = synthesize(f"{qa.answer} {texts.sample_sentence(rng, language, d.split)}", model_voice)
        start = user.speech_end + float(rng.uniform(0.2, 0.6))
        model.add(long_answer, start)
        first_stop = start + long_answer.words[0][2]
        barge_in = float(rng.uniform(first_stop, max(first_stop, model.speech_end - 0.3)))
        stop = barge_in + float(rng.uniform(0.1, MAX_CUT_S))
        model.cut(stop)
        interruptions.append({"user_starts_s": round(barge_in, 4), "model_stops_s": round(stop, 4)})
        qa = texts.sample_question(rng, language, d.split)
        opener = INTERRUPTIONS[language][rng.integers(len(INTERRUPTIONS[language]))]
        interruption = synthesize(f"{opener} {qa.question[:1].lower()}{qa.question[1:]}", user_voice)
        user.add(interruption, barge_in - interruption.words[0][1])  # its first word starts at barge_in
    answer = synthesize(qa.answer, model_voice)
    gap = -float(rng.uniform(0.05, 0.3)) if variant == "overlap" else float(rng.uniform(0.2, 0.8))
    model.add(answer, max(user.speech_end + gap, user.words[-1][1] + 0.05) - answer.words[0][1])
    return model.speech_end


def _translation(d: "_Draw", kind: str):
    source_language = d.language()
    target_language = "fr" if source_language == "en" else "en"
    pair = texts.sample_pair(d.rng, d.split)
    source = synthesize(pair.text(source_language), d.voice(source_language))
    target = synthesize(pair.text(target_language), d.voice(target_language))
    depends_on = pair.word_alignment(source_language, target_language)
    lag = float(d.rng.uniform(0.3, 1.0))
    source_track, target_track = _Track(), _Track()
    source_track.add(source, float(d.rng.uniform(0.1, 0.5)))
    source_stops = [stop for _, _, stop in source_track.words]
    offset = max(source_stops[i] + lag - start for i, (_, start, _) in zip(depends_on, target.words))
    target_track.add(target, offset)
    length = max(source_track.end, target_track.end) + float(d.rng.uniform(0.2, 0.6))
    source_pcm, applied = augment.random_augment(source_track.render(length), d.rng)
    target_pcm = augment.random_level(target_track.render(length), d.rng, -24.0, -18.0)
    channels = [Channel("target", target_language, _describe(target.voice), target_track.words),
                Channel("source", source_language, _describe(source.voice), source_track.words)]
    info = {"lag_s": round(lag, 3), "alignment": depends_on, "augment": {"source": applied}}
    return np.stack([target_pcm, source_pcm]), channels, info


# ---------------------------------------------------------------------- helpers
class _Track:
    """Utterances placed on one channel's timeline; `words` in absolute seconds."""

    def __init__(self) -> None:
        self.pieces: list[tuple[int, np.ndarray]] = []
        self.words: list[Word] = []

    @property
    def end(self) -> float:
        """Where the last sample of audio ends, silence included."""
        return max((start + len(pcm) for start, pcm in self.pieces), default=0) / SAMPLE_RATE

    @property
    def speech_end(self) -> float:
        """Where the last word ends."""
        return max((stop for _, _, stop in self.words), default=0.0)

    def add(self, utt: Utterance, at_s: float) -> None:
        start = int(round(at_s * SAMPLE_RATE))
        self.pieces.append((start, utt.pcm))
        self.words += shift(utt.words, start / SAMPLE_RATE)

    def cut(self, at_s: float) -> None:
        """Silence everything from `at_s` on (with a `FADE_S` fade); drop the words that start
        after it and end the word in progress there."""
        cut = int(round(at_s * SAMPLE_RATE))
        fade = int(FADE_S * SAMPLE_RATE)
        kept = []
        for start, pcm in self.pieces:
            if start >= cut:
                continue
            pcm = pcm[: max(0, cut - start)].copy()
            ramp = min(fade, len(pcm))
            pcm[len(pcm) - ramp:] *= np.linspace(1.0, 0.0, ramp, dtype=np.float32)
            kept.append((start, pcm))
        self.pieces = kept
        self.words = [(w, a, min(b, round(at_s, 4))) for w, a, b in self.words if a < at_s]

    def render(self, length_s: float) -> np.ndarray:
        out = np.zeros(int(round(length_s * SAMPLE_RATE)), dtype=np.float32)
        for start, pcm in self.pieces:
            piece = pcm[: max(0, len(out) - start)]
            out[start:start + len(piece)] += piece
        return out


@functools.lru_cache(maxsize=None)
def _voices_by_backend(language: str, split: str, backends: tuple[str, ...]) -> dict[str, tuple[Voice, ...]]:
    """Voices of `language` by backend: those of the split for a backend named, and a voice named as
    backend/voice whatever its split (a one-voice dataset: the split then chooses only the texts)."""
    grouped: dict[str, list[Voice]] = {}
    for voice in list_voices(language):
        if (voice.backend in backends and voice.held_out == (split == "eval")) or voice.key in backends:
            grouped.setdefault(voice.backend, []).append(voice)
    return {name: tuple(voices) for name, voices in sorted(grouped.items())}


@dataclasses.dataclass(frozen=True)
class _Draw:
    """The random choices of one example: its generator, split, the backends it may use, and the
    share of word lists (asr, tts)."""

    rng: np.random.Generator
    split: str
    backends: tuple[str, ...]
    word_lists: float = 0.0

    def language(self) -> str:
        """en or fr by `LANGUAGE_WEIGHTS`, among the languages that have voices here."""
        weights = {lang: LANGUAGE_WEIGHTS[lang] for lang in LANGUAGES
                   if _voices_by_backend(lang, self.split, self.backends)}
        if not weights:
            raise InputError(f"no {self.split} voice of {', '.join(self.backends)} on this machine "
                             "(see train/apt-packages.txt)")
        return _weighted(self.rng, weights)

    def voice(self, language: str, avoid: str | None = None) -> Voice:
        """A voice of `language`: a backend uniformly (so espeak-ng's many voices do not crowd out
        the others), one of its voices uniformly (not `avoid` when another exists), then a rate and
        a pitch where the voice varies."""
        grouped = _voices_by_backend(language, self.split, self.backends)
        if not grouped:
            raise InputError(f"no {self.split} voice for language {language!r} among {', '.join(self.backends)}")
        names = list(grouped)
        choices = grouped[names[self.rng.integers(len(names))]]
        voice = choices[self.rng.integers(len(choices))]
        if voice.key == avoid and len(choices) > 1:
            voice = choices[(choices.index(voice) + 1) % len(choices)]
        rate, pitch = self.rng.uniform(*RATE_RANGE), self.rng.uniform(*PITCH_RANGE)
        varies_rate, varies_pitch = backend(voice.backend).varies(voice.name)
        return voice.with_prosody(round(rate, 3) if varies_rate else 1.0, round(pitch, 3) if varies_pitch else 1.0)


def _describe(voice: Voice) -> dict:
    return {"voice": voice.key, "rate": voice.rate, "pitch": voice.pitch}


def _weighted(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return names[rng.choice(len(names), p=p / p.sum())]
