"""The Redis commands of one event-loop tick in one round trip (auto-pipelining).

A login makes three Redis round trips (the SASL lookup, the bind, the unbind), each from its
own connection's task, and each redis-py round trip costs tens of µs of client CPU plus a
socket write whose loopback delivery, and Redis's wake-up, the kernel charges to the writer
(loadtest/RESULTS.md, "CPU per login"). While many clients log in at once, several of those
round trips start in the same tick of the event loop: `TickPipeline` sends what was queued
in one tick as one pipeline, so they share one write, one read and one pass through
redis-py's pool.

Not a transaction (``MULTI``): each command keeps its own atomicity (a script still runs
atomically) and names the keys of one hash slot, as before; a pipeline mixing slots is what
a Redis Cluster client splits by slot anyway. A group of commands queued together (the
lookup's counters and keys) gets its replies together, and its first error raised, as
``pipeline.execute()`` did. One command alone in its tick goes out as a plain command.
Latency: one more event-loop tick before the write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final
from weakref import WeakKeyDictionary

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

Command = tuple[Any, ...]  # ("GET", key), ("EVALSHA", sha, numkeys, *keys, *args), ...

MAX_BATCH: Final = 256  # commands per pipeline; more queued in one tick go in several

_PIPELINES: WeakKeyDictionary[aioredis.Redis, TickPipeline] = WeakKeyDictionary()


def of(redis: aioredis.Redis) -> TickPipeline:
    """The tick pipeline of a client (one per client, so all its stores share the ticks)."""
    tick = _PIPELINES.get(redis)
    if tick is None:
        tick = _PIPELINES[redis] = TickPipeline(redis)
    return tick


class TickPipeline:
    __slots__ = ("__weakref__", "_queue", "_r", "_running")

    def __init__(self, redis: aioredis.Redis) -> None:
        self._r = redis
        # groups queued in this tick: (commands, their future)
        self._queue: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._running: set[asyncio.Task[None]] = set()

    def execute(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        """Queue `commands` for this tick's round trip; the future gets their replies."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if not self._queue:
            # started next tick, after everything else this tick queues
            task = loop.create_task(self._send())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        self._queue.append((commands, future))
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
        queue, self._queue = self._queue, []
        while queue:
            batch, queue = queue[:MAX_BATCH], queue[MAX_BATCH:]
            await self._round_trip(batch)

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
