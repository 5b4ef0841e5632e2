"""XEP-0215 external services and TURN REST API credentials (shared/xmpp/extdisco.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from lxml import etree

from shared.xmpp import extdisco, ns, server_iq
from shared.xmpp.errors import StanzaError

SECRET = b"coturn-static-auth-secret"
NOW = 1_700_000_000.0
CONFIG = extdisco.Config(
    extdisco.parse_services("stun:turn.example.com:3478,turn:turn.example.com:3478/udp,"
                            "turns:turn.example.com:5349"),
    SECRET, 3600,
)


def _iq(child: str) -> etree._Element:
    return etree.fromstring(f"<iq xmlns='jabber:client' type='get' id='x'>{child}</iq>")


def test_parse_services_defaults_and_errors() -> None:
    assert CONFIG.services == (
        extdisco.Service("stun", "turn.example.com", 3478, "udp"),
        extdisco.Service("turn", "turn.example.com", 3478, "udp"),
        extdisco.Service("turns", "turn.example.com", 5349, "tcp"),
    )
    for bad in ("http:x:80", "turn:x", "turn:x:0", "turn:x:3478/sctp", "turn::3478"):
        with pytest.raises(ValueError):
            extdisco.parse_services(bad)


def test_credentials_follow_the_turn_rest_scheme_as_coturn_checks_them() -> None:
    """draft-uberti-behave-turn-rest-00 §2.2 (coturn use-auth-secret): username is
    'expiry:user', password base64(HMAC-SHA1(secret, username))."""
    username, password, expiry = extdisco.turn_credentials(SECRET, "juliet@example.com",
                                                           NOW, 3600)
    assert username == f"{int(NOW) + 3600}:juliet@example.com" and expiry == int(NOW) + 3600
    expected = base64.b64encode(hmac.new(SECRET, username.encode(), hashlib.sha1).digest())
    assert password == expected.decode()
    assert extdisco.check_credentials(SECRET, username, password, NOW)
    assert not extdisco.check_credentials(SECRET, username, password, NOW + 3601)  # expired
    assert not extdisco.check_credentials(b"other", username, password, NOW)
    forged = f"{int(NOW) + 99999}:juliet@example.com"  # a later expiry, the same password
    assert not extdisco.check_credentials(SECRET, forged, password, NOW)


def test_services_query_lists_stun_plain_and_turn_with_credentials() -> None:
    """XEP-0215 §3.1: every service; TURN ones with username, password and expires."""
    out = server_iq.answer(_iq(f"<services xmlns='{ns.EXTDISCO}'/>"), "get",
                           server_iq.ServerInfo(external=CONFIG), NOW, (), "romeo@example.com")
    assert isinstance(out, str)
    services = etree.fromstring(out)
    by_type = {s.get("type"): s for s in services}
    assert set(by_type) == {"stun", "turn", "turns"}
    assert by_type["stun"].get("username") is None
    turn = by_type["turn"]
    assert turn.get("host") == "turn.example.com" and turn.get("port") == "3478"
    assert turn.get("transport") == "udp" and turn.get("expires") == "2023-11-14T23:13:20Z"
    assert extdisco.check_credentials(SECRET, turn.get("username"), turn.get("password"), NOW)
    assert turn.get("username").endswith(":romeo@example.com")


def test_type_filter_and_credentials_query() -> None:
    info = server_iq.ServerInfo(external=CONFIG)
    out = server_iq.answer(_iq(f"<services xmlns='{ns.EXTDISCO}' type='stun'/>"), "get", info,
                           NOW, (), "romeo@example.com")
    assert isinstance(out, str) and [s.get("type") for s in etree.fromstring(out)] == ["stun"]
    out = server_iq.answer(
        _iq(f"<credentials xmlns='{ns.EXTDISCO}'><service host='turn.example.com' "
            "type='turns'/></credentials>"), "get", info, NOW, (), "romeo@example.com")
    assert isinstance(out, str)
    [svc] = etree.fromstring(out)
    assert svc.get("type") == "turns" and svc.get("password")


def test_no_secret_no_turn_and_no_feature_without_services() -> None:
    """Disco advertises what is there: TURN without a secret is left out, and with nothing
    to offer the feature is not listed and the query is service-unavailable."""
    bare = extdisco.Config(CONFIG.services, b"")
    assert [s.type for s in bare.offered] == ["stun"]
    disco = _iq(f"<query xmlns='{ns.DISCO_INFO}'/>")
    listed = server_iq.answer(disco, "get", server_iq.ServerInfo(external=CONFIG), NOW)
    assert isinstance(listed, str) and ns.EXTDISCO in listed
    none = server_iq.answer(disco, "get", server_iq.ServerInfo(), NOW)
    assert isinstance(none, str) and ns.EXTDISCO not in none
    asked = server_iq.answer(_iq(f"<services xmlns='{ns.EXTDISCO}'/>"), "get",
                             server_iq.ServerInfo(), NOW, (), "romeo@example.com")
    assert isinstance(asked, StanzaError)
