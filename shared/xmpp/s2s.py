"""The server-to-server stream, receiving side, sans-I/O (RFC 6120 §4-§6, §13.7; XEP-0220).

A peer server opens a stream to us (we are the Receiving Server of XEP-0220).  Bytes go in
with `receive_data`, events come out of `next_event`, bytes to write are taken with
`data_to_send`, as in `shared.xmpp.c2s`.  Steps that need I/O come out as events and the
machine waits until the caller answers:

    StartTLS            -> caller wraps the socket, then `tls_established(peer_cert)`
    DialbackRequested   -> caller asks the Authoritative Server (XEP-0220 §2.3), then
                           `dialback_result(valid)` with True, False or None (no answer)

What the machine enforces:

* the header is a ``jabber:server`` stream (RFC 6120 §4.8.3) whose 'to' is one of the
  domains we serve (`host-unknown`), and it declares the dialback namespace in ours
  (XEP-0220 §2.1); our header answers from the domain the peer addressed;
* features: STARTTLS until TLS is on, SASL EXTERNAL only when the peer's certificate (a
  `PeerCertificate` from the caller) is valid for the domain in the header's 'from'
  (RFC 6120 §6, XEP-0178 §3), dialback always (the fallback of peers refused EXTERNAL);
  a refused <auth mechanism='EXTERNAL'/> is answered <not-authorized/> (XEP-0178 §3.3);
* authentication is of a pair of domains (RFC 6120 §13.7, XEP-0220 §2.4): SASL EXTERNAL
  proves (the header's 'from', the header's 'to'); each <db:result/> (XEP-0220 §2.1.2) one
  more pair, to any domain we serve (multiplexing), and produces `DialbackRequested` unless
  the peer's certificate is already valid for the originating domain, which is then
  accepted at once ("dialback without dialback", XEP-0344 §2.4); <db:verify/> (§2.3.2, we
  are the Authoritative Server) is answered at once from the keyed HMAC of XEP-0185;
* stanzas are accepted only with a 'from' and a 'to' whose domains are an authenticated
  pair (`invalid-from` for a 'from' never authenticated, never trust a peer's claim;
  `host-unknown` for a 'to' we do not serve or that pair was not authenticated for); both
  are required (`improper-addressing`, RFC 6120 §8.1.1);
* stanzas are rewritten from ``jabber:server`` to ``jabber:client`` (`content_ns`);
* XEP-0198 acks: <sm/> is offered with the authentication features, an authenticated peer
  may <enable/> it (no resumption), and each <r/> is answered with the number of stanzas
  handled (`StanzaIn` handed to the caller, or dropped by rule) since then.

Every stream restart (after STARTTLS, after SASL) takes a fresh parser, as c2s does.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final, Protocol
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from shared.xmpp import ns, sm
from shared.xmpp.content_ns import to_client
from shared.xmpp.dialback import check_key
from shared.xmpp.errors import StreamError, StreamErrorCondition
from shared.xmpp.jid import JID, JIDError, parse_jid
from shared.xmpp.parser import (
    PRE_AUTH_LIMITS,
    ParserLimits,
    StanzaReceived,
    StreamClosed,
    StreamOpened,
    StreamParser,
)
from shared.xmpp.stanza import IQ_TYPES, STANZA_KINDS
from shared.xmpp.stream_io import ServingStream, State, StreamEnded

KiB: Final = 1024
S2S_MAX_STANZA_BYTES: Final = 512 * KiB
# one s2s stream carries every user's traffic with a domain: far more distinct names than a
# client stream, still bounded (see ParserLimits.max_distinct_names)
S2S_DISTINCT_NAMES: Final = 50_000
DB_RESULT: Final = f"{{{ns.DIALBACK}}}result"
DB_VERIFY: Final = f"{{{ns.DIALBACK}}}verify"


class PeerCertificate(Protocol):
    """The certificate a peer presented in its TLS handshake (shared.tls.peer_cert.CheckedPeer):
    is it valid for ``domain`` (chain and identity, XEP-0178 §3)?"""

    def valid_for(self, domain: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class S2SConfig:
    """What a server-to-server stream needs to know about its server."""

    domain: str  # the main domain: ours when a peer's header names none
    secret: bytes  # the dialback secret of the cluster (XEP-0185)
    other_domains: frozenset[str] = frozenset()  # more domains we serve (services, hosts)
    tls_available: bool = True
    tls_required: bool = True
    max_stanza_bytes: int = S2S_MAX_STANZA_BYTES
    stream_management: bool = True  # XEP-0198 acks (no resumption) both ways

    def serves(self, domain: str | None) -> bool:
        """``domain`` is one of ours (the main one or another)."""
        return domain == self.domain or domain in self.other_domains


# ---- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartTLS:
    """<proceed/> is queued: write it, then start the TLS handshake."""


@dataclass(frozen=True, slots=True)
class DialbackRequested:
    """XEP-0220 §2.1.2: ``originating`` claims to be itself; ask its Authoritative Server."""

    originating: str
    receiving: str
    stream_id: str
    key: str


@dataclass(frozen=True, slots=True)
class PeerAuthenticated:
    domain: str
    mechanism: str  # "dialback" or "EXTERNAL"


@dataclass(frozen=True, slots=True)
class AuthFailed:
    mechanism: str
    condition: str


@dataclass(frozen=True, slots=True)
class VerifyAnswered:
    """We answered a <db:verify/> as the Authoritative Server (XEP-0220 §2.3.2)."""

    valid: bool


@dataclass(frozen=True, slots=True)
class StanzaIn:
    """An accepted stanza from a remote domain, in the cluster's canonical bytes."""

    kind: str
    type: str
    id: str
    to: JID
    from_: JID
    payload: bytes


