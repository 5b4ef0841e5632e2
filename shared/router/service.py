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
from collections.abc import Callable

from shared.bus import subjects
from shared.bus.envelope import (
    FANOUT_SEPARATOR,
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
from shared.store.archive import ArchiveWriter
from shared.store.presence import OfflineStore
from shared.store.push import PushStore
from shared.store.sessions import SessionStore
from shared.xmpp import archive, ns
from shared.xmpp.blocking import is_blocked
from shared.xmpp.errors import StanzaErrorCondition, StreamError
from shared.xmpp.jid import bare_of, domain_of
from shared.xmpp.parser import parse_fragment
from shared.xmpp.push import body_of
from shared.xmpp.stanza import namespace, with_delay

from . import metrics
from .cache import Entry, SessionCache
from .ingress import Publish, account_family
from .push import PushNotifier
from .routing import Account, Bounce, Deliver, Store, decide

log = logging.getLogger(__name__)

SERVICE = "router"
Kept = tuple[bytes, str]  # a message as archives store it (no stanza-id of ours), its id
MAX_BOUNCE_BYTES = 512 * 1024


MAX_STORED_REMEMBERED = 10_000  # offline stores remembered against a replay of their batch


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
        # (origin, ts_us) of client messages this router stored offline lately: a batch
        # replayed after a failed session lookup must not deliver live what its first pass
        # already stored (the row would come a second time)
        self._stored: collections.OrderedDict[tuple[str, int], None] = (
            collections.OrderedDict())
        # ... and the metrics themselves counted in tallies, added when /metrics is scraped
        self._routed: dict[tuple[str, str], Tally] = {}
        self._batch_duration = HistogramTally(metrics.BATCH_DURATION)
        self._cache_hits = Tally(metrics.CACHE_LOOKUPS.labels("hit"))
        self._cache_misses = Tally(metrics.CACHE_LOOKUPS.labels("miss"))
        self._copies = {d: Tally(metrics.CARBON_COPIES.labels(d)) for d in ("sent", "received")}
        # XEP-0313 rows, written in batches off the routing path (shared/store/archive.py)
        self.archive: ArchiveWriter | None = (
            ArchiveWriter(self.db, settings.mam_default, settings.mam_max_pending_rows,
                          settings.mam_write_linger_ms / 1000)
            if settings.mam_enabled else None
        )

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
            elif env.kind in STANZA_KINDS or env.kind is Kind.SENT:
                envelopes.append(env)
        if not envelopes:
            return
        accounts = self.destinations.accounts
        wanted = {b for e in envelopes
                  if e.kind is not Kind.SENT and not self._is_remote(b := e.to_bare)}
        wanted |= {b for e in envelopes if domain_of(b := e.from_bare) in accounts and "@" in b}
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
            if env.kind is Kind.SENT:
                if sender is not None:
                    self._sent(env, sender)
                continue
            if self._is_remote(env.to_bare):
                self._remote(env, sender)
                continue
            if self.bus.durable and env.to_bare not in entries:
                # Redis unreachable: with durable delivery the batch replays (from its
                # stream, in order) instead; a bounce would need Redis to find the sender
                log.warning("no session table for %s: replaying the batch", env.to_bare)
                self.bus.replay_batch()
                break
            if env.kind is Kind.MESSAGE and (env.origin, env.ts_us) in self._stored:
                await self._late_flush(env.to_bare)  # stored by an earlier pass: it is there
                continue
            kept: Kept | None = None
            if env.kind is Kind.MESSAGE:
                env, kept = self._tails(env, sender)
            entry = entries.get(env.to_bare)
            if entry is None:  # Redis unreachable: tell the sender rather than lose it
                self._bounce(env, StanzaErrorCondition.INTERNAL_SERVER_ERROR)
                continue
            if self._blocked(env, entry, sender):
                continue
            if self._route(env, entry, kept) and await self._store_offline(env):
                self._archive_received(env, kept)
        for labels, n in self._tally.items():
            tally = self._routed.get(labels)
            if tally is None:
                tally = self._routed[labels] = Tally(metrics.ROUTED.labels(*labels))
            tally.n += n
        self._tally.clear()
        self._batch_duration.observe(time.perf_counter() - started)

    def _is_remote(self, bare: str) -> bool:
        domain = domain_of(bare)
        return bool(domain) and domain not in self.destinations.accounts

    def _remote(self, env: Envelope, sender: Entry | None) -> None:
        """A stanza for another domain: handed to the s2s gateway that owns the domain (or
        to the local service of a service domain, shared/bus/destinations.py).
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
        if env.kind is Kind.MESSAGE and "/" in env.origin and sender is not None:
            env = env.with_payload(self._sent(env, sender))
        self._tally[(env.kind.value, "remote")] += 1
        self.bus.publish_soon(self.destinations.subject(env.to_bare), env.encode())

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

    def _route(self, env: Envelope, entry: Entry, kept: Kept | None = None) -> bool:
        """Deliver, bounce or ignore; True when the stanza must be stored offline."""
        if (env.origin == SM_UNACKED_ORIGIN and env.kind is Kind.MESSAGE and entry.exists
                and env.type in ("", "normal", "chat")):
            return True  # XEP-0198 §5, XEP-0160: a session ended with it unacknowledged
        decision = decide(env.kind, env.type, env.to, entry.exists, entry.sessions)
        if isinstance(decision, Store):
            return True
        if isinstance(decision, Account):
            self._tally[(env.kind.value, "account")] += 1
            where = Publish(account_family(_child_ns(env.payload)), env.to_bare, env.to)
            self.bus.publish_soon(where.subject(self.settings.partitions), env.encode())
            return False
        if isinstance(decision, Deliver):
            self._tally[(env.kind.value, "delivered")] += 1
            for full, cm_id in decision.targets:
                self.bus.publish_soon(
                    subjects.connection_manager(cm_id), env.forwarded(to=full).encode()
                )
            if env.kind is Kind.MESSAGE:
                self._archive_received(env, kept)
                self._carbons("received", env.to_bare, entry, env.payload,
                              {env.from_, *(full for full, _ in decision.targets)})
        elif isinstance(decision, Bounce):
            self._tally[(env.kind.value, "bounced")] += 1
            self._bounce(env, decision.condition)
        else:
            self._tally[(env.kind.value, "ignored")] += 1
        return False

    # ---- XEP-0280 carbons and the XEP-0313 archive (docs/architecture.md) --------------------

    def _archive_received(self, env: Envelope, kept: Kept | None) -> None:
        """The recipient's row of a message that carries the stanza-id given at ingress."""
        if self.archive is None or env.origin == SM_UNACKED_ORIGIN or kept is None:
            return  # an unacknowledged message coming back was archived when it came in
        stored, sid = kept
        self.archive.add(env.to_bare, sid, env.from_, env.from_bare, False, stored)

    def _sent(self, env: Envelope, sender: Entry) -> bytes:
        """What a local user sent (a SENT envelope, or a message to a remote JID on its way
        out): the sender's row and XEP-0280 §5 sent carbons to the sender's other
        carbons-enabled resources.  Returns the message without our stanza-id."""
        owner = env.from_bare
        payload, sid = archive.split_tail(env.payload, owner)
        if sid and self.archive is not None:
            self.archive.add(owner, sid, env.to, bare_of(env.to), True, payload)
        self._carbons("sent", owner, sender, env.payload, {env.from_})
        return payload

    def _tails(self, env: Envelope, sender: Entry | None) -> tuple[Envelope, Kept | None]:
        """The stanza-ids ingress appended to a message for a local account: (the message as
        its recipient gets it, (the message as archives store it, its id) or None).  When
        the sender is a local account too, ingress appended the sender's id as well
        (`archive.split_pair`): the sender's row and XEP-0280 §5 sent carbons are done here
        when this router holds the sender's partition too (its session cache then holds the
        sender's sessions exactly: one envelope and one INSERT for both rows), else handed
        to the router that does in a SENT envelope."""
        owner = env.from_bare
        stored, sid, paired = archive.split_pair(env.payload, env.to_bare, owner)
        if not sid:
            return env, None
        if paired:
            subject = subjects.route_for(owner, self.settings.partitions)
            if not self.holds(subject):
                self.bus.publish_soon(subject, env._replace(
                    kind=Kind.SENT, payload=archive.with_stanza_id(stored, owner, sid)).encode())
            else:
                if self.archive is not None:
                    self.archive.add(owner, sid, env.to, env.to_bare, True, stored)
                if sender is not None:
                    self._carbons("sent", owner, sender,
                                  lambda: archive.with_stanza_id(stored, owner, sid),
                                  {env.from_})
            env = env.with_payload(archive.with_stanza_id(stored, env.to_bare, sid))
        return env, (stored, sid)

    def _carbons(self, direction: str, owner: str, entry: Entry,
                 message: bytes | Callable[[], bytes], skip: set[str]) -> None:
        """XEP-0280 copies of ``message`` (or of what it makes: built only when some
        resource wants a copy) for ``owner``'s carbons-enabled resources not in ``skip``
        (those that have it already): one FANOUT envelope per connection manager."""
        by_cm: dict[str, list[str]] = {}
        for resource, record in entry.sessions.items():
            if record.carbons and (full := f"{owner}/{resource}") not in skip:
                by_cm.setdefault(record.cm_id, []).append(full)
        if not by_cm:
            return
        if callable(message):
            message = message()
        try:  # parsed only when some resource wants a copy
            if not archive.payload_facts(message).carbons:
                return
        except StreamError:
            return
        copy = archive.carbon(direction, owner, message)
        for cm_id, fulls in by_cm.items():
            self.bus.publish_soon(subjects.connection_manager(cm_id), Envelope(
                Kind.FANOUT, to=FANOUT_SEPARATOR.join(fulls), from_=owner, type="chat",
                origin=SERVICE, payload=copy).encode())
            self._copies[direction].n += len(fulls)

    async def stop(self) -> None:
        if self.archive is not None:
            await self.archive.close()
        await super().stop()
        self.push.close()

    async def _store_offline(self, env: Envelope) -> bool:
        """XEP-0160: keep the message, with its XEP-0203 delay stamp, for the next login."""
        bare = env.to_bare
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        payload = with_delay(env.payload, stamp, domain_of(bare))
        try:
            stored = await self.offline.store(
                bare, payload, self.router_settings.max_offline_messages
            )
        except Exception as exc:
            log.warning("offline store failed: %s", exc)
            self._bounce(env, StanzaErrorCondition.INTERNAL_SERVER_ERROR)
            return False
        if stored:
            if env.ts_us and "/" in env.origin:
                self._stored[(env.origin, env.ts_us)] = None
                if len(self._stored) > MAX_STORED_REMEMBERED:
                    self._stored.popitem(last=False)
            self._tally[(env.kind.value, "stored")] += 1
            metrics.OFFLINE_QUEUE.observe(stored)
            # XEP-0357 §7: no session will see it; one that ended with it unacknowledged
            # was notified while it was detached
            if env.origin != SM_UNACKED_ORIGIN and _has_body(env.payload):
                await self.push.message(bare, env.from_, env.payload, stored)
            if env.origin != SM_UNACKED_ORIGIN:
                await self._late_flush(bare)
            return True
        self._tally[(env.kind.value, "bounced")] += 1
        self._bounce(env, StanzaErrorCondition.SERVICE_UNAVAILABLE, "offline storage full")
        return False
    async def _late_flush(self, bare: str) -> None:
        """The fence between storing a message offline and a login's flush (XEP-0160).

        The decision to store was taken on the session table as this router saw it (its
        cache, or a read before the INSERT); meanwhile a resource may have become available
        and the presence service, which marks it available in Redis before it takes the
        offline queue from PostgreSQL, may have flushed the queue before this row was in
        it. Read the table again after the INSERT: if a resource is available now, take the
        queue and deliver it here (a row goes to whichever flush deletes it first); if none
        is, the presence service's flush will come after this row and take it."""
        try:
            [sessions] = await self.store.get_many([bare])
        except Exception as exc:  # the row is stored; the next login takes it
            log.warning("session re-read after an offline store failed: %s", exc)
            return
        decision = decide(Kind.MESSAGE, "chat", bare, True, sessions)
        if not isinstance(decision, Deliver):
            return
        self.cache.invalidate(bare)
        try:
            messages = await self.offline.take_all(bare)
        except Exception as exc:
            log.warning("offline flush after a late login failed: %s", exc)
            return
        for message in messages:
            self._tally[(Kind.MESSAGE.value, "flushed")] += 1
            for full, cm_id in decision.targets:
                self.bus.publish_soon(subjects.connection_manager(cm_id), Envelope(
                    Kind.MESSAGE, to=full, from_="", type="chat", origin=SERVICE,
                    payload=message).encode())

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
        self.bus.publish_soon(self.destinations.subject(bounce.to_bare), bounce.encode())

    # ---- sessions of dead connection managers ----------------------------------------------

    async def start(self) -> None:
        await super().start()
        self.tasks.append(asyncio.create_task(self._ghosts()))


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


def _child_ns(payload: bytes) -> str:
    """The namespace of an IQ's payload element ("" when it has none or does not parse).
    Only IQs to a bare JID are parsed here (they are few: account data, PEP)."""
    try:
        iq = parse_fragment(payload, MAX_BOUNCE_BYTES)
    except StreamError:
        return ""
    return namespace(iq[0].tag) if len(iq) and isinstance(iq[0].tag, str) else ""


def _has_body(payload: bytes) -> bool:
    """A message with a <body/> (XEP-0357 notifies those only)."""
    if b"<body" not in payload:
        return False
    try:
        return body_of(parse_fragment(payload, MAX_BOUNCE_BYTES)) is not None
    except Exception:
        return False
