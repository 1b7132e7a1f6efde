"""Kyutai's STT and TTS WebSocket protocols (moshi-server), sans I/O.

Reference: kyutai-stt-tts-hibiki-unmute.md §1.6 (`/api/asr-streaming`), §2.6 (`/api/tts_streaming`);
kyutai-moshi-mimi.md §4.3. Each binary frame is one MessagePack map whose `"type"` string names the
message, fields beside it (serde `tag = "type"`, struct-map). Unknown extra keys are ignored, as serde does.

| endpoint | direction | messages |
|---|---|---|
| STT | C→S `parse_stt_client` | `Audio(pcm)`, `OggOpus(data)`, `Marker(id)` |
| STT | S→C `parse_stt_server` | `Ready`, `Word(text, start_time)`, `EndWord(stop_time)`, `Step(step_idx, prs, buffered_pcm)`, `Marker(id)`, `Error(message)` |
| TTS | C→S `parse_tts_client` | `Text(text)`, `Eos`, `Voice(embeddings, shape)`; also a text frame (= Text) and the one byte 0x00 (= Eos) |
| TTS | S→C `parse_tts_server` | `Ready`, `TimedText(text, start_s, stop_s)` (wire type "Text"), `Audio(pcm)`, `OggOpus(data)`, `Error(message)` |

The TTS output depends on the `format` query (`TtsFormat`): the *MessagePack formats send the maps above;
raw `OggOpus` sends bare Ogg bytes and raw `Pcm` bare little-endian float32 samples, with nothing else.
`build(message)` writes the MessagePack map (float32 arrays as MessagePack float 32, like Kyutai's
clients; times as float 64, like Rust's f64). Every malformed input raises `ProtocolError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, ClassVar

import msgpack
import numpy as np

from .errors import (
    CLOSE_INVALID_DATA,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    MAX_MESSAGE_BYTES,
    ProtocolError,
)
from .query import check_range, get_float, get_int, get_str

SAMPLE_RATE = 24000
EOS_BYTE = b"\x00"  # a binary frame of this one byte ends the TTS text, like {"type": "Eos"}
_I64 = (-(2**63), 2**63 - 1)


def _readonly_f32(values: Any, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float32)
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D [T], got shape {a.shape}")
    if a.flags.writeable:
        a = a.copy()
        a.flags.writeable = False
    return a


class _ArrayEq:
    """Equality for the dataclasses that hold a numpy array (dataclass eq would compare arrays elementwise)."""

    __hash__ = None

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(np.array_equal(getattr(self, f), getattr(other, f)) for f in (f.name for f in fields(self)))


@dataclass(frozen=True)
class Ready:
    """A slot was allocated for this session."""

    TYPE: ClassVar[str] = "Ready"


@dataclass(frozen=True)
class Error:
    message: str
    TYPE: ClassVar[str] = "Error"


@dataclass(frozen=True)
class Marker:
    """STT: echoed back once all audio sent before it is processed, plus the model's delay."""

    id: int  # i64
    TYPE: ClassVar[str] = "Marker"


@dataclass(frozen=True, eq=False)
class Audio(_ArrayEq):
    """PCM: [T] float32, mono, 24 kHz, nominally in [-1, 1] (STT input; TTS output, 1920 per message)."""

    pcm: np.ndarray
    TYPE: ClassVar[str] = "Audio"

    def __post_init__(self):
        object.__setattr__(self, "pcm", _readonly_f32(self.pcm, "Audio.pcm"))


@dataclass(frozen=True)
class OggOpus:
    """Ogg/Opus bytes, mono 24 kHz (the first TTS message carries the Ogg header pages)."""

    data: bytes
    TYPE: ClassVar[str] = "OggOpus"

    def __post_init__(self):
        object.__setattr__(self, "data", bytes(self.data))


@dataclass(frozen=True)
class Word:
    """STT: a word starts at `start_time` seconds on the input-audio clock."""

    text: str
    start_time: float  # s
    TYPE: ClassVar[str] = "Word"


@dataclass(frozen=True)
class EndWord:
    """STT: the last word ended at `stop_time` seconds."""

    stop_time: float  # s
    TYPE: ClassVar[str] = "EndWord"


