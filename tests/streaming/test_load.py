"""A bounded load test on loopback: as many concurrent /api/chat sessions as the slots allow, each sending
80 ms Opus frames in real time, against the engine ticking every 80 ms (tiny model, CPU). Nothing may be
lost: every frame sent is taken by the engine, every session gets one audio frame back per frame it sent,
and no slot's queue overflows. The tick's p50/p99 are recorded (pytest's record_property, junit XML)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import torch
from antiphon.apps.serve_cmd import build_server
from antiphon.streaming.moshi_protocol import Audio, Handshake, build, parse_server_message
from websockets.asyncio.client import connect

from tests.streaming.test_server_chat import opus_pages
from tests.streaming.tiny_pair import make_pair

SLOTS = 4
FRAMES = 30  # 2.4 s of audio per session
REAL_TIME = 0.08


@contextlib.asynccontextmanager
async def real_time_server():
    server = build_server(*make_pair(), SLOTS, interval=REAL_TIME, rng=torch.Generator().manual_seed(0))
    server.engine.warmup()
    server.engine.start()
    try:
        async with server.serve("127.0.0.1", 0) as ws_server:
            yield server, ws_server.sockets[0].getsockname()[1]
    finally:
        server.engine.close()


async def session(port: int, seed: int) -> int:
    """Send FRAMES frames in real time; return the audio messages received once all have come back."""
    pages = opus_pages(FRAMES, seed)
    async with connect(f"ws://127.0.0.1:{port}/api/chat") as ws:
        assert await asyncio.wait_for(ws.recv(), 5) == build(Handshake())
        received = 0

        async def receive():
            nonlocal received
            while received < len(pages):
                received += isinstance(parse_server_message(await ws.recv()), Audio)

        reader = asyncio.create_task(receive())
        start = time.monotonic()
        for i, page in enumerate(pages):
            await asyncio.sleep(max(0.0, start + i * REAL_TIME - time.monotonic()))
            await ws.send(build(Audio(page)))
        await asyncio.wait_for(reader, 10)
        return received


def test_full_server_in_real_time_loses_nothing(record_property):
    async def main():
        async with real_time_server() as (server, port):
            received = await asyncio.gather(*(session(port, seed) for seed in range(SLOTS)))
            return server, received

    server, received = asyncio.run(main())
    engine = server.engine
    pages = len(opus_pages(FRAMES))
    assert received == [pages] * SLOTS  # one audio message per frame, for every session
    assert engine.frames_in == SLOTS * FRAMES  # every frame sent reached the engine
    assert engine.scheduler.dropped_frames == 0
    assert not server.errors
    ticks = engine.stats.summary()
    for name in ("p50_s", "p99_s", "max_s", "overruns", "count"):
        record_property(f"tick_{name}", ticks[name])
    assert ticks["count"] >= FRAMES
    assert 0 < ticks["p50_s"] <= ticks["p99_s"]
