"""Ogg/Opus in Moshi Audio messages, checked against what sphn's writer emits (reference §4.2)."""

from __future__ import annotations

import numpy as np
import pytest
from antiphon.streaming import moshi_protocol as mp
from antiphon.streaming.errors import ProtocolError
from antiphon.streaming.ogg import FLAG_BOS, split_pages

sphn = pytest.importorskip("sphn")

FRAME = 1920  # one 80 ms Mimi frame at 24 kHz


def _tone(frames: int) -> np.ndarray:
    t = np.arange(frames * FRAME) / 24000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _server_chunks(pcm: np.ndarray) -> list[bytes]:
    writer = sphn.OpusStreamWriter(24000)
    return [bytes(writer.append_pcm(pcm[i:i + FRAME])) for i in range(0, len(pcm), FRAME)]


def test_first_server_audio_message_carries_the_opus_headers():
    chunks = _server_chunks(_tone(3))
    first = split_pages(mp.parse_server_message(mp.build(mp.Audio(chunks[0]))).ogg_bytes)
    assert [p.is_opus_header for p in first] == [True, True, False, False]
    head, tags = first[0].packets[0], first[1].packets[0]
    assert first[0].header_type & FLAG_BOS and head.startswith(b"OpusHead")
    assert head[8] == 1 and head[9] == 1  # version 1, mono
    assert int.from_bytes(head[10:12], "little") == 3840 and int.from_bytes(head[12:16], "little") == 48000
    assert tags.startswith(b"OpusTags") and b"KyutaiMoshi" in tags
    assert {p.serial for p in first} == {42}
    # each 1920-sample frame: two 960-sample packets, one per page, granule +1920 (48 kHz units) per packet
    later = [split_pages(c) for c in chunks[1:]]
    assert all(len(pages) == 2 and not any(p.is_opus_header for p in pages) for pages in later)
    granules = [p.granule for p in first[2:] + later[0] + later[1]]
    assert granules == [1920 * (i + 1) for i in range(6)]
    sequences = [p.sequence for p in first + later[0] + later[1]]
    assert sequences == list(range(8))


def test_audio_messages_round_trip_through_the_decoder():
    pcm = _tone(6)
    reader = sphn.OpusStreamReader(24000)
    out = []
    for chunk in _server_chunks(pcm):
        frame = mp.build(mp.Audio(chunk))
        assert frame[0] == 0x01
        msg = mp.parse_client_message(frame)  # the client sends its pages the same way
        assert msg == mp.Audio(chunk)
        out.append(reader.append_bytes(msg.ogg_bytes))
    decoded = np.concatenate(out)
    assert decoded.dtype == np.float32 and len(decoded) == len(pcm)
    # Opus is lossy and delays by its pre-skip; the tone's energy survives
    assert abs(float(np.sqrt(np.mean(decoded[FRAME:] ** 2))) - 0.3 / np.sqrt(2)) < 0.05


def test_split_pages_rejects_non_ogg():
    chunk = _server_chunks(_tone(1))[0]
    with pytest.raises(ProtocolError, match="not an Ogg page"):
        split_pages(b"RIFF" + bytes(40))
    with pytest.raises(ProtocolError, match="truncated Ogg page"):
        split_pages(chunk[:-1])
    with pytest.raises(ProtocolError, match="truncated Ogg page header"):
        split_pages(chunk + b"OggS")
    with pytest.raises(ProtocolError, match="unsupported Ogg version"):
        split_pages(b"OggS\x01" + chunk[5:])
    assert split_pages(b"") == []
