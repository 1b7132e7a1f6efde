"""The small typed messages that travel between the network and the engine (design, example 3).

Network -> engine (through `Engine.submit`, a thread-safe queue): `Join`, `Leave`, and a session's
inputs, kept in its order: `InputFrame` (audio), `EndOfInput` (translation: the source ended),
`TextIn` (TTS: words), `VoiceIn` (TTS: a speaker embedding).
Engine -> one session (through the sink the session gave at admission): `SlotReady`, then per step one of
`OutputFrame` (dialogue, translation), `TextFrame` (speech to text), `VoiceFrame` (text to speech), and
`EngineFailed`. Every field states its unit or shape. No torch here: PCM travels as numpy float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 24000  # Hz
FRAME_SAMPLES = 1920  # one 80 ms engine frame at 24 kHz
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE


# ---------------------------------------------------------------- network -> engine
@dataclass(frozen=True)
class Join:
    session: int  # session id (unique per server)
    slot: int  # the slot the scheduler reserved for it


@dataclass(frozen=True)
class Leave:
    session: int


@dataclass(frozen=True)
class InputFrame:
    session: int
    pcm: np.ndarray  # float32 [FRAME_SAMPLES], 24 kHz mono, in [-1, 1]


@dataclass(frozen=True)
class EndOfInput:
    """Translation: the source audio ended (after the frames sent before it); TTS: no more words."""

    session: int


@dataclass(frozen=True)
class TextIn:
    """TTS: whole words to speak, in order."""

    session: int
    text: str


@dataclass(frozen=True)
class VoiceIn:
    """TTS: the voice to speak with, before any word (a speaker embedding, float32 [1, C, T])."""

    session: int
    embedding: np.ndarray


SessionInput = InputFrame | EndOfInput | TextIn | VoiceIn


# ---------------------------------------------------------------- engine -> session
@dataclass(frozen=True)
class SlotReady:
    """The slot was reset for this session: send the handshake now (reference §6.9)."""

    slot: int


@dataclass(frozen=True)
class OutputFrame:
    """Dialogue and translation: one 80 ms frame of the model's voice and its text."""

    pcm: np.ndarray  # float32 [FRAME_SAMPLES], 24 kHz mono: the model's voice for this 80 ms
    text: int | None  # text token id of this frame, None when silent (PAD / EPAD)
    step: int  # frames this session has received from the model so far (0-based)
    end: bool = False  # translation: the model ended its translation after the source ended


@dataclass(frozen=True)
class TextFrame:
    """Speech to text: the text token of one step, on the session's audio clock."""

    token: int  # the raw text token (PAD and word-start ids included: words are built from them)
    time: float  # seconds on the client's audio clock where this token sits (its audio frame's start)
    step: int  # model steps done for this session (0-based)
    consumed: int  # the session's audio frames the model has taken so far
    pause: tuple[float, ...] | None  # per VAD head, P(no voice activity); None for models without heads


@dataclass(frozen=True)
class TimedWord:
    text: str
    start: float  # seconds on the session's output audio clock
    stop: float


@dataclass(frozen=True)
class VoiceFrame:
    """Text to speech: one step's audio (None before the audio delay has passed) and the words spoken."""

    pcm: np.ndarray | None  # float32 [FRAME_SAMPLES] or None
    words: tuple[TimedWord, ...]  # words whose timing became known this step
    end: bool  # the last frame of the utterance: the session is done


@dataclass(frozen=True)
class EngineFailed:
    """The engine stopped (an EngineError): close with 1011."""

    message: str
