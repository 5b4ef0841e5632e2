"""The I/O shells of s2s streams: bytes between a socket and a sans-I/O stream, nothing more.

`InboundConnection` carries a `ReceivingStream` (a peer connected to our port 5269, or to
the direct TLS port of XEP-0368), `OutboundConnection` an `InitiatingStream` (we connected to
a peer, to send stanzas or to verify a dialback key).  Both are asyncio Protocols and
coalesce their writes into one `transport.write` per event-loop tick.

TLS: outbound streams use `loop.start_tls` (which pauses reading, so no byte sent in the
clear after <starttls/> is processed).  Inbound streams run TLS themselves over memory
buffers (`shared.tls.memory`, pyOpenSSL), because only so can they ask for the peer's
certificate without failing the handshake of peers whose certificate we cannot verify; the
certificate is checked (`shared.tls.peer_cert`) against the domain the peer claims, and SASL
EXTERNAL is offered when it is valid for it (XEP-0178).

Inbound connections are admitted per source address (`shared.cluster.source_limits`): at most
``STANZAD_S2S_MAX_CONNECTIONS_PER_IP`` open and ``STANZAD_S2S_CONNECTIONS_PER_IP_PER_MIN``
new ones a minute; beyond, the stream is refused with <policy-violation/> (RFC 6120 §13.12).
The address is the socket's peer or, from a load balancer in
``STANZAD_S2S_PROXY_PROTOCOL_NETWORKS``, the one its PROXY protocol header names (before the
first byte of XMPP or of TLS on the direct TLS port); a PROXY header from anyone else is
refused.

XEP-0198 on outbound streams: the shell asks for an ack (<r/>) after each batch of stanzas
it writes, one request outstanding at a time; an <r/> unanswered for
``STANZAD_S2S_SM_ACK_TIMEOUT_S`` means the stream is dead, and the connection is aborted so
that its `Link` sends the unacked stanzas again on a new one.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections.abc import Callable, Coroutine
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

from OpenSSL import SSL

from shared.cluster import proxy_protocol
from shared.cluster.source_limits import TokenBucket, source_key
from shared.runtime import logs
from shared.runtime.writes import BatchedWrites
from shared.tls.memory import ServerTLS, TLSFailed
from shared.xmpp import s2s, s2s_out
from shared.xmpp.errors import StreamErrorCondition

from . import metrics

if TYPE_CHECKING:
    from .service import S2SGateway

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 15.0


class StreamState(Enum):
    NEGOTIATING = "negotiating"
    AUTHENTICATED = "authenticated"


class _Shell(BatchedWrites, asyncio.Protocol):
    direction = "?"

    def __init__(self, gw: S2SGateway) -> None:
        self.gw = gw
        self.conn_id = secrets.token_hex(4)
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wbuf: list[bytes] = []
        self._flush_scheduled = False
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: asyncio.TimerHandle | None = None
        self.tls_error: Exception | None = None
        self.state = StreamState.NEGOTIATING

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        metrics.CONNECTIONS.labels(self.direction).inc()
        metrics.CONNECTIONS_OPENED.labels(self.direction).inc()
        metrics.STREAMS.labels(self.direction, self.state.value).inc()
        self.touch()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        metrics.CONNECTIONS.labels(self.direction).dec()
        metrics.STREAMS.labels(self.direction, self.state.value).dec()
        self._closing = True
        if self._idle is not None:
            self._idle.cancel()
        if not self.closed.done():
            self.closed.set_result(None)
        self.lost()

    def lost(self) -> None:
        """Subclasses: the connection is gone."""

    # ---- inbound stanza rate (streams we serve: peers, components) --------------------------

    def _limit_rate(self, rate: float) -> None:
        """At most ``rate`` stanzas a second, a bucket of one second's worth."""
        self._stanzas = TokenBucket(rate, rate, asyncio.get_running_loop().time())
        self._throttled = False

    def _throttle(self) -> None:
        """Past the bucket, stop reading until it refills (the sender's TCP window closes;
        nothing is dropped)."""
        loop = asyncio.get_running_loop()
        wait = self._stanzas.take(1, loop.time())
        if not wait or self._throttled or self.transport is None:
            return
        self._throttled = True
        metrics.THROTTLED.inc()
        self.transport.pause_reading()
        loop.call_later(wait, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttled = False
        if self.transport is None or self._closing:
            return
        if self._may_read():
            self.transport.resume_reading()
        self._pump()  # the stanzas already parsed first

    def _may_read(self) -> bool:
        """Subclasses: whether reading may resume after a throttle."""
        return True

    def _pump(self) -> None:
        """Subclasses: handle what the stream has parsed."""

    def authenticated(self) -> None:
        if self.state is StreamState.NEGOTIATING:
            metrics.STREAMS.labels(self.direction, self.state.value).dec()
            self.state = StreamState.AUTHENTICATED
            metrics.STREAMS.labels(self.direction, self.state.value).inc()

    # ---- writing ---------------------------------------------------------------------------

    def _write_out(self, transport: asyncio.Transport, data: bytes) -> None:
        data = self.encode(data)
        if data:
            transport.write(data)

    def encode(self, plaintext: bytes) -> bytes:
        """Subclasses with their own TLS layer: the bytes to write for ``plaintext``."""
        return plaintext

    def closing_bytes(self) -> bytes:
        """Subclasses with their own TLS layer: their close_notify."""
        return b""

    def finish(self) -> None:
        """Write what is left and close the transport."""
        if self._closing:
            return
        self._flush()
        self._closing = True
        if self.transport is not None:
            tail = self.closing_bytes()
            if tail and not self.transport.is_closing():
                self.transport.write(tail)
            self.transport.close()

    # ---- helpers ---------------------------------------------------------------------------

    def touch(self) -> None:
        """Traffic: restart the idle timer."""
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.gw.s2s_settings.s2s_idle_timeout_s, self.idle)

    def idle(self) -> None:
        """Subclasses: close the stream properly."""
        self.finish()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("s2s connection task failed", exc_info=task.exception())
            self.finish()

    async def start_tls(self, ctx: ssl.SSLContext, server_side: bool, hostname: str | None
                        ) -> ssl.SSLObject | None:
        """Wrap the transport; None when the handshake failed (the connection is closed)."""
        self._flush()  # <proceed/> or <starttls/> must go out in the clear first
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self.transport, self, ctx, server_side=server_side,
                server_hostname=hostname, ssl_handshake_timeout=15,
            )
        except (TimeoutError, OSError, ConnectionError, ssl.SSLError) as exc:
            log.info("s2s TLS handshake failed: %s", exc)
            self.tls_error = exc
            self._closing = True
            if self.transport is not None:
                self.transport.close()
            return None
        if transport is None:
            return None
        self.transport = transport
        return cast(ssl.SSLObject | None, transport.get_extra_info("ssl_object"))


