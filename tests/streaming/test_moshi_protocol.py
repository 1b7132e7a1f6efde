"""The /api/chat binary protocol: round trips, byte-exact frames, every malformed input."""

from __future__ import annotations

import json

import pytest
from antiphon.streaming.errors import (
    CLOSE_INVALID_DATA,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    ProtocolError,
)
from antiphon.streaming.moshi_protocol import (
    PYTHON_HANDSHAKE,
    Audio,
    ColoredText,
    Control,
    ControlAction,
    Error,
    Handshake,
    Kind,
    Metadata,
    Ping,
    SamplingParams,
    Text,
    Unknown,
    build,
    parse_client_message,
    parse_server_message,
    render_text_piece,
)

from antiphon.errors import InputError

SERVER_MESSAGES = [
    Handshake(), Handshake(1, 2**32 - 1), Audio(b"OggS\x00fake"), Audio(b""), Text(" hello"), Text(""),
    Text("élan ▁ 日本"), Metadata({"text_temperature": 0.7, "build_info": {"git_hash": "abc"}}), Metadata({}),
    Error("no free channels"), Ping(), ColoredText(3, " word"), ColoredText(255, ""),
]
CLIENT_MESSAGES = [Audio(b"OggS..."), Audio(b""), Ping()] + [Control(a) for a in ControlAction]


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=repr)
def test_server_messages_round_trip(message):
    assert parse_server_message(build(message)) == message


@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=repr)
def test_client_messages_round_trip(message):
    assert parse_client_message(build(message)) == message


def test_known_frames_byte_for_byte():
    assert build(Handshake()) == b"\x00" + bytes(8)  # Rust's 9-byte form
    assert build(Handshake(1, 2)) == b"\x00\x01\x00\x00\x00\x02\x00\x00\x00"  # u32 little-endian
    assert build(Audio(b"OggS")) == b"\x01OggS"
    assert build(Text(" héllo")) == b"\x02 h\xc3\xa9llo"
    assert build(Control(ControlAction.END_TURN)) == b"\x03\x01"
    assert build(Error("boom")) == b"\x05boom"
    assert build(Ping()) == b"\x06"
    assert build(ColoredText(2, "hi")) == b"\x07\x02hi"
    assert json.loads(build(Metadata({"a": 1}))[1:]) == {"a": 1} and build(Metadata({}))[0] == 4
    assert [int(k) for k in Kind][:8] == list(range(8))


def test_both_handshake_forms_parse():
    assert parse_server_message(PYTHON_HANDSHAKE) == Handshake(0, 0)
    assert parse_server_message(b"\x00" + bytes(8)) == Handshake(0, 0)


def test_unknown_kinds_come_back_for_discarding():
    for kind in (8, 9, 10, 0x7F, 0xFF):
        assert parse_server_message(bytes([kind]) + b"xyz") == Unknown(kind, b"xyz")
        assert parse_client_message(bytes([kind])) == Unknown(kind, b"")
    # server-only kinds sent by a client are discarded, as Kyutai's servers do, not parsed
    for kind in (0, 2, 4, 5, 7):
        assert parse_client_message(bytes([kind]) + b"\xff") == Unknown(kind, b"\xff")
    assert parse_server_message(b"\x03\x09") == Unknown(3, b"\x09")  # Control is client-only
    assert build(Unknown(9, b"ab")) == b"\x09ab"


BAD_SERVER = {
    b"": "empty message",
    b"\x00\x01\x02": "Handshake payload must be 0 or 8 bytes",
    b"\x00" + bytes(9): "Handshake payload must be 0 or 8 bytes",
    b"\x02\xff": "not valid UTF-8",
    b"\x02abc\xc3": "not valid UTF-8",
    b"\x05\xed\xa0\x80": "not valid UTF-8",  # a UTF-16 surrogate
    b"\x04{": "not valid JSON",
    b"\x04[1, 2]": "must be a JSON object",
    b"\x04\xff": "not valid UTF-8",
    b"\x06x": "Ping carries no payload",
    b"\x07": "must start with a colour byte",
    b"\x07\x01\xff": "not valid UTF-8",
}
BAD_CLIENT = {
    b"": "empty message",
    b"\x03": "exactly 1 byte",
    b"\x03\x00\x00": "exactly 1 byte",
    b"\x03\x04": "bad Control byte 4",
    b"\x03\xff": "bad Control byte 255",
    b"\x06\x00": "Ping carries no payload",
}


