"""API keys, as Kyutai's servers take them (reference kyutai-moshi-mimi.md §4.3, STT/TTS doc §1.6).

A client presents its key in the header `kyutai-api-key: <id>` or the query `?auth_id=<id>`; the Moshi web
client's `?worker_auth_id=<id>` is read too. The header wins when several are given. Keys are compared in
constant time. Whether a key is required at all: by default only when the server listens on an address other
than loopback (`auth_required_by_default`). Pure functions: no sockets, no DNS.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import AuthError
from .query import get_str

HEADER = "kyutai-api-key"
QUERY_KEYS = ("auth_id", "worker_auth_id")  # read in this order after the header
DEFAULT_KEYS = frozenset({"public_token"})  # moshi-server's default `authorized_ids`, which its clients send


def find_api_key(headers: Mapping[str, str] | Iterable[tuple[str, str]], query: Mapping[str, Any]) -> str | None:
    """The key the client presents: header `kyutai-api-key` (any case), else `auth_id`, else `worker_auth_id`."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name.lower() == HEADER:
            return value.strip()
    for name in QUERY_KEYS:
        value = get_str(query, name)
        if value is not None:
            return value
    return None


def check_api_key(presented: str | None, keys: Iterable[str], required: bool = True) -> None:
    """Raise AuthError (HTTP 401 before the upgrade, close code 1008 after) unless `presented` is one of `keys`.

    With required=False every client passes, with or without a key."""
    if not required:
        return
    if not presented:
        raise AuthError(f"an API key is required: send the header {HEADER!r} or the query parameter ?auth_id=")
    given = presented.encode("utf-8")
    if not any([hmac.compare_digest(given, k.encode("utf-8")) for k in keys]):  # noqa: C419 (no short-circuit)
        raise AuthError("unknown API key")


def auth_required_by_default(host: str) -> bool:
    """True unless `host` (what the server binds to) is loopback only: localhost, 127.0.0.0/8, ::1.

    "", "0.0.0.0" and "::" listen on every interface, so they require a key; so does any other host name,
    since it is not resolved here."""
    h = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    if h == "localhost" or h.endswith(".localhost"):
        return False
    try:
        addr = ipaddress.ip_address(h)
    except ValueError:
        return True
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not addr.is_loopback