class InboundConnection(_Shell):
    """A peer server's stream to us (XEP-0220 Receiving Server, or Authoritative Server);
    ``direct_tls``: the connection came to the XEP-0368 port, TLS from the first byte."""

    direction = "in"

    def __init__(self, gw: S2SGateway, direct_tls: bool = False) -> None:
        super().__init__(gw)
        self.direct_tls = direct_tls
        self.stream = s2s.ReceivingStream(gw.stream_config, direct_tls=direct_tls)
        self.tls: ServerTLS | None = None
        self._limit_rate(gw.s2s_settings.s2s_max_stanzas_per_s)
        self._handshake_timer: asyncio.TimerHandle | None = None
        self.source = ""  # source_key of the peer's address, once admitted
        self.peer = "?"  # "ip:port" of the peer (behind a trusted proxy: from its header)
        self._preamble: bytes | None = b""  # until a PROXY header or none is known

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.gw.inbound.add(self)
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        if not peer or str(peer[0]) not in self.gw.proxies:
            self._admit()

    def _preface(self, data: bytes) -> bytes:
        """The first bytes: a PROXY header from a trusted load balancer names the peer; from
        anyone else it is refused.  What follows it (b"" until that is known)."""
        buf = self._preamble + data if self._preamble else data
        from_proxy = not self.source
        result = proxy_protocol.read_preface(buf, from_proxy)
        if result is None:
            self._preamble = buf
            return b""
        if isinstance(result, proxy_protocol.Passed):
            self._preamble = None
            if not from_proxy:
                return result.rest
            header = result.header
            if header is not None and header.source is not None:
                self.peer = f"{header.source[0]}:{header.source[1]}"
            self._admit()
            return b"" if self._closing else result.rest
        why = result.why
        self._preamble = None
        metrics.REFUSED.labels("proxy").inc()
        log.info("refused an s2s connection from %s: %s", self.peer, why)
        self._closing = True
        if self.transport is not None:
            self.transport.close()
        return b""

    def _admit(self) -> None:
        source = source_key(self.peer.rpartition(":")[0] or self.peer)
        refused = self.gw.admit(source)
        if refused:
            metrics.REFUSED.labels(refused).inc()
            log.info("refused an s2s connection from %s (%s)", source, refused)
            if self.direct_tls:  # nothing can be said before the TLS handshake
                self._closing = True
                assert self.transport is not None
                self.transport.close()
            else:  # RFC 6120 §4.9.3.14, §13.12
                self.close(StreamErrorCondition.POLICY_VIOLATION, "too many connections")
            return
        self.source = source
        if self.direct_tls:
            metrics.DIRECT_TLS.inc()
            self._begin_tls(self.gw.server_tls(direct=True))

    def lost(self) -> None:
        self.gw.inbound.discard(self)
        if self.source:
            self.gw.per_source.release(self.source)
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self.stream.release()  # libxml2's parser now, not at the next garbage collection

    def data_received(self, data: bytes) -> None:
        self.touch()
        if self._preamble is not None:
            data = self._preface(data)
            if not data:
                return
        if self.tls is not None:
            data = self._decrypt(data)
            if not data:
                return
        self.stream.receive_data(data)
        self._pump()

    # ---- TLS over memory buffers -----------------------------------------------------------

    def _begin_tls(self, ctx: SSL.Context, name: str = "") -> None:
        self.tls = ServerTLS(ctx, name)
        loop = asyncio.get_running_loop()
        self._handshake_timer = loop.call_later(HANDSHAKE_TIMEOUT_S, self._handshake_timeout)

    def _handshake_timeout(self) -> None:
        if self.tls is not None and not self.tls.handshake_done:
            log.info("s2s TLS handshake timed out")
            self._closing = True
            if self.transport is not None:
                self.transport.close()

    def _decrypt(self, data: bytes) -> bytes:
        """Ciphertext in, plaintext out; the handshake's end tells the stream machine."""
        assert self.tls is not None
        was_done = self.tls.handshake_done
        try:
            plaintext = self.tls.receive_data(data)
        except TLSFailed as exc:
            log.info("inbound s2s %s", exc)
            metrics.TLS_FAILURES.inc()
            self._closing = True
            if self.transport is not None:
                self.transport.write(self.tls.data_to_send())  # the alert, if any
                self.transport.close()
            return b""
        wire = self.tls.data_to_send()
        if wire and self.transport is not None:
            self.transport.write(wire)
        if self.tls.handshake_done and not was_done:
            self._handshake_done()
        if self.tls.peer_closed:
            self.finish()
        return plaintext

    def _handshake_done(self) -> None:
        assert self.tls is not None
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        chain = self.tls.peer_chain()
        peer = self.gw.trust.peer(*chain) if chain is not None else None
        log.debug("inbound s2s TLS %s, peer certificate: %s", self.tls.version,
                  "yes" if chain else "none")
        if self.direct_tls:
            self.stream.direct_tls_established(peer)
        else:
            self.stream.tls_established(peer)
            self._pump()  # our new stream header is sent when the peer's arrives

    def encode(self, plaintext: bytes) -> bytes:
        if self.tls is None:
            return plaintext
        if not self.tls.handshake_done:
            return b""  # nothing can be said before the handshake ends
        try:
            self.tls.send(plaintext)
        except TLSFailed as exc:
            log.info("inbound s2s %s", exc)
            return b""
        return self.tls.data_to_send()

    def closing_bytes(self) -> bytes:
        if self.tls is None or not self.tls.handshake_done:
            return b""
        self.tls.close()
        return self.tls.data_to_send()

    # ---- the stream ------------------------------------------------------------------------

    def close(self, condition: StreamErrorCondition | None = None, text: str | None = None
              ) -> None:
        self.stream.close(condition, text)
        self.write(self.stream.data_to_send())
        self.finish()

    def idle(self) -> None:
        self.close(StreamErrorCondition.CONNECTION_TIMEOUT)

    def _pump(self) -> None:
        token = logs.connection_id.set(f"s2s-in-{self.conn_id}")
        try:
            while not self._closing and not self._throttled:
                event = self.stream.next_event()
                if event is None:
                    break
                self._on_event(event)
            self.write(self.stream.data_to_send())
            if self.transport is not None and not self._closing and not self._throttled:
                if self.stream.state is s2s.State.WAITING and self._awaiting_dialback:
                    self.transport.pause_reading()
                elif self.stream.closed:
                    self.finish()
        finally:
            logs.connection_id.reset(token)

    @property
    def _awaiting_dialback(self) -> bool:
        return self.tls is None or self.tls.handshake_done

    def _on_event(self, event: s2s.Event) -> None:
        if isinstance(event, s2s.StanzaIn):
            metrics.STANZAS.labels("in").inc()
            self.gw.stanza_from_peer(event)
            self._throttle()
        elif isinstance(event, s2s.StartTLS):
            # <proceed/> goes out in the clear, then everything is TLS
            self.write(self.stream.data_to_send())
            self._flush()
            # no SNI: the certificate of the domain the header addressed (RFC 6120 §4.7.2)
            self._begin_tls(self.gw.server_tls(direct=False), self.stream.local)
        elif isinstance(event, s2s.DialbackRequested):
            self.spawn(self._dialback(event))
        elif isinstance(event, s2s.PeerAuthenticated):
            metrics.AUTHENTICATED.labels("in", event.mechanism).inc()
            self.authenticated()
            log.info("inbound stream authenticated %s to %s (%s)", event.domain,
                     self.stream.local, event.mechanism)
        elif isinstance(event, s2s.AuthFailed):
            metrics.AUTH_FAILURES.labels(event.mechanism).inc()
            log.info("inbound %s authentication failed: %s", event.mechanism, event.condition)
        elif isinstance(event, s2s.SMEnabled):
            metrics.SM_STREAMS.labels("in").inc()
        elif isinstance(event, s2s.VerifyAnswered):
            metrics.DIALBACK_VERIFY.labels("answered", "valid" if event.valid else "invalid").inc()
        elif isinstance(event, s2s.StreamEnded):
            if event.error is not None:
                metrics.STREAM_ERRORS.labels(event.error.value).inc()
                log.info("inbound s2s stream ended: %s", event.error.value)
            self.write(self.stream.data_to_send())
            self.finish()

    def _may_read(self) -> bool:
        return self.stream.state is not s2s.State.WAITING  # a dialback answer pending

    def _resume(self, answer: Callable[[], None]) -> None:
        if self._closing:
            return
        answer()
        if self.transport is not None and not self._throttled:
            self.transport.resume_reading()
        self._pump()

    async def _dialback(self, request: s2s.DialbackRequested) -> None:
        valid = await self.gw.verify_dialback(request)
        self._resume(lambda: self.stream.dialback_result(valid))


