"""The STT, TTS and translation endpoints over real sockets on loopback, with tiny random models: Kyutai's
msgpack protocols (Ready, words with timestamps, VAD steps, markers; text in, timed words and audio out),
the POST forms, the translation route, idle timeouts and per-session errors."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import wave

import numpy as np
import pytest
import sphn
import torch
from antiphon.apps.serve_cmd import build_server
from antiphon.streaming import kyutai_protocol as kp
from antiphon.streaming.moshi_protocol import Audio, Control, ControlAction, Handshake, Text, build, parse_server_message
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.streaming.test_server_chat import TICK, opus_pages
from tests.streaming.tiny_pair import LetterTokenizer, make_pair


@contextlib.asynccontextmanager
async def running(task: str, slots: int = 2, **kwargs):
    lm, codec = make_pair(task=task)
    if task == "tts":
        kwargs.setdefault("tokenizer", LetterTokenizer())
        kwargs.setdefault("cfg", None)
    server = build_server(lm, codec, slots, interval=TICK, rng=torch.Generator().manual_seed(0), **kwargs)
    server.engine.start()
    try:
        async with server.serve("127.0.0.1", 0) as ws_server:
            port = ws_server.sockets[0].getsockname()[1]
            yield server, port
    finally:
        server.engine.close()


def tone(frames: int, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    t = np.arange(frames * 1920) / 24000
    return (0.3 * np.sin(2 * np.pi * g.uniform(150, 400) * t) + 0.02 * g.standard_normal(t.size)).astype(np.float32)


async def http(port: int, method: str, path: str, body: bytes = b"", headers: str = "") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{headers}"
                 f"Connection: close\r\n\r\n".encode() + body)
    raw = await asyncio.wait_for(reader.read(), 60)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


async def until(condition, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition()


# ---------------------------------------------------------------- speech to text
async def stt_session(port: int, pcm: np.ndarray, chunk: int = 1000) -> list:
    """Send `pcm` in ragged Audio messages, a Marker, then silence until the marker is back -> messages."""
    async with connect(f"ws://127.0.0.1:{port}/api/asr-streaming") as ws:
        assert kp.parse_stt_server(await asyncio.wait_for(ws.recv(), 5)) == kp.Ready()
        for i in range(0, pcm.size, chunk):
            await ws.send(kp.build(kp.Audio(pcm[i:i + chunk])))
        await ws.send(kp.build(kp.Marker(7)))
        got = []

        async def silence():
            while True:
                await ws.send(kp.build(kp.Audio(np.zeros(1920, np.float32))))
                await asyncio.sleep(TICK / 2)

        feeder = asyncio.create_task(silence())
        try:
            while not got or got[-1] != kp.Marker(7):
                got.append(kp.parse_stt_server(await asyncio.wait_for(ws.recv(), 10)))
        finally:
            feeder.cancel()
        return got


def test_stt_words_steps_and_marker_after_the_delay():
    async def main():
        async with running("stt") as (server, port):
            frames = 12
            got = await stt_session(port, tone(frames))
            steps = [m for m in got if isinstance(m, kp.Step)]
            words = [m for m in got if isinstance(m, kp.Word)]
            ends = [m for m in got if isinstance(m, kp.EndWord)]
            assert steps and all(len(s.prs) == 2 and all(0 <= p <= 1 for p in s.prs) for s in steps)
            assert [s.step_idx for s in steps] == list(range(len(steps)))
            # the marker comes back only once the text of every frame sent before it is out (delay 0.16 s)
            assert len(steps) >= frames + round(0.16 / 0.08)
            assert words, "a random model emits some pieces"
            starts = [w.start_time for w in words]
            assert starts == sorted(starts) and all(w.text for w in words)
            assert all(0 <= e.stop_time for e in ends)
            await until(lambda: server.engine.scheduler.free_slots == 2)  # the slot is back once the client left

    asyncio.run(main())


def test_stt_fast_client_loses_no_frame():
    async def main():
        async with running("stt") as (server, port):
            frames = 40
            got = await stt_session(port, tone(frames, seed=1), chunk=1920 * 8)  # all at once, far faster than real time
            assert server.engine.scheduler.dropped_frames == 0
            steps = [m for m in got if isinstance(m, kp.Step)]
            assert len(steps) >= frames  # every frame was stepped

    asyncio.run(main())


def test_stt_post_an_audio_file_returns_words():
    async def main():
        async with running("stt") as (_, port):
            out = io.BytesIO()
            with wave.open(out, "wb") as w:  # 16 kHz: the server resamples
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(16000)
                w.writeframes((tone(60)[::3] * 32767).astype("<i2").tobytes())  # 2.4 s
            status, body = await http(port, "POST", "/api/asr-streaming", out.getvalue())
            assert status == 200, body
            messages = json.loads(body)
            assert messages and {m["type"] for m in messages} <= {"Word", "EndWord"}
            assert all("start_time" in m and "text" in m for m in messages if m["type"] == "Word")
            status, body = await http(port, "POST", "/api/asr-streaming", b"not audio at all")
            assert status == 400 and b"audio" in body.lower()

    asyncio.run(main())


def test_stt_bad_msgpack_closes_only_that_session():
    async def main():
        async with running("stt") as (_, port):
            async with connect(f"ws://127.0.0.1:{port}/api/asr-streaming") as good, \
                    connect(f"ws://127.0.0.1:{port}/api/asr-streaming") as bad:
                for ws in (good, bad):
                    assert kp.parse_stt_server(await ws.recv()) == kp.Ready()
                await bad.send(b"\xc1 not msgpack")
                error = kp.parse_stt_server(await bad.recv())
                while isinstance(error, kp.Step):  # the slot's first tick (on silence) may come first
                    error = kp.parse_stt_server(await bad.recv())
                assert isinstance(error, kp.Error) and "MessagePack" in error.message
                with pytest.raises(ConnectionClosed) as closed:
                    await bad.recv()
                assert closed.value.rcvd.code == 1002
                await good.send(kp.build(kp.Audio(tone(4))))
                while not isinstance(kp.parse_stt_server(await asyncio.wait_for(good.recv(), 5)), kp.Step):
                    pass

    asyncio.run(main())


# ---------------------------------------------------------------- text to speech
async def tts_session(port: int, text: str, fmt: str = "PcmMessagePack") -> tuple[np.ndarray, list, int]:
    async with connect(f"ws://127.0.0.1:{port}/api/tts_streaming?format={fmt}") as ws:
        assert kp.parse_tts_server(await asyncio.wait_for(ws.recv(), 5), kp.TtsFormat(fmt)) == kp.Ready()
        for word in text.split():
            await ws.send(kp.build(kp.Text(word)))
        await ws.send(kp.build(kp.Eos()))
        pcm, words, reader = [], [], sphn.OpusStreamReader(24000)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                message = kp.parse_tts_server(await asyncio.wait_for(ws.recv(), 20), kp.TtsFormat(fmt))
                if isinstance(message, kp.Audio):
                    pcm.append(message.pcm)
                elif isinstance(message, kp.OggOpus):
                    pcm.append(np.asarray(reader.append_bytes(message.data), np.float32).reshape(-1))
                elif isinstance(message, kp.TimedText):
                    words.append(message)
        return np.concatenate(pcm) if pcm else np.zeros(0, np.float32), words, closed.value.rcvd.code


def test_tts_words_and_audio_then_close_and_length_follows_text():
    async def main():
        async with running("tts") as (_, port):
            short_pcm, short_words, code = await tts_session(port, "hi there")
            assert code == 1000
            assert [w.text for w in short_words] == ["hi", "there"]
            assert all(w.start_s <= w.stop_s for w in short_words)
            assert short_words[0].start_s <= short_words[1].start_s
            assert short_pcm.size % 1920 == 0 and short_pcm.size > 0
            long_pcm, long_words, _ = await tts_session(port, "hi there " * 4)
            assert len(long_words) == 8
            assert long_pcm.size > short_pcm.size
            ogg_pcm, ogg_words, _ = await tts_session(port, "hi there", fmt="OggOpusMessagePack")
            assert [w.text for w in ogg_words] == ["hi", "there"] and ogg_pcm.size > 0

    asyncio.run(main())


def test_tts_post_json_returns_wav():
    async def main():
        async with running("tts") as (_, port):
            status, body = await http(port, "POST", "/api/tts_streaming", json.dumps({"text": "hello you"}).encode())
            assert status == 200
            with wave.open(io.BytesIO(body)) as w:
                assert w.getframerate() == 24000 and w.getnchannels() == 1 and w.getnframes() > 0
            status, body = await http(port, "POST", "/api/tts_streaming", b'{"txt": "x"}')
            assert status == 400 and b"text" in body
            status, body = await http(port, "POST", "/api/tts_streaming", json.dumps({"text": "a", "voice": "x"}).encode())
            assert status == 400 and b"voice" in body

    asyncio.run(main())


@pytest.mark.parametrize("case", ["voice_after_text", "oversized", "unknown_voice", "voice_for_a_voiceless_model"])
def test_tts_bad_input_is_an_error_for_that_session_only(case):
    async def main():
        async with running("tts", max_message_bytes=4096) as (_, port):
            query = "?format=PcmMessagePack" + ("&voice=nobody.safetensors" if case == "unknown_voice" else "")
            async with connect(f"ws://127.0.0.1:{port}/api/tts_streaming{query}") as ws:
                if case != "unknown_voice":
                    assert kp.parse_tts_server(await ws.recv(), kp.TtsFormat.PCM_MSGPACK) == kp.Ready()
                if case == "voice_after_text":
                    await ws.send(kp.build(kp.Text("hi")))
                    await ws.send(kp.build(kp.Voice(np.zeros(4, np.float32), (1, 2, 2))))
                elif case == "voice_for_a_voiceless_model":  # the tiny TTS has no voice conditioner
                    await ws.send(kp.build(kp.Voice(np.zeros(4, np.float32), (1, 2, 2))))
                elif case == "oversized":
                    await ws.send(kp.build(kp.Text("x" * 5000)))
                while True:
                    message = kp.parse_tts_server(await asyncio.wait_for(ws.recv(), 10), kp.TtsFormat.PCM_MSGPACK)
                    if isinstance(message, kp.Error):
                        break
                assert {"voice_after_text": "before any text", "oversized": "4096",
                        "unknown_voice": "voice", "voice_for_a_voiceless_model": "takes no voice"}[case] in message.message
            pcm, words, code = await tts_session(port, "still fine")  # the server carries on
            assert code == 1000 and len(words) == 2

    asyncio.run(main())


# ---------------------------------------------------------------- translation
def test_translation_route_audio_both_ways_and_end_turn():
    async def main():
        async with running("translation") as (server, port):
            assert server.routes == ("/api/chat", "/api/translate")
            async with connect(f"ws://127.0.0.1:{port}/api/translate") as ws:
                assert await asyncio.wait_for(ws.recv(), 5) == build(Handshake())
                for page in opus_pages(6):
                    await ws.send(build(Audio(page)))
                await ws.send(build(Control(ControlAction.END_TURN)))
                audio = text = 0
                while audio < 6:
                    message = parse_server_message(await asyncio.wait_for(ws.recv(), 10))
                    audio += isinstance(message, Audio)
                    text += isinstance(message, Text)
                assert server.engine.frames_in == 6
            status, _ = await http(port, "GET", "/api/asr-streaming")
            assert status == 404  # a translation server has no STT route

    asyncio.run(main())


class AlwaysEos(torch.nn.Module):
    """A text head that always says EOS (id 2): a tiny Hibiki that ends its translation as soon as the
    source has ended (an EOS before that reads as PAD)."""

    def __init__(self, text_card: int):
        super().__init__()
        self.text_card = text_card

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = hidden.new_zeros(hidden.shape[:-1] + (self.text_card,))
        logits[..., 2] = 50.0
        return logits


def test_translation_ends_with_the_model_eos_after_end_turn_and_frees_the_slot():
    async def main():
        async with running("translation") as (server, port):
            lm = server.engine.lm
            lm.text_linear = AlwaysEos(lm.text_linear.weight.shape[0])
            async with connect(f"ws://127.0.0.1:{port}/api/translate") as ws:
                assert await asyncio.wait_for(ws.recv(), 5) == build(Handshake())
                for page in opus_pages(6):
                    await ws.send(build(Audio(page)))
                await asyncio.sleep(20 * TICK)  # the source is still open: EOS reads as PAD, nothing ends
                assert ws.state.name == "OPEN"
                await ws.send(build(Control(ControlAction.END_TURN)))
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        parse_server_message(await asyncio.wait_for(ws.recv(), 10))
                assert closed.value.rcvd.code == 1000 and closed.value.rcvd.reason == "translation complete"
            await until(lambda: server.engine.scheduler.free_slots == 2)
            status, body = await http(port, "GET", "/api/health")
            assert status == 200 and json.loads(body)["free_slots"] == 2

    asyncio.run(main())


def test_idle_session_is_closed():
    async def main():
        async with running("stt", idle_timeout=0.3) as (server, port):
            async with connect(f"ws://127.0.0.1:{port}/api/asr-streaming") as ws:
                assert kp.parse_stt_server(await ws.recv()) == kp.Ready()
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(ws.recv(), 5)
                assert closed.value.rcvd.code == 1000 and "idle" in closed.value.rcvd.reason
            assert server.errors["idle"] == 1

    asyncio.run(main())
