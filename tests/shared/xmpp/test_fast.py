"""shared.xmpp.fast: the HT-* mechanisms and the token rules of XEP-0484, sans-I/O."""

from __future__ import annotations

import pytest

from shared.xmpp import fast
from shared.xmpp.sasl import SASLCondition, SASLFailure, Success

CB = {"tls-exporter": b"E" * 32, "tls-server-end-point": b"P" * 32}


class _Binding:
    types = ("tls-exporter", "tls-server-end-point")

    def data(self, kind: str) -> bytes | None:
        return CB.get(kind)


def _login(mechanism: str, token: str, stored: list[fast.StoredToken], cb: bytes = b"",
           now: float = 100.0) -> Success:
    auth = fast.TokenAuthenticator(mechanism, domain="example.com", channel_binding=_Binding())
    assert auth.start(fast.initiator_message("alice", token, cb)) == fast.NeedTokens("alice")
    step = auth.provide_tokens(stored, now)
    assert isinstance(step, Success)
    return step


def test_offered_by_binding() -> None:
    assert fast.offered(None) == ("HT-SHA-256-NONE",)
    assert fast.offered(_Binding()) == ("HT-SHA-256-EXPR", "HT-SHA-256-ENDP", "HT-SHA-256-NONE")


@pytest.mark.parametrize(("mechanism", "kind"), [("HT-SHA-256-EXPR", "tls-exporter"),
                                                 ("HT-SHA-256-ENDP", "tls-server-end-point"),
                                                 ("HT-SHA-256-NONE", None)])
def test_ht_login_proves_the_token_both_ways(mechanism: str, kind: str | None) -> None:
    cb = CB[kind] if kind else b""
    token = fast.StoredToken(fast.CURRENT, mechanism, "tok", 200.0)
    step = _login(mechanism, "tok", [token], cb)
    assert step.username == "alice" and step.detail == token
    assert step.data == fast.responder_data("tok", cb)


def test_new_slot_first_and_every_rule_refuses() -> None:
    current = fast.StoredToken(fast.CURRENT, "HT-SHA-256-NONE", "old", 200.0)
    new = fast.StoredToken(fast.NEW, "HT-SHA-256-NONE", "tok", 200.0)
    assert _login("HT-SHA-256-NONE", "tok", [current, new]).detail == new
    refused = [
        [fast.StoredToken(fast.NEW, "HT-SHA-256-EXPR", "tok", 200.0)],  # another mechanism
        [fast.StoredToken(fast.NEW, "HT-SHA-256-NONE", "tok", 50.0)],  # expired
        [fast.StoredToken(fast.NEW, "HT-SHA-256-NONE", "other", 200.0)],  # another token
        [],
    ]
    for stored in refused:
        with pytest.raises(SASLFailure) as failure:
            _login("HT-SHA-256-NONE", "tok", stored)
        assert failure.value.condition is SASLCondition.NOT_AUTHORIZED


def test_wrong_channel_is_refused() -> None:
    token = fast.StoredToken(fast.NEW, "HT-SHA-256-EXPR", "tok", 200.0)
    with pytest.raises(SASLFailure):
        _login("HT-SHA-256-EXPR", "tok", [token], cb=b"X" * 32)


def test_malformed_initiator_messages() -> None:
    for data in (None, b"", b"alice", b"alice\0short", b"bob@elsewhere\0" + b"x" * 32):
        auth = fast.TokenAuthenticator("HT-SHA-256-NONE", domain="example.com",
                                       channel_binding=None)
        with pytest.raises(SASLFailure):
            auth.start(data)


def test_tokens_derive_from_the_id_under_the_key() -> None:
    one = fast.derive_token(b"k" * 32, b"i" * 16)
    assert one == fast.derive_token(b"k" * 32, b"i" * 16)
    assert one != fast.derive_token(b"K" * 32, b"i" * 16)
    assert fast.token_hash(one) != one.encode() and len(fast.token_hash(one)) == 32
