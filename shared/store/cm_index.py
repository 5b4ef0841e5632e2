"""``cm:{id}:sessions``: the full JIDs bound on one connection manager, written per tick,
and ``cm:{id}:addresses``: their client addresses (what ``stanzad sessions`` shows).

The index only serves the reaper (the presence process removing the sessions of a
connection manager whose heartbeat expired, `SessionStore.reap`), so it need not be written
in the bind's own round trip: the changes of one event-loop tick (every bind and unbind of
that tick) go out as one SADD and one SREM, with the other Redis commands of the next tick
(`shared.store.tick`: often the next binds' round trip).  A full JID bound and unbound in
the same tick keeps only its last change, which is the set's final state either way.  When
Redis refuses the write, the changes are kept (newer ones win) and written again a second
later.  `SessionStore.bind` waits (`flush`) until its entry is written before the client
gets its bind result, so a connection manager killed at any moment after that leaves no
session the reaper cannot find.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import redis.asyncio as aioredis

from shared.store import keys, tick
from shared.store.redis import timed

log = logging.getLogger(__name__)

RETRY_S: Final = 1.0


class CmIndex:
    """The index of one connection manager's sessions; one instance per (process, cm_id)."""

    __slots__ = ("_addresses", "_changed", "_changes", "_key", "_service", "_task", "_tick",
                 "_waiters", "_written")

    def __init__(self, redis: aioredis.Redis, service: str, cm_id: str) -> None:
        self._tick = tick.of(redis)
        self._service = service
        self._key = keys.cm_sessions(cm_id)
        self._addresses = keys.cm_addresses(cm_id)
        # full JID -> its client address while present ("" unknown), None once removed
        self._changes: dict[str, str | None] = {}
        self._task: asyncio.Task[None] | None = None
        self._changed = 0  # changes made so far (a sequence number)
        self._written = 0  # changes in Redis so far
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # `flush` callers

    def add(self, full_jid: str, address: str = "") -> None:
        self._change(full_jid, address)

    def discard(self, full_jid: str) -> None:
        self._change(full_jid, None)

    def _change(self, full_jid: str, address: str | None) -> None:
        self._changes[full_jid] = address
        self._changed += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write())

    async def flush(self, timeout_s: float = 2.0) -> None:
        """Wait (at most `timeout_s`) until what was changed so far is in Redis: not for
        changes made later (under a stream of binds the writer never idles)."""
        if self._written >= self._changed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._changed, waiter))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)

    def _wake(self) -> None:
        waiting = []
        for target, waiter in self._waiters:
            if target <= self._written:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((target, waiter))
        self._waiters = waiting

    async def _write(self) -> None:
        try:
            while self._changes:
                upto = self._changed
                changes, self._changes = self._changes, {}
                added = [jid for jid, addr in changes.items() if addr is not None]
                removed = [jid for jid, addr in changes.items() if addr is None]
                commands: list[tuple[str, ...]] = []
                if added:
                    commands.append(("SADD", self._key, *added))
                    commands.append(("HSET", self._addresses, *(
                        part for jid in added for part in (jid, changes[jid] or "?")
                    )))
                if removed:
                    commands.append(("SREM", self._key, *removed))
                    commands.append(("HDEL", self._addresses, *removed))
                try:
                    async with timed(self._service, "cm_index"):
                        await self._tick.execute(commands)
                    self._written = upto
                    self._wake()
                except Exception as exc:
                    log.warning("could not update the session index (retrying): %s", exc)
                    for jid, addr in changes.items():
                        self._changes.setdefault(jid, addr)  # a newer change wins
                    await asyncio.sleep(RETRY_S)
        finally:
            self._task = None
