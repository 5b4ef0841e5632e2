"""shared.store.tick: the Redis commands of one event-loop tick go out as one pipeline."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from shared.store import tick
from shared.store.redis import connect as redis_connect
from tests.support.cluster import Cluster


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[aioredis.Redis]:
    r = redis_connect(cluster.redis_url)
    yield r
    await r.aclose()


def count_pipelines(r: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    made: list[int] = []
    real = r.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(r, "pipeline", pipeline)
    return made


async def test_one_tick_one_pipeline_each_group_its_replies(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"tick-test:{secrets.token_hex(4)}"
    await client.set(key + ":a", b"1")
    await client.hset(key + ":h", mapping={"f": "v"})
    made = count_pipelines(client, monkeypatch)
    t = tick.of(client)
    assert tick.of(client) is t  # one per client: every store shares its ticks
    # three single commands, each of which alone would go out as a plain command
    first = t.execute((("GET", key + ":a"),))
    second = t.execute((("HGETALL", key + ":h"),))
    third = t.execute((("INCR", key + ":n"),))
    assert await first == [b"1"]
    assert await second == [{b"f": b"v"}]  # HGETALL's reply decoded as redis-py does
    assert await third == [1]
    assert made == [1]
    group = await t.execute((("GET", key + ":missing"), ("INCR", key + ":n")))
    assert group == [None, 2]


async def test_a_command_alone_in_its_tick_is_a_plain_command(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = count_pipelines(client, monkeypatch)
    assert await tick.of(client).execute((("PING",),)) == [True]
    assert made == []


async def test_an_error_fails_its_group_only(client: aioredis.Redis) -> None:
    key = f"tick-test:{secrets.token_hex(4)}"
    await client.set(key, b"text")
    t = tick.of(client)
    bad = t.execute((("GET", key), ("HGETALL", key)))  # WRONGTYPE for the second
    good = t.execute((("GET", key),))
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await bad
    assert await good == [b"text"]


async def test_a_cancelled_caller_does_not_disturb_the_others(client: aioredis.Redis) -> None:
    key = f"tick-test:{secrets.token_hex(4)}"
    t = tick.of(client)
    gone = t.execute((("INCR", key),))
    kept = t.execute((("INCR", key),))
    gone.cancel()
    assert await kept == [2]  # the cancelled one still ran: only its reply is dropped
    await asyncio.sleep(0)


async def test_script_unknown_to_redis_is_loaded_and_run(client: aioredis.Redis) -> None:
    script = client.register_script(
        f"return {{KEYS[1], ARGV[1], '{secrets.token_hex(4)}'}}"  # a SHA1 Redis never saw
    )
    reply = await tick.of(client).script(script, ["k"], ["v"])
    assert reply[:2] == [b"k", b"v"]
    assert await client.script_exists(script.sha) == [True]


async def test_commands_queued_during_a_round_trip_share_the_next_one(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"tick-test:{secrets.token_hex(4)}"
    real = client.execute_command

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(client, "execute_command", slow)  # the first, alone, goes out so
    made = count_pipelines(client, monkeypatch)
    t = tick.of(client)
    first = t.execute((("INCR", key),))
    later = []
    for _ in range(3):  # each in a tick of its own, while the first is out
        await asyncio.sleep(0)
        later.append(t.execute((("INCR", key),)))
    assert await first == [1]
    assert [(await f)[0] for f in later] == [2, 3, 4]
    assert made == [1]  # the three waited for the first and went out together


async def test_a_group_that_waited_too_long_fails_like_a_redis_error(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tick, "QUEUE_TIMEOUT_S", 0.05)
    real = client.execute_command

    async def stalled(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.2)  # Redis answers late
        return await real(*args, **kwargs)

    monkeypatch.setattr(client, "execute_command", stalled)
    t = tick.of(client)
    slow = t.execute((("PING",),))
    await asyncio.sleep(0)
    waiting = t.execute((("PING",),))  # behind the stalled round trip
    with pytest.raises(RedisConnectionError, match="in time"):
        await waiting
    assert await slow == [True]
