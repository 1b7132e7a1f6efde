"""The WebSocket server: a thin shell over the engine and the sans-I/O protocol (websockets' asyncio server).

Routes:
- `GET /api/chat` (WebSocket): the Moshi protocol (streaming.session, streaming.moshi_protocol). Order
  of a connection: API key (HTTP 401 before the upgrade when required and missing or unknown) -> query
  parsed into SamplingParams (Error + close 1007 on a bad value) -> a slot (Error "no free channels" +
  close 1013 at once when all are taken) -> Handshake once the engine has reset the slot -> audio both
  ways, text from the model. A ProtocolError sends an Error message, then closes with its code; other
  sessions never notice. An engine failure closes every session with 1011.
- `GET /api/health`: JSON {status, slots, free_slots, live_sessions}; status "failed" (HTTP 503) once the
  engine has failed.
- `GET /metrics`: Prometheus text (streaming.metrics).

Sampling: the query's SamplingParams are validated; `max_steps` ends the session (close 1000) after that
many model frames. The temperatures and top-k are the engine's for all slots (one batched generator).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .auth import DEFAULT_KEYS, check_api_key, find_api_key
from .errors import (
    CLOSE_INTERNAL_ERROR,
    MAX_MESSAGE_BYTES,
    AuthError,
    EngineError,
    ProtocolError,
)
from .frames import EngineFailed, InputFrame, OutputFrame, SlotReady
from .metrics import prometheus
from .moshi_protocol import Error, SamplingParams, build
from .query import parse_query_string
from .scheduler import NoFreeSlot
from .session import ChatSession, id_pieces

logger = logging.getLogger(__name__)

CHAT_PATH = "/api/chat"
READY_TIMEOUT = 10.0  # seconds to wait for the engine to reset the slot (a few ticks normally)


class ChatServer:
    def __init__(self, engine, piece: Callable[[int], str] = id_pieces, api_keys: Iterable[str] = DEFAULT_KEYS,
                 auth_required: bool = False, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.engine, self.piece = engine, piece
        self.api_keys, self.auth_required = frozenset(api_keys), auth_required
        self.max_message_bytes = max_message_bytes
        self.errors: Counter = Counter()  # sessions closed on an error, by kind
        self._ids = itertools.count(1)

    def serve(self, host: str = "127.0.0.1", port: int = 8998, **kwargs):
        """`async with server.serve(host, port) as ws_server:` (websockets' Server; port 0 picks a free one).
        The engine must be ticking (engine.start()) for sessions to get their handshake."""
        return serve(self.handle, host, port, process_request=self.process_request, compression=None,
                     max_size=2 * self.max_message_bytes, **kwargs)  # over-size frames get our Error first

    # ------------------------------------------------------------------ plain HTTP
    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path == "/api/health":
            failed = self.engine.failed is not None
            body = {"status": "failed" if failed else "ok", "slots": self.engine.slots,
                    "free_slots": self.engine.scheduler.free_slots, "live_sessions": self.engine.scheduler.live_sessions}
            return _response(503 if failed else 200, json.dumps(body), "application/json")
        if path == "/metrics":
            return _response(200, prometheus(self.engine, self.errors), "text/plain; version=0.0.4; charset=utf-8")
        if path != CHAT_PATH:
            return _response(404, f"no route {path}; try {CHAT_PATH}, /api/health or /metrics\n", "text/plain")
        try:
            presented = find_api_key(request.headers.raw_items(), parse_query_string(query))
            check_api_key(presented, self.api_keys, self.auth_required)
        except AuthError as e:
            self.errors["auth"] += 1
            return _response(e.http_status, f"{e}\n", "text/plain")
        return None

    # ------------------------------------------------------------------ /api/chat
    async def handle(self, ws: ServerConnection) -> None:
        session, chat = next(self._ids), ChatSession(self.piece, self.max_message_bytes)
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        sender = None
        try:
            params = SamplingParams.from_query(parse_query_string(ws.request.path.partition("?")[2]))
            self.engine.admit(session, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
            ready = await asyncio.wait_for(events.get(), READY_TIMEOUT)
            if isinstance(ready, EngineFailed):
                raise EngineError(ready.message)
            assert isinstance(ready, SlotReady), ready
            await ws.send(chat.render(ready)[0])
            sender = asyncio.create_task(self._send_loop(ws, chat, events, params.max_steps))
            async for data in ws:
                for frame in chat.receive(data):
                    self.engine.submit(InputFrame(session, frame))
        except ProtocolError as e:
            self.errors[_kind(e)] += 1
            await _cancel(sender)
            await _close(ws, e.code, str(e), e.close_reason)
        except (EngineError, TimeoutError) as e:
            self.errors["engine"] += 1
            await _cancel(sender)
            await _close(ws, CLOSE_INTERNAL_ERROR, f"engine failure: {e}", "engine failure")
        except ConnectionClosed:
            pass
        finally:
            self.engine.leave(session)
            await _cancel(sender)

    async def _send_loop(self, ws: ServerConnection, chat: ChatSession, events: asyncio.Queue, max_steps: int) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                event = await events.get()
                if isinstance(event, EngineFailed):
                    self.errors["engine"] += 1
                    await _close(ws, CLOSE_INTERNAL_ERROR, f"engine failure: {event.message}", "engine failure")
                    return
                for message in chat.render(event):
                    await ws.send(message)
                if isinstance(event, OutputFrame) and event.step + 1 >= max_steps:
                    await ws.close(1000, f"max_steps ({max_steps}) reached")
                    return


def _kind(error: ProtocolError) -> str:
    if isinstance(error, NoFreeSlot):
        return "no_free_slot"
    return f"protocol_{error.code}"


def _response(status: int, body: str, content_type: str) -> Response:
    reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 503: "Service Unavailable"}[status]
    data = body.encode("utf-8")
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data))), ("Connection", "close")])
    return Response(status, reason, headers, data)


async def _close(ws: ServerConnection, code: int, message: str, reason: str) -> None:
    """Send Error(message), then close with `code` (either may fail if the client is already gone)."""
    with contextlib.suppress(ConnectionClosed):
        await ws.send(build(Error(message)))
    await ws.close(code, reason)


async def _cancel(task: asyncio.Task | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
