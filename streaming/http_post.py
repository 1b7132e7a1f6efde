"""POST requests on the WebSocket port. websockets' server reads only GET requests without a body, while
Kyutai's servers also take a whole file by POST on the streaming path (`/api/asr-streaming`: audio in, JSON
out; `/api/tts_streaming`: JSON in, WAV out). `HttpOrWebSocket` is websockets' connection with one change:
a connection whose first bytes are `POST ` is read here (request line, headers, a body of Content-Length
bytes, at most `MAX_BODY_BYTES`), and handed to the server's `process_request` as a request carrying
`connection.post`; the Response it returns goes out through websockets' usual rejection path (sent, then
the connection closed). Everything else is websockets' own.

The opening handshake must arrive within `open_timeout` seconds (websockets' own open_timeout is turned
off because it would also bound the time a POST takes to process).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request

MAX_HEAD_BYTES = 16384
MAX_BODY_BYTES = 64 << 20  # 64 MiB: about 11 min of 16-bit 48 kHz stereo WAV


@dataclass(frozen=True)
class PostRequest:
    path: str
    headers: Headers
    body: bytes


class BadPost(ValueError):
    pass


class HttpOrWebSocket(ServerConnection):
    post: PostRequest | None = None
    open_timeout: float | None = None

    @classmethod
    def factory(cls, open_timeout: float | None):
        def create(*args, **kwargs) -> HttpOrWebSocket:
            connection = cls(*args, **kwargs)
            connection.open_timeout = open_timeout
            return connection

        return create

    def connection_made(self, transport) -> None:
        self._head: bytearray | None = None  # bytes of a POST being read; None: a WebSocket connection
        self._first = True
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._first:
            self._first = False
            if data.startswith(b"POST "):
                self._head = bytearray()
        if self._head is None:
            super().data_received(data)
            return
        if self.post is not None:
            return  # bytes past the body: ignored
        self._head += data
        try:
            post = _parse_post(bytes(self._head))
        except BadPost as e:
            self._reject(str(e))
            return
        if post is not None:
            self.post = post
            self.request = Request(post.path, post.headers)
            self.request_rcvd.set_result(None)

    async def handshake(self, *args, **kwargs) -> None:
        if self.open_timeout is not None:
            done, _ = await asyncio.wait([self.request_rcvd, self.connection_lost_waiter], timeout=self.open_timeout,
                                        return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise TimeoutError(f"no complete request within {self.open_timeout:g} s")
        await super().handshake(*args, **kwargs)

    def _reject(self, message: str) -> None:
        body = f"{message}\n".encode()
        status = "413 Payload Too Large" if "too large" in message else "400 Bad Request"
        self.transport.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                             f"Connection: close\r\n\r\n".encode() + body)
        self.transport.close()


def _parse_post(data: bytes) -> PostRequest | None:
    """The POST request in `data`, or None while incomplete. Raises BadPost."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD_BYTES:
            raise BadPost(f"request head too large (over {MAX_HEAD_BYTES} bytes)")
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadPost(f"bad request line {lines[0][:80]!r}")
    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadPost(f"bad header line {line[:80]!r}")
        headers[name.strip()] = value.strip()
    if "Transfer-Encoding" in headers:
        raise BadPost("chunked bodies are not supported: send Content-Length")
    try:
        length = int(headers.get("Content-Length", "0"))
    except ValueError:
        raise BadPost(f"bad Content-Length {headers['Content-Length'][:40]!r}") from None
    if not 0 <= length <= MAX_BODY_BYTES:
        raise BadPost(f"request body too large ({length} bytes; at most {MAX_BODY_BYTES})")
    body = data[end + 4:]
    if len(body) < length:
        return None
    return PostRequest(parts[1], headers, body[:length])
