"""IQs the server answers itself without stored state (XEP-0030, XEP-0199, XEP-0092,
XEP-0012 server uptime, XEP-0202 entity time, XEP-0157 contact addresses).

Only features that really work are listed in disco#info.  Anything else addressed to the
server gets service-unavailable (RFC 6120 §8.4).  The caller passes the clock (``now``, Unix
seconds) and what it knows about the server (`ServerInfo`): the machine has no I/O.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from shared.xmpp import extdisco, ns
from shared.xmpp.errors import StanzaError, StanzaErrorCondition

SERVER_NAME: Final = "stanzad"
SERVER_VERSION: Final = "0.1.0"
FEATURES: Final = (
    ns.DISCO_INFO, ns.DISCO_ITEMS, ns.PING, ns.VERSION, ns.OFFLINE, ns.VCARD, ns.PRIVATE,
    ns.BLOCKING, ns.CARBONS, ns.LAST, ns.TIME,
)
# XEP-0157 §4: the fields of the serverinfo form
CONTACT_FIELDS: Final = frozenset({
    "abuse-addresses", "admin-addresses", "feedback-addresses", "sales-addresses",
    "security-addresses", "status-addresses", "support-addresses",
})

Contacts = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the answers say about this server."""

    started: float = 0.0  # Unix time the answering process started (XEP-0012 uptime)
    contacts: Contacts = ()  # XEP-0157 (field, addresses), from `parse_contact_addresses`
    in_band: bool = False  # XEP-0077 on an authenticated stream (password change, removal)
    external: extdisco.Config = extdisco.NONE  # XEP-0215 STUN/TURN for local users


DEFAULT_INFO: Final = ServerInfo()


def parse_contact_addresses(text: str) -> Contacts:
    """``field=uri,uri;field=uri`` (XEP-0157 §4 field names without the form, each address a
    URI such as ``mailto:abuse@example.com`` or ``xmpp:admin@example.com``); ValueError when
    a field is unknown or an address is not a URI."""
    out: list[tuple[str, tuple[str, ...]]] = []
    seen: set[str] = set()
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        field, eq, values = part.partition("=")
        field = field.strip()
        if not eq or field not in CONTACT_FIELDS:
            raise ValueError(f"unknown contact address field {field!r} (one of "
                             f"{', '.join(sorted(CONTACT_FIELDS))})")
        if field in seen:
            raise ValueError(f"{field} given twice")
        seen.add(field)
        uris = tuple(v.strip() for v in values.split(",") if v.strip())
        for uri in uris:
            scheme, colon, rest = uri.partition(":")
            if not colon or not rest or not scheme.isascii() or not scheme.isalpha():
                raise ValueError(f"{field}: {uri!r} is not a URI (mailto:..., xmpp:..., https://...)")
        out.append((field, uris))
    return tuple(out)


def _contact_form(contacts: Contacts) -> str:
    """XEP-0157 §3: the serverinfo form (XEP-0128) in the server's disco#info."""
    if not contacts:
        return ""
    fields = "".join(
        f'<field var="{field}">' + "".join(f"<value>{escape(u)}</value>" for u in uris)
        + "</field>"
        for field, uris in contacts
    )
    return (
        f'<x xmlns="{ns.DATA}" type="result"><field var="FORM_TYPE" type="hidden">'
        f"<value>{ns.SERVER_INFO}</value></field>{fields}</x>"
    )


def entity_time(now: float) -> str:
    """XEP-0202 §3: the time in UTC; the server tells its offset as +00:00."""
    utc = datetime.datetime.fromtimestamp(now, datetime.UTC)
    return (
        f'<time xmlns="{ns.TIME}"><tzo>+00:00</tzo>'
        f"<utc>{utc.strftime('%Y-%m-%dT%H:%M:%SZ')}</utc></time>"
    )


def answer(
    iq: etree._Element, type_: str, info: ServerInfo = DEFAULT_INFO, now: float = 0.0,
    items: Iterable[str] = (), requester: str = "",
) -> str | StanzaError | None:
    """The child of the result (possibly empty), a StanzaError, or None (no reply at all).
    ``items``: the server's disco#items, its local service domains (XEP-0045 §6.1 finds the
    multi-user chat service this way, XEP-0363 §2 the upload service); ``requester``: the
    bare JID of a local user asking (XEP-0215 credentials are for local users only)."""
    if type_ in ("result", "error"):
        return None  # answers to our own pings and the like
    child = iq[0]
    tag = child.tag if isinstance(child.tag, str) else ""
    if type_ == "get":
        if tag == f"{{{ns.PING}}}ping":
            return ""
        if tag == f"{{{ns.DISCO_INFO}}}query" and not child.get("node"):
            features = FEATURES + ((ns.REGISTER,) if info.in_band else ())
            if info.external.offered:
                features += (ns.EXTDISCO,)
            listed = "".join(f'<feature var="{f}"/>' for f in features)
            return (
                f'<query xmlns="{ns.DISCO_INFO}">'
                f'<identity category="server" type="im" name="{SERVER_NAME}"/>{listed}'
                f"{_contact_form(info.contacts)}</query>"
            )
        if tag == f"{{{ns.DISCO_ITEMS}}}query" and not child.get("node"):
            listed = "".join(f"<item jid={quoteattr(jid)}/>" for jid in sorted(items))
            return f'<query xmlns="{ns.DISCO_ITEMS}">{listed}</query>'
        if tag == f"{{{ns.VERSION}}}query":
            return (
                f'<query xmlns="{ns.VERSION}"><name>{escape(SERVER_NAME)}</name>'
                f"<version>{escape(SERVER_VERSION)}</version></query>"
            )
        if tag == f"{{{ns.LAST}}}query":
            # XEP-0012 §5: to a server, the time since it started
            seconds = max(0, int(now - info.started)) if info.started else 0
            return f'<query xmlns="{ns.LAST}" seconds="{seconds}"/>'
        if tag == f"{{{ns.TIME}}}time":
            return entity_time(now)
        if tag.startswith(f"{{{ns.EXTDISCO}}}") and info.external.offered and requester:
            found = extdisco.answer(child, info.external, requester, now)
            if found is not None:
                return found
    return StanzaError(StanzaErrorCondition.SERVICE_UNAVAILABLE)
