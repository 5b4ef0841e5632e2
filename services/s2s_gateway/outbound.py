"""Outbound federation: one link per (local domain, remote domain), and dialback
verification connections.

A `Link` resolves the domain, connects, negotiates TLS and authenticates, all within
``STANZAD_S2S_CONNECT_TIMEOUT_S``; stanzas that arrive meanwhile wait in a bounded queue and
are written in order once the stream is ready.  When setting up fails, every queued stanza is
bounced to its sender: ``remote-server-timeout`` when time ran out, ``remote-server-not-found``
otherwise (RFC 6120 §8.3.3.16, §8.3.3.17).  One link is reused for all traffic from its local
domain to its remote domain (a stream authenticates one pair, RFC 6120 §13.7); a new one is
made on the next stanza after it closed.

Nothing is lost silently when a stream breaks, as far as the peer lets us know
(XEP-0198, when it offers it): every stanza written is kept until the peer acks it, at most
``STANZAD_S2S_SM_MAX_UNACKED`` (beyond, new stanzas wait in the queue).  When the stream
breaks, the unacked stanzas go first on a new link, once: messages, presence and IQ results
may arrive twice then (the peer may have handled some without our hearing its ack), which
is better than never; an IQ ``set`` is not repeated (it may not be idempotent) but bounced
``remote-server-timeout`` (RFC 6120 §8.3.3.17), and so is a stanza whose second stream
broke too.  Without XEP-0198 the peer's TCP acks are all we have: stanzas written just before
a connection breaks may be lost, as with any XMPP server.

With durable delivery each stanza carries the `Hold` of its stream message
(shared/bus/client.py): the message is acked only once every stanza it carried is settled,
i.e. acked by the peer (XEP-0198 ``h``), written when the peer has no XEP-0198, or bounced.
A gateway killed while stanzas wait here (the link connecting, the XEP-0198 window full, the
ack not yet come) leaves their messages unacked, and the partition's next owner sends them.
A full queue then does not bounce: the link asks the gateway to stop pulling its domain's
partition (`S2SGateway.queue_full`) until the queue is half empty again.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.bus.client import NO_HOLD, Hold
from shared.bus.envelope import Envelope, Kind
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
    gw: S2SGateway, domain: str, verify: VerifyRequest | None = None, verify_cert: bool = False,
    local: str = "",
) -> OutboundConnection:
    """Resolve and connect to the first target that answers; the stream is initiated, from
    ``local`` (our main domain by default; a verification's: the domain the key was for)."""
    try:
        targets = await gw.resolver.resolve(domain)
    except ServiceUnavailable:
        raise SetupFailed(f"{domain} offers no XMPP server-to-server service") from None
    errors = []
    for target in targets:
        try:
            return await _open(gw, domain, target, verify, verify_cert, local)
        except ssl.SSLCertVerificationError as exc:
            # XEP-0368 direct TLS with a certificate that is not valid for the domain: the
            # same target again without verification, and dialback
            log.info("certificate of %s not valid for it (%s): dialback instead",
                     domain, exc.verify_message)
            gw.unverifiable(domain)
            verify_cert = False
            try:
                return await _open(gw, domain, target, verify, False, local)
            except OSError as again:
                errors.append(f"{target.host}:{target.port}: {again}")
        except OSError as exc:
            errors.append(f"{target.host}:{target.port}: {exc}")
    raise SetupFailed("; ".join(errors) or f"no address for {domain}")


async def _open(gw: S2SGateway, domain: str, target: Target, verify: VerifyRequest | None,
                verify_cert: bool, local: str) -> OutboundConnection:
    """One connection; direct TLS targets are wrapped at once (verifying when asked)."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: OutboundConnection(gw, domain, verify, target.direct_tls, verify_cert, local),
        target.host, target.port,
        ssl=gw.tls_context_for(domain, verify_cert, local) if target.direct_tls else None,
        server_hostname=domain if target.direct_tls else None,
        ssl_handshake_timeout=15 if target.direct_tls else None,
    )
    return conn


@dataclass(frozen=True, slots=True)
class Pending:
    """A stanza for the link; ``resent``: it was unacked on a stream that broke; ``hold``:
    its stream message's ack waits for it (settled once acked by the peer, written to a peer
    without XEP-0198, or bounced)."""

    env: Envelope
    resent: bool = False
    hold: Hold = NO_HOLD

    @property
    def repeatable(self) -> bool:
        """Safe to send again after a break: not yet resent, and not an IQ set."""
        return not self.resent and not (self.env.kind is Kind.IQ and self.env.type == "set")


class Link:
    """Our stream from one local domain to one remote domain, and the stanzas waiting for
    it."""

    def __init__(self, gw: S2SGateway, domain: str, carried: list[Pending] | None = None,
                 local: str = "") -> None:
        self.gw = gw
        self.domain = domain
        self.local = local or gw.domain
        self.queue: deque[Pending] = deque(carried or ())  # first: a broken stream's unacked
        metrics.QUEUED.inc(len(self.queue))
        self.unacked: deque[Pending] = deque()  # written with XEP-0198 on, not yet acked
        self.conn: OutboundConnection | None = None
        self.done = False  # closed or failed: the gateway makes a new link
        self.full = False  # durable: the queue is full, the partition is not pulled
        self._check_full()
        self.task = asyncio.create_task(self._run(), name=f"s2s-link-{self.local}-{domain}")

    def send(self, env: Envelope, hold: Hold = NO_HOLD) -> None:
        item = Pending(env, hold=hold)
        conn = self.conn
        if not self.queue and conn is not None and self._writable(conn):
            self._write(conn, item)
            return
        if not self.gw.durable and len(self.queue) >= self.gw.s2s_settings.s2s_max_queue:
            self.gw.bounce(env, StanzaErrorCondition.RESOURCE_CONSTRAINT)
            hold.settle()
            return
        self.queue.append(item)
        metrics.QUEUED.inc()
        if not self.full:
            self._check_full()

    def _check_full(self) -> None:
        """Durable delivery: a full queue stops the pulling of its partition rather than
        bouncing; what the pulls already asked for still comes and waits here (so the queue
        may exceed STANZAD_S2S_MAX_QUEUE by that much)."""
        if (self.gw.durable and not self.full
                and len(self.queue) >= self.gw.s2s_settings.s2s_max_queue):
            self.full = True
            self.gw.queue_full(self, True)

    def _not_full(self) -> None:
        if self.full:
            self.full = False
            self.gw.queue_full(self, False)

    def _writable(self, conn: OutboundConnection) -> bool:
        """Ready, and (with XEP-0198) room in the window of unacked stanzas."""
        return (
            conn.stream.ready and not conn.closed.done()
            and (not conn.sm or len(self.unacked) < self.gw.s2s_settings.s2s_sm_max_unacked)
        )

    def _drain(self) -> None:
        conn = self.conn
        while self.queue and conn is not None and self._writable(conn):
            metrics.QUEUED.dec()
            self._write(conn, self.queue.popleft())
        if self.full and len(self.queue) <= self.gw.s2s_settings.s2s_max_queue // 2:
            self._not_full()

    def _acked(self, n: int) -> None:
        """XEP-0198: the peer handled the ``n`` oldest unacked stanzas."""
        n = min(n, len(self.unacked))
        for _ in range(n):
            self.unacked.popleft().hold.settle()
        metrics.UNACKED.dec(n)
        self._drain()

    def _sm_failed(self) -> None:
        """The peer refused XEP-0198: what was written counts as sent, as without it."""
        self._written_settle()
        self._drain()

    def _written_settle(self) -> None:
        metrics.UNACKED.dec(len(self.unacked))
        for item in self.unacked:
            item.hold.settle()
        self.unacked.clear()

    def close(self, bounce: bool = True) -> None:
        """Close the stream properly (hand-over of the partition, shutdown, a domain no longer
        served).  What was written goes out before our </stream:stream> and counts as sent
        (settled; but once the release gave the partition's consumer up, no ack of it is sent
        any more: the next owner sends it again); what still waited for the stream is bounced
        or, without ``bounce`` (durable delivery, the partition given up), left unacked in
        its stream for the partition's next owner."""
        self.done = True
        if self.conn is not None:
            self.conn.close()
        self.task.cancel()
        self._written_settle()
        if bounce:
            self._drain_queue(StanzaErrorCondition.REMOTE_SERVER_TIMEOUT)
        else:
            metrics.QUEUED.dec(len(self.queue))
            for item in self.queue:
                item.hold.abandon()
            self.queue.clear()
        self._not_full()

    def _write(self, conn: OutboundConnection, item: Pending) -> None:
        try:
            conn.send(item.env.payload)
        except StreamError as exc:  # not a stanza we can serialise: the sender learns it
            log.warning("unsendable stanza for %s: %s", self.domain, exc)
            self.gw.bounce(item.env, StanzaErrorCondition.BAD_REQUEST)
            item.hold.settle()
            return
        metrics.STANZAS.labels("out").inc()
        if conn.sm:
            self.unacked.append(item)
            metrics.UNACKED.inc()
        else:  # written: all a peer without XEP-0198 tells us
            item.hold.settle()

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
        except Exception as exc:  # a bug: what waits must not stay (held) forever
            log.exception("s2s link to %s failed unexpectedly", self.domain)
            self._fail(StanzaErrorCondition.REMOTE_SERVER_NOT_FOUND, str(exc))
            return
        log.info("s2s stream to %s ready (%s over %s%s) from %s", self.domain,
                 conn.stream.mechanism, "direct TLS" if conn.direct_tls else "STARTTLS",
                 ", XEP-0198 acks" if conn.sm else "", self.local)
        self._drain()
        await conn.closed
        self.done = True
        self._broken()

    def _broken(self) -> None:
        """The stream is gone: its unacked stanzas (again, or bounced) and what was still
        queued go, in that order, to a new link."""
        carried: list[Pending] = []
        if self.unacked:
            log.info("s2s stream to %s broke with %d stanzas unacked", self.domain,
                     len(self.unacked))
        for item in self.unacked:
            if item.repeatable:
                carried.append(Pending(item.env, resent=True, hold=item.hold))
                metrics.RESENT.inc()
            else:
                self.gw.bounce(item.env, StanzaErrorCondition.REMOTE_SERVER_TIMEOUT)
                item.hold.settle()
        metrics.UNACKED.dec(len(self.unacked))
        self.unacked.clear()
        metrics.QUEUED.dec(len(self.queue))
        carried.extend(self.queue)
        self.queue.clear()
        pair = (self.local, self.domain)
        if carried and self.gw.links.get(pair) is self:
            self.gw.links[pair] = Link(self.gw, self.domain, carried, self.local)
        elif carried:  # the partition went elsewhere meanwhile  # pragma: no cover
            for item in carried:
                if self.gw.durable:
                    item.hold.abandon()
                else:
                    self.gw.bounce(item.env, StanzaErrorCondition.REMOTE_SERVER_TIMEOUT)
        self._not_full()  # after the new link counted its own queue

    async def _connect(self, verify_cert: bool) -> OutboundConnection:
        """An authenticated stream.  A peer certificate that fails verification is not fatal:
        the domain is remembered and the link reconnects without verification (dialback)."""
        conn = await connect(self.gw, self.domain, verify_cert=verify_cert, local=self.local)
        conn.on_acked, conn.on_sm_failed = self._acked, self._sm_failed
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
        self._not_full()

    def _drain_queue(self, condition: StanzaErrorCondition) -> None:
        """Bounce what waits (the bounce is published before its hold is settled, so the
        stream message is acked only once the bounce is stored)."""
        while self.queue:
            metrics.QUEUED.dec()
            item = self.queue.popleft()
            self.gw.bounce(item.env, condition)
            item.hold.settle()


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
