"""The NATS adapter's short paths (shared/bus/client.py) against a real nats-server.

They use nats-py internals; the first test fails loudly when an upgrade moves them."""

from __future__ import annotations

import asyncio
import inspect
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from devtools import localservers
from shared.bus.client import Bus, BusUnavailable, _BusClient


def test_the_nats_py_internals_the_bus_uses_are_there() -> None:
    nc = _BusClient()
    for name in ("_pending", "_pending_data_size", "_max_pending_size", "_subs", "stats",
                 "_max_payload", "_flush_queue", "_transport", "_flush_pending"):
        assert hasattr(nc, name), name
    params = list(inspect.signature(Client._process_msg).parameters)
    assert params == ["self", "sid", "subject", "reply", "data", "headers"]
    assert hasattr(Client, "is_draining_pubs")


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    port = localservers.free_port()
    with tempfile.TemporaryDirectory(prefix="stanzad-bus-") as workdir:
        proc = localservers.start(localservers.nats_command(port, Path(workdir)))
        try:
            localservers.wait_port("127.0.0.1", port, proc=proc)
            yield f"nats://127.0.0.1:{port}"
        finally:
            localservers.stop(proc)


@pytest.fixture
async def buses(nats_url: str) -> AsyncIterator[tuple[Bus, Bus, list[tuple[str, bytes]]]]:
    got: list[tuple[str, bytes]] = []

    async def handler(batch: list[tuple[str, bytes]]) -> None:
        got.extend(batch)

    rx = Bus(nats_url, "rx", handler)
    tx = Bus(nats_url, "tx")
    await rx.connect()
    await tx.connect()
    await _both_ways_live(rx, tx, got)
    yield rx, tx, got
    await tx.close()
    await rx.close()


async def _both_ways_live(rx: Bus, tx: Bus, got: list[tuple[str, bytes]]) -> None:
    """A probe from tx has reached rx's handler before a test counts what arrives.  It also
    leaves nats-py's flusher as a busy bus has it, which is how the first test below caught
    `Bus.flush` returning before the server had seen a SUB (nats-py writes its PING ahead of
    its own pending commands): the first messages of every run went missing."""
    sub = await rx.subscribe("t.probe")
    await rx.flush()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not got:
        await tx.publish("t.probe", b"probe")
        await tx.flush()
        for _ in range(10):
            if got:
                break
            await asyncio.sleep(0.01)
        if loop.time() > deadline:
            nc_rx, nc_tx = rx._nc, tx._nc
            raise RuntimeError(
                f"no probe arrived: tx {nc_tx.stats if nc_tx else None}, "
                f"rx {nc_rx.stats if nc_rx else None}, rx inbox {len(rx._inbox)}, "
                f"rx worker {rx._worker}"
            )
    await sub.unsubscribe()
    await rx.flush()
    await asyncio.sleep(0.05)  # late probes of the loop above land before the test starts
    got.clear()


async def _until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_publish_soon_and_publish_keep_one_order(
    buses: tuple[Bus, Bus, list[tuple[str, bytes]]],
) -> None:
    rx, tx, got = buses
    await rx.subscribe("t.a")
    await rx.subscribe("t.b")
    await rx.flush()
    expected = []
    for i in range(300):
        subject = "t.a" if i % 3 else "t.b"
        data = f"m{i}".encode()
        expected.append((subject, data))
        if i % 50 == 49:
            await tx.publish(subject, data)  # awaited publishes go after the queued ones
        else:
            tx.publish_soon(subject, data)
    await tx.flush()
    await _until(lambda: len(got) >= len(expected))
    assert got == expected


async def test_large_batches_and_payloads_arrive_whole(
    buses: tuple[Bus, Bus, list[tuple[str, bytes]]],
) -> None:
    rx, tx, got = buses
    await rx.subscribe("t.big")
    await rx.flush()
    payloads = [bytes([i % 251]) * (i * 997 % 70_000) for i in range(200)]
    for p in payloads:
        tx.publish_soon("t.big", p)
    await _until(lambda: len(got) >= len(payloads))
    assert [d for _, d in got] == payloads


async def test_unsubscribed_subjects_are_not_delivered(
    buses: tuple[Bus, Bus, list[tuple[str, bytes]]],
) -> None:
    rx, tx, got = buses
    sub = await rx.subscribe("t.gone")
    await rx.flush()
    tx.publish_soon("t.gone", b"1")
    await _until(lambda: len(got) == 1)
    await sub.unsubscribe()
    await rx.flush()
    tx.publish_soon("t.gone", b"2")
    await tx.flush()
    await asyncio.sleep(0.2)
    assert got == [("t.gone", b"1")]


async def test_publish_soon_reports_what_nats_cannot_take(nats_url: str) -> None:
    bus = Bus(nats_url, "closed-tx", fail_while_disconnected=True)
    await bus.connect()
    await bus.close()
    failed: list[int] = []
    bus.publish_soon("t.x", b"1", lambda: failed.append(1))
    await asyncio.sleep(0.05)
    assert failed == [1]
    with pytest.raises(BusUnavailable):
        await bus.publish("t.x", b"2")
