"""Outbound federation: one link per remote domain, and dialback verification connections.

A `Link` resolves the domain, connects, negotiates TLS and authenticates, all within
``STANZAD_S2S_CONNECT_TIMEOUT_S``; stanzas that arrive meanwhile wait in a bounded queue and
are written in order once the stream is ready.  When setting up fails, every queued stanza is
bounced to its sender: ``remote-server-timeout`` when time ran out, ``remote-server-not-found``
otherwise (RFC 6120 §8.3.3.16, §8.3.3.17).  One link is reused for all traffic to its domain;
a new one is made on the next stanza after it closed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from typing import TYPE_CHECKING

from shared.bus.envelope import Envelope
from shared.xmpp.errors import StanzaErrorCondition, StreamError
from shared.xmpp.s2s_out import VerifyRequest

from . import metrics
from .connection import OutboundConnection
from .resolver import ServiceUnavailable, Target

if TYPE_CHECKING:
    from .service import S2SGateway

log = logging.getLogger(__name__)


class SetupFailed(ConnectionError):
    """No authenticated stream to the domain could be set up."""


async def connect(
    gw: S2SGateway, domain: str, verify: VerifyRequest | None = None, verify_cert: bool = False
) -> OutboundConnection:
    """Resolve and connect to the first target that answers; the stream is initiated."""
    try:
        targets = await gw.resolver.resolve(domain)
    except ServiceUnavailable:
        raise SetupFailed(f"{domain} offers no XMPP server-to-server service") from None
    errors = []
    for target in targets:
        try:
            return await _open(gw, domain, target, verify, verify_cert)
        except ssl.SSLCertVerificationError as exc:
            # XEP-0368 direct TLS with a certificate that is not valid for the domain: the
            # same target again without verification, and dialback
            log.info("certificate of %s not valid for it (%s): dialback instead",
                     domain, exc.verify_message)
            gw.unverifiable(domain)
            verify_cert = False
            try:
                return await _open(gw, domain, target, verify, False)
            except OSError as again:
                errors.append(f"{target.host}:{target.port}: {again}")
        except OSError as exc:
            errors.append(f"{target.host}:{target.port}: {exc}")
    raise SetupFailed("; ".join(errors) or f"no address for {domain}")


async def _open(gw: S2SGateway, domain: str, target: Target, verify: VerifyRequest | None,
                verify_cert: bool) -> OutboundConnection:
    """One connection; direct TLS targets are wrapped at once (verifying when asked)."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: OutboundConnection(gw, domain, verify, target.direct_tls, verify_cert),
        target.host, target.port,
        ssl=gw.tls_context_for(domain, verify_cert) if target.direct_tls else None,
        server_hostname=domain if target.direct_tls else None,
        ssl_handshake_timeout=15 if target.direct_tls else None,
    )
    return conn


class Link:
    """Our stream to one remote domain, and the stanzas waiting for it."""

    def __init__(self, gw: S2SGateway, domain: str) -> None:
        self.gw = gw
        self.domain = domain
        self.queue: deque[Envelope] = deque()
        self.conn: OutboundConnection | None = None
        self.done = False  # closed or failed: the gateway makes a new link
        self.task = asyncio.create_task(self._run(), name=f"s2s-link-{domain}")

    def send(self, env: Envelope) -> None:
        conn = self.conn
        if conn is not None and conn.stream.ready and not conn.closed.done():
            self._write(conn, env)
            return
        if len(self.queue) >= self.gw.s2s_settings.s2s_max_queue:
            self.gw.bounce(env, StanzaErrorCondition.RESOURCE_CONSTRAINT)
            return
        self.queue.append(env)
        metrics.QUEUED.inc()

    def close(self) -> None:
        """Close the stream properly (hand-over of the partition, shutdown)."""
        self.done = True
        if self.conn is not None:
            self.conn.close()
        self.task.cancel()

    def _write(self, conn: OutboundConnection, env: Envelope) -> None:
        try:
            conn.send(env.payload)
        except StreamError as exc:  # not a stanza we can serialise: the sender learns it
            log.warning("unsendable stanza for %s: %s", self.domain, exc)
            self.gw.bounce(env, StanzaErrorCondition.BAD_REQUEST)
            return
        metrics.STANZAS.labels("out").inc()

    async def _run(self) -> None:
        timeout = self.gw.s2s_settings.s2s_connect_timeout_s
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connect(self.gw.should_verify(self.domain))
        except TimeoutError:
            self._fail(StanzaErrorCondition.REMOTE_SERVER_TIMEOUT, "timed out")
            return
        except (SetupFailed, OSError) as exc:
            self._fail(StanzaErrorCondition.REMOTE_SERVER_NOT_FOUND, str(exc))
            return
        log.info("s2s stream to %s ready (%s over %s)", self.domain, conn.stream.mechanism,
                 "direct TLS" if conn.direct_tls else "STARTTLS")
        while self.queue:
            metrics.QUEUED.dec()
            self._write(conn, self.queue.popleft())
        await conn.closed
        self.done = True
        leftover, self.queue = list(self.queue), deque()  # came in as the stream closed
        metrics.QUEUED.dec(len(leftover))
        for env in leftover:
            self.gw.send_remote(env)

    async def _connect(self, verify_cert: bool) -> OutboundConnection:
        """An authenticated stream.  A peer certificate that fails verification is not fatal:
        the domain is remembered and the link reconnects without verification (dialback)."""
        conn = await connect(self.gw, self.domain, verify_cert=verify_cert)
        self.conn = conn
        try:
            await conn.ready
        except ConnectionError:
            if not (verify_cert and conn.cert_rejected):
                raise
            log.info("certificate of %s not valid for it: dialback instead", self.domain)
            self.gw.unverifiable(self.domain)
            return await self._connect(False)
        return conn

    def _fail(self, condition: StanzaErrorCondition, why: str) -> None:
        log.info("s2s link to %s failed: %s", self.domain, why)
        self.done = True
        if self.conn is not None:
            self.conn.close()
        self._drain_queue(condition)

    def _drain_queue(self, condition: StanzaErrorCondition) -> None:
        while self.queue:
            metrics.QUEUED.dec()
            self.gw.bounce(self.queue.popleft(), condition)


async def verify_key(gw: S2SGateway, request: VerifyRequest) -> bool | None:
    """XEP-0220 §2.3.1: ask the Authoritative Server of ``request.originating`` over a
    connection of its own; None when it cannot be reached in time."""
    timeout = gw.s2s_settings.s2s_connect_timeout_s
    conn: OutboundConnection | None = None
    try:
        async with asyncio.timeout(timeout):
            conn = await connect(gw, request.originating, request)
            valid = await conn.verdict
    except (TimeoutError, SetupFailed, OSError) as exc:
        log.info("dialback verification with %s failed: %s", request.originating, exc)
        metrics.DIALBACK_VERIFY.labels("asked", "unreachable").inc()
        return None
    finally:
        if conn is not None:
            conn.close()
    metrics.DIALBACK_VERIFY.labels("asked", "valid" if valid else "invalid").inc()
    return valid
