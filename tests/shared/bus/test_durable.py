"""Durable delivery on a real nats-server with JetStream (shared/bus/client.py, streams.py):
stored before any consumer exists, PubAcks batched, and a take-over replays what the dead
consumer had not acked, first and in order (RFC 6120 §10.1)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import localservers
from shared.bus import streams, subjects
from shared.bus.client import Bus, Hold
from shared.bus.streams import StreamLimits

TIMEOUT_S = 20.0  # hang guard only
LIMITS = StreamLimits(memory=True)


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    port = localservers.free_port()
    with tempfile.TemporaryDirectory(prefix="stanzad-js-") as workdir:
        proc = localservers.start(localservers.nats_command(port, Path(workdir)))
        try:
            localservers.wait_port("127.0.0.1", port, proc=proc)
            yield f"nats://127.0.0.1:{port}"
        finally:
            localservers.stop(proc)


async def _until(predicate: object, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


class Consumer:
    def __init__(self, nats_url: str, name: str, stall_after: int | None = None) -> None:
        self.got: list[bytes] = []
        self.stall_after = stall_after
        self.bus = Bus(nats_url, name, self.handle, durable=True, limits=LIMITS)

    async def handle(self, batch: list[tuple[str, bytes]]) -> None:
        for _subject, data in batch:
            if self.stall_after is not None and len(self.got) >= self.stall_after:
                await asyncio.Event().wait()  # a consumer that hangs, then is killed
            self.got.append(data)


async def test_published_before_any_consumer_is_delivered_once_one_consumes(
    nats_url: str,
) -> None:
    subject = subjects.route(3)
    tx = Bus(nats_url, "tx", durable=True, limits=LIMITS)
    await tx.connect()
    failed: list[int] = []
    n = 300
    for i in range(n):
        tx.publish_soon(subject, b"m%d" % i, lambda i=i: failed.append(i))
    stored = asyncio.Event()
    tx.when_stored(tx.stored_mark(), stored.set)
    await asyncio.wait_for(stored.wait(), TIMEOUT_S)  # every PubAck, none awaited alone
    assert not failed
    rx = Consumer(nats_url, "rx")
    await rx.bus.connect()
    await rx.bus.consume(subject)
    await _until(lambda: len(rx.got) >= n, "every stored message delivered")
    assert rx.got == [b"m%d" % i for i in range(n)]
    await rx.bus.stop_consuming(subject)  # acked and confirmed: nothing left to replay
    again = Consumer(nats_url, "again")
    await again.bus.connect()
    await again.bus.consume(subject)
    tx.publish_soon(subject, b"after")
    await _until(lambda: again.got, "the next message")
    assert again.got == [b"after"]
    for bus in (tx, rx.bus, again.bus):
        await bus.close()


async def test_takeover_replays_the_unacked_first_and_in_order(nats_url: str) -> None:
    subject = subjects.presence(5)
    tx = Bus(nats_url, "tx", durable=True, limits=LIMITS)
    await tx.connect()
    first = Consumer(nats_url, "first", stall_after=40)
    await first.bus.connect()
    await first.bus.consume(subject)
    n = 0
    for _ in range(100):
        tx.publish_soon(subject, b"%d" % n)
        n += 1
    await _until(lambda: len(first.got) >= 40, "the first consumer stalling")
    await asyncio.sleep(0.3)  # acks of what it handled have left
    assert first.bus._nc is not None
    await first.bus._nc.close()  # killed: what it took and did not ack stays in the stream
    second = Consumer(nats_url, "second")
    await second.bus.connect()
    await second.bus.consume(subject)
    for _ in range(50):
        tx.publish_soon(subject, b"%d" % n)
        n += 1
    await _until(lambda: second.got and second.got[-1] == b"%d" % (n - 1), "the last one")
    handled = [int(x) for x in first.got]
    replayed = [int(x) for x in second.got]
    assert handled == list(range(40))
    # the second starts at the first one's ack boundary (what it handled in a batch it never
    # finished is not acked: at-least-once), then everything, once, in order
    start = replayed[0]
    assert start <= 40
    assert replayed == list(range(start, n)), replayed
    for bus in (tx, second.bus):
        await bus.close()


async def test_an_output_not_stored_replays_the_batch_instead_of_acking_it(
    nats_url: str,
) -> None:
    """A handler's durable publish that fails (refused, error or missing PubAck) must not let
    its input be acked: the consumer is recreated and the batch comes again, first."""
    subject = subjects.roster(6)
    tx = Bus(nats_url, "tx", durable=True, limits=LIMITS)
    await tx.connect()
    rx = Consumer(nats_url, "rx")
    calls = 0

    async def handle(batch: list[tuple[str, bytes]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            rx.bus._durable_failures += 1  # as a refused or failed PubAck counts it
        rx.got.extend(data for _subject, data in batch)

    rx.bus._handler = handle
    await rx.bus.connect()
    for i in range(20):
        tx.publish_soon(subject, b"%d" % i)
    await tx.flush()
    await rx.bus.consume(subject)
    await _until(lambda: rx.got.count(b"19") >= 1 and rx.got.count(b"0") == 2
                 and rx.got[-1] == b"19", "a replay")
    got = [int(x) for x in rx.got]
    before = got[: len(got) - 20]  # what came before the consumer was recreated
    assert before == list(range(len(before))) and before  # the failed batch (and any after)
    assert got[len(before):] == list(range(20))  # all again, in order: none of it was acked
    for bus in (tx, rx.bus):
        await bus.close()


async def test_one_ticks_publishes_to_a_partition_are_stored_packed_and_delivered_in_order(
    nats_url: str,
) -> None:
    """Publishes to one partition in one tick become one stream message per MULTI_MAX_COUNT
    (one store, PubAck, delivery and ack for all); the consumer gets every stanza, in each
    subject's order (RFC 6120 §10.1), and the pack is acked only once all were handled."""
    a, b = subjects.route(9), subjects.route(10)
    tx = Bus(nats_url, "tx", durable=True, limits=LIMITS)
    await tx.connect()
    stream = "$JS.API.STREAM.INFO." + streams.stream_name("route")
    before = (await tx._api(stream))["state"]["messages"]
    failed: list[int] = []
    n = 150  # per subject: a pack of MULTI_MAX_COUNT and one of the rest
    for i in range(n):
        tx.publish_soon(a, b"a%d" % i, lambda i=i: failed.append(i))
        tx.publish_soon(b, b"b%d" % i, lambda i=i: failed.append(i))
    stored = asyncio.Event()
    tx.when_stored(tx.stored_mark(), stored.set)
    await asyncio.wait_for(stored.wait(), TIMEOUT_S)
    assert not failed
    assert (await tx._api(stream))["state"]["messages"] - before == 4
    rx = Consumer(nats_url, "rx")
    await rx.bus.connect()
    await rx.bus.consume(a)
    await rx.bus.consume(b)
    await _until(lambda: len(rx.got) >= 2 * n, "every stanza")
    assert [x for x in rx.got if x[:1] == b"a"] == [b"a%d" % i for i in range(n)]
    assert [x for x in rx.got if x[:1] == b"b"] == [b"b%d" % i for i in range(n)]
    await rx.bus.stop_consuming(a)
    await rx.bus.stop_consuming(b)
    await _until(lambda: not rx.bus._consumers, "given up")
    after = (await tx._api(stream))["state"]["messages"]
    assert after == before  # every pack acked, so the work queue dropped it
    for bus in (tx, rx.bus):
        await bus.close()


