"""streaming.client.ChatClient against the real /api/chat server on loopback (tiny LM + codec, engine ticking)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from antiphon.streaming.client import (
    ChatClient,
    ChatClientError,
    ClientError,
    PcmChunk,
    TextPiece,
    chat_url,
    redact,
    server_url,
)

from tests.streaming.test_server_chat import TICK, running
from tests.streaming.tiny_pair import make_pair


@pytest.fixture(scope="module")
def pair():
    return make_pair()


def tone(frames: int) -> np.ndarray:
    t = np.arange(frames * 1920) / 24000
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_chat_url():
    assert chat_url("ws://h:1") == "ws://h:1/api/chat"
    assert chat_url("ws://h:1/", text_topk=25, max_steps=9) == "ws://h:1/api/chat?text_topk=25&max_steps=9"
    assert chat_url("wss://h/x?a=1", b=2) == "wss://h/x?a=1&b=2"
    with pytest.raises(ChatClientError, match="ws://"):
        chat_url("http://h:1")


def test_server_url_and_redact():
    assert server_url("ws://h:1", "/api/tts_streaming", {"format": "PcmMessagePack", "voice": "a/b.wav"}) == \
        "ws://h:1/api/tts_streaming?format=PcmMessagePack&voice=a%2Fb.wav"
    assert server_url("wss://h/x/?auth_id=k", "/api/chat") == "wss://h/x/?auth_id=k"
    with pytest.raises(ClientError, match="ws://host:port"):
        server_url("ws:///api/chat", "/api/chat")
    assert redact("ws://h:1/api/chat?a=1&auth_id=secret&b=2") == "ws://h:1/api/chat?a=1&auth_id=***&b=2"
    assert redact("ws://h:1/api/chat?a=1") == "ws://h:1/api/chat?a=1"


def test_handshake_audio_out_and_text_in(pair):
    async def main():
        async with running(pair) as (server, url):
            async with await ChatClient.connect(url, text_topk=10) as chat:
                async def send():
                    pcm = tone(10)
                    for i in range(0, pcm.size, 1000):  # ragged chunks: Opus keeps the remainder
                        await chat.send_pcm(pcm[i:i + 1000])
                        await asyncio.sleep(TICK / 2)

                sender = asyncio.create_task(send())
                pcm, text = [], []
                async for event in chat:
                    if isinstance(event, PcmChunk):
                        pcm.append(event.pcm)
                    else:
                        assert isinstance(event, TextPiece)
                        text.append(event.text)
                    if sum(p.size for p in pcm) >= 6 * 1920 and text:
                        break
                await sender
            audio = np.concatenate(pcm)
            assert audio.dtype == np.float32 and np.isfinite(audio).all()
            assert text and all(t.startswith(" ") for t in text)
            assert server.engine.frames_in >= 3  # our audio reached the engine
    asyncio.run(asyncio.wait_for(main(), 30))


def test_max_steps_ends_the_iteration(pair):
    async def main():
        async with running(pair) as (_, url), await ChatClient.connect(url, max_steps=3) as chat:
            events = [event async for event in chat]  # ends on the server's normal close
            assert any(isinstance(e, PcmChunk) for e in events)
    asyncio.run(asyncio.wait_for(main(), 30))


def test_refused_key_and_server_errors(pair):
    async def main():
        async with running(pair, slots=1, api_keys=["sesame"], auth_required=True) as (_, url):
            with pytest.raises(ChatClientError, match="HTTP 401"):
                await ChatClient.connect(url)
            with pytest.raises(ChatClientError, match="HTTP 401"):
                await ChatClient.connect(url, api_key="wrong")
            async with await ChatClient.connect(url, api_key="sesame"):
                with pytest.raises(ChatClientError, match="no free channels"):
                    await ChatClient.connect(url, api_key="sesame")
            await asyncio.sleep(0.2)  # the slot frees a moment after the close
            with pytest.raises(ChatClientError, match="server error: .*text_topk"):
                await ChatClient.connect(url, api_key="sesame", text_topk="many")
        with pytest.raises(ChatClientError, match="cannot connect"):
            await ChatClient.connect(url, open_timeout=2)  # nothing listens there any more
    asyncio.run(asyncio.wait_for(main(), 30))
