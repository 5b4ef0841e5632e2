"""The in-process hand-off between buses of one process (shared/bus/local.py), on a real
nats-server: order per publisher and subject across the switch to the in-process path, back
to NATS on withdrawal, and the fallback when the marker never comes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shared.bus.client import Bus
from shared.bus.local import HOLD_TIMEOUT_S, Exchange
from tests.shared.bus.test_client import _until, nats_url  # noqa: F401 (fixture)

Got = list[tuple[str, bytes]]


@pytest.fixture
async def pair(nats_url: str) -> AsyncIterator[tuple[Bus, Bus, Got, Exchange]]:  # noqa: F811
    got: Got = []

    async def handler(batch: Got) -> None:
        got.extend(batch)

    exchange = Exchange()  # not the process-wide one: this test's buses only
    rx = Bus(nats_url, "rx", handler, exchange=exchange)
    tx = Bus(nats_url, "tx", exchange=exchange)
    await rx.connect()
    await tx.connect()
    yield rx, tx, got, exchange
    await tx.close()
    await rx.close()


async def test_order_kept_across_the_switch_to_the_in_process_path(
    pair: tuple[Bus, Bus, Got, Exchange],
) -> None:
    rx, tx, got, _ = pair
    await rx.subscribe("t.x")
    await rx.flush()
    expected = []
    for i in range(200):  # over NATS: nothing is offered yet
        tx.publish_soon("t.x", b"%d" % i)
        expected.append(("t.x", b"%d" % i))
    rx.offer_local("t.x")
    for i in range(200, 1200):  # marker, held, then in-process
        tx.publish_soon("t.x", b"%d" % i)
        expected.append(("t.x", b"%d" % i))
        if i % 100 == 0:
            await asyncio.sleep(0.005)
    await _until(lambda: len(got) >= len(expected))
    assert got == expected
    assert tx._local_n.n > 500  # most of the second part never touched NATS


async def test_withdrawal_goes_back_to_nats_in_order(
    pair: tuple[Bus, Bus, Got, Exchange],
) -> None:
    rx, tx, got, _ = pair
    await rx.subscribe("t.w")
    await rx.flush()
    rx.offer_local("t.w")
    expected = []
    for i in range(600):
        if i == 300:
            rx.withdraw_local("t.w")  # what a partition hand-over does first
            local_before = tx._local_n.n
        await tx.publish("t.w", b"%d" % i)  # the awaited path takes the same turns
        expected.append(("t.w", b"%d" % i))
        if i % 50 == 0:
            await asyncio.sleep(0.005)
    await tx.flush()
    await _until(lambda: len(got) >= len(expected))
    assert got == expected
    assert tx._local_n.n == local_before  # nothing in-process after the withdrawal


async def test_a_marker_that_never_comes_back_releases_the_held_messages_over_nats(
    pair: tuple[Bus, Bus, Got, Exchange],
) -> None:
    rx, tx, got, exchange = pair
    await rx.subscribe("t.m")
    await rx.flush()
    # offered by somebody who never sees NATS traffic of t.m: the marker reaches rx, which
    # did not offer it, so it is ignored
    exchange.offer("t.m", lambda subject, data: None)
    for i in range(50):
        tx.publish_soon("t.m", b"%d" % i)
    await asyncio.sleep(0.3)
    assert got == []  # held behind the marker
    await _until(lambda: len(got) >= 50, timeout=HOLD_TIMEOUT_S + 10)
    assert got == [("t.m", b"%d" % i) for i in range(50)]
    tx.publish_soon("t.m", b"after")  # no new marker for a while: straight over NATS
    await _until(lambda: len(got) >= 51)
    assert got[-1] == ("t.m", b"after")
    assert tx._local_n.n == 0