@dataclass(frozen=True)
class Step:
    """STT, once per 80 ms step for models with VAD heads. prs[i]: pause probability of head i (float32)."""

    step_idx: int
    prs: tuple[float, ...]
    buffered_pcm: int  # samples still queued server-side for this client
    TYPE: ClassVar[str] = "Step"

    def __post_init__(self):
        object.__setattr__(self, "prs", tuple(float(p) for p in self.prs))


@dataclass(frozen=True)
class Text:
    """TTS input: words to speak (send whole words)."""

    text: str
    TYPE: ClassVar[str] = "Text"


@dataclass(frozen=True)
class Eos:
    """TTS input: no more text; the server closes after the audio is out."""

    TYPE: ClassVar[str] = "Eos"


@dataclass(frozen=True, eq=False)
class Voice(_ArrayEq):
    """TTS input: a custom voice embedding, flat float32 values of `shape` (row-major); before any text."""

    embeddings: np.ndarray  # [prod(shape)] float32
    shape: tuple[int, ...]
    TYPE: ClassVar[str] = "Voice"

    def __post_init__(self):
        object.__setattr__(self, "embeddings", _readonly_f32(np.ravel(self.embeddings), "Voice.embeddings"))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if math.prod(self.shape) != len(self.embeddings) or not self.shape or min(self.shape) < 0:
            raise ValueError(f"Voice.shape {list(self.shape)} does not hold {len(self.embeddings)} values")


@dataclass(frozen=True)
class TimedText:
    """TTS output (wire type "Text"): a word spoken from `start_s` to `stop_s` on the output-audio clock."""

    text: str
    start_s: float  # s
    stop_s: float  # s
    TYPE: ClassVar[str] = "Text"


SttClientMessage = Audio | OggOpus | Marker
SttServerMessage = Ready | Word | EndWord | Step | Marker | Error
TtsClientMessage = Text | Eos | Voice
TtsServerMessage = Ready | TimedText | Audio | OggOpus | Error
Message = SttClientMessage | SttServerMessage | TtsClientMessage | TtsServerMessage


class TtsFormat(str, Enum):
    OGG_OPUS = "OggOpus"  # default: raw Ogg bytes, audio only
    OGG_OPUS_MSGPACK = "OggOpusMessagePack"
    PCM = "Pcm"  # raw little-endian float32, audio only
    PCM_MSGPACK = "PcmMessagePack"

    @property
    def is_msgpack(self) -> bool:
        return self in (TtsFormat.OGG_OPUS_MSGPACK, TtsFormat.PCM_MSGPACK)


@dataclass(frozen=True)
class TtsQuery:
    """The /api/tts_streaming query. `voice` is a path in the voices repo. The sampling knobs are those of
    moshi-server's native Tts module (its defaults: seed 42, temperature 0.8, top_k 250); None = the model's."""

    format: TtsFormat = TtsFormat.OGG_OPUS
    voice: str | None = None
    seed: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    cfg_alpha: float | None = None
    max_seq_len: int | None = None

    KNOWN_KEYS: ClassVar[frozenset] = frozenset(
        {"format", "voice", "seed", "temperature", "top_k", "cfg_alpha", "max_seq_len", "auth_id"})

    @classmethod
    def from_query(cls, query: Mapping[str, Any]) -> TtsQuery:
        """Read the known keys (KNOWN_KEYS; others ignored). Raises ProtocolError (1007) on a bad value."""
        fmt = get_str(query, "format")
        by_name = {f.value.lower(): f for f in TtsFormat}
        if fmt is not None and fmt.lower() not in by_name:
            names = ", ".join(f.value for f in TtsFormat)
            raise ProtocolError(f"unknown TTS format {fmt[:40]!r}: expected one of {names}", CLOSE_INVALID_DATA)
        q = cls(format=by_name[fmt.lower()] if fmt is not None else TtsFormat.OGG_OPUS,
                voice=get_str(query, "voice"), seed=get_int(query, "seed", None),
                temperature=get_float(query, "temperature", None), top_k=get_int(query, "top_k", None),
                cfg_alpha=get_float(query, "cfg_alpha", None), max_seq_len=get_int(query, "max_seq_len", None))
        check_range("seed", q.seed, 0, 2**64 - 1)
        check_range("temperature", q.temperature, lo=0)
        check_range("top_k", q.top_k, lo=0)
        check_range("max_seq_len", q.max_seq_len, lo=1)
        return q


