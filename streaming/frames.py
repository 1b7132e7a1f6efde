"""The small typed messages that travel between the network and the engine (design, example 3).

Network -> engine (through `Engine.submit`, a thread-safe queue): `Join`, `InputFrame`, `Leave`.
Engine -> one session (through the sink the session gave at admission): `SlotReady`, `OutputFrame`,
`EngineFailed`. Every field states its unit or shape. No torch here: PCM travels as numpy float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 24000  # Hz
FRAME_SAMPLES = 1920  # one 80 ms engine frame at 24 kHz


# ---------------------------------------------------------------- network -> engine
@dataclass(frozen=True)
class Join:
    session: int  # session id (unique per server)
    slot: int  # the slot the scheduler reserved for it


@dataclass(frozen=True)
class InputFrame:
    session: int
    pcm: np.ndarray  # float32 [FRAME_SAMPLES], 24 kHz mono, in [-1, 1]


@dataclass(frozen=True)
class Leave:
    session: int


# ---------------------------------------------------------------- engine -> session
@dataclass(frozen=True)
class SlotReady:
    """The slot was reset for this session: send the handshake now (reference §6.9)."""

    slot: int


@dataclass(frozen=True)
class OutputFrame:
    pcm: np.ndarray  # float32 [FRAME_SAMPLES], 24 kHz mono: the model's voice for this 80 ms
    text: int | None  # text token id of this frame, None when silent (PAD / EPAD)
    step: int  # frames this session has received from the model so far (0-based)


@dataclass(frozen=True)
class EngineFailed:
    """The engine stopped (an EngineError): close with 1011."""

    message: str
