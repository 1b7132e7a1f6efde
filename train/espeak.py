"""espeak-ng through its C library (libespeak-ng.so.1, via ctypes), for the word events the command
line cannot print.

Each synthesis runs in a forked child process (see `_in_child`), for determinism. The library
synthesizes synchronously into a callback that receives the audio and, with it, events:
a WORD event at the exact output sample where the synthesis of each word begins (with the word's
character position in the text), and an END event where each clause ends, before its pause. A
token starts at its first WORD event and stops at the next token's start or the clause end,
whichever comes first; `alignment.tighten` then trims the silence the span still holds.

Voices are a dialect (en, en-us, fr, fr-be, ...) with an optional variant (+f3, +m2, +klatt,
...): every dialect of espeak-ng's English and French (mbrola voices excluded: they need non-free
data) with no variant and with each variant under espeak-ng-data/voices/!v. Rate maps to words per
minute (175 x rate), pitch to espeak's 0-100 pitch parameter (50 x pitch).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np

from antiphon.train import alignment
from antiphon.train.synth import LANGUAGES, SynthesisError, Voice

LIBRARY = "libespeak-ng.so.1"
DEFAULT_WPM = 175
DEFAULT_PITCH = 50
# Variants that are effects rather than voices, and one whose name has a space.
EXCLUDED_VARIANTS = {"Demonic", "UniRobot", "anikaRobot", "croak", "Mr serious"}

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED, _EVENT_WORD, _EVENT_END = 0, 1, 5
_PARAM_RATE, _PARAM_PITCH = 1, 3


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class EspeakSynthesizer:
    name = "espeak-ng"

    def __init__(self) -> None:
        self._lib = None
        self._lock = threading.Lock()  # the library has one global state
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int]] = []  # (type, text_position, sample)
        self._callback = _Callback(self._receive)

    def available(self) -> bool:
        try:
            ctypes.CDLL(LIBRARY)
        except OSError:
            return False
        return shutil.which("espeak-ng") is not None

    def varies(self, voice_name: str) -> tuple[bool, bool]:
        return True, True

    def voices(self) -> list[Voice]:
        variants = [""] + [f"+{v}" for v in _variants() if v not in EXCLUDED_VARIANTS]
        return [Voice("espeak-ng", dialect + variant, language)
                for language in LANGUAGES for dialect in _dialects(language) for variant in variants]

    def synthesize_native(self, text: str, voice: Voice) -> tuple[np.ndarray, int, list[alignment.Word]]:
        with self._lock:
            _, sample_rate = self._library()
            pcm, events = _in_child(self._synthesize_here, text, voice)
        return pcm, sample_rate, _words(text, events, len(pcm), sample_rate)

    def _synthesize_here(self, text: str, voice: Voice) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        lib, _ = self._library()
        if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise SynthesisError(f"espeak-ng has no voice {voice.name!r}")
        lib.espeak_SetParameter(_PARAM_RATE, int(round(DEFAULT_WPM * voice.rate)), 0)
        lib.espeak_SetParameter(_PARAM_PITCH, int(np.clip(round(DEFAULT_PITCH * voice.pitch), 0, 100)), 0)
        self._chunks, self._events = [], []
        data = text.encode()
        if lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
            raise SynthesisError(f"espeak-ng failed on {text!r}")
        lib.espeak_Synchronize()
        return (np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)), self._events

    def _library(self):
        if self._lib is None:
            lib = ctypes.CDLL(LIBRARY)
            sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_DONT_EXIT)
            if sample_rate <= 0:
                raise SynthesisError("espeak-ng failed to initialize (is espeak-ng-data installed?)")
            lib.espeak_SetSynthCallback(self._callback)
            self._lib, self._sample_rate = lib, sample_rate
        return self._lib, self._sample_rate

    def _receive(self, wav, num_samples: int, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            self._events.append((event.type, event.text_position, event.sample))
            i += 1
        return 0


def _words(text: str, events: list[tuple[int, int, int]], num_samples: int, sample_rate: int) -> list[alignment.Word]:
    """Token timings from WORD events (1-based character positions) and clause END events.

    A token starts at its WORD event and stops at the next token's event or at its clause's end.
    espeak-ng speaks a few token pairs as one lexicon entry ("I am") with one WORD event: such a
    run of tokens shares the span of its event, divided by character count."""
    tokens = text.split()
    spans = alignment.token_spans(text)
    starts: list[int | None] = [None] * len(spans)
    for kind, position, sample in events:
        token = _token_at(spans, position - 1) if kind == _EVENT_WORD else None
        if token is not None and starts[token] is None:
            starts[token] = sample
    starts[0] = starts[0] if starts[0] is not None else 0
    clause_ends = sorted(sample for kind, _, sample in events if kind == _EVENT_END) + [num_samples]
    words, i = [], 0
    while i < len(tokens):
        j = next((k for k in range(i + 1, len(tokens)) if starts[k] is not None), len(tokens))
        begin = starts[i]
        end = min(starts[j] if j < len(tokens) else num_samples, next(e for e in clause_ends if e > begin))
        sizes = np.cumsum([0] + [len(t) for t in tokens[i:j]])
        for k in range(i, j):
            a = begin + (end - begin) * sizes[k - i] / sizes[-1]
            b = begin + (end - begin) * sizes[k - i + 1] / sizes[-1]
            words.append((tokens[k], float(a / sample_rate), float(b / sample_rate)))
        i = j
    return words


def _in_child(fn, *args):
    """`fn(*args)` run in a forked child, its result (or error) sent back through a pipe.

    libespeak-ng keeps its wave generator's state (pitch-period phase, buffers) from one synthesis
    to the next, so the same text comes out a little different each time in one process. The
    parent initializes the library and never synthesizes; each child starts from that same state
    and exits, so the same (text, voice) gives the same samples every time.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(read_end)
            try:
                payload = pickle.dumps((True, fn(*args)))
            except BaseException as e:  # sent to the parent, raised there
                payload = pickle.dumps((False, SynthesisError(str(e))))
            with os.fdopen(write_end, "wb") as out:
                out.write(payload)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as source:
        payload = source.read()
    os.waitpid(pid, 0)
    if not payload:
        raise SynthesisError("the espeak-ng synthesis process died without an answer")
    ok, result = pickle.loads(payload)
    if not ok:
        raise result
    return result


def _token_at(spans: list[tuple[int, int]], char: int) -> int | None:
    for i, (start, end) in enumerate(spans):
        if start <= char < end:
            return i
    return None


def _dialects(language: str) -> list[str]:
    """espeak-ng's dialects of `language`, from `espeak-ng --voices=LANG` (mbrola voices excluded),
    named as the library's `espeak_SetVoiceByName` finds them: by their voice file (en, en-us, fr, fr-be)."""
    out = subprocess.run(["espeak-ng", f"--voices={language}"], capture_output=True, text=True, check=True).stdout
    dialects = []
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5 and not fields[4].startswith("mb/") and fields[1].split("-")[0] == language:
            dialects.append(fields[4].rsplit("/", 1)[-1].lower())
    return sorted(set(dialects))


def _variants() -> list[str]:
    """Variant names: the files under espeak-ng-data/voices/!v."""
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    data = Path(out.rsplit("Data at:", 1)[-1].strip())
    return sorted(p.name for p in (data / "voices" / "!v").iterdir() if p.is_file())
