"""One client connection: bytes between the socket and the sans-I/O stream, nothing more.

`data_received -> C2SStream.receive_data -> events -> I/O for the events -> write`.  Writes are
coalesced per event-loop tick into one `transport.write`.

Edge limits (README "Security and limits"): reading stops (`pause_reading`, backpressure into
the kernel's receive window, never a growing buffer of ours) while the machine waits for I/O
or while the byte or stanza token bucket is in debt; a source address over
``max_connections_per_ip`` gets ``<policy-violation/>`` at once; an idle bound session is
pinged (XEP-0199 §4.2) and closed with ``<connection-timeout/>`` when it stays silent; SASL
attempts are refused with ``<temporary-auth-failure/>`` after too many failures from the same
address or against the same account (XEP-0205, counted in Redis by `AuthThrottleStore`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, cast
from xml.sax.saxutils import quoteattr

from shared.runtime import logs
from shared.runtime.metrics import Tally
from shared.runtime.writes import BatchedWrites
from shared.tls.session import TLSClosed, TLSSession
from shared.xmpp import ns
from shared.xmpp.c2s import (
    AuthFailed,
    AuthSucceeded,
    BindRequested,
    C2SStream,
    CredentialsNeeded,
    Event,
    RegisterRequested,
    StanzaIn,
    StartTLS,
    State,
    StreamEnded,
)
from shared.xmpp.errors import StanzaError, StanzaErrorCondition, StreamErrorCondition

from . import metrics
from .limits import TokenBucket, source_key

if TYPE_CHECKING:
    from .service import ConnectionManager

log = logging.getLogger(__name__)

READ_CHUNK: Final = 64 * 1024
CLOSE_GRACE_S: Final = 5.0  # a closing peer that does not read its last bytes is then reset


class C2SConnection(BatchedWrites, asyncio.Protocol):
    """The I/O shell of one client stream."""

    __slots__ = (  # one per connection: no instance dict
        "_abort_timer",
        "_auth_timer",
        "_bytes",
        "_closing",
        "_flush_scheduled",
        "_hibernating",
        "_keepalive",
        "_last_rx",
        "_ping_sent",
        "_reading_paused",
        "_stanzas",
        "_tasks",
        "_throttle",
        "_tls",
        "_wbuf",
        "available",
        "cm",
        "peer",
        "record",
        "session_id",
        "source",
        "stream",
        "transport",
    )

    def __init__(self, cm: ConnectionManager) -> None:
        self.cm = cm
        self.session_id = secrets.token_hex(6)
        self.stream = C2SStream(cm.stream_config)
        self.transport: asyncio.Transport | None = None  # TCP; TLS is `_tls`, over it
        self._tls: TLSSession | None = None
        self.peer = ""
        self.source = ""  # source_key of the peer address, once admitted
        self._bytes: TokenBucket | None = None
        self._stanzas: TokenBucket | None = None
        self._throttle: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._last_rx = 0.0
        self._ping_sent = 0.0  # when the unanswered keepalive ping went out; 0: none
        self._keepalive: asyncio.TimerHandle | None = None
        self._hibernating = False  # the stream's parser was freed while idle
        self._abort_timer: asyncio.TimerHandle | None = None
        self._wbuf: list[bytes] = []
        self._flush_scheduled = False
        self._closing = False
        self._tasks: set[asyncio.Task[None]] | None = None  # only while some run
        self._auth_timer: asyncio.TimerHandle | None = None
        self.record: Any = None  # SessionRecord once bound (set by the service)
        self.available = False  # sent available broadcast presence (RFC 6121 §4.2)

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = self.transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        metrics.CONNECTIONS.inc()
        metrics.CONNECTIONS_OPENED.inc()
        self.cm.connections.add(self)
        source = source_key(str(peer[0])) if peer else "?"
        if not self.cm.per_source.admit(source):
            metrics.CONNECTIONS_REFUSED.labels("per_ip").inc()
            log.info("refused a connection: too many from %s", source)
            self.close(StreamErrorCondition.POLICY_VIOLATION, "too many connections from you")
            return
        self.source = source
        s = self.cm.settings
        loop = asyncio.get_running_loop()
        now = self._last_rx = loop.time()
        if s.max_inbound_bytes_per_s:
            self._bytes = TokenBucket(s.max_inbound_bytes_per_s, s.inbound_burst_bytes, now)
        if s.max_stanzas_per_s:
            self._stanzas = TokenBucket(s.max_stanzas_per_s, s.stanza_burst, now)
        self._auth_timer = loop.call_later(s.auth_timeout_s, self._auth_timeout)

    def data_received(self, data: bytes) -> None:
        _BYTES_IN.n += len(data)
        now = self._last_rx = asyncio.get_running_loop().time()
        if self._bytes is not None:
            wait = self._bytes.take(len(data), now)
            if wait > 0:
                self._throttle_for(wait, "bytes")
        if self._tls is not None:
            data = self._decrypt(data)
            if not data:
                return
        if self._hibernating:
            self._woken()
        self.stream.receive_data(data)
        self._pump()

    def _woken(self) -> None:
        """The first bytes after hibernation: look again once the session is idle anew."""
        self._hibernating = False
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        self._start_keepalive()

    def _decrypt(self, data: bytes) -> bytes:
        """Socket bytes through TLS; b"" when they complete no plaintext (or TLS failed)."""
        tls = self._tls
        assert tls is not None and self.transport is not None
        if self._closing:
            return b""
        handshaking = not tls.established
        try:
            plain = tls.receive(data)
        except TLSClosed:
            self._finish()
            return b""
        except ssl.SSLError as exc:
            log.info("TLS failed: %s", exc.reason or exc)
            if handshaking:
                metrics.TLS_FAILURES.inc()
            self._closing = True
            self.transport.write(tls.data_to_send())  # the alert, if any
            self.transport.close()
            return b""
        out = tls.data_to_send()
        if out:
            self.transport.write(out)
        if handshaking and tls.established:
            metrics.TLS_HANDSHAKES.labels("lean" if tls.lean_ready else "openssl").inc()
            self.stream.tls_established()  # a new stream; what came with the Finished follows
        return plain

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        metrics.CONNECTIONS.dec()
        self._closing = True
        for timer in (self._auth_timer, self._throttle, self._keepalive, self._abort_timer):
            if timer is not None:
                timer.cancel()
        if self.source:
            self.cm.per_source.release(self.source)
            self.source = ""
        self.cm.connections.discard(self)
        self.cm.connection_closed(self)
        self.stream.release()  # libxml2's parser now, not at the next garbage collection

    # ---- writing ---------------------------------------------------------------------------

    def _write_out(self, transport: asyncio.Transport, data: bytes) -> None:
        _BYTES_OUT.n += len(data)
        tls = self._tls
        if tls is not None:
            if not tls.established:
                return  # nothing can go out before the handshake ends (a timeout closing us)
            tls.send(data)
            data = tls.data_to_send()
        transport.write(data)
        if self._unsent() > self.cm.settings.max_write_buffer_bytes:
            # A client that does not read: drop it rather than buffer without bound.
            metrics.SLOW_CONSUMERS.inc()
            self.close(StreamErrorCondition.POLICY_VIOLATION, "not reading")

    def _unsent(self) -> int:
        """Bytes written but not yet taken by the kernel (TLS records included: they are
        handed to the TCP transport as soon as they are made)."""
        assert self.transport is not None
        return self.transport.get_write_buffer_size()

    def deliver(self, payload: bytes) -> bool:
        """Queue a stanza for this session from the bus, already in canonical bytes, without
        scheduling a write: the caller calls ``flush`` once after its batch of deliveries.
        True when nothing was queued before (the caller then has this connection to flush)."""
        if not payload or self._closing:
            return False
        first = not self._wbuf
        self._wbuf.append(payload)
        return first

    def flush(self) -> None:
        """Write what is queued now, in one write (the end of a batch of deliveries)."""
        if self._wbuf:
            self._flush()

    def close(
        self,
        condition: StreamErrorCondition | None = None,
        text: str | None = None,
        content: str = "",
    ) -> None:
        """Close the stream from our side (kick, shutdown, resource limits)."""
        if self._closing:
            return
        self.stream.close(condition, text, content)
        self.write(self.stream.data_to_send())
        self._finish()

    def _finish(self) -> None:
        if self._closing:
            return
        self._flush()
        self._closing = True
        if self.transport is not None:
            tls = self._tls
            if tls is not None and tls.established and not self.transport.is_closing():
                tls.close()
                self.transport.write(tls.data_to_send())  # our close_notify
            self.transport.close()
            # close() waits for the write buffer to drain: bound that wait.
            self._abort_timer = asyncio.get_running_loop().call_later(
                CLOSE_GRACE_S, self.transport.abort
            )

    # ---- the stream's events ---------------------------------------------------------------

    def _pump(self) -> None:
        token = logs.connection_id.set(self.session_id)
        try:
            while not self._closing and self._throttle is None:
                event = self.stream.next_event()
                if event is None:
                    break
                self._on_event(event)
            self.write(self.stream.data_to_send())
            if self.transport is not None and not self._closing:
                if self.stream.closed:
                    self._finish()
                else:
                    self._update_reading()
        finally:
            logs.connection_id.reset(token)

    # ---- backpressure ----------------------------------------------------------------------

    def _update_reading(self) -> None:
        """Read the socket only when the machine is not waiting and no bucket is in debt."""
        transport = self.transport
        if transport is None or self._closing:
            return
        handshaking = self._tls is not None and not self._tls.established
        paused = (
            self.stream.state is State.WAITING and not handshaking
        ) or self._throttle is not None
        if paused and not self._reading_paused:
            transport.pause_reading()
        elif not paused and self._reading_paused:
            transport.resume_reading()
        self._reading_paused = paused

    def _throttle_for(self, wait: float, limit: str) -> None:
        if self._throttle is not None or self._closing:
            return
        metrics.RATE_LIMITED.labels(limit).inc()
        self._throttle = asyncio.get_running_loop().call_later(wait, self._unthrottle)
        self._update_reading()

    def _unthrottle(self) -> None:
        self._throttle = None
        if not self._closing:
            self._pump()  # events the stream still holds first, then the socket again

    # ---- keepalive and dead peers (XEP-0199 §4.2) ------------------------------------------

    def _start_keepalive(self) -> None:
        if self._keepalive is None and not self._closing:
            self._schedule_check(0.0)

    def _schedule_check(self, idle: float) -> None:
        """The next look at an idle session: when it is due a ping or its parser can go."""
        s = self.cm.settings
        due = [s.keepalive_interval_s - idle] if s.keepalive_interval_s else []
        if s.hibernate_after_s and idle < s.hibernate_after_s:
            due.append(s.hibernate_after_s - idle)
        if due:
            self._keepalive = asyncio.get_running_loop().call_later(min(due), self._check_idle)

    def _check_idle(self) -> None:
        self._keepalive = None
        if self._closing or self.stream.jid is None:
            return
        s = self.cm.settings
        loop = asyncio.get_running_loop()
        now = loop.time()
        idle = now - self._last_rx
        if s.hibernate_after_s and idle >= s.hibernate_after_s and self.stream.hibernate():
            metrics.PARSERS_HIBERNATED.inc()  # ~10 KiB less until the next byte (README)
            self._hibernating = True
            if self._tls is not None and self._tls.hibernate():
                metrics.TLS_LEAN_HANDOVERS.inc()  # OpenSSL's 16 KiB freed (README)
        if self._ping_sent:
            if self._last_rx >= self._ping_sent:
                self._ping_sent = 0.0  # it answered (anything counts)
            elif now - self._ping_sent >= s.keepalive_timeout_s:
                metrics.DEAD_PEERS.inc()
                log.info("peer did not answer a ping for %.0f s", now - self._ping_sent)
                self.close(StreamErrorCondition.CONNECTION_TIMEOUT, "no answer to ping")
                if self.transport is not None:
                    self.transport.abort()  # a dead peer would hold the unsent bytes forever
                return
            else:
                self._keepalive = loop.call_later(
                    self._ping_sent + s.keepalive_timeout_s - now, self._check_idle
                )
                return
        if s.keepalive_interval_s and idle >= s.keepalive_interval_s:
            metrics.KEEPALIVE_PINGS.inc()
            self._ping_sent = now
            self.write(
                (
                    f'<iq type="get" id="ka-{secrets.token_hex(4)}" from="{self.cm.domain}" '
                    f"to={quoteattr(str(self.stream.jid))}><ping xmlns=\"{ns.PING}\"/></iq>"
                ).encode()
            )
            self._keepalive = loop.call_later(s.keepalive_timeout_s, self._check_idle)
        else:
            self._schedule_check(idle)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, StanzaIn):
            _STANZAS_IN[event.kind].n += 1
            self.cm.stanza_from_client(self, event)
            if self._stanzas is not None:
                wait = self._stanzas.take(1, asyncio.get_running_loop().time())
                if wait > 0:
                    self._throttle_for(wait, "stanzas")
        elif isinstance(event, CredentialsNeeded):
            self._spawn(self._load_credentials(event.username))
        elif isinstance(event, BindRequested):
            self._spawn(self._bind(event.resource))
        elif isinstance(event, StartTLS):
            self._start_tls()
        elif isinstance(event, AuthSucceeded):
            _logins(event.mechanism, "success").n += 1
        elif isinstance(event, AuthFailed):
            _logins(_mech_label(event.mechanism), "failure").n += 1
            log.info("authentication failed (%s): %s", event.mechanism, event.condition)
            if event.condition != "temporary-auth-failure":  # refused ones checked nothing
                account = f"{event.username}@{self.cm.domain}" if event.username else None
                self._spawn(self.cm.auth_throttle.failed(self.source, account))
        elif isinstance(event, RegisterRequested):
            self._spawn(self._register(event.username, event.password))
        elif isinstance(event, StreamEnded):
            if event.error is not None:
                metrics.STREAM_ERRORS.labels(event.error.value).inc()
            self.write(self.stream.data_to_send())
            self._finish()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
            if not self._tasks:
                self._tasks = None
        if not task.cancelled() and task.exception() is not None:
            log.error("connection task failed", exc_info=task.exception())
            self.close(StreamErrorCondition.INTERNAL_SERVER_ERROR)

    def _resume(self, answer: Callable[[], None]) -> None:
        """Give the stream the caller's answer, then carry on reading."""
        if self._closing:
            return
        answer()
        self._pump()

    def _start_tls(self) -> None:
        """RFC 6120 §5.4.3.3: <proceed/> goes out in the clear, then the handshake begins on
        the same socket; the stream resumes (a new one) in `_decrypt` when it completes."""
        self.write(self.stream.data_to_send())
        self._flush()
        if self._closing:
            return
        self._tls = TLSSession(self.cm.tls_context, keylog=self.cm.tls_keylog)

    async def _load_credentials(self, username: str) -> None:
        """The failure counters and the account's keys, in one round trip (XEP-0205 §3:
        an attempt over a limit is refused before any password is checked)."""
        try:
            scope, creds = await self.cm.lookup_login(self.source, username)
        except Exception as exc:
            log.warning("credentials lookup failed: %s", exc)
            self._resume(self.stream.credentials_unavailable)
            return
        if scope is not None:
            metrics.AUTH_THROTTLED.labels(scope).inc()
            log.info("refused an authentication attempt: too many failures (%s)", scope)
            text = "too many failed attempts; try again later"
            self._resume(lambda: self.stream.credentials_refused(text))
            return
        self._resume(lambda: self.stream.credentials_loaded(creds))

    async def _bind(self, resource: str | None) -> None:
        outcome = await self.cm.bind(self, resource)
        if isinstance(outcome, Exception):
            if (
                isinstance(outcome, StanzaError)
                and outcome.condition is StanzaErrorCondition.RESOURCE_CONSTRAINT
            ):
                metrics.SESSION_LIMIT_HITS.inc()
            self._resume(lambda: self.stream.bind_failed(outcome))  # type: ignore[arg-type]
        else:
            self._resume(lambda: self.stream.bind_succeeded(outcome))
            if self._auth_timer is not None:
                self._auth_timer.cancel()
                self._auth_timer = None
            self._start_keepalive()

    async def _register(self, username: str, password: str) -> None:
        error = await self.cm.register(username, password)
        self._resume(lambda: self.stream.register_done(error))

    def _auth_timeout(self) -> None:
        if not self.stream.bound:
            metrics.AUTH_TIMEOUTS.inc()
            self.close(StreamErrorCondition.CONNECTION_TIMEOUT, "authenticate and bind sooner")


def _mech_label(mechanism: str) -> str:
    return mechanism if mechanism in ("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256") else "other"


# counted in tallies (shared/runtime/metrics.py), added to the counters when /metrics is scraped
_STANZAS_IN: Final = {k: Tally(metrics.STANZAS_IN.labels(k)) for k in ("message", "presence", "iq")}
_BYTES_IN: Final = Tally(metrics.BYTES_IN)
_BYTES_OUT: Final = Tally(metrics.BYTES_OUT)
_LOGINS: Final[dict[tuple[str, str], Tally]] = {}


def _logins(mechanism: str, outcome: str) -> Tally:
    """The tally of stanzad_cm_logins_total{mechanism, outcome} (a bounded label set)."""
    tally = _LOGINS.get((mechanism, outcome))
    if tally is None:
        tally = _LOGINS[mechanism, outcome] = Tally(metrics.LOGINS.labels(mechanism, outcome))
    return tally
