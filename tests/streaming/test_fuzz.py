"""Fuzzing: every parser returns a message or raises ProtocolError, never anything else; valid messages round-trip."""

from __future__ import annotations

import math
import os

import msgpack
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from antiphon.streaming import kyutai_protocol as kp
from antiphon.streaming import moshi_protocol as mp
from antiphon.streaming.auth import auth_required_by_default, find_api_key
from antiphon.streaming.errors import ProtocolError
from antiphon.streaming.ogg import split_pages
from hypothesis import given, settings
from hypothesis import strategies as st

# ANTIPHON_FUZZ_EXAMPLES=20000 for a long campaign
FUZZ = settings(max_examples=int(os.environ.get("ANTIPHON_FUZZ_EXAMPLES", "300")), deadline=None, database=None)

KYUTAI_PARSERS = [
    kp.parse_stt_client, kp.parse_stt_server, kp.parse_tts_client,
    *[lambda d, f=f: kp.parse_tts_server(d, f) for f in kp.TtsFormat],
]
MOSHI_PARSERS = [mp.parse_client_message, mp.parse_server_message]


def _never_crashes(parse, data) -> None:
    try:
        parse(data)
    except ProtocolError as e:
        assert str(e) and 1000 <= e.code <= 1015


@FUZZ
@given(st.binary(max_size=64) | st.text(max_size=16))
def test_moshi_parsers_on_arbitrary_input(data):
    for parse in MOSHI_PARSERS:
        _never_crashes(parse, data)


@FUZZ
@given(st.integers(0, 10), st.binary(max_size=48))
def test_moshi_parsers_on_every_kind(kind, payload):
    for parse in MOSHI_PARSERS:
        _never_crashes(parse, bytes([kind]) + payload)


@FUZZ
@given(st.binary(max_size=96) | st.text(max_size=16))
def test_kyutai_parsers_on_arbitrary_bytes(data):
    for parse in KYUTAI_PARSERS:
        _never_crashes(parse, data)


# MessagePack maps that look like messages: the right "type" names, the right field names, any values
_leaf = (st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.floats() | st.text(max_size=8)
         | st.binary(max_size=8))
_value = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                      max_leaves=12)
_TYPES = ["Audio", "OggOpus", "Marker", "Ready", "Word", "EndWord", "Step", "Error", "Text", "Eos", "Voice", "Init", 7, None]
_FIELDS = ["pcm", "data", "id", "text", "start_time", "stop_time", "step_idx", "prs", "buffered_pcm", "message",
           "embeddings", "shape", "start_s", "stop_s"]
_message_like = st.builds(
    lambda t, fields: {"type": t, **fields} if t is not None else fields,
    st.sampled_from(_TYPES),
    st.dictionaries(st.sampled_from(_FIELDS), _value | st.lists(st.floats(width=32), max_size=8), max_size=4))


@FUZZ
@given(_message_like, st.booleans())
def test_kyutai_parsers_on_message_like_maps(obj, single_float):
    try:
        data = msgpack.packb(obj, use_bin_type=True, use_single_float=single_float)
    except (OverflowError, ValueError):
        return  # not representable in MessagePack (ints beyond 64 bits)
    for parse in KYUTAI_PARSERS:
        _never_crashes(parse, data)


@FUZZ
@given(st.binary(max_size=200))
def test_split_pages_never_crashes(data):
    _never_crashes(split_pages, b"OggS\x00" + data)
    _never_crashes(split_pages, data)


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(mp.KNOWN_QUERY_KEYS | kp.TtsQuery.KNOWN_KEYS) + ["x"]),
                       st.text(max_size=12) | st.sampled_from(["nan", "inf", "-1", "1e999", "0x10", " 7 ", "1_0"]),
                       max_size=6))
def test_query_parsers_never_crash(query):
    _never_crashes(mp.SamplingParams.from_query, query)
    _never_crashes(kp.TtsQuery.from_query, query)
    find_api_key({}, query)


@FUZZ
@given(st.text(max_size=40))
def test_auth_required_by_default_is_total(host):
    assert isinstance(auth_required_by_default(host), bool)


# --- round trips of arbitrary valid messages -------------------------------------------------------------

_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
_text = st.text(max_size=20)
_time = st.floats(allow_nan=False, allow_infinity=False)
_u64 = st.integers(0, 2**64 - 1)
_pcm = st.lists(_f32, max_size=40).map(lambda v: np.array(v, np.float32))

_moshi_server = st.one_of(
    st.builds(mp.Handshake, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(mp.Audio, st.binary(max_size=40)), st.builds(mp.Text, _text), st.builds(mp.Error, _text),
    st.builds(mp.Metadata, st.dictionaries(st.text(max_size=5), st.integers() | _text | st.booleans(), max_size=4)),
    st.just(mp.Ping()), st.builds(mp.ColoredText, st.integers(0, 255), _text),
    st.builds(mp.Unknown, st.integers(8, 255), st.binary(max_size=20)))
_moshi_client = st.one_of(st.builds(mp.Audio, st.binary(max_size=40)), st.just(mp.Ping()),
                          st.builds(mp.Control, st.sampled_from(list(mp.ControlAction))))


@FUZZ
@given(_moshi_server, _moshi_client)
def test_moshi_round_trip(server_msg, client_msg):
    assert mp.parse_server_message(mp.build(server_msg)) == server_msg
    assert mp.parse_client_message(mp.build(client_msg)) == client_msg


_stt_client = st.one_of(st.builds(kp.Audio, _pcm), st.builds(kp.OggOpus, st.binary(max_size=20)),
                        st.builds(kp.Marker, st.integers(-(2**63), 2**63 - 1)))
_stt_server = st.one_of(
    st.just(kp.Ready()), st.builds(kp.Word, _text, _time), st.builds(kp.EndWord, _time),
    st.builds(kp.Step, _u64, st.lists(_f32, max_size=6).map(tuple), _u64),
    st.builds(kp.Marker, st.integers(-(2**63), 2**63 - 1)), st.builds(kp.Error, _text))
_tts_client = st.one_of(
    st.builds(kp.Text, _text), st.just(kp.Eos()),
    st.lists(st.integers(1, 4), min_size=1, max_size=3).flatmap(
        lambda shape: st.builds(kp.Voice, st.lists(_f32, min_size=math.prod(shape), max_size=math.prod(shape)),
                                st.just(tuple(shape)))))
_tts_server = st.one_of(st.just(kp.Ready()), st.builds(kp.TimedText, _text, _time, _time), st.builds(kp.Audio, _pcm),
                        st.builds(kp.OggOpus, st.binary(max_size=20)), st.builds(kp.Error, _text))


@FUZZ
@given(_stt_client, _stt_server, _tts_client, _tts_server)
def test_kyutai_round_trip(stt_c, stt_s, tts_c, tts_s):
    assert kp.parse_stt_client(kp.build(stt_c)) == stt_c
    assert kp.parse_stt_server(kp.build(stt_s)) == stt_s
    assert kp.parse_tts_client(kp.build(tts_c)) == tts_c
    assert kp.parse_tts_server(kp.build(tts_s), kp.TtsFormat.PCM_MSGPACK) == tts_s


@FUZZ
@given(_pcm)
def test_fast_and_generic_audio_paths_agree(pcm):
    fast = kp.build(kp.Audio(pcm))
    generic = msgpack.packb({"pcm": pcm.tolist(), "type": "Audio"}, use_single_float=True)  # other key order
    assert kp.parse_stt_client(fast) == kp.parse_stt_client(generic) == kp.Audio(pcm)
