"""The STT and TTS MessagePack protocols: round trips, known encodings, every malformed input."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from antiphon.streaming.errors import (
    CLOSE_INVALID_DATA,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    ProtocolError,
)
from antiphon.streaming.kyutai_protocol import (
    EOS_BYTE,
    Audio,
    EndWord,
    Eos,
    Error,
    Marker,
    OggOpus,
    Ready,
    Step,
    Text,
    TimedText,
    TtsFormat,
    TtsQuery,
    Voice,
    Word,
    build,
    build_tts_server,
    parse_stt_client,
    parse_stt_server,
    parse_tts_client,
    parse_tts_server,
)

RNG = np.random.default_rng(0)
PCM = RNG.uniform(-1, 1, 1920).astype(np.float32)

STT_CLIENT = [Audio(PCM), Audio(np.zeros(0, np.float32)), Audio([0.5] * 15), Audio([0.5] * 16),
              Audio(np.ones(70000, np.float32)), OggOpus(b"OggS\x00\x02"), Marker(0), Marker(-(2**63)), Marker(2**63 - 1)]
STT_SERVER = [Ready(), Word("hello", 0.08), Word("", 0), EndWord(1.36), Step(7, (0.25, 0.5, 0.125, 1.0), 1920),
              Step(0, (), 0), Marker(42), Error("no free channels")]
TTS_CLIENT = [Text("Hello world."), Eos(), Voice(RNG.standard_normal(24).astype(np.float32), (2, 3, 4))]
TTS_SERVER = [Ready(), TimedText("Hello", 0.0, 0.32), Audio(PCM), OggOpus(b"OggS..."), Error("no free channels")]


@pytest.mark.parametrize("message", STT_CLIENT, ids=lambda m: type(m).__name__)
def test_stt_client_round_trip(message):
    assert parse_stt_client(build(message)) == message


@pytest.mark.parametrize("message", STT_SERVER, ids=lambda m: type(m).__name__)
def test_stt_server_round_trip(message):
    assert parse_stt_server(build(message)) == message


@pytest.mark.parametrize("message", TTS_CLIENT, ids=lambda m: type(m).__name__)
def test_tts_client_round_trip(message):
    assert parse_tts_client(build(message)) == message


@pytest.mark.parametrize("fmt", list(TtsFormat))
@pytest.mark.parametrize("message", TTS_SERVER, ids=lambda m: type(m).__name__)
def test_tts_server_round_trip_in_every_format(message, fmt):
    pcm_format = fmt in (TtsFormat.PCM, TtsFormat.PCM_MSGPACK)
    if (isinstance(message, Audio) and not pcm_format) or (isinstance(message, OggOpus) and pcm_format):
        with pytest.raises(ValueError, match="cannot be sent"):
            build_tts_server(message, fmt)
        return
    frame = build_tts_server(message, fmt)
    if not fmt.is_msgpack and isinstance(message, (Ready, TimedText, Error)):
        assert frame is None  # raw formats carry audio only
    else:
        assert parse_tts_server(frame, fmt) == message


def test_known_encodings():
    # what Kyutai's Python clients send: msgpack.packb({...}, use_single_float=True)
    pcm = [0.5, -1.0, 0.25]
    theirs = msgpack.packb({"type": "Audio", "pcm": pcm}, use_single_float=True)
    assert build(Audio(pcm)) == theirs
    assert theirs.hex() == "82a474797065a5417564696fa370636d93ca3f000000cabf800000ca3e800000"
    # a Word as Rust's rmp_serde writes it: struct-map, "type" first, f64 time
    word = bytes.fromhex("83a474797065a4576f7264a474657874a26869aa73746172745f74696d65cb3ff8000000000000")
    assert build(Word("hi", 1.5)) == word
    assert msgpack.unpackb(word) == {"type": "Word", "text": "hi", "start_time": 1.5}
    assert parse_stt_server(word) == Word("hi", 1.5)
    assert build(Ready()) == b"\x81\xa4type\xa5Ready"
    assert build(Eos()) == msgpack.packb({"type": "Eos"})
    assert msgpack.unpackb(build(Step(3, (0.5,), 10))) == {"type": "Step", "step_idx": 3, "prs": [0.5], "buffered_pcm": 10}
    assert msgpack.unpackb(build(OggOpus(b"\x01\x02"))) == {"type": "OggOpus", "data": b"\x01\x02"}
    assert build_tts_server(Audio([1.0, -0.5]), TtsFormat.PCM) == np.array([1.0, -0.5], "<f4").tobytes()
    assert build_tts_server(Audio([1.0]), TtsFormat.PCM) == b"\x00\x00\x80\x3f"  # little-endian float32


def test_other_encodings_of_the_same_message_parse():
    """Float 64 samples, integer samples, reordered or extra keys, Vec<u8> as an int array: all accepted."""
    assert parse_stt_client(msgpack.packb({"pcm": [0.5, 1], "type": "Audio", "extra": 1})) == Audio([0.5, 1.0])
    assert parse_stt_client(msgpack.packb({"type": "Audio", "pcm": [0.1, 0.2]})) == Audio([0.1, 0.2])
    assert parse_stt_client(msgpack.packb({"type": "OggOpus", "data": [79, 103]})) == OggOpus(b"Og")
    assert parse_stt_server(msgpack.packb({"type": "Word", "text": "a", "start_time": 2})) == Word("a", 2.0)


def test_tts_client_frames_beside_msgpack():
    assert parse_tts_client("Hello there") == Text("Hello there")
    assert parse_tts_client(EOS_BYTE) == Eos() and parse_tts_client(bytearray(b"\x00")) == Eos()


def test_audio_is_frozen_and_read_only():
    a = np.zeros(4, np.float32)
    msg = Audio(a)
    a[0] = 1.0  # the caller's array is copied
    assert msg.pcm[0] == 0 and not msg.pcm.flags.writeable
    assert parse_stt_client(build(msg)).pcm.flags.writeable is False


def _mp(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


BAD_STT_CLIENT = [
    (b"", "empty message", CLOSE_PROTOCOL_ERROR),
    (b"\xc1", "not a MessagePack message", CLOSE_PROTOCOL_ERROR),
    (b"\x82\xa4type", "not a MessagePack message", CLOSE_PROTOCOL_ERROR),  # truncated
    (_mp({"type": "Marker", "id": 1}) + b"\x00", "not a MessagePack message", CLOSE_PROTOCOL_ERROR),  # trailing
    (_mp([1, 2]), "must be a MessagePack map", CLOSE_PROTOCOL_ERROR),
    (_mp("Audio"), "must be a MessagePack map", CLOSE_PROTOCOL_ERROR),
    (_mp({"pcm": [0.0]}), 'no "type" key', CLOSE_PROTOCOL_ERROR),
    (_mp({"type": 3}), '"type" must be a string', CLOSE_PROTOCOL_ERROR),
    (_mp({"type": "Word"}), "unknown STT client message type 'Word'", CLOSE_PROTOCOL_ERROR),
    (_mp({"type": "Audio"}), "Audio message has no 'pcm' field", CLOSE_PROTOCOL_ERROR),
    (_mp({"type": "Audio", "pcm": "abc"}), "Audio.pcm must be an array of numbers, got a string", CLOSE_PROTOCOL_ERROR),
    (_mp({"type": "Audio", "pcm": [0.0, "x"]}), r"Audio.pcm\[1\] must be a number", CLOSE_PROTOCOL_ERROR),
    (_mp({"type": "Audio", "pcm": [True]}), r"Audio.pcm\[0\] must be a number, got a boolean", CLOSE_PROTOCOL_ERROR),
    (_mp({"type": "Audio", "pcm": [[0.0]]}), r"Audio.pcm\[0\] must be a number, got an array", CLOSE_PROTOCOL_ERROR),
    (_mp({"type": "Audio", "pcm": [0.0, float("nan")]}), "non-finite float32 value \\(nan\\) at index 1", CLOSE_INVALID_DATA),
    (_mp({"type": "Audio", "pcm": [float("-inf")]}), "non-finite", CLOSE_INVALID_DATA),
    (_mp({"type": "Audio", "pcm": [1e300]}), "non-finite", CLOSE_INVALID_DATA),  # overflows float32
    (build(Audio([0.0, 1.0]))[:-4] + b"\x7f\xc0\x00\x00", "non-finite", CLOSE_INVALID_DATA),  # f32 NaN, fast path
    (_mp({"type": "OggOpus", "data": "text"}), "OggOpus.data must be binary data", CLOSE_PROTOCOL_ERROR),
    (_mp({"type": "OggOpus", "data": [1, 256]}), "OggOpus.data must be binary data", CLOSE_PROTOCOL_ERROR),
    (_mp({"type": "Marker", "id": "1"}), "Marker.id must be an integer", CLOSE_PROTOCOL_ERROR),
    (_mp({"type": "Marker", "id": 1.0}), "Marker.id must be an integer", CLOSE_PROTOCOL_ERROR),
    (_mp({"type": "Marker", "id": 2**63}), "outside", CLOSE_INVALID_DATA),
    (b"\x81\xa4type\xa2\xff\xfe", "not valid UTF-8", CLOSE_INVALID_DATA),
    (b"\x81\x01\x02", "not a MessagePack message", CLOSE_PROTOCOL_ERROR),  # integer map key
    (b"\xd4\x01\x00", "got ExtType", CLOSE_PROTOCOL_ERROR),
]


@pytest.mark.parametrize("data,words,code", BAD_STT_CLIENT, ids=lambda x: repr(x)[:40])
def test_bad_stt_client_messages(data, words, code):
    with pytest.raises(ProtocolError, match=words) as e:
        parse_stt_client(data)
    assert e.value.code == code


BAD_STT_SERVER = [
    (_mp({"type": "Word", "text": 1, "start_time": 0.0}), "Word.text must be a string"),
    (_mp({"type": "Word", "text": "a"}), "no 'start_time' field"),
    (_mp({"type": "Word", "text": "a", "start_time": float("inf")}), "must be finite"),
    (_mp({"type": "EndWord", "stop_time": None}), "EndWord.stop_time must be a number, got nil"),
    (_mp({"type": "Step", "step_idx": -1, "prs": [], "buffered_pcm": 0}), "outside"),
    (_mp({"type": "Step", "step_idx": 0, "prs": 0.5, "buffered_pcm": 0}), "Step.prs must be an array"),
    (_mp({"type": "Error"}), "no 'message' field"),
    (_mp({"type": "Audio", "pcm": []}), "unknown STT server message type 'Audio'"),
]


@pytest.mark.parametrize("data,words", BAD_STT_SERVER, ids=lambda x: repr(x)[:40])
def test_bad_stt_server_messages(data, words):
    with pytest.raises(ProtocolError, match=words):
        parse_stt_server(data)


BAD_TTS_CLIENT = [
    (_mp({"type": "Text"}), "no 'text' field"),
    (_mp({"type": "Text", "text": b"bytes"}), "Text.text must be a string, got binary"),
    (_mp({"type": "Voice", "embeddings": [0.0] * 5, "shape": [2, 3]}), "does not hold the 5 embedding values"),
    (_mp({"type": "Voice", "embeddings": [0.0], "shape": []}), "does not hold"),
    (_mp({"type": "Voice", "embeddings": [0.0], "shape": [-1, -1]}), "array of integers >= 0"),
    (_mp({"type": "Voice", "embeddings": [float("nan")], "shape": [1]}), "non-finite"),
    (_mp({"type": "Audio", "pcm": []}), "unknown TTS client message type 'Audio'"),
    (b"\x01", "must be a MessagePack map"),
]


@pytest.mark.parametrize("data,words", BAD_TTS_CLIENT, ids=lambda x: repr(x)[:40])
def test_bad_tts_client_messages(data, words):
    with pytest.raises(ProtocolError, match=words):
        parse_tts_client(data)


def test_bad_tts_server_frames():
    with pytest.raises(ProtocolError, match="whole number of float32"):
        parse_tts_server(b"\x00\x00\x80", TtsFormat.PCM)
    with pytest.raises(ProtocolError, match="non-finite") as e:
        parse_tts_server(np.array([0, np.inf], "<f4").tobytes(), TtsFormat.PCM)
    assert e.value.code == CLOSE_INVALID_DATA
    with pytest.raises(ProtocolError, match="binary frames") as e:
        parse_tts_server("text", TtsFormat.OGG_OPUS)
    assert e.value.code == CLOSE_UNSUPPORTED_DATA
    with pytest.raises(ProtocolError, match="TimedText|TTS server message type 'Word'"):
        parse_tts_server(build(Word("a", 0.0)), TtsFormat.PCM_MSGPACK)


def test_text_frames_and_size_limits():
    with pytest.raises(ProtocolError, match="text frame") as e:
        parse_stt_client("hello")
    assert e.value.code == CLOSE_UNSUPPORTED_DATA
    big = build(Audio(np.zeros(1000, np.float32)))
    for parse in (parse_stt_client, parse_tts_client):
        with pytest.raises(ProtocolError, match="over the 100-byte limit") as e:
            parse(big if parse is parse_stt_client else "x" * 101, max_bytes=100)
        assert e.value.code == CLOSE_TOO_BIG
    assert parse_stt_client(big, max_bytes=None) == Audio(np.zeros(1000, np.float32))
    with pytest.raises(ProtocolError, match="over the"):
        parse_tts_server(bytes(400), TtsFormat.PCM, max_bytes=399)


def test_tts_query():
    assert TtsQuery.from_query({}) == TtsQuery(format=TtsFormat.OGG_OPUS)
    q = TtsQuery.from_query({"format": "PcmMessagePack", "voice": "expresso/ex03.wav", "auth_id": "k", "x": "1",
                             "seed": "42", "temperature": "0.6", "top_k": "250", "cfg_alpha": "2.0"})
    assert q == TtsQuery(TtsFormat.PCM_MSGPACK, "expresso/ex03.wav", 42, 0.6, 250, 2.0, None)
    assert TtsQuery.from_query({"format": "pcm"}).format is TtsFormat.PCM
    for fmt in TtsFormat:
        assert TtsQuery.from_query({"format": fmt.value}).format is fmt
    with pytest.raises(ProtocolError, match="unknown TTS format 'Wav': expected one of OggOpus, ") as e:
        TtsQuery.from_query({"format": "Wav"})
    assert e.value.code == CLOSE_INVALID_DATA
    with pytest.raises(ProtocolError, match="'temperature' must be a number"):
        TtsQuery.from_query({"temperature": "warm"})
    with pytest.raises(ProtocolError, match="'max_seq_len' must be >= 1"):
        TtsQuery.from_query({"max_seq_len": "0"})


def test_build_refuses_non_messages():
    with pytest.raises(TypeError):
        build(object())
    with pytest.raises(ValueError):
        Voice([0.0, 1.0], (3,))
    with pytest.raises(ValueError):
        Audio(np.zeros((2, 3)))
