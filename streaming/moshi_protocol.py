"""The Moshi `/api/chat` binary protocol, sans I/O (reference kyutai-moshi-mimi.md §4.1, §4.2).

Every message is one binary WebSocket frame: byte 0 = kind, the rest = payload; integers little-endian.

| kind | message | direction | payload |
|---|---|---|---|
| 0x00 | `Handshake` | S→C | u32 protocol version + u32 model version (9 bytes in all; Python's server sends the kind byte alone) |
| 0x01 | `Audio` | both | Ogg/Opus bytes, 24 kHz mono (the first server message carries OpusHead/OpusTags) |
| 0x02 | `Text` | S→C | UTF-8 fragment, appended as is (a leading space starts a word) |
| 0x03 | `Control` | C→S | 1 byte: 0 start, 1 endTurn, 2 pause, 3 restart (servers ignore it in full streaming) |
| 0x04 | `Metadata` | S→C | UTF-8 JSON object (moshi-backend sends it before the handshake) |
| 0x05 | `Error` | S→C | UTF-8 message |
| 0x06 | `Ping` | either | empty |
| 0x07 | `ColoredText` | S→C | 1 byte colour + UTF-8 |

`parse_client_message` reads what a server receives (Audio, Control, Ping); `parse_server_message` what a
client receives (all but Control). A kind the direction does not carry (0x08 Image, 0x09 Codes, anything
unassigned, or a server-only kind sent by a client) comes back as `Unknown(kind, payload)`, which the caller
should discard, as Kyutai's servers and clients do. Malformed messages raise `ProtocolError`.
`build(message)` is the inverse of both parsers; it writes the 9-byte handshake (Rust's form).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

from .errors import (
    CLOSE_INVALID_DATA,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    MAX_MESSAGE_BYTES,
    ProtocolError,
)
from .query import check_range, get_float, get_int

PYTHON_HANDSHAKE = b"\x00"  # what moshi's Python server sends; parsed as Handshake(0, 0)
_U32 = struct.Struct("<II")
_U32_MAX = 2**32 - 1


class Kind(IntEnum):
    HANDSHAKE = 0
    AUDIO = 1
    TEXT = 2
    CONTROL = 3
    METADATA = 4
    ERROR = 5
    PING = 6
    COLORED_TEXT = 7
    IMAGE = 8  # moshi-server enum only; parsed as Unknown
    CODES = 9  # moshi-server enum only; parsed as Unknown


class ControlAction(IntEnum):
    START = 0
    END_TURN = 1
    PAUSE = 2
    RESTART = 3


@dataclass(frozen=True)
class Handshake:
    """Server ready: the client starts streaming microphone audio only after this."""

    protocol_version: int = 0  # u32
    model_version: int = 0  # u32
    KIND: ClassVar[Kind] = Kind.HANDSHAKE

    def __post_init__(self):
        for name in ("protocol_version", "model_version"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= _U32_MAX:
                raise ValueError(f"Handshake.{name} must be a u32, got {value!r}")


@dataclass(frozen=True)
class Audio:
    """Ogg/Opus bytes: one or more Ogg pages of a mono 24 kHz Opus stream."""

    ogg_bytes: bytes
    KIND: ClassVar[Kind] = Kind.AUDIO

    def __post_init__(self):
        object.__setattr__(self, "ogg_bytes", bytes(self.ogg_bytes))


@dataclass(frozen=True)
class Text:
    """A text fragment to append as is (a leading space means a new word)."""

    text: str
    KIND: ClassVar[Kind] = Kind.TEXT


@dataclass(frozen=True)
class Control:
    action: ControlAction
    KIND: ClassVar[Kind] = Kind.CONTROL

    def __post_init__(self):
        object.__setattr__(self, "action", ControlAction(self.action))


@dataclass(frozen=True)
class Metadata:
    """Server information as a JSON object (sampling settings, model files, build_info)."""

    data: dict = field(default_factory=dict)
    KIND: ClassVar[Kind] = Kind.METADATA


@dataclass(frozen=True)
class Error:
    message: str
    KIND: ClassVar[Kind] = Kind.ERROR


@dataclass(frozen=True)
class Ping:
    KIND: ClassVar[Kind] = Kind.PING


@dataclass(frozen=True)
class ColoredText:
    color: int  # u8
    text: str
    KIND: ClassVar[Kind] = Kind.COLORED_TEXT

    def __post_init__(self):
        if not isinstance(self.color, int) or not 0 <= self.color <= 255:
            raise ValueError(f"ColoredText.color must be a byte 0..255, got {self.color!r}")


@dataclass(frozen=True)
class Unknown:
    """A kind this direction does not carry: discard it (log it if you like)."""

    kind: int  # u8
    payload: bytes


Message = Handshake | Audio | Text | Control | Metadata | Error | Ping | ColoredText | Unknown

CLIENT_KINDS = frozenset({Kind.AUDIO, Kind.CONTROL, Kind.PING})
SERVER_KINDS = frozenset(set(Kind) - {Kind.CONTROL, Kind.IMAGE, Kind.CODES})


def parse_client_message(data: bytes | str, max_bytes: int | None = MAX_MESSAGE_BYTES) -> Message:
    """What a server receives: Audio, Control, Ping, or Unknown for any other kind. Raises ProtocolError."""
    return _parse(data, CLIENT_KINDS, max_bytes)


def parse_server_message(data: bytes | str, max_bytes: int | None = MAX_MESSAGE_BYTES) -> Message:
    """What a client receives: every kind but Control, or Unknown. Raises ProtocolError."""
    return _parse(data, SERVER_KINDS, max_bytes)


def build(message: Message) -> bytes:
    """The frame bytes of `message` (binary frame). Handshake is the 9-byte form."""
    if isinstance(message, Unknown):
        return bytes([message.kind]) + bytes(message.payload)
    kind = bytes([message.KIND])
    if isinstance(message, Handshake):
        return kind + _U32.pack(message.protocol_version, message.model_version)
    if isinstance(message, Audio):
        return kind + message.ogg_bytes
    if isinstance(message, (Text, Error)):
        return kind + (message.text if isinstance(message, Text) else message.message).encode("utf-8")
    if isinstance(message, Control):
        return kind + bytes([message.action])
    if isinstance(message, Metadata):
        return kind + json.dumps(message.data, ensure_ascii=False, allow_nan=False).encode("utf-8")
    if isinstance(message, Ping):
        return kind
    if isinstance(message, ColoredText):
        return kind + bytes([message.color]) + message.text.encode("utf-8")
    raise TypeError(f"not a Moshi protocol message: {type(message).__name__}")


def render_text_piece(piece: str) -> str:
    """A SentencePiece piece as the text to send: "▁" (U+2581) becomes a space ("▁hello" -> " hello").

    Which token ids are silent (0 and 3 for Moshi) is the engine's business, not the protocol's."""
    return piece.replace("\u2581", " ")


def _parse(data: Any, kinds: frozenset, max_bytes: int | None) -> Message:
    if isinstance(data, str):
        raise ProtocolError("text frame received: /api/chat messages are binary frames (kind byte + payload)",
                            CLOSE_UNSUPPORTED_DATA)
    data = bytes(data)
    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes is over the {max_bytes}-byte limit", CLOSE_TOO_BIG)
    if not data:
        raise ProtocolError("empty message: expected at least the kind byte")
    kind, payload = data[0], data[1:]
    if kind not in kinds:
        return Unknown(kind, payload)
    kind = Kind(kind)
    if kind == Kind.HANDSHAKE:
        if len(payload) == 0:
            return Handshake()
        if len(payload) != _U32.size:
            raise ProtocolError(f"Handshake payload must be 0 or 8 bytes (two u32), got {len(payload)}")
        return Handshake(*_U32.unpack(payload))
    if kind == Kind.AUDIO:
        return Audio(payload)
    if kind == Kind.TEXT:
        return Text(_utf8(payload, "Text"))
    if kind == Kind.CONTROL:
        if len(payload) != 1:
            raise ProtocolError(f"Control payload must be exactly 1 byte, got {len(payload)}")
        if payload[0] not in ControlAction._value2member_map_:
            raise ProtocolError(f"bad Control byte {payload[0]}: expected 0 start, 1 endTurn, 2 pause or 3 restart")
        return Control(ControlAction(payload[0]))
    if kind == Kind.METADATA:
        return Metadata(_json_object(payload))
    if kind == Kind.ERROR:
        return Error(_utf8(payload, "Error"))
    if kind == Kind.PING:
        if payload:
            raise ProtocolError(f"Ping carries no payload, got {len(payload)} bytes")
        return Ping()
    if kind == Kind.COLORED_TEXT:
        if not payload:
            raise ProtocolError("ColoredText payload must start with a colour byte, got nothing")
        return ColoredText(payload[0], _utf8(payload[1:], "ColoredText"))
    raise AssertionError(kind)  # unreachable: kinds is a subset of the cases above


def _utf8(payload: bytes, what: str) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what} payload is not valid UTF-8 ({e.reason} at byte {e.start})", CLOSE_INVALID_DATA) from None


def _json_object(payload: bytes) -> dict:
    text = _utf8(payload, "Metadata")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"Metadata payload is not valid JSON: {str(e)[:80]}", CLOSE_INVALID_DATA) from None
    if not isinstance(value, dict):
        raise ProtocolError(f"Metadata payload must be a JSON object, got {type(value).__name__}", CLOSE_INVALID_DATA)
    return value


# ---------------------------------------------------------------------------------------------------------
# Query parameters of the web client (reference §4.1)

KNOWN_QUERY_KEYS = frozenset({
    # read into SamplingParams
    "text_temperature", "text_topk", "audio_temperature", "audio_topk", "pad_mult",
    "text_seed", "audio_seed", "repetition_penalty_context", "repetition_penalty", "max_steps",
    # sent by the web client or used by auth, not sampling: accepted and left to others
    "worker_auth_id", "auth_id", "email", "image_url", "image_resolution",
})
MAX_STEPS = 4500  # moshi-backend's cap: 4500 steps = 6 min at 12.5 Hz


@dataclass(frozen=True)
class SamplingParams:
    """Per-session sampling, as Rust moshi-backend reads it from the /api/chat query.

    Defaults are moshi-backend's when a key is absent (not the web client's own defaults, which it always
    sends). temperature <= 0 means argmax; top-k 0 means no top-k; seed None lets the engine pick one."""

    text_temperature: float = 0.8
    text_topk: int = 250
    audio_temperature: float = 0.8
    audio_topk: int = 250
    pad_mult: float = 0.0  # PAD probability multiplied by exp(pad_mult)
    repetition_penalty_context: int = 64  # last N non-special text tokens
    repetition_penalty: float = 1.0  # 1.0 = off; positive logits divided, negative multiplied
    text_seed: int | None = None
    audio_seed: int | None = None
    max_steps: int = MAX_STEPS  # 80 ms steps; clamped to MAX_STEPS

    @classmethod
    def from_query(cls, query: Mapping[str, Any]) -> SamplingParams:
        """Read the known keys (see KNOWN_QUERY_KEYS; others are ignored). Raises ProtocolError (1007) on
        a non-numeric or out-of-range value. max_steps above 4500 is clamped to 4500, as moshi-backend does."""
        d = cls()
        floats = ("text_temperature", "audio_temperature", "pad_mult", "repetition_penalty")
        ints = ("text_topk", "audio_topk", "repetition_penalty_context", "text_seed", "audio_seed", "max_steps")
        p = {name: get_float(query, name, getattr(d, name)) for name in floats}
        p.update({name: get_int(query, name, getattr(d, name)) for name in ints})
        for name in ("text_temperature", "audio_temperature", "text_topk", "audio_topk", "repetition_penalty_context"):
            check_range(name, p[name], lo=0)
        check_range("pad_mult", p["pad_mult"], lo=-100, hi=100)
        check_range("repetition_penalty", p["repetition_penalty"], lo=1e-6)
        for name in ("text_seed", "audio_seed"):
            check_range(name, p[name], lo=0, hi=2**64 - 1)
        check_range("max_steps", p["max_steps"], lo=1)
        p["max_steps"] = min(p["max_steps"], MAX_STEPS)
        return cls(**p)
