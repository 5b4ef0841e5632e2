"""IQs the server answers on behalf of an account (RFC 6121 §8.5.2.1.3): vCard-temp
(XEP-0054; a PHOTO is also published as the PEP avatar, XEP-0398), private XML storage
(XEP-0049) and service discovery on the bare JID (XEP-0030;
it names the account's personal eventing service, XEP-0163, served by services/pubsub, and
lists what the roster service answers for the account: XEP-0191, XEP-0012 last activity and
XEP-0357 push, service.py).

Each handler gets the IQ, the requesting full JID and the account addressed, and returns the
child of the result or raises StanzaError.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from lxml import etree

from shared.store.account_data import AccountDataStore
from shared.xmpp import ns
from shared.xmpp.errors import StanzaError, StanzaErrorCondition
from shared.xmpp.jid import bare_of
from shared.xmpp.pubsub import PEP_FEATURES

MAX_VCARD_BYTES: Final = 64 * 1024
MAX_PRIVATE_BYTES: Final = 64 * 1024
MAX_PRIVATE_NAMESPACES: Final = 64
ACCOUNT_FEATURES: Final = (ns.DISCO_INFO, ns.VCARD, ns.BLOCKING, ns.LAST, ns.PUSH, ns.PUBSUB,
                           *PEP_FEATURES, ns.PEP_VCARD_CONVERSION)  # XEP-0398 §2
# XEP-0313 §7 (on the bare JID), the #extended fields and flip-page, XEP-0359 §6
ARCHIVE_FEATURES: Final = (ns.MAM, ns.MAM_EXTENDED, ns.SID)


class AccountData:
    def __init__(self, store: AccountDataStore, *, archive: bool = False,
                 on_vcard: Callable[[str, etree._Element], Awaitable[None]] | None = None
                 ) -> None:
        self._store = store
        self._on_vcard = on_vcard  # after a vCard is stored (XEP-0398 §3.2)
        self._features = ACCOUNT_FEATURES + (ARCHIVE_FEATURES if archive else ())

    async def handle(self, iq: etree._Element, requester: str, account: str) -> str:
        child = iq[0]
        tag = child.tag if isinstance(child.tag, str) else ""
        own = bare_of(requester) == account
        type_ = iq.get("type")
        if tag == f"{{{ns.VCARD}}}vCard":
            if type_ == "get":
                raw = await self._store.vcard(account)
                return raw.decode() if raw else f'<vCard xmlns="{ns.VCARD}"/>'
            if not own:
                raise StanzaError(StanzaErrorCondition.FORBIDDEN)
            data = etree.tostring(child)
            if len(data) > MAX_VCARD_BYTES:
                raise StanzaError(StanzaErrorCondition.NOT_ACCEPTABLE, "vCard too large")
            await self._store.set_vcard(account, data)
            if self._on_vcard is not None:
                await self._on_vcard(account, child)
            return ""
        if tag == f"{{{ns.PRIVATE}}}query":
            if not own:
                raise StanzaError(StanzaErrorCondition.FORBIDDEN)
            return await self._private(child, type_ == "set", account)
        if tag == f"{{{ns.DISCO_INFO}}}query" and type_ == "get" and not child.get("node"):
            features = "".join(f'<feature var="{f}"/>' for f in self._features)
            return (
                f'<query xmlns="{ns.DISCO_INFO}"><identity category="account" type="registered"/>'
                f'<identity category="pubsub" type="pep"/>{features}</query>'  # XEP-0163 §1.3
            )
        if tag == f"{{{ns.DISCO_ITEMS}}}query" and type_ == "get":
            return f'<query xmlns="{ns.DISCO_ITEMS}"/>'
        raise StanzaError(StanzaErrorCondition.SERVICE_UNAVAILABLE)

    async def _private(self, query: etree._Element, is_set: bool, account: str) -> str:
        """XEP-0049 §2: one child per namespace; jabber:* namespaces are refused."""
        children = list(query)
        if len(children) != 1 or not isinstance(children[0].tag, str):
            raise StanzaError(StanzaErrorCondition.NOT_ACCEPTABLE)
        element = children[0]
        namespace = element.tag[1:].partition("}")[0] if element.tag.startswith("{") else ""
        if not namespace or namespace.startswith("jabber:"):
            raise StanzaError(StanzaErrorCondition.NOT_ACCEPTABLE)
        if is_set:
            data = etree.tostring(element)
            if len(data) > MAX_PRIVATE_BYTES:
                raise StanzaError(StanzaErrorCondition.NOT_ACCEPTABLE, "too large")
            if not await self._store.set_private(account, namespace, data,
                                                 MAX_PRIVATE_NAMESPACES):
                raise StanzaError(StanzaErrorCondition.RESOURCE_CONSTRAINT)
            return ""
        raw = await self._store.private(account, namespace)
        stored = raw.decode() if raw else etree.tostring(element).decode()
        return f'<query xmlns="{ns.PRIVATE}">{stored}</query>'
