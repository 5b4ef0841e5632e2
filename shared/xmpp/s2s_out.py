"""The server-to-server stream, initiating side, sans-I/O (RFC 6120 §4-§6; XEP-0220 §2.1.1).

We open a stream to a peer server, either to send it our stanzas (we are the Originating
Server) or only to ask it whether a dialback key is valid (we are the Receiving Server
asking the Authoritative Server, XEP-0220 §2.3.1: a `VerifyRequest`).  Same shape as the
receiving side: `initiate`, `receive_data`, `next_event`, `data_to_send`.

    StartTLS              -> caller wraps the socket, then `tls_established(cert_valid)`
    Ready(mechanism, sm)  -> the stream is authenticated: `send(payload)` from now on
    AuthFailed            -> SASL EXTERNAL or dialback was refused (see StreamEnded after)
    VerifyResult(valid)   -> the Authoritative Server's answer to our <db:verify/>
    Acked(n)              -> XEP-0198: the peer handled the n oldest unacked stanzas
    SMFailed              -> XEP-0198: the peer refused <enable/>; nothing will be acked

Authentication (XEP-0178, XEP-0220): SASL EXTERNAL when the peer offers it and the caller
found the peer's certificate valid for the peer's domain (then ours is presumably checked
by the peer too); otherwise, or if EXTERNAL fails, Server Dialback with the XEP-0185 key.

A stream speaks for one of our domains (``local``, the main one by default) to one remote
domain: authentication is of that pair (RFC 6120 §13.7), so a cluster that serves several
domains (its services' too) opens one stream per pair, as Prosody and ejabberd do.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from lxml import etree

from shared.xmpp import ns, sm
from shared.xmpp.content_ns import to_server_element
from shared.xmpp.dialback import dialback_key
from shared.xmpp.errors import StreamError, StreamErrorCondition
from shared.xmpp.jid import JIDError, parse_jid
from shared.xmpp.parser import (
    PRE_AUTH_LIMITS,
    StanzaReceived,
    StreamClosed,
    StreamOpened,
    StreamParser,
    parse_fragment,
)
from shared.xmpp.s2s import (
    DB_RESULT,
    DB_VERIFY,
    AuthFailed,
    S2SConfig,
    StartTLS,
    check_header,
    stream_header,
)
from shared.xmpp.stream_io import STREAM_CLOSE, StreamEnded, StreamIO

FEATURES = f"{{{ns.STREAM}}}features"
STREAM_ERROR = f"{{{ns.STREAM}}}error"


@dataclass(frozen=True, slots=True)
class VerifyRequest:
    """XEP-0220 §2.3.1: is ``key`` valid for ``originating`` on our stream ``stream_id``?"""

    receiving: str  # our domain
    originating: str  # the peer, authoritative for its own keys
    stream_id: str
    key: str


@dataclass(frozen=True, slots=True)
class Ready:
    mechanism: str  # "dialback" or "EXTERNAL"
    sm: bool = False  # XEP-0198 requested: every stanza sent is counted until acked


@dataclass(frozen=True, slots=True)
class Acked:
    """XEP-0198 §4: the peer handled ``n`` more of the stanzas we sent, oldest first."""

    n: int


@dataclass(frozen=True, slots=True)
class SMFailed:
    """XEP-0198 §3: the peer refused <enable/>; the stream goes on without acks."""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    valid: bool


Event = StartTLS | Ready | AuthFailed | VerifyResult | Acked | SMFailed | StreamEnded


class Phase(enum.Enum):
    HEADER = "header"  # waiting for the peer's header
    FEATURES = "features"  # waiting for <stream:features/>
    TLS = "tls"  # sent <starttls/>
    TLS_HANDSHAKE = "tls-handshake"  # the caller is wrapping the socket
    SASL = "sasl"  # sent <auth mechanism='EXTERNAL'/>
    DIALBACK = "dialback"  # sent <db:result/>
    VERIFY = "verify"  # sent <db:verify/>
    READY = "ready"
    CLOSED = "closed"


class InitiatingStream(StreamIO):
    """One outbound server-to-server stream."""

    def __init__(
        self,
        config: S2SConfig,
        remote: str,
        *,
        direct_tls: bool = False,
        verify: VerifyRequest | None = None,
        local: str = "",
    ) -> None:
        self.config = config
        self.remote = remote
        # the domain of ours this stream speaks for; a verification, the one the key was for
        self.local = local or (verify.receiving if verify is not None else config.domain)
        self.verify = verify
        self.tls = direct_tls  # XEP-0368: TLS from the first byte
        self.phase = Phase.HEADER
        self.stream_id = ""
        self.mechanism = ""
        self._cert_valid = False
        self._external_done = False
        self._dialback_offered = False
        self._sm_offered = False
        self.sm: sm.Sent | None = None  # XEP-0198 requested on this stream
        self._parser = StreamParser(PRE_AUTH_LIMITS)
        self._pending: list[object] = []
        self._ready: list[Event] = []
        self._out: list[bytes] = []

    # ---- input and output ----------------------------------------------------------------

    def initiate(self, cert_valid: bool = False) -> None:
        """Queue our stream header; ``cert_valid`` when direct TLS already checked the peer."""
        self._cert_valid = cert_valid
        self._out.append(stream_header(self.local, self.remote, None))

    def _input_closed(self) -> bool:
        return self.phase is Phase.CLOSED

    def _input_paused(self) -> bool:
        return self.phase in (Phase.TLS_HANDSHAKE, Phase.CLOSED)

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    def send(self, payload: bytes) -> None:
        """Queue one stanza in the cluster's canonical bytes (jabber:client), rewritten to
        jabber:server.  Raises StreamError if the payload cannot be parsed."""
        if self.phase is not Phase.READY:
            raise RuntimeError("the stream is not authenticated")
        element = parse_fragment(payload, self.config.max_stanza_bytes)
        # RFC 6120 §8.1.1.1, §8.1.2.1: on s2s both addresses are required, 'from' in our
        # domain and 'to' in the peer's, or the peer closes the whole stream.
        if domain_of(element.get("from")) != self.local:
            raise StreamError(StreamErrorCondition.INVALID_FROM, "not from our domain")
        if domain_of(element.get("to")) != self.remote:
            raise StreamError(StreamErrorCondition.IMPROPER_ADDRESSING, "not to the peer")
        self._out.append(to_server_element(element))
        if self.sm is not None:
            self.sm.count()

    def request_ack(self) -> None:
        """XEP-0198 §4: ask the peer how many stanzas it handled (<r/>)."""
        if self.sm is not None and self.phase is Phase.READY:
            self._out.append(sm.request())

    def tls_established(self, cert_valid: bool) -> None:
        if self.phase is not Phase.TLS_HANDSHAKE:
            raise RuntimeError("not waiting for TLS")
        self.tls = True
        self._cert_valid = cert_valid
        self._restart()

    def close(self) -> None:
        """Close our stream cleanly (idle timeout, shutdown, hand-over)."""
        if self.phase is Phase.CLOSED:
            return
        self._out.append(STREAM_CLOSE)
        self.phase = Phase.CLOSED

    # ---- internals -----------------------------------------------------------------------

    def _restart(self) -> None:
        """RFC 6120 §4.3.3: a new stream, a fresh parser, our header again."""
        self._new_parser(PRE_AUTH_LIMITS)
        self._pending.clear()
        self.phase = Phase.HEADER
        self._out.append(stream_header(self.local, self.remote, None))

    def _fail(self, exc: StreamError) -> StreamEnded:
        self._out.append(exc.to_xml())
        return self._end(exc.condition)

    def _end(self, error: StreamErrorCondition | None) -> StreamEnded:
        self._out.append(STREAM_CLOSE)
        self.phase = Phase.CLOSED
        self._pending.clear()
        return StreamEnded(error)

    def _handle(self, item: object) -> Event | None:
        if isinstance(item, StreamError):
            raise item
        if isinstance(item, StreamOpened):
            if self.phase is not Phase.HEADER:  # pragma: no cover - the parser opens once
                raise StreamError(StreamErrorCondition.NOT_WELL_FORMED)
            check_header(item)
            self.stream_id = item.attrs.get("id", "")
            if not self.stream_id:
                raise StreamError(StreamErrorCondition.INVALID_XML, "no stream id")
            self.phase = Phase.FEATURES
            return None
        if isinstance(item, StreamClosed):
            return self._end(None)
        assert isinstance(item, StanzaReceived)
        element = item.element
        tag = element.tag
        if tag == STREAM_ERROR:
            condition = _stream_condition(element)
            return self._end(condition)
        if tag == FEATURES and self.phase is Phase.FEATURES:
            return self._on_features(element)
        if tag == f"{{{ns.TLS}}}proceed" and self.phase is Phase.TLS:
            self.phase = Phase.TLS_HANDSHAKE
            return StartTLS()
        if tag == f"{{{ns.TLS}}}failure" and self.phase is Phase.TLS:
            self.phase = Phase.CLOSED  # RFC 6120 §5.4.2.2: the peer closes the stream
            return StreamEnded(StreamErrorCondition.POLICY_VIOLATION)
        if self.phase is Phase.SASL and tag == f"{{{ns.SASL}}}success":
            self._external_done = True
            self.mechanism = "EXTERNAL"
            self._restart()
            return None
        if self.phase is Phase.SASL and tag == f"{{{ns.SASL}}}failure":
            condition = element[0].tag.rpartition("}")[2] if len(element) else "failure"
            self._ready.append(AuthFailed("EXTERNAL", str(condition)))
            if self._dialback_offered:
                self._send_db_result()
                return None
            self._ready.append(self._end(None))
            return None
        if tag == DB_RESULT and self.phase is Phase.DIALBACK:
            return self._on_db_result(element)
        if tag == DB_VERIFY and self.phase is Phase.VERIFY:
            return self._on_db_verify(element)
        if self.phase is Phase.READY:
            if isinstance(tag, str) and tag.startswith("{" + ns.SM + "}"):
                return self._on_sm(element)
            return None  # XEP-0220 results for other domains, keepalives: nothing to do
        raise StreamError(StreamErrorCondition.UNSUPPORTED_STANZA_TYPE)

    def _on_features(self, features: etree._Element) -> Event | None:
        starttls = features.find(f"{{{ns.TLS}}}starttls")
        mechanisms = [
            (m.text or "").strip()
            for m in features.iterfind(f"{{{ns.SASL}}}mechanisms/{{{ns.SASL}}}mechanism")
        ]
        self._dialback_offered = features.find(f"{{{ns.DIALBACK_FEATURE}}}dialback") is not None
        self._sm_offered = self.config.stream_management and sm.offered(features)
        if not self.tls and starttls is not None and self.config.tls_available:
            self._out.append(f'<starttls xmlns="{ns.TLS}"/>'.encode())
            self.phase = Phase.TLS
            return None
        if not self.tls and self.config.tls_required:
            return self._end(StreamErrorCondition.POLICY_VIOLATION)  # no TLS offered
        if self.verify is not None:
            v = self.verify
            self._out.append(
                f"<db:verify from={quoteattr(v.receiving)} to={quoteattr(v.originating)} "
                f"id={quoteattr(v.stream_id)}>{v.key}</db:verify>".encode()
            )
            self.phase = Phase.VERIFY
            return None
        if self._external_done:  # the stream after SASL success
            return self._ready_now("EXTERNAL")
        if "EXTERNAL" in mechanisms and self._cert_valid:
            authzid = base64.b64encode(self.local.encode()).decode()
            self._out.append(
                f'<auth xmlns="{ns.SASL}" mechanism="EXTERNAL">{authzid}</auth>'.encode()
            )
            self.phase = Phase.SASL
            return None
        # Dialback even when the feature is not advertised: XEP-0220 §2.1.1 lets the
        # stream header's namespace declaration stand for it (older servers).
        self._send_db_result()
        return None

    def _send_db_result(self) -> None:
        key = dialback_key(self.config.secret, self.remote, self.local, self.stream_id)
        self._out.append(
            f"<db:result from={quoteattr(self.local)} to={quoteattr(self.remote)}>"
            f"{key}</db:result>".encode()
        )
        self.phase = Phase.DIALBACK

    def _on_db_result(self, element: etree._Element) -> Event | None:
        type_ = element.get("type")
        if element.get("from") != self.remote or element.get("to") != self.local:
            return None  # a result for another domain pair: not ours
        if type_ == "valid":
            self.mechanism = "dialback"
            return self._ready_now("dialback")
        condition = "invalid" if type_ == "invalid" else _error_condition(element)
        self._ready.append(self._end(None))
        return AuthFailed("dialback", condition)

    def _ready_now(self, mechanism: str) -> Ready:
        """Authenticated.  XEP-0198 §3: SM is requested now, when the peer offered it (in the
        features of this stream: those before dialback, or after SASL), and counting starts
        with <enable/>, before any stanza."""
        self.phase = Phase.READY
        if self._sm_offered:
            self._out.append(sm.enable())
            self.sm = sm.Sent()
        return Ready(mechanism, self.sm is not None)

    def _on_sm(self, element: etree._Element) -> Event | None:
        tag = element.tag
        if tag == sm.ACK and self.sm is not None:
            return Acked(self.sm.ack(sm.parse_h(element)))  # n may be 0: the <r/> is answered
        if tag == sm.FAILED and self.sm is not None:
            self.sm = None
            return SMFailed()
        if tag == sm.REQUEST and self.sm is not None:
            self._out.append(sm.answer(0))  # nothing comes to us on this stream
        return None  # <enabled/>, or anything of XEP-0198 we did not ask for

    def _on_db_verify(self, element: etree._Element) -> Event:
        assert self.verify is not None
        valid = (
            element.get("type") == "valid"
            and element.get("id") == self.verify.stream_id
            and element.get("from") == self.verify.originating
        )
        self._ready.append(self._end(None))
        return VerifyResult(valid)


def domain_of(jid: str | None) -> str | None:
    if not jid:
        return None
    try:
        return parse_jid(jid).domain
    except JIDError:
        return None


def _stream_condition(element: etree._Element) -> StreamErrorCondition:
    for child in element:
        tag = child.tag if isinstance(child.tag, str) else ""
        if tag.startswith("{" + ns.STREAMS_ERRORS + "}"):
            try:
                return StreamErrorCondition(tag.rpartition("}")[2])
            except ValueError:
                continue
    return StreamErrorCondition.UNDEFINED_CONDITION


def _error_condition(element: etree._Element) -> str:
    for child in element:
        if isinstance(child.tag, str) and child.tag.rpartition("}")[2] == "error" and len(child):
            return str(child[0].tag).rpartition("}")[2]
    return "error"