@dataclass(frozen=True, slots=True)
class SMEnabled:
    """The peer enabled XEP-0198 acks on its stream (we answer its <r/> from now on)."""


Event = (
    StartTLS
    | DialbackRequested
    | PeerAuthenticated
    | AuthFailed
    | VerifyAnswered
    | StanzaIn
    | SMEnabled
    | StreamEnded
)


def stream_header(domain: str, peer: str | None, stream_id: str | None) -> bytes:
    """Our header of a jabber:server stream, with the dialback namespace (XEP-0220 §2.1.1)."""
    to = f" to={quoteattr(peer)}" if peer else ""
    sid = f" id={quoteattr(stream_id)}" if stream_id else ""
    return (
        "<?xml version='1.0'?>"
        f'<stream:stream xmlns="{ns.SERVER}" xmlns:stream="{ns.STREAM}" '
        f'xmlns:db="{ns.DIALBACK}"{sid} from={quoteattr(domain)}{to} '
        'version="1.0" xml:lang="en">'
    ).encode()


def check_header(header: StreamOpened) -> None:
    """RFC 6120 §4.8: the stream and content namespaces, and version 1.0 (§4.7.5)."""
    if header.stream_ns != ns.STREAM or header.local_name != "stream":
        raise StreamError(StreamErrorCondition.INVALID_NAMESPACE)
    if header.default_ns != ns.SERVER:
        raise StreamError(StreamErrorCondition.INVALID_NAMESPACE, "jabber:server expected")
    major = header.attrs.get("version", "").partition(".")[0]
    if not major.isdigit() or int(major) < 1:
        raise StreamError(StreamErrorCondition.UNSUPPORTED_VERSION, "version 1.0 required")


def parse_domain(value: str | None) -> str | None:
    """A prepared domain JID, or None if ``value`` is not one."""
    if not value:
        return None
    try:
        jid = parse_jid(value)
    except JIDError:
        return None
    if jid.local is not None or jid.resource is not None:
        return None
    return jid.domain


