"""XEP-0156 §3 discovery documents: host-meta (XRD, RFC 6415) and host-meta.json (JRD).

Browser clients read ``/.well-known/host-meta`` (or ``.json``) of the account's domain to find
the WebSocket (``urn:xmpp:alt-connections:websocket``) and BOSH
(``urn:xmpp:alt-connections:xbosh``) endpoints.
"""

from __future__ import annotations

import json
from xml.sax.saxutils import quoteattr

WEBSOCKET_REL = "urn:xmpp:alt-connections:websocket"
BOSH_REL = "urn:xmpp:alt-connections:xbosh"
XRD_NS = "http://docs.oasis-open.org/ns/xri/xrd-1.0"


def _links(websocket_url: str, bosh_url: str) -> list[tuple[str, str]]:
    return [(rel, url) for rel, url in ((BOSH_REL, bosh_url), (WEBSOCKET_REL, websocket_url))
            if url]


def xrd(websocket_url: str, bosh_url: str) -> bytes:
    """``/.well-known/host-meta`` (XEP-0156 §3.1 example)."""
    links = "".join(f"<Link rel={quoteattr(rel)} href={quoteattr(url)}/>"
                    for rel, url in _links(websocket_url, bosh_url))
    return (f"<?xml version='1.0' encoding='utf-8'?><XRD xmlns={quoteattr(XRD_NS)}>{links}"
            "</XRD>").encode()


def jrd(websocket_url: str, bosh_url: str) -> bytes:
    """``/.well-known/host-meta.json`` (XEP-0156 §3.1, RFC 6415 Appendix A)."""
    links = [{"rel": rel, "href": url} for rel, url in _links(websocket_url, bosh_url)]
    return json.dumps({"links": links}).encode()
