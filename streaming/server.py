"""The WebSocket server: a thin shell over the engine and the sans-I/O protocols (websockets' asyncio server).

Routes (the WebSocket ones follow the engine's task):

| route | task | protocol |
|---|---|---|
| `GET /api/chat` | dialogue, translation | the Moshi protocol (streaming.session.ChatSession) |
| `GET /api/translate` | translation | the same protocol; Control endTurn ends the source |
| `GET /api/asr-streaming` | stt | Kyutai STT msgpack (SttSession); `POST` an audio file -> JSON Word/EndWord list |
| `GET /api/tts_streaming` | tts | Kyutai TTS (TtsSession), `?format=&voice=`; `POST` JSON {text, voice} -> audio/wav |
| `GET /api/health` | all | JSON {status, task, slots, free_slots, live_sessions}; HTTP 503 once the engine failed |
| `GET /api/modules_info` | all | JSON: the task, the model's routes, slots, sample and frame rate |
| `GET /metrics` | all | Prometheus text (streaming.metrics) |

A WebSocket session: API key (HTTP 401 before the upgrade when required and missing or unknown) -> query
checked (Error + close 1007 on a bad value) -> a slot (Error "no free channels" + close 1013 at once when
all are taken) -> the ready message once the engine has reset the slot -> inputs and outputs both ways. A
ProtocolError sends an Error message, then closes with its code; other sessions never notice. An engine
failure closes every session with 1011.

Timing rules: the server pings every `ping_interval` s and closes a connection whose pong does not come
within `ping_timeout` s (websockets' keepalive); a session whose client sends nothing for `idle_timeout` s
while its input is still open is closed (1000, "idle"). An STT client may send faster than real time: the
server stops reading its socket while more than `MAX_BUFFERED_FRAMES` of its frames wait for the model
(TCP holds the client back; nothing is dropped). Dialogue and translation run in real time: the scheduler
bounds their backlog (streaming.scheduler).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import itertools
import json
import logging
import wave
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.protocol import State
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from antiphon.errors import InputError

from . import kyutai_protocol as kp
from . import moshi_protocol as mp
from .auth import DEFAULT_KEYS, check_api_key, find_api_key
from .errors import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_DATA,
    MAX_MESSAGE_BYTES,
    AuthError,
    EngineError,
    ProtocolError,
)
from .frames import (
    FRAME_SAMPLES,
    FRAME_SECONDS,
    SAMPLE_RATE,
    EndOfInput,
    EngineFailed,
    InputFrame,
    OutputFrame,
    SlotReady,
    TextFrame,
    TextIn,
    VoiceFrame,
    VoiceIn,
)
from .http_post import HttpOrWebSocket, PostRequest
from .metrics import prometheus
from .query import parse_query_string
from .admission import AdmissionQueue
from .scheduler import NoFreeSlot
from .session import ChatSession, SttSession, TtsSession, id_pieces

logger = logging.getLogger(__name__)

CHAT_PATH, TRANSLATE_PATH = "/api/chat", "/api/translate"
ASR_PATH, TTS_PATH = "/api/asr-streaming", "/api/tts_streaming"
ROUTES = {"dialogue": (CHAT_PATH,), "translation": (CHAT_PATH, TRANSLATE_PATH), "stt": (ASR_PATH,), "tts": (TTS_PATH,)}
READY_TIMEOUT = 10.0  # seconds to wait for the engine to reset the slot (a few ticks normally)
OPEN_TIMEOUT = 10.0  # seconds for a client to complete its opening handshake
MAX_BUFFERED_FRAMES = 250  # STT: frames (20 s) a client may have waiting for the model before we stop reading
QUERY_SAMPLING = {"text_temperature": "temp_text", "text_topk": "top_k_text", "audio_temperature": "temp",
                  "audio_topk": "top_k"}  # /api/chat query key -> the generator's
POST_FLUSH_SECONDS = 10.0  # STT POST: at most this much silence after the audio to flush the text delay


class Server:
    """`Server(engine, ...)`: the routes of the engine's task. `piece(id)` renders a text token (dialogue,
    translation); `text(ids)` a word's tokens (STT). `voices`: a directory of speaker-embedding files that
    TTS sessions name with `?voice=` (relative paths inside it). `queue_size` sessions may wait up to
    `queue_timeout` seconds for a slot when all are busy (streaming.admission; 0: refused at once)."""

    def __init__(self, engine, piece: Callable[[int], str] = id_pieces, text: Callable[[list[int]], str] | None = None,
                 api_keys: Iterable[str] = DEFAULT_KEYS, auth_required: bool = False,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, idle_timeout: float = 30.0, ping_interval: float = 10.0,
                 ping_timeout: float = 20.0, voices: Path | None = None, queue_size: int = 0,
                 queue_timeout: float = 30.0):
        self.engine, self.piece = engine, piece
        self.admission = AdmissionQueue(engine, queue_size, queue_timeout)
        self.text = text or (lambda ids: "".join(piece(i) for i in ids).strip())
        self.api_keys, self.auth_required = frozenset(api_keys), auth_required
        self.max_message_bytes, self.idle_timeout = max_message_bytes, idle_timeout
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.voices = None if voices is None else Path(voices).resolve()
        self.errors: Counter = Counter()  # sessions closed on an error, by kind
        self._ids = itertools.count(1)

    @property
    def routes(self) -> tuple[str, ...]:
        return ROUTES[self.engine.kind]

    def serve(self, host: str = "127.0.0.1", port: int = 8998, **kwargs):
        """`async with server.serve(host, port) as ws_server:` (websockets' Server; port 0 picks a free one).
        The engine must be ticking (engine.run() on another thread, or engine.start()) for sessions to get their
        ready message."""
        return serve(self.handle, host, port, process_request=self.process_request, compression=None,
                     max_size=2 * self.max_message_bytes,  # over-size frames get our Error first
                     ping_interval=self.ping_interval, ping_timeout=self.ping_timeout, open_timeout=None,
                     create_connection=HttpOrWebSocket.factory(OPEN_TIMEOUT), **kwargs)

    # ------------------------------------------------------------------ plain HTTP
    def process_request(self, connection: ServerConnection, request: Request):
        """A plain HTTP answer (or a coroutine giving one, for a POST), or None to open the WebSocket."""
        post = getattr(connection, "post", None)
        if post is not None:
            return self.handle_post(post)
        path, _, query = request.path.partition("?")
        if path == "/api/health":
            failed = self.engine.failed is not None
            body = {"status": "failed" if failed else "ok", "task": self.engine.kind, "slots": self.engine.slots,
                    "free_slots": self.engine.scheduler.free_slots, "live_sessions": self.engine.scheduler.live_sessions,
                    "queued": self.admission.waiting}
            return response(503 if failed else 200, json.dumps(body), "application/json")
        if path == "/api/modules_info":
            return response(200, json.dumps(self.modules_info()), "application/json")
        if path == "/metrics":
            return response(200, prometheus(self.engine, self.errors, self.admission.waiting),
                            "text/plain; version=0.0.4; charset=utf-8")
        if path not in self.routes:
            return response(404, f"no route {path} for this {self.engine.kind} server; try "
                                 f"{', '.join(self.routes)}, /api/health, /api/modules_info or /metrics\n", "text/plain")
        return self._check_key(request.headers, query)

    def modules_info(self) -> dict:
        lm = self.engine.lm
        return {"task": self.engine.kind, "routes": list(self.routes), "slots": self.engine.slots,
                "model_type": lm.config.model_type, "sample_rate": SAMPLE_RATE, "frame_size": FRAME_SAMPLES,
                "frame_rate": 1 / FRAME_SECONDS, "text_delay_frames": _text_delay(self.engine),
                "auth_required": self.auth_required}

    def _check_key(self, headers: Headers, query: str) -> Response | None:
        try:
            presented = find_api_key(headers.raw_items(), parse_query_string(query))
            check_api_key(presented, self.api_keys, self.auth_required)
        except AuthError as e:
            self.errors["auth"] += 1
            return response(e.http_status, f"{e}\n", "text/plain")
        return None

    # ------------------------------------------------------------------ WebSocket sessions
    async def handle(self, ws: ServerConnection) -> None:
        session = next(self._ids)
        query = ws.request.path.partition("?")[2]
        proto = {"stt": _Stt, "tts": _Tts}.get(self.engine.kind, _Chat)(self, session)
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        sender = None
        try:
            proto.check_query(parse_query_string(query))

            def sink(event) -> None:  # called on the engine's thread
                loop.call_soon_threadsafe(events.put_nowait, event)

            if not await self.admission.admit(session, sink, proto.sampling, gone=lambda: ws.state is not State.OPEN):
                return  # the client left while waiting for a slot
            ready = await asyncio.wait_for(events.get(), READY_TIMEOUT)
            if isinstance(ready, EngineFailed):
                raise EngineError(ready.message)
            assert isinstance(ready, SlotReady), ready
            for item in proto.on_ready():
                self.engine.submit(item)
            for message in proto.session.render(ready):
                await ws.send(message)
            sender = asyncio.create_task(self._send_loop(ws, proto, events))
            if await self._receive_loop(ws, proto, sender):
                await sender  # the client ended its input: the output runs to its end (or the client leaves)
        except ProtocolError as e:
            self.errors[_error_kind(e)] += 1
            await _cancel(sender)
            await _close(ws, proto, e.code, str(e), e.close_reason)
        except (EngineError, TimeoutError, asyncio.TimeoutError) as e:
            self.errors["engine"] += 1
            await _cancel(sender)
            await _close(ws, proto, CLOSE_INTERNAL_ERROR, f"engine failure: {e}", "engine failure")
        except ConnectionClosed:
            pass
        finally:
            self.engine.leave(session)
            await _cancel(sender)

    async def _receive_loop(self, ws: ServerConnection, proto, sender: asyncio.Task) -> bool:
        """Client messages -> engine inputs, until the client ends its input (True), or the output ends or the
        session is idle for too long (False). ConnectionClosed when the client leaves."""
        while not proto.input_ended:
            receive = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait({receive, sender}, timeout=self.idle_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                await _cancel(receive)
                if sender in done:  # the output ended first (max_steps, engine failure): stop reading
                    return False
                self.errors["idle"] += 1
                await ws.close(1000, f"idle: nothing received for {self.idle_timeout:g} s")
                return False
            for item in proto.receive(receive.result()):
                self.engine.submit(item)
            await proto.hold_back()
        return True

    async def _send_loop(self, ws: ServerConnection, proto, events: asyncio.Queue) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                event = await events.get()
                if isinstance(event, EngineFailed):
                    self.errors["engine"] += 1
                    await _close(ws, proto, CLOSE_INTERNAL_ERROR, f"engine failure: {event.message}", "engine failure")
                    return
                for message in proto.session.render(event):
                    await ws.send(message)
                reason = proto.finished(event)
                if reason:
                    await ws.close(1000, reason)
                    return

    # ------------------------------------------------------------------ POST (whole requests)
    async def handle_post(self, post: PostRequest) -> Response:
        path, _, query = post.path.partition("?")
        if path not in self.routes or self.engine.kind not in ("stt", "tts"):
            return response(404, f"no POST route {path} for this {self.engine.kind} server\n", "text/plain")
        refused = self._check_key(post.headers, query)
        if refused is not None:
            return refused
        try:
            if self.engine.kind == "stt":
                body = json.dumps(await self._transcribe_post(post.body))
                return response(200, body, "application/json")
            return response(200, await self._speak_post(post.body), "audio/wav")
        except NoFreeSlot as e:
            self.errors["no_free_slot"] += 1
            return response(503, f"{e}\n", "text/plain")
        except InputError as e:
            self.errors["bad_request"] += 1
            return response(400, f"{e}\n", "text/plain")
        except (EngineError, TimeoutError, asyncio.TimeoutError) as e:
            self.errors["engine"] += 1
            return response(500, f"engine failure: {e}\n", "text/plain")

    async def _transcribe_post(self, body: bytes) -> list[dict]:
        """An audio file -> [{"type": "Word", "text", "start_time"} | {"type": "EndWord", "stop_time"}]: the
        audio, then silence (at most POST_FLUSH_SECONDS) until the text of its last frame is out."""
        pcm = _decode_audio_file(body)
        audio = np.concatenate([pcm, np.zeros(-pcm.size % FRAME_SAMPLES, np.float32)]).reshape(-1, FRAME_SAMPLES)
        total = len(audio) + int(POST_FLUSH_SECONDS / FRAME_SECONDS)
        ahead = 4 + self.engine.task.runner.generator.max_delay  # frames kept in flight
        messages: list[dict] = []
        async with self._local_session() as (session, events):
            stt = _Stt(self, session).session
            sent = consumed = 0
            while consumed < total:
                while sent < total and sent - consumed < ahead:
                    frame = audio[sent] if sent < len(audio) else np.zeros(FRAME_SAMPLES, np.float32)
                    self.engine.submit(InputFrame(session, frame))
                    sent += 1
                event = await self._next_event(events)
                if not isinstance(event, TextFrame):
                    continue
                consumed = event.consumed
                for frame in stt.render(event):
                    message = kp.parse_stt_server(frame)
                    if isinstance(message, (kp.Word, kp.EndWord)):
                        messages.append({"type": message.TYPE, **dataclasses.asdict(message)})
                if consumed >= len(audio) and round(event.time / FRAME_SECONDS) + 1 >= len(audio):
                    break  # the text of the last audio frame is out
        return messages

    async def _speak_post(self, body: bytes) -> bytes:
        """JSON {"text": str, "voice": optional name} -> a 16-bit 24 kHz mono WAV file."""
        try:
            request = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"the body must be JSON {{\"text\": ..., \"voice\": ...}}: {e}") from None
        if not isinstance(request, dict) or not isinstance(request.get("text"), str) or not request["text"].strip():
            raise InputError('the body must be a JSON object with a non-empty "text" string')
        unknown = set(request) - {"text", "voice"}
        if unknown:
            raise InputError(f"unknown field(s) {sorted(unknown)}: expected text and voice")
        voice = self.voice_embedding(request.get("voice"))
        chunks = []
        async with self._local_session() as (session, events):
            if voice is not None:
                self.engine.submit(VoiceIn(session, voice))
            self.engine.submit(TextIn(session, request["text"]))
            self.engine.submit(EndOfInput(session))
            while True:
                event = await self._next_event(events)
                if isinstance(event, VoiceFrame):
                    if event.pcm is not None:
                        chunks.append(event.pcm)
                    if event.end:
                        break
        return _wav_bytes(np.concatenate(chunks) if chunks else np.zeros(0, np.float32))

    @contextlib.asynccontextmanager
    async def _local_session(self):
        """A session without a socket, for POST requests: (session id, its event queue), once ready."""
        session, events = next(self._ids), asyncio.Queue()
        loop = asyncio.get_running_loop()
        await self.admission.admit(session, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        try:
            ready = await self._next_event(events)
            assert isinstance(ready, SlotReady), ready
            yield session, events
        finally:
            self.engine.leave(session)

    async def _next_event(self, events: asyncio.Queue):
        event = await asyncio.wait_for(events.get(), READY_TIMEOUT)
        if isinstance(event, EngineFailed):
            raise EngineError(event.message)
        return event

    def voice_embedding(self, name: str | None) -> np.ndarray | None:
        """A voice name from the query or a POST -> its embedding [1, C, T] (None: the default voice)."""
        if name is None:
            return None
        if self.voices is None:
            raise ProtocolError(f"unknown voice {name[:80]!r}: this server has no voice library (serve --voices DIR)",
                                CLOSE_INVALID_DATA)
        path = (self.voices / name).resolve()
        if self.voices not in path.parents or not path.is_file():
            raise ProtocolError(f"unknown voice {name[:80]!r}: not a file in the server's voice library",
                                CLOSE_INVALID_DATA)
        from antiphon.lm.tts import load_voice

        return load_voice(path).T[None].numpy()  # [T, C] -> [1, C, T]


class _Route:
    """One WebSocket session's protocol on the server side: its sans-I/O `session`, plus what the server's
    loops ask of it. The defaults suit a route with nothing to add."""

    session = None
    sampling: dict = {}  # this session's sampling, for engine.admit

    def check_query(self, query: dict) -> None:
        """Read the connection's query (ProtocolError on a bad value)."""

    def on_ready(self) -> list:
        """Engine inputs to submit once the slot is ready."""
        return []

    @property
    def input_ended(self) -> bool:
        return self.session.ended

    def receive(self, data: bytes | str) -> list:
        """A client message -> the engine inputs to submit. Raises ProtocolError."""
        return self.session.receive(data)

    async def hold_back(self) -> None:
        """Wait before reading the next client message (flow control)."""

    def finished(self, event) -> str | None:
        """After `event` went out: the close reason if the session is complete, else None."""
        return None


class _Chat(_Route):
    """/api/chat and /api/translate: the Moshi protocol."""

    def __init__(self, server: Server, session: int):
        self.session = ChatSession(session, server.piece, server.max_message_bytes)
        self.max_steps = mp.SamplingParams().max_steps

    def check_query(self, query: dict) -> None:
        """The query's sampling: the temperatures and top-k it names apply to this session (the others of
        moshi-backend's keys are validated, and ignored)."""
        params = mp.SamplingParams.from_query(query)
        self.max_steps = params.max_steps
        self.sampling = {ours: getattr(params, theirs) for theirs, ours in QUERY_SAMPLING.items() if theirs in query}

    def finished(self, event) -> str | None:
        if isinstance(event, OutputFrame):
            if event.end:
                return "translation complete"
            if event.step + 1 >= self.max_steps:
                return f"max_steps ({self.max_steps}) reached"
        return None

    def error_message(self, message: str) -> list[bytes]:
        return [mp.build(mp.Error(message))]


class _Stt(_Route):
    """/api/asr-streaming: Kyutai STT."""

    def __init__(self, server: Server, session: int):
        lm = server.engine.lm
        cfg = lm.config
        self.session = SttSession(session, cfg.existing_text_end_padding_id, cfg.existing_text_padding_id,
                                  server.text, bool(lm.extra_heads), server.max_message_bytes)
        self.consumed = 0
        self._progress = asyncio.Event()

    async def hold_back(self) -> None:
        """Stop reading while too many of this client's frames wait for the model (TCP backpressure)."""
        while self.session.sent - self.consumed > MAX_BUFFERED_FRAMES:
            self._progress.clear()
            await self._progress.wait()

    def finished(self, event) -> str | None:
        if isinstance(event, TextFrame):
            self.consumed = event.consumed
            self._progress.set()
        return None

    def error_message(self, message: str) -> list[bytes]:
        return [kp.build(kp.Error(message))]


class _Tts(_Route):
    """/api/tts_streaming: Kyutai TTS."""

    def __init__(self, server: Server, session: int):
        self.server, self.id = server, session
        self.session = TtsSession(session, max_message_bytes=server.max_message_bytes)
        self.voice: np.ndarray | None = None

    def check_query(self, query: dict) -> None:
        q = kp.TtsQuery.from_query(query)
        self.session = TtsSession(self.id, q.format, self.server.max_message_bytes)
        self.voice = None if q.voice is None else self._checked(self.server.voice_embedding(q.voice))
        self.sampling = {k: v for k, v in (("temp", q.temperature), ("top_k", q.top_k)) if v is not None}

    def receive(self, data: bytes | str) -> list:
        items = self.session.receive(data)
        for item in items:
            if isinstance(item, VoiceIn):
                self._checked(item.embedding)
        return items

    def _checked(self, embedding: np.ndarray) -> np.ndarray:
        try:
            self.server.engine.task.check_voice(embedding)
        except InputError as e:
            raise ProtocolError(f"bad voice: {e}", CLOSE_INVALID_DATA) from None
        return embedding

    def on_ready(self) -> list:
        return [] if self.voice is None else [VoiceIn(self.id, self.voice)]

    def finished(self, event) -> str | None:
        return "speech complete" if isinstance(event, VoiceFrame) and event.end else None

    def error_message(self, message: str) -> list[bytes]:
        return [kp.build(kp.Error(message))] if self.session.fmt.is_msgpack else []


def _text_delay(engine) -> int:
    """Frames between an audio frame and its text: STT's text delay plus the generator's max delay."""
    runner = engine.task.runner
    return round(getattr(runner, "text_delay", 0.0) / FRAME_SECONDS) + runner.generator.max_delay


def _decode_audio_file(body: bytes) -> np.ndarray:
    """Audio file bytes (wav, flac, ogg, mp3) -> float32 mono PCM at 24 kHz."""
    import tempfile

    from antiphon.audio_io import read_audio

    if not body:
        raise InputError("the request body is empty: POST an audio file")
    with tempfile.NamedTemporaryFile(suffix=".audio") as f:
        f.write(body)
        f.flush()
        return read_audio(f.name, SAMPLE_RATE, mono=True)[0]


def _wav_bytes(pcm: np.ndarray) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def _error_kind(error: ProtocolError) -> str:
    if isinstance(error, NoFreeSlot):
        return "no_free_slot"
    return f"protocol_{error.code}"


def response(status: int, body: str | bytes, content_type: str) -> Response:
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 413: "Payload Too Large",
              500: "Internal Server Error", 503: "Service Unavailable"}[status]
    data = body.encode("utf-8") if isinstance(body, str) else body
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data))), ("Connection", "close")])
    return Response(status, reason, headers, data)


async def _close(ws: ServerConnection, proto, code: int, message: str, reason: str) -> None:
    """Send the protocol's Error(message), then close with `code` (either may fail if the client is gone)."""
    with contextlib.suppress(ConnectionClosed):
        for frame in proto.error_message(message):
            await ws.send(frame)
    await ws.close(code, reason)


async def _cancel(task: asyncio.Task | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
