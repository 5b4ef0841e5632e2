"""The pubsub service: XEP-0060 on the pubsub domain and XEP-0163 PEP on every account.

Input (``stanzad.pubsub.<p>``, p = partition of an account's bare JID for its PEP service;
on the pubsub domain, of the node a request names, ``<domain>/<node>``, and of the domain
itself for node-less requests: disco of the service, ``<default/>``, subscriptions and
affiliations across nodes, instant nodes; shared/router/ingress.py `node_key`):
- IQs in the pubsub namespaces (and disco for the pubsub domain) from connection managers,
  the router (IQs to a bare JID from other servers) or the s2s gateway;
- the answers to the XEP-0115 disco#info queries this service sends (to the pubsub domain);
- every broadcast presence of the partition's users, forwarded by the presence service, so
  that their resources get the last published items of the nodes they want (+notify);
- the available and unavailable presence remote contacts send the partition's users,
  copied by the s2s gateway: their caps, so that their resources get notifications and
  last published items through the s2s gateway.

The owner of a partition is the only writer of its nodes, so the items of a node keep the
order of their publishes (node-less requests only read, or create a node under a fresh
name).  A publish is answered only once its item is stored:
the publishes of one bus batch are written in one transaction before any answer
(`_flush`), and a request of another kind in the same batch first waits for them.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from shared.bus import subjects
from shared.bus.envelope import FANOUT_SEPARATOR, Envelope, Kind, decoded
from shared.cluster.partitioned import PartitionedService
from shared.runtime.settings import PubsubSettings
from shared.store import keys
from shared.store.account_data import AccountDataStore
from shared.store.accounts import AccountStore
from shared.store.pg.database import DatabaseUnavailable
from shared.store.presence import PresenceStore
from shared.store.pubsub import Item, Node, Publish, PubsubStore, Subscription
from shared.store.roster import RosterItem, RosterStore
from shared.store.sessions import SessionStore
from shared.xmpp import avatar, ns
from shared.xmpp.blocking import is_blocked
from shared.xmpp.caps import Caps, caps_of, features, ver_of
from shared.xmpp.errors import StanzaError, StanzaErrorCondition, StanzaErrorType, StreamError
from shared.xmpp.jid import JID, JIDError, bare_of, domain_of
from shared.xmpp.parser import parse_fragment
from shared.xmpp.pubsub import SERVICE_FEATURES
from shared.xmpp.stanza import error_reply, iq_result, namespace
from shared.xmpp.subscription import Subscription as RosterSubscription

from . import config as cfg
from . import metrics

log = logging.getLogger(__name__)

SERVICE: Final = "pubsub"
MAX_STANZA_BYTES: Final = 512 * 1024
SUBSCRIBED_FROM: Final = (RosterSubscription.FROM, RosterSubscription.BOTH)
SUBSCRIBED_TO: Final = (RosterSubscription.TO, RosterSubscription.BOTH)
CAPS_QUERY_PREFIX: Final = "caps-"
CAPS_TTL_S: Final = 7 * 24 * 3600
CAPS_PENDING_S: Final = 30
# remote contacts' resources with caps kept per account (soft state, XEP-0163 §4.3): at most
# this many, for at most this long after their last presence (a peer that vanished without
# unavailable presence is forgotten)
MAX_REMOTE_RESOURCES: Final = 1000
REMOTE_TTL_S: Final = 24 * 3600
MAX_DISCO_NODES: Final = 1000
# affiliations that may retrieve items and subscribe whatever the access model (§4.1)
MEMBERS: Final = frozenset({"owner", "publisher", "member"})
AFFILIATIONS: Final = frozenset({"owner", "publisher", "publish-only", "member", "none",
                                 "outcast"})


@dataclass(slots=True)
class Request:
    env: Envelope
    iq: etree._Element
    service: str  # the bare JID of the PEP account, or the pubsub domain
    requester: str  # full JID
    bare: str
    pep: bool

    @property
    def owner(self) -> bool:
        """The account owner of a PEP service (owner of each of its nodes)."""
        return self.pep and self.bare == self.service


@dataclass(slots=True)
class PendingPublish:
    request: Request
    publish: Publish
    node: Node
    answer: bytes


@dataclass(slots=True)
class Recipients:
    """Where a notification goes: local sessions grouped by connection manager, bare JIDs to
    route (normal messages to offline accounts are stored), remote JIDs.

    XEP-0191 §3.5 applies to notifications as to any stanza from ``sender`` (the PEP account
    or the pubsub domain): nobody gets one whose blocklist (``theirs``, local recipients)
    matches the sender, nor anyone the PEP account blocked (``mine``)."""

    sender: str = ""
    mine: frozenset[str] = frozenset()
    theirs: dict[str, frozenset[str]] = field(default_factory=dict)
    by_cm: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    route: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def allowed(self, jid: str) -> bool:
        theirs = self.theirs.get(bare_of(jid))
        return not ((self.mine and is_blocked(self.mine, jid))
                    or (theirs and is_blocked(theirs, self.sender)))

    def add_session(self, full: str, cm_id: str) -> None:
        if full not in self.seen and self.allowed(full):
            self.seen.add(full)
            self.by_cm[cm_id].append(full)

    def add_route(self, jid: str) -> None:
        if jid not in self.seen and self.allowed(jid):
            self.seen.add(jid)
            self.route.append(jid)


class PubsubService(PartitionedService):
    name = SERVICE
    role = "pubsub"
    uses_database = True  # nodes, items, affiliations, subscriptions; rosters; accounts

    def __init__(self, settings: PubsubSettings) -> None:
        super().__init__(
            settings,
            settings.pubsub_id or f"pubsub-{secrets.token_hex(4)}",
            lambda p: [subjects.pubsub(p)],
            metrics.PARTITIONS.set,
        )
        self.ps = settings
        self.store = PubsubStore(self.db, SERVICE)
        self.rosters = RosterStore(self.db, SERVICE)
        self.accounts = AccountStore(self.db, SERVICE)
        self.account_data = AccountDataStore(self.db, SERVICE)  # blocklists (XEP-0191)
        self.sessions = SessionStore(self.redis, SERVICE)
        self.presence = PresenceStore(self.redis, self.rosters, SERVICE)
        domains = [d for d, family in settings.service_domains.items() if family == "pubsub"]
        self.pubsub_domain = domains[0] if domains else ""
        self._pending: list[PendingPublish] = []
        self._rates: dict[str, tuple[float, float]] = {}  # bare -> (tokens, at)
        self._features: dict[str, frozenset[str]] = {}  # verified caps ver -> features

    # ---- input -------------------------------------------------------------------------------

    async def handle_batch(self, batch: list[tuple[str, bytes]]) -> None:
        for env in decoded(batch):
            try:
                if env.kind is Kind.IQ and env.type in ("get", "set"):
                    await self._iq(env)
                elif env.kind is Kind.IQ and env.id.startswith(CAPS_QUERY_PREFIX):
                    await self._flush()
                    await self._caps_answer(env)
                elif (env.kind is Kind.PRESENCE and "@" in env.to
                      and env.to_bare == env.from_bare):
                    await self._flush()
                    await self._contact_presence(env)
                elif (env.kind is Kind.PRESENCE and "@" in env.to
                      and not self.destinations.is_local(env.from_domain)):
                    await self._flush()
                    await self._remote_presence(env)
            except Exception:
                log.exception("pubsub handling failed")
        try:
            await self._flush()
        except Exception:
            log.exception("pubsub publish flush failed")

    async def _iq(self, env: Envelope) -> None:
        try:
            iq = parse_fragment(env.payload, MAX_STANZA_BYTES)
        except StreamError:
            return
        if len(iq) != 1 or not isinstance(iq[0].tag, str):
            await self._answer_error(env, iq, StanzaError(StanzaErrorCondition.BAD_REQUEST))
            return
        service = env.to_bare or env.from_bare
        r = Request(env, iq, service, env.from_, env.from_bare, "@" in service)
        child = iq[0]
        is_publish = (namespace(child.tag) == ns.PUBSUB
                      and child.find(f"{{{ns.PUBSUB}}}publish") is not None)
        if not is_publish:
            await self._flush()  # what this request reads was published before it
        operation = "unknown"
        try:
            if r.pep and not r.owner and not await self.accounts.exists(service):
                raise StanzaError(StanzaErrorCondition.SERVICE_UNAVAILABLE)  # RFC 6121 §8.5.1
            operation, answer = await self._dispatch(r, child)
        except StanzaError as err:
            metrics.REQUESTS.labels(operation, "error").inc()
            await self._answer_error(env, iq, err)
            return
        except DatabaseUnavailable as exc:
            log.warning("pubsub request failed: %s", exc)
            metrics.REQUESTS.labels(operation, "error").inc()
            await self._answer_error(env, iq, StanzaError(
                StanzaErrorCondition.RESOURCE_CONSTRAINT, type_=StanzaErrorType.WAIT))
            return
        if answer is not None:
            metrics.REQUESTS.labels(operation, "ok").inc()
            await self._answer(r, answer)

    async def _dispatch(self, r: Request, child: etree._Element) -> tuple[str, str | None]:
        """(operation, the result's child; None: answered later, after the store)."""
        space = namespace(child.tag)
        if space == ns.DISCO_INFO and not r.pep:
            return "disco", await self._disco_info(r, child)
        if space == ns.DISCO_ITEMS and not r.pep:
            return "disco", await self._disco_items(r, child)
        elements = [c for c in child if isinstance(c.tag, str)]
        if space == ns.PUBSUB and elements:
            first = elements[0]
            op = first.tag.rpartition("}")[2]
            handler = _PUBSUB_OPS.get((op, r.iq.get("type", "")))
            if handler is not None:
                return op, await handler(self, r, first, child)
        if space == ns.PUBSUB_OWNER and elements:
            first = elements[0]
            op = first.tag.rpartition("}")[2]
            handler = _OWNER_OPS.get((op, r.iq.get("type", "")))
            if handler is not None:
                return f"owner-{op}", await handler(self, r, first, child)
        if space in (ns.PUBSUB, ns.PUBSUB_OWNER):
            raise StanzaError(StanzaErrorCondition.FEATURE_NOT_IMPLEMENTED)
        raise StanzaError(StanzaErrorCondition.SERVICE_UNAVAILABLE)

    # ---- helpers -----------------------------------------------------------------------------

    async def _node(self, r: Request, element: etree._Element) -> Node:
        name = element.get("node")
        if not name:
            raise cfg.nodeid_required()
        node = await self.store.node(r.service, name)
        if node is None:
            raise cfg.item_not_found()
        return node

    async def _affiliation(self, r: Request, node: Node) -> str:
        if r.owner:
            return "owner"
        return await self.store.affiliation(node.service, node.name, r.bare)

    def _owner_of(self, node: Node) -> str:
        """Whose roster decides presence and roster access: the PEP account, or the node's
        creator on the pubsub domain."""
        return node.service if "@" in node.service else node.creator

    async def _access_error(self, node: Node, bare: str, affiliation: str) -> StanzaError | None:
        """Whether ``bare`` may subscribe and retrieve items (XEP-0060 §4.5, §6.1.3,
        §6.5.9); the error the XEP names when not."""
        if affiliation in MEMBERS:
            return None
        if affiliation == "outcast":
            return cfg.forbidden()  # §6.1.3.8, §6.5.9.6
        model = node.config.get("pubsub#access_model", "open")
        if model == "open":
            return None
        if model in ("presence", "roster"):
            item = await self.rosters.item(self._owner_of(node), bare)
            return _roster_access(model, node, item)
        if model == "whitelist":  # §6.1.3.4, §6.5.9.4
            return cfg.error(StanzaErrorCondition.NOT_ALLOWED, "closed-node")
        sub = await self.store.subscription(node.service, node.name, bare)  # authorize
        if sub is not None and sub.state == "subscribed":
            return None
        return cfg.error(StanzaErrorCondition.NOT_AUTHORIZED, "not-subscribed")

    def _rate_ok(self, bare: str) -> bool:
        rate = self.ps.pubsub_publish_rate
        now = time.monotonic()
        tokens, at = self._rates.get(bare, (rate * 5, now))
        tokens = min(rate * 5, tokens + (now - at) * rate)
        if tokens < 1:
            self._rates[bare] = (tokens, now)
            return False
        self._rates[bare] = (tokens - 1, now)
        if len(self._rates) > 100_000:
            self._rates.clear()
        return True

    def _max_items(self, node_config: dict[str, Any]) -> int:
        return min(int(node_config.get("pubsub#max_items", 1)), self.ps.pubsub_max_items)

    def _defaults(self, pep: bool) -> dict[str, Any]:
        return cfg.defaults(pep, self.ps.pubsub_max_items, self.ps.pubsub_max_payload_bytes)

    # ---- create, configure, delete, purge (§8) -----------------------------------------------

    async def _create(self, r: Request, element: etree._Element, pubsub: etree._Element
                      ) -> str | None:
        """§8.1: with a configuration (§8.1.3) or the defaults; instant nodes on the
        pubsub domain (§8.1.2); on PEP only the account creates."""
        if r.pep and not r.owner:
            raise cfg.forbidden()
        if not r.pep and not self.destinations.is_account(domain_of(r.bare)):
            raise cfg.forbidden()  # §8.1.3.1: only local accounts create nodes here
        name = element.get("node")
        if not name and r.pep:
            raise cfg.error(StanzaErrorCondition.NOT_ACCEPTABLE, "nodeid-required")
        config = self._defaults(r.pep)
        form = cfg.find_form(pubsub.find(f"{{{ns.PUBSUB}}}configure"))
        if form is not None:
            form_type, values = cfg.form_values(form)
            if form_type not in ("", cfg.NODE_CONFIG):
                raise cfg.error(StanzaErrorCondition.BAD_REQUEST, text="not a node_config form")
            config = cfg.apply_form(config, values, self.ps.pubsub_max_items)
        await self._check_node_limit(r)
        instant = not name
        name = name or uuid.uuid4().hex
        if not await self.store.create(r.service, name, r.bare, config):
            raise StanzaError(StanzaErrorCondition.CONFLICT)  # §8.1.3.2 (NodeID exists)
        metrics.NODES.labels("pep" if r.pep else "service", "created").inc()
        if instant:
            return f'<pubsub xmlns="{ns.PUBSUB}"><create node={quoteattr(name)}/></pubsub>'
        return ""

    async def _check_node_limit(self, r: Request) -> None:
        if r.pep:
            count = await self.store.count_nodes(r.service)
        else:
            count = len(await self.store.affiliations_of(r.service, r.bare))
        if count >= self.ps.pubsub_max_nodes:
            raise cfg.error(StanzaErrorCondition.NOT_ALLOWED,
                            text=f"at most {self.ps.pubsub_max_nodes} nodes")

    async def _owned(self, r: Request, element: etree._Element) -> Node:
        node = await self._node(r, element)
        if await self._affiliation(r, node) != "owner":
            raise cfg.forbidden()  # §8.2.3.2 and the like: insufficient privileges
        return node

    async def _configure_get(self, r: Request, element: etree._Element, _: etree._Element
                             ) -> str:
        node = await self._owned(r, element)
        return (f'<pubsub xmlns="{ns.PUBSUB_OWNER}"><configure node={quoteattr(node.name)}>'
                f"{cfg.config_form(node.config)}</configure></pubsub>")

    async def _configure_set(self, r: Request, element: etree._Element, _: etree._Element
                             ) -> str:
        node = await self._owned(r, element)
        form = cfg.find_form(element)
        if form is None:
            raise cfg.error(StanzaErrorCondition.BAD_REQUEST, text="no form")
        if form.get("type") == "cancel":  # §8.2.4
            return ""
        form_type, values = cfg.form_values(form)
        if form_type != cfg.NODE_CONFIG:
            raise cfg.error(StanzaErrorCondition.BAD_REQUEST, text="not a node_config form")
        config = cfg.apply_form(node.config, values, self.ps.pubsub_max_items)
        await self.store.configure(node.service, node.name, config)  # trimmed at next publish
        if config.get("pubsub#notify_config"):  # §8.2.5.2
            body = f"<configuration node={quoteattr(node.name)}/>"
            await self._notify(Node(node.service, node.name, node.creator, config), body)
        return ""

    async def _default(self, r: Request, element: etree._Element, _: etree._Element) -> str:
        """§8.3: the default configuration."""
        return (f'<pubsub xmlns="{ns.PUBSUB_OWNER}"><default>'
                f"{cfg.config_form(self._defaults(r.pep))}</default></pubsub>")

    async def _delete(self, r: Request, element: etree._Element, _: etree._Element) -> str:
        """§8.4: subscribers are told, with the redirect URI when given (§8.4.1)."""
        node = await self._owned(r, element)
        redirect = element.find(f"{{{ns.PUBSUB_OWNER}}}redirect")
        uri = redirect.get("uri") if redirect is not None else None
        body = (f"<delete node={quoteattr(node.name)}>"
                + (f"<redirect uri={quoteattr(uri)}/>" if uri else "") + "</delete>")
        recipients = None
        if node.config.get("pubsub#notify_delete", True):
            recipients = await self._recipients(node)  # before the subscriptions go
        await self.store.delete(node.service, node.name)
        metrics.NODES.labels("pep" if r.pep else "service", "deleted").inc()
        if recipients is not None:
            await self._send(node, body, recipients)
        return ""

    async def _purge(self, r: Request, element: etree._Element, _: etree._Element) -> str:
        node = await self._owned(r, element)
        if not node.config.get("pubsub#persist_items", True):  # §8.5.3.2
            raise cfg.unsupported("persistent-items")
        await self.store.purge(node.service, node.name)
        if node.config.get("pubsub#notify_retract", True):
            await self._notify(node, f"<purge node={quoteattr(node.name)}/>")
        return ""

    # ---- publish (§7.1), retract (§7.2) ------------------------------------------------------

    async def _publish(self, r: Request, element: etree._Element, pubsub: etree._Element
                       ) -> str | None:
        name = element.get("node")
        if not name:
            raise cfg.nodeid_required()  # §7.1.3.3
        options_form = cfg.find_form(pubsub.find(f"{{{ns.PUBSUB}}}publish-options"))
        options: dict[str, list[str]] = {}
        if options_form is not None:
            form_type, options = cfg.form_values(options_form)
            if form_type not in ("", cfg.PUBLISH_OPTIONS):
                raise cfg.error(StanzaErrorCondition.BAD_REQUEST, text="not publish-options")
        node = await self.store.node(r.service, name)
        if node is None:
            if not r.owner:  # auto-create (XEP-0163 §3) for the account itself only
                raise cfg.item_not_found()  # §7.1.3.3
            config = self._defaults(True)
            try:  # the options become the configuration (§7.1.5)
                config = cfg.apply_form(config, options, self.ps.pubsub_max_items)
            except StanzaError:
                raise cfg.error(StanzaErrorCondition.CONFLICT, "precondition-not-met") from None
            await self._check_node_limit(r)
            await self.store.create(r.service, name, r.bare, config)
            metrics.NODES.labels("pep", "created").inc()
            node = Node(r.service, name, r.bare, config)
        elif options and not cfg.preconditions_met(node.config, options,
                                                   self.ps.pubsub_max_items):
            raise cfg.error(StanzaErrorCondition.CONFLICT, "precondition-not-met")  # §7.1.5
        affiliation = await self._affiliation(r, node)
        model = node.config.get("pubsub#publish_model", "publishers")
        if affiliation not in ("owner", "publisher", "publish-only"):
            allowed = model == "open" or (model == "subscribers" and (
                sub := await self.store.subscription(node.service, node.name, r.bare)
            ) is not None and sub.state == "subscribed")
            if not allowed or affiliation == "outcast":
                raise cfg.forbidden()  # §7.1.3.1
        items = element.findall(f"{{{ns.PUBSUB}}}item")
        persist = node.config.get("pubsub#persist_items", True)
        payloads = node.config.get("pubsub#deliver_payloads", True)
        if len(items) > 1:
            raise cfg.error(StanzaErrorCondition.BAD_REQUEST, "invalid-payload")  # §7.1.3.5
        if not items:
            if persist or payloads:
                raise cfg.error(StanzaErrorCondition.BAD_REQUEST, "item-required")  # §7.1.3.6
            item_el = None
        else:
            item_el = items[0]
        payload = b""
        if item_el is not None:
            children = [c for c in item_el if isinstance(c.tag, str)]
            if len(children) > 1:
                raise cfg.error(StanzaErrorCondition.BAD_REQUEST, "invalid-payload")
            if not children and (persist or payloads):
                raise cfg.error(StanzaErrorCondition.BAD_REQUEST, "payload-required")
            if children:
                payload = etree.tostring(children[0], with_tail=False)
                if len(payload) > self.ps.pubsub_max_payload_bytes:  # §7.1.3.4
                    raise cfg.error(StanzaErrorCondition.NOT_ACCEPTABLE, "payload-too-big")
        if not self._rate_ok(r.bare):
            raise StanzaError(StanzaErrorCondition.RESOURCE_CONSTRAINT, "publishing too fast",
                              StanzaErrorType.WAIT)
        item_id = (item_el.get("id") if item_el is not None else None) or uuid.uuid4().hex
        item = Item(item_id, r.bare, payload)
        answer = (f'<pubsub xmlns="{ns.PUBSUB}"><publish node={quoteattr(node.name)}>'
                  f"<item id={quoteattr(item_id)}/></publish></pubsub>")
        if not persist:  # nothing to store: answer and notify now
            metrics.PUBLISHES.inc()
            await self._answer(r, answer)
            await self._notify_item(node, item)
            return None
        self._pending.append(PendingPublish(
            r, Publish(node.service, node.name, item, self._max_items(node.config)), node,
            iq_result(r.env.id, r.requester, r.env.to or None, answer)))
        return None

    async def _flush(self) -> None:
        """Store the pending publishes in one transaction, then answer and notify (a
        publish is acknowledged only once stored)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            await self.store.publish_many([p.publish for p in pending])
        except Exception as exc:
            log.warning("storing %d items failed: %s", len(pending), exc)
            for p in pending:
                metrics.REQUESTS.labels("publish", "error").inc()
                await self._answer_error(p.request.env, p.request.iq, StanzaError(
                    StanzaErrorCondition.RESOURCE_CONSTRAINT, type_=StanzaErrorType.WAIT))
            return
        metrics.ITEMS.inc(len(pending))
        for p in pending:
            metrics.PUBLISHES.inc()
            metrics.REQUESTS.labels("publish", "ok").inc()
            await self._deliver_answer(p.request, p.answer)
        for p in pending:
            await self._notify_item(p.node, p.publish.item)
        for p in pending:
            if (p.node.name == ns.AVATAR_METADATA and p.request.owner
                    and p.request.env.origin != avatar.CONVERSION_ORIGIN):
                try:
                    await self._avatar_to_vcard(p.request.bare, p.publish.item, pending)
                except Exception as exc:  # the publish stands; the vCard stays as it was
                    log.warning("avatar to vCard conversion failed: %s", exc)

    async def _avatar_to_vcard(self, bare: str, metadata: Item,
                               batch: list[PendingPublish]) -> None:
        """XEP-0398 §3.1: the account's new avatar metadata puts the image of its data
        node into the vCard's PHOTO (an empty metadata, §4.5 of XEP-0084, removes it), and
        its hash becomes the one the presence service adds to the account's presence."""
        info = avatar.metadata_info(metadata.payload)
        photo = None
        if info is not None:
            item_id, type_ = info
            stored = next((p.publish.item for p in reversed(batch)
                           if p.publish.service == bare and p.publish.node == ns.AVATAR_DATA
                           and p.publish.item.id == item_id), None)
            if stored is None:
                found = await self.store.items(bare, ns.AVATAR_DATA, ids=[item_id])
                stored = found[0] if found else None
            data = avatar.data_bytes(stored.payload) if stored is not None else None
            if not data:
                return  # the data is not (yet) there: nothing to convert
            photo = avatar.Photo(type_, data)
        vcard = await self.account_data.vcard(bare)
        await self.account_data.set_vcard(bare, avatar.with_photo(vcard, photo))
        await self.redis.set(keys.avatar_hash(bare), photo.hash if photo else "")
        metrics.AVATAR_TO_VCARD.inc()

    async def _retract(self, r: Request, element: etree._Element, _: etree._Element) -> str:
        node = await self._node(r, element)
        items = element.findall(f"{{{ns.PUBSUB}}}item")
        if not items or not items[0].get("id"):
            raise cfg.error(StanzaErrorCondition.BAD_REQUEST, "item-required")  # §7.2.3.3
        affiliation = await self._affiliation(r, node)
        if affiliation not in ("owner", "publisher", "publish-only"):
            raise cfg.forbidden()  # §7.2.3.1
        if not node.config.get("pubsub#persist_items", True):
            raise cfg.unsupported("persistent-items")  # §7.2.3.4
        await self._flush()
        item_id = items[0].get("id", "")
        if not await self.store.retract(node.service, node.name, item_id):
            raise cfg.item_not_found()  # §7.2.3.5
        notify = element.get("notify")
        if notify in ("1", "true") or (notify is None
                                       and node.config.get("pubsub#notify_retract", True)):
            body = (f"<items node={quoteattr(node.name)}><retract id={quoteattr(item_id)}/>"
                    "</items>")
            await self._notify(node, body)
        return ""

    # ---- subscribe (§6.1), unsubscribe (§6.2), options (§6.3) --------------------------------

    def _own_jid(self, r: Request, element: etree._Element, mismatch: StanzaError) -> str:
        raw = element.get("jid") or ""
        try:
            jid = JID.parse(raw)
        except JIDError:
            raise cfg.error(StanzaErrorCondition.BAD_REQUEST, "invalid-jid") from None
        if jid.bare_str != r.bare:
            raise mismatch
        return str(jid)

    async def _subscribe(self, r: Request, element: etree._Element, pubsub: etree._Element
                         ) -> str | None:
        jid = self._own_jid(r, element,
                            cfg.error(StanzaErrorCondition.BAD_REQUEST, "invalid-jid"))
        node = await self._node(r, element)
        affiliation = await self._affiliation(r, node)
        denied = await self._access_error(node, r.bare, affiliation)
        model = node.config.get("pubsub#access_model")
        pending = False
        if denied is not None:
            if model != "authorize" or affiliation == "outcast":
                raise denied
            pending = True  # §6.1.2: the owner approves (§8.6)
        options: dict[str, Any] = {}
        form = cfg.find_form(pubsub.find(f"{{{ns.PUBSUB}}}options"))
        if form is not None:
            options = cfg.parse_options(cfg.form_values(form)[1])
        existing = await self.store.subscription(node.service, node.name, jid)
        subid = existing.subid if existing else uuid.uuid4().hex
        state = "pending" if pending else "subscribed"
        if not await self.store.subscribe(node.service, node.name,
                                          Subscription(jid, subid, state, options),
                                          self.ps.pubsub_max_subscriptions):
            raise cfg.error(StanzaErrorCondition.NOT_ALLOWED, "too-many-subscriptions")
        answer = (f'<pubsub xmlns="{ns.PUBSUB}"><subscription node={quoteattr(node.name)} '
                  f"jid={quoteattr(jid)} subid={quoteattr(subid)} subscription=\"{state}\"/>"
                  "</pubsub>")
        if pending:
            await self._ask_owner(node, jid)
        elif node.config.get("pubsub#send_last_published_item") in ("on_sub",
                                                                     "on_sub_and_presence"):
            await self._answer(r, answer)  # the answer first, then the last item (§6.1.7)
            last = await self.store.items(node.service, node.name, last=1,
                                          expire_s=node.config.get("pubsub#item_expire", 0))
            if last:
                body = self._items_body(node, last)
                rec = Recipients()
                await self._resolve(rec, [jid], headline=True)
                await self._send(node, body, rec)
            return None
        return answer

    async def _ask_owner(self, node: Node, jid: str) -> None:
        """§8.6: the owner gets a subscription authorization form."""
        form = (f'<x xmlns="{ns.DATA}" type="form"><title>PubSub subscriber request'
                '</title><field var="FORM_TYPE" type="hidden"><value>'
                f"{ns.PUBSUB}#subscribe_authorization</value></field>"
                f'<field var="pubsub#node" type="text-single"><value>{escape(node.name)}'
                '</value></field><field var="pubsub#subscriber_jid" type="jid-single"><value>'
                f'{escape(jid)}</value></field><field var="pubsub#allow" type="boolean">'
                "<value>false</value></field></x>")
        owner = self._owner_of(node)
        payload = (f'<message xmlns="{ns.CLIENT}" from={quoteattr(node.service)} '
                   f'to={quoteattr(owner)} id="{secrets.token_hex(6)}">{form}</message>')
        await self.route(Envelope(Kind.MESSAGE, to=owner, from_=node.service, origin=SERVICE,
                                  payload=payload.encode()))

    async def _unsubscribe(self, r: Request, element: etree._Element, _: etree._Element
                           ) -> str:
        jid = self._own_jid(r, element, cfg.forbidden())  # §6.2.3.3
        node = await self._node(r, element)
        if not await self.store.unsubscribe(node.service, node.name, jid):
            raise cfg.error(StanzaErrorCondition.UNEXPECTED_REQUEST, "not-subscribed")
        return ""

    async def _options_get(self, r: Request, element: etree._Element, _: etree._Element
                           ) -> str:
        jid = self._own_jid(r, element, cfg.forbidden())  # §6.3.4.1
        node = await self._node(r, element)
        sub = await self.store.subscription(node.service, node.name, jid)
        if sub is None:
            raise cfg.error(StanzaErrorCondition.UNEXPECTED_REQUEST, "not-subscribed")
        return (f'<pubsub xmlns="{ns.PUBSUB}"><options node={quoteattr(node.name)} '
                f"jid={quoteattr(jid)}>{cfg.options_form(sub.options.get('deliver', True))}"
                "</options></pubsub>")

    async def _options_set(self, r: Request, element: etree._Element, _: etree._Element
                           ) -> str:
        jid = self._own_jid(r, element, cfg.forbidden())
        node = await self._node(r, element)
        sub = await self.store.subscription(node.service, node.name, jid)
        if sub is None:
            raise cfg.error(StanzaErrorCondition.UNEXPECTED_REQUEST, "not-subscribed")
        form = cfg.find_form(element)
        if form is None:
            raise cfg.error(StanzaErrorCondition.BAD_REQUEST, "invalid-options")
        options = cfg.parse_options(cfg.form_values(form)[1])
        await self.store.subscribe(node.service, node.name,
                                   Subscription(jid, sub.subid, sub.state, options),
                                   self.ps.pubsub_max_subscriptions)
        return ""

    # ---- retrieval (§5.6, §5.7, §6.5) --------------------------------------------------------

    async def _items(self, r: Request, element: etree._Element, pubsub: etree._Element) -> str:
        node = await self._node(r, element)
        denied = await self._access_error(node, r.bare, await self._affiliation(r, node))
        if denied is not None:
            raise denied
        expire = int(node.config.get("pubsub#item_expire", 0))
        ids = [i.get("id", "") for i in element.findall(f"{{{ns.PUBSUB}}}item") if i.get("id")]
        rsm = pubsub.find(f"{{{ns.RSM}}}set")
        page = ""
        if ids:
            found = await self.store.items(node.service, node.name, ids=ids, expire_s=expire)
        elif rsm is not None:  # XEP-0059 (XEP-0060 §6.5.4)
            max_text = rsm.findtext(f"{{{ns.RSM}}}max")
            limit = int(max_text) if max_text and max_text.isdigit() else 0
            before = rsm.find(f"{{{ns.RSM}}}before")
            if before is not None:  # the page before an item, or the last page (§2.5)
                found = await self.store.items(node.service, node.name, last=limit,
                                               before=before.text or "", expire_s=expire)
            else:
                found = await self.store.items(node.service, node.name, last=limit,
                                               after=rsm.findtext(f"{{{ns.RSM}}}after") or "",
                                               expire_s=expire)
            count = await self.store.count_items(node.service, node.name, expire)
            if found:
                page = (f'<set xmlns="{ns.RSM}"><first>{escape(found[0].id)}</first>'
                        f"<last>{escape(found[-1].id)}</last><count>{count}</count></set>")
            else:
                page = f'<set xmlns="{ns.RSM}"><count>{count}</count></set>'
        else:
            max_items = element.get("max_items", "")
            last = int(max_items) if max_items.isdigit() else 0
            found = await self.store.items(node.service, node.name, last=last, expire_s=expire)
        return f'<pubsub xmlns="{ns.PUBSUB}">{self._items_body(node, found, True)}{page}</pubsub>'

    def _items_body(self, node: Node, items: Iterable[Item], payloads: bool | None = None
                    ) -> str:
        if payloads is None:
            payloads = node.config.get("pubsub#deliver_payloads", True)
        body = "".join(
            f"<item id={quoteattr(i.id)}>{i.payload.decode()}</item>" if payloads and i.payload
            else f"<item id={quoteattr(i.id)}/>" for i in items)
        return f"<items node={quoteattr(node.name)}>{body}</items>"

    async def _subscriptions(self, r: Request, element: etree._Element, _: etree._Element
                             ) -> str:
        """§5.6: the requester's own subscriptions (bare and full JID)."""
        wanted = element.get("node")
        found = await self.store.subscriptions_of(r.service, r.bare)
        if r.requester != r.bare:
            found += await self.store.subscriptions_of(r.service, r.requester)
        body = "".join(
            f"<subscription node={quoteattr(n)} jid={quoteattr(s.jid)} "
            f'subscription="{s.state}" subid={quoteattr(s.subid)}/>'
            for n, s in found if not wanted or n == wanted)
        return f'<pubsub xmlns="{ns.PUBSUB}"><subscriptions>{body}</subscriptions></pubsub>'

    async def _affiliations(self, r: Request, element: etree._Element, _: etree._Element
                            ) -> str:
        """§5.7: the requester's affiliations; the account owns every node of its PEP."""
        wanted = element.get("node")
        if r.owner:
            nodes = await self.store.nodes(r.service, self.ps.pubsub_max_nodes)
            found = dict.fromkeys(nodes, "owner")
        else:
            found = await self.store.affiliations_of(r.service, r.bare)
        body = "".join(f"<affiliation node={quoteattr(n)} affiliation=\"{a}\"/>"
                       for n, a in found.items() if not wanted or n == wanted)
        return f'<pubsub xmlns="{ns.PUBSUB}"><affiliations>{body}</affiliations></pubsub>'

    # ---- owner management of subscriptions (§8.8) and affiliations (§8.9) --------------------

    async def _owner_subscriptions_get(self, r: Request, element: etree._Element,
                                       _: etree._Element) -> str:
        node = await self._owned(r, element)
        subs: list[Subscription] = []
        after = ""
        while page := await self.store.subscribers(node.service, node.name, after,
                                                   self.ps.pubsub_fanout_page):
            subs.extend(page)
            after = page[-1].jid
            if len(subs) >= 10_000:  # an answer of bounded size
                break
        body = "".join(f"<subscription jid={quoteattr(s.jid)} subscription=\"{s.state}\" "
                       f"subid={quoteattr(s.subid)}/>" for s in subs)
        return (f'<pubsub xmlns="{ns.PUBSUB_OWNER}"><subscriptions '
                f"node={quoteattr(node.name)}>{body}</subscriptions></pubsub>")

    async def _owner_subscriptions_set(self, r: Request, element: etree._Element,
                                       _: etree._Element) -> str:
        node = await self._owned(r, element)
        for entry in element.findall(f"{{{ns.PUBSUB_OWNER}}}subscription"):
            try:
                jid = str(JID.parse(entry.get("jid") or ""))
            except JIDError:
                raise cfg.error(StanzaErrorCondition.BAD_REQUEST, "invalid-jid") from None
            state = entry.get("subscription")
            if state == "none":
                await self.store.unsubscribe(node.service, node.name, jid)
            elif state in ("subscribed", "pending"):
                old = await self.store.subscription(node.service, node.name, jid)
                sub = Subscription(jid, old.subid if old else uuid.uuid4().hex, state,
                                   old.options if old else {})
                await self.store.subscribe(node.service, node.name, sub,
                                           self.ps.pubsub_max_subscriptions)
            else:
                raise StanzaError(StanzaErrorCondition.BAD_REQUEST)
        return ""

    async def _owner_affiliations_get(self, r: Request, element: etree._Element,
                                      _: etree._Element) -> str:
        node = await self._owned(r, element)
        found = await self.store.affiliations(node.service, node.name)
        if r.pep:
            found[node.service] = "owner"
        body = "".join(f"<affiliation jid={quoteattr(j)} affiliation=\"{a}\"/>"
                       for j, a in found.items())
        return (f'<pubsub xmlns="{ns.PUBSUB_OWNER}"><affiliations '
                f"node={quoteattr(node.name)}>{body}</affiliations></pubsub>")

    async def _owner_affiliations_set(self, r: Request, element: etree._Element,
                                      _: etree._Element) -> str:
        node = await self._owned(r, element)
        changes: dict[str, str] = {}
        for entry in element.findall(f"{{{ns.PUBSUB_OWNER}}}affiliation"):
            try:
                jid = JID.parse(entry.get("jid") or "").bare_str
            except JIDError:
                raise cfg.error(StanzaErrorCondition.BAD_REQUEST, "invalid-jid") from None
            affiliation = entry.get("affiliation", "")
            if affiliation not in AFFILIATIONS:
                raise StanzaError(StanzaErrorCondition.BAD_REQUEST)
            if jid == r.bare and affiliation != "owner":
                raise StanzaError(StanzaErrorCondition.NOT_ACCEPTABLE, "the owner stays")
            changes[jid] = affiliation
        await self.store.set_affiliations(node.service, node.name, changes)
        return ""

    # ---- service discovery of the pubsub domain (§5.1-§5.5) ----------------------------------

    async def _disco_info(self, r: Request, query: etree._Element) -> str:
        name = query.get("node")
        if not name:
            feats = "".join(f'<feature var="{f}"/>'
                            for f in (ns.DISCO_INFO, ns.DISCO_ITEMS, ns.PUBSUB, *SERVICE_FEATURES))
            return (f'<query xmlns="{ns.DISCO_INFO}"><identity category="pubsub" '
                    f'type="service" name="Publish-Subscribe"/>{feats}</query>')
        node = await self.store.node(r.service, name)
        if node is None:
            raise cfg.item_not_found()
        meta = cfg.config_form(node.config, cfg.META_DATA, "result")
        return (f'<query xmlns="{ns.DISCO_INFO}" node={quoteattr(name)}>'
                f'<identity category="pubsub" type="leaf"/><feature var="{ns.PUBSUB}"/>{meta}'
                "</query>")

    async def _disco_items(self, r: Request, query: etree._Element) -> str:
        name = query.get("node")
        if not name:
            nodes = await self.store.nodes(r.service, MAX_DISCO_NODES)
            body = "".join(f"<item jid={quoteattr(r.service)} node={quoteattr(n)}/>"
                           for n in nodes)
            return f'<query xmlns="{ns.DISCO_ITEMS}">{body}</query>'
        node = await self.store.node(r.service, name)
        if node is None:
            raise cfg.item_not_found()
        if await self._access_error(node, r.bare, await self._affiliation(r, node)):
            body = ""
        else:  # §5.5: the item ids as names
            items = await self.store.items(node.service, node.name, last=MAX_DISCO_NODES)
            body = "".join(f"<item jid={quoteattr(r.service)} name={quoteattr(i.id)}/>"
                           for i in items)
        return f'<query xmlns="{ns.DISCO_ITEMS}" node={quoteattr(name)}>{body}</query>'

    # ---- notifications (§7.1.2, §4.3 XEP-0163) -----------------------------------------------

    async def _notify_item(self, node: Node, item: Item) -> None:
        if not node.config.get("pubsub#deliver_notifications", True):
            return
        await self._notify(node, self._items_body(node, [item]))

    async def _notify(self, node: Node, body: str) -> None:
        await self._send(node, body, await self._recipients(node))

    async def _recipients(self, node: Node) -> Recipients:
        """Every recipient of the node's notifications: for PEP, the account's own
        resources and its contacts' that asked for ``node+notify`` (XEP-0163 §4.3, filtered
        by the access model); then the explicit subscribers, read in pages."""
        rec = Recipients(node.service)
        headline = node.config.get("pubsub#notification_type", "headline") == "headline"
        if "@" in node.service:
            [(_, rec.mine)] = await self.account_data.routing([node.service])
            await self._pep_recipients(node, rec)
        after = ""
        page_size = self.ps.pubsub_fanout_page
        while True:
            page = await self.store.subscribers(node.service, node.name, after, page_size)
            jids = [s.jid for s in page
                    if s.state == "subscribed" and s.options.get("deliver", True)]
            await self._resolve(rec, jids, headline)
            if len(page) < page_size:
                break
            after = page[-1].jid
        return rec

    async def _resolve(self, rec: Recipients, jids: list[str], headline: bool) -> None:
        """Local JIDs to their sessions (a full JID: that session; a bare JID: every available
        resource for headlines, RFC 6121 §8.5.2.1.1; normal messages to a bare JID are routed
        so that an offline account stores them), remote JIDs to the s2s gateway."""
        local = [bare_of(j) for j in jids if domain_of(j) == self.settings.domain]
        await self._blocklists(rec, local)
        local_bares = []
        for jid in jids:
            domain = domain_of(jid)
            if domain not in self.destinations.accounts or ("/" not in jid and not headline):
                rec.add_route(jid)
            else:
                local_bares.append(bare_of(jid))
        if not local_bares:
            return
        unique = list(dict.fromkeys(local_bares))
        tables = dict(zip(unique, await self.sessions.get_many(unique), strict=True))
        for jid in jids:
            if domain_of(jid) not in self.destinations.accounts:
                continue
            bare, slash, resource = jid.partition("/")
            table = tables.get(bare)
            if table is None:
                continue
            if slash:
                found = table.get(resource)
                if found is not None:
                    rec.add_session(jid, found.cm_id)
            else:
                for res, record in table.items():
                    if record.available and record.priority >= 0:
                        rec.add_session(f"{bare}/{res}", record.cm_id)

    async def _pep_recipients(self, node: Node, rec: Recipients) -> None:
        owner = node.service
        model = node.config.get("pubsub#access_model", "presence")
        items = await self.rosters.items(owner)
        contacts: list[str] = []
        if model in ("open", "presence", "roster"):
            contacts = [c for c, item in items.items()
                        if _roster_access(model, node, item) is None]
        elif model == "whitelist":  # XEP-0223: the owner and the members it names
            affiliated = await self.store.affiliations(node.service, node.name)
            contacts = [j for j, a in affiliated.items() if a in MEMBERS]
        local = [owner, *(c for c in contacts
                          if domain_of(c) in self.destinations.accounts and c != owner)]
        want = f"{node.name}+notify"
        await self._blocklists(rec, local)
        for full, cm_id, feats in await self._interested(local):
            if want in feats:
                rec.add_session(full, cm_id)
        remote = {c for c in contacts if not self.destinations.is_local(domain_of(c))}
        if remote:  # through the s2s gateway, to each resource that wants it
            for full, feats in await self._remote_interested(owner, remote):
                if want in feats:
                    rec.add_route(full)

    async def _remote_interested(self, owner: str, contacts: set[str]
                                 ) -> list[tuple[str, frozenset[str]]]:
        """(full JID, caps features) of the available resources of ``owner``'s remote
        ``contacts`` whose caps are known (`_remote_presence` keeps them)."""
        found = [(full.decode(), ver.decode()) for full, ver in
                 (await self.redis.hgetall(keys.pep_remote(owner))).items()]
        found = [(full, ver) for full, ver in found if bare_of(full) in contacts]
        known = await self._known_features({ver for _, ver in found})
        return [(full, known[ver]) for full, ver in found if ver in known]

    async def _blocklists(self, rec: Recipients, bares: list[str]) -> None:
        """The blocklists of local recipients (one PostgreSQL query), when the sender is
        known (XEP-0191 §3.5)."""
        unique = [b for b in dict.fromkeys(bares) if b not in rec.theirs]
        if rec.sender and unique:
            for bare, (_, blocked) in zip(unique, await self.account_data.routing(unique),
                                          strict=True):
                rec.theirs[bare] = blocked

    async def _interested(self, bares: list[str]) -> list[tuple[str, str, frozenset[str]]]:
        """(full JID, connection manager, caps features) of every available resource of
        ``bares`` whose features are known."""
        tables = await self.sessions.get_many(bares)
        presences = await self.presence.available(bares)
        found: list[tuple[str, Caps, str]] = []
        for bare, table, stanzas in zip(bares, tables, presences, strict=True):
            for resource, stanza in stanzas.items():
                record = table.get(resource)
                if record is None or not record.available:
                    continue
                caps = _caps(stanza)
                if caps is not None and caps.hash:
                    found.append((f"{bare}/{resource}", caps, record.cm_id))
        known = await self._known_features({c.ver for _, c, _ in found})
        return [(full, cm_id, known[c.ver]) for full, c, cm_id in found if c.ver in known]

    async def _known_features(self, vers: set[str]) -> dict[str, frozenset[str]]:
        known = {v: self._features[v] for v in vers if v in self._features}
        missing = [v for v in vers if v not in known]
        if missing:
            # one GET each, not MGET: each ver's key is of its own hash slot (Redis Cluster)
            async with self.redis.pipeline(transaction=False) as pipe:
                for v in missing:
                    pipe.get(keys.caps_features(v))
                values = await pipe.execute()
            for ver, raw in zip(missing, values, strict=True):
                if raw is not None:
                    known[ver] = self._features[ver] = frozenset(raw.decode().split("\n"))
            if len(self._features) > 10_000:
                self._features.clear()
        return known

    async def _send(self, node: Node, body: str, rec: Recipients) -> None:
        """One FANOUT envelope per connection manager for local sessions, one message per
        remote (or routed) JID."""
        type_ = node.config.get("pubsub#notification_type", "headline")
        stanza_id = secrets.token_hex(8)
        payload = (f'<message xmlns="{ns.CLIENT}" from={quoteattr(node.service)} '
                   f'type="{type_}" id="{stanza_id}"><event xmlns="{ns.PUBSUB_EVENT}">{body}'
                   "</event></message>").encode()
        sessions = 0
        for cm_id, fulls in rec.by_cm.items():
            env = Envelope(Kind.FANOUT, to=FANOUT_SEPARATOR.join(fulls), from_=node.service,
                           origin=SERVICE, payload=payload)
            await self.publish(subjects.connection_manager(cm_id), env)
            sessions += len(fulls)
        for jid in rec.route:
            routed = payload.replace(b"<message ", b"<message to=" + quoteattr(jid).encode()
                                     + b" ", 1)
            await self.route(Envelope(Kind.MESSAGE, to=jid, from_=node.service, type=type_,
                                      id=stanza_id, origin=SERVICE, payload=routed))
        metrics.NOTIFICATIONS.labels("session").inc(sessions)
        metrics.NOTIFICATIONS.labels("routed").inc(len(rec.route))
        metrics.FANOUT.observe(sessions + len(rec.route))

    # ---- presence of the partition's users: XEP-0115 caps, last published items --------------

    async def _contact_presence(self, env: Envelope) -> None:
        """A user's broadcast presence (from the presence service): when a resource comes
        online or its caps change, it gets the last item of every node it wants
        (XEP-0163 §6.2: its own and its contacts')."""
        bare, _, resource = env.from_.partition("/")
        key = keys.pep_resources(bare)
        if env.type == "unavailable":
            await self.redis.hdel(key, resource)
            return
        try:
            caps = _caps(env.payload)
        except Exception:
            caps = None
        ver = caps.ver if caps is not None and caps.hash else ""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(key, resource)
            pipe.hset(key, resource, ver)
            old, _ = await pipe.execute()
        if (old is not None and old.decode() == ver) or caps is None or not ver:
            return
        known = await self._known_features({ver})
        if ver in known:
            metrics.CAPS.labels("cached").inc()
            cm_id = env.origin.partition("/")[0]
            await self._send_last_items(env.from_, cm_id, known[ver])
            return
        await self._resolve_caps(env.from_, caps)

    async def _remote_presence(self, env: Envelope) -> None:
        """A remote contact's presence to a local account (copied by the s2s gateway): the
        caps of its available resources are kept (`keys.pep_remote`, bounded soft state)
        for the account's notifications (XEP-0163 §4.3), and a resource that comes online
        or changes its caps gets the last item of each of the account's nodes it wants
        (§6.2), through the s2s gateway."""
        owner, full = env.to_bare, env.from_
        key = keys.pep_remote(owner)
        caps = _caps(env.payload) if env.type != "unavailable" else None
        ver = caps.ver if caps is not None and caps.hash else ""
        if caps is None or not ver or "/" not in full:
            await self.redis.hdel(key, full)
            return
        if await self.rosters.item(owner, bare_of(full)) is None:
            return  # a contact only (not a room occupant or a stranger's directed presence)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(key, full)
            pipe.hlen(key)
            old, size = await pipe.execute()
        if old is None and size >= MAX_REMOTE_RESOURCES:
            metrics.CAPS.labels("remote-full").inc()
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, full, ver)
            pipe.expire(key, REMOTE_TTL_S)
            await pipe.execute()
        if old is not None and old.decode() == ver:
            return
        known = await self._known_features({ver})
        if ver in known:
            metrics.CAPS.labels("cached").inc()
            await self._send_remote_last_items(owner, full, known[ver])
            return
        await self._resolve_caps(full, caps, owner)

    async def _resolve_caps(self, full: str, caps: Caps, owner: str = "") -> None:
        """Ask one resource for the features of an unknown ver, once for the whole
        cluster; the others with the same ver wait for the answer (`_caps_answer`).
        ``owner``: the local account a remote ``full`` sent its presence to (the query and
        its answer go through the s2s gateway)."""
        if not self.pubsub_domain:
            return
        waiting = keys.caps_waiting(caps.ver)
        waiter = f"{owner} {full}" if owner else full  # a bare JID has no space
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(waiting, waiter)
            pipe.expire(waiting, CAPS_PENDING_S * 2)
            pipe.set(keys.caps_pending(caps.ver), full, nx=True, ex=CAPS_PENDING_S)
            _, _, first = await pipe.execute()
        if not first:
            return
        metrics.CAPS.labels("asked").inc()
        query_id = f"{CAPS_QUERY_PREFIX}{caps.hash}-{secrets.token_hex(4)}"
        payload = (f'<iq xmlns="{ns.CLIENT}" type="get" id="{query_id}" '
                   f"from={quoteattr(self.pubsub_domain)} to={quoteattr(full)}>"
                   f'<query xmlns="{ns.DISCO_INFO}" node={quoteattr(caps.node + "#" + caps.ver)}'
                   "/></iq>").encode()
        query = Envelope(Kind.IQ, to=full, from_=self.pubsub_domain, type="get", id=query_id,
                         origin=SERVICE, payload=payload)
        if owner:
            await self.route(query)
            return
        [table] = await self.sessions.get_many([bare_of(full)])
        record = table.get(full.partition("/")[2])
        if record is None:
            return
        await self.publish(subjects.connection_manager(record.cm_id), query)

    async def _caps_answer(self, env: Envelope) -> None:
        """The answer to `_resolve_caps`: verified (XEP-0115 §5.4), cached, and the last
        items sent to every resource that waited for it."""
        algorithm = env.id[len(CAPS_QUERY_PREFIX):].rpartition("-")[0]
        try:
            iq = parse_fragment(env.payload, MAX_STANZA_BYTES)
        except StreamError:
            return
        query = iq.find(f"{{{ns.DISCO_INFO}}}query")
        ver = (query.get("node", "") if query is not None else "").rpartition("#")[2]
        if env.type != "result" or query is None or not ver:
            metrics.CAPS.labels("failed").inc()
            return
        if ver_of(query, algorithm) != ver:  # a poisoned or broken answer: not cached
            metrics.CAPS.labels("mismatch").inc()
            await self.redis.delete(keys.caps_pending(ver))
            return
        metrics.CAPS.labels("verified").inc()
        feats = features(query)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.caps_features(ver), "\n".join(feats), ex=CAPS_TTL_S)
            pipe.smembers(keys.caps_waiting(ver))
            pipe.delete(keys.caps_waiting(ver), keys.caps_pending(ver))
            _, waiting, _ = await pipe.execute()
        known = frozenset(feats)
        self._features[ver] = known
        waiters = sorted(w.decode() for w in waiting)
        for owner, _, full in (w.partition(" ") for w in waiters if " " in w):
            await self._send_remote_last_items(owner, full, known)
        fulls = [w for w in waiters if " " not in w]
        tables = await self.sessions.get_many([bare_of(f) for f in fulls])
        for full, table in zip(fulls, tables, strict=True):
            record = table.get(full.partition("/")[2])
            if record is not None and record.available:
                await self._send_last_items(full, record.cm_id, known)

    async def _send_last_items(self, full: str, cm_id: str, feats: frozenset[str]) -> None:
        """XEP-0163 §6.2 ("last published item"): the newest item of each node the resource
        asked for (+notify), of its own account and of every contact whose presence it
        receives, as the nodes' access models allow; one BATCH to its connection manager."""
        wanted = [f[:-len("+notify")] for f in feats if f.endswith("+notify")]
        if not wanted or not cm_id:
            return
        bare = bare_of(full)
        items = await self.rosters.items(bare)
        owners = [bare, *(c for c, item in items.items()
                          if item.state.subscription in SUBSCRIBED_TO
                          and domain_of(c) in self.destinations.accounts)]
        last = await self.store.last_items(owners, wanted)
        if not last:
            return
        theirs = await self.rosters.items_of([(x.node.service, bare) for x in last])
        services = list(dict.fromkeys([bare, *(x.node.service for x in last)]))
        blocklists = dict(zip(services, (b for _, b in await self.account_data.routing(
            services)), strict=True))
        out = []
        for entry, their_item in zip(last, theirs, strict=True):
            node = entry.node
            if node.config.get("pubsub#send_last_published_item") != "on_sub_and_presence":
                continue
            if node.service != bare and (is_blocked(blocklists[bare], node.service)
                                         or is_blocked(blocklists[node.service], full)):
                continue  # XEP-0191 §3.5, either way
            if node.service != bare and not await self._may_get_last(node, bare, their_item):
                continue
            out.append(self._last_item_message(node, entry.item, full))
        if out:
            metrics.NOTIFICATIONS.labels("last-item").inc(len(out))
            await self.publish(subjects.connection_manager(cm_id), Envelope(
                Kind.BATCH, to=full, from_="", origin=SERVICE, payload="".join(out).encode()))

    async def _send_remote_last_items(self, owner: str, full: str, feats: frozenset[str]
                                      ) -> None:
        """XEP-0163 §6.2 for a remote contact's resource: the newest item of each of
        ``owner``'s nodes it asked for (+notify), as their access models allow, one
        message each through the s2s gateway (its server applies its own blocklists)."""
        wanted = [f[:-len("+notify")] for f in feats if f.endswith("+notify")]
        if not wanted:
            return
        last = await self.store.last_items([owner], wanted)
        if not last:
            return
        [(_, mine)] = await self.account_data.routing([owner])
        if is_blocked(mine, full):  # XEP-0191 §3.5
            return
        bare = bare_of(full)
        item = await self.rosters.item(owner, bare)
        sent = 0
        for entry in last:
            node = entry.node
            if (node.config.get("pubsub#send_last_published_item") != "on_sub_and_presence"
                    or not await self._may_get_last(node, bare, item)):
                continue
            message = self._last_item_message(node, entry.item, full)
            await self.route(Envelope(Kind.MESSAGE, to=full, from_=owner, type="headline",
                                      origin=SERVICE, payload=message.encode()))
            sent += 1
        metrics.NOTIFICATIONS.labels("last-item").inc(sent)

    async def _may_get_last(self, node: Node, bare: str, their_item: RosterItem | None
                            ) -> bool:
        """Whether a contact ``bare`` (``their_item``: the owner's roster item for it) may
        get the last item of a PEP node, as its access model allows (XEP-0060 §4.5)."""
        model = node.config.get("pubsub#access_model", "presence")
        if model in ("whitelist", "authorize"):
            return await self.store.affiliation(node.service, node.name, bare) in MEMBERS
        return _roster_access(model, node, their_item) is None

    def _last_item_message(self, node: Node, item: Item, full: str) -> str:
        body = self._items_body(node, [item])
        return (f'<message xmlns="{ns.CLIENT}" from={quoteattr(node.service)} '
                f"to={quoteattr(full)} type=\"headline\" id=\"{secrets.token_hex(8)}\">"
                f'<event xmlns="{ns.PUBSUB_EVENT}">{body}</event></message>')

    # ---- output ------------------------------------------------------------------------------

    async def _answer(self, r: Request, child: str) -> None:
        await self._deliver_answer(r, iq_result(r.env.id, r.requester, r.env.to or None,
                                                child))

    async def _deliver_answer(self, r: Request, payload: bytes) -> None:
        await self._reply(r.env, payload)

    async def _answer_error(self, env: Envelope, iq: etree._Element, err: StanzaError
                            ) -> None:
        await self._reply(env, error_reply(iq, err, to=env.from_, from_=env.to or None))

    async def _reply(self, env: Envelope, payload: bytes) -> None:
        """To the requesting session's connection manager, or routed (remote requesters)."""
        reply = Envelope(Kind.IQ, to=env.from_, from_=env.to, type="result", id=env.id,
                         origin=SERVICE, payload=payload)
        if env.origin == avatar.CONVERSION_ORIGIN:
            return  # the roster service's publish from a vCard (XEP-0398 §3.2) wants none
        cm_id, slash, _ = env.origin.partition("/")
        if slash and domain_of(env.from_) in self.destinations.accounts:
            await self.publish(subjects.connection_manager(cm_id), reply)
        else:
            await self.route(reply)


