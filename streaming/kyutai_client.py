"""Asyncio clients for Kyutai's speech-to-text and text-to-speech WebSocket endpoints (moshi-server's protocol,
`kyutai_protocol`): `/api/asr-streaming` and `/api/tts_streaming`.

    words = await transcribe_pcm("ws://127.0.0.1:8998", pcm)            # [TimedWord(text, start, stop)]
    pcm, words = await speak_text("ws://127.0.0.1:8998", "Hello there.")  # float32 [T] at 24 kHz, [TimedWord]

or, message by message:

    async with await SttClient.connect(url, api_key="public_token") as stt:
        await stt.send_pcm(pcm)                 # Audio messages of 1920 samples (80 ms)
        await stt.send_marker(0)                # echoed once everything before it is transcribed
        async for message in stt:               # Word, EndWord, Step, Marker (kyutai_protocol dataclasses)
            ...

    async with await TtsClient.connect(url, voice="expresso/...") as tts:
        await tts.send_text("Hello there.")
        await tts.send_eos()
        async for item in tts:                  # PcmChunk (float32 [T], 24 kHz) or TimedText, until the server closes
            ...

`connect` returns once the server's Ready has arrived (a slot is allocated). The API key goes in the
`kyutai-api-key` header (or put `?auth_id=KEY` in the URL). A refused connection (HTTP 401, nothing
listening), an Error message ("no free channels", ...), a malformed message or an abnormal close raise
`SttClientError` / `TtsClientError` (both `ClientError`s, as `ChatClientError`) with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import sphn
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from antiphon.errors import InputError

from .client import ClientError, PcmChunk, open_websocket, receive_frame, redact, server_url
from .errors import ProtocolError
from .kyutai_protocol import (
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
    Voice,
    Word,
    build,
    parse_stt_server,
    parse_tts_server,
)

SAMPLE_RATE = 24000
FRAME_SAMPLES = 1920  # 80 ms: the size of the Audio messages sent to the STT server
STT_PATH = "/api/asr-streaming"
TTS_PATH = "/api/tts_streaming"
FLUSH_SECONDS = 10.0  # silence sent after the end marker at most (more than any STT model's text delay)
FLUSH_PACE = 0.01  # seconds between two 80 ms silence frames while waiting for the marker


class SttClientError(ClientError):
    """The /api/asr-streaming server refused the connection, sent an Error message, or closed on an error."""


class TtsClientError(ClientError):
    """The /api/tts_streaming server refused the connection, sent an Error message, or closed on an error."""


@dataclasses.dataclass(frozen=True)
class TimedWord:
    """A word with its start and stop in seconds: on the input audio's clock (STT) or the output's (TTS)."""

    text: str
    start: float
    stop: float


def mono_pcm(pcm, error: type[Exception] = InputError) -> np.ndarray:
    """float32 [T], or `error` for another rank or non-finite samples."""
    pcm = np.asarray(pcm, dtype=np.float32)
    if pcm.ndim != 1:
        raise error(f"expected mono PCM [T] at 24 kHz, got shape {list(pcm.shape)}")
    if not np.isfinite(pcm).all():
        raise error("the PCM holds non-finite samples (NaN or inf)")
    return pcm


class _MessagePackClient:
    """One WebSocket of MessagePack maps: connect and wait for Ready, send frames, receive parsed messages."""

    PATH: ClassVar[str]
    ERROR: ClassVar[type[ClientError]]

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self._early: list = []  # messages that came before Ready (none expected), returned first
        self._pending: list = []  # items decoded but not yet returned

    def _parse(self, data: bytes | str):
        raise NotImplementedError

    @classmethod
    async def _open(cls, url: str, query: dict, api_key: str | None, open_timeout: float, **init):
        full = server_url(url, cls.PATH, {k: v for k, v in query.items() if v is not None}, cls.ERROR)
        ws = await open_websocket(full, api_key, open_timeout, cls.ERROR)
        client = cls(ws, **init)
        try:
            await asyncio.wait_for(client._wait_ready(), open_timeout)
        except BaseException as e:
            await ws.close()
            if isinstance(e, (TimeoutError, asyncio.TimeoutError)):  # two classes before Python 3.11
                raise cls.ERROR(f"{redact(full)}: no Ready within {open_timeout} s") from None
            raise
        return client

    async def _wait_ready(self) -> None:
        while True:
            message = await self._recv()
            if message is None:
                raise self.ERROR("the server closed the connection before its Ready message")
            if isinstance(message, Ready):
                return
            self._early.append(message)

    async def _next_message(self):
        """The next message for the caller (those before Ready first); None on a normal close."""
        return self._early.pop(0) if self._early else await self._recv()

    async def _recv(self):
        """The next parsed server message; None on a normal close. Raises ERROR on an Error message."""
        data = await receive_frame(self.ws, self.ERROR)
        if data is None:
            return None
        try:
            message = self._parse(data)
        except ProtocolError as e:
            raise self.ERROR(f"malformed message from the server: {e}") from None
        if isinstance(message, Error):
            raise self.ERROR(f"server error: {message.message}")
        return message

    async def _send(self, frame: bytes) -> None:
        try:
            await self.ws.send(frame)
        except ConnectionClosed as e:
            raise self.ERROR(f"the connection is closed: {e}") from None

    def __aiter__(self):
        return self

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


# ---------------------------------------------------------------------------------------------------------
# Speech to text


class SttClient(_MessagePackClient):
    """A client of `/api/asr-streaming`: audio and markers out; Word, EndWord, Step, Marker in."""

    PATH = STT_PATH
    ERROR = SttClientError

    @classmethod
    async def connect(cls, url: str, api_key: str | None = None, open_timeout: float = 10.0) -> SttClient:
        """Open `url` (ws://host:port; path /api/asr-streaming added when none is given) and wait for Ready."""
        return await cls._open(url, {}, api_key, open_timeout)

    def _parse(self, data):
        return parse_stt_server(data)

    async def send_pcm(self, pcm: np.ndarray) -> None:
        """Send float32 PCM [T] at 24 kHz (any length) as Audio messages of 1920 samples (the last may be shorter;
        the server re-chunks)."""
        pcm = mono_pcm(pcm, self.ERROR)
        for i in range(0, pcm.size, FRAME_SAMPLES):
            await self._send(build(Audio(pcm[i:i + FRAME_SAMPLES])))

    async def send_marker(self, marker_id: int) -> None:
        """The server echoes Marker(id) once the audio sent before it (plus the model's delay) is transcribed."""
        await self._send(build(Marker(int(marker_id))))

    async def __anext__(self) -> Word | EndWord | Step | Marker:
        """The next Word, EndWord, Step or Marker; StopAsyncIteration when the server closes normally."""
        while not self._pending:
            message = await self._next_message()
            if message is None:
                raise StopAsyncIteration
            if not isinstance(message, Ready):
                self._pending.append(message)
        return self._pending.pop(0)


def pair_words(messages: Iterable, end: float | None = None) -> list[TimedWord]:
    """STT messages -> words: a Word starts one, the next EndWord gives its stop. A word still open when the
    next Word comes stops there. Servers send a word's EndWord only when the next word starts (Kyutai's do),
    so the last word is usually still open at the end: it stops at `end` (the end of the audio, when known
    and after its start), else where it starts. Other messages are ignored."""
    words: list[TimedWord] = []
    open_word: Word | None = None
    for message in messages:
        if isinstance(message, Word):
            if open_word is not None:
                words.append(TimedWord(open_word.text, open_word.start_time, message.start_time))
            open_word = message
        elif isinstance(message, EndWord) and open_word is not None:
            words.append(TimedWord(open_word.text, open_word.start_time, max(message.stop_time, open_word.start_time)))
            open_word = None
    if open_word is not None:
        stop = end if end is not None and end > open_word.start_time else open_word.start_time
        words.append(TimedWord(open_word.text, open_word.start_time, stop))
    return words


async def transcribe_pcm(url: str, pcm: np.ndarray, api_key: str | None = None, *, marker_id: int = 0,
                         open_timeout: float = 10.0, flush_seconds: float = FLUSH_SECONDS,
                         flush_pace: float = FLUSH_PACE) -> list[TimedWord]:
    """Transcribe float32 PCM [T] at 24 kHz through an STT server: send all the audio (the server's TCP
    backpressure paces it), then Marker(marker_id), then 80 ms silence frames, one every `flush_pace` seconds
    and at most `flush_seconds` of them, until the marker comes back; then close. Returns the words, with
    start and stop on the clock of `pcm` (`pair_words`; the last word stops at the end of `pcm` unless an
    EndWord came for it). Raises SttClientError (also when the server closes first)."""
    pcm = mono_pcm(pcm)
    async with await SttClient.connect(url, api_key=api_key, open_timeout=open_timeout) as stt:
        async def send() -> None:
            await stt.send_pcm(pcm)
            await stt.send_marker(marker_id)
            silence = np.zeros(FRAME_SAMPLES, np.float32)
            for _ in range(max(1, round(flush_seconds * SAMPLE_RATE / FRAME_SAMPLES))):
                await stt.send_pcm(silence)
                await asyncio.sleep(flush_pace)

        sender = asyncio.create_task(send())
        messages = []
        try:
            async for message in stt:
                if isinstance(message, Marker) and message.id == marker_id:
                    break
                messages.append(message)
            else:
                raise SttClientError("the server closed the connection before sending the end marker back")
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClientError):
                await sender  # a send that failed on the closed socket: the receive side says why
    return pair_words(messages, end=pcm.size / SAMPLE_RATE)


