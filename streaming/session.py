"""One connection's protocol state, without the socket: client messages in -> engine inputs; engine events
in -> the protocol messages to send. One class per protocol:

`ChatSession` (/api/chat, the Moshi protocol; dialogue and translation; reference §3.5, §4.1, §4.2):
- Audio (0x01): the payload must be whole Ogg pages (`ogg.split_pages`, so truncated or non-Ogg bytes are
  a ProtocolError at once); sphn's Ogg/Opus reader turns them into 24 kHz PCM, buffered until a whole
  1920-sample frame is there.
- Control (0x03) endTurn ends the source of a translation (`EndOfInput`); other Controls, Ping (0x06) and
  kinds a client does not send (`Unknown`) are discarded, as Kyutai's servers do; a malformed one (bad
  control byte, payload on Ping) is a ProtocolError.
- SlotReady -> the 9-byte Handshake. OutputFrame -> one Audio message (sphn's Ogg/Opus writer: the first
  carries the OpusHead/OpusTags pages; two 960-sample packets per frame), then a Text message when the
  frame has a non-silent text token.

`SttSession` (/api/asr-streaming, Kyutai STT, msgpack): Audio (any length) and OggOpus in, re-chunked to
1920-sample frames; a Marker is echoed once the text of every frame sent before it is out (the model's
delay included). Words as the Rust server makes them (reference §1.2): pieces accumulate; the next PAD or
word-start token emits `Word(text, start_time)`, the next word-start token also `EndWord(stop_time)`.
`Step(step_idx, prs, buffered_pcm)` once per step for models with VAD heads.

`TtsSession` (/api/tts_streaming, Kyutai TTS): text frames / Text, Eos (or the byte 0x00), Voice (before
any text) in; Ready, TimedText per word, then audio in the session's format out.

Text pieces: `piece(id)` renders a token id. With the model's SentencePiece tokenizer, `tokenizer_pieces`
gives the piece with "\u2581" turned into a space. A model without a tokenizer (the tiny test models) gets
`id_pieces`: the id in decimal after a space (" 17"), so every token reads as one word.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sphn

from . import kyutai_protocol as kp
from .errors import CLOSE_INVALID_DATA, MAX_MESSAGE_BYTES, ProtocolError
from .frames import (
    FRAME_SAMPLES,
    FRAME_SECONDS,
    SAMPLE_RATE,
    EndOfInput,
    InputFrame,
    OutputFrame,
    SlotReady,
    TextFrame,
    TextIn,
    VoiceFrame,
    VoiceIn,
)
from .moshi_protocol import (
    Audio,
    Control,
    ControlAction,
    Handshake,
    Text,
    build,
    parse_client_message,
    render_text_piece,
)
from .ogg import split_pages


def id_pieces(token: int) -> str:
    """The fallback rendering for models without a tokenizer: " <id>"."""
    return f" {token}"


def tokenizer_pieces(tokenizer) -> Callable[[int], str]:
    """A SentencePiece processor's pieces, "▁" turned into a space."""
    return lambda token: render_text_piece(tokenizer.id_to_piece(int(token)))


class Rechunker:
    """Float PCM of any length in -> whole 1920-sample frames out, the rest kept for the next call."""

    def __init__(self):
        self._pcm = np.zeros(0, dtype=np.float32)
        self.samples = 0  # samples taken in so far

    def push(self, pcm: np.ndarray) -> list[np.ndarray]:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.size and not np.isfinite(pcm).all():
            raise ProtocolError("the audio has non-finite samples", CLOSE_INVALID_DATA)
        self.samples += pcm.size
        self._pcm = np.concatenate([self._pcm, pcm]) if self._pcm.size else pcm
        whole = self._pcm.size // FRAME_SAMPLES
        frames = [self._pcm[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES].copy() for i in range(whole)]
        self._pcm = self._pcm[whole * FRAME_SAMPLES:]
        return frames


def decode_ogg(reader: sphn.OpusStreamReader, ogg: bytes) -> np.ndarray:
    """Whole Ogg pages of a 24 kHz Opus stream -> float32 PCM. Raises ProtocolError."""
    split_pages(ogg)  # whole pages only: raises ProtocolError on truncated or non-Ogg bytes
    try:
        pcm = reader.append_bytes(ogg)
    except ValueError as e:
        raise ProtocolError(f"bad Ogg/Opus audio: {e}", CLOSE_INVALID_DATA) from None
    return np.asarray(pcm, dtype=np.float32).reshape(-1)


