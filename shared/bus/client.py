"""The NATS adapter: connect and reconnect, publish, and consume in ordered batches.

nats-py already coalesces publishes into its pending buffer and writes them from one flusher
task, so a loop of ``publish`` calls becomes one socket write per event-loop tick.  Consumers
get whole batches: every subscription appends to one inbox and one worker task hands the
messages, in arrival order, to the service's batch handler.  Per subscription, nats-py calls
back in order, so the order of each subject is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.metrics import (
    BUS_BATCH_SIZE,
    BUS_CONNECTED,
    BUS_PUBLISH_FAILURES,
    BUS_PUBLISHED,
    BUS_RECEIVED,
    BUS_RECONNECTS,
)

log = logging.getLogger(__name__)

MAX_BATCH: Final = 512
BatchHandler = Callable[[list[tuple[str, bytes]]], Awaitable[None]]
OnFail = Callable[[], None] | None


class BusError(Exception):
    """The bus could not do what was asked."""


class BusUnavailable(BusError, ConnectionError):
    """NATS is not connected and cannot take the message now."""


class Bus:
    """One NATS connection of a service, with an ordered batching inbox."""

    def __init__(
        self,
        url: str,
        service: str,
        handler: BatchHandler | None = None,
        *,
        fail_while_disconnected: bool = False,
    ) -> None:
        """`fail_while_disconnected`: raise BusUnavailable instead of letting nats-py buffer
        publishes while it reconnects.  nats-py would send them once reconnected, possibly
        before the consumers have subscribed again, and core NATS drops a message nobody
        subscribes to: a publisher that can tell its client (the connection manager) had
        better bounce the stanza at once."""
        self._fail_while_disconnected = fail_while_disconnected
        self._url = url
        self._service = service
        self._nc: Client | None = None
        self._handler = handler
        self._inbox: deque[tuple[str, bytes]] = deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._outbox: list[tuple[str, bytes, OnFail]] = []
        self._sender: asyncio.Task[None] | None = None
        self._published = BUS_PUBLISHED.labels(service)
        self._received = BUS_RECEIVED.labels(service)
        self._failures = BUS_PUBLISH_FAILURES.labels(service)
        self._batch_size = BUS_BATCH_SIZE.labels(service)
        BUS_CONNECTED.labels(service).set(0)  # a bus that never connected shows as down

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def connect(self) -> None:
        """Connect, retrying until NATS answers; reconnect forever afterwards."""

        async def disconnected() -> None:
            BUS_CONNECTED.labels(self._service).set(0)
            log.warning("NATS disconnected")

        async def reconnected() -> None:
            BUS_CONNECTED.labels(self._service).set(1)
            BUS_RECONNECTS.labels(self._service).inc()
            log.info("NATS reconnected")

        async def error(exc: Exception) -> None:
            log.warning("NATS error: %s", exc)

        attempt = 0
        while True:
            try:
                self._nc = await nats.connect(
                    servers=self._url.split(","),
                    name=self._service,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    allow_reconnect=True,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                    pending_size=8 * 1024 * 1024,
                    skip_subject_validation=True,  # every subject comes from subjects.py
                )
                break
            except Exception as exc:  # not reachable yet: keep trying, like reconnects do
                attempt += 1
                log.warning("NATS not reachable (attempt %d): %s", attempt, exc)
                await asyncio.sleep(min(0.5 * attempt, 5.0))
        BUS_CONNECTED.labels(self._service).set(1)
        if self._handler is not None:
            self._worker = asyncio.create_task(self._work(), name=f"{self._service}-inbox")

    async def publish(self, subject: str, data: bytes) -> None:
        """Queue one message; raise BusUnavailable when NATS cannot take it."""
        await self._publish(subject, data)
        self._published.inc()

    async def _publish(self, subject: str, data: bytes) -> None:
        if self._nc is None:
            raise BusUnavailable("bus not connected")
        if self._fail_while_disconnected and not self._nc.is_connected:
            self._failures.inc()
            raise BusUnavailable("NATS is disconnected")
        try:
            await self._nc.publish(subject, data)
        except Exception as exc:  # nats-py raises several unrelated types here
            self._failures.inc()
            raise BusUnavailable(str(exc)) from exc

    def publish_soon(self, subject: str, data: bytes, on_fail: OnFail = None) -> None:
        """Publish from synchronous code: queued now, handed to NATS in order, once per tick.

        ``on_fail`` is called if NATS cannot take the message, so the sender gets an error
        stanza instead of a silent loss."""
        self._outbox.append((subject, data, on_fail))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_outbox())

    async def _send_outbox(self) -> None:
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                sent = 0
                for subject, data, on_fail in batch:
                    try:
                        await self._publish(subject, data)
                        sent += 1
                    except BusUnavailable:
                        if on_fail is not None:
                            on_fail()
                self._published.inc(sent)
        finally:
            self._sender = None

    async def flush(self) -> None:
        """Wait until NATS has seen everything published so far."""
        if self._nc is not None and self._nc.is_connected:
            await self._nc.flush(timeout=2)

    async def subscribe(self, subject: str) -> Subscription:
        """Feed a subject into this bus's ordered inbox."""
        if self._nc is None or self._handler is None:
            raise BusError("subscribe needs a connected bus with a handler")
        return await self._nc.subscribe(subject, cb=self._enqueue, pending_msgs_limit=1_000_000)

    async def _enqueue(self, msg: Msg) -> None:
        self._inbox.append((msg.subject, msg.data))
        self._wakeup.set()

    async def _work(self) -> None:
        assert self._handler is not None
        inbox = self._inbox
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while inbox:
                n = min(len(inbox), MAX_BATCH)
                batch = [inbox.popleft() for _ in range(n)]
                self._received.inc(n)
                self._batch_size.observe(n)
                try:
                    await self._handler(batch)
                except Exception:
                    log.exception("batch handler failed on %d messages", n)

    async def close(self) -> None:
        """Hand every queued publish to NATS, drain subscriptions, finish the inbox, close the
        connection: nothing a service accepted is dropped by stopping."""
        if self._sender is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._sender), 5)
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except Exception as exc:
                log.warning("NATS drain failed: %s", exc)
        if self._worker is not None:
            for _ in range(100):
                if not self._inbox:
                    break
                await asyncio.sleep(0.01)
            self._worker.cancel()
        BUS_CONNECTED.labels(self._service).set(0)
