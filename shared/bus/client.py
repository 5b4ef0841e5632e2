"""The NATS adapter: connect and reconnect, publish, and consume in ordered batches.

The hot paths go around the parts of nats-py that cost per message (measured in
loadtest/RESULTS.md, "CPU per message, session 2"):

- Publishing: ``publish_soon`` queues in an outbox that is written to the NATS socket as one
  ``write`` per event-loop tick, from a plain callback: no task per tick, no coroutine per
  message, no wake-up of nats-py's flusher task.  When the
  socket is backed up, when nats-py still holds commands of its own, or while it reconnects,
  the outbox goes into nats-py's pending buffer instead, so nats-py keeps the order and its
  own backpressure.
- Consuming: ``_BusClient`` hands the messages of the bus's subscriptions straight to one
  inbox (subject, payload), instead of building a ``Msg`` and passing it through a queue and
  a task per subscription.  One worker task hands the inbox, in arrival order, to the
  service's batch handler; NATS keeps the order of each subject on one connection.

- Within one process (a connection manager with an embedded router), a subject whose only
  consumer is a bus of the same process skips NATS altogether: ``shared/bus/local.py``.

- Durable delivery (``durable=True``, docs/architecture.md "Durable delivery on NATS
  JetStream"): a publish to a partitioned family (shared/bus/streams.py) carries a reply
  subject and its PubAck comes back asynchronously, matched by sequence (``on_fail`` when
  refused or missing); ``consume`` pulls a partition's durable consumer into the same ordered
  inbox, and each batch is acked once the handler returned and what it published is stored.
  A handler whose work outlives its call (the s2s gateway: a stanza waits for its link, then
  for the peer's XEP-0198 ack) takes a ``hold`` on an item: its stream message is acked only
  once every hold on it is settled, the others of the batch as usual.  ``pause`` stops asking
  a consumer for more (flow control instead of dropping what was pulled).

A time-based linger (write at most every 0.5-1 ms, so that paced messages share writes) was
measured and dropped: the timer wake-ups cost what the saved writes did, and it added latency.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.bus import streams
from shared.bus.local import EXCHANGE, HOLD_TIMEOUT_S, MARKER_PREFIX, RETRY_AFTER_S, Exchange
from shared.bus.local import marker as local_marker
from shared.runtime.metrics import (
    BUS_ACK_LATENCY,
    BUS_BATCH_SIZE,
    BUS_CONNECTED,
    BUS_CONSUMER_LAG,
    BUS_LOCAL,
    BUS_PUBLISH_FAILURES,
    BUS_PUBLISHED,
    BUS_RECEIVED,
    BUS_RECONNECTS,
    BUS_TAKEN_OVER,
    HistogramTally,
    Tally,
)

log = logging.getLogger(__name__)

MAX_BATCH: Final = 512
MAX_DIRECT_BUFFER_BYTES: Final = 1024 * 1024  # beyond this, nats-py's flusher drains first
PUBACK_TIMEOUT_S: Final = 5.0  # a durable publish not acknowledged by then failed
READ_BATCH: Final = 256  # messages of one subject per DIRECT.GET request (read_subject)
RECREATE_WITHIN_S: Final = 60.0  # after a reconnect, JetStream asked this long for consumers
_IN_PACK: Final = "+"  # an inbox item whose stream message's ack goes with a later item
BatchHandler = Callable[[list[tuple[str, bytes]]], Awaitable[None]]
OnFail = Callable[[], None] | None
Sink = Callable[[str, bytes], None]
JsSink = Callable[[bytes, bytes, bytes, bytes | None], None]


class BusError(Exception):
    """The bus could not do what was asked."""


class BusUnavailable(BusError, ConnectionError):
    """NATS is not connected and cannot take the message now."""


class _BusClient(Client):
    """nats-py's client with a short path for the subscriptions of a Bus.

    Messages on those subscriptions (no headers, no reply subject: the bus uses neither) go
    to the bus's sink as (subject, payload); everything else takes nats-py's own path."""

    def __init__(self) -> None:
        super().__init__()
        self.sinks: dict[int, Sink] = {}
        self.js_sid = -1  # the bus's JetStream inbox: PubAcks, pulled messages, statuses
        self.js_sink: JsSink | None = None

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        if sid == self.js_sid and self.js_sink is not None:
            self.stats["in_msgs"] += 1
            self.js_sink(subject, reply, data, headers)
            return
        sink = self.sinks.get(sid)
        if sink is None or headers or reply:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        if sid not in self._subs:  # unsubscribed: late arrivals are dropped, as nats-py does
            del self.sinks[sid]
            return
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        sink(subject.decode(), data)


class _LocalRoute:
    """A publisher's state for one subject offered in-process (shared/bus/local.py): holding
    behind a marker (``held``), switched (``sink``), or back on NATS until ``retry_at``."""

    __slots__ = ("epoch", "held", "retry_at", "sink", "timer")

    def __init__(self) -> None:
        self.epoch = 0
        self.held: list[tuple[bytes, OnFail]] | None = None
        self.sink: Sink | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.retry_at = 0.0


class _Consumer:
    """A partition's durable pull consumer, as this bus pulls it."""

    __slots__ = ("active", "broken", "credit", "dseq", "last_ack", "last_seen", "name",
                 "reply", "stream", "subject", "unacked")

    def __init__(self, subject: str, stream: str, name: str, reply: str) -> None:
        self.subject = subject
        self.stream = stream
        self.name = name
        self.reply = reply  # where the pulled messages and the statuses come
        self.active = True
        self.broken = False  # an output of its messages was not stored: replay, ack no more
        self.credit = 0  # messages asked for and not yet received
        self.unacked = 0  # in the inbox or being handled, not yet acked
        self.last_ack = ""
        self.last_seen = 0.0
        self.dseq = 0  # the consumer sequence of the last message received (gapless)


class _Held:
    """A stream message whose ack waits for its holds (``Bus.hold``)."""

    __slots__ = ("abandoned", "consumer", "failures", "holds", "reply", "since", "stored")

    def __init__(self, consumer: _Consumer, reply: str, failures: int, now: float) -> None:
        self.consumer = consumer
        self.reply = reply  # its ack subject
        self.failures = failures  # durable failures before the handler ran (see Bus._ack)
        self.holds = 0  # taken and not yet settled
        self.stored = False  # handled, and what its batch published is stored
        self.abandoned = False  # a hold given up: left unacked for the next owner
        self.since = now  # delivered, or last told the server it is in progress (+WPI)


class Hold:
    """One item of a stream message that is not settled yet (``Bus.hold``).  ``settle``: done
    with it (delivered, or bounced after its bounce was published); ``abandon``: left for the
    partition's next owner, so the message is not acked.  Only the first call counts."""

    __slots__ = ("_bus", "_held")

    def __init__(self, bus: Bus | None, held: _Held | None) -> None:
        self._bus = bus
        self._held = held

    def settle(self) -> None:
        held, self._held = self._held, None
        if held is not None and self._bus is not None:
            self._bus._release_hold(held, False)

    def abandon(self) -> None:
        held, self._held = self._held, None
        if held is not None and self._bus is not None:
            self._bus._release_hold(held, True)


