"""One client connection: bytes between the socket and the sans-I/O stream, nothing more.

`data_received -> C2SStream.receive_data -> events -> I/O for the events -> write`.  Writes are
coalesced per event-loop tick into one `transport.write`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, cast

from shared import logs
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
from shared.xmpp.errors import StreamErrorCondition

from . import metrics

if TYPE_CHECKING:
    from .service import ConnectionManager

log = logging.getLogger(__name__)

READ_CHUNK: Final = 64 * 1024


class C2SConnection(asyncio.Protocol):
    """The I/O shell of one client stream."""

    def __init__(self, cm: ConnectionManager) -> None:
        self.cm = cm
        self.session_id = secrets.token_hex(6)
        self.stream = C2SStream(cm.stream_config)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._wbuf: list[bytes] = []
        self._flush_scheduled = False
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
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
        loop = asyncio.get_running_loop()
        self._auth_timer = loop.call_later(self.cm.settings.auth_timeout_s, self._auth_timeout)

    def data_received(self, data: bytes) -> None:
        metrics.BYTES_IN.inc(len(data))
        self.stream.receive_data(data)
        self._pump()

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        metrics.CONNECTIONS.dec()
        self._closing = True
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        self.cm.connections.discard(self)
        self.cm.connection_closed(self)

    # ---- writing ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes for the socket; one write per event-loop tick."""
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
        data = b"".join(self._wbuf) if len(self._wbuf) > 1 else self._wbuf[0]
        self._wbuf.clear()
        metrics.BYTES_OUT.inc(len(data))
        self.transport.write(data)
        if self.transport.get_write_buffer_size() > self.cm.settings.max_write_buffer_bytes:
            # A client that does not read: drop it rather than buffer without bound.
            metrics.SLOW_CONSUMERS.inc()
            self.close(StreamErrorCondition.POLICY_VIOLATION, "not reading")

    def deliver(self, payload: bytes) -> None:
        """A stanza for this session from the bus, already in canonical bytes."""
        metrics.STANZAS_OUT.inc()
        self.write(payload)

    def close(self, condition: StreamErrorCondition | None = None, text: str | None = None) -> None:
        """Close the stream from our side (kick, shutdown, resource limits)."""
        if self._closing:
            return
        self.stream.close(condition, text)
        self.write(self.stream.data_to_send())
        self._finish()

    def _finish(self) -> None:
        if self._closing:
            return
        self._flush()
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    # ---- the stream's events ---------------------------------------------------------------

    def _pump(self) -> None:
        token = logs.connection_id.set(self.session_id)
        try:
            while not self._closing:
                event = self.stream.next_event()
                if event is None:
                    break
                self._on_event(event)
            self.write(self.stream.data_to_send())
            if self.transport is not None and not self._closing:
                if self.stream.state is State.WAITING:
                    self.transport.pause_reading()
                elif self.stream.closed:
                    self._finish()
        finally:
            logs.connection_id.reset(token)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, StanzaIn):
            metrics.STANZAS_IN.labels(event.kind).inc()
            self.cm.stanza_from_client(self, event)
        elif isinstance(event, CredentialsNeeded):
            self._spawn(self._load_credentials(event.username))
        elif isinstance(event, BindRequested):
            self._spawn(self._bind(event.resource))
        elif isinstance(event, StartTLS):
            self._spawn(self._start_tls())
        elif isinstance(event, AuthSucceeded):
            metrics.LOGINS.labels(event.mechanism, "success").inc()
        elif isinstance(event, AuthFailed):
            metrics.LOGINS.labels(_mech_label(event.mechanism), "failure").inc()
            log.info("authentication failed (%s): %s", event.mechanism, event.condition)
        elif isinstance(event, RegisterRequested):
            self._spawn(self._register(event.username, event.password))
        elif isinstance(event, StreamEnded):
            if event.error is not None:
                metrics.STREAM_ERRORS.labels(event.error.value).inc()
            self.write(self.stream.data_to_send())
            self._finish()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("connection task failed", exc_info=task.exception())
            self.close(StreamErrorCondition.INTERNAL_SERVER_ERROR)

    def _resume(self, answer: Callable[[], None]) -> None:
        """Give the stream the caller's answer, then carry on reading."""
        if self._closing:
            return
        answer()
        if self.transport is not None:
            self.transport.resume_reading()
        self._pump()

    async def _start_tls(self) -> None:
        self._flush()  # <proceed/> must go out in the clear before the handshake
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self.transport, self, self.cm.tls_context, server_side=True,
                ssl_handshake_timeout=15,
            )
        except (TimeoutError, OSError, ConnectionError) as exc:
            log.info("TLS handshake failed: %s", exc)
            metrics.TLS_FAILURES.inc()
            self._closing = True
            if self.transport is not None:
                self.transport.close()
            return
        if transport is None:  # the peer went away during the handshake
            return
        self.transport = transport
        self._resume(self.stream.tls_established)

    async def _load_credentials(self, username: str) -> None:
        try:
            creds = await self.cm.load_credentials(username)
        except Exception as exc:
            log.warning("credentials lookup failed: %s", exc)
            self._resume(self.stream.credentials_unavailable)
            return
        self._resume(lambda: self.stream.credentials_loaded(creds))

    async def _bind(self, resource: str | None) -> None:
        outcome = await self.cm.bind(self, resource)
        if isinstance(outcome, Exception):
            self._resume(lambda: self.stream.bind_failed(outcome))  # type: ignore[arg-type]
        else:
            self._resume(lambda: self.stream.bind_succeeded(outcome))
            if self._auth_timer is not None:
                self._auth_timer.cancel()

    async def _register(self, username: str, password: str) -> None:
        error = await self.cm.register(username, password)
        self._resume(lambda: self.stream.register_done(error))

    def _auth_timeout(self) -> None:
        if not self.stream.bound:
            metrics.AUTH_TIMEOUTS.inc()
            self.close(StreamErrorCondition.CONNECTION_TIMEOUT, "authenticate and bind sooner")


def _mech_label(mechanism: str) -> str:
    return mechanism if mechanism in ("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256") else "other"
