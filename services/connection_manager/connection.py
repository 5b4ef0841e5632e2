"""One client connection: bytes between the socket and the sans-I/O stream, nothing more.

`data_received -> C2SStream.receive_data -> events -> I/O for the events -> write`.  Writes are
coalesced per event-loop tick into one `transport.write`.

Edge limits (README "Security and limits", docs/operations.md): reading stops
(`pause_reading`, backpressure into the kernel's receive window, never a growing buffer of
ours) while the machine waits for I/O or while the byte or stanza token bucket is in debt; a
source address with more than ``max_connections_per_ip`` unauthenticated connections loses
its oldest one (``<policy-violation/>``), authenticated ones are not counted per address; an
idle bound session is pinged (XEP-0199 §4.2) and closed with ``<connection-timeout/>`` when it
stays silent.  Logins (XEP-0205, `shared.store.auth_throttle`): at most
``auth_max_concurrent_per_ip`` SASL exchanges per address at a time (the others wait), a
failure's answer is delayed the more the address failed in the last minute, and attempts
under a lock of their account or (account, address) pair, or from a blocked address, get
``<temporary-auth-failure/>``.

The client's address is the socket's peer, or, on a connection from a trusted load balancer
(``proxy_protocol_networks``), the one its PROXY protocol header names
(`shared.cluster.proxy_protocol`); a PROXY header from anyone else is refused.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast
from xml.sax.saxutils import quoteattr

from shared.cluster import proxy_protocol
from shared.cluster.source_limits import TokenBucket, source_key
from shared.runtime import logs
from shared.runtime.metrics import Tally
from shared.runtime.writes import BatchedWrites
from shared.tls.session import TLSClosed, TLSSession
from shared.xmpp import csi, fast, ns, sasl
from shared.xmpp.c2s import (
    Acked,
    AckRequested,
    AuthFailed,
    AuthSucceeded,
    BindRequested,
    C2SStream,
    ClientState,
    CredentialsNeeded,
    Event,
    RegisterRequested,
    ResumeRequested,
    SMEnabled,
    StanzaIn,
    StartTLS,
    State,
    StreamConfig,
    StreamEnded,
    TokensNeeded,
    VerificationNeeded,
)
from shared.xmpp.errors import StanzaError, StanzaErrorCondition, StreamErrorCondition
from shared.xmpp.jid import JID

from . import metrics
from .auth_backends import BackendUnavailable

if TYPE_CHECKING:
    from shared.store.auth_throttle import LoginCheck

    from .service import ConnectionManager

log = logging.getLogger(__name__)

READ_CHUNK: Final = 64 * 1024
CLOSE_GRACE_S: Final = 5.0  # a closing peer that does not read its last bytes is then reset
SASL_SLOT_MAX_S: Final = 10.0  # a SASL exchange holds its address's slot at most this long
_WAITING: Final = "waiting"  # `_sasl_slot` while waiting for a slot of the address
_NOT_COUNTED: Final = frozenset({"temporary-auth-failure", "aborted"})  # checked no password


class C2SConnection(BatchedWrites, asyncio.Protocol):
    """The I/O shell of one client stream."""

    __slots__ = (  # one per connection: no instance dict
        "_abort_timer",
        "_ack_asked",
        "_ack_timer",
        "_auth_timer",
        "_bytes",
        "_closing",
        "_flush_scheduled",
        "_held",
        "_hibernating",
        "_keepalive",
        "_last_rx",
        "_log_held",
        "_login",
        "_ping_sent",
        "_preamble",
        "_reading_paused",
        "_sasl_slot",
        "_stanzas",
        "_tasks",
        "_throttle",
        "_tls",
        "_unauthenticated",
        "_wbuf",
        "available",
        "cm",
        "detached",
        "directed",
        "kind",
        "logged",
        "peer",
        "pushes",
        "record",
        "replaced",
        "resumed_from",
        "seen",
        "session_id",
        "source",
        "stamps",
        "stream",
        "transport",
    )

    PROXY_HEADER: ClassVar[bool] = True  # a trusted load balancer may start with a PROXY header

    def __init__(self, cm: ConnectionManager, kind: str = "tcp",
                 config: StreamConfig | None = None) -> None:
        self.cm = cm
        self.kind = kind  # the way in: tcp (STARTTLS), tls (XEP-0368), websocket, bosh
        self.session_id = secrets.token_hex(6)
        # the shared c2s port's streams may be placed elsewhere (cm.placed_stream_config)
        self.stream = C2SStream(config or cm.stream_config)
        self.transport: asyncio.Transport | None = None  # TCP; TLS is `_tls`, over it
        self._tls: TLSSession | None = None
        self.peer = ""  # the client's "ip:port" (behind a trusted proxy: from its header)
        self.source = ""  # source_key of the client's address, once admitted
        self._preamble: bytes | None = None  # first bytes, until PROXY header or not is known
        self._unauthenticated = False  # counted in cm.unauthenticated
        self._sasl_slot: asyncio.TimerHandle | str | None = None  # held, _WAITING or None
        self._login: LoginCheck | None = None  # the lookup of the SASL exchange under way
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
        # sent directed presence (a room joined, §4.6): its end is told even if never available
        self.directed = False
        # XEP-0198: an <r/> unanswered; the timer of the next one asked by time
        self._ack_asked = False
        self._ack_timer: asyncio.TimerHandle | None = None
        self.detached: asyncio.TimerHandle | None = None  # resumption deadline, when detached
        self.replaced = False  # its session was resumed on another connection
        self.pushes = 0  # XEP-0357: messages notified while detached
        # XEP-0352: while the client is inactive, what may wait (shared/xmpp/csi.py), in
        # order, by key (a newer presence of a sender replaces the older); None: active
        self._held: dict[object, bytes] | None = None
        # durable delivery: the last ts_us delivered per sending session (a replay's copies
        # are not newer), ConnectionManager.deliveries
        self.seen: dict[str, int] | None = None
        # resumed here from the log of this dead connection manager: what is drained from
        # its subject for this session takes the usual path (ConnectionManager._drained)
        self.resumed_from = ""
        # durable delivery, resumable sessions: the count of the last stanza appended to the
        # session's log (None: not logged); the (origin, ts_us) of queued messages by count;
        # writes waiting for their log entries to be stored, in order ([data, ready])
        self.logged: int | None = None
        self.stamps: dict[int, tuple[str, int]] | None = None
        self._log_held: deque[list[Any]] | None = None

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = self.transport.get_extra_info("peername")
        if not self.peer:  # a WebSocket stream knows it from the HTTP request already
            self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        metrics.CONNECTIONS.inc()
        metrics.CONNECTIONS_OPENED.inc()
        metrics.TRANSPORT_CONNECTIONS.labels(self.kind).inc()
        metrics.TRANSPORT_OPENED.labels(self.kind).inc()
        self.cm.connections.add(self)
        if self.kind == "tls":  # XEP-0368: TLS from the first byte, no <starttls/> offered
            self._tls = TLSSession(self.cm.tls_context, keylog=self.cm.tls_keylog)
            self.stream.tls = True
        s = self.cm.settings
        loop = asyncio.get_running_loop()
        now = self._last_rx = loop.time()
        if s.max_inbound_bytes_per_s:
            self._bytes = TokenBucket(s.max_inbound_bytes_per_s, s.inbound_burst_bytes, now)
        if s.max_stanzas_per_s:
            self._stanzas = TokenBucket(s.max_stanzas_per_s, s.stanza_burst, now)
        # also bounds a proxy that never sends its header
        self._auth_timer = loop.call_later(s.auth_timeout_s, self._auth_timeout)
        if s.max_connections and len(self.cm.connections) > s.max_connections:
            metrics.CONNECTIONS_REFUSED.labels("total").inc()
            log.warning("refused a connection from %s: %d open", self.peer, s.max_connections)
            self.close(StreamErrorCondition.RESOURCE_CONSTRAINT, "server full")
            return
        if not self.PROXY_HEADER:  # the HTTP port: X-Forwarded-For named the client
            self._admit()
            return
        self._preamble = b""  # a PROXY header or not: `_preface` looks at the first bytes
        if not peer or str(peer[0]) not in self.cm.proxies:
            self._admit()

    def _admit(self) -> None:
        """Count the connection as unauthenticated for its client's address; past the limit
        of the address, its oldest unauthenticated connection goes (RFC 6120 §13.12)."""
        address = self.peer.rpartition(":")[0] or self.peer
        self.source = source = source_key(address)
        self._unauthenticated = True
        evicted = self.cm.unauthenticated.admit(source, self)
        if evicted is not None:
            evicted._unauthenticated = False
            metrics.CONNECTIONS_REFUSED.labels("per_ip").inc()
            log.info("closed the oldest unauthenticated connection from %s: over %d", source,
                     self.cm.unauthenticated.limit_for(source))
            evicted.close(StreamErrorCondition.POLICY_VIOLATION,
                          "too many unauthenticated connections from your address")

    def _preface(self, data: bytes) -> bytes:
        """The first bytes of the connection: a PROXY protocol header from a trusted load
        balancer names the client; from anyone else it is refused.  Returns what follows
        (b"" until that is known)."""
        buf = self._preamble + data if self._preamble else data
        from_proxy = not self.source  # admitted at once unless it came through a proxy
        result = proxy_protocol.read_preface(buf, from_proxy)
        if result is None:
            self._preamble = buf
            return b""
        self._preamble = None
        if isinstance(result, proxy_protocol.Refused):
            label = "proxy_untrusted" if result.untrusted else "proxy_invalid"
            metrics.CONNECTIONS_REFUSED.labels(label).inc()
            log.info("refused a connection from %s: %s", self.peer, result.why)
            self.close(StreamErrorCondition.POLICY_VIOLATION,
                       "no PROXY header from you" if result.untrusted
                       else "a PROXY header is required")
            return b""
        if not from_proxy:
            return result.rest
        header = result.header
        if header is not None and header.source is not None:
            proxy = self.peer
            self.peer = f"{header.source[0]}:{header.source[1]}"
            log.debug("client %s via proxy %s (PROXY v%d)", self.peer, proxy, header.version)
        self._admit()
        return b"" if self._closing else result.rest

    def _counted_out(self) -> None:
        """No longer an unauthenticated connection of its address (authenticated, or gone)."""
        if self._unauthenticated:
            self._unauthenticated = False
            self.cm.unauthenticated.release(self.source, self)

    def data_received(self, data: bytes) -> None:
        _BYTES_IN.n += len(data)
        now = self._last_rx = asyncio.get_running_loop().time()
        if self._bytes is not None:
            wait = self._bytes.take(len(data), now)
            if wait > 0:
                self._throttle_for(wait, "bytes")
        if self._preamble is not None:
            data = self._preface(data)
            if not data:
                return
        if self._tls is not None:
            data = self._decrypt(data)
            if not data:
                return
        if self._hibernating:
            self._woken()
        self.stream.receive_data(data)
        if self._throttle is not None and self.stream.input_failed:
            # refused input goes at once, not when a rate limit lets the stream go on: what
            # came before it in this read is handled now (the connection ends with it)
            self._throttle.cancel()
            self._throttle = None
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
            # SCRAM-*-PLUS and FAST's channel bindings (RFC 5929, RFC 9266)
            binding = tls.channel_binding(self.cm.tls_end_point)
            if self.kind != "tls":  # direct TLS: the stream starts now, nothing to restart
                self.stream.tls_established(binding)  # a new stream; what came with Finished
            else:
                self.stream.set_channel_binding(binding)
        return plain

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        metrics.CONNECTIONS.dec()
        metrics.TRANSPORT_CONNECTIONS.labels(self.kind).dec()
        self._closing = True
        for timer in (self._auth_timer, self._throttle, self._keepalive, self._abort_timer,
                      self._ack_timer):
            if timer is not None:
                timer.cancel()
        self._counted_out()
        self._release_sasl_slot()
        self.release_held()
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
        True when nothing was queued before (the caller then has this connection to flush).

        With XEP-0198 the stanza is counted and kept until acknowledged, also while the
        session is detached (it is written on <resume/>)."""
        if not payload:
            return False
        held = self._held
        if held is not None and not self._closing:
            key = csi.hold_key(payload)
            if key is not None:
                return self._hold(held, key, payload)
            first = not self._wbuf
            if held:
                self._write_held("urgent")  # nothing overtakes what was held (in order)
            return self._queue(payload) or first
        return self._queue(payload)

    def _queue(self, payload: bytes) -> bool:
        queue = self.stream.sm
        if queue is not None and queue.push(payload) > self.cm.settings.sm_max_unacked:
            self._sm_overflow()
        if self._closing:
            if self.logged is not None:  # detached: its log gets it all the same
                self.cm.log_soon(self)
            return False
        first = not self._wbuf
        self._wbuf.append(payload)
        return first

    # ---- XEP-0352 client state indication -----------------------------------------------

    @property
    def inactive(self) -> bool:
        """The client said it is inactive (XEP-0352): stanzas that may wait are held."""
        return self._held is not None

    def client_state(self, active: bool) -> None:
        """<active/>: write what was held, in order; <inactive/>: hold from now on."""
        if active:
            if self._held is not None:
                self._write_held("active")
                self._held = None
                metrics.CSI_INACTIVE.dec()
                if self._wbuf:
                    self.schedule_flush()
        elif self._held is None:
            self._held = {}
            metrics.CSI_INACTIVE.inc()

    def _hold(self, held: dict[object, bytes], key: object, payload: bytes) -> bool:
        """Keep a stanza that may wait; a full queue is written first (never dropped)."""
        if key in held:
            del held[key]  # the newer presence of that sender goes to the end, in its place
            metrics.CSI_REPLACED.inc()
            metrics.CSI_HELD.dec()
        elif len(held) >= self.cm.settings.csi_max_held:
            first = not self._wbuf
            self._write_held("full")
            held[key] = payload
            metrics.CSI_HELD.inc()
            return first
        held[key] = payload
        metrics.CSI_HELD.inc()
        return False

    def _write_held(self, reason: str) -> None:
        """Everything held goes to the write buffer (and, with XEP-0198, is counted now)."""
        held = self._held
        if not held:
            return
        stanzas = list(held.values())
        held.clear()
        metrics.CSI_HELD.dec(len(stanzas))
        metrics.CSI_FLUSHES.labels(reason).inc()
        metrics.CSI_FLUSH_SIZE.observe(len(stanzas))
        for payload in stanzas:
            self._queue(payload)

    def release_held(self) -> None:
        """The connection is gone (or its session is being resumed elsewhere): with XEP-0198
        what was held joins the unacknowledged queue (written on <resume/>, or handed back
        to the router when the session ends); without it, it is dropped like anything else
        not yet written.  The session is active again for whoever takes it over."""
        held = self._held
        if held is None:
            return
        self._held = None
        metrics.CSI_INACTIVE.dec()
        if held:
            metrics.CSI_HELD.dec(len(held))
            metrics.CSI_FLUSHES.labels("closed").inc()
            if self.stream.sm is not None:
                for payload in held.values():
                    self._queue(payload)  # closing: counted and queued, not written

    def write_stanza(self, stanza: bytes) -> None:
        """Write a stanza of the server's own (a result, a ping), counted for XEP-0198."""
        self.deliver(stanza)
        if self._wbuf:
            self.schedule_flush()

    def _sm_overflow(self) -> None:
        """More unacknowledged stanzas than ``sm_max_unacked``: the session ends (its queue
        goes back to the router, `ConnectionManager.end_session`)."""
        metrics.SM_OVERFLOWS.inc()
        log.info("closing a session with more than %d unacknowledged stanzas",
                 self.cm.settings.sm_max_unacked)
        if self.detached is not None:
            self.cm.expire(self)
        else:
            self.close(StreamErrorCondition.POLICY_VIOLATION, "too many unacknowledged stanzas")

    def _before_flush(self) -> None:
        """XEP-0198 §4: ask for an ack once ``sm_ack_every`` stanzas await one, or when some
        have waited ``sm_ack_after_s``; one <r/> outstanding at a time."""
        queue = self.stream.sm
        if queue is None or self._ack_asked or self._closing:
            return
        waiting = queue.sent - queue.acked
        if waiting >= self.cm.settings.sm_ack_every:
            self._ask_ack()
        elif waiting and self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(
                self.cm.settings.sm_ack_after_s, self._ack_due
            )

    def _ask_ack(self) -> None:
        self._ack_asked = True
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self.stream.request_ack()
        self._wbuf.append(self.stream.data_to_send())

    def _ack_due(self) -> None:
        self._ack_timer = None
        queue = self.stream.sm
        if self._closing or self._ack_asked or queue is None or not queue.unacked:
            return
        self._ask_ack()
        self.schedule_flush()

    def _acked(self) -> None:
        """An <a/> came: another <r/> may be asked for what is still unacknowledged."""
        self._ack_asked = False
        if self.logged is not None:
            self.cm.log_ack(self)
        queue = self.stream.sm
        if queue is not None and queue.unacked:
            self.schedule_flush()  # `_before_flush` decides
        elif self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    def flush(self) -> None:
        """Write what is queued now, in one write (the end of a batch of deliveries)."""
        if self._wbuf:
            self._flush()

    def _flush(self) -> None:
        """A logged session (durable delivery) writes nothing before the log entries of what
        it queued are stored: the stanzas a client's 'h' counts are then always in the log
        another connection manager resumes from.  Writes wait in order behind the log."""
        if self.logged is None:
            super()._flush()
            return
        self._flush_scheduled = False
        self._before_flush()
        appended = self.cm.log_queue(self)
        held = self._log_held
        if not appended and not held:
            super()._flush()
            return
        if not self._wbuf:
            return
        data = b"".join(self._wbuf)
        self._wbuf.clear()
        if held is None:
            held = self._log_held = deque()
        segment = [data, not appended]
        held.append(segment)
        if appended:
            def stored() -> None:
                segment[1] = True
                self._write_held_out()
            self.cm.bus.after_stored(stored)

    def _write_held_out(self, everything: bool = False) -> None:
        held = self._log_held
        transport = self.transport
        out = []
        while held and (everything or held[0][1]):
            out.append(held.popleft()[0])
        if not held:
            self._log_held = None
        if out and transport is not None and not transport.is_closing():
            self._write_out(transport, b"".join(out))

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

    def abandon(self) -> None:
        """Cut the connection without a word: its session was resumed on another one
        (XEP-0198 §5), which writes from now on."""
        self._closing = True
        self._wbuf.clear()
        self._log_held = None
        if self.transport is not None:
            self.transport.abort()

    def hang_up(self) -> None:
        """Close the TCP connection without </stream:stream> (nor TLS close_notify): the
        session stays resumable (XEP-0198 §5).  A connection manager stopping does this to
        its resumable sessions, whose clients then resume on another one."""
        if self._closing:
            return
        self._flush()  # still kept in the queue until acknowledged: resent if lost here
        self._write_held_out(everything=True)
        self._closing = True
        if self.transport is not None:
            self.transport.close()
            self._abort_timer = asyncio.get_running_loop().call_later(
                CLOSE_GRACE_S, self.transport.abort
            )

    def _finish(self) -> None:
        if self._closing:
            return
        self._flush()
        self._write_held_out(everything=True)
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
                queue = self.stream.sm
                if queue is not None and queue.resumable and self.transport is not None:
                    self.transport.abort()  # XEP-0198 §5: a broken connection, detached
                    return
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
            self.write_stanza(
                (
                    f'<iq type="get" id="ka-{secrets.token_hex(4)}" '
                    f'from="{self.stream.config.domain}" '
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
            self._begin_exchange(event.username)
        elif isinstance(event, TokensNeeded | VerificationNeeded):
            self._begin_exchange(event.username, event)
        elif isinstance(event, BindRequested):
            self._spawn(self._bind(event.resource))
        elif isinstance(event, StartTLS):
            self._start_tls()
        elif isinstance(event, AuthSucceeded):
            _logins(event.mechanism, "success").n += 1
            self._counted_out()  # sessions are bounded per account, not per address
            self._release_sasl_slot()
            check, self._login = self._login, None
            if check is not None and check.pair_failures:
                account = f"{event.username}@{self.stream.config.domain}"
                self._spawn(self.cm.auth_throttle.succeeded(self.source, account))
            if event.sasl2 is not None:  # XEP-0388: bind, carbons, token, then <success/>
                self._spawn(self._sasl2_complete(event))
        elif isinstance(event, AuthFailed):
            self._auth_failed(event)
        elif isinstance(event, Acked):
            self._acked()
        elif isinstance(event, AckRequested):  # answered once what it counts is stored
            h = event.h
            self.cm.when_stored(lambda: self._answer_ack(h))
        elif isinstance(event, SMEnabled):
            self.cm.sm_enabled(self, event)
        elif isinstance(event, ClientState):
            self.client_state(event.active)
        elif isinstance(event, ResumeRequested):
            self._resume_session(event)
        elif isinstance(event, RegisterRequested):
            self._spawn(self._register(event.username, event.password))
        elif isinstance(event, StreamEnded):
            if event.error is not None:
                metrics.STREAM_ERRORS.labels(event.error.value).inc()
            self.write(self.stream.data_to_send())
            self._finish()

    def _answer_ack(self, h: int) -> None:
        if self.transport is None or self._closing:
            return
        self.stream.answer_ack(h)
        self.write(self.stream.data_to_send())

    # ---- login throttling (XEP-0205; shared/store/auth_throttle.py) ---------------------------

    def _begin_exchange(self, username: str | None,
                        event: TokensNeeded | VerificationNeeded | None = None) -> None:
        """A SASL exchange needs the account's keys (or, for FAST, its client's tokens; or,
        for a domain with a backend, the backend's answer, `VerificationNeeded`):
        first a slot of the address (at most ``auth_max_concurrent_per_ip`` at a time; the
        others wait in line)."""

        def start() -> None:
            if self._closing:
                self.cm.sasl_slots.release(self.source)
                self._sasl_slot = None
                return
            loop = asyncio.get_running_loop()
            self._sasl_slot = loop.call_later(SASL_SLOT_MAX_S, self._release_sasl_slot)
            if isinstance(event, VerificationNeeded):
                self._spawn(self._verify(event))
            else:
                assert username is not None
                self._spawn(self._load_credentials(username, event))

        if self.cm.sasl_slots.acquire(self.source, self, start):
            start()
        else:
            self._sasl_slot = _WAITING

    def _release_sasl_slot(self) -> None:
        slot, self._sasl_slot = self._sasl_slot, None
        if slot is _WAITING:
            self.cm.sasl_slots.cancel(self.source, self)
        elif slot is not None:
            cast(asyncio.TimerHandle, slot).cancel()  # uvloop's handles are not subclasses
            self.cm.sasl_slots.release(self.source)

    def _auth_failed(self, event: AuthFailed) -> None:
        """Count the failure and delay its answer, the more the address failed lately (the
        slot of the address is held until the answer is out)."""
        _logins(_mech_label(event.mechanism), "failure").n += 1
        log.info("authentication failed from %s (%s): %s", self.peer, event.mechanism,
                 event.condition)
        check, self._login = self._login, None
        if event.condition in _NOT_COUNTED:
            self._release_sasl_slot()
            return
        account = f"{event.username}@{self.stream.config.domain}" if event.username else None
        self._spawn(self._count_failure(account))
        delay = self.cm.failure_answer_delay((check.source_failures if check else 0) + 1)
        if delay <= 0 or self._closing:
            self._release_sasl_slot()
            return
        metrics.AUTH_ANSWERS_DELAYED.inc()
        held = self.stream.data_to_send()  # the <failure/>
        if self._throttle is not None:
            self._throttle.cancel()
        self._throttle = asyncio.get_running_loop().call_later(delay, self._answer, held)
        self._update_reading()

    def _answer(self, held: bytes) -> None:
        """A delayed failure answer goes out; the stream carries on."""
        self._throttle = None
        self._release_sasl_slot()
        if not self._closing:
            self.write(held)
            self._pump()

    async def _count_failure(self, account: str | None) -> None:
        blocked = await self.cm.auth_throttle.failed(
            self.source, account, block_per_min=self.cm.block_rate(self.source)
        )
        if blocked:
            metrics.AUTH_BLOCKED.inc()
            log.warning("blocked logins from %s for %d s: %d or more failures in a minute "
                        "(last from %s)", self.source, self.cm.settings.auth_block_s,
                        self.cm.block_rate(self.source), self.peer)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` for this connection (its failure closes the stream)."""
        self._spawn(coro)

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

    async def _check_login(self, username: str, tokens: TokensNeeded | None = None
                           ) -> tuple[LoginCheck, list[Any]] | None:
        """The throttling locks of an attempt and the account (XEP-0205 §3), and for a FAST
        login (`tokens`) the client's tokens (XEP-0484); None when the attempt was answered
        already (store down, or refused)."""
        try:
            check = await self.cm.lookup_login(self.source, username, self.stream.config.domain)
            found = (await self.cm.fast_tokens_for(username, tokens.client_id)
                     if tokens is not None and check.refused is None else [])
        except Exception as exc:
            log.warning("credentials lookup failed: %s", exc)
            self._release_sasl_slot()
            self._resume(self.stream.credentials_unavailable if tokens is None
                         else self.stream.tokens_unavailable)
            return None
        if check.refused is not None:
            self._release_sasl_slot()
            metrics.AUTH_THROTTLED.labels(check.refused).inc()
            wait = math.ceil(check.retry_after_s)
            log.info("refused a login from %s: %s locked for %d s more", self.peer,
                     "address" if check.refused == "ip" else check.refused, wait)
            text = f"too many failed attempts; try again in {wait} s"
            self._resume(lambda: self.stream.credentials_refused(text) if tokens is None
                         else self.stream.tokens_refused(text))
            return None
        return check, found

    async def _verify(self, event: VerificationNeeded) -> None:
        """The domain's backend checks the secret (services/connection_manager/
        auth_backends.py).  With a name given (PLAIN) the locks are looked at first, so a
        locked attempt never reaches the backend; a token names its user only once checked.
        A user without an account here gets one when the domain allows it."""
        domain = self.stream.config.domain
        check = None
        if event.username is not None:
            checked = await self._check_login(event.username)
            if checked is None:
                return
            check = checked[0]
        try:
            backend = self.cm.backend_of(domain)
            if backend is None:  # the domain changed its backend meanwhile
                raise BackendUnavailable("no backend")
            username = await backend.verify(event.username, event.secret, domain)
        except BackendUnavailable as exc:
            log.warning("authentication backend of %s unavailable: %s", domain, exc)
            self._release_sasl_slot()
            self._resume(self.stream.credentials_unavailable)
            return
        if username is None:
            self._login = check
            self._resume(self.stream.verification_rejected)
            return
        if check is None:
            checked = await self._check_login(username)
            if checked is None:
                return
            check = checked[0]
        self._login = check
        if check.credentials is None:  # no account here yet
            if not self.cm.creates_accounts(domain):
                log.info("a user the backend of %s authenticated has no account here", domain)
                self._resume(self.stream.verification_rejected)
                return
            try:
                await self.cm.create_external_account(username, domain)
            except Exception as exc:
                log.warning("account creation failed: %s", exc)
                self._release_sasl_slot()
                self._resume(self.stream.credentials_unavailable)
                return
        self._resume(lambda: self.stream.verified(username))

    async def _load_credentials(self, username: str, tokens: TokensNeeded | None = None
                                ) -> None:
        """The locks, the address's failures and the account's keys, in one round trip
        (XEP-0205 §3: an attempt under a lock is refused before any password is checked);
        for a FAST login (`tokens`) then the client's tokens (XEP-0484)."""
        checked = await self._check_login(username, tokens)
        if checked is None:
            return
        check, found = checked
        self._login = check
        if tokens is not None:
            now = time.time()
            self._resume(lambda: self.stream.tokens_loaded(found, now))
            return
        self._resume(lambda: self.stream.credentials_loaded(check.credentials))

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

    async def _sasl2_complete(self, event: AuthSucceeded) -> None:
        """XEP-0388 §2.6.1 with XEP-0386 §3.2 and XEP-0484: bind the resource (carbons on
        with it), rotate or issue the FAST token, then the one <success/>."""
        request = event.sasl2
        assert request is not None
        # the token first: nothing may wait between the bind and the <success/> (deliveries
        # to the new session must come after it, counted by XEP-0198 when enabled inline)
        issued = await self.cm.fast_after_login(event)
        jid: JID | None = None
        if request.bind is not None and not self._closing:
            outcome = await self.cm.bind(self, event.resource, request.bind.carbons)
            if isinstance(outcome, JID):
                jid = outcome
                if request.bind.carbons:
                    metrics.CARBONS.labels("enable").inc()
            else:
                if outcome.condition is StanzaErrorCondition.RESOURCE_CONSTRAINT:
                    metrics.SESSION_LIMIT_HITS.inc()
                log.info("Bind2 failed: %s", outcome.condition.value)
        if jid is not None:
            self._resume(lambda: self.stream.sasl2_done(jid, issued))
            if self._auth_timer is not None:
                self._auth_timer.cancel()
                self._auth_timer = None
            self._start_keepalive()
        else:
            self._resume(lambda: self.stream.sasl2_done(None, issued))

    def _resume_session(self, event: ResumeRequested) -> None:
        """XEP-0198 §5: take over a session of this pod, detached or not yet noticed broken."""
        old = self.cm.resumable_for(self, event.previd)
        if old is None or old.stream.jid is None or old.stream.sm is None:
            self._spawn(self._resume_elsewhere(event))
            return
        old.release_held()  # XEP-0352 state is not resumed: what it held is written now
        if not self.stream.resume_succeeded(old.stream.jid, old.stream.sm):
            metrics.SM_RESUMPTIONS.labels("bad_h").inc()  # the stream ends; the session waits
            return
        metrics.SM_RESUMPTIONS.labels("same_pod").inc()
        self.cm.take_over(self, old)
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self._start_keepalive()

    async def _resume_elsewhere(self, event: ResumeRequested) -> None:
        """XEP-0198 §5 for a session of another connection manager: it hands the session
        over (`ConnectionManager.fetch_session`), or <failed><item-not-found/></failed>."""
        from .service import NotResumed  # the service imports this module

        handed = await self.cm.fetch_session(self, event.previd, event.h)
        if isinstance(handed, NotResumed):
            metrics.SM_RESUMPTIONS.labels(handed.reason).inc()
            self._resume(lambda: self.stream.resume_failed(h=handed.h))
            return
        if handed.queue.check(event.h) is not None:  # §4: the stream ends; so does the session
            metrics.SM_RESUMPTIONS.labels("bad_h").inc()
            self.cm.abandon_handed(handed)
            self._resume(lambda: self.stream.resume_succeeded(handed.jid, handed.queue))
            return
        metrics.SM_RESUMPTIONS.labels("other_pod").inc()
        self.stream.resume_succeeded(handed.jid, handed.queue)
        self.write(self.stream.data_to_send())  # <resumed/> and the queue, before the rest
        self.cm.adopt(self, handed)
        if self._closing:  # the client left during the take-over: the session waits here
            self.cm.connection_closed(self)
            return
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self._start_keepalive()
        self._pump()

    async def _register(self, username: str, password: str) -> None:
        error = await self.cm.register(username, password, self.source,
                                       self.stream.config.domain)
        self._resume(lambda: self.stream.register_done(error))

    def _auth_timeout(self) -> None:
        if not self.stream.bound:
            metrics.AUTH_TIMEOUTS.inc()
            self.close(StreamErrorCondition.CONNECTION_TIMEOUT, "authenticate and bind sooner")


_MECH_LABELS: Final = frozenset((*sasl.MECHANISMS, *fast.MECHANISMS, "OAUTHBEARER"))  # bounded


def _mech_label(mechanism: str) -> str:
    return mechanism if mechanism in _MECH_LABELS else "other"


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
