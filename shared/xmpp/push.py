"""XEP-0357 Push Notifications, the protocol part: what an <enable/> or <disable/> asks, and
the summary notification the user's server publishes to the app server (§7).

The body of a message goes into a notification only when the user allowed it: a field
``include-body`` set to true (or 1) in the publish-options form of its <enable/>.  That
field is ours, so it is taken out of the form before the form travels to the app server
(which checks the rest, typically a 'secret', as XEP-0060 publish-options).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from shared.xmpp import ns
from shared.xmpp.errors import StanzaError, StanzaErrorCondition
from shared.xmpp.jid import JID, JIDError

ENABLE: Final = f"{{{ns.PUSH}}}enable"
DISABLE: Final = f"{{{ns.PUSH}}}disable"
INCLUDE_BODY: Final = "include-body"
ID_PREFIX: Final = "push-"  # ids of the notifications this server sends
MAX_OPTIONS_BYTES: Final = 4096
MAX_BODY_CHARS: Final = 4096  # of a body quoted in a notification
_X: Final = f"{{{ns.DATA}}}x"
_FIELD: Final = f"{{{ns.DATA}}}field"
_VALUE: Final = f"{{{ns.DATA}}}value"


@dataclass(frozen=True, slots=True)
class Enable:
    service: str
    node: str
    options: bytes | None  # the publish-options form to send along (without include-body)
    include_body: bool


@dataclass(frozen=True, slots=True)
class Disable:
    service: str
    node: str | None  # None: every node of the app server (§6)


def parse(element: etree._Element) -> Enable | Disable:
    """An <enable/> or <disable/> (§5, §6); StanzaError bad-request when malformed."""
    try:
        service = str(JID.parse(element.get("jid") or ""))
    except JIDError:
        raise StanzaError(StanzaErrorCondition.BAD_REQUEST, "a JID in 'jid'") from None
    node = element.get("node")
    if element.tag == DISABLE:
        return Disable(service, node or None)
    if element.tag != ENABLE:
        raise StanzaError(StanzaErrorCondition.FEATURE_NOT_IMPLEMENTED)
    if not node:
        raise StanzaError(StanzaErrorCondition.BAD_REQUEST, "a 'node' to publish to")
    form = element.find(_X)
    include_body = False
    options = None
    if form is not None:
        for field in form.findall(_FIELD):
            if field.get("var") == INCLUDE_BODY:
                include_body = (field.findtext(_VALUE) or "").strip() in ("1", "true")
                form.remove(field)
        if len(form.findall(_FIELD)) > 1:  # more than the FORM_TYPE: something to send
            options = etree.tostring(form)
            if len(options) > MAX_OPTIONS_BYTES:
                raise StanzaError(StanzaErrorCondition.NOT_ACCEPTABLE, "form too large")
    return Enable(service, node, options, include_body)


def new_id() -> str:
    return ID_PREFIX + secrets.token_hex(8)


def notification(iq_id: str, owner: str, service: str, node: str, count: int, sender: str,
                 body: str | None, options: bytes | None) -> bytes:
    """§7: a pubsub publish from the user's bare JID to the app server, with the summary
    form (urn:xmpp:push:summary): message-count, last-message-sender and, when allowed,
    last-message-body; the registration's publish-options after it."""
    fields = [("FORM_TYPE", ns.PUSH_SUMMARY), ("message-count", str(count))]
    if sender:
        fields.append(("last-message-sender", sender))
    if body is not None:
        fields.append(("last-message-body", body[:MAX_BODY_CHARS]))
    form = "".join(f'<field var="{var}"><value>{escape(value)}</value></field>'
                   for var, value in fields)
    publish_options = (f"<publish-options>{options.decode()}</publish-options>"
                       if options else "")
    return (
        f'<iq xmlns="{ns.CLIENT}" type="set" id={quoteattr(iq_id)} from={quoteattr(owner)} '
        f'to={quoteattr(service)}><pubsub xmlns="{ns.PUBSUB}"><publish node={quoteattr(node)}>'
        f'<item><notification xmlns="{ns.PUSH}"><x xmlns="{ns.DATA}" type="submit">'
        f"{form}</x></notification></item></publish>{publish_options}</pubsub></iq>"
    ).encode()


def body_of(message: etree._Element) -> str | None:
    """The message's <body/> text, None when it has none."""
    return message.findtext(f"{{{ns.CLIENT}}}body")


def error_type(iq: etree._Element) -> str:
    """The 'type' of an IQ error's <error/> (RFC 6120 §8.3.2), '' when there is none."""
    error = iq.find(f"{{{ns.CLIENT}}}error")
    return (error.get("type") or "") if error is not None else ""
