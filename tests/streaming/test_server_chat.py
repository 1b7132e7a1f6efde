"""/api/chat over real sockets on loopback, with a tiny random LM + tiny codec and the engine ticking."""

from __future__ import annotations

import asyncio
import contextlib
import json

import numpy as np
import pytest
import sphn
import torch
from antiphon.apps.serve_cmd import build_server
from antiphon.streaming.moshi_protocol import (
    Audio,
    Control,
    Error,
    Handshake,
    Kind,
    Text,
    build,
    parse_server_message,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.streaming.tiny_pair import make_pair

TICK = 0.04  # seconds: faster than real time, to keep the tests short


@pytest.fixture(scope="module")
def pair():
    return make_pair()


@contextlib.asynccontextmanager
async def running(pair, slots=2, **kwargs):
    server = build_server(*pair, slots, interval=TICK, rng=torch.Generator().manual_seed(0), **kwargs)
    server.engine.start()
    try:
        async with server.serve("127.0.0.1", 0) as ws_server:
            port = ws_server.sockets[0].getsockname()[1]
            yield server, f"ws://127.0.0.1:{port}"
    finally:
        server.engine.close()


def opus_pages(frames: int, seed: int = 0) -> list[bytes]:
    """Ogg/Opus bytes of `frames` 80 ms frames of a tone, one chunk per frame (the first with the headers)."""
    writer, g = sphn.OpusStreamWriter(24000), np.random.default_rng(seed)
    t = np.arange(1920) / 24000
    chunks = []
    for i in range(frames):
        pcm = (0.3 * np.sin(2 * np.pi * 220 * (t + i * 0.08)) + 0.01 * g.standard_normal(1920)).astype(np.float32)
        chunks.append(writer.append_pcm(pcm))
    return [c for c in chunks if c]


async def handshake(ws) -> None:
    first = await asyncio.wait_for(ws.recv(), 5)
    assert first == build(Handshake()) and len(first) == 9


async def talk(ws, frames: int, min_audio: int):
    """Send `frames` frames of Opus at the tick pace, collect what comes back until `min_audio` audio messages."""
    audio, text = [], []

    async def send():
        for chunk in opus_pages(frames):
            await ws.send(build(Audio(chunk)))
            await asyncio.sleep(TICK)

    sender = asyncio.create_task(send())
    while len(audio) < min_audio:
        message = parse_server_message(await asyncio.wait_for(ws.recv(), 5))
        (audio if isinstance(message, Audio) else text).append(message)
    await sender
    return audio, text


async def expect_error(ws, code: int) -> str:
    """Skip model output until the Error message, then the close with `code`; returns the error text."""
    while True:
        message = parse_server_message(await asyncio.wait_for(ws.recv(), 5))
        if isinstance(message, Error):
            break
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd.code == code
    return message.message


def test_chat_audio_both_ways_and_text(pair):
    async def main():
        async with running(pair) as (server, url), connect(f"{url}/api/chat") as ws:
            await handshake(ws)
            audio, text = await talk(ws, 10, min_audio=6)
            assert audio[0].ogg_bytes.startswith(b"OggS") and b"OpusHead" in audio[0].ogg_bytes
            reader = sphn.OpusStreamReader(24000)
            pcm = np.concatenate([reader.append_bytes(m.ogg_bytes) for m in audio])
            assert pcm.size >= 4 * 1920 and np.isfinite(pcm).all()
            assert all(isinstance(m, Text) and m.text.startswith(" ") for m in text) and text
            assert server.engine.frames_in >= 3  # the client's audio reached the engine
    asyncio.run(main())


def test_api_key_required(pair):
    async def main():
        async with running(pair, api_keys=["sesame"], auth_required=True) as (server, url):
            with pytest.raises(InvalidStatus) as info:
                await connect(f"{url}/api/chat")
            assert info.value.response.status_code == 401
            with pytest.raises(InvalidStatus):
                await connect(f"{url}/api/chat?auth_id=wrong")
            async with connect(f"{url}/api/chat", additional_headers={"kyutai-api-key": "sesame"}) as ws:
                await handshake(ws)
            async with connect(f"{url}/api/chat?auth_id=sesame") as ws:
                await handshake(ws)
            assert server.errors["auth"] == 2
    asyncio.run(main())


def test_all_slots_busy_is_an_error_at_once(pair):
    async def main():
        async with running(pair, slots=1) as (server, url), connect(f"{url}/api/chat") as first:
            await handshake(first)
            async with connect(f"{url}/api/chat") as second:
                message = await expect_error(second, 1013)
                assert "no free channels" in message
            assert server.errors["no_free_slot"] == 1
    asyncio.run(main())


async def _health(url: str) -> dict:
    host, port = url.removeprefix("ws://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return json.loads(raw.partition(b"\r\n\r\n")[2])


def test_queued_sessions_wait_their_turn_and_the_rest_are_refused(pair):
    """1 slot, a queue of 2: the 2nd and 3rd clients wait without a handshake, the 4th is refused at once;
    when the 1st leaves, the 2nd (not the 3rd) gets the slot; a waiting client that leaves gives its place up."""
    async def main():
        async with running(pair, slots=1, queue_size=2) as (server, url):
            first = await connect(f"{url}/api/chat")
            await handshake(first)
            second, third = await connect(f"{url}/api/chat"), await connect(f"{url}/api/chat")
            await asyncio.sleep(5 * TICK)
            assert server.admission.waiting == 2 and (await _health(url))["queued"] == 2
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(second.recv(), 3 * TICK)  # no handshake while waiting
            async with connect(f"{url}/api/chat") as fourth:
                assert "2 sessions are waiting" in await expect_error(fourth, 1013)
            await first.close()
            await handshake(second)
            assert server.admission.waiting == 1
            await third.close()  # gives its place up
            await asyncio.sleep(5 * TICK)
            assert server.admission.waiting == 0
            await second.close()
            async with connect(f"{url}/api/chat") as fifth:  # the slot is free again, no line
                await handshake(fifth)
            assert server.errors["no_free_slot"] == 1
    asyncio.run(main())


def test_a_queued_session_is_refused_after_the_queue_timeout(pair):
    async def main():
        async with running(pair, slots=1, queue_size=1, queue_timeout=4 * TICK) as (server, url):
            async with connect(f"{url}/api/chat") as first, connect(f"{url}/api/chat") as second:
                await handshake(first)
                assert "stayed busy" in await expect_error(second, 1013)
            assert server.admission.waiting == 0
    asyncio.run(main())


def test_slot_is_reset_and_reused(pair):
    async def main():
        async with running(pair, slots=1) as (server, url):
            for _ in range(2):
                async with connect(f"{url}/api/chat") as ws:
                    await handshake(ws)
                    await talk(ws, 4, min_audio=2)
                for _ in range(50):  # the server sees the close a moment later
                    if server.engine.scheduler.free_slots == 1:
                        break
                    await asyncio.sleep(0.02)
                assert server.engine.scheduler.free_slots == 1
    asyncio.run(main())


def test_bad_query_value(pair):
    async def main():
        async with running(pair) as (_, url), connect(f"{url}/api/chat?text_topk=many") as ws:
            assert "text_topk" in await expect_error(ws, 1007)
    asyncio.run(main())


BAD = {
    "truncated_ogg": (lambda: build(Audio(opus_pages(1)[0][:40])), 1002),
    "not_ogg": (lambda: build(Audio(b"RIFF" + bytes(60))), 1002),
    "bad_control_byte": (lambda: bytes([Kind.CONTROL, 9]), 1002),
    "oversized": (lambda: build(Audio(bytes(5000))), 1009),
    "text_frame": (lambda: "hello", 1003),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_input_closes_only_that_session(pair, case):
    make_bad, code = BAD[case]

    async def main():
        async with running(pair, max_message_bytes=4096) as (server, url), \
                connect(f"{url}/api/chat") as good, connect(f"{url}/api/chat") as bad:
            await handshake(good)
            await handshake(bad)
            await bad.send(bytes([Kind.CODES, 1, 2, 3]))  # unknown to a server: discarded
            await bad.send(build(Control(0)))  # ignored in full streaming
            talking = asyncio.create_task(talk(good, 12, min_audio=10))
            await asyncio.sleep(3 * TICK)
            await bad.send(make_bad())
            await expect_error(bad, code)
            audio, _ = await talking  # the other session's frames kept flowing
            assert len(audio) >= 10
            assert sum(server.errors.values()) == 1
    asyncio.run(main())


def test_health_and_metrics(pair):
    async def get(port: int, path: str) -> tuple[int, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = await reader.read()
        writer.close()
        head, _, body = raw.decode().partition("\r\n\r\n")
        return int(head.split()[1]), body

    async def main():
        async with running(pair, slots=3) as (_, url), connect(f"{url}/api/chat") as ws:
            await handshake(ws)
            await talk(ws, 3, min_audio=2)
            port = int(url.rsplit(":", 1)[1])
            status, body = await get(port, "/api/health")
            assert status == 200
            assert json.loads(body) == {"status": "ok", "task": "dialogue", "slots": 3, "free_slots": 2, "live_sessions": 1,
                                        "queued": 0}
            status, body = await get(port, "/api/modules_info")
            assert status == 200 and json.loads(body)["routes"] == ["/api/chat"]
            status, body = await get(port, "/metrics")
            assert status == 200
            for name in ("antiphon_live_sessions 1", "antiphon_free_slots 2", "antiphon_queued_sessions 0", 'antiphon_tick_seconds{quantile="0.99"}',
                         "antiphon_tick_overruns_total", "antiphon_frames_in_total", "antiphon_frames_out_total",
                         'antiphon_errors_total{kind="none"} 0'):
                assert name in body
            assert (await get(port, "/nowhere"))[0] == 404
    asyncio.run(main())
