"""The PROXY protocol, versions 1 and 2 (HAProxy's "proxy-protocol.txt"), sans I/O.

A load balancer that does not keep the client's address (most cloud load balancers, a
Kubernetes Service without ``externalTrafficPolicy: Local``) can send it in a header before
the client's first byte.  `parse` reads that header from the start of a connection's bytes;
the listeners accept it only from the proxies they trust (a CIDR list): from anyone else the
header would let a client choose the address that limits count, so `looks_like_proxy` lets
them refuse it.

* v1 (§2.1): one line of text, ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` or
  ``PROXY UNKNOWN ...\\r\\n``, at most 107 bytes.
* v2 (§2.2): the 12-byte signature, version/command, family/protocol, a 16-bit length, the
  addresses (IPv4 12 bytes, IPv6 36, UNIX 216) and TLVs (skipped).  The LOCAL command (the
  proxy's own health checks) and the UNSPEC/UNIX families carry no client address: the
  connection's own peer stands.

A header that does not follow the specification raises `ProxyError` (the connection is
closed; the specification asks receivers not to guess).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

V1_PREFIX: Final = b"PROXY "
V1_MAX: Final = 107  # §2.1: the longest v1 line, CRLF included
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX_LENGTH: Final = 1024  # addresses + TLVs we are ready to read (§2.2 allows 65535)
_V2_ADDRESS: Final = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36}  # (family, protocol) -> bytes


class ProxyError(ValueError):
    """Not a valid PROXY header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int  # 1 or 2
    source: tuple[str, int] | None  # the client's address and port; None: not given
    destination: tuple[str, int] | None


def looks_like_proxy(data: bytes) -> bool | None:
    """True when ``data`` (the first bytes of a connection) start a PROXY header, False
    when they cannot, None when too few bytes have come to tell."""
    for prefix in (V1_PREFIX, V2_SIGNATURE):
        n = min(len(data), len(prefix))
        if data[:n] == prefix[:n]:
            return True if n == len(prefix) else None
    return False


@dataclass(frozen=True, slots=True)
class Passed:
    """The preface is settled: ``header`` (None on a direct connection), then ``rest``."""

    header: ProxyHeader | None
    rest: bytes


@dataclass(frozen=True, slots=True)
class Refused:
    """Close the connection: ``untrusted`` (a header from an address that may not send one)
    or a header that is missing or invalid from a trusted proxy; ``why`` for the log."""

    untrusted: bool
    why: str


def read_preface(data: bytes, from_proxy: bool) -> Passed | Refused | None:
    """The first bytes of a connection, as a listener sees them: from a trusted proxy they
    must start with a valid header, from anyone else they must not start with one.  None
    until enough bytes have come to tell."""
    if not from_proxy:
        sure = looks_like_proxy(data)
        if sure is None:
            return None
        if sure:
            return Refused(untrusted=True, why="a PROXY header from an untrusted address")
        return Passed(None, data)
    try:
        parsed = parse(data)
    except ProxyError as exc:
        return Refused(untrusted=False, why=str(exc))
    if parsed is None:
        return None
    header, length = parsed
    return Passed(header, data[length:])


def parse(data: bytes) -> tuple[ProxyHeader, int] | None:
    """The header at the start of ``data`` and its length in bytes, or None when more
    bytes are needed.  Raises `ProxyError`."""
    sure = looks_like_proxy(data)
    if sure is None:
        return None
    if not sure:
        raise ProxyError("no PROXY header")
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    return _parse_v2(data)


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            raise ProxyError("PROXY v1 line too long or not ended by CRLF")
        return None
    fields = data[:end].decode("ascii", "replace").split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":  # §2.1: the receiver ignores the rest
        return ProxyHeader(1, None, None), end + 2
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyError("PROXY v1: expected 'PROXY TCP4|TCP6 src dst sport dport'")
    version = 4 if fields[1] == "TCP4" else 6
    src, dst = _address(fields[2], version), _address(fields[3], version)
    sport, dport = _port(fields[4]), _port(fields[5])
    return ProxyHeader(1, (src, sport), (dst, dport)), end + 2


def _address(text: str, version: int) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyError(f"PROXY v1: bad address {text[:50]!r}") from None
    if ip.version != version:
        raise ProxyError("PROXY v1: address of the wrong family")
    return str(ip)


def _port(text: str) -> int:
    # §2.1: decimal, no leading zero, 0..65535
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyError(f"PROXY v1: bad port {text[:10]!r}")
    return int(text)


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if len(data) < 16:
        return None
    ver_cmd, fam, length = data[12], data[13], struct.unpack_from("!H", data, 14)[0]
    if ver_cmd >> 4 != 2:
        raise ProxyError("PROXY v2: unknown version")
    command = ver_cmd & 0x0F
    if command > 1:
        raise ProxyError("PROXY v2: unknown command")
    if length > V2_MAX_LENGTH:
        raise ProxyError("PROXY v2: header too long")
    total = 16 + length
    if len(data) < total:
        return None
    if command == 0:  # LOCAL: the proxy speaks for itself
        return ProxyHeader(2, None, None), total
    need = _V2_ADDRESS.get(fam)
    if need is None:  # UNSPEC, UNIX or datagram: no TCP client address to use
        if fam >> 4 > 3 or fam & 0x0F > 2:
            raise ProxyError("PROXY v2: unknown address family or protocol")
        return ProxyHeader(2, None, None), total
    if length < need:
        raise ProxyError("PROXY v2: address block too short")
    body = data[16 : 16 + need]
    if need == 12:
        src = str(ipaddress.IPv4Address(body[0:4]))
        dst = str(ipaddress.IPv4Address(body[4:8]))
        sport, dport = struct.unpack_from("!HH", body, 8)
    else:
        src = str(ipaddress.IPv6Address(body[0:16]))
        dst = str(ipaddress.IPv6Address(body[16:32]))
        sport, dport = struct.unpack_from("!HH", body, 32)
    return ProxyHeader(2, (src, sport), (dst, dport)), total


def v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 header (for tests and tools)."""
    family = "TCP6" if ":" in source[0] else "TCP4"
    return (f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
            .encode())


def v2(source: tuple[str, int] | None, destination: tuple[str, int] | None,
       tlvs: bytes = b"") -> bytes:
    """A v2 header: PROXY over TCP with the addresses, or LOCAL when ``source`` is None."""
    if source is None or destination is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    fam = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + tlvs
    return V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body
