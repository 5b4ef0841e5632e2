"""Clients for integration tests: slixmpp for a real client's view, and a raw TLS socket for
feeding the server bytes no well-behaved client would send."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import slixmpp


def insecure_context() -> ssl.SSLContext:
    """The test cluster's certificate is self-signed: trust it for loopback tests only."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client(slixmpp.ClientXMPP):
    """A slixmpp client that records what it receives; `source` binds its local address."""

    def __init__(self, jid: str, password: str, mech: str = "SCRAM-SHA-256",
                 source: str | None = None) -> None:
        super().__init__(jid, password, sasl_mech=mech)
        self.source = source
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.enable_plaintext = False
        self.ssl_context = insecure_context()
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.auth_failed = asyncio.Event()
        self.session_started = asyncio.Event()
        self.used_mech: str | None = None
        self.add_event_handler("message", self.messages.put_nowait)
        self.presence_log: list[tuple[str, str, str]] = []  # (from, type or show, status)
        self.add_event_handler("presence", self._record_presence)
        self.add_event_handler("failed_auth", lambda *_: self.auth_failed.set())
        self.add_event_handler("session_start", lambda *_: self.session_started.set())
        self.add_event_handler("auth_success", self._record_mech)
        self.register_plugin("xep_0199")
        self.register_plugin("xep_0203")

    def _record_mech(self, _stanza: Any) -> None:
        self.used_mech = self.plugin["feature_mechanisms"].mech.name

    def _record_presence(self, pres: Any) -> None:
        self.presence_log.append((str(pres["from"]), str(pres["type"]), str(pres["status"])))

    def saw_presence(self, from_: str, type_: str = "available", status: str | None = None
                     ) -> bool:
        """Whether a presence from ``from_`` (bare or full) of that type arrived."""
        return any(
            (f == from_ or f.partition("/")[0] == from_) and t == type_
            and (status is None or s == status)
            for f, t, s in self.presence_log
        )

    async def login(self, host: str, port: int, timeout: float = 20,
                    presence: bool = True) -> None:
        with _bound_source(self.source):
            self.connect(host, port)
            await asyncio.wait(
                [asyncio.create_task(self.session_started.wait()),
                 asyncio.create_task(self.auth_failed.wait())],
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        if self.auth_failed.is_set():
            raise PermissionError("authentication failed")
        if not self.session_started.is_set():
            raise TimeoutError("no session within the timeout")
        if presence:
            self.send_presence()

    async def logout(self) -> None:
        self.disconnect()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.disconnected, 10)


_SOURCES = itertools.count(2)


def new_source() -> str:
    """A loopback source address of its own (127.0.0.0/8 is all loopback on Linux), so that
    per-address limits and auth-failure counters of one test never touch another's."""
    n = next(_SOURCES)
    return f"127.0.{n // 250}.{n % 250 + 2}"