# ---------------------------------------------------------------------------------------------------------
# Building

def _f32_array(a: np.ndarray) -> bytes:
    """A MessagePack array of float 32 (0xca + big-endian f32 per element)."""
    n = len(a)
    if n < 16:
        head = bytes([0x90 | n])
    else:
        head = b"\xdc" + n.to_bytes(2, "big") if n < 2**16 else b"\xdd" + n.to_bytes(4, "big")
    body = np.empty(n, dtype=[("tag", "u1"), ("value", ">f4")])
    body["tag"], body["value"] = 0xCA, a
    return head + body.tobytes()


def _fields(message: Message) -> list[tuple[str, bytes]]:
    pack = msgpack.packb
    if isinstance(message, Audio):
        return [("pcm", _f32_array(message.pcm))]
    if isinstance(message, Step):
        return [("step_idx", pack(message.step_idx)), ("prs", _f32_array(np.asarray(message.prs, np.float32))),
                ("buffered_pcm", pack(message.buffered_pcm))]
    if isinstance(message, Voice):
        return [("embeddings", _f32_array(message.embeddings)), ("shape", pack(list(message.shape)))]
    floats = {"start_time", "stop_time", "start_s", "stop_s"}
    return [(name, pack(float(getattr(message, name)) if name in floats else getattr(message, name), use_bin_type=True))
            for name in (f.name for f in fields(message))]


def build(message: Message) -> bytes:
    """The MessagePack frame of any STT/TTS message: {"type": TYPE, fields...}, "type" first."""
    if not hasattr(message, "TYPE"):
        raise TypeError(f"not a Kyutai STT/TTS message: {type(message).__name__}")
    items = [("type", msgpack.packb(message.TYPE))] + _fields(message)
    return bytes([0x80 | len(items)]) + b"".join(msgpack.packb(k) + v for k, v in items)


def build_tts_server(message: TtsServerMessage, fmt: TtsFormat) -> bytes | None:
    """The frame for `message` in TTS output format `fmt`, or None when `fmt` does not carry it (raw formats
    send audio only: Ready, TimedText and Error are not sent; close the socket instead of sending Error)."""
    fmt = TtsFormat(fmt)
    pcm_format = fmt in (TtsFormat.PCM, TtsFormat.PCM_MSGPACK)
    if (isinstance(message, Audio) and not pcm_format) or (isinstance(message, OggOpus) and pcm_format):
        raise ValueError(f"{type(message).__name__} cannot be sent in TTS format {fmt.value}")
    if fmt.is_msgpack:
        return build(message)
    if isinstance(message, Audio):
        return message.pcm.astype("<f4").tobytes()
    if isinstance(message, OggOpus):
        return message.data
    return None


# ---------------------------------------------------------------------------------------------------------
# Parsing

def parse_stt_client(data: bytes | str, max_bytes: int | None = MAX_MESSAGE_BYTES) -> SttClientMessage:
    """What the STT server receives: Audio, OggOpus or Marker."""
    return _parse_map(data, max_bytes, _STT_CLIENT, "STT client")


def parse_stt_server(data: bytes | str, max_bytes: int | None = MAX_MESSAGE_BYTES) -> SttServerMessage:
    """What an STT client receives: Ready, Word, EndWord, Step, Marker or Error."""
    return _parse_map(data, max_bytes, _STT_SERVER, "STT server")


def parse_tts_client(data: bytes | str, max_bytes: int | None = MAX_MESSAGE_BYTES) -> TtsClientMessage:
    """What the TTS server receives: a text frame (= Text), the byte 0x00 (= Eos), or a Text/Eos/Voice map."""
    if isinstance(data, str):
        _check_size(len(data.encode("utf-8")), max_bytes)
        return Text(data)
    if bytes(data) == EOS_BYTE:
        return Eos()
    return _parse_map(data, max_bytes, _TTS_CLIENT, "TTS client")