class ReceivingStream(ServingStream):
    """One inbound server-to-server stream, from the first byte to </stream:stream>."""

    def __init__(self, config: S2SConfig, *, direct_tls: bool = False) -> None:
        self.config = config
        self.state = State.HEADER
        self.tls = direct_tls  # XEP-0368: TLS from the first byte
        self.stream_id = ""
        self.peer_from: str | None = None  # the 'from' of the peer's header, if any
        self.local = config.domain  # the domain of ours the peer's header addressed
        # (our domain, remote domain) pairs proven on this stream (RFC 6120 §13.7)
        self.authenticated: set[tuple[str, str]] = set()
        self._peer_cert: PeerCertificate | None = None
        self._sasl_done = False
        self.sm_handled: int | None = None  # XEP-0198 enabled by the peer: stanzas handled
        self._parser = StreamParser(PRE_AUTH_LIMITS)
        self._pending: list[object] = []
        self._ready: list[Event] = []
        self._out: list[bytes] = []
        self._header_sent = False
        self._waiting: DialbackRequested | StartTLS | None = None

    # ---- answers from the caller ---------------------------------------------------------

    def tls_established(self, peer_cert: PeerCertificate | None = None) -> None:
        """STARTTLS is done; ``peer_cert``: the certificate the peer presented, if any.
        SASL EXTERNAL is offered when it is valid for the domain the peer then claims."""
        if not isinstance(self._waiting, StartTLS):
            raise RuntimeError("not waiting for TLS")
        self._waiting = None
        self.tls = True
        self._peer_cert = peer_cert
        self._restart()

    def direct_tls_established(self, peer_cert: PeerCertificate | None) -> None:
        """XEP-0368: the handshake of a direct TLS connection is done, before any byte of
        the stream; ``peer_cert`` as for `tls_established`."""
        if not self.tls or self._header_sent:
            raise RuntimeError("not a direct TLS stream before its header")
        self._peer_cert = peer_cert

    def dialback_result(self, valid: bool | None) -> None:
        """The Authoritative Server's answer (XEP-0220 §2.1.3); None: it could not be asked."""
        request = self._waiting
        if not isinstance(request, DialbackRequested):
            raise RuntimeError("not waiting for a dialback result")
        self._waiting = None
        self.state = State.OPEN
        attrs = f"from={quoteattr(request.receiving)} to={quoteattr(request.originating)}"
        if valid:
            self._out.append(f"<db:result {attrs} type='valid'/>".encode())
            self.authenticated.add((request.receiving, request.originating))
            self._parser.limits = self._stanza_limits()
            self._ready.append(PeerAuthenticated(request.originating, "dialback"))
            return
        if valid is None:  # XEP-0220 §2.4: the error is for this domain only
            self._out.append(
                f"<db:result {attrs} type='error'><error type='cancel'>"
                f"<remote-server-not-found xmlns='{ns.STANZAS_ERRORS}'/></error>"
                "</db:result>".encode()
            )
            self._ready.append(AuthFailed("dialback", "remote-server-not-found"))
            return
        self._out.append(f"<db:result {attrs} type='invalid'/>".encode())
        self._ready.append(AuthFailed("dialback", "invalid"))
        # XEP-0220 §2.1.3: the stream is not to be trusted any more
        self._ready.append(
            self._fail(StreamError(StreamErrorCondition.NOT_AUTHORIZED, "dialback failed"))
        )

    # ---- internals -----------------------------------------------------------------------

    def _restart(self) -> None:
        self._restart_with(PRE_AUTH_LIMITS)

    def _stanza_limits(self) -> ParserLimits:
        """Limits once the peer is authenticated (RFC 6120 §13.12)."""
        return ParserLimits(
            max_stanza_bytes=self.config.max_stanza_bytes, max_distinct_names=S2S_DISTINCT_NAMES
        )

    def _header(self, peer: str | None) -> bytes:
        return stream_header(self.local, peer, self.stream_id)

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
        if tag.startswith("{" + ns.SERVER + "}"):
            return self._on_stanza(element, tag[len(ns.SERVER) + 2 :])
        if tag == DB_RESULT:
            return self._on_db_result(element)
        if tag == DB_VERIFY:
            return self._on_db_verify(element)
        if tag == f"{{{ns.TLS}}}starttls":
            return self._on_starttls()
        if tag.startswith("{" + ns.SASL + "}"):
            return self._on_sasl(element, tag[len(ns.SASL) + 2 :])
        if tag.startswith("{" + ns.SM + "}"):
            return self._on_sm(tag)
        raise StreamError(StreamErrorCondition.UNSUPPORTED_STANZA_TYPE)

    def _on_header(self, header: StreamOpened) -> Event | None:
        peer = parse_domain(header.attrs.get("from"))
        to = header.attrs.get("to")
        addressed = parse_domain(to) if to is not None else None
        if addressed is not None and self.config.serves(addressed):
            self.local = addressed  # our header answers from the domain addressed
        self._ensure_header(peer)
        check_header(header)
        # RFC 6120 §4.7.2: a 'to' naming a domain we do not serve is host-unknown.  Some
        # dialback-only peers leave it out; <db:result/> then names the domain.
        if to is not None and addressed != self.local:
            raise StreamError(StreamErrorCondition.HOST_UNKNOWN)
        self.peer_from = peer
        self.state = State.OPEN
        self._out.append(self._features())
        return None

    def _features(self) -> bytes:
        parts = ["<stream:features>"]
        if self.config.tls_available and not self.tls:
            required = "<required/>" if self.config.tls_required else ""
            parts.append(f'<starttls xmlns="{ns.TLS}">{required}</starttls>')
        if self._auth_allowed():
            if self._external_allowed():
                parts.append(
                    f'<mechanisms xmlns="{ns.SASL}"><mechanism>EXTERNAL</mechanism></mechanisms>'
                )
            parts.append(f'<dialback xmlns="{ns.DIALBACK_FEATURE}"><errors/></dialback>')
            if self.config.stream_management:  # XEP-0198 §2: enabled once authenticated
                parts.append(sm.FEATURE.decode())
        parts.append("</stream:features>")
        return "".join(parts).encode()

    def _auth_allowed(self) -> bool:
        return self.tls or not self.config.tls_required

    def _external_allowed(self) -> bool:
        return (
            self.tls
            and not self._sasl_done
            and not self.authenticated
            and self.peer_from is not None
            and self._peer_cert is not None
            and self._peer_cert.valid_for(self.peer_from)
        )

    # ---- STARTTLS (RFC 6120 §5) -----------------------------------------------------------

    def _on_starttls(self) -> Event:
        if self.tls or not self.config.tls_available or self.authenticated:
            return self._refuse_starttls()
        self._out.append(f'<proceed xmlns="{ns.TLS}"/>'.encode())
        self._pending.clear()  # nothing sent in the clear after <starttls/> is processed
        self.state = State.WAITING
        self._waiting = StartTLS()
        return self._waiting

    # ---- SASL EXTERNAL (RFC 6120 §6.4, XEP-0178 §3) ---------------------------------------

    def _on_sasl(self, element: etree._Element, name: str) -> Event | None:
        if name != "auth":
            raise StreamError(StreamErrorCondition.POLICY_VIOLATION, "no SASL exchange")
        mechanism = element.get("mechanism", "")
        if mechanism != "EXTERNAL":
            return self._sasl_failure("invalid-mechanism", mechanism)
        if not self._external_allowed():  # XEP-0178 §3.3: the peer may go on with dialback
            return self._sasl_failure("not-authorized", mechanism)
        assert self.peer_from is not None
        try:
            authzid = _b64(element.text)
        except ValueError:
            return self._sasl_failure("incorrect-encoding", mechanism)
        if authzid and authzid.decode(errors="replace") != self.peer_from:
            return self._sasl_failure("invalid-authzid", mechanism)
        self._out.append(f'<success xmlns="{ns.SASL}"/>'.encode())
        self._sasl_done = True
        domain = self.peer_from
        self.authenticated.add((self.local, domain))
        self._restart()
        self._parser.limits = self._stanza_limits()
        return PeerAuthenticated(domain, "EXTERNAL")

    def _sasl_failure(self, condition: str, mechanism: str) -> Event:
        self._out.append(f'<failure xmlns="{ns.SASL}"><{condition}/></failure>'.encode())
        return AuthFailed("EXTERNAL" if mechanism == "EXTERNAL" else "other", condition)

    # ---- dialback (XEP-0220 §2.1.2, §2.3.2) -----------------------------------------------

    def _on_db_result(self, element: etree._Element) -> Event | None:
        if element.get("type"):  # results come to the originating side, not here
            raise StreamError(StreamErrorCondition.UNSUPPORTED_STANZA_TYPE)
        if not self._auth_allowed():
            raise StreamError(StreamErrorCondition.POLICY_VIOLATION, "STARTTLS first")
        originating = parse_domain(element.get("from"))
        receiving = parse_domain(element.get("to"))
        if originating is None:
            raise StreamError(StreamErrorCondition.INVALID_FROM)
        if not self.config.serves(receiving):  # XEP-0220 §2.4: any domain of ours
            raise StreamError(StreamErrorCondition.HOST_UNKNOWN)
        assert receiving is not None
        key = (element.text or "").strip()
        if not key:
            raise StreamError(StreamErrorCondition.BAD_FORMAT, "no dialback key")
        request = DialbackRequested(originating, receiving, self.stream_id, key)
        self.state = State.WAITING
        self._waiting = request
        if self.tls and self._peer_cert is not None and self._peer_cert.valid_for(originating):
            # XEP-0344 §2.4: the certificate on this stream already proves the domain
            self.dialback_result(True)
            return self._ready.pop(0)
        return request

    def _on_db_verify(self, element: etree._Element) -> Event:
        receiving = element.get("from") or ""
        originating = element.get("to") or ""
        stream_id = element.get("id") or ""
        key = element.text or ""
        valid = (
            self.config.serves(parse_domain(originating))
            and bool(stream_id)
            and check_key(self.config.secret, receiving, originating, stream_id, key)
        )
        verdict = "valid" if valid else "invalid"
        self._out.append(
            f"<db:verify from={quoteattr(originating)} to={quoteattr(receiving)} "
            f"id={quoteattr(stream_id)} type='{verdict}'/>".encode()
        )
        return VerifyAnswered(valid)

    # ---- stream management (XEP-0198 §3, §4) ---------------------------------------------

    def _on_sm(self, tag: str) -> Event | None:
        if tag == sm.ENABLE:
            if not self.config.stream_management or not self.authenticated:
                self._out.append(sm.failed("unexpected-request"))
            elif self.sm_handled is not None:
                self._out.append(sm.failed("unexpected-request"))  # §3: enabled already
            else:
                self.sm_handled = 0
                self._out.append(sm.enabled())
                return SMEnabled()
            return None
        if tag == sm.REQUEST:
            if self.sm_handled is not None:
                self._out.append(sm.answer(self.sm_handled))
            return None
        if tag == sm.ACK:
            return None  # we send no stanzas on a stream the peer opened
        raise StreamError(StreamErrorCondition.UNSUPPORTED_STANZA_TYPE)

    # ---- stanzas (RFC 6120 §8.1.1, §13.7.1.4) ---------------------------------------------

    def _on_stanza(self, element: etree._Element, kind: str) -> Event | None:
        event = self._accept(element, kind)
        if self.sm_handled is not None:  # reached here: not a stream error, so handled
            self.sm_handled += 1
        return event

    def _accept(self, element: etree._Element, kind: str) -> Event | None:
        if kind not in STANZA_KINDS:
            raise StreamError(StreamErrorCondition.UNSUPPORTED_STANZA_TYPE)
        if not self.authenticated:
            raise StreamError(StreamErrorCondition.NOT_AUTHORIZED, "authenticate first")
        from_attr = element.get("from")
        to_attr = element.get("to")
        if not from_attr or not to_attr:
            raise StreamError(StreamErrorCondition.IMPROPER_ADDRESSING)
        try:
            from_ = parse_jid(from_attr)
        except JIDError:
            raise StreamError(StreamErrorCondition.INVALID_FROM) from None
        if all(remote != from_.domain for _, remote in self.authenticated):
            raise StreamError(StreamErrorCondition.INVALID_FROM, escape(from_.domain))
        try:
            to = parse_jid(to_attr)
        except JIDError:
            raise StreamError(StreamErrorCondition.IMPROPER_ADDRESSING) from None
        if (to.domain, from_.domain) not in self.authenticated:  # RFC 6120 §13.7.1.4
            raise StreamError(StreamErrorCondition.HOST_UNKNOWN)
        type_ = element.get("type") or ""
        stanza_id = element.get("id") or ""
        if kind == "iq" and (type_ not in IQ_TYPES or not stanza_id):
            return None  # RFC 6120 §8.2.3: not an IQ we can answer or route; dropped
        element.set("from", str(from_))
        element.set("to", str(to))
        return StanzaIn(kind, type_, stanza_id, to, from_, to_client(element))


def _b64(text: str | None) -> bytes | None:
    """RFC 6120 §6.4.2: no text means no initial response; '=' means an empty one."""
    if text is None or text.strip() in ("", "="):
        return None
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64") from None
