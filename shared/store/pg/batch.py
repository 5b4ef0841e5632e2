"""Lookups of one event-loop tick in one query (what shared/store/tick.py does for Redis).

Every login looks up one account's keys; under load many logins of the same tick each ask
for one.  `TickLoader.get(key)` queues the key; the loader sends what one tick queued as one
``... WHERE key = ANY($1)`` query (a prepared statement), and keeps one such query in flight:
keys asked for while it is out go together in the next.  One query at a time also bounds
what a burst of logins takes of the pool to one connection per loader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_BATCH: Final = 500  # keys per query; more queued go in the next one


class TickLoader(Generic[K, V]):
    """``fetch(keys)`` returns a value for each key it found; a key it did not find gets
    ``missing``.  A failed query fails every caller of its batch."""

    __slots__ = ("_fetch", "_missing", "_queue", "_sender")

    def __init__(self, fetch: Callable[[Sequence[K]], Awaitable[dict[K, V]]], missing: V) -> None:
        self._fetch = fetch
        self._missing = missing
        self._queue: dict[K, list[asyncio.Future[V]]] = {}
        self._sender: asyncio.Task[None] | None = None

    def get(self, key: K) -> asyncio.Future[V]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V] = loop.create_future()
        self._queue.setdefault(key, []).append(future)
        if self._sender is None:  # started next tick, after everything else this tick queues
            self._sender = loop.create_task(self._send())
        return future

    async def get_many(self, keys: Sequence[K]) -> list[V]:
        return list(await asyncio.gather(*(self.get(k) for k in keys)))

    async def _send(self) -> None:
        try:
            while self._queue:
                batch = dict(list(self._queue.items())[:MAX_BATCH])
                for key in batch:
                    del self._queue[key]
                try:
                    found = await self._fetch(list(batch))
                except Exception as exc:
                    for waiters in batch.values():
                        for future in waiters:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for key, waiters in batch.items():
                    value = found.get(key, self._missing)
                    for future in waiters:
                        if not future.done():  # its caller may have been cancelled
                            future.set_result(value)
        finally:
            self._sender = None
