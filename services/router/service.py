"""The router: consumes the partitions it owns and applies RFC 6121 §8.5 to every stanza.

Per batch of bus messages: session events first drop cache entries, then every recipient
missing from the cache is fetched in one Redis pipeline, then the stanzas are routed in
arrival order.  Routing reads only the envelope; XML is parsed only to build an error bounce.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from nats.aio.subscription import Subscription

from shared.bus import subjects
from shared.bus.client import Bus, BusUnavailable
from shared.bus.envelope import STANZA_KINDS, Envelope, EnvelopeError, Kind
from shared.settings import RouterSettings
from shared.store import keys
from shared.store.redis import connect as redis_connect
from shared.store.sessions import SessionStore
from shared.xmpp.errors import StanzaError, StanzaErrorCondition
from shared.xmpp.parser import parse_fragment
from shared.xmpp.stanza import error_reply, must_not_bounce

from . import metrics
from .cache import Entry, SessionCache
from .partitions import PartitionManager
from .routing import Bounce, Deliver, decide

log = logging.getLogger(__name__)

SERVICE = "router"
MAX_HOPS = 4
MAX_BOUNCE_BYTES = 512 * 1024


class Router:
    name = SERVICE

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.router_id = settings.router_id or f"router-{secrets.token_hex(4)}"
        self._redis = redis_connect(settings.redis_url)
        self.store = SessionStore(self._redis, SERVICE)
        self.bus = Bus(settings.nats_url, SERVICE, self._on_batch)
        self.cache = SessionCache(settings.cache_size, settings.cache_ttl_s)
        self.partitions = PartitionManager(
            self._redis,
            self.router_id,
            settings.partitions,
            settings.lease_ttl_s,
            self._acquire,
            self._release,
        )
        self._subs: dict[int, tuple[Subscription, Subscription]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.bus.connect()
        await self.partitions.tick()
        self._tasks.append(asyncio.create_task(self.partitions.run()))
        self._tasks.append(asyncio.create_task(self._reaper()))
        log.info("%s holds %d of %d partitions", self.router_id, len(self.partitions.held),
                 self.settings.partitions)

    def healthy(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.bus.connected and self.partitions.synced

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.partitions.stop()
        await self.bus.close()
        await self._redis.aclose()

    async def _acquire(self, p: int) -> None:
        route = await self.bus.subscribe(subjects.route(p))
        events = await self.bus.subscribe(subjects.session_events(p))
        self._subs[p] = (route, events)
        metrics.PARTITIONS.set(len(self._subs))

    async def _release(self, p: int) -> None:
        subs = self._subs.pop(p, None)
        metrics.PARTITIONS.set(len(self._subs))
        if subs is None:
            return
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.warning("unsubscribe of partition %d failed: %s", p, exc)
        await self.bus.flush()

    # ---- routing ---------------------------------------------------------------------------

    async def _on_batch(self, batch: list[tuple[str, bytes]]) -> None:
        started = time.perf_counter()
        envelopes: list[Envelope] = []
        for _subject, data in batch:
            try:
                env = Envelope.decode(data)
            except EnvelopeError as exc:
                log.warning("dropped a bad envelope: %s", exc)
                continue
            if env.kind is Kind.SESSION:
                self.cache.invalidate(env.to)
            elif env.kind in STANZA_KINDS:
                envelopes.append(env)
        if not envelopes:
            return
        entries = await self._entries({e.to.partition("/")[0] for e in envelopes})
        for env in envelopes:
            entry = entries.get(env.to.partition("/")[0])
            if entry is None:  # Redis unreachable: tell the sender rather than lose it
                self._bounce(env, StanzaErrorCondition.INTERNAL_SERVER_ERROR)
                continue
            self._route(env, entry)
        metrics.BATCH_DURATION.observe(time.perf_counter() - started)

    async def _entries(self, bares: set[str]) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        missing = []
        for bare in bares:
            entry = self.cache.get(bare)
            if entry is None:
                missing.append(bare)
            else:
                entries[bare] = entry
        metrics.CACHE_LOOKUPS.labels("hit").inc(len(entries))
        if missing:
            metrics.CACHE_LOOKUPS.labels("miss").inc(len(missing))
            self.cache.fetching(missing)
            try:
                results = await self.store.get_many(missing)
            except Exception as exc:
                log.warning("session lookup failed: %s", exc)
                for bare in missing:
                    self.cache.invalidate(bare)
                return entries
            for bare, (exists, sessions) in zip(missing, results, strict=True):
                entries[bare] = self.cache.fetched(bare, exists, sessions)
        return entries

    def _route(self, env: Envelope, entry: Entry) -> None:
        decision = decide(env.kind, env.type, env.to, entry.exists, entry.sessions)
        if isinstance(decision, Deliver):
            metrics.ROUTED.labels(env.kind.value, "delivered").inc()
            for full, cm_id in decision.targets:
                self.bus.publish_soon(
                    subjects.connection_manager(cm_id), env.forwarded(to=full).encode()
                )
        elif isinstance(decision, Bounce):
            metrics.ROUTED.labels(env.kind.value, "bounced").inc()
            self._bounce(env, decision.condition)
        else:
            metrics.ROUTED.labels(env.kind.value, "ignored").inc()

    def _bounce(self, env: Envelope, condition: StanzaErrorCondition) -> None:
        """Send the stanza back to its sender as an error (RFC 6120 §8.3)."""
        if must_not_bounce(env.type) or env.hops >= MAX_HOPS or not env.from_:
            return
        try:
            element = parse_fragment(env.payload, MAX_BOUNCE_BYTES)
        except Exception as exc:
            log.warning("cannot bounce an unparsable payload: %s", exc)
            return
        payload = error_reply(element, StanzaError(condition), to=env.from_, from_=env.to)
        metrics.STANZA_ERRORS.labels(condition.value).inc()
        bounce = Envelope(
            env.kind, to=env.from_, from_=env.to, type="error", id=env.id, origin=SERVICE,
            hops=env.hops + 1, payload=payload,
        )
        sender_bare = env.from_.partition("/")[0]
        p = subjects.partition(sender_bare, self.settings.partitions)
        self.bus.publish_soon(subjects.route(p), bounce.encode())

    # ---- cleaning up after dead connection managers ------------------------------------

    async def _reaper(self) -> None:
        """One router at a time removes the sessions of connection managers that died."""
        interval = max(1.0, self.settings.session_ttl_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._count_ghosts()
                await self._reap_once(interval)
            except Exception as exc:
                log.warning("reaper round failed: %s", exc)

    async def _count_ghosts(self) -> None:
        """Every router reports the sessions of dead connection managers it can see: a count
        that stays above zero means nobody reaps them (alert StanzadGhostSessions)."""
        ghosts = 0
        for cm_id, alive in (await self.store.connection_managers()).items():
            if not alive:
                ghosts += len(await self.store.cm_sessions(cm_id))
        metrics.GHOST_SESSIONS.set(ghosts)

    async def _reap_once(self, interval: float) -> None:
        lock = keys.reaper_lock()
        if not await self._redis.set(lock, self.router_id, nx=True, px=int(interval * 2000)):
            return
        for cm_id, alive in (await self.store.connection_managers()).items():
            if alive:
                continue
            removed = await self.store.reap(cm_id)
            metrics.REAPED.inc(len(removed))
            log.info("reaped %d sessions of dead connection manager %s", len(removed), cm_id)
            for full, version in removed:
                bare = full.partition("/")[0]
                event = Envelope(Kind.SESSION, to=bare, from_="", payload=str(version).encode())
                p = subjects.partition(bare, self.settings.partitions)
                with contextlib.suppress(BusUnavailable):
                    await self.bus.publish(subjects.session_events(p), event.encode())