def parse_tts_server(data: bytes | str, fmt: TtsFormat = TtsFormat.OGG_OPUS,
                     max_bytes: int | None = MAX_MESSAGE_BYTES) -> TtsServerMessage:
    """What a TTS client receives in format `fmt`: the maps, or bare Ogg bytes / bare float32 PCM."""
    fmt = TtsFormat(fmt)
    if fmt.is_msgpack:
        return _parse_map(data, max_bytes, _TTS_SERVER, "TTS server")
    data = _binary(data, max_bytes)
    if fmt == TtsFormat.OGG_OPUS:
        return OggOpus(data)
    if len(data) % 4:
        raise ProtocolError(f"raw Pcm frame of {len(data)} bytes is not a whole number of float32 samples")
    return Audio(_finite(np.frombuffer(data, "<f4").astype(np.float32), "pcm"))


def _binary(data: Any, max_bytes: int | None) -> bytes:
    if isinstance(data, str):
        raise ProtocolError("text frame received where this protocol sends binary frames", CLOSE_UNSUPPORTED_DATA)
    data = bytes(data)
    _check_size(len(data), max_bytes)
    return data


def _check_size(n: int, max_bytes: int | None) -> None:
    if max_bytes is not None and n > max_bytes:
        raise ProtocolError(f"message of {n} bytes is over the {max_bytes}-byte limit", CLOSE_TOO_BIG)


def _parse_map(data: Any, max_bytes: int | None, table: dict, who: str):
    data = _binary(data, max_bytes)
    if not data:
        raise ProtocolError("empty message: expected a MessagePack map with a \"type\" key")
    fast = _fast_audio(data) if "Audio" in table else None
    if fast is not None:
        return Audio(_finite(fast, "pcm"))
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except UnicodeDecodeError as e:
        raise ProtocolError(f"MessagePack string is not valid UTF-8 ({e.reason})", CLOSE_INVALID_DATA) from None
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise ProtocolError(f"not a MessagePack message ({type(e).__name__}: {str(e)[:60]})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"message must be a MessagePack map with a \"type\" key, got {_kind(obj)}")
    kind = obj.get("type")
    if kind is None:
        raise ProtocolError(f"message has no \"type\" key (keys: {', '.join(map(str, list(obj)[:8]))})")
    if not isinstance(kind, str):
        raise ProtocolError(f"\"type\" must be a string, got {_kind(kind)}")
    if kind not in table:
        raise ProtocolError(f"unknown {who} message type {kind[:40]!r}: expected one of {', '.join(table)}")
    return table[kind](_Fields(obj, kind))


def _kind(value: Any) -> str:
    names = {dict: "a map", list: "an array", str: "a string", bytes: "binary", bool: "a boolean", type(None): "nil"}
    return names.get(type(value), type(value).__name__)


class _Fields:
    """Typed access to one message's fields, raising ProtocolError that names the message and the field."""

    def __init__(self, obj: dict, kind: str):
        self.obj, self.kind = obj, kind

    def _get(self, name: str) -> Any:
        if name not in self.obj:
            raise ProtocolError(f"{self.kind} message has no {name!r} field")
        return self.obj[name]

    def _wrong(self, name: str, want: str, got: Any) -> ProtocolError:
        return ProtocolError(f"{self.kind}.{name} must be {want}, got {_kind(got)}")

    def str(self, name: str) -> str:
        v = self._get(name)
        if not isinstance(v, str):
            raise self._wrong(name, "a string", v)
        return v

    def int(self, name: str, lo: int, hi: int) -> int:
        v = self._get(name)
        if type(v) is not int:
            raise self._wrong(name, "an integer", v)
        if not lo <= v <= hi:
            raise ProtocolError(f"{self.kind}.{name} = {v} is outside [{lo}, {hi}]", CLOSE_INVALID_DATA)
        return v

    def float(self, name: str) -> float:
        v = self._get(name)
        if type(v) not in (int, float):
            raise self._wrong(name, "a number", v)
        if not math.isfinite(v):
            raise ProtocolError(f"{self.kind}.{name} must be finite, got {v}", CLOSE_INVALID_DATA)
        return float(v)

    def f32_array(self, name: str) -> np.ndarray:
        v = self._get(name)
        if not isinstance(v, list):
            raise self._wrong(name, "an array of numbers", v)
        if not set(map(type, v)) <= {int, float}:
            i, x = next((i, x) for i, x in enumerate(v) if type(x) not in (int, float))
            raise ProtocolError(f"{self.kind}.{name}[{i}] must be a number, got {_kind(x)}")
        with np.errstate(over="ignore"):
            a = np.array(v, dtype=np.float64).astype(np.float32)
        return _finite(a, f"{self.kind}.{name}")

    def int_list(self, name: str) -> list[int]:
        v = self._get(name)
        if not isinstance(v, list) or any(type(x) is not int or x < 0 for x in v):
            raise ProtocolError(f"{self.kind}.{name} must be an array of integers >= 0")
        return v

    def bytes(self, name: str) -> bytes:
        """bin (what msgpack clients send), or an array of 0..255 (how serde writes a plain Vec<u8>)."""
        v = self._get(name)
        if isinstance(v, bytes):
            return v
        if isinstance(v, list) and all(type(x) is int and 0 <= x <= 255 for x in v):
            return bytes(v)
        raise self._wrong(name, "binary data", v)


