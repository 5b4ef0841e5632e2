"""The roster service: jabber:iq:roster (RFC 6121 §2) and presence subscriptions (§3) for the
users of the partitions it owns.

Input (``stanzad.roster.<p>``, p = partition of the user whose roster changes):
- roster get/set IQs from the user's connection manager;
- subscription presence the user sends (outbound: origin is the user's session);
- subscription presence for the user from a contact (inbound: origin is this service), which
  the contact's roster partition forwarded after applying its own side.

The subscription states follow RFC 6121 Appendix A (shared/xmpp/subscription.py).  Every
change is pushed to each bound resource of the user (a simplification of §2.1.6's
"interested resources": any bound resource gets the push).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import replace
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from shared.bus import subjects
from shared.bus.envelope import Envelope, Kind, decoded
from shared.cluster.partitioned import PartitionedService
from shared.runtime.settings import RosterSettings
from shared.store import keys
from shared.store.account_data import AccountDataStore
from shared.store.accounts import AccountStore
from shared.store.archive import ArchiveStore, UnknownId
from shared.store.pg.database import DatabaseUnavailable
from shared.store.presence import LastActivityStore, PresenceStore
from shared.store.push import PushRegistration, PushStore
from shared.store.roster import ROSTER_NS, RosterItem, RosterStore, push_iq
from shared.store.sessions import SessionStore
from shared.xmpp import archive, avatar, ns, push
from shared.xmpp.errors import StanzaError, StanzaErrorCondition
from shared.xmpp.jid import JID, JIDError, domain_of
from shared.xmpp.parser import parse_fragment
from shared.xmpp.stanza import error_reply, iq_result
from shared.xmpp.subscription import (
    SUBSCRIPTION_TYPES,
    Direction,
    Subscription,
    apply,
    on_roster_remove,
)

from . import blocking, metrics
from .account import AccountData

log = logging.getLogger(__name__)

SERVICE = "roster"
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_PUSH_REGISTRATIONS = 32  # XEP-0357 app server nodes per account


class RosterService(PartitionedService):
    name = SERVICE
    role = "roster"
    uses_database = True  # rosters, account data

    def __init__(self, settings: RosterSettings) -> None:
        super().__init__(
            settings,
            settings.roster_id or f"roster-{secrets.token_hex(4)}",
            lambda p: [subjects.roster(p)],
            metrics.PARTITIONS.set,
        )
        self.roster_settings = settings
        self.rosters = RosterStore(self.db, SERVICE)
        self.sessions = SessionStore(self.redis, SERVICE)
        self.accounts = AccountStore(self.db, SERVICE)
        self.account_data = AccountDataStore(self.db, SERVICE)
        self.account = AccountData(self.account_data, archive=settings.mam_enabled,
                                   on_vcard=self._vcard_to_pep)
        self.archive = ArchiveStore(self.db, SERVICE)
        self.last_activity = LastActivityStore(self.db, SERVICE)
        self.push = PushStore(self.db, SERVICE)
        self.presence = PresenceStore(self.redis, self.rosters, SERVICE)


    async def start(self) -> None:
        await super().start()
        if self.settings.mam_enabled:
            self.tasks.append(asyncio.create_task(self._archive_upkeep()))

    async def _archive_upkeep(self) -> None:
        """Daily archive partitions ahead, retention and per-user caps (docs/operations.md
        "Message archive"); one roster process at a time does it (an advisory lock)."""
        s = self.settings
        while True:
            try:
                done = await self.archive.maintain(s.mam_retention_days,
                                                   s.mam_max_messages_per_user)
                if any(done.values()):
                    log.info("archive upkeep: %s", done)
            except Exception as exc:
                log.warning("archive upkeep failed: %s", exc)
            await asyncio.sleep(s.mam_maintenance_interval_s)

    async def handle_batch(self, batch: list[tuple[str, bytes]]) -> None:
        for env in decoded(batch):
            try:
                if env.kind is Kind.IQ:
                    await self._iq(env)
                elif env.kind is Kind.PRESENCE and env.type in SUBSCRIPTION_TYPES:
                    if "/" in env.origin:  # from the user's own session
                        await self._outbound(env)
                    else:
                        await self._inbound(env)
            except Exception:
                log.exception("roster handling failed")

    # ---- jabber:iq:roster (§2) -------------------------------------------------------------

    async def _iq(self, env: Envelope) -> None:
        iq = parse_fragment(env.payload, MAX_PAYLOAD_BYTES)
        if env.type not in ("get", "set") or len(iq) != 1:
            return
        try:
            await self._answer_iq(env, iq)
        except DatabaseUnavailable as exc:  # an answer, never a hang (RFC 6120 §8.3.3.8)
            log.warning("roster request failed: %s", exc)
            metrics.REQUESTS.labels("error").inc()
            err = StanzaError(StanzaErrorCondition.RESOURCE_CONSTRAINT)
            await self._to_session(env.from_, _cm(env), Kind.IQ,
                                   error_reply(iq, err, to=env.from_, from_=None))

    async def _answer_iq(self, env: Envelope, iq: etree._Element) -> None:
        query = iq.find(f"{{{ROSTER_NS}}}query")
        user = env.from_bare
        if query is None or (env.to and env.to != user):
            await self._account_iq(env, iq)
            return
        try:
            if env.type == "get":
                await self._get(env, query)
                metrics.REQUESTS.labels("get").inc()
            else:
                await self._set(env, user, query)
                metrics.REQUESTS.labels("set").inc()
        except StanzaError as err:
            metrics.REQUESTS.labels("error").inc()
            payload = error_reply(iq, err, to=env.from_, from_=None)
            await self._to_session(env.from_, _cm(env), Kind.IQ, payload)

    async def _account_iq(self, env: Envelope, iq: etree._Element) -> None:
        """vCard, private storage, disco on a bare JID: answered for the account."""
        account = env.to_bare or env.from_bare
        tag = iq[0].tag if isinstance(iq[0].tag, str) else ""
        if tag.startswith(f"{{{ns.BLOCKING}}}") and account == env.from_bare:
            await self._blocking(env, iq, account)
            return
        if (tag.startswith(f"{{{ns.MAM}}}") and account == env.from_bare
                and self.settings.mam_enabled):
            await self._archive_iq(env, iq, account)
            return
        try:
            if tag == f"{{{ns.LAST}}}query" and env.type == "get":
                child = await self._last_activity(env.from_bare, account)
            elif tag.startswith(f"{{{ns.PUSH}}}") and env.type == "set":
                child = await self._push_registration(env, iq[0], account)
            else:
                child = await self.account.handle(iq, env.from_, account)
        except StanzaError as err:
            payload = error_reply(iq, err, to=env.from_, from_=env.to or None)
        else:
            payload = iq_result(env.id, env.from_, env.to or None, child)
        await self._to_session(env.from_, _cm(env), Kind.IQ, payload)

    async def _vcard_to_pep(self, account: str, vcard: etree._Element) -> None:
        """XEP-0398 §3.2: a vCard with a PHOTO is published to the account's avatar data
        and metadata nodes (XEP-0084 §4), as publishes of the account itself to its pubsub
        partition that want no answer; its hash becomes the one the presence service puts
        in the account's presence (§4; a vCard without PHOTO: `<photo/>`, XEP-0153)."""
        photo = avatar.vcard_photo(vcard)
        await self.redis.set(keys.avatar_hash(account), photo.hash if photo else "")
        if photo is None:
            return
        p = subjects.partition(account, self.settings.partitions)
        for node, payload in zip((ns.AVATAR_DATA, ns.AVATAR_METADATA),
                                 avatar.pep_payloads(photo), strict=True):
            iq_id = f"{avatar.CONVERSION_ORIGIN}-{secrets.token_hex(6)}"
            iq = (f'<iq xmlns="{ns.CLIENT}" type="set" id="{iq_id}" from={quoteattr(account)} '
                  f'to={quoteattr(account)}><pubsub xmlns="{ns.PUBSUB}"><publish '
                  f'node="{node}"><item id="{photo.hash}">{payload}</item></publish>'
                  f"</pubsub></iq>")
            await self.publish(subjects.pubsub(p), Envelope(
                Kind.IQ, to=account, from_=account, type="set", id=iq_id,
                origin=avatar.CONVERSION_ORIGIN, payload=iq.encode()))
        metrics.VCARD_TO_AVATAR.inc()

    async def _blocking(self, env: Envelope, iq: etree._Element, account: str) -> None:
        """XEP-0191: answer, push the change to every resource, tell the router (its cache
        holds blocklists) and send unavailable presence to the newly blocked (§3.3.1)."""
        try:
            outcome = await blocking.handle(self.account_data, account, iq)
        except StanzaError as err:
            payload = error_reply(iq, err, to=env.from_, from_=None)
            await self._to_session(env.from_, _cm(env), Kind.IQ, payload)
            return
        if outcome.push:  # the routers' caches first: the client may act on the answer at once
            await self.session_event(
                account, int(await self.redis.incr(keys.sessions_version(account)))
            )
        await self._to_session(
            env.from_, _cm(env), Kind.IQ, iq_result(env.id, None, None, outcome.result)
        )
        if not outcome.push:
            return
        for resource, record in (await self.sessions.get(account)).items():
            full = f"{account}/{resource}"
            push = (
                f'<iq xmlns="{ns.CLIENT}" type="set" id="block{secrets.token_hex(4)}" '
                f"to={quoteattr(full)}>{outcome.push}</iq>"
            ).encode()
            await self._to_session(full, record.cm_id, Kind.IQ, push)
        for jid in outcome.blocked:
            await self._send_unavailable(account, jid)

    async def _archive_iq(self, env: Envelope, iq: etree._Element, account: str) -> None:
        """XEP-0313 §4 queries (the results streamed to the querying resource, then the IQ
        result with the XEP-0059 page) and XEP-0441 preferences of the user's own archive."""
        child = iq[0]
        out: list[bytes] = []
        try:
            if child.tag == _MAM_QUERY and env.type == "get":
                out.append(iq_result(env.id, env.from_, None, archive.query_form()))
            elif child.tag == _MAM_QUERY:
                query = archive.parse_query(child)
                try:
                    page = await self.archive.query(account, query)
                except UnknownId:
                    raise StanzaError(StanzaErrorCondition.ITEM_NOT_FOUND) from None
                rows = list(reversed(page.rows)) if query.flip else page.rows
                out.extend(archive.result_message(env.from_, account, query.query_id, row)
                           for row in rows)
                fin = archive.fin(page.rows, complete=page.complete, count=page.count,
                                  index=query.index)
                out.append(iq_result(env.id, env.from_, None, fin))
                metrics.REQUESTS.labels("archive_query").inc()
            elif child.tag == _MAM_PREFS and env.type == "get":
                prefs = await self.archive.prefs(account, self.settings.mam_default)
                out.append(iq_result(env.id, env.from_, None, prefs.xml()))
            elif child.tag == _MAM_PREFS:
                prefs = archive.parse_prefs(child)
                await self.archive.set_prefs(account, prefs)
                out.append(iq_result(env.id, env.from_, None, prefs.xml()))
            else:
                raise StanzaError(StanzaErrorCondition.FEATURE_NOT_IMPLEMENTED)
        except StanzaError as err:
            out = [error_reply(iq, err, to=env.from_, from_=None)]
        # one BATCH envelope per ~256 KiB: written in order, after the results the IQ result
        chunk: list[bytes] = []
        size = 0
        for stanza in out:
            if chunk and size + len(stanza) > _BATCH_BYTES:
                await self._to_session(env.from_, _cm(env), Kind.BATCH, b"".join(chunk))
                chunk, size = [], 0
            chunk.append(stanza)
            size += len(stanza)
        await self._to_session(env.from_, _cm(env), Kind.BATCH, b"".join(chunk))

    async def _last_activity(self, requester: str, account: str) -> str:
        """XEP-0012 §4: answered for the account, to itself or to a contact subscribed to
        its presence (forbidden to anyone else): 0 seconds while a resource is available
        (as ejabberd answers), else the time since the last one went unavailable and the
        status it left with."""
        if requester != account:
            item = await self.rosters.item(account, requester)
            if item is None or item.state.subscription not in (Subscription.FROM,
                                                               Subscription.BOTH):
                raise StanzaError(StanzaErrorCondition.FORBIDDEN)
        [online] = await self.presence.available([account])
        if online:
            return f'<query xmlns="{ns.LAST}" seconds="0"/>'
        last = await self.last_activity.seconds_since(account)
        if last is None:
            raise StanzaError(StanzaErrorCondition.ITEM_NOT_FOUND)
        seconds, status = last
        return f'<query xmlns="{ns.LAST}" seconds="{seconds}">{escape(status)}</query>'

    async def _push_registration(self, env: Envelope, element: etree._Element,
                                 account: str) -> str:
        """XEP-0357 §5, §6: enable or disable notifications to an app server, for the account
        itself only; kept in PostgreSQL (the resource that enabled it is remembered: its
        detached session is the one whose messages are notified)."""
        if account != env.from_bare:
            raise StanzaError(StanzaErrorCondition.FORBIDDEN)
        request = push.parse(element)
        if isinstance(request, push.Disable):
            await self.push.disable(account, request.service, request.node)
            metrics.PUSH_REGISTRATIONS.labels("disable").inc()
            return ""
        known = await self.push.registrations(account)
        if len(known) >= MAX_PUSH_REGISTRATIONS and not any(
            r.service == request.service and r.node == request.node for r in known
        ):
            raise StanzaError(StanzaErrorCondition.RESOURCE_CONSTRAINT, "too many")
        resource = env.from_.partition("/")[2]
        await self.push.enable(account, PushRegistration(
            request.service, request.node, resource, request.options, request.include_body))
        metrics.PUSH_REGISTRATIONS.labels("enable").inc()
        return ""

    async def _get(self, env: Envelope, query: etree._Element) -> None:
        """§2.2 roster get, with §2.6 versioning: unchanged → empty result; a known older
        version → empty result and a push for each change since."""
        user = env.from_bare
        ver, items, tombs = await self.rosters.load(user)
        asked = query.get("ver")
        if asked is not None and asked.isdigit() and int(asked) <= ver:
            since = int(asked)
            await self._to_session(env.from_, _cm(env), Kind.IQ, iq_result(env.id, None, None))
            changed = sorted(
                [(i.ver, _item_xml(i)) for i in items.values() if i.ver > since and not i.hidden]
                + [(v, _removed_xml(c)) for c, v in tombs.items() if v > since]
            )
            for item_ver, xml in changed:
                await self._push_to(env.from_, _cm(env), item_ver, xml)
            return
        body = "".join(_item_xml(i) for i in items.values() if not i.hidden)
        payload = f'<query xmlns="{ROSTER_NS}" ver="{ver}">{body}</query>'
        await self._to_session(
            env.from_, _cm(env), Kind.IQ, iq_result(env.id, None, None, payload)
        )

    async def _set(self, env: Envelope, user: str, query: etree._Element) -> None:
        """§2.3 add/update, §2.5 remove; errors per §2.3.3 and §2.5.3."""
        children = list(query)
        if len(children) != 1 or children[0].tag != f"{{{ROSTER_NS}}}item":
            raise StanzaError(StanzaErrorCondition.BAD_REQUEST, "exactly one item")
        el = children[0]
        try:
            contact = JID.parse(el.get("jid") or "")
        except JIDError:
            raise StanzaError(StanzaErrorCondition.BAD_REQUEST, "invalid jid") from None
        if contact.resource is not None:
            raise StanzaError(StanzaErrorCondition.BAD_REQUEST, "bare JIDs only")
        jid = str(contact)
        current = await self.rosters.item(user, jid)
        if el.get("subscription") == "remove":
            if current is None or current.hidden:
                raise StanzaError(StanzaErrorCondition.ITEM_NOT_FOUND)
            await self._remove(user, current)
            await self._to_session(env.from_, _cm(env), Kind.IQ, iq_result(env.id, None, None))
            return
        limit = self.roster_settings.max_roster_name_bytes
        name = el.get("name")
        groups = [g.text or "" for g in el.findall(f"{{{ROSTER_NS}}}group")]
        if len(set(groups)) != len(groups):
            raise StanzaError(StanzaErrorCondition.BAD_REQUEST, "duplicate group")
        if any(not g for g in groups):
            raise StanzaError(StanzaErrorCondition.NOT_ACCEPTABLE, "empty group name")
        if any(len(t.encode()) > limit for t in [*(groups), name or ""]):
            raise StanzaError(StanzaErrorCondition.NOT_ACCEPTABLE, "name or group too long")
        if current is None and await self.rosters.count(user) >= (
            self.roster_settings.max_roster_items
        ):
            raise StanzaError(StanzaErrorCondition.POLICY_VIOLATION, "roster full")
        base = current or RosterItem(jid)
        item = await self.rosters.put(
            user, replace(base, name=name or None, groups=tuple(groups), hidden=False)
        )
        await self._to_session(env.from_, _cm(env), Kind.IQ, iq_result(env.id, None, None))
        await self._push(user, item.ver, _item_xml(item))

    async def _remove(self, user: str, item: RosterItem) -> None:
        """§2.5.2: removing an item cancels the subscriptions both ways."""
        ver = await self.rosters.remove(user, item.jid)
        await self._push(user, ver, _removed_xml(item.jid))
        for type_ in on_roster_remove(item.state):
            await self._forward(user, item.jid, type_, None)
            if type_ == "unsubscribed":
                await self._send_unavailable(user, item.jid)

    # ---- subscriptions (§3, Appendix A) ----------------------------------------------------

    async def _outbound(self, env: Envelope) -> None:
        user = env.from_bare
        contact = env.to_bare
        if contact == user:
            return
        current = await self.rosters.item(user, contact)
        item = current or RosterItem(contact)
        outcome = apply(item.state, Direction.OUTBOUND, env.type)
        metrics.SUBSCRIPTIONS.labels("outbound", env.type).inc()
        creates = current is None and env.type == "subscribe"
        if outcome.changed or creates or (current and outcome.state != current.state):
            visible = not item.hidden or outcome.changed or creates
            stored = await self.rosters.put(
                user, replace(item, state=outcome.state, hidden=not visible)
            )
            if visible and (outcome.changed or creates):
                await self._push(user, stored.ver, _item_xml(stored))
        if outcome.route:
            await self._forward(user, contact, env.type, env.payload)
            if env.type == "subscribed":
                await self._send_presence(user, contact)  # §3.1.5
            elif env.type == "unsubscribed":
                await self._send_unavailable(user, contact)  # §3.2.2

    async def _inbound(self, env: Envelope) -> None:
        user = env.to_bare
        contact = env.from_bare
        if not await self.accounts.exists(user):
            if env.type == "subscribe":  # §3.1.3: no such user → auto-reply unsubscribed
                await self._forward(user, contact, "unsubscribed", None)
            return
        current = await self.rosters.item(user, contact)
        item = current or RosterItem(contact, hidden=True)
        outcome = apply(item.state, Direction.INBOUND, env.type)
        metrics.SUBSCRIPTIONS.labels("inbound", env.type).inc()
        if outcome.state != item.state:
            stored = await self.rosters.put(user, replace(item, state=outcome.state))
            if outcome.changed and not stored.hidden:
                await self._push(user, stored.ver, _item_xml(stored))
        if outcome.route:
            payload = (
                f'<presence xmlns="{ns.CLIENT}" from={quoteattr(contact)} to={quoteattr(user)} '
                f'type="{env.type}"/>'
            ).encode()
            await self.route(Envelope(Kind.PRESENCE, to=user, from_=contact, type=env.type,
                                       origin=SERVICE, payload=payload))
        if outcome.auto_reply:
            await self._forward(user, contact, outcome.auto_reply, None)
            await self._send_presence(user, contact)
        if env.type == "unsubscribe" and outcome.changed:
            await self._send_unavailable(user, contact)  # §3.3.3

    async def _forward(self, user: str, contact: str, type_: str, payload: bytes | None) -> None:
        """Hand a subscription stanza to the contact's roster partition (stamped with the
        user's bare JID, §3.1.2)."""
        stanza = (
            f'<presence xmlns="{ns.CLIENT}" from={quoteattr(user)} to={quoteattr(contact)} '
            f'type="{type_}"/>'
        ).encode()
        if payload is not None:
            el = parse_fragment(payload, MAX_PAYLOAD_BYTES)
            el.set("from", user)
            el.set("to", contact)
            stanza = etree.tostring(el)
        env = Envelope(Kind.PRESENCE, to=contact, from_=user, type=type_, origin=SERVICE,
                       payload=stanza)
        remote = contact.partition("@")[2]
        if not self.destinations.is_account(remote):  # federation: the contact's server's side
            await self.publish(subjects.s2s(subjects.partition(remote, self.settings.partitions)),
                                env)
            return
        p = subjects.partition(contact, self.settings.partitions)
        await self.publish(subjects.roster(p), env)

    async def _send_presence(self, user: str, contact: str) -> None:
        """The user's current presence goes to a contact that may now receive it: a probe
        the presence service answers from the stored presence (§3.1.5, §4.3)."""
        probe = Envelope(Kind.PRESENCE, to=user, from_=contact, type="probe", origin=SERVICE)
        p = subjects.partition(user, self.settings.partitions)
        await self.publish(subjects.presence(p), probe)

    async def _send_unavailable(self, user: str, contact: str) -> None:
        """Unavailable presence from each available resource of the user (§3.2.2, §3.3.3)."""
        for resource, record in (await self.sessions.get(user)).items():
            if not record.available:
                continue
            full = f"{user}/{resource}"
            payload = (
                f'<presence xmlns="{ns.CLIENT}" from={quoteattr(full)} to={quoteattr(contact)} '
                'type="unavailable"/>'
            ).encode()
            await self.route(Envelope(Kind.PRESENCE, to=contact, from_=full,
                                       type="unavailable", origin=SERVICE, payload=payload))

    # ---- output ----------------------------------------------------------------------------

    async def _push(self, user: str, ver: int, item_xml: str) -> None:
        """§2.1.6 roster push to every bound resource of the user."""
        for resource, record in (await self.sessions.get(user)).items():
            await self._push_to(f"{user}/{resource}", record.cm_id, ver, item_xml)
        metrics.PUSHES.inc()

    async def _push_to(self, full: str, cm_id: str, ver: int, item_xml: str) -> None:
        await self._to_session(full, cm_id, Kind.IQ, push_iq(full, ver, item_xml))

    async def _to_session(self, full: str, cm_id: str, kind: Kind, payload: bytes) -> None:
        env = Envelope(kind, to=full, from_="", type="result", origin=SERVICE, payload=payload)
        if domain_of(full) != self.settings.domain:
            # a remote requester (vCard, disco) through s2s, or a local service's (a room
            # asking for an occupant's vCard, XEP-0045 §16.3): where its domain is served,
            # with the answer's own 'from' and type (the s2s gateway sends nothing from no
            # domain of ours; a room matches the answer to its question by them)
            root = parse_fragment(payload, MAX_PAYLOAD_BYTES)
            await self.route(env._replace(from_=root.get("from", ""),
                                          type=root.get("type", "result")))
            return
        await self.publish(subjects.connection_manager(cm_id), env)



_MAM_QUERY = f"{{{ns.MAM}}}query"
_MAM_PREFS = f"{{{ns.MAM}}}prefs"
_BATCH_BYTES = 256 * 1024


def _cm(env: Envelope) -> str:
    """The connection manager of the session that sent the request."""
    return env.origin.partition("/")[0]


def _item_xml(item: RosterItem) -> str:
    """§2.1.2 a roster item as the client sees it."""
    return item.xml()


def _removed_xml(jid: str) -> str:
    return f'<item jid={quoteattr(jid)} subscription="remove"/>'

