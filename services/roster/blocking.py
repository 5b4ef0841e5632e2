"""XEP-0191 blocking command: the blocklist IQs of an account.

`handle` validates and stores; it returns the result child, the push to send to every
resource of the account (§3.3, §3.4), and the JIDs newly blocked (who must get unavailable
presence from the account, §3.3.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from xml.sax.saxutils import quoteattr

import redis.asyncio as aioredis
from lxml import etree

from shared.store import keys
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


async def handle(redis: aioredis.Redis, account: str, iq: etree._Element) -> BlockingOutcome:
    child = iq[0]
    key = keys.blocklist(account)
    if iq.get("type") == "get" and child.tag == f"{{{ns.BLOCKING}}}blocklist":
        members = sorted(m.decode() for m in await redis.smembers(key))
        return BlockingOutcome(_xml("blocklist", members), "", ())
    if iq.get("type") != "set":
        raise StanzaError(StanzaErrorCondition.BAD_REQUEST)
    if child.tag == f"{{{ns.BLOCKING}}}block":
        jids = _items(child)
        if not jids:  # §3.3: a block with no item is a bad request
            raise StanzaError(StanzaErrorCondition.BAD_REQUEST)
        if await redis.scard(key) + len(jids) > MAX_BLOCKLIST:
            raise StanzaError(StanzaErrorCondition.RESOURCE_CONSTRAINT, "blocklist full")
        async with redis.pipeline(transaction=True) as pipe:
            for jid in jids:
                pipe.sadd(key, jid)
            added = await pipe.execute()
        new = tuple(j for j, a in zip(jids, added, strict=True) if a)
        return BlockingOutcome("", _xml("block", jids), new)
    if child.tag == f"{{{ns.BLOCKING}}}unblock":
        jids = _items(child)
        if jids:
            await redis.srem(key, *jids)
        else:  # §3.4: an empty unblock clears the whole list
            await redis.delete(key)
        return BlockingOutcome("", _xml("unblock", jids), ())
    raise StanzaError(StanzaErrorCondition.BAD_REQUEST)