def _finite(a: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(a).all():
        bad = int(np.flatnonzero(~np.isfinite(a))[0])
        raise ProtocolError(f"{what} holds a non-finite float32 value ({a[bad]}) at index {bad}", CLOSE_INVALID_DATA)
    return a


def _voice(f: _Fields) -> Voice:
    emb, shape = f.f32_array("embeddings"), f.int_list("shape")
    if not shape or math.prod(shape) != len(emb):
        raise ProtocolError(f"Voice.shape {shape[:8]} does not hold the {len(emb)} embedding values")
    return Voice(emb, tuple(shape))


_AUDIO = {"Audio": lambda f: Audio(f.f32_array("pcm"))}
_STT_CLIENT = {**_AUDIO, "OggOpus": lambda f: OggOpus(f.bytes("data")), "Marker": lambda f: Marker(f.int("id", *_I64))}
_STT_SERVER = {
    "Ready": lambda f: Ready(),
    "Word": lambda f: Word(f.str("text"), f.float("start_time")),
    "EndWord": lambda f: EndWord(f.float("stop_time")),
    "Step": lambda f: Step(f.int("step_idx", 0, 2**64 - 1), tuple(f.f32_array("prs").tolist()),
                           f.int("buffered_pcm", 0, 2**64 - 1)),
    "Marker": lambda f: Marker(f.int("id", *_I64)),
    "Error": lambda f: Error(f.str("message")),
}
_TTS_CLIENT = {"Text": lambda f: Text(f.str("text")), "Eos": lambda f: Eos(), "Voice": _voice}
_TTS_SERVER = {
    "Ready": lambda f: Ready(),
    "Text": lambda f: TimedText(f.str("text"), f.float("start_s"), f.float("stop_s")),
    **_AUDIO,
    "OggOpus": lambda f: OggOpus(f.bytes("data")),
    "Error": lambda f: Error(f.str("message")),
}

_AUDIO_PREFIX = b"\x82\xa4type\xa5Audio\xa3pcm"  # {"type": "Audio", "pcm": [...]} as Kyutai's clients pack it


def _fast_audio(data: bytes) -> np.ndarray | None:
    """The pcm of an Audio map in the usual layout (all float 32), read with numpy; None for any other layout."""
    if not data.startswith(_AUDIO_PREFIX):
        return None
    pos, head = len(_AUDIO_PREFIX), data[len(_AUDIO_PREFIX):len(_AUDIO_PREFIX) + 5]
    if not head:
        return None
    if head[0] & 0xF0 == 0x90:
        n, pos = head[0] & 0x0F, pos + 1
    elif head[0] == 0xDC and len(head) >= 3:
        n, pos = int.from_bytes(head[1:3], "big"), pos + 3
    elif head[0] == 0xDD and len(head) == 5:
        n, pos = int.from_bytes(head[1:5], "big"), pos + 5
    else:
        return None
    if len(data) - pos != 5 * n:
        return None
    body = np.frombuffer(data, dtype=[("tag", "u1"), ("value", ">f4")], offset=pos, count=n)
    if not (body["tag"] == 0xCA).all():
        return None
    return body["value"].astype(np.float32)