class ChatSession:
    def __init__(self, session: int, piece: Callable[[int], str] = id_pieces,
                 max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.session, self.piece, self.max_message_bytes = session, piece, max_message_bytes
        self._reader = sphn.OpusStreamReader(SAMPLE_RATE)
        self._writer = sphn.OpusStreamWriter(SAMPLE_RATE)
        self._frames = Rechunker()
        self.discarded = 0  # messages discarded (Control, Ping, unknown kinds)
        self.ended = False  # the client ended its source (Control endTurn)

    def receive(self, data: bytes | str) -> list:
        """A client message -> the engine inputs it completes (InputFrame, EndOfInput). Raises ProtocolError."""
        message = parse_client_message(data, self.max_message_bytes)
        if isinstance(message, Control) and message.action == ControlAction.END_TURN and not self.ended:
            self.ended = True
            return [EndOfInput(self.session)]
        if not isinstance(message, Audio) or self.ended:
            self.discarded += 1
            return []
        return [InputFrame(self.session, f) for f in self._frames.push(decode_ogg(self._reader, message.ogg_bytes))]

    def render(self, event) -> list[bytes]:
        """An engine event -> the frames to send, in order."""
        if isinstance(event, SlotReady):
            return [build(Handshake())]
        if isinstance(event, OutputFrame):
            out = []
            ogg = self._writer.append_pcm(np.ascontiguousarray(event.pcm, dtype=np.float32))
            if ogg:
                out.append(build(Audio(ogg)))
            if event.text is not None:
                out.append(build(Text(self.piece(event.text))))
            return out
        raise TypeError(f"not a session event: {type(event).__name__}")


class SttSession:
    """See the module docstring. `word_start` / `pad`: the model's word-start and PAD text ids;
    `piece(ids)` renders a word's tokens as text."""

    def __init__(self, session: int, word_start: int, pad: int, text: Callable[[list[int]], str], has_vad: bool,
                 max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.session, self.word_start, self.pad, self.text, self.has_vad = session, word_start, pad, text, has_vad
        self.max_message_bytes = max_message_bytes
        self._reader = sphn.OpusStreamReader(SAMPLE_RATE)
        self._frames = Rechunker()
        self.sent = 0  # frames handed to the engine
        self._markers: list[tuple[int, int]] = []  # (frames sent before it, id), in order
        self.ended = False  # STT input never ends but by the client leaving
        self._word: list[int] = []  # tokens of the word being read
        self._start: float | None = None  # start time of the current word (its word-start token)

    def receive(self, data: bytes | str) -> list[InputFrame]:
        """A client message -> the whole frames it completes. Raises ProtocolError."""
        message = kp.parse_stt_client(data, self.max_message_bytes)
        if isinstance(message, kp.Marker):
            pending = self._frames.samples - self.sent * FRAME_SAMPLES
            self._markers.append((self.sent + (pending > 0), message.id))
            return []
        pcm = message.pcm if isinstance(message, kp.Audio) else decode_ogg(self._reader, message.data)
        frames = self._frames.push(pcm)
        self.sent += len(frames)
        return [InputFrame(self.session, f) for f in frames]

    def markers_due(self, consumed: int, time: float) -> list[int]:
        """Ids of the markers whose audio has all been transcribed: taken by the model (`consumed` frames)
        and its text out (the token at `time` s covers the frame at time / 0.08)."""
        done = min(consumed, round(time / FRAME_SECONDS) + 1)
        due = [mid for frames, mid in self._markers if frames <= done]
        self._markers = [(frames, mid) for frames, mid in self._markers if frames > done]
        return due

    def render(self, event) -> list[bytes]:
        if isinstance(event, SlotReady):
            return [kp.build(kp.Ready())]
        if not isinstance(event, TextFrame):
            raise TypeError(f"not an STT session event: {type(event).__name__}")
        out = [kp.build(m) for m in self._words(event.token, max(event.time, 0.0))]
        if self.has_vad and event.pause is not None:
            buffered = self._frames.samples - event.consumed * FRAME_SAMPLES
            out.append(kp.build(kp.Step(event.step, event.pause, max(buffered, 0))))
        out += [kp.build(kp.Marker(mid)) for mid in self.markers_due(event.consumed, event.time)]
        return out

    def _words(self, token: int, time: float) -> list:
        if token == self.word_start or token == self.pad:
            out = []
            if self._word:
                out.append(kp.Word(self.text(self._word), self._start if self._start is not None else time))
                self._word = []
            if token == self.word_start:
                if self._start is not None:
                    out.append(kp.EndWord(time))
                self._start = time
            return out
        if token >= 0:
            self._word.append(token)
        return []


class TtsSession:
    """See the module docstring. `fmt`: the output format (kyutai_protocol.TtsFormat)."""

    def __init__(self, session: int, fmt: kp.TtsFormat = kp.TtsFormat.OGG_OPUS,
                 max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.session, self.fmt, self.max_message_bytes = session, kp.TtsFormat(fmt), max_message_bytes
        self._writer = sphn.OpusStreamWriter(SAMPLE_RATE) if self.fmt in (kp.TtsFormat.OGG_OPUS,
                                                                       kp.TtsFormat.OGG_OPUS_MSGPACK) else None
        self.texted = self.ended = False

    def receive(self, data: bytes | str) -> list:
        """A client message -> engine inputs (TextIn / EndOfInput / VoiceIn). Raises ProtocolError."""
        message = kp.parse_tts_client(data, self.max_message_bytes)
        if self.ended:
            raise ProtocolError(f"{type(message).__name__} after Eos: the text has ended", CLOSE_INVALID_DATA)
        if isinstance(message, kp.Voice):
            if self.texted:
                raise ProtocolError("Voice must come before any text", CLOSE_INVALID_DATA)
            return [VoiceIn(self.session, np.asarray(message.embeddings, dtype=np.float32).reshape(message.shape))]
        if isinstance(message, kp.Eos):
            self.ended = True
            return [EndOfInput(self.session)]
        if not message.text.strip():
            return []
        self.texted = True
        return [TextIn(self.session, message.text)]

    def render(self, event) -> list[bytes]:
        if isinstance(event, SlotReady):
            return self._frames(kp.Ready())
        if not isinstance(event, VoiceFrame):
            raise TypeError(f"not a TTS session event: {type(event).__name__}")
        out = []
        for word in event.words:
            out += self._frames(kp.TimedText(word.text, word.start, word.stop))
        if event.pcm is not None:
            if self._writer is None:
                out += self._frames(kp.Audio(event.pcm))
            else:
                ogg = self._writer.append_pcm(np.ascontiguousarray(event.pcm, dtype=np.float32))
                if ogg:
                    out += self._frames(kp.OggOpus(ogg))
        return out

    def _frames(self, message) -> list[bytes]:
        frame = kp.build_tts_server(message, self.fmt)
        return [] if frame is None else [frame]
