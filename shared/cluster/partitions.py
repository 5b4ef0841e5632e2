"""Partition ownership: each partition of a role (router, presence, roster) is consumed by
exactly one process of that role at a time.

Members announce themselves in the role's sorted set (score = expiry).  Every member computes
the same assignment from the live members by rendezvous hashing, gives up the partitions that
now belong to another member (unsubscribe first, then delete the lease) and takes the free
ones assigned to it (lease first, then subscribe).  A lease is a Redis key with a TTL renewed
by its holder, so a member that dies loses its partitions within ``lease_ttl_s`` and the
others pick them up.

Hand-over without loss or duplicates, durable delivery (``drain_first``, the default): the
member giving a partition up stops consuming and acks what it took, then frees the lease; the
next owner recreates the partition's JetStream consumer, which starts at the oldest unacked
message, so neither a FENCE nor a mark is needed (shared/bus/client.py ``consume``).

Core NATS (``STANZAD_DURABLE=false``): a member giving a partition up first records
``handover:<role>:<p>``, frees the lease and keeps consuming; the new owner subscribes and
drops what it receives until the previous owner's FENCE arrives on each subject (the previous
owner handled all of that), and the previous owner unsubscribes once it has seen its own FENCE
(everything after it belongs to the new owner).  See shared/cluster/partitioned.py.
The last live member of a role has no one to hand over to: on stop it frees its leases without
a hand-over mark and unsubscribes at once.

When a member dies, its partitions are taken within ``lease_ttl_s``: with durable delivery
what was published to them meanwhile (and what it had not acked) waits in their streams;
with core NATS it is lost (docs/architecture.md, "Durable delivery on NATS JetStream").
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from shared.store import keys

log = logging.getLogger(__name__)

_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def assign(partition: int, members: list[str]) -> str:
    """Rendezvous hashing: the member that owns a partition, given the live members."""
    return max(members, key=lambda m: zlib.crc32(f"{m}/{partition}".encode()))


class PartitionManager:
    def __init__(
        self,
        redis: aioredis.Redis,
        role: str,
        member_id: str,
        partitions: int,
        lease_ttl_s: float,
        on_acquire: Callable[[int, str | None], Awaitable[None]],
        on_release: Callable[[int], Awaitable[None]],
        *,
        drain_first: bool = False,
    ) -> None:
        """``drain_first``: a partition given up is released by the service (``on_release``:
        it stops consuming and acks what it handled) before its lease is freed, and no
        hand-over mark is left (durable delivery needs no FENCE: the next owner starts at the
        oldest unacked message)."""
        self._drain_first = drain_first
        self._r = redis
        self.role = role
        self.member_id = member_id
        self.partitions = partitions
        self._ttl_ms = int(lease_ttl_s * 1000)
        self._on_acquire = on_acquire
        self._on_release = on_release
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self.held: set[int] = set()
        self.synced = False
        self._handovers: set[asyncio.Task[None]] = set()
        self.handing_over: set[int] = set()  # given up, fence not yet seen

    @property
    def interval_s(self) -> float:
        return self._ttl_ms / 3000

    async def live_members(self) -> list[str]:
        now_ms = int(time.time() * 1000)
        await self._r.zremrangebyscore(keys.members(self.role), 0, now_ms)
        return sorted(m.decode() for m in await self._r.zrange(keys.members(self.role), 0, -1))

    async def others_alive(self) -> bool:
        """Whether a member other than this one is announced and not expired: someone who
        can take a partition we give up."""
        return any(m != self.member_id for m in await self.live_members())

    async def tick(self) -> None:
        """One round: announce, renew, give up, take."""
        now_ms = int(time.time() * 1000)
        me = self.member_id
        await self._r.zadd(keys.members(self.role), {me: now_ms + self._ttl_ms})
        members = await self.live_members()
        if me not in members:
            members.append(me)
        held = sorted(self.held)
        if held:  # renew every lease in one round trip
            try:
                renewed = await self._renew_all(held)
            except NoScriptError:  # a Redis Cluster pipeline does not load scripts itself
                await self._r.script_load(_RENEW)
                renewed = await self._renew_all(held)
            for p, ok in zip(held, renewed, strict=True):
                if not ok:
                    log.warning("lost the lease of %s partition %d", self.role, p)
                    self.held.discard(p)
                    await self._on_release(p)
        mine = {p for p in range(self.partitions) if assign(p, members) == me}
        for p in sorted(self.held - mine):
            # a hand-over waits for the new owner: in the background, so that renewing the
            # other leases never waits for it
            task = asyncio.create_task(self._give_up(p))
            self._handovers.add(task)
            task.add_done_callback(self._handovers.discard)
        for p in sorted(mine - self.held - self.handing_over):
            if await self._r.set(keys.partition_lease(self.role, p), me, nx=True, px=self._ttl_ms):
                self.held.add(p)
                # read once and clear: a stale mark must never make a later owner wait
                handover = keys.handover(self.role, p)
                async with self._r.pipeline(transaction=True) as pipe:
                    pipe.get(handover)
                    pipe.delete(handover)
                    previous, _ = await pipe.execute()
                try:
                    await self._on_acquire(p, previous.decode() if previous else None)
                except Exception:  # not consuming it: free it, the next round tries again
                    self.held.discard(p)
                    await self._release(keys=[keys.partition_lease(self.role, p)], args=[me])
                    raise
        self.synced = True

    async def _renew_all(self, held: list[int]) -> list[int]:
        async with self._r.pipeline(transaction=False) as pipe:
            for p in held:
                lease = keys.partition_lease(self.role, p)
                await self._renew(keys=[lease], args=[self.member_id, self._ttl_ms],
                                  client=pipe)
            return list(await pipe.execute())

    async def _give_up(self, p: int, handover: bool = True) -> None:
        """Free the lease but keep consuming: the service hands over, then unsubscribes.
        Without ``handover`` (no other member) no mark is left: a member that starts later
        must not wait for a FENCE of ours that will never come."""
        self.held.discard(p)
        self.handing_over.add(p)
        if self._drain_first:
            try:
                await self._on_release(p)
            finally:
                try:
                    await self._release(keys=[keys.partition_lease(self.role, p)],
                                        args=[self.member_id])
                finally:
                    self.handing_over.discard(p)
            return
        if handover:
            await self._r.set(keys.handover(self.role, p), self.member_id, px=self._ttl_ms * 2)
        await self._release(keys=[keys.partition_lease(self.role, p)], args=[self.member_id])
        try:
            await self._on_release(p)
        finally:
            self.handing_over.discard(p)

    async def owner(self, p: int) -> str | None:
        raw = await self._r.get(keys.partition_lease(self.role, p))
        return raw.decode() if raw else None

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:
                log.warning("partition round failed: %s", exc)
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        """Leave cleanly: out of the member set first (so the others' assignment moves our
        partitions to them), then every partition handed over; the last member of the role
        only frees its leases (the service's release sees no one to wait for)."""
        handover = True
        try:
            await self._r.zrem(keys.members(self.role), self.member_id)
            handover = await self.others_alive()
        except Exception as exc:
            log.warning("could not leave the %s set: %s", self.role, exc)
        if not handover and self.held:
            log.info("%s is the last %s member: %d partition(s) freed without hand-over",
                     self.member_id, self.role, len(self.held))

        async def give_up(p: int) -> None:
            try:
                await self._give_up(p, handover)
            except Exception as exc:
                log.warning("could not release %s partition %d: %s", self.role, p, exc)

        await asyncio.gather(*(give_up(p) for p in sorted(self.held)), *self._handovers)

    async def owners(self) -> dict[int, str | None]:
        """Current lease holders, for status displays and tests."""
        async with self._r.pipeline(transaction=False) as pipe:
            for p in range(self.partitions):
                pipe.get(keys.partition_lease(self.role, p))
            values = await pipe.execute()
        return {p: (v.decode() if v else None) for p, v in enumerate(values)}