@contextlib.contextmanager
def _bound_source(source: str | None) -> Iterator[None]:
    """While connecting, make the test loop's create_connection bind `source` (slixmpp has
    no option for it).  Tests connect one client at a time, so nothing else is affected."""
    if source is None:
        yield
        return
    loop = asyncio.get_running_loop()
    original = loop.create_connection

    async def bound(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("local_addr", (source, 0))
        return await original(*args, **kwargs)

    loop.create_connection = bound  # type: ignore[method-assign]
    try:
        yield
    finally:
        del loop.create_connection  # back to the class's method


class RawClient:
    """Bytes over TCP with STARTTLS, for malformed input and exact reactions.

    `source` binds the local address (see `new_source`); `rcvbuf` shrinks the socket's receive
    buffer so that a client that stops reading fills the server's buffers quickly; `preamble`
    is sent first on every connection (a PROXY protocol header, as a load balancer would)."""

    def __init__(self, host: str, port: int, domain: str = "localhost", *,
                 source: str | None = None, rcvbuf: int | None = None,
                 preamble: bytes = b"") -> None:
        self.host, self.port, self.domain = host, port, domain
        self.source, self.rcvbuf, self.preamble = source, rcvbuf, preamble
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def header(self) -> bytes:
        return (
            f"<?xml version='1.0'?><stream:stream to='{self.domain}' version='1.0' "
            "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        ).encode()

    async def open(self) -> None:
        if self.source is None and self.rcvbuf is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            if self.preamble:
                await self.send(self.preamble)
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.bind((self.source or "127.0.0.1", 0))
        await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
        # asyncio's StreamReader reads ahead up to twice `limit` on its own: keep that small
        # for a client meant not to read
        limit = 4096 if self.rcvbuf is not None else 2**16
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=limit)
        if self.preamble:
            await self.send(self.preamble)

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def read_until(self, needle: bytes, timeout: float = 10) -> bytes:
        """Everything read until `needle` appears (or the connection closes)."""
        assert self.reader is not None
        buf = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while needle not in buf:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{needle!r} not seen; got {buf[-500:]!r}")
            chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            if not chunk:
                break
            buf += chunk
        return buf

    async def read_all(self, timeout: float = 10) -> bytes:
        """Everything until the server closes (or resets) the connection."""
        assert self.reader is not None
        buf = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), max(0.0, remaining))
            except TimeoutError:
                raise TimeoutError(f"still open; got {buf[-500:]!r}") from None
            except (ConnectionError, ssl.SSLError):
                return buf
            if not chunk:
                return buf
            buf += chunk

    async def expect_stream_error(self, condition: str, timeout: float = 10) -> bytes:
        """Read until the server closes; assert it sent `<condition/>` as a stream error
        (RFC 6120 §4.9) followed by the closing tag; return everything read."""
        data = await self.read_all(timeout)
        expected = (
            f'<stream:error><{condition} xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>'
        ).encode()
        assert expected in data, data[-600:]
        assert data.rstrip().endswith(b"</stream:stream>"), data[-300:]
        return data

    async def auth_plain(self, jid: str, password: str, authzid: str = "") -> bytes:
        """Header and SASL PLAIN on an open (TLS) stream; returns the SASL reply."""
        import base64

        await self.send(self.header())
        await self.read_until(b"</stream:features>")
        local = jid.partition("@")[0]
        token = base64.b64encode(f"{authzid}\0{local}\0{password}".encode()).decode()
        await self.send(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
            .encode()
        )
        return await self.read_until_any((b"</success>", b"<success/>", b"</failure>"))

    async def read_until_any(self, needles: tuple[bytes, ...], timeout: float = 10) -> bytes:
        """Everything read until one of `needles` appears (or the connection closes)."""
        assert self.reader is not None
        buf = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not any(n in buf for n in needles):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{needles!r} not seen; got {buf[-500:]!r}")
            chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            if not chunk:
                break
            buf += chunk
        return buf

    async def starttls(self, context: ssl.SSLContext | None = None) -> None:
        await self.send(self.header())
        await self.read_until(b"</stream:features>")
        await self.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.read_until(b"<proceed")
        assert self.writer is not None
        await self.writer.start_tls(context or insecure_context(), server_hostname=None)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 2)
            except (TimeoutError, ConnectionError, ssl.SSLError):
                self.writer.transport.abort()  # a TLS shutdown the server never answered


async def raw_login(client: RawClient, jid: str, password: str, resource: str = "raw") -> bytes:
    """STARTTLS, SASL PLAIN, restart, bind; returns the bind result."""
    await raw_auth(client, jid, password)
    await client.send(
        b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        + f"<resource>{resource}</resource></bind></iq>".encode()
    )
    return await client.read_until(b"</iq>")


async def ask_iq(client: RawClient, iq: bytes | str, stanza_id: bytes | str) -> bytes:
    """Send an IQ and read up to the end of the stanza with its id (the answer)."""
    sid = stanza_id.encode() if isinstance(stanza_id, str) else stanza_id
    await client.send(iq.encode() if isinstance(iq, str) else iq)
    data = await client.read_until(b'id="' + sid + b'"')
    if not data.rstrip().endswith((b"/>", b"</iq>")):  # the rest of that stanza
        data += await client.read_until(b"</iq>")
    return data


async def raw_auth(client: RawClient, jid: str, password: str) -> bytes:
    """STARTTLS, SASL PLAIN, restart; returns the features of the authenticated stream."""
    import base64

    local = jid.partition("@")[0]
    await client.open()
    await client.starttls()
    await client.send(client.header())
    await client.read_until(b"</stream:features>")
    token = base64.b64encode(f"\0{local}\0{password}".encode()).decode()
    await client.send(
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode()
    )
    reply = await client.read_until(b"sasl")
    if b"<success" not in reply:
        raise PermissionError(reply.decode(errors="replace"))
    await client.send(client.header())
    return await client.read_until(b"</stream:features>")


async def raw_sm_login(client: RawClient, jid: str, password: str, resource: str,
                       enable: bytes = b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
                       ) -> str:
    """`raw_login`, then XEP-0198 enabled (§3); returns the resumption id."""
    assert b"<jid>" in await raw_login(client, jid, password, resource=resource)
    await client.send(enable)
    reply = await client.read_until(b"<enabled")
    reply = reply[reply.index(b"<enabled"):]
    if b"/>" not in reply:
        reply += await client.read_until(b"/>")
    found = re.search(rb'<enabled xmlns="urn:xmpp:sm:3" id="([^"]+)" resume="true" max="(\d+)"',
                      reply)
    assert found is not None, reply
    return found.group(1).decode()


async def eventually(predicate: Any, timeout: float = 10, what: str = "condition") -> None:
    """Wait until ``predicate()`` (sync or async) is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.05)
