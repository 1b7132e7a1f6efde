"""One /api/chat connection's protocol state, without the socket: client messages in -> 80 ms PCM frames
for the engine; engine events in -> the protocol messages to send (reference §3.5, §4.1, §4.2).

- Audio (0x01): the payload must be whole Ogg pages (`ogg.split_pages`, so truncated or non-Ogg bytes are
  a ProtocolError at once); sphn's Ogg/Opus reader turns them into 24 kHz PCM, buffered until a whole
  1920-sample frame is there.
- Control (0x03), Ping (0x06) and kinds a client does not send (`Unknown`) are discarded, as Kyutai's
  servers do; a malformed one (bad control byte, payload on Ping) is a ProtocolError.
- SlotReady -> the 9-byte Handshake. OutputFrame -> one Audio message (sphn's Ogg/Opus writer: the first
  carries the OpusHead/OpusTags pages; two 960-sample packets per frame), then a Text message when the
  frame has a non-silent text token.

Text pieces: `piece(id)` renders a token id. With the model's SentencePiece tokenizer, `tokenizer_pieces`
gives the piece with "▁" turned into a space. A model without a tokenizer (the tiny test models) gets
`id_pieces`: the id in decimal after a space (" 17"), so every token reads as one word.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sphn

from .errors import CLOSE_INVALID_DATA, MAX_MESSAGE_BYTES, ProtocolError
from .frames import FRAME_SAMPLES, SAMPLE_RATE, OutputFrame, SlotReady
from .moshi_protocol import (
    Audio,
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


class ChatSession:
    def __init__(self, piece: Callable[[int], str] = id_pieces, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.piece, self.max_message_bytes = piece, max_message_bytes
        self._reader = sphn.OpusStreamReader(SAMPLE_RATE)
        self._writer = sphn.OpusStreamWriter(SAMPLE_RATE)
        self._pcm = np.zeros(0, dtype=np.float32)
        self.discarded = 0  # messages discarded (Control, Ping, unknown kinds)

    def receive(self, data: bytes | str) -> list[np.ndarray]:
        """A client message -> the whole 1920-sample float32 frames it completes (maybe none). Raises ProtocolError."""
        message = parse_client_message(data, self.max_message_bytes)
        if not isinstance(message, Audio):
            self.discarded += 1
            return []
        return self._audio(message.ogg_bytes)

    def _audio(self, ogg: bytes) -> list[np.ndarray]:
        split_pages(ogg)  # whole pages only: raises ProtocolError on truncated or non-Ogg bytes
        try:
            pcm = self._reader.append_bytes(ogg)
        except ValueError as e:
            raise ProtocolError(f"bad Ogg/Opus audio: {e}", CLOSE_INVALID_DATA) from None
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.size and not np.isfinite(pcm).all():
            raise ProtocolError("the Opus stream decoded to non-finite samples", CLOSE_INVALID_DATA)
        self._pcm = np.concatenate([self._pcm, pcm]) if self._pcm.size else pcm
        whole = self._pcm.size // FRAME_SAMPLES
        frames = [self._pcm[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES].copy() for i in range(whole)]
        self._pcm = self._pcm[whole * FRAME_SAMPLES:]
        return frames

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
