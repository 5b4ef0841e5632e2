"""Entity capabilities (XEP-0115), sans-I/O: the <c/> of a presence and the verification
string of a disco#info answer, so that a ``ver`` is trusted (and cached cluster-wide) only
when the features it names hash to it (§5.1, §5.4)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Final

from lxml import etree

from shared.xmpp import ns

HASHES: Final = {"sha-1": hashlib.sha1, "sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
_XML_LANG: Final = f"{{{ns.XML}}}lang"


@dataclass(frozen=True, slots=True)
class Caps:
    node: str
    ver: str
    hash: str  # "" for legacy caps (no hash attribute): never verified, never cached


def caps_of(presence: etree._Element) -> Caps | None:
    """The <c/> of a presence stanza, or None."""
    c = presence.find(f"{{{ns.CAPS}}}c")
    if c is None or not c.get("ver") or not c.get("node"):
        return None
    return Caps(c.get("node", ""), c.get("ver", ""), c.get("hash", ""))


def verification_string(query: etree._Element) -> str:
    """§5.1 steps 1-7 over a disco#info <query/>."""
    identities = sorted(
        (i.get("category", ""), i.get("type", ""), i.get(_XML_LANG, ""), i.get("name", ""))
        for i in query.findall(f"{{{ns.DISCO_INFO}}}identity")
    )
    s = "".join("/".join(i) + "<" for i in identities)
    s += "".join(f + "<" for f in sorted(
        f.get("var", "") for f in query.findall(f"{{{ns.DISCO_INFO}}}feature")))
    forms = []
    for x in query.findall(f"{{{ns.DATA}}}x"):
        fields = {}
        for field in x.findall(f"{{{ns.DATA}}}field"):
            values = sorted(v.text or "" for v in field.findall(f"{{{ns.DATA}}}value"))
            fields[field.get("var", "")] = values
        form_type = (fields.pop("FORM_TYPE", None) or [""])[0]
        body = "".join(var + "<" + "".join(v + "<" for v in fields[var])
                       for var in sorted(fields))
        forms.append((form_type, form_type + "<" + body))
    s += "".join(text for _, text in sorted(forms))
    return s


def ver_of(query: etree._Element, algorithm: str) -> str | None:
    """The ``ver`` the answer hashes to with ``algorithm`` (None: unknown algorithm)."""
    new = HASHES.get(algorithm)
    if new is None:
        return None
    digest = new(verification_string(query).encode()).digest()
    return base64.b64encode(digest).decode()


def features(query: etree._Element) -> list[str]:
    return [f.get("var", "") for f in query.findall(f"{{{ns.DISCO_INFO}}}feature")]