def test_pack_and_unpack_keep_every_part_in_order() -> None:
    parts = [b"", b"1\x00message\x00x", b"\n\n", b"y" * 70_000]
    assert streams.unpack(streams.pack(parts)) == parts
    with pytest.raises(ValueError):
        streams.unpack(streams.pack(parts)[:-1])


async def test_a_restarted_nats_server_forgets_the_consumer_and_the_owner_recreates_it() -> None:
    """Consumer state lives in nats-server's memory (streams.consumer_config); the stream's
    file keeps the messages.  After a restart the owner recreates its consumer on
    reconnect, so what was stored reaches it, in order, and nothing stalls."""
    port = localservers.free_port()
    url = f"nats://127.0.0.1:{port}"
    file_limits = StreamLimits(memory=False)
    subject = subjects.roster(11)
    with tempfile.TemporaryDirectory(prefix="stanzad-js-") as workdir:
        cmd = localservers.nats_command(port, Path(workdir))
        proc = localservers.start(cmd)
        try:
            localservers.wait_port("127.0.0.1", port, proc=proc)
            rx = Consumer(url, "rx")
            rx.bus._limits = file_limits
            await rx.bus.connect()
            await rx.bus.consume(subject)
            tx = Bus(url, "tx", durable=True, limits=file_limits)
            await tx.connect()
            for i in range(10):
                tx.publish_soon(subject, b"%d" % i)
            await _until(lambda: len(rx.got) >= 10, "the first ten")
            before = rx.bus._consumers["roster-11"]
            localservers.stop(proc)
            proc = localservers.start(cmd)
            localservers.wait_port("127.0.0.1", port, proc=proc)
            await _until(lambda: rx.bus._consumers.get("roster-11") not in (None, before),
                         "the consumer recreated")
            stored = asyncio.Event()
            for i in range(10, 30):
                tx.publish_soon(subject, b"%d" % i)
            tx.when_stored(tx.stored_mark(), stored.set)
            await asyncio.wait_for(stored.wait(), TIMEOUT_S)
            await _until(lambda: rx.got and rx.got[-1] == b"29", "the ones after the restart")
            got = [int(x) for x in rx.got]
            assert got[:10] == list(range(10))
            rest = got[10:]  # a replay of the tail of the first ten may come first
            assert rest == list(range(rest[0], 30)) and rest[0] <= 10, got
            for bus in (tx, rx.bus):
                await bus.close()
        finally:
            localservers.stop(proc)


