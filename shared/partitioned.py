"""The common shell of a partitioned consumer service (router, presence, roster).

It holds the Redis client, the bus, and the partition leases of its role; for every
partition it owns it subscribes to the subjects ``subjects_for(p)`` gives, so messages for one
user are handled by one process, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.subscription import Subscription

from shared.bus import subjects
from shared.bus.client import BatchHandler, Bus, BusUnavailable
from shared.bus.envelope import Envelope, Kind
from shared.partitions import PartitionManager
from shared.settings import PartitionedSettings
from shared.store.redis import connect as redis_connect

log = logging.getLogger(__name__)


class PartitionedService:
    """Subclasses set ``name`` and ``role``, and implement ``handle_batch``."""

    name = "partitioned"
    role = "partitioned"

    def __init__(
        self,
        settings: PartitionedSettings,
        member_id: str,
        subjects_for: Callable[[int], list[str]],
        on_partitions: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.member_id = member_id
        self.redis = redis_connect(settings.redis_url)
        self.bus = Bus(settings.nats_url, self.name, self.handle_batch)
        self._subjects_for = subjects_for
        self._on_partitions = on_partitions
        self.partitions = PartitionManager(
            self.redis,
            self.role,
            member_id,
            settings.partitions,
            settings.lease_ttl_s,
            self._acquire,
            self._release,
        )
        self._subs: dict[int, list[Subscription]] = {}
        self.tasks: list[asyncio.Task[None]] = []

    handle_batch: BatchHandler

    async def start(self) -> None:
        await self.bus.connect()
        try:
            await self.partitions.tick()
        except Exception as exc:  # Redis not there yet: the loop below keeps trying
            log.warning("first partition round failed (not ready until one succeeds): %s", exc)
        self.tasks.append(asyncio.create_task(self.partitions.run()))
        log.info("%s holds %d of %d %s partitions", self.member_id, len(self.partitions.held),
                 self.settings.partitions, self.role)

    def healthy(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.bus.connected and self.partitions.synced

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.partitions.stop()
        await self.bus.close()
        await self.redis.aclose()

    # ---- output shared by the partitioned services ------------------------------------------

    async def publish(self, subject: str, env: Envelope) -> None:
        """Publish one envelope; a bus outage is logged (these services answer later)."""
        try:
            await self.bus.publish(subject, env.encode())
        except BusUnavailable as exc:
            log.warning("publish to %s failed: %s", subject, exc)

    async def route(self, env: Envelope) -> None:
        """Hand a stanza to the router partition of its recipient."""
        p = subjects.partition(env.to.partition("/")[0], self.settings.partitions)
        await self.publish(subjects.route(p), env)

    async def session_event(self, bare: str, version: int) -> None:
        """Tell the routers' caches that the bare JID's session table changed."""
        event = Envelope(Kind.SESSION, to=bare, from_="", payload=str(version).encode())
        p = subjects.partition(bare, self.settings.partitions)
        await self.publish(subjects.session_events(p), event)

    async def _acquire(self, p: int) -> None:
        self._subs[p] = [await self.bus.subscribe(s) for s in self._subjects_for(p)]
        if self._on_partitions:
            self._on_partitions(len(self._subs))

    async def _release(self, p: int) -> None:
        subs = self._subs.pop(p, [])
        if self._on_partitions:
            self._on_partitions(len(self._subs))
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.warning("unsubscribe of %s partition %d failed: %s", self.role, p, exc)
        await self.bus.flush()
