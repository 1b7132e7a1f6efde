"""streaming.kyutai_client against small in-test WebSocket servers that play scripted Kyutai STT/TTS transcripts
(built with kyutai_protocol.build); what the clients sent is parsed back with parse_stt_client/parse_tts_client."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import sphn
from antiphon.errors import InputError
from antiphon.streaming.client import PcmChunk
from antiphon.streaming.kyutai_client import (
    FRAME_SAMPLES,
    SttClient,
    SttClientError,
    TimedWord,
    TtsClient,
    TtsClientError,
    pair_words,
    speak_text,
    transcribe_pcm,
)
from antiphon.streaming.kyutai_protocol import (
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
    Voice,
    Word,
    build,
    parse_stt_client,
    parse_tts_client,
)
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

SCRIPT = [("hello", 0.12, 0.48), ("big", 0.56, 0.8), ("world", 0.88, 1.36)]
DELAY_FRAMES = 3  # silence frames the scripted STT server wants after the marker before echoing it


def run(coro, timeout: float = 20):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 24000))).astype(np.float32)


@contextlib.asynccontextmanager
async def scripted(handler, api_key: str | None = None):
    """A server running `handler(ws, log)` on loopback; yields (url, log): log["path"], log["headers"], log["in"]
    (the client's parsed messages, appended by the handler). With `api_key`, other keys get HTTP 401."""
    log: dict = {"in": []}

    def check_key(connection, request):
        log["path"], log["headers"] = request.path, request.headers
        if api_key is not None and request.headers.get("kyutai-api-key") != api_key:
            return connection.respond(401, "unknown API key\n")
        return None

    async with serve(lambda ws: handler(ws, log), "127.0.0.1", 0, process_request=check_key,
                     compression=None) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", log


def query(log) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(log["path"]).query).items()}


# ---------------------------------------------------------------------------------------- STT
async def stt_script(ws, log):
    """Ready; on the Marker: the words of SCRIPT (Word, Step, EndWord), then the Marker back once DELAY_FRAMES
    more Audio messages have come in; then wait for the client to close."""
    await ws.send(build(Ready()))
    after_marker = None
    with contextlib.suppress(ConnectionClosed):
        async for data in ws:
            message = parse_stt_client(data)
            log["in"].append(message)
            if isinstance(message, Marker):
                after_marker = 0
                for i, (text, start, stop) in enumerate(SCRIPT):
                    await ws.send(build(Word(text, start)))
                    await ws.send(build(Step(i, (0.1, 0.2, 0.3, 0.4), 1920)))
                    await ws.send(build(EndWord(stop)))
            elif after_marker is not None:
                after_marker += 1
                if after_marker == DELAY_FRAMES:
                    await ws.send(build(Marker(message_id(log))))


def message_id(log) -> int:
    return next(m.id for m in log["in"] if isinstance(m, Marker))


