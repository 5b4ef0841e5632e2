"""The common shell of a partitioned consumer service (router, presence, roster).

It holds the Redis client, the PostgreSQL pool (opened and migrated in the background from
start when the service sets ``uses_database``; not ready while PostgreSQL is away), the bus,
the virtual hosts (reloaded while it runs), and the partition leases of its role; for every
partition it owns it subscribes to the subjects ``subjects_for(p)`` gives, so messages for
one user are handled by one process, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable

from nats.aio.subscription import Subscription

from shared.bus import destinations, streams, subjects
from shared.bus.client import BatchHandler, Bus, BusUnavailable
from shared.bus.envelope import FENCE_PREFIX, Envelope, Kind, session_event
from shared.cluster.partitions import PartitionManager
from shared.cluster.vhosts import VirtualHosts
from shared.runtime.metrics import PARTITIONS_CONFIGURED
from shared.runtime.settings import PartitionedSettings
from shared.store.pg.database import Database
from shared.store.redis import connect as redis_connect

log = logging.getLogger(__name__)


class PartitionedService:
    """Subclasses set ``name`` and ``role``, and implement ``handle_batch``."""

    name = "partitioned"
    role = "partitioned"
    uses_database = False  # open (and migrate) `db` at start

    def __init__(
        self,
        settings: PartitionedSettings,
        member_id: str,
        subjects_for: Callable[[int], list[str]],
        on_partitions: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.member_id = member_id
        self.destinations = destinations.of(settings)
        self.redis = redis_connect(settings.redis_url, settings.redis_tls_ca)
        self.db = Database(settings.database_url, self.name, size=settings.db_pool_size,
                           timeout_s=settings.db_timeout_s, owner_url=settings.database_owner_url)
        self.durable = settings.durable
        # ordered outputs: a failed one replays the batch, and nothing later to its subject is
        # stored before that (shared/bus/client.py, "ordered outputs")
        self.bus = Bus(settings.nats_url, self.name, self._on_batch, durable=settings.durable,
                       limits=streams.limits_of(settings), ordered_outputs=settings.durable,
                       **settings.nats_options())
        # the account domains served, kept current in `destinations` (shared/cluster/vhosts.py)
        self.vhosts = VirtualHosts(settings, self.db if self.uses_database else None,
                                   self.destinations)
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
            drain_first=settings.durable,
        )
        self._subs: dict[int, list[Subscription]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        # hand-over state per subject (see shared/cluster/partitions.py)
        self._waiting: dict[str, tuple[str, float]] = {}  # previous owner, give up at
        self._handed: set[str] = set()  # our own FENCE seen: the rest is the new owner's
        self._fence_seen: dict[str, asyncio.Event] = {}
        self._subscribed: set[str] = set()  # subjects of the partitions we hold
        PARTITIONS_CONFIGURED.labels(self.name).set(settings.partitions)

    handle_batch: BatchHandler

    async def start(self) -> None:
        if self.uses_database:  # not ready until it is open; no exit while it is away
            self.db.start()
        await self.bus.connect()
        self.tasks.append(asyncio.create_task(self.vhosts.run(self.bus)))
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
        return (self.bus.connected and self.partitions.synced
                and (self.db.up or not self.uses_database))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.partitions.stop()
        await self.bus.close()
        await self.redis.aclose()
        await self.db.close()

    # ---- output shared by the partitioned services ------------------------------------------

    async def publish(self, subject: str, env: Envelope) -> None:
        """Publish one envelope; a bus outage is logged (these services answer later)."""
        try:
            await self.bus.publish(subject, env.encode())
        except BusUnavailable as exc:
            log.warning("publish to %s failed: %s", subject, exc)

    async def route(self, env: Envelope) -> None:
        """Hand a stanza to the router partition of its recipient, to the local service
        that owns it (a room, a pubsub node), or to the s2s gateway that owns the
        recipient's domain when it is remote (federation): shared/bus/destinations.py."""
        await self.publish(self.destinations.subject(env.to_bare), env)

    async def session_event(self, bare: str, version: int) -> None:
        """Tell the routers' caches that the bare JID's session table changed."""
        p = subjects.partition(bare, self.settings.partitions)
        await self.publish(subjects.session_events(p), session_event(bare, version))

    def holds(self, subject: str) -> bool:
        """This process consumes ``subject`` now (a subject of a partition it holds), from
        its subscription or its durable consumer."""
        return subject in self._subscribed

    # ---- partitions and their hand-over ------------------------------------------------------

    async def _on_batch(self, batch: list[tuple[str, bytes]]) -> None:
        """Apply the hand-over fences, then give the rest to the service."""
        if not (self._waiting or self._handed or self._fence_seen):
            await self.handle_batch(batch)
            return
        now = time.monotonic()
        kept = []
        keep = []  # their indexes, for Bus.hold
        for i, (subject, data) in enumerate(batch):
            if data.startswith(FENCE_PREFIX):
                self._fence(subject, data)
            elif subject in self._handed:
                continue  # after our fence: the new owner handles it
            elif (wait := self._waiting.get(subject)) is not None and now < wait[1]:
                continue  # before the previous owner's fence: it handled this
            else:
                if self._waiting.pop(subject, None) is not None:
                    self._live(subject)  # the previous owner's fence never came
                kept.append((subject, data))
                keep.append(i)
        if kept:
            self.bus.narrow(keep)
            await self.handle_batch(kept)

    def _fence(self, subject: str, data: bytes) -> None:
        try:
            sender = Envelope.decode(data).from_
        except ValueError:
            return
        if sender == self.member_id:
            self._handed.add(subject)
            event = self._fence_seen.get(subject)
            if event is not None:
                event.set()
        elif (wait := self._waiting.get(subject)) is not None and wait[0] == sender:
            del self._waiting[subject]
            self._live(subject)

    def _live(self, subject: str) -> None:
        """Past the hand-over: the subject is ours alone, so publishers of this process may
        hand us its messages in-process (shared/bus/local.py)."""
        if subject in self._subscribed and not self._is_durable(subject):
            self.bus.offer_local(subject)

    def _is_durable(self, subject: str) -> bool:
        return self.durable and streams.family(subject) is not None

    async def _acquire(self, p: int, previous: str | None) -> None:
        wait_until = time.monotonic() + self.settings.lease_ttl_s
        names = self._subjects_for(p)
        for s in names:
            self._handed.discard(s)
            if previous and previous != self.member_id and not self._is_durable(s):
                self._waiting[s] = (previous, wait_until)
        self._subs[p] = [await self.bus.subscribe(s) for s in names if not self._is_durable(s)]
        await self.bus.flush()  # subscribed at the server before anything else happens
        try:
            for s in names:
                if self._is_durable(s):  # its consumer, from the oldest unacked message
                    await self.bus.consume(s)
        except Exception:  # the partition is freed and tried again: nothing of it stays
            for s in names:
                if self._is_durable(s):
                    await self.bus.stop_consuming(s, timeout_s=0)
            for sub in self._subs.pop(p, []):
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            raise
        for s in names:
            self._subscribed.add(s)  # `holds`: consumed (durable) or subscribed
            if not self._is_durable(s) and s not in self._waiting:
                self._live(s)  # never a durable subject: it stays on JetStream
        if self._on_partitions:
            self._on_partitions(len(self._subs))

    async def _release(self, p: int) -> None:
        """Hand the partition over: wait for the new owner (it is subscribed once it holds
        the lease), publish a FENCE on each subject, unsubscribe once our FENCE came back.
        With no other live member (the last of the role stopping, or the joiner gone) there
        is no new owner to wait for: unsubscribe at once."""
        names = self._subjects_for(p)
        for s in names:  # first, before any wait: publishers of this process use NATS again
            self._subscribed.discard(s)
            self.bus.withdraw_local(s)
        subs = self._subs.pop(p, [])
        if self._on_partitions:
            self._on_partitions(len(self._subs))
        if self.durable:  # no fence: what we took is acked before the lease is freed
            for s in names:
                if self._is_durable(s):
                    await self.bus.stop_consuming(s)
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.partitions.interval_s + 2.0
        owner = None
        alone = False
        for polls in itertools.count():
            owner = await self.partitions.owner(p)
            if owner is not None and owner != self.member_id:
                break
            # no one left to take it? (the member set at once, then every 0.5 s)
            if polls % 10 == 0 and not await self.partitions.others_alive():
                alone = True
                break
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        if owner is not None and owner != self.member_id:
            for s in names:
                self._fence_seen[s] = asyncio.Event()
                fence = Envelope(Kind.FENCE, to=s, from_=self.member_id, origin=self.name)
                await self.bus.publish(s, fence.encode())
            waits = [self._fence_seen[s].wait() for s in names]
            try:
                await asyncio.wait_for(asyncio.gather(*waits), timeout=5)
            except TimeoutError:
                log.warning("%s partition %d: fence not seen, unsubscribing anyway", self.role, p)
        elif not alone:
            log.warning("%s partition %d: no new owner came; unsubscribing", self.role, p)
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.warning("unsubscribe of %s partition %d failed: %s", self.role, p, exc)
        await self.bus.flush()
        for s in names:  # _handed stays until a re-acquire: late arrivals are not ours
            self._fence_seen.pop(s, None)
