"""Builders of the stanzas the server itself writes (RFC 6120 §8)."""

from __future__ import annotations

from typing import Final
from xml.sax.saxutils import quoteattr

from lxml import etree

from shared.xmpp import ns
from shared.xmpp.errors import StanzaError

STANZA_KINDS: Final = frozenset({"message", "presence", "iq"})
IQ_TYPES: Final = frozenset({"get", "set", "result", "error"})


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def namespace(tag: str) -> str:
    return tag[1:].partition("}")[0] if tag.startswith("{") else ""


def iq_result(iq_id: str, to: str | None, from_: str | None, payload: str = "") -> bytes:
    """<iq type='result'/> with an optional child (already serialised)."""
    attrs = _attrs(("type", "result"), ("id", iq_id), ("to", to), ("from", from_))
    if payload:
        return f"<iq{attrs}>{payload}</iq>".encode()
    return f"<iq{attrs}/>".encode()


def error_reply(
    element: etree._Element, error: StanzaError, *, to: str | None, from_: str | None
) -> bytes:
    """The stanza bounced with type='error' (RFC 6120 §8.3.1): same kind and id, the original
    children kept for context, plus an <error/> child; 'to' and 'from' given by the caller."""
    kind = local_name(element.tag)
    children = b"".join(
        etree.tostring(child, with_tail=False)
        for child in element
        if local_name(child.tag) != "error"
    ).decode()
    attrs = _attrs(("type", "error"), ("id", element.get("id")), ("to", to), ("from", from_))
    lang = element.get(f"{{{ns.XML}}}lang")
    if lang:
        attrs += f" xml:lang={quoteattr(lang)}"
    return f'<{kind} xmlns="{ns.CLIENT}"{attrs}>{children}{error.to_xml()}</{kind}>'.encode()


def must_not_bounce(type_: str | None) -> bool:
    """RFC 6120 §8.3.1: never answer an error with an error (nor an IQ result)."""
    return type_ in ("error", "result")


def _attrs(*pairs: tuple[str, str | None]) -> str:
    return "".join(f" {name}={quoteattr(value)}" for name, value in pairs if value is not None)


def with_to(payload: bytes, to: str) -> bytes:
    """The canonical stanza (which has no 'to') addressed to ``to``: the attribute is inserted
    after the element name, so a fan-out needs no re-serialisation."""
    name_end = payload.index(b" ") if b" " in payload[:12] else payload.index(b">")
    return payload[:name_end] + b" to=" + quoteattr(to).encode() + payload[name_end:]


def split_stanzas(payload: bytes) -> list[bytes]:
    """Canonical stanzas written one after another (a BATCH delivery), one by one."""
    root = etree.fromstring(b"<batch>" + payload + b"</batch>", _BATCH_PARSER)
    return [etree.tostring(child, with_tail=False) for child in root]


_BATCH_PARSER: Final = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def with_delay(payload: bytes, stamp: str, from_: str) -> bytes:
    """XEP-0203: a <delay/> child appended to a canonical <message/>."""
    delay = f'<delay xmlns="{ns.DELAY}" from={quoteattr(from_)} stamp="{stamp}"/>'.encode()
    if payload.endswith(b"/>"):  # an empty element: open it
        return payload[:-2] + b">" + delay + b"</message>"
    close = payload.rindex(b"</")
    return payload[:close] + delay + payload[close:]
