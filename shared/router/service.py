"""The router: consumes the partitions it owns and applies RFC 6121 §8.5 to every stanza.

Per batch of bus messages: session events first drop cache entries, then every recipient
missing from the cache is fetched in one Redis pipeline, then the stanzas are routed in
arrival order.  Routing reads only the envelope; XML is parsed only to build an error bounce.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import secrets
import time

from shared.bus import subjects
from shared.bus.envelope import (
    PUSH_ORIGIN,
    SM_UNACKED_ORIGIN,
    STANZA_KINDS,
    Envelope,
    Kind,
    decoded,
    session_event_jids,
)
from shared.cluster.partitioned import PartitionedService
from shared.runtime.metrics import HistogramTally, Tally
from shared.runtime.settings import RouterSettings
from shared.store.account_data import AccountDataStore
from shared.store.presence import OfflineStore
from shared.store.push import PushStore
from shared.store.sessions import SessionStore
from shared.xmpp import ns
from shared.xmpp.blocking import is_blocked
from shared.xmpp.errors import StanzaErrorCondition
from shared.xmpp.jid import domain_of
from shared.xmpp.parser import parse_fragment
from shared.xmpp.push import body_of
from shared.xmpp.stanza import with_delay

from . import metrics
from .cache import Entry, SessionCache
from .push import PushNotifier
from .routing import Account, Bounce, Deliver, Store, decide

log = logging.getLogger(__name__)

SERVICE = "router"
MAX_BOUNCE_BYTES = 512 * 1024


class Router(PartitionedService):
    name = SERVICE
    role = "route"
    uses_database = True  # accounts and block lists (cache fills), offline messages

    def __init__(self, settings: RouterSettings) -> None:
        super().__init__(
            settings,
            settings.router_id or f"router-{secrets.token_hex(4)}",
            lambda p: [subjects.route(p), subjects.session_events(p)],
            metrics.PARTITIONS.set,
        )
        self.router_settings = settings
        self.store = SessionStore(self.redis, SERVICE)
        self.offline = OfflineStore(self.db, SERVICE)
        self.account_data = AccountDataStore(self.db, SERVICE)
        self.cache = SessionCache(settings.cache_size, settings.cache_ttl_s)
        self.push = PushNotifier(PushStore(self.db, SERVICE), self.bus, settings.partitions,
                                 SERVICE, settings.push_timeout_s, settings.push_max_attempts)
        # outcomes counted per batch, then added to the Prometheus counter once per label set
        self._tally: collections.Counter[tuple[str, str]] = collections.Counter()
        # ... and the metrics themselves counted in tallies, added when /metrics is scraped
        self._routed: dict[tuple[str, str], Tally] = {}
        self._batch_duration = HistogramTally(metrics.BATCH_DURATION)
        self._cache_hits = Tally(metrics.CACHE_LOOKUPS.labels("hit"))
        self._cache_misses = Tally(metrics.CACHE_LOOKUPS.labels("miss"))

    @property
    def router_id(self) -> str:
        return self.member_id

    # ---- routing ---------------------------------------------------------------------------

    async def handle_batch(self, batch: list[tuple[str, bytes]]) -> None:
        started = time.perf_counter()
        envelopes: list[Envelope] = []
        for env in decoded(batch):
            if env.kind is Kind.SESSION:  # one bare JID, or several from a bulk import
                for bare in session_event_jids(env):
                    self.cache.invalidate(bare)
            elif env.kind in STANZA_KINDS:
                envelopes.append(env)
        if not envelopes:
            return
        domain = self.settings.domain
        wanted = {b for e in envelopes if not self._is_remote(b := e.to_bare)}
        wanted |= {b for e in envelopes if (b := e.from_bare).endswith("@" + domain)}
        entries = await self._entries(wanted)
        for env in envelopes:
            if env.origin == PUSH_ORIGIN:  # XEP-0357: a message for a detached session
                await self.push.message(env.to_bare, env.from_, env.payload,
                                        int(env.id) if env.id.isdigit() else 1,
                                        resource=env.to.partition("/")[2])
                continue
            if self.push.is_answer(env):  # an app server answering a notification of ours
                await self.push.answered(env)
                continue
            sender = entries.get(env.from_bare)
            if self._is_remote(env.to_bare):
                self._remote(env, sender)
                continue
            entry = entries.get(env.to_bare)
            if entry is None:  # Redis unreachable: tell the sender rather than lose it
                self._bounce(env, StanzaErrorCondition.INTERNAL_SERVER_ERROR)
                continue
            if self._blocked(env, entry, sender):
                continue
            if self._route(env, entry):
                await self._store_offline(env)
        for labels, n in self._tally.items():
            tally = self._routed.get(labels)
            if tally is None:
                tally = self._routed[labels] = Tally(metrics.ROUTED.labels(*labels))
            tally.n += n
        self._tally.clear()
        self._batch_duration.observe(time.perf_counter() - started)

    def _is_remote(self, bare: str) -> bool:
        domain = domain_of(bare)
        return bool(domain) and domain != self.settings.domain

    def _remote(self, env: Envelope, sender: Entry | None) -> None:
        """A stanza for another domain: handed to the s2s gateway that owns the domain.
        What a local user's session sends comes here first (the connection manager routes
        it by the sender's partition, whose blocklist this router caches exactly) so that
        XEP-0191 §3.5 holds for remote contacts too; bounces to remote senders and the
        presence service's answers to remote probers pass as they are."""
        if "/" in env.origin:
            if sender is None:  # Redis unreachable: the blocklist is unknown
                self._bounce(env, StanzaErrorCondition.INTERNAL_SERVER_ERROR)
                return
            if is_blocked(sender.blocked, env.to):
                self._tally[(env.kind.value, "blocked")] += 1
                self._bounce(env, StanzaErrorCondition.NOT_ACCEPTABLE,
                             extra=f'<blocked xmlns="{ns.BLOCKING_ERRORS}"/>')
                return
        self._tally[(env.kind.value, "remote")] += 1
        p = subjects.partition(env.to_domain, self.settings.partitions)
        self.bus.publish_soon(subjects.s2s(p), env.encode())

    async def _entries(self, bares: set[str]) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        missing = []
        for bare in bares:
            entry = self.cache.get(bare)
            if entry is None:
                missing.append(bare)
            else:
                entries[bare] = entry
        self._cache_hits.n += len(entries)
        if missing:
            self._cache_misses.n += len(missing)
            self.cache.fetching(missing)
            try:  # the session tables from Redis, the accounts and block lists from
                # PostgreSQL: one round trip to each for every miss of the batch, at once
                tables, routing = await asyncio.gather(
                    self.store.get_many(missing), self.account_data.routing(missing))
            except Exception as exc:
                log.warning("session lookup failed: %s", exc)
                for bare in missing:
                    self.cache.invalidate(bare)
                return entries
            for bare, sessions, (exists, blocked) in zip(missing, tables, routing, strict=True):
                entries[bare] = self.cache.fetched(bare, exists, sessions, blocked)
        return entries

    def _blocked(self, env: Envelope, recipient: Entry, sender: Entry | None) -> bool:
        """XEP-0191 §3.5 (the sender blocked the recipient: not-acceptable with <blocked/>)
        and §3.4 (the recipient blocked the sender: presence dropped, others bounced).
        §3.5 applies to what the user's sessions send (the server's own unavailable presence
        to a newly blocked contact must pass); the router's own bounces are exempt from both.
        """
        if env.origin == SERVICE:
            return False
        from_session = "/" in env.origin
        if from_session and sender is not None and is_blocked(sender.blocked, env.to):
            self._tally[(env.kind.value, "blocked")] += 1
            self._bounce(env, StanzaErrorCondition.NOT_ACCEPTABLE,
                         extra=f'<blocked xmlns="{ns.BLOCKING_ERRORS}"/>')
            return True
        if is_blocked(recipient.blocked, env.from_):
            self._tally[(env.kind.value, "blocked")] += 1
            if env.kind is not Kind.PRESENCE:
                self._bounce(env, StanzaErrorCondition.SERVICE_UNAVAILABLE)
            return True
        return False

    def _route(self, env: Envelope, entry: Entry) -> bool:
        """Deliver, bounce or ignore; True when the stanza must be stored offline."""
        if (env.origin == SM_UNACKED_ORIGIN and env.kind is Kind.MESSAGE and entry.exists
                and env.type in ("", "normal", "chat")):
            return True  # XEP-0198 §5, XEP-0160: a session ended with it unacknowledged
        decision = decide(env.kind, env.type, env.to, entry.exists, entry.sessions)
        if isinstance(decision, Store):
            return True
        if isinstance(decision, Account):
            self._tally[(env.kind.value, "account")] += 1
            p = subjects.partition(env.to_bare, self.settings.partitions)
            self.bus.publish_soon(subjects.roster(p), env.encode())
            return False
        if isinstance(decision, Deliver):
            self._tally[(env.kind.value, "delivered")] += 1
            for full, cm_id in decision.targets:
                self.bus.publish_soon(
                    subjects.connection_manager(cm_id), env.forwarded(to=full).encode()
                )
        elif isinstance(decision, Bounce):
            self._tally[(env.kind.value, "bounced")] += 1
            self._bounce(env, decision.condition)
        else:
            self._tally[(env.kind.value, "ignored")] += 1
        return False

    async def _store_offline(self, env: Envelope) -> None:
        """XEP-0160: keep the message, with its XEP-0203 delay stamp, for the next login."""
        bare = env.to_bare
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        payload = with_delay(env.payload, stamp, self.settings.domain)
        try:
            stored = await self.offline.store(
                bare, payload, self.router_settings.max_offline_messages
            )
        except Exception as exc:
            log.warning("offline store failed: %s", exc)
            self._bounce(env, StanzaErrorCondition.INTERNAL_SERVER_ERROR)
            return
        if stored:
            self._tally[(env.kind.value, "stored")] += 1
            metrics.OFFLINE_QUEUE.observe(stored)
            # XEP-0357 §7: no session will see it; one that ended with it unacknowledged
            # was notified while it was detached
            if env.origin != SM_UNACKED_ORIGIN and _has_body(env.payload):
                await self.push.message(bare, env.from_, env.payload, stored)
        else:
            self._tally[(env.kind.value, "bounced")] += 1
            self._bounce(env, StanzaErrorCondition.SERVICE_UNAVAILABLE, "offline storage full")

    def _bounce(
        self, env: Envelope, condition: StanzaErrorCondition, text: str | None = None,
        extra: str = "",
    ) -> None:
        """Send the stanza back to its sender as an error (RFC 6120 §8.3)."""
        bounce = env.bounce(
            condition, origin=SERVICE, max_bytes=MAX_BOUNCE_BYTES, text=text, extra=extra
        )
        if bounce is None:
            return
        metrics.STANZA_ERRORS.labels(condition.value).inc()
        self.bus.publish_soon(subjects.route_for(env.from_bare, self.settings.partitions),
                              bounce.encode())

    # ---- sessions of dead connection managers ----------------------------------------------

    async def start(self) -> None:
        await super().start()
        self.tasks.append(asyncio.create_task(self._ghosts()))

    async def stop(self) -> None:
        await super().stop()
        self.push.close()

    async def _ghosts(self) -> None:
        """Every router reports the sessions of dead connection managers it can see: a count
        that stays above zero means nobody reaps them (alert StanzadGhostSessions).  The
        presence service reaps them."""
        interval = max(1.0, self.settings.session_ttl_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                ghosts = 0
                for cm_id, alive in (await self.store.connection_managers()).items():
                    if not alive:
                        ghosts += len(await self.store.cm_sessions(cm_id))
                metrics.GHOST_SESSIONS.set(ghosts)
            except Exception as exc:
                log.warning("ghost count failed: %s", exc)


def _has_body(payload: bytes) -> bool:
    """A message with a <body/> (XEP-0357 notifies those only)."""
    if b"<body" not in payload:
        return False
    try:
        return body_of(parse_fragment(payload, MAX_BOUNCE_BYTES)) is not None
    except Exception:
        return False
