"""URL query parameters as the Kyutai clients send them: every value is a string.

`parse_query_string` turns `"a=1&b=x"` into a dict; `get_str`, `get_float` and `get_int` read one value
with a clear `ProtocolError` (close code 1007) when it is not what the protocol expects. A mapping value
may also be a list or tuple of strings (as `urllib.parse.parse_qs` gives): the last one wins, as with a
plain dict built from the query string.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from .errors import CLOSE_INVALID_DATA, ProtocolError

_INT_RE = re.compile(r"[+-]?[0-9]+")


def parse_query_string(query: str) -> dict[str, str]:
    """`"text_topk=25&x="` -> `{"text_topk": "25", "x": ""}`. A leading `?` is allowed; a repeated key keeps its last value."""
    return dict(parse_qsl(query.removeprefix("?"), keep_blank_values=True))


def get_str(query: Mapping[str, Any], name: str) -> str | None:
    """The value of `name`, or None when absent."""
    value = query.get(name)
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else None
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"query parameter {name!r} must be a string, got {type(value).__name__}", CLOSE_INVALID_DATA)
    return value


def get_float(query: Mapping[str, Any], name: str, default: float | None) -> float | None:
    """A finite number (`"0.7"`, `"1e-2"`), or `default` when absent."""
    text = get_str(query, name)
    if text is None:
        return default
    try:
        value = float(text.strip())
    except ValueError:
        raise ProtocolError(f"query parameter {name!r} must be a number, got {text!r}", CLOSE_INVALID_DATA) from None
    if not math.isfinite(value):
        raise ProtocolError(f"query parameter {name!r} must be finite, got {text!r}", CLOSE_INVALID_DATA)
    return value


def get_int(query: Mapping[str, Any], name: str, default: int | None) -> int | None:
    """A decimal integer (`"25"`, not `"25.0"`), or `default` when absent."""
    text = get_str(query, name)
    if text is None:
        return default
    if not _INT_RE.fullmatch(text.strip()) or len(text) > 40:
        raise ProtocolError(f"query parameter {name!r} must be an integer, got {text[:40]!r}", CLOSE_INVALID_DATA)
    return int(text.strip())


def check_range(name: str, value: float | None, lo: float | None = None, hi: float | None = None) -> None:
    """Raise a ProtocolError (1007) when `value` is outside [lo, hi]; None passes."""
    if value is None:
        return
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
        raise ProtocolError(f"query parameter {name!r} must be {bounds}, got {value}", CLOSE_INVALID_DATA)
