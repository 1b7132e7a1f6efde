"""The session error taxonomy of the wire layer (design, example 9).

Two kinds of failure, and only two:

- `ProtocolError`: one client sent something the protocol does not allow. It closes *that* session,
  with the WebSocket close code in `.code` and a short reason in `.close_reason`; every other session
  goes on. It is an `antiphon.errors.InputError`, the caller's fault.
- `EngineError`: the engine itself failed (GPU fault, a bug in the tick). It is fatal to the engine;
  the server closes every session with `CLOSE_INTERNAL_ERROR` and stops.

Close codes (RFC 6455 §7.4.1), and when the parsers choose each:

| code | constant | used for |
|---|---|---|
| 1002 | `CLOSE_PROTOCOL_ERROR` | malformed message: empty, truncated, not MessagePack, not a map, missing or unknown `"type"`, wrong field types, bad control byte |
| 1003 | `CLOSE_UNSUPPORTED_DATA` | a text frame where the protocol only has binary frames |
| 1007 | `CLOSE_INVALID_DATA` | well-formed message with invalid content: bad UTF-8, NaN/inf samples, bad query values |
| 1008 | `CLOSE_POLICY_VIOLATION` | missing or unknown API key (`AuthError`; before the upgrade, answer HTTP 401 instead) |
| 1009 | `CLOSE_TOO_BIG` | a message over the size limit given to the parser |
| 1011 | `CLOSE_INTERNAL_ERROR` | engine failure (`EngineError`), never a client's fault |
| 1013 | `CLOSE_TRY_AGAIN_LATER` | no free slot ("no free channels" in Kyutai's servers); not raised here, for the server's use |
"""

from __future__ import annotations

from antiphon.errors import AntiphonError, InputError

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013

MAX_MESSAGE_BYTES = 1 << 22  # default parser limit (4 MiB); the WebSocket library must allow at least this
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code


class ProtocolError(InputError):
    """A client broke the wire protocol: close its session with `.code`; no other session is touched."""

    def __init__(self, message: str, code: int = CLOSE_PROTOCOL_ERROR):
        super().__init__(message)
        self.code = code

    @property
    def close_reason(self) -> str:
        """The message cut to the 123 UTF-8 bytes a WebSocket close frame can carry (on a character boundary)."""
        raw = str(self).encode("utf-8")[:MAX_CLOSE_REASON_BYTES]
        return raw.decode("utf-8", errors="ignore")


class AuthError(ProtocolError):
    """Missing or unknown API key. Before the WebSocket upgrade, answer `http_status`; after it, close with `.code`."""

    http_status = 401

    def __init__(self, message: str):
        super().__init__(message, CLOSE_POLICY_VIOLATION)


class EngineError(AntiphonError):
    """The engine failed; fatal to the engine, never caused by one session. Sessions close with 1011."""

    code = CLOSE_INTERNAL_ERROR
