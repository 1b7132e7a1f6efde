"""A small asyncio client for `/api/chat` (the Moshi protocol): a thin shell over `moshi_protocol`.

    async with await ChatClient.connect("ws://127.0.0.1:8998", api_key="public_token", text_topk=25) as chat:
        await chat.send_pcm(pcm)              # float32 [T] at 24 kHz, any length
        async for event in chat:              # PcmChunk (float32 [T] at 24 kHz) or TextPiece, until the server closes
            ...

`connect` returns once the server's Handshake has arrived (a Metadata message before it is kept in
`.metadata`). A refused connection (HTTP 401, nothing listening) or an Error message from the server,
before or after the handshake, raises `ChatClientError` with the server's words.
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
from .moshi_protocol import Audio, Error, Handshake, Metadata, Text, build, parse_server_message

SAMPLE_RATE = 24000
CHAT_PATH = "/api/chat"
API_KEY_HEADER = "kyutai-api-key"


class ChatClientError(AntiphonError):
    """The server refused the connection, sent an Error message, or closed on an error."""


@dataclasses.dataclass(frozen=True)
class PcmChunk:
    pcm: np.ndarray  # float32 [T], 24 kHz mono: the model's voice, decoded from the server's Ogg/Opus


@dataclasses.dataclass(frozen=True)
class TextPiece:
    text: str  # a fragment to append as is (a leading space starts a word)


Event = PcmChunk | TextPiece


def chat_url(url: str, **sampling_query) -> str:
    """`ws://host:port` (path /api/chat added when none is given) plus the sampling query (str() of each value)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ChatClientError(f"bad server URL {url!r}: expected ws://host:port or wss://host:port")
    path = parts.path if parts.path not in ("", "/") else CHAT_PATH
    query = "&".join(q for q in (parts.query, urlencode({k: str(v) for k, v in sampling_query.items()})) if q)
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


class ChatClient:
    def __init__(self, ws: ClientConnection, metadata: dict | None = None):
        """Use `await ChatClient.connect(...)`."""
        self.ws, self.metadata = ws, metadata
        self._writer = sphn.OpusStreamWriter(SAMPLE_RATE)
        self._reader = sphn.OpusStreamReader(SAMPLE_RATE)
        self._pending: list[Event] = []

    @classmethod
    async def connect(cls, url: str, api_key: str | None = None, open_timeout: float = 10.0,
                      **sampling_query) -> ChatClient:
        """Open the WebSocket and wait for the Handshake. `sampling_query`: the /api/chat query keys
        (text_temperature=0.7, text_topk=25, max_steps=100, ...). Raises ChatClientError."""
        full = chat_url(url, **sampling_query)
        headers = {API_KEY_HEADER: api_key} if api_key is not None else None
        try:
            ws = await connect(full, additional_headers=headers, open_timeout=open_timeout, compression=None,
                               max_size=MAX_MESSAGE_BYTES)
        except InvalidStatus as e:
            response = e.response
            body = response.body.decode("utf-8", "replace").strip() if response.body else response.reason_phrase
            raise ChatClientError(f"{full} refused the connection: HTTP {response.status_code}: {body}") from None
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as e:
            raise ChatClientError(f"cannot connect to {full}: {e}") from None
        client = cls(ws)
        try:
            await asyncio.wait_for(client._handshake(), open_timeout)
        except BaseException as e:
            await ws.close()
            if isinstance(e, TimeoutError):
                raise ChatClientError(f"{full}: no handshake within {open_timeout} s") from None
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
        try:
            data = await self.ws.recv()
        except ConnectionClosed as e:
            if e.rcvd is not None and e.rcvd.code not in (1000, 1001):
                raise ChatClientError(f"the server closed the connection: {e.rcvd.code} {e.rcvd.reason}") from None
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
            try:
                await self.ws.send(build(Audio(ogg)))
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
