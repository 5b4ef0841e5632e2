"""Clients for integration tests: slixmpp for a real client's view, and a raw TLS socket for
feeding the server bytes no well-behaved client would send."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import slixmpp


def insecure_context() -> ssl.SSLContext:
    """The test cluster's certificate is self-signed: trust it for loopback tests only."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client(slixmpp.ClientXMPP):
    """A slixmpp client that records what it receives."""

    def __init__(self, jid: str, password: str, mech: str = "SCRAM-SHA-256") -> None:
        super().__init__(jid, password, sasl_mech=mech)
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
        self.register_plugin("xep_0199")
        self.register_plugin("xep_0203")

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


class RawClient:
    """Bytes over TCP with STARTTLS, for malformed input and exact reactions."""

    def __init__(self, host: str, port: int, domain: str = "localhost") -> None:
        self.host, self.port, self.domain = host, port, domain
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def header(self) -> bytes:
        return (
            f"<?xml version='1.0'?><stream:stream to='{self.domain}' version='1.0' "
            "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        ).encode()

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

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
        """Everything until the server closes the connection."""
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
            if not chunk:
                return buf
            buf += chunk

    async def starttls(self) -> None:
        await self.send(self.header())
        await self.read_until(b"</stream:features>")
        await self.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.read_until(b"<proceed")
        assert self.writer is not None
        await self.writer.start_tls(insecure_context(), server_hostname=None)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await self.writer.wait_closed()


async def raw_login(client: RawClient, jid: str, password: str, resource: str = "raw") -> bytes:
    """STARTTLS, SASL PLAIN, restart, bind; returns the bind result."""
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
    await client.read_until(b"</stream:features>")
    await client.send(
        b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        + f"<resource>{resource}</resource></bind></iq>".encode()
    )
    return await client.read_until(b"</iq>")


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
