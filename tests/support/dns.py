"""A tiny authoritative DNS server on loopback for interop tests (UDP and TCP, dnspython).

It answers A and SRV records from a fixed table, NOERROR with no answer for other types of
known names, NXDOMAIN for everything else, so that a real server under test (Prosody, via
its `unbound = { forward = ... }` setting) finds our gateway with no system DNS change.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DNSServer:
    """``records``: {(name, type): [rdata text]}, e.g. {("gw.a.example.", "A"): ["127.0.0.1"]}."""

    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        self.records = {(n.lower().rstrip(".") + ".", t): v for (n, t), v in records.items()}
        self.names = {n for n, _ in self.records}
        self.port = 0
        self.queries: list[tuple[str, str]] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for question in query.question:
            name = question.name.to_text().lower()
            rtype = dns.rdatatype.to_text(question.rdtype)
            self.queries.append((name, rtype))
            values = self.records.get((name, rtype))
            if values:
                response.answer.append(
                    dns.rrset.from_text_list(question.name, 60, dns.rdataclass.IN, rtype, values)
                )
            elif name not in self.names:
                response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = self

        class UDP(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                with contextlib.suppress(Exception):
                    self.transport.sendto(server.answer(data), addr)  # type: ignore[attr-defined]

        self._tcp = await asyncio.start_server(self._tcp_client, "127.0.0.1", 0)
        self.port = self._tcp.sockets[0].getsockname()[1]
        self._udp, _ = await loop.create_datagram_endpoint(UDP, local_addr=("127.0.0.1", self.port))

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                          ) -> None:
        try:
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self.answer(await reader.readexactly(size))
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