NO_HOLD: Final = Hold(None, None)  # an item that is not a stream message's: nothing to wait for


class Bus:
    """One NATS connection of a service, with an ordered batching inbox."""

    def __init__(
        self,
        url: str,
        service: str,
        handler: BatchHandler | None = None,
        *,
        fail_while_disconnected: bool = False,
        exchange: Exchange = EXCHANGE,
        user: str = "",
        password: str = "",
        tls: ssl.SSLContext | None = None,
        durable: bool = False,
        limits: streams.StreamLimits | None = None,
        ordered_outputs: bool = False,
    ) -> None:
        """`fail_while_disconnected`: raise BusUnavailable instead of letting nats-py buffer
        publishes while it reconnects.  nats-py would send them once reconnected, possibly
        before the consumers have subscribed again, and core NATS drops a message nobody
        subscribes to: a publisher that can tell its client (the connection manager) had
        better bounce the stanza at once.

        `user`/`password`: the NATS identity of the service's role (shared/bus/permissions.py);
        credentials in the URL (nats://user:password@host) take precedence in nats-py.
        `tls`: TLS to NATS, verifying its certificate with this context (CommonSettings
        ``nats_options``).

        `durable`: publishes to the partitioned families go to their JetStream streams
        (created at connect, `limits`) and are PubAck'd; `consume` is available.

        `ordered_outputs` (with `durable`; a consumer whose failed outputs are replayed, not
        bounced): at most one stream message per subject is in flight, the next waits for
        its PubAck, and a failure stops everything after it (``_output_failed``), so no
        later output is stored before the replay publishes the failed one again."""
        self._tls = tls
        self._durable = durable
        self._limits = limits or streams.StreamLimits()
        self._families = frozenset(streams.family_names(self._limits))
        self._js_inbox = f"_INBOX.{secrets.token_hex(8)}"
        self._seq = 0  # durable publishes so far
        self._pending: dict[int, tuple[OnFail, float]] = {}  # seq -> (on_fail, sent at)
        self._waiters: deque[tuple[int, Callable[[], None]]] = deque()
        self._after_write: list[Callable[[], None]] = []  # `after_stored`, outbox not written
        self._consumers: dict[str, _Consumer] = {}  # by consumer name
        self._durable_failures = 0  # publishes refused, or without a good PubAck
        self._replays: set[asyncio.Task[None]] = set()
        self._acks: deque[str] = deque()  # beside the inbox: each message's ack subject or ""
        # ``hold``: the ack marks of the batch being handled, the last pack found in it
        # (first index, last index, ack subject), the messages held and those just released
        self._handling: list[str] | None = None
        self._handling_failures = 0
        self._group: tuple[int, int, str] = (-1, -1, "")
        self._held: dict[str, _Held] = {}
        self._released: list[_Held] = []
        self._paused: set[str] = set()  # subjects whose consumer is not asked for more
        self._ordered = ordered_outputs and durable
        self._waiting: dict[str, deque[tuple[int, bytes]]] = {}  # ordered outputs not yet written
        self._inflight: dict[str, int] = {}  # subject -> its chunk in flight (last seq)
        self._chunks: dict[int, tuple[str, list[int]]] = {}  # last seq -> subject, seqs
        self._ready: set[str] = set()  # subjects whose next chunk may be written
        self._batch_failures = -1  # _durable_failures when the running batch began
        self._wanted: set[str] = set()  # subjects `consume`d and not given up
        self._js_timer: asyncio.Task[None] | None = None
        self._ack_latency = HistogramTally(BUS_ACK_LATENCY.labels(service))
        self._taken_over = BUS_TAKEN_OVER.labels(service)
        BUS_CONSUMER_LAG.labels(service).set_function(
            lambda: sum(c.unacked for c in self._consumers.values()))
        self._user = user
        self._password = password
        self._fail_while_disconnected = fail_while_disconnected
        self._url = url
        self._service = service
        self._nc: _BusClient | None = None
        self._handler = handler
        self._inbox: deque[tuple[str, bytes]] = deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._outbox: list[tuple[str, bytes, OnFail, str | None]] = []
        self._outbox_durable = False  # the outbox holds a publish to a durable family
        self._flush_handle: asyncio.Handle | None = None
        self._published = Tally(BUS_PUBLISHED.labels(service))
        self._received = Tally(BUS_RECEIVED.labels(service))
        self._failures = BUS_PUBLISH_FAILURES.labels(service)
        self._batch_size = HistogramTally(BUS_BATCH_SIZE.labels(service))
        self._local_n = Tally(BUS_LOCAL.labels(service))
        BUS_CONNECTED.labels(service).set(0)  # a bus that never connected shows as down
        # in-process hand-off (shared/bus/local.py)
        self._exchange = exchange
        self.local_id = f"{service}-{secrets.token_hex(6)}"
        exchange.join(self)
        self._routes: dict[str, _LocalRoute] = {}
        self._offered: set[str] = set()

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
            for c in self._consumers.values():  # the pull requests died with the connection
                c.credit = 0
                self._pull(c)
            if self._consumers:
                task = asyncio.get_running_loop().create_task(self._recreate_lost())
                self._replays.add(task)
                task.add_done_callback(self._replays.discard)

        async def error(exc: Exception) -> None:
            log.warning("NATS error: %s", exc)

        attempt = 0
        while True:
            nc = _BusClient()
            try:
                await nc.connect(
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
                    **self._credentials(),
                )
                self._nc = nc
                break
            except Exception as exc:  # not reachable yet: keep trying, like reconnects do
                attempt += 1
                log.warning("NATS not reachable (attempt %d): %s", attempt, exc)
                await asyncio.sleep(min(0.5 * attempt, 5.0))
        BUS_CONNECTED.labels(self._service).set(1)
        if self._durable:
            await self._start_jetstream()
        if self._handler is not None:
            self._worker = asyncio.create_task(self._work(), name=f"{self._service}-inbox")

    def _credentials(self) -> dict[str, Any]:
        options: dict[str, Any] = (
            {"user": self._user, "password": self._password} if self._user else {})
        if self._tls is not None:
            options["tls"] = self._tls
        return options

    # ---- publishing ------------------------------------------------------------------------

    async def publish(self, subject: str, data: bytes, on_fail: OnFail = None) -> None:
        """Queue one message; raise BusUnavailable when NATS cannot take it.  Whatever
        ``publish_soon`` queued before goes first.  A durable publish is written at once
        and its PubAck comes later (``on_fail`` if it does not)."""
        stored = self.stored(subject)
        if stored and self._ordered:
            self._hold(subject, data, on_fail)
            self._write_outbox()
            return
        if stored:
            refused: list[bool] = []
            writing = True

            def failed() -> None:  # refused while written now: raise; the PubAck's: on_fail
                if writing:
                    refused.append(True)
                elif on_fail is not None:
                    on_fail()

            self._outbox.append((subject, data, failed, None))
            self._write_outbox()
            writing = False
            if refused:
                raise BusUnavailable(f"publish to {subject} refused")
            return
        if self._outbox:
            self._write_outbox()
        await self._publish(subject, data)
        self._published.n += 1

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
        """Publish from synchronous code: queued now, written to NATS in order, once per tick.

        ``on_fail`` is called if NATS cannot take the message, so the sender gets an error
        stanza instead of a silent loss."""
        if (self._routes or self._exchange.offers) and self._local(subject, data, on_fail):
            return
        stored = self.stored(subject)  # once per stanza: both questions below are this one
        if stored and self._ordered:
            self._hold(subject, data, on_fail)
            return
        self._outbox.append((subject, data, on_fail, None))
        if stored:
            self._outbox_durable = True
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._write_outbox)

    def _write_outbox(self) -> None:
        """Hand the outbox to NATS: one socket write when nats-py has nothing of its own
        queued, else behind what it holds."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._ready:
            self._release_ready()
        batch, self._outbox = self._outbox, []
        self._outbox_durable = False
        if not batch:
            return
        try:
            self._write_batch(batch)
        finally:
            if self._after_write:
                callbacks, self._after_write = self._after_write, []
                for callback in callbacks:
                    self.when_stored(self._seq, callback)

    def _write_batch(self, batch: list[tuple[str, bytes, OnFail, str | None]]) -> None:
        nc = self._nc
        refusal = self._refusal(nc)
        if refusal is not None or nc is None:
            self._failures.inc(len(batch))
            self._durable_failures += 1
            log.debug("publish of %d messages refused: %s", len(batch), refusal)
            for _subject, _data, on_fail, _reply in batch:
                if on_fail is not None:
                    on_fail()
            return
        durable = self._durable
        if durable and len(batch) > 1:
            batch = _pack_durable(batch, self._families)
        max_payload = nc._max_payload
        parts: list[bytes] = []
        size = 0
        pending = self._pending
        now = time.monotonic()
        for subject, data, on_fail, reply in batch:
            n = len(data)
            if n > max_payload:
                self._failures.inc()
                self._durable_failures += 1
                if on_fail is not None:
                    on_fail()
                continue
            if reply is None and durable and streams.family(subject) in self._families:
                self._seq += 1
                pending[self._seq] = (on_fail, now)
                reply = f"{self._js_inbox}.a.{self._seq}"
            if reply:
                part = b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), n, data)
            else:
                part = b"PUB %s %d\r\n%s\r\n" % (subject.encode(), n, data)
            parts.append(part)
            size += len(part)
        if not parts:
            return
        stats = nc.stats
        stats["out_msgs"] += len(parts)
        stats["out_bytes"] += size
        self._published.n += len(parts)
        writer = _direct_writer(nc)
        if writer is not None:
            writer.write(b"".join(parts) if len(parts) > 1 else parts[0])
            return
        nc._pending.extend(parts)  # behind nats-py's own commands; its flusher writes them
        nc._pending_data_size += size
        if nc.is_connected:
            queue = nc._flush_queue
            if queue is not None and queue.empty():
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(asyncio.get_running_loop().create_future())

    # ---- ordered outputs (``ordered_outputs``) ------------------------------------------------
    #
    # A partitioned service's output whose publish fails is not bounced: the input batch is
    # replayed (``_ack``, ``_break``), and the receiving connection manager drops what is
    # not newer, by (origin, ts_us), than what it delivered.  So no later output to the same
    # subject may be stored before the replay publishes the failed one again, or the failed
    # one, coming after it, is dropped as a copy: lost (RFC 6120 §10.1 order and zero loss).
    # Hence one stream message per subject in flight (the rest of the subject's outputs wait,
    # and are packed, behind its PubAck), and at a failure: what waits behind it fails too,
    # every consumer with anything unacked is replayed, what of theirs waits in the inbox is
    # dropped, and the rest of the running batch publishes nothing (all of it replays).

    def _hold(self, subject: str, data: bytes, on_fail: OnFail) -> None:
        """Queue a durable publish behind the subject's stream message in flight; it is
        numbered now, so ``stored_mark`` and the acks of its batch wait for it."""
        if self._batch_failures >= 0 and self._durable_failures != self._batch_failures:
            # an output failed while this batch ran: its consumers replay it, from the
            # start; stored now, this one could overtake the failed output
            if on_fail is not None:
                on_fail()
            return
        self._seq += 1
        self._pending[self._seq] = (on_fail, math.inf)  # not sent: never overdue
        held = self._waiting.get(subject)
        if held is None:
            held = self._waiting[subject] = deque()
        held.append((self._seq, data))
        if subject not in self._inflight:
            self._ready.add(subject)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._write_outbox)

    def _release_ready(self) -> None:
        """Into the outbox: the next chunk of every ready subject with none in flight, one
        stream message (packed when several) with the PubAck reply of its last sequence."""
        ready, self._ready = self._ready, set()
        now = time.monotonic()
        pending = self._pending
        for subject in ready:
            held = self._waiting.get(subject)
            if subject in self._inflight or not held:
                continue
            members: list[int] = []
            parts: list[bytes] = []
            size = 0
            while held and len(parts) < streams.MULTI_MAX_COUNT:
                seq, data = held[0]
                if parts and size + len(data) > streams.MULTI_MAX_BYTES:
                    break
                held.popleft()
                members.append(seq)
                parts.append(data)
                size += len(data)
            if not held:
                del self._waiting[subject]
            for seq in members:
                entry = pending.get(seq)
                if entry is not None:
                    pending[seq] = (entry[0], now)
            key = members[-1]
            self._chunks[key] = (subject, members)
            self._inflight[subject] = key
            payload = parts[0] if len(parts) == 1 else streams.pack(parts)
            self._outbox.append((subject, payload, lambda key=key: self._chunk_done(key, False),
                                 f"{self._js_inbox}.a.{key}"))

    def _chunk_done(self, key: int, ok: bool, why: bytes = b"") -> None:
        """The PubAck (or its absence) of a chunk: the subject's next chunk may go, or,
        when it failed, ``_output_failed``."""
        chunk = self._chunks.pop(key, None)
        if chunk is None:
            return
        subject, members = chunk
        if self._inflight.get(subject) == key:
            del self._inflight[subject]
        pending = self._pending
        fails: list[Callable[[], None]] = []
        sent = math.inf
        for seq in members:
            entry = pending.pop(seq, None)
            if entry is not None:
                sent = entry[1]
                if entry[0] is not None:
                    fails.append(entry[0])
        if sent != math.inf:
            self._ack_latency.observe(time.monotonic() - sent)
        if ok:
            if subject in self._waiting:
                self._ready.add(subject)
                if self._flush_handle is None:
                    self._flush_handle = asyncio.get_running_loop().call_soon(
                        self._write_outbox)
        else:
            self._failures.inc(len(members))
            log.warning("durable publish of %d to %s failed: %s", len(members), subject,
                        why[:200].decode(errors="replace") or "no PubAck or refused")
            for fail in fails:
                fail()
            self._output_failed(subject)
        self._advance()

    def replay_batch(self) -> None:
        """The batch being handled cannot be now (a store it needs is away): nothing of it
        is acked and it replays, first, as after a failed output; its handler had better
        return.  Without ordered outputs only the batch's own consumers replay it."""
        if self._ordered:
            self._output_failed(None)
        else:
            self._durable_failures += 1

    def _output_failed(self, subject: str | None) -> None:
        """Nothing later to ``subject`` is stored before the replay: what waits behind the
        failed chunk fails, every consumer with messages not acked is replayed (what it
        published may be missing an output), and their messages still in the inbox are
        dropped (they come again, after the replay)."""
        self._durable_failures += 1
        if subject is not None:
            for seq, _data in self._waiting.pop(subject, None) or ():
                entry = self._pending.pop(seq, None)
                if entry is not None and entry[0] is not None:
                    entry[0]()
            self._ready.discard(subject)
        broken = [c for c in self._consumers.values()
                  if c.active and not c.broken and c.unacked > 0]
        for c in broken:
            self._break(c)
        if broken and self._inbox:  # every stream message in it is of a broken consumer
            kept = [(m, a) for m, a in zip(self._inbox, self._acks, strict=True) if a == ""]
            self._inbox.clear()
            self._acks.clear()
            for m, a in kept:
                self._inbox.append(m)
                self._acks.append(a)

    # ---- in-process hand-off (shared/bus/local.py) ------------------------------------------

    def _local(self, subject: str, data: bytes, on_fail: OnFail) -> bool:
        """Hand the message to a consumer of this process, or hold it behind a marker; False
        when it goes over NATS."""
        route = self._routes.get(subject)
        if route is None:
            if subject not in self._exchange.offers or not self.connected:
                return False
            route = self._routes[subject] = _LocalRoute()
        if route.sink is not None:
            route.sink(subject, data)
            self._local_n.n += 1
            return True
        if route.held is not None:
            route.held.append((data, on_fail))
            return True
        if time.monotonic() < route.retry_at:
            return False
        # behind everything queued for NATS so far; held until it comes back
        route.epoch += 1
        self._queue(subject, local_marker(self.local_id, route.epoch), None)
        route.held = [(data, on_fail)]
        route.timer = asyncio.get_running_loop().call_later(
            HOLD_TIMEOUT_S, self._hold_expired, subject, route.epoch
        )
        return True

    def _queue(self, subject: str, data: bytes, on_fail: OnFail, reply: str | None = None
               ) -> None:
        self._outbox.append((subject, data, on_fail, reply))
        if reply is None and self.stored(subject):
            self._outbox_durable = True
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._write_outbox)

    def local_ready(self, subject: str, epoch: int, sink: Sink) -> None:
        """Our marker reached the consumer: what we held goes to it, and so will the rest."""
        route = self._routes.get(subject)
        if route is None or route.held is None or route.epoch != epoch:
            return
        if route.timer is not None:
            route.timer.cancel()
            route.timer = None
        held, route.held = route.held, None
        route.sink = sink
        for data, _on_fail in held:
            sink(subject, data)
        self._local_n.n += len(held)

    def local_withdrawn(self, subject: str) -> None:
        """The consumer gives the subject up: back to NATS, held messages first."""
        route = self._routes.pop(subject, None)
        if route is None:
            return
        if route.timer is not None:
            route.timer.cancel()
        for data, on_fail in route.held or ():
            self._queue(subject, data, on_fail)

    def _hold_expired(self, subject: str, epoch: int) -> None:
        route = self._routes.get(subject)
        if route is None or route.held is None or route.epoch != epoch:
            return
        log.warning("no in-process hand-off marker back on %s: over NATS for now", subject)
        held, route.held = route.held, None
        route.timer = None
        route.retry_at = time.monotonic() + RETRY_AFTER_S
        for data, on_fail in held:
            self._queue(subject, data, on_fail)

    def offer_local(self, subject: str) -> None:
        """This bus is the only consumer of ``subject`` (and subscribed to it): publishers of
        this process may hand messages for it straight to the inbox."""
        self._offered.add(subject)
        self._exchange.offer(subject, self._sink)

    def withdraw_local(self, subject: str) -> None:
        """Before giving ``subject`` up: publishers of this process go back to NATS."""
        if subject in self._offered:
            self._offered.discard(subject)
            self._exchange.withdraw(subject)

    def _refusal(self, nc: _BusClient | None) -> str | None:
        """Why NATS cannot take a publish now, or None when it can (nats-py's own checks)."""
        if nc is None:
            return "bus not connected"
        if nc.is_closed:
            return "connection closed"
        if nc.is_draining_pubs:
            return "connection draining"
        if not nc.is_connected:
            if self._fail_while_disconnected:
                return "NATS is disconnected"
            if nc._max_pending_size <= 0 or nc._pending_data_size > nc._max_pending_size:
                return "reconnect buffer full"
        return None

    # ---- consuming -------------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until NATS has seen everything published (and subscribed) so far.

        nats-py 2.16's ``flush`` writes its PING straight to the socket while commands it
        queued itself (a SUB, an UNSUB, an awaited publish) may still wait in its pending
        buffer for the flusher task: the PONG could then come back before the server saw
        them, and a subscription "made" before a flush could miss the first messages (seen
        as a prefix of messages missing in tests/shared/bus/test_client.py).  So nats-py's
        pending commands are written first, by its own flusher."""
        if self._outbox:
            self._write_outbox()
        nc = self._nc
        if nc is not None and nc.is_connected:
            if nc._pending:
                await nc._flush_pending(force_flush=True)
            await nc.flush(timeout=2)

    async def subscribe(self, subject: str) -> Subscription:
        """Feed a subject into this bus's ordered inbox."""
        if self._nc is None or self._handler is None:
            raise BusError("subscribe needs a connected bus with a handler")
        sub = await self._nc.subscribe(subject, cb=self._enqueue, pending_msgs_limit=1_000_000)
        self._nc.sinks[sub._id] = self._sink
        return sub

    async def listen(self, subject: str, callback: Callable[[bytes], None]) -> Subscription:
        """A control subject outside the ordered inbox: ``callback`` gets each payload."""
        if self._nc is None:
            raise BusError("listen needs a connected bus")

        async def received(msg: Msg) -> None:
            callback(msg.data)

        return await self._nc.subscribe(subject, cb=received)

    def _sink(self, subject: str, data: bytes) -> None:
        if data[:1] == b"\x00":
            if data.startswith(MARKER_PREFIX):  # never for a handler
                self._exchange.marker_seen(subject, data, self._sink)
                return
            if data.startswith(streams.MULTI_PREFIX):  # a durable publisher's pack
                self._unpack(subject, data, None)
                self._wakeup.set()
                return
        self._inbox.append((subject, data))
        self._acks.append("")
        self._wakeup.set()

    async def _enqueue(self, msg: Msg) -> None:
        """nats-py's path, for messages the short path leaves to it."""
        self._sink(msg.subject, msg.data)

    async def _work(self) -> None:
        assert self._handler is not None
        inbox = self._inbox
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            acks = self._acks
            while inbox:
                n = min(len(inbox), MAX_BATCH)
                batch = [inbox.popleft() for _ in range(n)]
                marks = [acks.popleft() for _ in range(n)]
                failures = self._batch_failures = self._durable_failures
                self._received.n += n
                self._batch_size.observe(n)
                self._handling, self._handling_failures = marks, failures
                try:
                    await self._handler(batch)
                except Exception:
                    log.exception("batch handler failed on %d messages", n)
                finally:
                    self._handling = None
                    self._group = (-1, -1, "")
                    self._batch_failures = -1
                done = [a for a in marks if a and a != _IN_PACK]
                if done:  # acked once what the handler published is stored (and not held)
                    self.when_stored(self.stored_mark(),
                                     lambda done=done, f=failures: self._ack(done, f))

    # ---- durable delivery (JetStream) ---------------------------------------------------------

    @property
    def durable(self) -> bool:
        return self._durable

    def stored(self, subject: str) -> bool:
        """Whether a publish to ``subject`` goes to a JetStream stream (and is PubAck'd)."""
        return self._durable and streams.family(subject) in self._families

    async def _start_jetstream(self) -> None:
        """The inbox of PubAcks and pulls, and every durable family's stream, idempotently
        (the same configuration again is a no-op; another one is updated to ours)."""
        nc = self._nc
        assert nc is not None
        sub = await nc.subscribe(self._js_inbox + ".>", pending_msgs_limit=1_000_000)
        nc.js_sid = sub._id
        nc.js_sink = self._js_msg
        attempt = 0
        while True:
            try:
                for fam in self._families:
                    if fam != "smlog" or self._limits.log_max_age_s:
                        await self._ensure_stream(fam)
                break
            except Exception as exc:  # JetStream not up yet (a cluster electing): retry
                attempt += 1
                log.warning("JetStream streams not ready (attempt %d): %s", attempt, exc)
                await asyncio.sleep(min(0.5 * attempt, 5.0))
        self._js_timer = asyncio.create_task(self._js_tick(), name=f"{self._service}-js")

    async def _api(self, subject: str, body: dict[str, object] | None = None) -> dict[str, Any]:
        """One JetStream API request; its JSON answer."""
        assert self._nc is not None
        payload = json.dumps(body).encode() if body is not None else b""
        msg = await self._nc.request(subject, payload, timeout=5)
        answer: dict[str, Any] = json.loads(msg.data or b"{}")
        return answer

    async def _ensure_stream(self, fam: str) -> None:
        config = streams.stream_config(fam, self._limits)
        name = streams.stream_name(fam)
        answer = await self._api(f"$JS.API.STREAM.CREATE.{name}", config)
        error = answer.get("error")
        if error and error.get("err_code") == 10058:  # exists with another configuration
            answer = await self._api(f"$JS.API.STREAM.UPDATE.{name}", config)
            error = answer.get("error")
        if error:
            raise BusError(f"stream {name}: {error.get('description')}")

    async def subject_counts(self, fam: str, subjects_filter: str = "") -> dict[str, int]:
        """The subjects of a family's stream (those matching ``subjects_filter``, a NATS
        wildcard; by default every one) that hold messages, and how many each."""
        name = streams.stream_name(fam)
        answer = await self._api(f"$JS.API.STREAM.INFO.{name}", {
            "subjects_filter": subjects_filter or f"{streams.subjects.PREFIX}.{fam}.>"})
        if answer.get("error"):
            raise BusError(f"stream {name}: {answer['error'].get('description')}")
        return {k: int(v) for k, v in
                ((answer.get("state") or {}).get("subjects") or {}).items()}

    async def read_subject(self, subject: str, after: int = 0) -> list[tuple[int, bytes]]:
        """Every message of ``subject`` (a limits stream with ``allow_direct``) after the
        stream sequence ``after``, in order, as (sequence, payload).  The subject's last
        sequence is asked of the stream leader, then the messages are read in batches of
        ``READ_BATCH`` (one DIRECT.GET request each, ADR-31) from any replica that has at
        least that sequence (``min_last_seq``, read after write); a batch that stops short
        of it (a replica behind) is read again one message at a time from the leader."""
        fam = streams.family(subject)
        assert fam is not None, subject
        nc = self._nc
        if nc is None:
            raise BusUnavailable("bus not connected")
        stream = streams.stream_name(fam)
        answer = await self._api(f"$JS.API.STREAM.MSG.GET.{stream}", {"last_by_subj": subject})
        error = answer.get("error")
        if error:
            if error.get("code") == 404:  # nothing at all
                return []
            raise BusError(f"reading {subject}: {error.get('description')}")
        last = int(answer["message"]["seq"])
        out: list[tuple[int, bytes]] = []
        seq = after + 1
        if seq > last:
            return out
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            while seq <= last:
                body = {"seq": seq, "next_by_subj": subject, "batch": READ_BATCH,
                        "min_last_seq": last}
                await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(body).encode(),
                                 reply=inbox)
                got = 0
                while True:
                    msg = await sub.next_msg(timeout=5)
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status is None:
                        at = int(headers["Nats-Sequence"])
                        out.append((at, msg.data))
                        seq = at + 1
                        got += 1
                        continue
                    break  # 204: the end of the batch; 404: nothing after seq; or refused
                if status != "204" or got == 0:
                    break
        except Exception as exc:  # no direct get: the leader, one message at a time
            log.warning("batched read of %s failed (%s); reading one by one", subject, exc)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if seq <= last:  # a replica behind the leader, or no direct get
            out += await self._read_one_by_one(stream, subject, seq)
        return out

    async def _read_one_by_one(self, stream: str, subject: str, seq: int
                               ) -> list[tuple[int, bytes]]:
        api = f"$JS.API.STREAM.MSG.GET.{stream}"
        out: list[tuple[int, bytes]] = []
        while True:
            answer = await self._api(api, {"seq": seq, "next_by_subj": subject})
            error = answer.get("error")
            if error:
                if error.get("code") == 404:  # no message after seq
                    return out
                raise BusError(f"reading {subject}: {error.get('description')}")
            msg = answer["message"]
            seq = int(msg["seq"])
            out.append((seq, base64.b64decode(msg.get("data") or "")))
            seq += 1

    async def has_messages(self, subject: str) -> bool:
        """Whether ``subject``'s stream holds a message of it."""
        fam = streams.family(subject)
        assert fam is not None, subject
        answer = await self._api(f"$JS.API.STREAM.MSG.GET.{streams.stream_name(fam)}",
                                 {"last_by_subj": subject})
        error = answer.get("error")
        if error and error.get("code") != 404:
            raise BusError(f"reading {subject}: {error.get('description')}")
        return not error

    async def purge(self, subject: str) -> None:
        """Remove every message of ``subject`` from its stream."""
        fam = streams.family(subject)
        assert fam is not None, subject
        name = streams.stream_name(fam)
        answer = await self._api(f"$JS.API.STREAM.PURGE.{name}", {"filter": subject})
        if answer.get("error"):
            raise BusError(f"purging {subject}: {answer['error'].get('description')}")

    async def consume(self, subject: str) -> None:
        """Own ``subject``'s partition consumer: recreate it (so it starts at the oldest
        message not yet acked: what a previous owner left replays first, in order) and pull
        it into the inbox.  RFC 6120 §10.1 across a take-over."""
        if self._nc is None or self._handler is None or not self._durable:
            raise BusError("consume needs a connected durable bus with a handler")
        fam = streams.family(subject)
        assert fam is not None, subject
        stream, name = streams.stream_name(fam), streams.consumer_name(subject)
        self._wanted.add(subject)
        old = self._consumers.pop(name, None)
        if old is not None:
            old.active = False
        answer = await self._api(f"$JS.API.CONSUMER.DELETE.{stream}.{name}")
        error = answer.get("error")
        if error and error.get("err_code") != 10014:  # 10014: there was none
            raise BusError(f"consumer {name}: {error.get('description')}")
        config = streams.consumer_config(subject)
        answer = await self._api(f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
                                 {"stream_name": stream, "config": config})
        if answer.get("error"):
            raise BusError(f"consumer {name}: {answer['error'].get('description')}")
        backlog = int(answer.get("num_pending") or 0)
        if backlog:
            self._taken_over.inc(backlog)
            log.info("%s: %d messages waiting at take-over", name, backlog)
        c = self._consumers[name] = _Consumer(subject, stream, name, f"{self._js_inbox}.p.{name}")
        self._pull(c)

    async def stop_consuming(self, subject: str, timeout_s: float = 10.0) -> None:
        """Give ``subject`` up: stop pulling, let the inbox handle and ack what it took, and
        wait until the server confirmed the acks: then the next owner may recreate the
        consumer without replaying what was handled here."""
        name = streams.consumer_name(subject)
        self._wanted.discard(subject)
        c = self._consumers.get(name)
        if c is None:
            return
        c.active = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while c.unacked > 0 and loop.time() < deadline:  # noqa: ASYNC110 (a count, polled)
            await asyncio.sleep(0.02)
        if self._consumers.get(name) is c:
            del self._consumers[name]
        if c.unacked:
            log.warning("%s: %d messages not acked at hand-over", name, c.unacked)
        if c.last_ack and self._nc is not None and self._nc.is_connected:
            if self._outbox:
                self._write_outbox()
            with contextlib.suppress(Exception):  # a double ack: answered once processed
                await self._nc.request(c.last_ack, b"+ACK", timeout=2)

    async def _recreate_lost(self) -> None:
        """After a reconnect: a consumer the server no longer has (its state is in memory,
        streams.consumer_config: a restarted nats-server forgot it) is created again with
        the same configuration, which does nothing to one that exists (it may be a new
        owner's: nothing is deleted here).  A fresh one starts at the oldest message in the
        stream, so what this bus had taken and not acked replays first, as at a take-over
        (its acks would be for the old consumer: they are dropped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECREATE_WITHIN_S
        for c in list(self._consumers.values()):
            while c.active and not c.broken and self._consumers.get(c.name) is c:
                config = streams.consumer_config(c.subject)
                try:
                    answer = await self._api(f"$JS.API.CONSUMER.CREATE.{c.stream}.{c.name}",
                                             {"stream_name": c.stream, "config": config})
                    error = answer.get("error")
                except Exception as exc:  # JetStream not answering yet (recovering streams)
                    answer, error = {}, {"description": str(exc)}
                if not error:
                    if (answer.get("delivered") or {}).get("consumer_seq", 0) == 0 \
                            and self._consumers.get(c.name) is c and c.active:
                        log.warning("%s: consumer gone after a reconnect, created again; "
                                    "replaying from the oldest unacked", c.name)
                        c.active = False
                        c.broken = True
                        c.unacked = 0
                        fresh = _Consumer(c.subject, c.stream, c.name, c.reply)
                        self._consumers[c.name] = fresh
                        self._pull(fresh)
                    break
                if loop.time() > deadline:
                    log.warning("%s: consumer not checked after reconnect: %s", c.name,
                                error.get("description"))
                    break
                await asyncio.sleep(0.5)  # stream not recovered yet, or no answer

    def _pull(self, c: _Consumer) -> None:
        """Ask for up to PULL_BATCH more messages (a long poll of PULL_EXPIRES_S)."""
        if not c.active or c.subject in self._paused:
            return
        want = streams.PULL_BATCH - c.credit
        if want <= 0:
            return
        c.credit += want
        c.last_seen = time.monotonic()
        body = b'{"batch":%d,"expires":%d}' % (want, int(streams.PULL_EXPIRES_S * 1e9))
        self._queue(f"$JS.API.CONSUMER.MSG.NEXT.{c.stream}.{c.name}", body, None, c.reply)

    def _js_msg(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """Everything on the JetStream inbox: a pulled message (its reply is its ack
        subject), a status of a pull request, or a PubAck."""
        if reply.startswith(b"$JS.ACK."):
            tokens = reply.split(b".")
            base = 2 if len(tokens) == 9 else 4  # v1, or v2 with domain and account hash
            c = self._consumers.get(tokens[base + 1].decode())
            if c is None or not c.active or c.broken:
                return  # given up: not acked, so the next owner gets it
            dseq = int(tokens[base + 4])
            if dseq != c.dseq + 1:
                # A delivery never reached us (sent by a consumer leader that died, or
                # dropped on the way): the consumer counts it delivered and would send it
                # again only after ack_wait, behind later ones that the receivers' replay
                # check would then let it not overtake: lost.  Replay from the oldest
                # unacked now, before anything after the gap is handled.
                log.warning("%s: delivery %d after %d: one missing; replaying", c.name, dseq,
                            c.dseq)
                self._break(c)
                return
            c.dseq = dseq
            c.credit -= 1
            c.unacked += 1
            c.last_seen = time.monotonic()
            if c.credit <= streams.PULL_BATCH // 2:
                self._pull(c)
            if data[:1] == b"\x00" and data.startswith(streams.MULTI_PREFIX):
                self._unpack(subject.decode(), data, reply.decode())
            else:
                self._inbox.append((subject.decode(), data))
                self._acks.append(reply.decode())
            self._wakeup.set()
            return
        kind, _, rest = subject.decode()[len(self._js_inbox) + 1:].partition(".")
        if kind == "a":  # a status instead (503: no stream took it) is a failure too
            self._puback(int(rest), b'"error"' if headers else data)
        elif kind == "p":
            self._pull_status(rest, headers or b"")

    def _unpack(self, subject: str, data: bytes, ack: str | None) -> None:
        """The stanzas of a packed stream message into the inbox; the message's ack goes with
        the last, so it is acked once all of them were handled (None: core NATS, whose
        items are marked "")."""
        try:
            parts = streams.unpack(data)
        except ValueError:
            parts = []
        if not parts:  # never written by a bus: dropped, and acked so it does not come back
            log.warning("a malformed packed message on %s dropped", subject)
            if ack:
                self._ack([ack], self._durable_failures)
            return
        inbox, acks = self._inbox, self._acks
        mark = _IN_PACK if ack else ""
        for part in parts[:-1]:
            inbox.append((subject, part))
            acks.append(mark)
        inbox.append((subject, parts[-1]))
        acks.append(ack or "")

    def _pull_status(self, name: str, headers: bytes) -> None:
        """408: a pull request expired (its unused credit is in Nats-Pending-Messages);
        anything else (409 consumer deleted, leadership change, ...): ask again later."""
        c = self._consumers.get(name)
        if c is None:
            return
        c.last_seen = time.monotonic()
        code = headers[9:12]
        if code == b"408":
            for line in headers.split(b"\r\n"):
                if line.lower().startswith(b"nats-pending-messages:"):
                    c.credit = max(0, c.credit - int(line.split(b":")[1]))
            self._pull(c)
        elif code != b"100":
            log.info("pull of %s: %s", name, headers.split(b"\r\n")[0].decode(errors="replace"))
            c.credit = 0  # asked again by the timer

    def _puback(self, seq: int, data: bytes) -> None:
        if seq in self._chunks:
            self._chunk_done(seq, b'"error"' not in data, data)
            return
        entry = self._pending.pop(seq, None)
        if entry is None:
            return
        on_fail, sent = entry
        self._ack_latency.observe(time.monotonic() - sent)
        if b'"error"' in data:
            self._failures.inc()
            self._durable_failures += 1
            log.warning("durable publish refused: %s", data[:200].decode(errors="replace"))
            if on_fail is not None:
                on_fail()
        self._advance()

    def stored_mark(self) -> int:
        """The sequence of the last durable publish: what ``when_stored`` takes to wait for
        everything published so far.  The outbox is written now when it holds a durable
        publish (which gets its sequence then); otherwise it waits for the tick's one write,
        so that what follows (a batch's acks, ``Bus._work``) shares it."""
        if self._outbox_durable:
            self._write_outbox()
        return self._seq

    def after_stored(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every durable publish queued so far is stored or failed,
        without writing the outbox before the end of the tick (``when_stored`` of the mark
        the outbox gets when it is written)."""
        if self._outbox:
            self._after_write.append(callback)
        else:
            self.when_stored(self._seq, callback)

    def stored_through(self) -> int:
        """Every durable publish up to this sequence is stored (or failed: its on_fail ran)."""
        return next(iter(self._pending)) - 1 if self._pending else self._seq

    def when_stored(self, mark: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every durable publish up to ``mark`` is stored or failed."""
        if self.stored_through() >= mark:
            callback()
        else:
            self._waiters.append((mark, callback))

    def _advance(self) -> None:
        waiters = self._waiters
        if not waiters:
            return
        floor = self.stored_through()
        while waiters and waiters[0][0] <= floor:
            waiters.popleft()[1]()

    def _ack(self, replies: list[str], failures: int) -> None:
        """Ack handled messages: one small publish each, written with the tick's others.
        When a durable publish failed meanwhile (``failures`` is the count before the
        handler ran), an output of this batch may be missing: nothing of its consumers is
        acked any more and they are recreated, so the batch replays (in order, first).
        A held message (``hold``) waits for its holds instead."""
        failed = self._durable_failures != failures
        held = self._held
        for reply in replies:
            if held and (h := held.get(reply)) is not None:
                h.stored = True
                if h.holds:
                    continue  # acked when the last of its holds is settled
                del held[reply]
                self._ack_held(h, failed)
                continue
            tokens = reply.split(".")
            self._ack_one(reply, self._consumers.get(tokens[3] if len(tokens) == 9
                                                     else tokens[5]), failed)
        if self._flush_handle is None and self._outbox:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._write_outbox)

    def _ack_one(self, reply: str, c: _Consumer | None, failed: bool) -> None:
        if c is None or c.broken:
            return
        if failed:
            self._break(c)
            return
        self._outbox.append((reply, b"+ACK", None, ""))
        if c.unacked > 0:
            c.unacked -= 1
        c.last_ack = reply

    def _ack_held(self, h: _Held, failed: bool) -> None:
        """A held message with no hold left: acked, unless a hold was abandoned (then it is
        only no longer counted: the partition's next owner gets it) or its consumer is not
        the one it came from any more (given up or recreated: that one replays it)."""
        c = h.consumer
        if self._consumers.get(c.name) is not c:
            return
        if h.abandoned:
            if c.unacked > 0:
                c.unacked -= 1
            return
        self._ack_one(h.reply, c, failed)

    # ---- holds: acks that wait for the handler's work to be settled ---------------------------

    def hold(self, i: int) -> Hold:
        """During the batch handler: item ``i`` of the batch is not settled when the handler
        returns.  Its stream message is acked only once every hold taken on it is settled
        (and what was published until then is stored); the other messages of the batch are
        acked as usual.  A message's holds keep it unacked beyond ``ack_wait`` if need be:
        the server is told it is in progress (``+WPI``, in ``_js_tick``).  ``NO_HOLD`` for an
        item of no stream message (core NATS, a bus without durability)."""
        marks = self._handling
        if marks is None or not marks[i]:
            return NO_HOLD
        first, last, reply = self._group
        if not first <= i <= last:  # the pack of item i: its ack is with its last part
            last = i
            while last < len(marks) and marks[last] == _IN_PACK:
                last += 1
            if last < len(marks):
                reply = marks[last]
            else:  # the pack's last parts are still in the inbox (the batch cut it)
                reply = next((a for a in self._acks if a != _IN_PACK), "")
            self._group = (i, last, reply)
        h = self._held.get(reply)
        if h is None:
            tokens = reply.split(".")
            if len(tokens) < 9:
                return NO_HOLD
            c = self._consumers.get(tokens[3] if len(tokens) == 9 else tokens[5])
            if c is None or c.broken:
                return NO_HOLD  # not acked anyway: it replays
            h = self._held[reply] = _Held(c, reply, self._handling_failures, time.monotonic())
        h.holds += 1
        return Hold(self, h)

    def _release_hold(self, h: _Held, abandon: bool) -> None:
        h.holds -= 1
        h.abandoned = h.abandoned or abandon
        if h.holds or not h.stored:
            return
        if self._held.get(h.reply) is h:
            del self._held[h.reply]
        if not self._released:
            asyncio.get_running_loop().call_soon(self._ack_released)
        self._released.append(h)

    def _ack_released(self) -> None:
        """The messages whose last hold was settled in the previous tick: acked, in one write,
        once what was published until now (a bounce that settled one) is stored."""
        released, self._released = self._released, []

        def ack() -> None:
            for h in released:
                self._ack_held(h, self._durable_failures != h.failures)
            if self._flush_handle is None and self._outbox:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._write_outbox)

        self.after_stored(ack)

    def narrow(self, keep: list[int]) -> None:
        """The batch handler passes on only the items ``keep`` (indexes, in order) of its
        batch: ``hold`` indexes those from now on."""
        if self._handling is not None:
            marks = self._handling
            self._handling = [marks[i] for i in keep]
            self._group = (-1, -1, "")

    @property
    def held(self) -> int:
        """Stream messages waiting for their holds."""
        return len(self._held)

    def pause(self, subject: str) -> None:
        """Ask ``subject``'s consumer for no more messages (flow control: what was asked for
        before still comes) until ``resume``."""
        self._paused.add(subject)

    def resume(self, subject: str) -> None:
        if subject in self._paused:
            self._paused.discard(subject)
            c = self._consumers.get(streams.consumer_name(subject))
            if c is not None:
                self._pull(c)

    def _break(self, c: _Consumer) -> None:
        log.warning("%s: an output was not stored; replaying from the oldest unacked", c.name)
        c.broken = True
        c.unacked = 0  # nothing more of it will be acked: a hand-over need not wait

        async def replay() -> None:
            delay = 1.0
            while True:
                await asyncio.sleep(delay)
                current = self._consumers.get(c.name)
                if c.subject not in self._wanted or current not in (c, None) \
                        or (current is c and not c.active):
                    return  # given up, or recreated meanwhile
                try:
                    await self.consume(c.subject)
                    return
                except Exception as exc:  # JetStream electing a leader: again, until it works
                    log.warning("%s: could not recreate the consumer: %s", c.name, exc)
                    delay = min(2 * delay, 5.0)

        task = asyncio.get_running_loop().create_task(replay())
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)

    async def _js_tick(self) -> None:
        """Once a second: fail durable publishes whose PubAck is overdue; renew pulls that
        got no answer (a request lost in a reconnect)."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            pending = self._pending
            expired = [seq for seq, (_on_fail, sent) in pending.items()
                       if now - sent >= PUBACK_TIMEOUT_S]  # a held one (sent: inf) never
            for seq in expired:
                if seq in self._chunks:  # with every publish it carried
                    self._chunk_done(seq, False, b"no PubAck in time")
            for seq in expired:
                entry = pending.pop(seq, None)
                if entry is None:
                    continue
                on_fail = entry[0]
                self._failures.inc()
                self._durable_failures += 1
                if on_fail is not None:
                    on_fail()
            if expired:
                log.warning("%d durable publishes got no PubAck in %.0f s", len(expired),
                            PUBACK_TIMEOUT_S)
                self._advance()
            for c in self._consumers.values():
                if c.active and now - c.last_seen > streams.PULL_EXPIRES_S + 5:
                    c.credit = 0
                    self._pull(c)
            if self._held:
                self._in_progress(now)

    def _in_progress(self, now: float) -> None:
        """Held messages delivered a third of ``ack_wait`` ago (or last told so): ``+WPI``, so
        the server does not deliver them again while their stanzas wait (a link being set
        up, a peer slow to ack); oldest first, the dict's order."""
        held = self._held
        due = []
        for h in held.values():
            if now - h.since < streams.ACK_WAIT_S / 3:
                break
            due.append(h)
        for h in due:
            del held[h.reply]
            held[h.reply] = h  # to the end: the order stays by `since`
            h.since = now
            if self._consumers.get(h.consumer.name) is h.consumer:
                self._queue(h.reply, b"+WPI", None, "")

    async def close(self) -> None:
        """Hand every queued publish to NATS, drain subscriptions, finish the inbox, close the
        connection: nothing a service accepted is dropped by stopping."""
        for subject in list(self._offered):
            self.withdraw_local(subject)
        for subject in list(self._routes):
            self.local_withdrawn(subject)
        self._exchange.leave(self.local_id)
        if self._outbox:
            with contextlib.suppress(Exception):
                self._write_outbox()
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
        if self._js_timer is not None:
            self._js_timer.cancel()
        BUS_CONNECTED.labels(self._service).set(0)


