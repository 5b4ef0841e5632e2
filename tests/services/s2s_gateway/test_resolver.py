"""Finding a peer server (RFC 6120 §3.2.1, XEP-0368 §3) and the static override setting."""

from __future__ import annotations

import pytest

from services.s2s_gateway.resolver import Resolver, ServiceUnavailable, Target, _Srv, order
from shared.runtime.settings import parse_dns_servers, parse_overrides
from tests.support.dns import DNSServer


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


async def test_rfc6120_3_2_1_srv_records_then_addresses_from_our_dns_servers() -> None:
    """dnspython against a DNS server of the test (STANZAD_S2S_DNS_SERVERS): both SRV
    services, their targets' A records, and a domain without SRV falls back to port 5269."""
    server = DNSServer({
        ("_xmpps-server._tcp.b.example", "SRV"): ["0 5 5270 tls.b.example."],
        ("_xmpp-server._tcp.b.example", "SRV"): ["0 5 5269 plain.b.example.",
                                                 "10 5 5269 backup.b.example."],
        ("tls.b.example", "A"): ["127.0.0.2"],
        ("plain.b.example", "A"): ["127.0.0.3"],
        ("backup.b.example", "A"): ["127.0.0.4"],
        ("c.example", "A"): ["127.0.0.5"],
        ("_xmpp-server._tcp.none.example", "SRV"): ["0 0 0 ."],
        ("_xmpps-server._tcp.none.example", "SRV"): ["0 0 0 ."],
    })
    await server.start()
    try:
        resolver = Resolver({}, 5, nameservers=[("127.0.0.1", server.port)])
        assert await resolver.resolve("b.example") == [
            Target("127.0.0.2", 5270, True),
            Target("127.0.0.3", 5269, False),
            Target("127.0.0.4", 5269, False),
        ]
        assert await resolver.resolve("c.example") == [Target("127.0.0.5", 5269, False)]
        assert await resolver.resolve("unknown.example") == []
        with pytest.raises(ServiceUnavailable):
            await resolver.resolve("none.example")
    finally:
        server.stop()


def test_dns_servers_setting_is_host_colon_port_list() -> None:
    assert parse_dns_servers("127.0.0.1:5353, [::1]:53 ,10.0.0.2,::1") == [
        ("127.0.0.1", 5353), ("::1", 53), ("10.0.0.2", 53), ("::1", 53),
    ]
    for bad in ("dns.example:53", "127.0.0.1:x", "127.0.0.1:0", "[::1]x"):
        with pytest.raises(ValueError):
            parse_dns_servers(bad)
