"""Finding a peer server (RFC 6120 §3.2.1, XEP-0368 §3) and the static override setting."""

from __future__ import annotations

import pytest

from services.s2s_gateway.resolver import Resolver, Target, _Srv, order
from shared.settings import parse_overrides


def test_xep0368_3_direct_tls_first_at_equal_priority_then_by_weight() -> None:
    records = [
        _Srv(10, 5, Target("b.example.net", 5269, False)),
        _Srv(10, 5, Target("tls.example.net", 5223, True)),
        _Srv(5, 0, Target("primary.example.net", 5269, False)),
        _Srv(10, 50, Target("heavy.example.net", 5269, False)),
        _Srv(10, 50, Target("heavy.example.net", 5269, False)),  # duplicates tried once
    ]
    assert order(records) == [
        Target("primary.example.net", 5269, False),
        Target("tls.example.net", 5223, True),
        Target("heavy.example.net", 5269, False),
        Target("b.example.net", 5269, False),
    ]


async def test_static_override_replaces_dns() -> None:
    resolver = Resolver({"b.example": ("127.0.0.1", 15269)})
    assert await resolver.resolve("b.example") == [Target("127.0.0.1", 15269, False)]


def test_override_setting_is_domain_equals_host_colon_port() -> None:
    assert parse_overrides(" a.example=127.0.0.1:5270 , B.example=[::1]:5269,") == {
        "a.example": ("127.0.0.1", 5270),
        "b.example": ("::1", 5269),
    }
    for bad in ("a.example", "a.example=host", "=h:1", "a.example=h:0", "a.example=h:x"):
        with pytest.raises(ValueError):
            parse_overrides(bad)