def _pack_durable(batch: list[tuple[str, bytes, OnFail, str | None]], families: frozenset[str]
                  ) -> list[tuple[str, bytes, OnFail, str | None]]:
    """One stream message for the durable publishes of one subject in ``batch``
    (``streams.pack``, at the place of the first; up to MULTI_MAX_BYTES/COUNT each), with one
    ``on_fail`` calling theirs.  The order per subject is kept (RFC 6120 §10.1); NATS keeps
    no order across subjects, so none is lost by moving a later one up."""
    groups: dict[str, list[int]] = {}
    for i, (subject, _data, _on_fail, reply) in enumerate(batch):
        if reply is None and streams.family(subject) in families:
            groups.setdefault(subject, []).append(i)
    if len(groups) == sum(map(len, groups.values())):
        return batch  # one message per subject: nothing to pack
    out: list[tuple[str, bytes, OnFail, str | None] | None] = list(batch)
    for subject, members in groups.items():
        if len(members) == 1:
            continue
        chunk: list[int] = []
        size = 0
        for i in [*members, -1]:
            n = len(batch[i][1]) if i >= 0 else 0
            if chunk and (i < 0 or size + n > streams.MULTI_MAX_BYTES
                          or len(chunk) >= streams.MULTI_MAX_COUNT):
                if len(chunk) > 1:
                    fails = [batch[j][2] for j in chunk if batch[j][2] is not None]
                    out[chunk[0]] = (subject, streams.pack([batch[j][1] for j in chunk]),
                                     _all(fails) if fails else None, None)
                    for j in chunk[1:]:
                        out[j] = None
                chunk, size = [], 0
            if i >= 0:
                chunk.append(i)
                size += n
    return [entry for entry in out if entry is not None]


def _all(fails: list[Callable[[], None]]) -> Callable[[], None]:
    def call() -> None:
        for fail in fails:
            fail()
    return call


def _direct_writer(nc: Client) -> Any:
    """The socket's StreamWriter when the outbox may be written to it at once: connected,
    nothing of nats-py's own waiting in its buffer, and the socket not backed up."""
    if not nc.is_connected or nc._pending:
        return None
    writer = getattr(nc._transport, "_io_writer", None)
    if writer is None:
        return None
    transport = writer.transport
    if transport.is_closing() or transport.get_write_buffer_size() > MAX_DIRECT_BUFFER_BYTES:
        return None
    return writer
