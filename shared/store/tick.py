"""The login path's Redis commands in shared round trips (auto-pipelining).

A login makes three Redis round trips (the SASL lookup, the bind, the unbind), each from its
own connection's task, and each redis-py round trip costs tens of µs of client CPU plus a
socket write whose loopback delivery, and Redis's wake-up, the kernel charges to the writer
(loadtest/RESULTS.md, "CPU per login"). `TickPipeline` sends the commands queued in one tick
of the event loop as one pipeline, and keeps one such round trip in flight per client:
what is queued while it is out goes together in the next one, so under load the commands of
many logins share one write, one read and one pass through redis-py's pool.

Not a transaction (``MULTI``): each command keeps its own atomicity (a script still runs
atomically) and names the keys of one hash slot, as before; a pipeline mixing slots is what
a Redis Cluster client splits by slot anyway. A group of commands queued together (the
lookup's counters and keys) gets its replies together, and its first error raised, as
``pipeline.execute()`` did. One command alone in its round trip goes out as a plain
command. Latency: one more event-loop tick before the write, and under load up to one round
trip of waiting for the one in flight; a group that waited `QUEUE_TIMEOUT_S` (a stalled
Redis) fails with a ConnectionError, as it failed after waiting that long for a pool
connection before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final
from weakref import WeakKeyDictionary

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from shared.store.redis import POOL_TIMEOUT_S

Command = tuple[Any, ...]  # ("GET", key), ("EVALSHA", sha, numkeys, *keys, *args), ...

MAX_BATCH: Final = 256  # groups per pipeline; more queued go in the next round trips
# A group waits at most this long for its round trip to start (a stalled Redis), as it waited
# for a free connection of the pool before: then it fails like any other Redis error.
QUEUE_TIMEOUT_S: Final = POOL_TIMEOUT_S

_PIPELINES: WeakKeyDictionary[aioredis.Redis, TickPipeline] = WeakKeyDictionary()


def of(redis: aioredis.Redis) -> TickPipeline:
    """The tick pipeline of a client (one per client, so all its stores share the ticks)."""
    tick = _PIPELINES.get(redis)
    if tick is None:
        tick = _PIPELINES[redis] = TickPipeline(redis)
    return tick


class TickPipeline:
    __slots__ = ("__weakref__", "_queue", "_r", "_sender")

    def __init__(self, redis: aioredis.Redis) -> None:
        self._r = redis
        # groups waiting for a round trip: (commands, their future, when queued)
        self._queue: list[tuple[Sequence[Command], asyncio.Future[list[Any]], float]] = []
        self._sender: asyncio.Task[None] | None = None  # the round trip in flight

    def execute(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        """Queue `commands` for the next round trip; the future gets their replies."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if self._sender is None:
            # started next tick, after everything else this tick queues
            self._sender = loop.create_task(self._send())
        self._queue.append((commands, future, loop.time()))
        return future

    async def script(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a registered script (`redis.register_script`) by its SHA1 in the tick's round
        trip; loaded first when Redis does not know it (a restart, a new Redis)."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return (await self.execute((command,)))[0]
        except NoScriptError:
            await self._r.script_load(script.script)
            return (await self.execute((command,)))[0]

    async def _send(self) -> None:
        """One round trip at a time: what is queued meanwhile goes in the next one."""
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                late = loop.time() - QUEUE_TIMEOUT_S
                if batch[0][2] < late:  # the oldest first
                    batch = _expire(batch, late)
                if batch:
                    await self._round_trip([(commands, future) for commands, future, _ in batch])
        finally:
            self._sender = None

    async def _round_trip(
        self, batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]]
    ) -> None:
        if len(batch) == 1 and len(batch[0][0]) == 1:
            commands, future = batch[0]
            try:
                reply = await self._r.execute_command(*commands[0])
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
                return
            if not future.done():
                future.set_result([reply])
            return
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for commands, _ in batch:
                    for command in commands:
                        pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection, not one command
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        at = 0
        for commands, future in batch:
            mine = replies[at : at + len(commands)]
            at += len(commands)
            if future.done():  # its caller was cancelled
                continue
            error = next((r for r in mine if isinstance(r, Exception)), None)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(mine)


def _expire(
    batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]], float]], late: float
) -> list[tuple[Sequence[Command], asyncio.Future[list[Any]], float]]:
    """Fail the groups queued before `late`; the others stay in the batch."""
    kept = []
    for entry in batch:
        future = entry[1]
        if entry[2] >= late:
            kept.append(entry)
        elif not future.done():
            future.set_exception(RedisConnectionError("no Redis round trip in time"))
    return kept
