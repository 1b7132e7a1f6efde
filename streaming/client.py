"""A small asyncio client for `/api/chat` (the Moshi protocol): a thin shell over `moshi_protocol`.

    async with await ChatClient.connect("ws://127.0.0.1:8998", api_key="public_token", text_topk=25) as chat:
        await chat.send_pcm(pcm)              # float32 [T] at 24 kHz, any length
        async for event in chat:              # PcmChunk (float32 [T] at 24 kHz) or TextPiece, until the server closes
            ...

`connect` returns once the server's Handshake has arrived (a Metadata message before it is kept in
`.metadata`). A refused connection (HTTP 401, nothing listening) or an Error message from the server,
before or after the handshake, raises `ChatClientError` with the server's words.

The URL and API-key handling (`server_url`, `open_websocket`, `receive_frame`) is shared with the Kyutai
STT/TTS clients in `kyutai_client`; every client error is a `ClientError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
import sphn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from antiphon.errors import AntiphonError

from .errors import MAX_MESSAGE_BYTES
from .moshi_protocol import Audio, Control, ControlAction, Error, Handshake, Metadata, Text, build, parse_server_message

SAMPLE_RATE = 24000
CHAT_PATH = "/api/chat"
TRANSLATE_PATH = "/api/translate"
FRAME_SECONDS = 0.08
API_KEY_HEADER = "kyutai-api-key"


class ClientError(AntiphonError):
    """A client of an antiphon (or Kyutai) server: the server refused the connection, could not be reached,
    sent an Error message, or closed on an error."""


class ChatClientError(ClientError):
    """The /api/chat server refused the connection, sent an Error message, or closed on an error."""


@dataclasses.dataclass(frozen=True)
class PcmChunk:
    pcm: np.ndarray  # float32 [T], 24 kHz mono: the model's voice, decoded from the server's Ogg/Opus


@dataclasses.dataclass(frozen=True)
class TextPiece:
    text: str  # a fragment to append as is (a leading space starts a word)


Event = PcmChunk | TextPiece


def server_url(url: str, default_path: str, query: dict | None = None, error: type[ClientError] = ClientError) -> str:
    """`ws://host:port` (path `default_path` added when none is given) plus `query` (str() of each value,
    appended to any query already in the URL). Raises `error` for a scheme other than ws or wss."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise error(f"bad server URL {url!r}: expected ws://host:port or wss://host:port")
    path = parts.path if parts.path not in ("", "/") else default_path
    query = "&".join(q for q in (parts.query, urlencode({k: str(v) for k, v in (query or {}).items()})) if q)
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def chat_url(url: str, path: str = CHAT_PATH, **sampling_query) -> str:
    """`ws://host:port` (`path` added when none is given) plus the sampling query (str() of each value)."""
    return server_url(url, path, sampling_query, ChatClientError)


async def open_websocket(full_url: str, api_key: str | None, open_timeout: float,
                         error: type[ClientError] = ClientError) -> ClientConnection:
    """Connect to `full_url`, sending `api_key` (if any) in the kyutai-api-key header. An HTTP refusal (401:
    bad or missing key), nothing listening, a bad URL or a timeout raise `error` with the reason."""
    headers = {API_KEY_HEADER: api_key} if api_key is not None else None
    try:
        return await connect(full_url, additional_headers=headers, open_timeout=open_timeout, compression=None,
                             max_size=MAX_MESSAGE_BYTES)
    except InvalidStatus as e:
        response = e.response
        body = response.body.decode("utf-8", "replace").strip() if response.body else response.reason_phrase
        hint = " (a missing or unknown API key)" if response.status_code == 401 else ""
        raise error(f"{redact(full_url)} refused the connection: HTTP {response.status_code}: {body}{hint}") from None
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError, asyncio.TimeoutError) as e:
        raise error(f"cannot connect to {redact(full_url)}: {e or type(e).__name__}") from None


def redact(url: str) -> str:
    """`url` with the value of an auth_id query key hidden, for error messages and logs."""
    parts = urlsplit(url)
    if "auth_id=" not in parts.query:
        return url
    query = "&".join("auth_id=***" if q.startswith("auth_id=") else q for q in parts.query.split("&"))
    return urlunsplit(parts._replace(query=query))


async def receive_frame(ws: ClientConnection, error: type[ClientError] = ClientError) -> bytes | str | None:
    """The next frame; None when the server closed normally (1000, 1001); `error` on any other close."""
    try:
        return await ws.recv()
    except ConnectionClosed as e:
        if e.rcvd is not None and e.rcvd.code not in (1000, 1001):
            raise error(f"the server closed the connection: {e.rcvd.code} {e.rcvd.reason}") from None
        if e.rcvd is None and e.sent is None:  # the TCP connection dropped without a close frame
            raise error("the connection to the server was lost") from None
        return None