class OutboundConnection(_Shell):
    """Our stream to a peer: to send stanzas (`ready`) or to verify a key (`verdict`)."""

    direction = "out"

    def __init__(
        self, gw: S2SGateway, domain: str, verify: s2s_out.VerifyRequest | None = None,
        direct_tls: bool = False, verify_cert: bool = False, local: str = "",
    ) -> None:
        super().__init__(gw)
        self.domain = domain
        self.direct_tls = direct_tls
        self.verify_cert = verify_cert  # TLS with a verifying context (SASL EXTERNAL)
        self.stream = s2s_out.InitiatingStream(
            gw.stream_config, domain, direct_tls=direct_tls, verify=verify, local=local
        )
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[str] = loop.create_future()  # the mechanism
        self.verdict: asyncio.Future[bool] = loop.create_future()
        self.failure = ""  # why authentication failed, for the logs
        # XEP-0198: the link's callbacks, an ack wanted, one <r/> outstanding, its deadline
        self.on_acked: Callable[[int], None] | None = None
        self.on_sm_failed: Callable[[], None] | None = None
        self._want_ack = False
        self._ack_pending = False
        self._ack_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # direct TLS: the handshake is done, and verified the peer when verify_cert
        self.stream.initiate(cert_valid=self.direct_tls and self.verify_cert)
        self.write(self.stream.data_to_send())

    def lost(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        fut = self.ready if self.stream.verify is None else self.verdict
        if not fut.done():
            fut.set_exception(ConnectionError(self.failure or "connection closed"))
        self.stream.release()  # libxml2's parser now, not at the next garbage collection

    def data_received(self, data: bytes) -> None:
        self.touch()
        self.stream.receive_data(data)
        self._pump()

    @property
    def sm(self) -> bool:
        """XEP-0198 acks requested on this stream: what is written is kept until acked."""
        return self.stream.sm is not None

    def send(self, payload: bytes) -> None:
        self.touch()
        self.stream.send(payload)
        self.write(self.stream.data_to_send())
        if self.stream.sm is not None:
            self._want_ack = True

    def _before_flush(self) -> None:
        """One <r/> after each batch of stanzas, while none is outstanding (XEP-0198 §4)."""
        if (self._closing or not self._want_ack or self._ack_pending or self.stream.sm is None
                or not self.stream.ready):  # nothing to ask after our </stream:stream>
            return
        self._want_ack = False
        self._ack_pending = True
        self.stream.request_ack()
        self._wbuf.append(self.stream.data_to_send())
        self._ack_timer = asyncio.get_running_loop().call_later(
            self.gw.s2s_settings.s2s_sm_ack_timeout_s, self._ack_timeout
        )

    def _ack_timeout(self) -> None:
        """No <a/> in time: the peer or the path is gone, though TCP has not noticed."""
        log.warning("s2s stream to %s: no XEP-0198 ack in %.0fs, closing it", self.domain,
                    self.gw.s2s_settings.s2s_sm_ack_timeout_s)
        metrics.ACK_TIMEOUTS.inc()
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    def _acked(self, n: int) -> None:
        self._ack_pending = False
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self.stream.sm is not None and self.stream.sm.unacked:
            self._want_ack = True  # written after our <r/>: ask again
            self.schedule_flush()
        if self.on_acked is not None:
            self.on_acked(n)

    def close(self) -> None:
        self.stream.close()
        self.write(self.stream.data_to_send())
        self.finish()

    def idle(self) -> None:
        self.close()

    def _pump(self) -> None:
        token = logs.connection_id.set(f"s2s-out-{self.conn_id}")
        try:
            while not self._closing:
                event = self.stream.next_event()
                if event is None:
                    break
                self._on_event(event)
            self.write(self.stream.data_to_send())
            if self.stream.closed and not self._closing:
                self.finish()
        finally:
            logs.connection_id.reset(token)

    def _on_event(self, event: s2s_out.Event) -> None:
        if isinstance(event, s2s.StartTLS):
            if self.transport is not None:
                self.transport.pause_reading()
            self.spawn(self._start_tls())
        elif isinstance(event, s2s_out.Ready):
            metrics.AUTHENTICATED.labels("out", event.mechanism).inc()
            self.authenticated()
            if event.sm:
                metrics.SM_STREAMS.labels("out").inc()
            if not self.ready.done():
                self.ready.set_result(event.mechanism)
        elif isinstance(event, s2s_out.Acked):
            self._acked(event.n)
        elif isinstance(event, s2s_out.SMFailed):
            log.info("%s refused XEP-0198 on our stream: going on without acks", self.domain)
            self._ack_pending = self._want_ack = False
            if self._ack_timer is not None:
                self._ack_timer.cancel()
            if self.on_sm_failed is not None:
                self.on_sm_failed()
        elif isinstance(event, s2s_out.VerifyResult):
            if not self.verdict.done():
                self.verdict.set_result(event.valid)
        elif isinstance(event, s2s.AuthFailed):
            metrics.AUTH_FAILURES.labels(event.mechanism).inc()
            self.failure = f"{event.mechanism} refused: {event.condition}"
            log.info("outbound authentication to %s failed: %s", self.domain, self.failure)
        elif isinstance(event, s2s.StreamEnded):
            if event.error is not None:
                metrics.STREAM_ERRORS.labels(event.error.value).inc()
                self.failure = self.failure or f"stream error {event.error.value}"
            self.write(self.stream.data_to_send())
            self.finish()

    @property
    def cert_rejected(self) -> bool:
        return isinstance(self.tls_error, ssl.SSLCertVerificationError)

    async def _start_tls(self) -> None:
        ctx = self.gw.tls_context_for(self.domain, self.verify_cert, self.stream.local)
        ssl_object = await self.start_tls(ctx, False, self.domain)
        if ssl_object is None:
            self.failure = "TLS handshake failed"
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(self.failure))
            return
        # The handshake verified the chain and the name only with a verifying context; then
        # SASL EXTERNAL is tried when offered (XEP-0178), else dialback.
        self.stream.tls_established(cert_valid=self.verify_cert)
        if self.transport is not None:
            self.transport.resume_reading()
        self._pump()
