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


def renamespace(
    element: etree._Element, old: str, new: str, *, unqualified: bool = False
) -> etree._Element:
    """A copy of ``element`` with every element of namespace ``old`` moved to ``new``;
    with ``unqualified``, elements in no namespace too (stanzas the server built itself
    without an xmlns, which mean the content namespace of the stream they are written to)."""
    tag = element.tag
    assert isinstance(tag, str)
    prefix = "{" + old + "}"
    if tag.startswith(prefix):
        new_tag = "{" + new + "}" + tag[len(prefix) :]
    elif unqualified and not tag.startswith("{"):
        new_tag = "{" + new + "}" + tag
    else:
        new_tag = tag
    nsmap = {p: (new if uri == old else uri) for p, uri in element.nsmap.items()}
    if new_tag != tag and None not in nsmap:
        nsmap[None] = new
    out = etree.Element(new_tag, dict(element.attrib), nsmap=nsmap)
    out.text = element.text
    for child in element:
        if not isinstance(child.tag, str):  # pragma: no cover - the parser refuses these
            continue
        copy = renamespace(child, old, new, unqualified=unqualified and new_tag != tag)
        copy.tail = child.tail
        out.append(copy)
    return out


def to_server(payload: bytes, max_bytes: int) -> bytes:
    """Canonical cluster bytes (jabber:client) as they go out on an s2s stream.
    Raises StreamError when the payload is not a stanza we could parse."""
    return to_server_element(parse_fragment(payload, max_bytes))


def to_server_element(element: etree._Element) -> bytes:
    """A parsed cluster stanza (jabber:client) in bytes for an s2s stream."""
    return serialize(renamespace(element, ns.CLIENT, ns.SERVER, unqualified=True))


def to_client(element: etree._Element) -> bytes:
    """A stanza received on an s2s stream, in the cluster's canonical bytes (jabber:client)."""
    return serialize(renamespace(element, ns.SERVER, ns.CLIENT))
