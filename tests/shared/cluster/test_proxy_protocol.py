"""The PROXY protocol header parser (HAProxy proxy-protocol.txt §2.1 v1, §2.2 v2)."""

from __future__ import annotations

import pytest

from shared.cluster import proxy_protocol as pp
from shared.cluster.proxy_protocol import ProxyError, ProxyHeader, looks_like_proxy, parse


def test_v1_tcp4_and_tcp6() -> None:
    line = b"PROXY TCP4 192.0.2.10 10.0.0.5 40001 5222\r\n"
    assert parse(line + b"<?xml") == (
        ProxyHeader(1, ("192.0.2.10", 40001), ("10.0.0.5", 5222)), len(line)
    )
    line6 = pp.v1(("2001:db8::1", 1), ("2001:db8::2", 5222))
    header, n = parse(line6) or (None, 0)
    assert header == ProxyHeader(1, ("2001:db8::1", 1), ("2001:db8::2", 5222)) and n == len(line6)


def test_v1_unknown_keeps_the_peer_address() -> None:
    line = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
    assert parse(line + b"xx") == (ProxyHeader(1, None, None), len(line))


@pytest.mark.parametrize("bad", [
    b"PROXY TCP4 192.0.2.10 10.0.0.5 40001\r\n",  # a field missing
    b"PROXY TCP4 2001:db8::1 10.0.0.5 1 2\r\n",  # wrong family
    b"PROXY TCP4 192.0.2.10 10.0.0.5 040001 5222\r\n",  # leading zero
    b"PROXY TCP4 192.0.2.10 10.0.0.5 70000 5222\r\n",  # port out of range
    b"PROXY TCP5 192.0.2.10 10.0.0.5 1 2\r\n",
    b"PROXY TCP4 192.0.2.10 10.0.0.5 1 2\n",  # LF without CR
    b"PROXY " + b"x" * 120,  # no CRLF within 107 bytes
])
def test_v1_malformed_is_refused(bad: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(bad)


def test_v1_waits_for_the_whole_line() -> None:
    line = b"PROXY TCP4 192.0.2.10 10.0.0.5 40001 5222\r\n"
    for n in range(len(line)):
        assert parse(line[:n]) is None
    assert parse(line) is not None


def test_v2_ipv4_ipv6_with_tlvs_and_in_pieces() -> None:
    header = pp.v2(("198.51.100.7", 50000), ("10.0.0.5", 5222), tlvs=b"\x04\x00\x01\x00")
    for n in range(len(header)):
        assert parse(header[:n]) is None
    assert parse(header + b"<?xml") == (
        ProxyHeader(2, ("198.51.100.7", 50000), ("10.0.0.5", 5222)), len(header)
    )
    header6 = pp.v2(("2001:db8::7", 1), ("2001:db8::5", 5269))
    assert parse(header6) == (ProxyHeader(2, ("2001:db8::7", 1), ("2001:db8::5", 5269)), 52)


def test_v2_local_and_unspec_carry_no_address() -> None:
    assert parse(pp.v2(None, None)) == (ProxyHeader(2, None, None), 16)
    unspec = pp.V2_SIGNATURE + bytes([0x21, 0x00, 0, 0])
    assert parse(unspec) == (ProxyHeader(2, None, None), 16)


@pytest.mark.parametrize("bad", [
    pp.V2_SIGNATURE + bytes([0x11, 0x11, 0, 12]) + bytes(12),  # version 1 in a v2 header
    pp.V2_SIGNATURE + bytes([0x22, 0x11, 0, 12]) + bytes(12),  # command 2
    pp.V2_SIGNATURE + bytes([0x21, 0x11, 0, 4]) + bytes(4),  # address block too short
    pp.V2_SIGNATURE + bytes([0x21, 0x11, 0xFF, 0xFF]),  # longer than we read
    pp.V2_SIGNATURE + bytes([0x21, 0x51, 0, 0]),  # unknown family
])
def test_v2_malformed_is_refused(bad: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(bad)


def test_looks_like_proxy() -> None:
    assert looks_like_proxy(b"PROXY TCP4") is True
    assert looks_like_proxy(pp.V2_SIGNATURE) is True
    assert looks_like_proxy(b"PRO") is None and looks_like_proxy(b"\r\n\r") is None
    assert looks_like_proxy(b"<?xml version") is False
    assert looks_like_proxy(b"\x16\x03\x01") is False  # a TLS ClientHello
    with pytest.raises(ProxyError):
        parse(b"<stream:stream>")


def test_preface_from_a_trusted_proxy_needs_a_valid_header() -> None:
    line = b"PROXY TCP4 192.0.2.10 10.0.0.5 40001 5222\r\n"
    assert pp.read_preface(line[:9], from_proxy=True) is None  # more bytes needed
    assert pp.read_preface(line + b"<?xml", from_proxy=True) == pp.Passed(
        ProxyHeader(1, ("192.0.2.10", 40001), ("10.0.0.5", 5222)), b"<?xml"
    )
    refused = pp.read_preface(b"<?xml version='1.0'?>", from_proxy=True)
    assert isinstance(refused, pp.Refused) and not refused.untrusted


def test_preface_from_anyone_else_must_not_carry_a_header() -> None:
    assert pp.read_preface(b"PRO", from_proxy=False) is None  # could still be one
    assert pp.read_preface(b"<?xml", from_proxy=False) == pp.Passed(None, b"<?xml")
    refused = pp.read_preface(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", from_proxy=False)
    assert isinstance(refused, pp.Refused) and refused.untrusted
