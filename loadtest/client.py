"""A lean XMPP client for load: asyncio.Protocol, STARTTLS, SASL SCRAM-SHA-256/1 or PLAIN,
resource binding, then a receive path that only looks for time stamps.

Same steps as tests/support/xmpp.py's RawClient/raw_login (RFC 6120 §5 STARTTLS, §6 SASL,
§7 bind), on a Protocol instead of streams (TLS on Protocol is several times cheaper, see
docs/architecture.md, "Building-block costs") and with SCRAM by scramp's client (RFC 5802,
RFC 7677).  A stanza's time stamp is the monotonic clock in ns, in `<body>` (chat) or
`<status>` (presence); CLOCK_MONOTONIC is one clock for every process of the machine, so
sender and receiver may be different worker processes.

With ``sm`` the client enables XEP-0198 with resumption after binding, as mobile clients do,
counts the stanzas it receives (the start tags of top-level message, presence and iq) and
answers every `<r/>` of the server with `<a h/>` (§4), so that the server's unacknowledged
queues stay short.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

import scramp.core
from scramp import ScramClient

SASL_NS: Final = "urn:ietf:params:xml:ns:xmpp-sasl"
STAMP = re.compile(rb"<(?:body|status)>(\d{1,20})</")
PING = re.compile(rb"<iq\b([^>]*)>\s*<ping xmlns=[\"']urn:xmpp:ping[\"']")
ATTR_ID = re.compile(rb"\bid=[\"']([^\"']*)[\"']")
PAYLOAD = re.compile(rb"<(challenge|success)[^>]*?(?:/>|>([^<]*)</(?:challenge|success)>)")
BOUND_JID = re.compile(rb"<jid>([^<]+)</jid>")
TAIL: Final = 64  # longer than any stamp match, so one split across reads is still seen
SM_NS: Final = "urn:xmpp:sm:3"
# a stanza's start tag (bodies escape '<', and chat has no nested stanzas) or an ack request
SM_COUNTED = re.compile(rb"<(?:message|presence|iq)[\s/>]|<r xmlns=[\"']urn:xmpp:sm:3[\"']\s*/>")
SM_ENABLE: Final = f"<enable xmlns='{SM_NS}' resume='true'/>".encode()
IP_BIND_ADDRESS_NO_PORT: Final = 24  # Linux: pick the port at connect(), per 4-tuple

StampSink = Callable[[int, int], None]  # (stamp ns, arrival ns)


class LoginFailed(Exception):
    """The server refused the login or answered something unexpected."""


def cache_salted_passwords(size: int = 256) -> None:
    """Keep SaltedPassword per (password, salt, iterations) in this process, as clients that
    store it do: the generator's CPU then goes to the protocol, not to PBKDF2.  The server's
    work is unchanged (it stores the keys and never runs PBKDF2 for SCRAM)."""
    hi = scramp.core.hi
    if getattr(hi, "cached", False):
        return
    cache: dict[tuple[Any, bytes, bytes, int], bytes] = {}

    def cached_hi(hf: Any, password: bytes, salt: bytes, iterations: Any) -> bytes:
        key = (hf, bytes(password), bytes(salt), int(iterations))
        found = cache.get(key)
        if found is None:
            if len(cache) >= size:
                cache.clear()
            found = cache[key] = hi(hf, password, salt, iterations)
        return found

    cached_hi.cached = True  # type: ignore[attr-defined]
    scramp.core.hi = cached_hi


def insecure_context() -> ssl.SSLContext:
    """The cluster's certificate is self-signed and every target is loopback."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def header(domain: str) -> bytes:
    return (
        f"<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' "
        "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    ).encode()


class XmppConnection(asyncio.Protocol):
    """One client stream.  While logging in, bytes are buffered for `until`; once live, each
    read is scanned for time stamps (handed to `sink`) and server pings (answered)."""

    jid = ""  # the full JID the server bound (RFC 6120 §7.6.1), set by `login`

    def __init__(self, sink: StampSink | None = None,
                 on_lost: Callable[[XmppConnection], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.sink = sink
        self.on_lost = on_lost
        self.live = False
        self.closed = False
        self.own_stamps: set[bytes] = set()  # presence we sent comes back to ourselves
        self.handled: int | None = None  # XEP-0198 enabled: stanzas received since
        self.index = -1  # the user's number in the run (set by the worker)
        self.available = False  # sent its initial presence (RFC 6121 §4.2)
        self.pings = 0  # server pings answered (XEP-0199 keepalives)
        self._buf = b""
        self._tail = b""
        self._waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if not self.live:
            self._buf += data
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
            return
        if self.sink is None and self.handled is None:
            if b"urn:xmpp:ping" in data:
                self._answer_pings(data)
            return
        text = self._tail + data
        skip = len(self._tail)
        if self.sink is not None:
            now = time.monotonic_ns()
            for m in STAMP.finditer(text):
                if m.end() > skip and m.group(1) not in self.own_stamps:
                    self.sink(int(m.group(1)), now)
        self._tail = text[-TAIL:]
        if b"urn:xmpp:ping" in data:
            self._answer_pings(data)
        if self.handled is not None:
            self._stream_management(text, skip)

    def _stream_management(self, text: bytes, skip: int) -> None:
        """XEP-0198 §4: count what arrived and answer each <r/> with how many stanzas were
        handled before it (matches in the tail were seen with the read before)."""
        handled = self.handled
        assert handled is not None
        for m in SM_COUNTED.finditer(text):
            if m.end() <= skip:
                continue
            if m.group().startswith(b"<r "):
                self.write(f"<a xmlns='{SM_NS}' h='{handled % 2**32}'/>".encode())
            else:
                handled += 1
        self.handled = handled

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self.on_lost is not None:
            self.on_lost(self)

    def _answer_pings(self, data: bytes) -> None:
        for m in PING.finditer(data):
            attrs = m.group(1)
            found = ATTR_ID.search(attrs)
            if found is not None and (b'type="get"' in attrs or b"type='get'" in attrs):
                ident = found.group(1).decode()
                self.write(f"<iq type='result' id='{ident}'/>".encode())
                self.pings += 1

    # sending
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport else 0

    # login steps
    async def until(self, *needles: bytes, timeout: float) -> bytes:
        """Everything buffered up to the end of the first needle seen; keeps the rest."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            hits = [(i, n) for n in needles if (i := self._buf.find(n)) >= 0]
            if hits:
                i, n = min(hits)
                out, self._buf = self._buf[: i + len(n)], self._buf[i + len(n):]
                return out
            if self.closed:
                raise LoginFailed(f"closed while waiting for {needles!r}: {self._buf[-300:]!r}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{needles!r} not seen; got {self._buf[-300:]!r}")
            self._waiter = loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, remaining)
            except TimeoutError:
                pass
            finally:
                self._waiter = None

    async def request(self, iq: bytes, ident: str, timeout: float) -> bytes:
        """Send an IQ on a live stream and wait for the start tag of its answer (the stanza
        with id ``ident``); the stream is read as during login meanwhile, and a server ping
        that came in that window is answered afterwards."""
        head = b""
        self.live = False
        self._buf = b""
        try:
            self.write(iq)
            head = await self.until(f"id='{ident}'".encode(), f'id="{ident}"'.encode(),
                                    timeout=timeout)
            head += await self.until(b">", timeout=timeout)
            return head[head.rfind(b"<"):]
        finally:
            skipped, self._buf = head + self._buf, b""
            self.live = True
            if b"urn:xmpp:ping" in skipped:
                self._answer_pings(skipped)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


async def connect(host: str, port: int, source: str, conn: XmppConnection) -> None:
    """TCP from `source` (port chosen at connect time, so each source address has its own
    ephemeral port range per destination) to host:port."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        await loop.sock_connect(sock, (host, port))
        await loop.create_connection(lambda: conn, sock=sock)
    except BaseException:
        sock.close()
        raise


async def login(conn: XmppConnection, *, host: str, port: int, source: str, domain: str,
                jid: str, password: str, resource: str, mechanism: str,
                ctx: ssl.SSLContext, timeout: float = 30.0, sm: bool = False) -> None:
    """Connect, STARTTLS, authenticate, bind (and with ``sm`` enable XEP-0198 with
    resumption, §3); the connection is live afterwards."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def left() -> float:
        return max(0.01, deadline - loop.time())

    await asyncio.wait_for(connect(host, port, source, conn), left())
    hdr = header(domain)
    conn.write(hdr)
    await conn.until(b"</stream:features>", timeout=left())
    conn.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    reply = await conn.until(b"<proceed", b"<failure", timeout=left())
    if b"<proceed" not in reply:
        raise LoginFailed("STARTTLS refused")
    await conn.until(b">", timeout=left())
    assert conn.transport is not None
    tls = await asyncio.wait_for(
        loop.start_tls(conn.transport, conn, ctx, server_hostname=None), left()
    )
    if tls is None:
        raise LoginFailed("TLS handshake gave no transport")
    conn.transport = tls  # type: ignore[assignment]
    conn.write(hdr)
    await conn.until(b"</stream:features>", timeout=left())
    local = jid.partition("@")[0]
    if mechanism in ("PLAIN", "OAUTHBEARER"):
        # OAUTHBEARER (RFC 7628 §3.1): ``password`` is the bearer token
        message = (f"\0{local}\0{password}" if mechanism == "PLAIN"
                   else f"n,,\x01auth=Bearer {password}\x01\x01")
        token = base64.b64encode(message.encode()).decode()
        conn.write(f"<auth xmlns='{SASL_NS}' mechanism='{mechanism}'>{token}</auth>".encode())
        reply = await conn.until(b"</success>", b"<success/>", b"</failure>", timeout=left())
        if b"<success" not in reply:
            raise LoginFailed(reply.decode(errors="replace"))
    else:
        await _scram(conn, mechanism, local, password, left)
    conn.write(hdr)
    await conn.until(b"</stream:features>", timeout=left())
    conn.write(
        b"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        + f"<resource>{resource}</resource></bind></iq>".encode()
    )
    reply = await conn.until(b"</iq>", timeout=left())
    if b'type="result"' not in reply and b"type='result'" not in reply:
        raise LoginFailed(f"bind: {reply[-300:]!r}")
    bound = BOUND_JID.search(reply)
    conn.jid = bound.group(1).decode() if bound else f"{jid}/{resource}"
    if sm:
        conn.write(SM_ENABLE)
        reply = await conn.until(b"<enabled", b"<failed", timeout=left())
        if b"<enabled" not in reply:
            raise LoginFailed(f"XEP-0198 enable: {reply[-300:]!r}")
        await conn.until(b">", timeout=left())
        conn.handled = 0
    conn.live = True
    conn._buf = b""


async def _scram(conn: XmppConnection, mechanism: str, local: str, password: str,
                 left: Callable[[], float]) -> None:
    """RFC 6120 §6.4 exchange carrying RFC 5802 messages, computed by scramp."""
    client = ScramClient([mechanism], local, password)
    first = base64.b64encode(client.get_client_first().encode()).decode()
    conn.write(f"<auth xmlns='{SASL_NS}' mechanism='{mechanism}'>{first}</auth>".encode())
    reply = await conn.until(b"</challenge>", b"</failure>", timeout=left())
    m = PAYLOAD.search(reply)
    if m is None or m.group(1) != b"challenge":
        raise LoginFailed(reply.decode(errors="replace"))
    client.set_server_first(base64.b64decode(m.group(2) or b"").decode())
    final = base64.b64encode(client.get_client_final().encode()).decode()
    conn.write(f"<response xmlns='{SASL_NS}'>{final}</response>".encode())
    reply = await conn.until(b"</success>", b"<success/>", b"</failure>", timeout=left())
    m = PAYLOAD.search(reply)
    if m is None or m.group(1) != b"success":
        raise LoginFailed(reply.decode(errors="replace"))
    # RFC 5802 §5.1: the server proves it knows the keys too
    client.set_server_final(base64.b64decode(m.group(2) or b"").decode())


async def register(conn: XmppConnection, *, host: str, port: int, source: str, domain: str,
                   jid: str, password: str, ctx: ssl.SSLContext, timeout: float = 30.0) -> None:
    """Create the account by in-band registration (XEP-0077 §3.1) after STARTTLS; for
    servers whose accounts the tool cannot write directly (Prosody)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def left() -> float:
        return max(0.01, deadline - loop.time())

    await asyncio.wait_for(connect(host, port, source, conn), left())
    hdr = header(domain)
    conn.write(hdr)
    await conn.until(b"</stream:features>", timeout=left())
    conn.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    await conn.until(b"<proceed", timeout=left())
    await conn.until(b">", timeout=left())
    assert conn.transport is not None
    tls = await asyncio.wait_for(
        loop.start_tls(conn.transport, conn, ctx, server_hostname=None), left()
    )
    conn.transport = tls  # type: ignore[assignment]
    conn.write(hdr)
    await conn.until(b"</stream:features>", timeout=left())
    local = jid.partition("@")[0]
    conn.write(
        b"<iq type='set' id='reg1'><query xmlns='jabber:iq:register'>"
        + f"<username>{local}</username><password>{password}</password></query></iq>".encode()
    )
    reply = await conn.until(b"<iq", timeout=left())
    reply += await conn.until(b">", timeout=left())  # the iq's start tag
    if not reply.endswith(b"/>"):
        reply += await conn.until(b"</iq>", timeout=left())
    if b'type="result"' not in reply and b"type='result'" not in reply:
        raise LoginFailed(f"registration: {reply[-300:]!r}")
