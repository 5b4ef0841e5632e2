"""An external component's stream, accepting side, sans-I/O (XEP-0114).

A component (a bot, a bridge, a gateway) connects to the component port and opens a
``jabber:component:accept`` stream whose 'to' names the domain it wants to serve; we answer
with our header (its 'from' that domain, a fresh stream id) and no features (XEP-0114 §3).
It then proves it knows the domain's secret with ``<handshake>`` holding the lower-case hex
SHA-1 of the stream id followed by the secret; we answer ``<handshake/>`` and the domain is
its own.  Errors, as XEP-0114 §3.1 and RFC 6120 §4.9.3 name them:

* a 'to' we have no component for: ``host-unknown``;
* a wrong handshake, or a stanza before it: ``not-authorized``;
* a stanza without 'to' or 'from': ``improper-addressing``; a 'from' outside the
  component's domain (or its subdomains): ``invalid-from``.

Accepted stanzas come out as `StanzaIn` (the s2s event: the gateway publishes both alike)
in the cluster's canonical bytes (``jabber:client``); `send` writes a cluster stanza to the
component in ``jabber:component:accept``.  The parser has the pre-authentication limits until
the handshake, then the component's stanza size.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from lxml import etree

from shared.xmpp import ns
from shared.xmpp.content_ns import renamespace
from shared.xmpp.errors import StreamError, StreamErrorCondition
from shared.xmpp.jid import JIDError, parse_jid
from shared.xmpp.parser import (
    PRE_AUTH_LIMITS,
    ParserLimits,
    StanzaReceived,
    StreamClosed,
    StreamOpened,
    StreamParser,
    parse_fragment,
    serialize,
)
from shared.xmpp.s2s import StanzaIn, parse_domain
from shared.xmpp.stanza import IQ_TYPES, STANZA_KINDS
from shared.xmpp.stream_io import ServingStream, State, StreamEnded

HANDSHAKE = f"{{{ns.COMPONENT_ACCEPT}}}handshake"


@dataclass(frozen=True, slots=True)
class ComponentConfig:
    secrets: Mapping[str, str]  # domain -> shared secret
    max_stanza_bytes: int = 256 * 1024


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The handshake was right: the stream now serves ``domain``."""

    domain: str


@dataclass(frozen=True, slots=True)
class AuthFailed:
    domain: str
    reason: str  # "unknown-domain" or "bad-handshake"


Event = Authenticated | AuthFailed | StanzaIn | StreamEnded


def handshake_digest(stream_id: str, secret: str) -> str:
    """XEP-0114 §3: hex SHA-1 of the stream id concatenated with the secret."""
    return hashlib.sha1((stream_id + secret).encode()).hexdigest()