# ---------------------------------------------------------------------------------------------------------
# Text to speech


class TtsClient(_MessagePackClient):
    """A client of `/api/tts_streaming` in a MessagePack format: text, Eos, Voice out; audio and TimedText in."""

    PATH = TTS_PATH
    ERROR = TtsClientError
    FORMATS = (TtsFormat.OGG_OPUS_MSGPACK, TtsFormat.PCM_MSGPACK)

    def __init__(self, ws: ClientConnection, format: TtsFormat = TtsFormat.OGG_OPUS_MSGPACK):
        super().__init__(ws)
        self.format = format
        self._reader = sphn.OpusStreamReader(SAMPLE_RATE)

    @classmethod
    async def connect(cls, url: str, voice: str | None = None, format: TtsFormat | str = TtsFormat.OGG_OPUS_MSGPACK,
                      api_key: str | None = None, open_timeout: float = 10.0, **query) -> TtsClient:
        """Open `url` (ws://host:port; path /api/tts_streaming added when none is given) with the query
        format=..., voice=... (a voice name on the server) and any other `query` keys (seed, temperature, top_k,
        cfg_alpha, ...; None values left out), and wait for Ready. `format`: OggOpusMessagePack (Ogg/Opus
        audio, decoded here) or PcmMessagePack (float32 samples); the raw formats send no Ready, no word times."""
        try:
            format = TtsFormat(format)
        except ValueError:
            format = None
        if format not in cls.FORMATS:
            raise TtsClientError(f"TtsClient speaks the formats {', '.join(f.value for f in cls.FORMATS)} only")
        return await cls._open(url, {"format": format.value, "voice": voice, **query}, api_key, open_timeout,
                               format=format)

    def _parse(self, data):
        return parse_tts_server(data, self.format)

    async def send_text(self, text: str) -> None:
        """Words to speak (the server splits on whitespace; send whole words, never half of one)."""
        await self._send(build(Text(text)))

    async def send_eos(self) -> None:
        """No more text: the server closes the connection once the audio is out."""
        await self._send(build(Eos()))

    async def send_voice(self, embeddings: np.ndarray, shape: Iterable[int] | None = None) -> None:
        """A custom voice embedding (float32 values, row-major `shape`, default the array's own), before any text."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        try:
            voice = Voice(embeddings, tuple(embeddings.shape if shape is None else shape))
        except ValueError as e:
            raise TtsClientError(str(e)) from None
        await self._send(build(voice))

    async def __anext__(self) -> PcmChunk | TimedText:
        """The next PcmChunk (float32 [T] at 24 kHz) or TimedText; StopAsyncIteration when the server closes."""
        while not self._pending:
            message = await self._next_message()
            if message is None:
                raise StopAsyncIteration
            if isinstance(message, OggOpus):
                try:
                    pcm = np.asarray(self._reader.append_bytes(message.data), dtype=np.float32).reshape(-1)
                except ValueError as e:
                    raise TtsClientError(f"bad Ogg/Opus audio from the server: {e}") from None
            elif isinstance(message, Audio):
                pcm = message.pcm
            elif isinstance(message, TimedText):
                self._pending.append(message)
                continue
            else:  # Ready again
                continue
            if pcm.size:
                self._pending.append(PcmChunk(pcm))
        return self._pending.pop(0)


async def speak_text(url: str, text: str, voice: str | None = None, api_key: str | None = None, *,
                     voice_embedding: np.ndarray | None = None, format: TtsFormat | str = TtsFormat.OGG_OPUS_MSGPACK,
                     open_timeout: float = 10.0, **query) -> tuple[np.ndarray, list[TimedWord]]:
    """Speak `text` through a TTS server: optionally a Voice message (`voice_embedding`, sent with its own
    shape), then one Text message per word, then Eos; then read until the server closes. Returns (float32 PCM
    [T] at 24 kHz, the words with their start and stop on the audio's clock). Raises TtsClientError."""
    words = text.split()
    if not words:
        raise InputError("nothing to speak: the text is empty")
    async with await TtsClient.connect(url, voice=voice, format=format, api_key=api_key, open_timeout=open_timeout,
                                       **query) as tts:
        if voice_embedding is not None:
            await tts.send_voice(voice_embedding)
        for word in words:
            await tts.send_text(word)
        await tts.send_eos()
        chunks, timed = [], []
        async for item in tts:
            if isinstance(item, PcmChunk):
                chunks.append(item.pcm)
            else:
                timed.append(TimedWord(item.text, item.start_s, item.stop_s))
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return pcm, timed
