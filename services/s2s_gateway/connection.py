"""The I/O shells of s2s streams: bytes between a socket and a sans-I/O stream, nothing more.

`InboundConnection` carries a `ReceivingStream` (a peer connected to our port 5269),
`OutboundConnection` an `InitiatingStream` (we connected to a peer, to send stanzas or to
verify a dialback key).  Both are asyncio Protocols (TLS through `loop.start_tls`, which
pauses reading, so no byte sent in the clear after <starttls/> or <proceed/> is processed),
and coalesce their writes into one `transport.write` per event-loop tick.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from shared import logs
from shared.xmpp import s2s, s2s_out
from shared.xmpp.errors import StreamErrorCondition

from . import metrics

if TYPE_CHECKING:
    from .service import S2SGateway

log = logging.getLogger(__name__)


class _Shell(asyncio.Protocol):
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

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        metrics.CONNECTIONS.labels(self.direction).inc()
        metrics.CONNECTIONS_OPENED.labels(self.direction).inc()
        self.touch()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        metrics.CONNECTIONS.labels(self.direction).dec()
        self._closing = True
        if self._idle is not None:
            self._idle.cancel()
        if not self.closed.done():
            self.closed.set_result(None)
        self.lost()

    def lost(self) -> None:
        """Subclasses: the connection is gone."""

    # ---- writing ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not data or self._closing:
            return
        self._wbuf.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._wbuf or self.transport is None or self.transport.is_closing():
            self._wbuf.clear()
            return
        data = b"".join(self._wbuf)
        self._wbuf.clear()
        self.transport.write(data)

    def finish(self) -> None:
        """Write what is left and close the transport."""
        if self._closing:
            return
        self._flush()
        self._closing = True
        if self.transport is not None:
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
    """A peer server's stream to us (XEP-0220 Receiving Server, or Authoritative Server)."""

    direction = "in"

    def __init__(self, gw: S2SGateway) -> None:
        super().__init__(gw)
        self.stream = s2s.ReceivingStream(gw.stream_config)
        self._rate = gw.s2s_settings.s2s_max_stanzas_per_s
        self._tokens = self._rate  # a token bucket of one second's worth of stanzas
        self._refilled = asyncio.get_running_loop().time()
        self._throttled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.gw.inbound.add(self)

    def lost(self) -> None:
        self.gw.inbound.discard(self)

    def data_received(self, data: bytes) -> None:
        self.touch()
        self.stream.receive_data(data)
        self._pump()

    def close(self, condition: StreamErrorCondition | None = None) -> None:
        self.stream.close(condition)
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
                if self.stream.state is s2s.State.WAITING:
                    self.transport.pause_reading()
                elif self.stream.closed:
                    self.finish()
        finally:
            logs.connection_id.reset(token)

    def _on_event(self, event: s2s.Event) -> None:
        if isinstance(event, s2s.StanzaIn):
            metrics.STANZAS.labels("in").inc()
            self.gw.stanza_from_peer(event)
            self._throttle()
        elif isinstance(event, s2s.StartTLS):
            self.spawn(self._start_tls())
        elif isinstance(event, s2s.DialbackRequested):
            self.spawn(self._dialback(event))
        elif isinstance(event, s2s.PeerAuthenticated):
            metrics.AUTHENTICATED.labels("in", event.mechanism).inc()
            log.info("inbound stream authenticated %s (%s)", event.domain, event.mechanism)
        elif isinstance(event, s2s.AuthFailed):
            metrics.AUTH_FAILURES.labels(event.mechanism).inc()
            log.info("inbound %s authentication failed: %s", event.mechanism, event.condition)
        elif isinstance(event, s2s.VerifyAnswered):
            metrics.DIALBACK_VERIFY.labels("answered", "valid" if event.valid else "invalid").inc()
        elif isinstance(event, s2s.StreamEnded):
            if event.error is not None:
                metrics.STREAM_ERRORS.labels(event.error.value).inc()
                log.info("inbound s2s stream ended: %s", event.error.value)
            self.write(self.stream.data_to_send())
            self.finish()

    def _throttle(self) -> None:
        """Inbound rate limit: past the bucket, stop reading until it refills (the peer's
        TCP window closes; nothing is dropped)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate) - 1
        self._refilled = now
        if self._tokens >= 0 or self._throttled or self.transport is None:
            return
        self._throttled = True
        metrics.THROTTLED.inc()
        self.transport.pause_reading()
        loop.call_later(-self._tokens / self._rate, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttled = False
        if self.transport is None or self._closing:
            return
        if self.stream.state is not s2s.State.WAITING:
            self.transport.resume_reading()
        self._pump()  # the stanzas already parsed first

    def _resume(self, answer: Callable[[], None]) -> None:
        if self._closing:
            return
        answer()
        if self.transport is not None and not self._throttled:
            self.transport.resume_reading()
        self._pump()

    async def _start_tls(self) -> None:
        ssl_object = await self.start_tls(self.gw.server_tls, True, None)
        if ssl_object is None:
            return
        # SASL EXTERNAL for inbound streams needs the peer's client certificate checked
        # without failing the handshake; not done yet, so only dialback is offered.
        self._resume(lambda: self.stream.tls_established(frozenset()))

    async def _dialback(self, request: s2s.DialbackRequested) -> None:
        valid = await self.gw.verify_dialback(request)
        self._resume(lambda: self.stream.dialback_result(valid))


class OutboundConnection(_Shell):
    """Our stream to a peer: to send stanzas (`ready`) or to verify a key (`verdict`)."""

    direction = "out"

    def __init__(
        self, gw: S2SGateway, domain: str, verify: s2s_out.VerifyRequest | None = None,
        direct_tls: bool = False, verify_cert: bool = False,
    ) -> None:
        super().__init__(gw)
        self.domain = domain
        self.verify_cert = verify_cert  # STARTTLS with a verifying context (SASL EXTERNAL)
        self.stream = s2s_out.InitiatingStream(
            gw.stream_config, domain, direct_tls=direct_tls, verify=verify
        )
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[str] = loop.create_future()  # the mechanism
        self.verdict: asyncio.Future[bool] = loop.create_future()
        self.failure = ""  # why authentication failed, for the logs

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.stream.initiate()
        self.write(self.stream.data_to_send())

    def lost(self) -> None:
        fut = self.ready if self.stream.verify is None else self.verdict
        if not fut.done():
            fut.set_exception(ConnectionError(self.failure or "connection closed"))

    def data_received(self, data: bytes) -> None:
        self.touch()
        self.stream.receive_data(data)
        self._pump()

    def send(self, payload: bytes) -> None:
        self.touch()
        self.stream.send(payload)
        self.write(self.stream.data_to_send())

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
            if not self.ready.done():
                self.ready.set_result(event.mechanism)
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
        ctx = self.gw.tls_context_for(self.domain, self.verify_cert)
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