def _caps(stanza: bytes) -> Caps | None:
    if b"http://jabber.org/protocol/caps" not in stanza:
        return None
    try:
        return caps_of(parse_fragment(stanza, MAX_STANZA_BYTES))
    except StreamError:
        return None


def _roster_access(model: str, node: Node, item: RosterItem | None) -> StanzaError | None:
    """Presence (XEP-0060 §6.1.3.2) and roster (§6.1.3.3) access from the owner's roster
    item for the requester; open and others pass here."""
    if model == "presence":
        if item is not None and item.state.subscription in SUBSCRIBED_FROM:
            return None
        return cfg.error(StanzaErrorCondition.NOT_AUTHORIZED, "presence-subscription-required")
    if model == "roster":
        allowed = set(node.config.get("pubsub#roster_groups_allowed", []))
        if (item is not None and item.state.subscription in SUBSCRIBED_FROM
                and allowed & set(item.groups)):
            return None
        return cfg.error(StanzaErrorCondition.NOT_AUTHORIZED, "not-in-roster-group")
    if model == "open":
        return None
    return cfg.error(StanzaErrorCondition.NOT_ALLOWED, "closed-node")


_PUBSUB_OPS: Final[dict[tuple[str, str], Any]] = {
    ("create", "set"): PubsubService._create,
    ("publish", "set"): PubsubService._publish,
    ("retract", "set"): PubsubService._retract,
    ("subscribe", "set"): PubsubService._subscribe,
    ("unsubscribe", "set"): PubsubService._unsubscribe,
    ("options", "get"): PubsubService._options_get,
    ("options", "set"): PubsubService._options_set,
    ("items", "get"): PubsubService._items,
    ("subscriptions", "get"): PubsubService._subscriptions,
    ("affiliations", "get"): PubsubService._affiliations,
}
_OWNER_OPS: Final[dict[tuple[str, str], Any]] = {
    ("configure", "get"): PubsubService._configure_get,
    ("configure", "set"): PubsubService._configure_set,
    ("default", "get"): PubsubService._default,
    ("delete", "set"): PubsubService._delete,
    ("purge", "set"): PubsubService._purge,
    ("subscriptions", "get"): PubsubService._owner_subscriptions_get,
    ("subscriptions", "set"): PubsubService._owner_subscriptions_set,
    ("affiliations", "get"): PubsubService._owner_affiliations_get,
    ("affiliations", "set"): PubsubService._owner_affiliations_set,
}