@pytest.mark.parametrize("data,words", BAD_SERVER.items(), ids=repr)
def test_bad_server_messages(data, words):
    with pytest.raises(ProtocolError, match=words) as e:
        parse_server_message(data)
    assert e.value.code in (CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_DATA)


@pytest.mark.parametrize("data,words", BAD_CLIENT.items(), ids=repr)
def test_bad_client_messages(data, words):
    with pytest.raises(ProtocolError, match=words) as e:
        parse_client_message(data)
    assert e.value.code == CLOSE_PROTOCOL_ERROR and isinstance(e.value, InputError)


def test_text_frames_and_size_limit():
    with pytest.raises(ProtocolError, match="binary frames") as e:
        parse_client_message("hello")
    assert e.value.code == CLOSE_UNSUPPORTED_DATA
    with pytest.raises(ProtocolError, match="over the 10-byte limit") as e:
        parse_client_message(b"\x01" + bytes(10), max_bytes=10)
    assert e.value.code == CLOSE_TOO_BIG
    assert parse_client_message(bytearray(b"\x01" + bytes(9)), max_bytes=10) == Audio(bytes(9))


def test_close_reason_fits_a_close_frame():
    err = ProtocolError("é" * 200)
    assert len(err.close_reason.encode()) <= 123 and err.close_reason == "é" * 61


def test_messages_refuse_bad_fields():
    with pytest.raises(ValueError):
        Handshake(-1, 0)
    with pytest.raises(ValueError):
        Control(7)
    with pytest.raises(ValueError):
        ColoredText(256, "x")


def test_render_text_piece():
    assert render_text_piece("▁hello") == " hello"
    assert render_text_piece("lo") == "lo"
    assert render_text_piece("▁▁a▁b") == "  a b"
    assert build(Text(render_text_piece("▁Bonjour"))) == b"\x02 Bonjour"


# --- query parameters ------------------------------------------------------------------------------------

WEB_CLIENT_QUERY = {  # what the web client sends, all strings
    "text_temperature": "0.7", "text_topk": "25", "audio_temperature": "0.8", "audio_topk": "250",
    "pad_mult": "0", "text_seed": "123456", "audio_seed": "654321", "repetition_penalty_context": "64",
    "repetition_penalty": "1.0", "worker_auth_id": "public_token", "email": "a@b.c", "image_resolution": "224",
}


def test_sampling_from_web_client_query():
    p = SamplingParams.from_query(WEB_CLIENT_QUERY)
    assert p == SamplingParams(text_temperature=0.7, text_topk=25, audio_temperature=0.8, audio_topk=250,
                               pad_mult=0.0, text_seed=123456, audio_seed=654321, repetition_penalty_context=64,
                               repetition_penalty=1.0, max_steps=4500)


def test_sampling_defaults_are_moshi_backend_s():
    p = SamplingParams.from_query({"unknown_key": "whatever"})
    assert (p.text_temperature, p.text_topk, p.audio_temperature, p.audio_topk) == (0.8, 250, 0.8, 250)
    assert p.text_seed is None and p.max_steps == 4500 and p.repetition_penalty == 1.0


def test_sampling_clamps_and_accepts_lists():
    assert SamplingParams.from_query({"max_steps": "100000"}).max_steps == 4500
    assert SamplingParams.from_query({"max_steps": "12"}).max_steps == 12
    assert SamplingParams.from_query({"text_topk": ["5", "7"]}).text_topk == 7  # parse_qs style: last wins
    assert SamplingParams.from_query({"text_temperature": "0"}).text_temperature == 0.0


@pytest.mark.parametrize("key,value,words", [
    ("text_temperature", "hot", "must be a number"),
    ("text_temperature", "", "must be a number"),
    ("audio_temperature", "nan", "must be finite"),
    ("audio_temperature", "-0.5", ">= 0"),
    ("text_topk", "2.5", "must be an integer"),
    ("audio_topk", "-1", ">= 0"),
    ("text_seed", "abc", "must be an integer"),
    ("text_seed", str(2**64), "in \\[0"),
    ("repetition_penalty", "0", ">= 1e-06"),
    ("max_steps", "0", ">= 1"),
    ("pad_mult", "1e9", "in \\[-100"),
])
def test_sampling_bad_values(key, value, words):
    with pytest.raises(ProtocolError, match=words) as e:
        SamplingParams.from_query({key: value})
    assert e.value.code == CLOSE_INVALID_DATA and key in str(e.value)