# ---- holds: an ack that waits for the handler's work (the s2s gateway's links) -------------


class Holding(Consumer):
    """Takes a hold (Bus.hold) on every item whose payload starts with ``b"h"``."""

    def __init__(self, nats_url: str, name: str) -> None:
        super().__init__(nats_url, name)
        self.holds: dict[bytes, Hold] = {}

    async def handle(self, batch: list[tuple[str, bytes]]) -> None:
        for i, (_subject, data) in enumerate(batch):
            self.got.append(data)
            if data.startswith(b"h"):
                self.holds[data] = self.bus.hold(i)


async def _stored(bus: Bus, subject: str) -> int:
    """Messages of ``subject`` still in its (work-queue) stream: not acked yet."""
    fam = streams.family(subject)
    assert fam is not None
    return (await bus.subject_counts(fam)).get(subject, 0)


async def _until_stored(bus: Bus, subject: str, n: int, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while await _stored(bus, subject) != n:
        if loop.time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def test_a_held_message_is_acked_once_its_holds_are_settled_the_others_at_once(
    nats_url: str,
) -> None:
    subject = subjects.s2s(12)
    tx = Bus(nats_url, "tx", durable=True, limits=LIMITS)
    await tx.connect()
    for data in (b"a0", b"h1", b"a2"):  # three stream messages
        await tx.publish(subject, data)
        await tx.flush()
    for i in range(5):  # one tick: one pack of five, two parts held
        tx.publish_soon(subject, b"h%d" % (10 + i) if i in (1, 3) else b"p%d" % i)
    await tx.flush()
    rx = Holding(nats_url, "rx")
    await rx.bus.connect()
    await rx.bus.consume(subject)
    await _until(lambda: len(rx.got) >= 8, "every item")
    await _until_stored(tx, subject, 2, "the unheld acked, the held kept")
    rx.holds[b"h1"].settle()
    await _until_stored(tx, subject, 1, "h1's message acked once settled")
    rx.holds[b"h11"].settle()
    await asyncio.sleep(0.3)  # the pack has one more hold: it must stay
    assert await _stored(tx, subject) == 1
    rx.holds[b"h13"].settle()
    await _until_stored(tx, subject, 0, "the pack acked once both holds settled")
    assert rx.bus.held == 0 and rx.got == [b"a0", b"h1", b"a2", b"p0", b"h11", b"p2",
                                            b"h13", b"p4"]
    for bus in (tx, rx.bus):
        await bus.close()


async def test_an_abandoned_hold_leaves_the_message_for_the_next_owner(nats_url: str) -> None:
    subject = subjects.s2s(13)
    tx = Bus(nats_url, "tx", durable=True, limits=LIMITS)
    await tx.connect()
    await tx.publish(subject, b"h0")
    await tx.publish(subject, b"a1")
    await tx.flush()
    first = Holding(nats_url, "first")
    await first.bus.connect()
    await first.bus.consume(subject)
    await _until(lambda: len(first.got) >= 2, "both")
    first.holds[b"h0"].abandon()
    await asyncio.wait_for(first.bus.stop_consuming(subject), TIMEOUT_S)
    assert await _stored(tx, subject) == 1
    second = Consumer(nats_url, "second")
    await second.bus.connect()
    await second.bus.consume(subject)
    await _until(lambda: second.got, "the replay")
    await _until_stored(tx, subject, 0, "acked by the next owner")
    assert second.got == [b"h0"]
    for bus in (tx, first.bus, second.bus):
        await bus.close()


async def test_a_hold_longer_than_ack_wait_is_kept_in_progress_not_redelivered(
    nats_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A link set up for longer than the consumer's ack_wait: the bus tells the server the
    message is in progress (+WPI), so it is not delivered a second time meanwhile."""
    monkeypatch.setattr(streams, "ACK_WAIT_S", 3.0)
    subject = subjects.s2s(14)
    tx = Bus(nats_url, "tx", durable=True, limits=LIMITS)
    await tx.connect()
    await tx.publish(subject, b"h0")
    await tx.flush()
    rx = Holding(nats_url, "rx")
    await rx.bus.connect()
    await rx.bus.consume(subject)
    await _until(lambda: rx.got, "the message")
    await asyncio.sleep(3 * streams.ACK_WAIT_S)  # three times ack_wait, held all along
    assert rx.got == [b"h0"], "delivered again while held"
    rx.holds[b"h0"].settle()
    await _until_stored(tx, subject, 0, "acked once settled")
    for bus in (tx, rx.bus):
        await bus.close()


async def test_a_paused_consumer_is_not_pulled_until_resumed(nats_url: str) -> None:
    subject = subjects.s2s(15)
    tx = Bus(nats_url, "tx", durable=True, limits=LIMITS)
    await tx.connect()
    for i in range(20):
        await tx.publish(subject, b"%d" % i)
    await tx.flush()
    rx = Consumer(nats_url, "rx")
    await rx.bus.connect()
    rx.bus.pause(subject)
    await rx.bus.consume(subject)
    await asyncio.sleep(0.5)  # a pull would bring them in milliseconds
    assert rx.got == []
    rx.bus.resume(subject)
    await _until(lambda: len(rx.got) >= 20, "all once resumed")
    assert rx.got == [b"%d" % i for i in range(20)]


async def _replays_to_a_connection_manager(nats_url: str, ordered: bool) -> list[int]:
    """A router-like consumer (route partition in, one output each to a connection
    manager's deliveries subject) whose output number K is refused by the stream (bigger
    than its max_msg_size: deterministic, like a stream without a leader) while the outputs
    after it are pipelined behind; the limit is lifted once the failure is seen, so the
    replay goes through.  Returns what a connection manager consuming the stream delivers
    with its replay check: an output not newer than the last delivered is dropped as a copy
    (services/connection_manager, (origin, ts_us))."""
    k, n = 10, 30
    limits = StreamLimits(memory=True, deliveries=True)
    subject, out = subjects.route(12), subjects.connection_manager(f"replay{int(ordered)}")
    tx = Bus(nats_url, "tx", durable=True, limits=limits)
    await tx.connect()
    for i in range(n):
        tx.publish_soon(subject, b"%d" % i)
    await tx.flush()

    async def handle(batch: list[tuple[str, bytes]]) -> None:
        for _subject, data in batch:
            i = int(data)
            router.publish_soon(out, b"%d " % i + (b"x" * 2000 if i == k else b""))
            await asyncio.sleep(0)  # written now: one stream message each, pipelined

    router = Bus(nats_url, "router", handle, durable=True, limits=limits,
                 ordered_outputs=ordered)
    await router.connect()  # sets the stream's configuration to its own: limit it after
    info = await tx._api("$JS.API.STREAM.INFO." + streams.stream_name("cm"))
    config = dict(info["config"], max_msg_size=1000)
    update = "$JS.API.STREAM.UPDATE." + streams.stream_name("cm")
    assert not (await tx._api(update, config)).get("error")
    await router.consume(subject)
    await _until(lambda: router._durable_failures > 0, "output K refused")
    assert not (await tx._api(update, dict(config, max_msg_size=-1))).get("error")
    await _until(lambda: not router._replays and not router._pending
                 and all(c.unacked == 0 and not c.broken
                         for c in router._consumers.values()), "the replay done")
    stored: list[int] = []
    for _seq, payload in await tx.read_subject(out):
        parts = streams.unpack(payload) if payload.startswith(streams.MULTI_PREFIX) \
            else [payload]
        stored.extend(int(p.split(b" ")[0]) for p in parts)
    delivered: list[int] = []
    for i in stored:  # the connection manager's check: not newer than the last is a copy
        if not delivered or i > delivered[-1]:
            delivered.append(i)
    for bus in (tx, router):
        await bus.close()
    return delivered


async def test_no_output_stored_after_a_refused_one_before_its_replay(nats_url: str) -> None:
    """RFC 6120 §10.1 and zero loss across a refused output (a stream electing a leader
    after a NATS node died): nothing later to that subject is stored before the replay
    publishes the refused one again; the copies the replay makes of what was stored are
    dropped by the receiver, and nothing is missing.  Without ordered outputs the later
    outputs were stored first and the replayed one was dropped as not newer: lost."""
    assert await _replays_to_a_connection_manager(nats_url, ordered=True) == list(range(30))


async def test_without_ordered_outputs_the_replayed_output_is_dropped(nats_url: str) -> None:
    """The same with the publisher of before (a bus whose outputs are bounced, not
    replayed, like a connection manager's): the refused output is overtaken, so this
    check would lose it; what makes the test above able to fail."""
    delivered = await _replays_to_a_connection_manager(nats_url, ordered=False)
    assert 10 not in delivered and delivered == [i for i in range(30) if i != 10]


async def test_a_replay_whose_consumer_cannot_be_recreated_yet_is_tried_again(
    nats_url: str,
) -> None:
    """A replay that finds JetStream not answering (a stream electing a leader after a NATS
    node died) tries again until the consumer is recreated: given up after one try, the
    partition was consumed by no one until its next take-over (seen as every message from
    a NATS kill on lost in `loadtest/durable_faults.py`)."""
    subject = subjects.roster(8)
    tx = Bus(nats_url, "tx", durable=True, limits=LIMITS)
    await tx.connect()
    rx = Consumer(nats_url, "rx")
    calls = 0

    async def handle(batch: list[tuple[str, bytes]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            rx.bus._durable_failures += 1  # an output not stored: the batch replays
        rx.got.extend(data for _subject, data in batch)

    rx.bus._handler = handle
    await rx.bus.connect()
    api = rx.bus._api
    refused: list[str] = []

    async def flaky(subject: str, body: dict[str, object] | None = None) -> dict[str, object]:
        if calls >= 1 and "CONSUMER.DELETE" in subject and len(refused) < 2:
            refused.append(subject)
            raise TimeoutError("nats: timeout")  # as while the stream has no leader
        return await api(subject, body)

    rx.bus._api = flaky  # type: ignore[method-assign]
    for i in range(20):
        tx.publish_soon(subject, b"%d" % i)
    await tx.flush()
    await rx.bus.consume(subject)
    await _until(lambda: rx.got.count(b"0") == 2 and rx.got[-1] == b"19", "the replay")
    assert len(refused) == 2
    assert [int(x) for x in rx.got[-20:]] == list(range(20))
    for bus in (tx, rx.bus):
        await bus.close()


def test_a_session_log_subject_names_its_connection_manager_jid_and_session() -> None:
    subject = subjects.sm_log("cm-a", "juliet@example.com/balcony", "Ab_-9")
    assert subject == "stanzad.smlog.cm-a.juliet_40example_2ecom_2fbalcony.Ab_-9"
    assert streams.family(subject) == "smlog"
    assert streams.family(subjects.sm_log_marker("cm-a")) == "smlog"
    assert subjects.sm_log_parts(subject) == ("cm-a", "juliet@example.com/balcony", "Ab_-9")
    assert subjects.sm_log_parts(subjects.sm_log_marker("cm-a")) is None
    assert streams.family(subjects.route(3)) == "route"
    assert streams.family("stanzad.sess.3") is None


async def test_a_session_log_is_listed_per_connection_manager_and_read_in_batches(
    nats_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """The logs a dead connection manager left are one subject filter away; a log longer
    than one DIRECT.GET batch is read whole, in order, and from a sequence on."""
    limits = StreamLimits(memory=True, deliveries=True, log_max_age_s=60)
    bus = Bus(nats_url, "cm", durable=True, limits=limits)
    await bus.connect()
    mine = subjects.sm_log("cm-x", "a@localhost/r", "s1")
    other = subjects.sm_log("cm-y", "a@localhost/r", "s2")
    bus.publish_soon(subjects.sm_log_marker("cm-x"), b"")
    n = 600  # more than two batches (READ_BATCH)
    for i in range(n):
        bus.publish_soon(mine, b"e%d" % i)
        await asyncio.sleep(0)  # one stream message each: not packed in one tick
    bus.publish_soon(other, b"o")
    stored = asyncio.Event()
    bus.when_stored(bus.stored_mark(), stored.set)
    await asyncio.wait_for(stored.wait(), TIMEOUT_S)
    assert await bus.subject_counts("smlog", subjects.sm_logs_of("cm-x")) == {mine: n}
    assert subjects.sm_log_marker("cm-x") in await bus.subject_counts(
        "smlog", subjects.SM_LOG_MARKERS)
    read = await bus.read_subject(mine)
    assert [data for _, data in read] == [b"e%d" % i for i in range(n)]
    rest = await bus.read_subject(mine, read[n - 11][0])
    assert [data for _, data in rest] == [b"e%d" % i for i in range(n - 10, n)]
    assert "one by one" not in caplog.text  # the batches, not the fallback
    await bus.purge(mine)
    assert await bus.read_subject(mine) == []
    await bus.close()


async def test_a_delivery_lost_on_the_way_is_replayed_before_anything_after_it(
    nats_url: str,
) -> None:
    """A pulled message that never arrives (sent by a consumer leader that was killed): the
    consumer counts it delivered and would send it again only after ack_wait (300 s),
    behind later ones, where a receiver's replay check drops it (not newer).  The bus sees
    the gap in the consumer sequence and replays from the oldest unacked at once: what a
    receiver with that check keeps is every message, in order (RFC 6120 §10.1)."""
    subject = subjects.connection_manager("gap")
    limits = StreamLimits(memory=True, deliveries=True)
    tx = Bus(nats_url, "tx", durable=True, limits=limits)
    await tx.connect()
    got: list[int] = []

    async def handle(batch: list[tuple[str, bytes]]) -> None:
        got.extend(int(data) for _subject, data in batch)

    rx = Bus(nats_url, "rx", handle, durable=True, limits=limits)
    await rx.connect()
    assert rx._nc is not None
    sink = rx._nc.js_sink
    assert sink is not None
    lost: list[bytes] = []

    def lossy(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if reply.startswith(b"$JS.ACK.") and data == b"5" and not lost:
            lost.append(data)  # gone with the node that sent it
            return
        sink(subject, reply, data, headers)

    rx._nc.js_sink = lossy
    await rx.consume(subject)
    for i in range(20):
        tx.publish_soon(subject, b"%d" % i)
        await tx.flush()  # one stream message each (no pack)
    await _until(lambda: got and got[-1] == 19 and 5 in got, "every message")
    assert lost == [b"5"]
    delivered: list[int] = []
    for i in got:  # the connection manager's check: not newer than the last is a copy
        if not delivered or i > delivered[-1]:
            delivered.append(i)
    assert delivered == list(range(20)), got
    for bus in (tx, rx):
        await bus.close()


async def test_a_batch_that_cannot_be_handled_now_replays_first_and_in_order(
    nats_url: str,
) -> None:
    """``replay_batch`` (the router when Redis is away): nothing of the batch is acked, what
    of its consumer waits in the inbox is dropped, and all of it comes again, in order,
    before anything later (a bounce would need Redis to find the sender)."""
    subject = subjects.route(13)
    tx = Bus(nats_url, "tx", durable=True, limits=LIMITS)
    await tx.connect()
    got: list[int] = []
    refused = 0

    async def handle(batch: list[tuple[str, bytes]]) -> None:
        nonlocal refused
        for _subject, data in batch:
            if int(data) == 5 and refused < 2:  # the store away, twice
                refused += 1
                await asyncio.sleep(0.3)  # what comes meanwhile waits in the inbox
                rx.replay_batch()
                return
            got.append(int(data))

    rx = Bus(nats_url, "rx", handle, durable=True, limits=LIMITS, ordered_outputs=True)
    await rx.connect()
    await rx.consume(subject)
    for i in range(20):
        tx.publish_soon(subject, b"%d" % i)
        await tx.flush()  # one stream message each
    await _until(lambda: got and got[-1] == 19, "every message")
    assert refused == 2
    delivered: list[int] = []
    for i in got:  # a receiver's replay check: not newer than the last is a copy
        if not delivered or i > delivered[-1]:
            delivered.append(i)
    assert delivered == list(range(20)), got
    for bus in (tx, rx):
        await bus.close()
