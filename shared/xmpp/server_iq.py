"""IQs the server answers itself without stored state (XEP-0030, XEP-0199, XEP-0092).

Only features that really work are listed in disco#info.  Anything else addressed to the
server gets service-unavailable (RFC 6120 §8.4).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from shared.xmpp import ns
from shared.xmpp.errors import StanzaError, StanzaErrorCondition

SERVER_NAME: Final = "stanzad"
SERVER_VERSION: Final = "0.1.0"
FEATURES: Final = (
    ns.DISCO_INFO, ns.DISCO_ITEMS, ns.PING, ns.VERSION, ns.OFFLINE, ns.VCARD, ns.PRIVATE,
    ns.BLOCKING, ns.CARBONS,
)


def answer(iq: etree._Element, type_: str, items: Iterable[str] = ()) -> str | StanzaError | None:
    """The child of the result (possibly empty), a StanzaError, or None (no reply at all).
    ``items``: the server's disco#items, its local service domains (XEP-0045 §6.1 finds the
    multi-user chat service this way)."""
    if type_ in ("result", "error"):
        return None  # answers to our own pings and the like
    child = iq[0]
    tag = child.tag if isinstance(child.tag, str) else ""
    if type_ == "get":
        if tag == f"{{{ns.PING}}}ping":
            return ""
        if tag == f"{{{ns.DISCO_INFO}}}query" and not child.get("node"):
            features = "".join(f'<feature var="{f}"/>' for f in FEATURES)
            return (
                f'<query xmlns="{ns.DISCO_INFO}">'
                f'<identity category="server" type="im" name="{SERVER_NAME}"/>{features}</query>'
            )
        if tag == f"{{{ns.DISCO_ITEMS}}}query" and not child.get("node"):
            listed = "".join(f"<item jid={quoteattr(jid)}/>" for jid in sorted(items))
            return f'<query xmlns="{ns.DISCO_ITEMS}">{listed}</query>'
        if tag == f"{{{ns.VERSION}}}query":
            return (
                f'<query xmlns="{ns.VERSION}"><name>{escape(SERVER_NAME)}</name>'
                f"<version>{escape(SERVER_VERSION)}</version></query>"
            )
    return StanzaError(StanzaErrorCondition.SERVICE_UNAVAILABLE)