class ChatClient:
    def __init__(self, ws: ClientConnection, metadata: dict | None = None):
        """Use `await ChatClient.connect(...)`."""
        self.ws, self.metadata = ws, metadata
        self._writer = sphn.OpusStreamWriter(SAMPLE_RATE)
        self._reader = sphn.OpusStreamReader(SAMPLE_RATE)
        self._pending: list[Event] = []

    @classmethod
    async def connect(cls, url: str, api_key: str | None = None, open_timeout: float = 10.0, path: str = CHAT_PATH,
                      **sampling_query) -> ChatClient:
        """Open the WebSocket and wait for the Handshake. `path`: the route when `url` has none (/api/chat,
        or /api/translate); `sampling_query`: the query keys (text_temperature=0.7, text_topk=25,
        max_steps=100, ...). Raises ChatClientError."""
        full = chat_url(url, path, **sampling_query)
        ws = await open_websocket(full, api_key, open_timeout, ChatClientError)
        client = cls(ws)
        try:
            await asyncio.wait_for(client._handshake(), open_timeout)
        except BaseException as e:
            await ws.close()
            if isinstance(e, (TimeoutError, asyncio.TimeoutError)):  # two classes before Python 3.11
                raise ChatClientError(f"{redact(full)}: no handshake within {open_timeout} s") from None
            raise
        return client

    async def _handshake(self) -> None:
        while True:
            message = await self._recv()
            if message is None:
                raise ChatClientError("the server closed the connection before its handshake")
            if isinstance(message, Handshake):
                return
            if isinstance(message, Metadata):
                self.metadata = message.data

    async def _recv(self):
        """The next parsed server message; None on a normal close. Raises ChatClientError on an Error message."""
        data = await receive_frame(self.ws, ChatClientError)
        if data is None:
            return None
        message = parse_server_message(data)
        if isinstance(message, Error):
            raise ChatClientError(f"server error: {message.message}")
        return message

    # ------------------------------------------------------------------ audio out, events in
    async def send_pcm(self, pcm: np.ndarray) -> None:
        """Send float32 PCM [T] at 24 kHz (any length; Opus keeps the remainder for the next call)."""
        pcm = np.asarray(pcm, dtype=np.float32)
        if pcm.ndim != 1:
            raise ChatClientError(f"send_pcm takes mono PCM [T] at 24 kHz, got shape {list(pcm.shape)}")
        ogg = self._writer.append_pcm(np.ascontiguousarray(pcm))
        if ogg:
            await self._send(build(Audio(ogg)))

    async def end_turn(self) -> None:
        """Send Control endTurn: on /api/translate, the source has ended (the server closes the session
        once the translation has)."""
        await self._send(build(Control(ControlAction.END_TURN)))

    async def _send(self, message: bytes) -> None:
        try:
            await self.ws.send(message)
        except ConnectionClosed as e:
            raise ChatClientError(f"the connection is closed: {e}") from None

    def __aiter__(self):
        return self

    async def __anext__(self) -> Event:
        """The next PcmChunk or TextPiece; StopAsyncIteration when the server closes normally."""
        while not self._pending:
            message = await self._recv()
            if message is None:
                raise StopAsyncIteration
            if isinstance(message, Audio):
                pcm = np.asarray(self._reader.append_bytes(message.ogg_bytes), dtype=np.float32).reshape(-1)
                if pcm.size:
                    self._pending.append(PcmChunk(pcm))
            elif isinstance(message, Text):
                self._pending.append(TextPiece(message.text))
            elif isinstance(message, Metadata):
                self.metadata = message.data
            # Handshake again, Ping, ColoredText, Unknown: nothing for the caller
        return self._pending.pop(0)

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def translate_pcm(url: str, pcm: np.ndarray, api_key: str | None = None, timeout: float = 60.0,
                        **sampling_query) -> tuple[np.ndarray, str]:
    """float32 PCM [T] at 24 kHz -> (the translated speech, float32 [T'] at 24 kHz; its text) through a
    server's /api/translate: the source in 80 ms chunks at the pace of real time (the server runs
    translation in real time), then endTurn; the server closes once it has said the translation. Raises
    ChatClientError, also when nothing ends within `timeout` s after the source."""
    chunk = round(FRAME_SECONDS * SAMPLE_RATE)
    async with await ChatClient.connect(url, api_key, path=TRANSLATE_PATH, **sampling_query) as client:
        async def send() -> None:
            for first in range(0, len(pcm), chunk):
                await client.send_pcm(pcm[first:first + chunk])
                await asyncio.sleep(FRAME_SECONDS)
            await client.send_pcm(np.zeros(-len(pcm) % chunk + chunk, np.float32))  # flush Opus's last page
            await client.end_turn()

        async def receive() -> tuple[list[np.ndarray], list[str]]:
            audio, text = [], []
            async for event in client:
                if isinstance(event, PcmChunk):
                    audio.append(event.pcm)
                else:
                    text.append(event.text)
            return audio, text

        receiving = asyncio.ensure_future(receive())
        try:
            await send()
            audio, text = await asyncio.wait_for(receiving, timeout)
        except (TimeoutError, asyncio.TimeoutError):
            raise ChatClientError(f"{redact(url)}: the translation did not end within {timeout} s of the end "
                                  "of the source") from None
        finally:
            receiving.cancel()
    return (np.concatenate(audio) if audio else np.zeros(0, np.float32)), "".join(text).strip()