class ComponentStream(ServingStream):
    """One component's stream, from its header to </stream:stream>."""

    def __init__(self, config: ComponentConfig) -> None:
        self.config = config
        self.state = State.HEADER
        self.stream_id = ""
        self.domain = ""  # the domain asked for in the header
        self.authenticated = False
        self._parser = StreamParser(PRE_AUTH_LIMITS)
        self._pending: list[object] = []
        self._ready: list[Event] = []
        self._out: list[bytes] = []
        self._header_sent = False

    def _header(self, peer: str | None) -> bytes:
        frm = f" from={quoteattr(peer)}" if peer else ""
        return (
            "<?xml version='1.0'?>"
            f'<stream:stream xmlns="{ns.COMPONENT_ACCEPT}" xmlns:stream="{ns.STREAM}"'
            f" id={quoteattr(self.stream_id)}{frm}>"
        ).encode()

    # ---- output ---------------------------------------------------------------------------

    def send(self, payload: bytes, max_bytes: int) -> None:
        """A stanza of the cluster (canonical ``jabber:client`` bytes) for the component."""
        element = parse_fragment(payload, max_bytes)
        self._out.append(serialize(
            renamespace(element, ns.CLIENT, ns.COMPONENT_ACCEPT, unqualified=True)))

    # ---- input ----------------------------------------------------------------------------

    def _handle(self, item: object) -> Event | None:
        if isinstance(item, StreamError):
            raise item
        if isinstance(item, StreamOpened):
            return self._on_header(item)
        if isinstance(item, StreamClosed):
            return self._end_stream()
        assert isinstance(item, StanzaReceived)
        element = item.element
        tag = element.tag
        if not isinstance(tag, str):  # pragma: no cover - the parser refuses these
            raise StreamError(StreamErrorCondition.RESTRICTED_XML)
        if tag == HANDSHAKE:
            return self._on_handshake(element)
        prefix = "{" + ns.COMPONENT_ACCEPT + "}"
        if tag.startswith(prefix) and tag[len(prefix):] in STANZA_KINDS:
            return self._on_stanza(element, tag[len(prefix):])
        if not self.authenticated:
            raise StreamError(StreamErrorCondition.NOT_AUTHORIZED, "handshake first")
        raise StreamError(StreamErrorCondition.UNSUPPORTED_STANZA_TYPE)

    def _on_header(self, header: StreamOpened) -> Event | None:
        domain = parse_domain(header.attrs.get("to")) or ""
        self._ensure_header(domain or None)
        if header.stream_ns != ns.STREAM or header.local_name != "stream":
            raise StreamError(StreamErrorCondition.INVALID_NAMESPACE)
        if header.default_ns != ns.COMPONENT_ACCEPT:
            raise StreamError(StreamErrorCondition.INVALID_NAMESPACE,
                              "jabber:component:accept expected")
        if not domain or not self.config.secrets.get(domain):
            self._ready.append(self._fail(StreamError(StreamErrorCondition.HOST_UNKNOWN)))
            return AuthFailed(domain, "unknown-domain")
        self.domain = domain
        self.state = State.OPEN
        return None

    def _on_handshake(self, element: etree._Element) -> Event:
        """XEP-0114 §3: right, <handshake/>; wrong, AuthFailed then not-authorized (§3.1)."""
        if self.authenticated:
            raise StreamError(StreamErrorCondition.NOT_AUTHORIZED, "handshake done already")
        expected = handshake_digest(self.stream_id, self.config.secrets[self.domain])
        given = (element.text or "").strip().lower()
        if not hmac.compare_digest(expected.encode(), given.encode()):
            self._ready.append(self._fail(StreamError(StreamErrorCondition.NOT_AUTHORIZED)))
            return AuthFailed(self.domain, "bad-handshake")
        self.authenticated = True
        self._parser.limits = ParserLimits(max_stanza_bytes=self.config.max_stanza_bytes)
        self._out.append(f'<handshake xmlns="{ns.COMPONENT_ACCEPT}"/>'.encode())
        return Authenticated(self.domain)

    def _on_stanza(self, element: etree._Element, kind: str) -> Event | None:
        if not self.authenticated:
            raise StreamError(StreamErrorCondition.NOT_AUTHORIZED, "handshake first")
        from_attr, to_attr = element.get("from"), element.get("to")
        if not from_attr or not to_attr:
            raise StreamError(StreamErrorCondition.IMPROPER_ADDRESSING)
        try:
            from_ = parse_jid(from_attr)
        except JIDError:
            raise StreamError(StreamErrorCondition.INVALID_FROM) from None
        if from_.domain != self.domain:  # a subdomain would need a route of its own
            raise StreamError(StreamErrorCondition.INVALID_FROM)
        try:
            to = parse_jid(to_attr)
        except JIDError:
            raise StreamError(StreamErrorCondition.IMPROPER_ADDRESSING) from None
        type_ = element.get("type") or ""
        stanza_id = element.get("id") or ""
        if kind == "iq" and (type_ not in IQ_TYPES or not stanza_id):
            return None  # RFC 6120 §8.2.3: not an IQ we can route; dropped
        element.set("from", str(from_))
        element.set("to", str(to))
        payload = serialize(renamespace(element, ns.COMPONENT_ACCEPT, ns.CLIENT))
        return StanzaIn(kind, type_, stanza_id, to, from_, payload)
