"""The content namespace of stanzas crossing between a c2s and an s2s stream (RFC 6120 §4.8.3).

Inside the cluster every stanza travels in canonical bytes with ``xmlns="jabber:client"``; on a
server-to-server stream the same stanza is in ``jabber:server``.  The rewrite happens here, on
the parsed tree: every element in the old content namespace is rebuilt in the new one, with its
attributes, text and tails, and every other namespace (payload extensions, prefixed elements)
is kept as it is.  No string replacement on the bytes ever happens, so a body that merely
contains the text ``jabber:client`` is never touched.
"""

from __future__ import annotations

from lxml import etree

from shared.xmpp import ns
from shared.xmpp.parser import parse_fragment, serialize


def renamespace(element: etree._Element, old: str, new: str) -> etree._Element:
    """A copy of ``element`` with every element of namespace ``old`` moved to ``new``."""
    tag = element.tag
    assert isinstance(tag, str)
    prefix = "{" + old + "}"
    new_tag = "{" + new + "}" + tag[len(prefix) :] if tag.startswith(prefix) else tag
    nsmap = {p: (new if uri == old else uri) for p, uri in element.nsmap.items()}
    out = etree.Element(new_tag, dict(element.attrib), nsmap=nsmap)
    out.text = element.text
    for child in element:
        if not isinstance(child.tag, str):  # pragma: no cover - the parser refuses these
            continue
        copy = renamespace(child, old, new)
        copy.tail = child.tail
        out.append(copy)
    return out


def to_server(payload: bytes, max_bytes: int) -> bytes:
    """Canonical cluster bytes (jabber:client) as they go out on an s2s stream.
    Raises StreamError when the payload is not a stanza we could parse."""
    element = parse_fragment(payload, max_bytes)
    return serialize(renamespace(element, ns.CLIENT, ns.SERVER))


def to_client(element: etree._Element) -> bytes:
    """A stanza received on an s2s stream, in the cluster's canonical bytes (jabber:client)."""
    return serialize(renamespace(element, ns.SERVER, ns.CLIENT))
