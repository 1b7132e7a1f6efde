"""API keys: where they are read from, how they are checked, when they are required."""

from __future__ import annotations

import pytest
from antiphon.streaming.auth import (
    DEFAULT_KEYS,
    auth_required_by_default,
    check_api_key,
    find_api_key,
)
from antiphon.streaming.errors import CLOSE_POLICY_VIOLATION, AuthError, ProtocolError


def test_find_api_key_sources_and_precedence():
    assert find_api_key({"kyutai-api-key": "h"}, {"auth_id": "q"}) == "h"
    assert find_api_key({"Kyutai-Api-Key": " h "}, {}) == "h"  # header names are case-insensitive
    assert find_api_key([("KYUTAI-API-KEY", "h")], {}) == "h"  # raw header pairs
    assert find_api_key({}, {"auth_id": "q", "worker_auth_id": "w"}) == "q"
    assert find_api_key({}, {"worker_auth_id": "w"}) == "w"  # the Moshi web client's name
    assert find_api_key({}, {"auth_id": ["a", "b"]}) == "b"
    assert find_api_key({"authorization": "x"}, {"other": "y"}) is None


def test_check_api_key():
    check_api_key("public_token", DEFAULT_KEYS)
    check_api_key(None, set(), required=False)
    check_api_key("anything", {"k"}, required=False)
    with pytest.raises(AuthError, match="kyutai-api-key.*auth_id") as e:
        check_api_key(None, {"k"})
    assert e.value.code == CLOSE_POLICY_VIOLATION and e.value.http_status == 401
    assert isinstance(e.value, ProtocolError)
    for wrong in ("", "K", "k ", "public_tokenx"):
        with pytest.raises(AuthError):
            check_api_key(wrong, {"k", "public_token"})
    with pytest.raises(AuthError, match="unknown API key"):
        check_api_key("k", set())  # required with no keys configured: nobody gets in


@pytest.mark.parametrize("host,required", [
    ("localhost", False), ("LOCALHOST", False), ("127.0.0.1", False), ("127.1.2.3", False), ("::1", False),
    ("[::1]", False), ("::ffff:127.0.0.1", False), ("app.localhost", False),
    ("0.0.0.0", True), ("::", True), ("", True), ("192.168.1.10", True), ("10.0.0.1", True),
    ("example.com", True), ("fe80::1%eth0", True), ("2001:db8::1", True),
])
def test_auth_required_by_default(host, required):
    assert auth_required_by_default(host) is required
