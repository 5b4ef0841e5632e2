"""XEP-0191 blocking command: the blocklist IQs of an account.

`handle` validates and stores; it returns the result child, the push to send to every
resource of the account (§3.3, §3.4), and the JIDs newly blocked (who must get unavailable
presence from the account, §3.3.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from xml.sax.saxutils import quoteattr

from lxml import etree

from shared.store.account_data import AccountDataStore
from shared.xmpp import ns
from shared.xmpp.errors import StanzaError, StanzaErrorCondition
from shared.xmpp.jid import JID, JIDError

MAX_BLOCKLIST: Final = 1000


@dataclass(frozen=True, slots=True)
class BlockingOutcome:
    result: str  # child of the IQ result ("" for none)
    push: str  # element to push to every resource ("" for none)
    blocked: tuple[str, ...]  # newly blocked JIDs


def _items(element: etree._Element) -> list[str]:
    out = []
    for item in element.findall(f"{{{ns.BLOCKING}}}item"):
        try:
            out.append(str(JID.parse(item.get("jid") or "")))
        except JIDError:
            raise StanzaError(StanzaErrorCondition.JID_MALFORMED) from None
    return out


def _xml(name: str, jids: list[str]) -> str:
    items = "".join(f"<item jid={quoteattr(j)}/>" for j in jids)
    return f'<{name} xmlns="{ns.BLOCKING}">{items}</{name}>'


async def handle(store: AccountDataStore, account: str, iq: etree._Element) -> BlockingOutcome:
    child = iq[0]
    if iq.get("type") == "get" and child.tag == f"{{{ns.BLOCKING}}}blocklist":
        return BlockingOutcome(_xml("blocklist", await store.blocklist(account)), "", ())
    if iq.get("type") != "set":
        raise StanzaError(StanzaErrorCondition.BAD_REQUEST)
    if child.tag == f"{{{ns.BLOCKING}}}block":
        jids = _items(child)
        if not jids:  # §3.3: a block with no item is a bad request
            raise StanzaError(StanzaErrorCondition.BAD_REQUEST)
        added = await store.block(account, jids, MAX_BLOCKLIST)
        if added is None:
            raise StanzaError(StanzaErrorCondition.RESOURCE_CONSTRAINT, "blocklist full")
        new = tuple(j for j in dict.fromkeys(jids) if j in set(added))
        return BlockingOutcome("", _xml("block", jids), new)
    if child.tag == f"{{{ns.BLOCKING}}}unblock":
        jids = _items(child)
        await store.unblock(account, jids)  # §3.4: an empty unblock clears the whole list
        return BlockingOutcome("", _xml("unblock", jids), ())
    raise StanzaError(StanzaErrorCondition.BAD_REQUEST)
