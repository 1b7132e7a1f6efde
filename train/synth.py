"""Speech synthesizers for the training data: one interface over espeak-ng, flite and festival.

`synthesize(text, voice)` returns an `Utterance`: float32 mono PCM at 24 kHz and the text's words
(whitespace tokens, punctuation kept) with their start and stop times in seconds, taken from the
synthesizer's own timings (see `alignment` and each backend's module). A `Voice` names a backend
voice with a language and a relative rate and pitch (1.0 = the voice's default); `list_voices`
finds the voices installed on this machine. Every synthesizer here is deterministic: the same
(text, voice) gives the same samples on the same machine.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Protocol

import numpy as np

from antiphon.audio_io import resample
from antiphon.errors import AntiphonError, InputError
from antiphon.train import alignment

SAMPLE_RATE = 24000
LANGUAGES = ("en", "fr")
BACKENDS = ("espeak-ng", "flite", "festival")


class SynthesisError(AntiphonError):
    """A synthesizer is missing, failed, or returned audio its words cannot be placed in."""


@dataclasses.dataclass(frozen=True)
class Voice:
    """One voice of one backend. `rate` and `pitch` are factors on the voice's own defaults
    (rate 1.25 speaks 25% faster); a voice that cannot change one ignores it, as its backend's
    `varies(name)` says."""

    backend: str
    name: str
    language: str
    rate: float = 1.0
    pitch: float = 1.0

    @property
    def key(self) -> str:
        """backend/name: the voice's identity, whatever its rate and pitch."""
        return f"{self.backend}/{self.name}"

    @property
    def held_out(self) -> bool:
        """True for the voices kept for evaluation (`held_out_voice`)."""
        return held_out_voice(self)

    def with_prosody(self, rate: float, pitch: float) -> "Voice":
        return dataclasses.replace(self, rate=float(rate), pitch=float(pitch))


@dataclasses.dataclass(frozen=True)
class Utterance:
    """pcm: float32 [T] at `SAMPLE_RATE`; words: (word, start_s, stop_s), in text order."""

    pcm: np.ndarray
    words: list[alignment.Word]
    text: str
    voice: Voice

    @property
    def duration(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


class Synthesizer(Protocol):
    """A backend. `voices()` lists its installed voices at default prosody; `varies(name)` says
    whether that voice follows (rate, pitch); `synthesize_native` returns (int16 or float PCM [T],
    its sample rate, words timed in seconds)."""

    name: str

    def available(self) -> bool: ...

    def varies(self, voice_name: str) -> tuple[bool, bool]: ...

    def voices(self) -> list[Voice]: ...

    def synthesize_native(self, text: str, voice: Voice) -> tuple[np.ndarray, int, list[alignment.Word]]: ...


# Voices kept for evaluation. espeak-ng: every language x variant where the variant or the
# dialect is listed here; flite and festival: the named voices.
HELD_OUT = {
    "espeak-ng": {"variants": {"f4", "m6", "Alicia", "grandpa", "klatt3", "steph2", "travis", "norbert"},
                  "dialects": {"en-gb-scotland", "fr-ch"}},
    "flite": {"names": {"rms"}},
    "festival": {"names": {"ked_diphone"}},
}


def held_out_voice(voice: Voice) -> bool:
    """Whether `voice` is an evaluation voice: a rule on its name only, the same on every machine."""
    rule = HELD_OUT.get(voice.backend, {})
    if voice.backend == "espeak-ng":
        dialect, _, variant = voice.name.partition("+")
        return variant in rule["variants"] or dialect in rule["dialects"]
    return voice.name in rule.get("names", set())


@functools.lru_cache(maxsize=None)
def backend(name: str) -> Synthesizer:
    """The synthesizer of backend `name` (one of `BACKENDS`), created once per process."""
    if name == "espeak-ng":
        from antiphon.train.espeak import EspeakSynthesizer
        return EspeakSynthesizer()
    if name == "flite":
        from antiphon.train.flite import FliteSynthesizer
        return FliteSynthesizer()
    if name == "festival":
        from antiphon.train.festival import FestivalSynthesizer
        return FestivalSynthesizer()
    raise InputError(f"unknown synthesizer backend {name!r}: choose from {', '.join(BACKENDS)}")


@functools.lru_cache(maxsize=None)
def installed(name: str) -> bool:
    """Whether backend `name` can run here (asked once per process)."""
    return backend(name).available()


@functools.lru_cache(maxsize=None)
def _installed_voices() -> tuple[Voice, ...]:
    return tuple(v for name in BACKENDS if installed(name) for v in backend(name).voices())


def list_voices(language: str | None = None, split: str | None = None) -> list[Voice]:
    """The voices installed on this machine, sorted by key: every available backend's, for one
    `language` (en, fr) or all, and for one `split` ("train": not held out, "eval": held out) or both."""
    if language is not None and language not in LANGUAGES:
        raise InputError(f"unknown language {language!r}: choose from {', '.join(LANGUAGES)}")
    if split not in (None, "train", "eval"):
        raise InputError(f"unknown split {split!r}: choose train or eval")
    voices = [v for v in _installed_voices() if language in (None, v.language)]
    if split is not None:
        voices = [v for v in voices if v.held_out == (split == "eval")]
    return sorted(voices, key=lambda v: v.key)


def synthesize(text: str, voice: Voice) -> Utterance:
    """Speak `text` with `voice`: PCM at 24 kHz and every whitespace token of `text` timed."""
    if not text.split():
        raise InputError("cannot synthesize an empty text")
    if not installed(voice.backend):
        raise SynthesisError(f"{voice.backend} is not installed on this machine (see train/apt-packages.txt)")
    pcm, rate, words = backend(voice.backend).synthesize_native(text, voice)
    pcm = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else np.asarray(pcm, dtype=np.float32)
    pcm = resample(pcm[None], rate, SAMPLE_RATE)[0] if rate != SAMPLE_RATE else pcm
    if len(words) != len(text.split()):
        raise SynthesisError(f"{voice.key} timed {len(words)} words of the {len(text.split())} in {text!r}")
    words = alignment.tighten(words, pcm, SAMPLE_RATE)
    return Utterance(pcm=np.ascontiguousarray(pcm, dtype=np.float32), words=words, text=text, voice=voice)