def test_transcribe_pcm_sends_audio_marker_silence_and_pairs_words():
    pcm = speech(0.5)

    async def main():
        async with scripted(stt_script, api_key="sesame") as (url, log):
            words = await transcribe_pcm(url, pcm, api_key="sesame", marker_id=7, flush_pace=0.001)
            return words, log

    words, log = run(main())
    assert urlsplit(log["path"]).path == "/api/asr-streaming" and log["headers"]["kyutai-api-key"] == "sesame"
    assert words == [TimedWord(*w) for w in SCRIPT]
    sent = log["in"]
    marker_at = next(i for i, m in enumerate(sent) if isinstance(m, Marker))
    assert sent[marker_at] == Marker(7)
    before, after = sent[:marker_at], sent[marker_at + 1:]
    assert all(isinstance(m, Audio) for m in before + after)
    assert [m.pcm.size for m in before] == [FRAME_SAMPLES] * (pcm.size // FRAME_SAMPLES) + [pcm.size % FRAME_SAMPLES]
    assert np.array_equal(np.concatenate([m.pcm for m in before]), pcm)  # float32 on the wire: exact
    assert len(after) >= DELAY_FRAMES and all(m.pcm.size == FRAME_SAMPLES and not m.pcm.any() for m in after)


def test_stt_client_message_by_message_and_auth_id_in_url():
    async def main():
        async with scripted(stt_script) as (url, log):
            async with await SttClient.connect(url + "/api/asr-streaming?auth_id=public_token") as stt:
                await stt.send_pcm(speech(0.1))
                await stt.send_marker(-3)
                got = []
                async for message in stt:
                    got.append(message)
                    if isinstance(message, EndWord):
                        await stt.send_pcm(np.zeros(DELAY_FRAMES * FRAME_SAMPLES, np.float32))
                    if isinstance(message, Marker):
                        break
            return got, log

    got, log = run(main())
    assert query(log) == {"auth_id": "public_token"}
    assert "kyutai-api-key" not in log["headers"]
    assert [type(m) for m in got] == [Word, Step, EndWord] * len(SCRIPT) + [Marker] and got[-1] == Marker(-3)
    assert pair_words(got) == [TimedWord(*w) for w in SCRIPT]


def test_pair_words_without_end_words():
    messages = [Word("a", 0.0), Word("b", 0.5), EndWord(0.9), EndWord(1.2), Word("c", 1.5), Marker(0)]
    assert pair_words(messages) == [TimedWord("a", 0.0, 0.5), TimedWord("b", 0.5, 0.9), TimedWord("c", 1.5, 1.5)]
    assert pair_words(messages, end=2.0)[-1] == TimedWord("c", 1.5, 2.0)  # the open last word: to the end
    assert pair_words(messages, end=1.0)[-1] == TimedWord("c", 1.5, 1.5)  # never before its start


def test_stt_errors():
    async def refuse(ws, log):
        await ws.send(build(Error("no free channels")))
        await ws.close()

    async def fail_on_marker(ws, log):
        await ws.send(build(Ready()))
        async for data in ws:
            if isinstance(parse_stt_client(data), Marker):
                await ws.send(build(Error("model crashed")))

    async def close_on_marker(ws, log):
        await ws.send(build(Ready()))
        async for data in ws:
            if isinstance(parse_stt_client(data), Marker):
                await ws.close(1011, "engine failure")

    async def quit_on_marker(ws, log):
        await ws.send(build(Ready()))
        async for data in ws:
            if isinstance(parse_stt_client(data), Marker):
                await ws.close()

    async def garbage(ws, log):
        await ws.send(b"\x93\x01\x02\x03")

    async def main():
        pcm = speech(0.2)
        async with scripted(refuse) as (url, _):
            with pytest.raises(SttClientError, match="server error: no free channels"):
                await SttClient.connect(url)
        async with scripted(fail_on_marker) as (url, _):
            with pytest.raises(SttClientError, match="server error: model crashed"):
                await transcribe_pcm(url, pcm)
        async with scripted(close_on_marker) as (url, _):
            with pytest.raises(SttClientError, match="1011 engine failure"):
                await transcribe_pcm(url, pcm)
        async with scripted(quit_on_marker) as (url, _):
            with pytest.raises(SttClientError, match="before sending the end marker back"):
                await transcribe_pcm(url, pcm)
        async with scripted(garbage) as (url, _):
            with pytest.raises(SttClientError, match="malformed message from the server"):
                await SttClient.connect(url)
        async with scripted(stt_script, api_key="sesame") as (url, _):
            for key in (None, "wrong"):
                with pytest.raises(SttClientError, match="HTTP 401.*API key"):
                    await transcribe_pcm(url, pcm, api_key=key)
            with pytest.raises(SttClientError, match=r"auth_id=\*\*\*") as refused:
                await SttClient.connect(url + "/?auth_id=hunter2")
            assert "hunter2" not in str(refused.value)  # a key in the URL stays out of the message
        with pytest.raises(SttClientError, match="cannot connect"):
            await transcribe_pcm(url, pcm)  # nothing listens there any more
        with pytest.raises(SttClientError, match="ws://host:port"):
            await SttClient.connect("http://127.0.0.1:1")
        with pytest.raises(InputError, match="mono PCM"):
            await transcribe_pcm(url, np.zeros((2, 100), np.float32))

    run(main())


# ---------------------------------------------------------------------------------------- TTS
def opus_pages(frames: int) -> list[bytes]:
    writer, t = sphn.OpusStreamWriter(24000), np.arange(FRAME_SAMPLES) / 24000
    pages = [writer.append_pcm((0.3 * np.sin(2 * np.pi * 330 * (t + i * 0.08))).astype(np.float32))
             for i in range(frames)]
    return [p for p in pages if p]


def tts_script(fmt: str, frames: int = 6):
    """Ready; after Eos: one TimedText per word received and `frames` 80 ms audio frames (OggOpus pages or
    Audio), interleaved; then a normal close."""
    async def handler(ws, log):
        await ws.send(build(Ready()))
        async for data in ws:
            message = parse_tts_client(data)
            log["in"].append(message)
            if isinstance(message, Eos):
                break
        words = [w for m in log["in"] if isinstance(m, Text) for w in m.text.split()]
        timed = [TimedText(w, 0.24 * i, 0.24 * i + 0.2) for i, w in enumerate(words)]
        if fmt == "OggOpusMessagePack":
            audio = [OggOpus(p) for p in opus_pages(frames)]
        else:
            audio = [Audio(np.full(FRAME_SAMPLES, i / 100, np.float32)) for i in range(frames)]
        log["out"] = audio
        for i in range(max(len(audio), len(timed))):
            for part in (timed, audio):
                if i < len(part):
                    await ws.send(build(part[i]))
        await ws.close()
    return handler


def test_speak_text_ogg_opus():
    text = "Hello there,  how are\nyou?"

    async def main():
        async with scripted(tts_script("OggOpusMessagePack"), api_key="k") as (url, log):
            return await speak_text(url, text, voice="expresso/happy.wav", api_key="k", seed=5), log

    (pcm, words), log = run(main())
    assert urlsplit(log["path"]).path == "/api/tts_streaming"
    assert query(log) == {"format": "OggOpusMessagePack", "voice": "expresso/happy.wav", "seed": "5"}
    assert log["in"] == [Text(w) for w in text.split()] + [Eos()]  # whole words, then Eos
    assert [w.text for w in words] == text.split()
    assert all(a.stop <= b.start for a, b in zip(words, words[1:])) and all(w.start < w.stop for w in words)
    reader = sphn.OpusStreamReader(24000)
    expected = np.concatenate([np.asarray(reader.append_bytes(m.data), np.float32).reshape(-1) for m in log["out"]])
    assert pcm.dtype == np.float32 and pcm.ndim == 1 and pcm.size > 0
    assert np.array_equal(pcm, expected)  # every page the server sent, decoded


def test_tts_client_pcm_format_and_voice_embedding():
    embedding = np.random.default_rng(0).standard_normal((1, 4, 3)).astype(np.float32)

    async def main():
        async with scripted(tts_script("PcmMessagePack", frames=4)) as (url, log):
            async with await TtsClient.connect(url, format="PcmMessagePack") as tts:
                await tts.send_voice(embedding)
                await tts.send_text("one two")
                await tts.send_eos()
                items = [item async for item in tts]
            return items, log

    items, log = run(main())
    assert query(log) == {"format": "PcmMessagePack"}
    assert log["in"][0] == Voice(embedding.ravel(), (1, 4, 3)) and log["in"][1:] == [Text("one two"), Eos()]
    chunks = [i.pcm for i in items if isinstance(i, PcmChunk)]
    assert [c.tolist() for c in chunks] == [m.pcm.tolist() for m in log["out"]]
    assert [(t.text, t.start_s) for t in items if isinstance(t, TimedText)] == [("one", 0.0), ("two", 0.24)]


def test_tts_errors():
    async def busy(ws, log):
        await ws.send(build(Error("no free channels")))

    async def crash_after_text(ws, log):
        await ws.send(build(Ready()))
        await ws.recv()
        await ws.close(1011, "engine failure")

    async def silent(ws, log):
        await ws.wait_closed()

    async def main():
        async with scripted(busy) as (url, _):
            with pytest.raises(TtsClientError, match="server error: no free channels"):
                await speak_text(url, "hello")
        async with scripted(crash_after_text) as (url, _):
            with pytest.raises(TtsClientError, match="1011 engine failure"):
                await speak_text(url, "hello")
        async with scripted(silent) as (url, _):
            with pytest.raises(TtsClientError, match="no Ready within"):
                await TtsClient.connect(url, open_timeout=0.3)
        async with scripted(tts_script("PcmMessagePack"), api_key="k") as (url, _):
            with pytest.raises(TtsClientError, match="HTTP 401"):
                await speak_text(url, "hello")
            with pytest.raises(InputError, match="nothing to speak"):
                await speak_text(url, " \n ", api_key="k")
            with pytest.raises(TtsClientError, match="formats OggOpusMessagePack, PcmMessagePack only"):
                await TtsClient.connect(url, format="Pcm", api_key="k")
            async with await TtsClient.connect(url, api_key="k") as tts:
                with pytest.raises(TtsClientError, match="shape"):
                    await tts.send_voice(np.zeros(6, np.float32), shape=(4, 2))
        with pytest.raises(TtsClientError, match="cannot connect"):
            await speak_text(url, "hello")

    run(main())
