"""XEP-0352 Client State Indication: which stanzas an inactive client may wait for.

While a client says it is inactive the server holds what is not urgent and writes it when
the client becomes active again (§4: the server "can" suppress or delay traffic; what to
hold is the server's choice).  The rules are those of Prosody's mod_csi_simple, which
Conversations and Monal are used to:

- IQs are urgent (a client waits for their answers), so are errors of any kind;
- a message is urgent when it carries a body or a subject anywhere inside (also a
  forwarded one: carbons, archive results); chat states, receipts, markers and PEP events
  without a body wait;
- broadcast presence (available or unavailable) waits, and only the latest of each sender
  (full JID) is kept: an older one is dropped when a newer one arrives; subscription
  presence is urgent (the user acts on it).

`hold_key` answers for one canonical stanza: None when it must go out now, else the key it
is held under (equal keys replace each other).  The caller keeps the held stanzas in order
and writes them all, in order, before an urgent one, so nothing overtakes what it held.
"""

from __future__ import annotations

from typing import Final

from lxml import etree

from shared.xmpp import ns

ACTIVE: Final = f"{{{ns.CSI}}}active"
INACTIVE: Final = f"{{{ns.CSI}}}inactive"
FEATURE: Final = f'<csi xmlns="{ns.CSI}"/>'
_BODY: Final = f".//{{{ns.CLIENT}}}body"
_SUBJECT: Final = f".//{{{ns.CLIENT}}}subject"
_PARSER: Final = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


class Unique:
    """The key of a held stanza that nothing replaces."""

    __slots__ = ()


def hold_key(payload: bytes) -> object | None:
    """None: write ``payload`` now; else the key it is held under (a sender's full JID for
    broadcast presence, a fresh `Unique` for anything else that may wait)."""
    head = payload[:10]
    if head.startswith(b"<iq"):
        return None
    try:
        element = etree.fromstring(payload, _PARSER)
    except etree.XMLSyntaxError:
        return None  # not ours to judge: out it goes
    type_ = element.get("type") or ""
    if type_ == "error":
        return None
    if head.startswith(b"<presence"):
        if type_ not in ("", "unavailable"):
            return None  # subscription requests and answers (RFC 6121 §3)
        return ("presence", element.get("from") or "")
    if head.startswith(b"<message"):
        if element.find(_BODY) is not None or element.find(_SUBJECT) is not None:
            return None
        return Unique()
    return None
