"""The session index of a connection manager (shared/store/cm_index.py): `flush` waits for
the changes made before it was called, not for those made after (under a stream of binds
the writer never idles, and each bind waits for its own entry)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.store import keys
from shared.store.cm_index import CmIndex
from shared.store.redis import connect as redis_connect
from tests.support.cluster import Cluster


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[aioredis.Redis]:
    r = redis_connect(cluster.redis_url)
    yield r
    await r.aclose()


class StuckAfterFirst:
    """The tick pipeline, except that writes naming "later@" never complete."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.stuck = asyncio.Event()

    async def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        if any("later@" in str(part) for command in commands for part in command):
            self.stuck.set()
            await asyncio.Event().wait()  # never
        return list(await self.real.execute(commands))


async def test_flush_waits_for_its_own_change_not_for_later_ones(client: aioredis.Redis) -> None:
    cm = f"cm-{secrets.token_hex(4)}"
    index = CmIndex(client, "tests", cm)
    tick = index._tick = StuckAfterFirst(index._tick)  # type: ignore[assignment]
    index.add("juliet@example.com/balcony", "192.0.2.1:5000")
    flushed = asyncio.ensure_future(index.flush(timeout_s=60))
    await asyncio.sleep(0)  # the flush is waiting for juliet's entry; the writer took it
    index.add("later@example.com/r", "")  # made after the flush was asked for
    await asyncio.wait_for(flushed, 20)  # a hang guard: it must not wait for "later"
    assert await client.sismember(keys.cm_sessions(cm), "juliet@example.com/balcony")
    assert await client.hget(keys.cm_addresses(cm), "juliet@example.com/balcony") == (
        b"192.0.2.1:5000"
    )
    await asyncio.wait_for(tick.stuck.wait(), 20)  # the later write was attempted
    assert not await client.sismember(keys.cm_sessions(cm), "later@example.com/r")
    assert index._task is not None
    index._task.cancel()
