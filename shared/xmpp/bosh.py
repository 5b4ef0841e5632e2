"""BOSH (XEP-0124) wrappers for XMPP (XEP-0206), sans-I/O: the ``<body/>`` of a request in,
the ``<body/>`` of a response out.

A request's payload (the stanzas inside ``<body/>``) goes to the session's c2s stream parser
as it is, so the same parser limits and restricted-XML rules apply as on TCP; only the
wrapper's attributes are read here.  A response carries whole elements that the c2s machine
and the deliveries wrote (split by `shared.xmpp.websocket.Framing`, so each declares what it
uses), minus the stream header and closing tag, which BOSH does not carry (XEP-0206 §5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from xml.sax.saxutils import quoteattr

from shared.xmpp import ns

BOSH_NS: Final = "http://jabber.org/protocol/httpbind"
XBOSH_NS: Final = "urn:xmpp:xbosh"
VERSION: Final = "1.11"

_START: Final = re.compile(
    rb"""\s*(?:<\?xml(?:[^?]|\?(?!>))*\?>\s*)?<body((?:[^>"']|"[^"]*"|'[^']*')*?)(/?)>""")
_ATTR: Final = re.compile(rb"""([\w:.-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_END: Final = re.compile(rb"</body>\s*$")


class BadBody(Exception):
    """Not a BOSH ``<body/>`` (XEP-0124 §17: ``bad-request``)."""


@dataclass(frozen=True, slots=True)
class Body:
    """A request's wrapper attributes and its payload."""

    attrs: dict[str, str]
    payload: bytes

    def get(self, name: str, default: str = "") -> str:
        return self.attrs.get(name, default)

    @property
    def rid(self) -> int | None:
        text = self.attrs.get("rid", "")
        return int(text) if text.isdigit() and len(text) <= 16 else None


def _unescape(value: str) -> str:
    return (value.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
            .replace("&apos;", "'").replace("&amp;", "&"))


def parse_request(data: bytes) -> Body:
    """The ``<body/>`` of a request (XEP-0124 §7): its attributes (prefixes as written, so
    ``xmpp:restart``) and the bytes between its tags."""
    m = _START.match(data)
    if m is None:
        raise BadBody("no <body/>")
    attrs: dict[str, str] = {}
    for a in _ATTR.finditer(m.group(1)):
        value = a.group(2) if a.group(2) is not None else a.group(3)
        attrs[a.group(1).decode("utf-8", "replace")] = _unescape(value.decode("utf-8", "replace"))
    if attrs.get("xmlns") != BOSH_NS:
        raise BadBody("not in the httpbind namespace")
    if m.group(2):  # <body .../>
        if data[m.end():].strip():
            raise BadBody("data after <body/>")
        return Body(attrs, b"")
    end = _END.search(data, m.end())
    if end is None:
        raise BadBody("no </body>")
    return Body(attrs, data[m.end() : end.start()])


def response(elements: list[bytes], attrs: dict[str, str] | None = None) -> bytes:
    """A response ``<body/>`` around ``elements`` (each standalone)."""
    extra = "".join(f" {k}={quoteattr(v)}" for k, v in (attrs or {}).items())
    head = (f'<body xmlns="{BOSH_NS}" xmlns:xmpp="{XBOSH_NS}" '
            f'xmlns:stream="{ns.STREAM}"{extra}').encode()
    if not elements:
        return head + b"/>"
    return head + b">" + b"".join(elements) + b"</body>"


def terminate(condition: str = "", elements: list[bytes] | None = None) -> bytes:
    """XEP-0124 §17: the session is over (with a condition when it is an error)."""
    attrs = {"type": "terminate"}
    if condition:
        attrs["condition"] = condition
    return response(elements or [], attrs)
