"""The client-to-server stream state machine, sans-I/O (RFC 6120 §4 to §8).

Bytes go in with `receive_data`, events come out of `next_event` one at a time, and the bytes
to write are taken with `data_to_send` (the h11 style).  Steps that need I/O (a TLS handshake,
a credentials lookup, a resource binding, an account creation) come out as events and the
machine waits (`next_event` returns None) until the caller reports the outcome:

    StartTLS            -> caller wraps the socket, then `tls_established()`
    CredentialsNeeded   -> `credentials_loaded(creds or None)`, `credentials_unavailable()`
                           (store outage) or `credentials_refused(text)` (XEP-0205 throttling)
    VerificationNeeded  -> (a domain whose backend checks the secret, ``auth_backend``)
                           `verified(localpart)`, `verification_rejected()`, or as above
                           `credentials_unavailable()` / `credentials_refused(text)`
    BindRequested       -> `bind_succeeded(full_jid)` or `bind_failed(StanzaError)`
    RegisterRequested   -> `register_done(StanzaError or None)`
    ResumeRequested     -> `resume_succeeded(jid, queue)` or `resume_failed()` (XEP-0198 §5)

SASL2 (XEP-0388) with Bind2 (XEP-0386) and FAST (XEP-0484): an <authenticate/> is a SASL
exchange like <auth/> that may carry a bind request and ask for a token; its success is one
`AuthSucceeded` carrying the request (`Sasl2Request`), which the caller answers, after binding
(and enabling carbons) and issuing the token, with `sasl2_done(full_jid or None, token)`: one
<success/> with the bound JID, the inline XEP-0198 <enabled/> and the token, then the
features of the authenticated stream, with no stream restart.  A FAST login asks for the
client's tokens (`TokensNeeded` -> `tokens_loaded`).  SCRAM-*-PLUS and the HT mechanisms
need the connection's channel binding: `tls_established(binding)` (or `set_channel_binding`
for direct TLS) hands it over; XEP-0440 advertises its types.

XEP-0352 Client State Indication: <csi/> is offered after authentication; <active/> and
<inactive/> of a bound session come out as `ClientState` (they are not stanzas: not counted
for XEP-0198); what to hold is the caller's (`shared.xmpp.csi`).

XEP-0198 Stream Management: offered after authentication (<sm/> beside <bind/>), enabled
after binding.  The machine counts what it receives (`sm.handled`) and answers <r/>; every
stanza written to the client, the server's own included, must be counted and queued with
`sm.push` (the machine does so for the stanzas it writes itself: bounces, results); an <a/>
drops the acknowledged ones (`Acked`).  The caller decides when to send <r/>
(`request_ack`), and keeps the queue of a broken stream for a <resume/>.

Every stream restart (after STARTTLS, after SASL success) starts a fresh parser and discards
whatever the old parser still held: bytes pipelined after <starttls/> must never be
processed as if they had come over TLS (the STARTTLS command injection class).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from shared.xmpp import csi, fast, ns, sm
from shared.xmpp.credentials import StoredCredentials
from shared.xmpp.errors import (
    StanzaError,
    StanzaErrorCondition,
    StreamError,
    StreamErrorCondition,
)
from shared.xmpp.jid import JID, JIDError, parse_jid
from shared.xmpp.parser import (
    PRE_AUTH_LIMITS,
    ParserLimits,
    StanzaReceived,
    StreamClosed,
    StreamOpened,
    StreamParser,
    serialize,
)
from shared.xmpp.sasl import (
    MECHANISMS,
    Authenticator,
    Challenge,
    ChannelBinding,
    NeedCredentials,
    SASLFailure,
    Success,
    binding_feature,
    offered_mechanisms,
)
from shared.xmpp.sasl_delegated import DelegatedAuthenticator, NeedVerification
from shared.xmpp.stanza import IQ_TYPES, STANZA_KINDS, error_reply, iq_result, must_not_bounce
from shared.xmpp.stream_io import ServingStream, State, StreamEnded

MAX_AUTH_ATTEMPTS: Final = 3
SM_REQUEST: Final = sm.request()
_SM_ID_BYTES: Final = 18


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """What the machine needs to know about its server."""

    domain: str
    tls_available: bool = True
    tls_required: bool = True
    allow_registration: bool = False
    max_stanza_bytes: int = 256 * 1024
    mechanisms: tuple[str, ...] = MECHANISMS
    stream_management: bool = True  # XEP-0198 offered
    sm_resume_s: int = 300  # resumption timeout (§5) when the client asks for none; 0: no
    sm_resume_max_s: int = 300  # the longest a client's <enable max/> is honoured
    client_state: bool = True  # XEP-0352 offered
    sm_location: str = ""  # <enabled location/> (§5): where this server prefers <resume/>
    # <r/> comes out as AckRequested and the caller answers it (`answer_ack`) once the
    # stanzas it counts are stored (durable delivery: an 'h' counts only stored stanzas)
    sm_deferred_acks: bool = False
    # virtual hosts: the configuration of the domain a header's 'to' names (this one as the
    # base), or None when it is not served (RFC 6120 §4.9.3.6 host-unknown); None: only
    # ``domain`` is served
    hosts: Callable[[str, StreamConfig], StreamConfig | None] | None = None
    sasl2: bool = True  # XEP-0388 offered, with XEP-0386 Bind2
    carbons: bool = True  # XEP-0280 <enable/> inline in a Bind2 request
    fast: bool = False  # XEP-0484 tokens offered (the caller has a store for them)
    # who checks the secret: "internal" (the stored SCRAM keys, `shared.xmpp.sasl`) or a
    # backend the caller asks (`VerificationNeeded`, `shared.xmpp.sasl_delegated`)
    auth_backend: str = "internal"
    # load-aware placement: asked at the header of a new stream once TLS protects it
    # (RFC 6120 §4.9.3.19 (a): not before), the "host:port" of another server of the service
    # to send the client to with <see-other-host/>, or "" to serve it here; None: never
    placement: Callable[[], str] | None = None

    @property
    def registration(self) -> bool:
        """XEP-0077 in-band registration offered: only where the keys are stored (a token or
        HTTP domain's accounts are the platform's)."""
        return self.allow_registration and self.auth_backend == "internal"


# ---- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartTLS:
    """<proceed/> is queued: write it, then start the TLS handshake."""


@dataclass(frozen=True, slots=True)
class CredentialsNeeded:
    username: str


@dataclass(frozen=True, slots=True)
class Bind2Request:
    """XEP-0386 §3.2: a <bind/> inside a SASL2 <authenticate/>."""

    tag: str  # the client's <tag/>, prepared as a resourcepart ("" without one)
    carbons: bool  # XEP-0280 <enable/>
    active: bool | None  # XEP-0352 <active/> (True), <inactive/> (False), neither (None)
    sm_enable: tuple[bool, str] | None  # XEP-0198 <enable/>: (resume, max) if asked


@dataclass(frozen=True, slots=True)
class Sasl2Request:
    """What a SASL2 <authenticate/> asked for beside the authentication (XEP-0388 §2.3)."""

    user_agent_id: str  # <user-agent id/>: the client (FAST tokens, stable resources)
    user_agent: str  # its <software/> and <device/>, for the operator's token list
    bind: Bind2Request | None
    request_token: str | None  # XEP-0484 <request-token mechanism/>
    fast_invalidate: bool  # XEP-0484 <fast invalidate='true'/>


@dataclass(frozen=True, slots=True)
class VerificationNeeded:
    """Ask the domain's backend about ``secret`` (a password or a bearer token);
    ``username`` is the localpart the client named, None when only the token names it."""

    mechanism: str
    username: str | None
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthSucceeded:
    """SASL success.  For SASL2 (`sasl2` set) the machine waits for `sasl2_done`; `resource`
    is the Bind2 resource to bind, `token` the FAST token that authenticated."""

    username: str
    mechanism: str
    sasl2: Sasl2Request | None = None
    resource: str | None = None
    token: fast.StoredToken | None = None


@dataclass(frozen=True, slots=True)
class TokensNeeded:
    """XEP-0484: a FAST login; load the client's tokens and call `tokens_loaded`."""

    username: str
    mechanism: str
    client_id: str


@dataclass(frozen=True, slots=True)
class AuthFailed:
    mechanism: str
    condition: str
    username: str | None = None  # the authcid, when the exchange got that far


@dataclass(frozen=True, slots=True)
class BindRequested:
    resource: str | None  # prepared (RFC 7622 OpaqueString); None asks the server for one


@dataclass(frozen=True, slots=True)
class RegisterRequested:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class SMEnabled:
    """XEP-0198 §3: stream management is on; `id` is set when the session can be resumed."""

    id: str
    max_s: int


@dataclass(frozen=True, slots=True)
class Acked:
    """An <a/> from the client acknowledged `n` more stanzas (XEP-0198 §4)."""

    n: int


@dataclass(frozen=True, slots=True)
class AckRequested:
    """<r/> with `StreamConfig.sm_deferred_acks`: answer <a h/> with `answer_ack(h)` once the
    `h` stanzas received so far are stored (XEP-0198 §4 lets the answer wait)."""

    h: int


@dataclass(frozen=True, slots=True)
class ResumeRequested:
    """XEP-0198 §5: <resume previd h/> instead of a bind."""

    previd: str
    h: int


@dataclass(frozen=True, slots=True)
class ClientState:
    """XEP-0352 §4: the client became active (True) or inactive (False)."""

    active: bool


@dataclass(frozen=True, slots=True)
class StanzaIn:
    """A stanza of a bound session, 'from' stamped, in canonical bytes."""

    kind: str
    type: str
    id: str
    to: JID | None
    element: etree._Element
    payload: bytes


Event = (
    StartTLS
    | CredentialsNeeded
    | TokensNeeded
    | VerificationNeeded
    | AuthSucceeded
    | AuthFailed
    | BindRequested
    | RegisterRequested
    | StanzaIn
    | SMEnabled
    | Acked
    | AckRequested
    | ResumeRequested
    | ClientState
    | StreamEnded
)


class C2SStream(ServingStream):
    """One client stream, from the first byte to </stream:stream>."""

    __slots__ = (  # one per connection: no instance dict
        "_auth",
        "_auth_attempts",
        "_auth_user",
        "_bind_iq",
        "_binding",
        "_header_sent",
        "_mechanism",
        "_out",
        "_parser",
        "_pending",
        "_ready",
        "_register_iq",
        "_resume",
        "_sasl2",
        "_waiting_for",
        "config",
        "jid",
        "sm",
        "state",
        "stream_id",
        "tls",
        "username",
    )

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self.state = State.HEADER
        self.tls = False
        self.username: str | None = None
        self.jid: JID | None = None  # full JID once bound
        self.stream_id = ""
        self._parser = StreamParser(PRE_AUTH_LIMITS)
        self._pending: list[object] = []
        self._ready: list[Event] = []  # events produced by the caller's answers
        self._out: list[bytes] = []
        self._header_sent = False
        self._auth: Authenticator | DelegatedAuthenticator | None = None
        self._auth_attempts = 0
        self._mechanism = ""
        self._auth_user: str | None = None
        self._waiting_for: type | None = None
        self._bind_iq: str = ""
        self._register_iq: str = ""
        self.sm: sm.Queue | None = None  # XEP-0198 enabled (or resumed) on this stream
        self._resume: ResumeRequested | None = None
        self._binding: ChannelBinding | None = None  # the TLS channel bindings, until auth
        self._sasl2: _Sasl2 | None = None  # a SASL2 exchange under way

    _STREAM_ID_BYTES = 12

    @property
    def bound(self) -> bool:
        return self.jid is not None

    # ---- answers from the caller -------------------------------------------------------

    def tls_established(self, binding: ChannelBinding | None = None) -> None:
        self._expect(StartTLS)
        self.tls = True
        self._binding = binding
        self._restart()

    def set_channel_binding(self, binding: ChannelBinding | None) -> None:
        """The TLS channel bindings of a stream that began in TLS (XEP-0368)."""
        self._binding = binding

    def tokens_loaded(self, tokens: list[fast.StoredToken], now: float) -> None:
        """The client's FAST tokens, derived (`TokensNeeded`)."""
        self._expect(TokensNeeded)
        self.state = State.OPEN
        auth = self._auth
        assert isinstance(auth, fast.TokenAuthenticator)
        event = self._sasl_step(lambda _: auth.provide_tokens(tokens, now))
        if event is not None:
            self._ready.insert(0, event)

    def tokens_unavailable(self) -> None:
        """The token store could not answer: temporary-auth-failure (RFC 6120 §6.5.12)."""
        self._expect(TokensNeeded)
        self.state = State.OPEN
        self._ready.insert(0, self._sasl_failure("temporary-auth-failure", self._mechanism))

    def tokens_refused(self, text: str) -> None:
        """As `credentials_refused`, for a FAST login (XEP-0205 §3)."""
        self._expect(TokensNeeded)
        self.state = State.OPEN
        self._ready.insert(0, self._sasl_failure("temporary-auth-failure", self._mechanism, text))

    def sasl2_done(self, jid: JID | None, token: tuple[str, str] | None = None) -> None:
        """XEP-0388 §2.6.1: the <success/> of a SASL2 login, once the caller bound `jid`
        (None: no bind asked, or it failed: the client may bind the RFC 6120 way) and issued
        `token` (XEP-0484 §4.3: the token and its expiry in XEP-0082 form), then the
        features of the authenticated stream (no restart)."""
        self._expect(AuthSucceeded)
        self.state = State.OPEN
        pending, self._sasl2 = self._sasl2, None
        assert pending is not None and self.username is not None
        request = pending.request
        parts = [f'<success xmlns="{ns.SASL2}">']
        if pending.data:
            parts.append(f"<additional-data>{base64.b64encode(pending.data).decode()}"
                         "</additional-data>")
        identity = str(jid) if jid is not None else f"{self.username}@{self.config.domain}"
        parts.append(f"<authorization-identifier>{escape(identity)}</authorization-identifier>")
        bind = request.bind
        if jid is not None and bind is not None:
            self.jid = jid
            bound = ""
            if bind.sm_enable is not None and self.config.stream_management:
                xml, enabled = self._enable_sm(*bind.sm_enable)  # XEP-0386 §3.2
                bound = xml.decode()
                self._ready.append(enabled)
            if bind.active is not None and self.config.client_state:
                self._ready.append(ClientState(bind.active))  # XEP-0386 §3.2, XEP-0352
            parts.append(f'<bound xmlns="{ns.BIND2}">{bound}</bound>')
        if token is not None:
            parts.append(f'<token xmlns="{ns.FAST}" token={quoteattr(token[0])} '
                         f"expiry={quoteattr(token[1])}/>")
        parts.append("</success>")
        self._out.append("".join(parts).encode())
        self._out.append(_features(self.config, self.tls, 2 if self.jid else 1, ()))

    def credentials_loaded(self, creds: StoredCredentials | None) -> None:
        self._expect(CredentialsNeeded)
        assert self._auth is not None
        self.state = State.OPEN
        event = self._sasl_step(lambda auth: auth.provide_credentials(creds))
        if event is not None:
            self._ready.insert(0, event)  # before a StreamEnded the failure may have queued

    def verified(self, username: str) -> None:
        """The backend accepted the secret of `VerificationNeeded` for ``username``."""
        self._expect(VerificationNeeded)
        self.state = State.OPEN
        event = self._sasl_step(lambda auth: auth.verified(username))
        if event is not None:
            self._ready.insert(0, event)

    def verification_rejected(self) -> None:
        """The backend refused the secret of `VerificationNeeded`."""
        self._expect(VerificationNeeded)
        self.state = State.OPEN
        event = self._sasl_step(lambda auth: auth.rejected())
        if event is not None:
            self._ready.insert(0, event)

    def credentials_unavailable(self) -> None:
        """The account store (or the domain's backend) could not answer: RFC 6120 §6.5.12
        temporary-auth-failure."""
        self._expect_login()
        self.state = State.OPEN
        self._ready.insert(0, self._sasl_failure("temporary-auth-failure", self._mechanism))

    def credentials_refused(self, text: str) -> None:
        """Refuse the attempt without checking it: too many failures (XEP-0205 §3).

        RFC 6120 §6.5.12 <temporary-auth-failure/>: the client may retry later."""
        self._expect_login()
        self.state = State.OPEN
        self._ready.insert(0, self._sasl_failure("temporary-auth-failure", self._mechanism, text))

    def bind_succeeded(self, full_jid: JID) -> None:
        self._expect(BindRequested)
        self.state = State.OPEN
        self.jid = full_jid
        payload = f'<bind xmlns="{ns.BIND}"><jid>{escape(str(full_jid))}</jid></bind>'
        self._out.append(iq_result(self._bind_iq, None, None, payload))

    def bind_failed(self, error: StanzaError) -> None:
        self._expect(BindRequested)
        self.state = State.OPEN
        self._out.append(_iq_error(self._bind_iq, error))

    def register_done(self, error: StanzaError | None) -> None:
        self._expect(RegisterRequested)
        self.state = State.OPEN
        if error is None:
            self._out.append(iq_result(self._register_iq, None, None))
        else:
            self._out.append(_iq_error(self._register_iq, error))

    def resume_succeeded(self, jid: JID, queue: sm.Queue) -> bool:
        """XEP-0198 §5: the session ``jid`` with its counters and unacknowledged stanzas is
        this stream's now: <resumed/>, then the stanzas the client's 'h' did not acknowledge,
        in order.  False (and a stream error queued) when that 'h' acknowledges more than
        was sent (§4): the session is left as it was."""
        self._expect(ResumeRequested)
        self.state = State.OPEN
        request, self._resume = self._resume, None
        assert request is not None
        error = queue.check(request.h)
        if error is not None:
            self._ready.append(self._fail(error))
            return False
        queue.ack(request.h)
        self.jid = jid
        self.sm = queue
        self._out.append(sm.resumed(request.previd, queue.handled))
        self._out.extend(queue.queue)
        return True

    def resume_failed(self, condition: str = "item-not-found", h: int | None = None) -> None:
        """XEP-0198 §5: no such session (unknown, expired, or another account's); `h`, when
        the server still knows how many of the client's stanzas that session handled."""
        self._expect(ResumeRequested)
        self.state = State.OPEN
        self._resume = None
        self._out.append(sm.failed(condition, h))

    def answer_ack(self, h: int) -> None:
        """The deferred answer to an <r/> (`AckRequested`)."""
        if self.sm is not None and self.state is not State.CLOSED:
            self._out.append(sm.answer(h))

    def request_ack(self) -> None:
        """XEP-0198 §4: ask the client how many stanzas it handled."""
        if self.sm is not None and self.state is not State.CLOSED:
            self._out.append(SM_REQUEST)

    def stanza_error(self, element: etree._Element, error: StanzaError) -> None:
        """Bounce one of the client's own stanzas back to it (never an error or a result)."""
        if must_not_bounce(element.get("type")):
            return
        self._stanza_out(self._bounce(element, error))

    def _stanza_out(self, stanza: bytes) -> None:
        """A stanza the machine itself writes: counted for XEP-0198 once SM is on."""
        self._out.append(stanza)
        if self.sm is not None:
            self.sm.push(stanza)

    # ---- internals -------------------------------------------------------------------------

    def _expect(self, what: type) -> None:
        if self.state is not State.WAITING or self._waiting_for is not what:
            raise RuntimeError(f"not waiting for {what.__name__}")
        self._waiting_for = None

    def _expect_login(self) -> None:
        what = self._waiting_for
        self._expect(VerificationNeeded if what is VerificationNeeded else CredentialsNeeded)

    def _wait(self, event: Event) -> Event:
        self.state = State.WAITING
        self._waiting_for = type(event)
        return event

    def _restart(self) -> None:
        """RFC 6120 §4.3.3: a new stream on the same connection, with a fresh parser."""
        limits = PRE_AUTH_LIMITS
        if self.username:
            limits = _post_auth_limits(self.config.max_stanza_bytes)
        self._restart_with(limits)

    def _header(self, peer: str | None) -> bytes:
        to = f" to={quoteattr(peer)}" if peer else ""
        return (
            "<?xml version='1.0'?>"
            f'<stream:stream xmlns="{ns.CLIENT}" xmlns:stream="{ns.STREAM}" '
            f'id="{self.stream_id}" from={_quoted(self.config.domain)}{to} '
            'version="1.0" xml:lang="en">'
        ).encode()

    def _handle(self, item: object) -> Event | None:
        if isinstance(item, StreamError):
            raise item
        if isinstance(item, StreamOpened):
            return self._on_header(item)
        if isinstance(item, StreamClosed):
            return self._end_stream()
        assert isinstance(item, StanzaReceived)
        if self.state is State.HEADER:  # pragma: no cover - the parser opens first
            raise StreamError(StreamErrorCondition.NOT_WELL_FORMED)
        element = item.element
        tag = element.tag
        if not isinstance(tag, str):
            raise StreamError(StreamErrorCondition.RESTRICTED_XML)
        if tag.startswith("{" + ns.CLIENT + "}"):
            return self._on_stanza(element, tag[len(ns.CLIENT) + 2 :])
        if tag.startswith(sm.PREFIX) and self.config.stream_management:
            return self._on_sm(element, tag)
        if (tag == csi.ACTIVE or tag == csi.INACTIVE) and self.config.client_state:
            if self.jid is None:  # XEP-0352 §4: a state of a bound session
                raise StreamError(StreamErrorCondition.NOT_AUTHORIZED, "bind a resource first")
            return ClientState(tag == csi.ACTIVE)
        if self.username is None and tag.startswith("{" + ns.SASL + "}"):
            if self._sasl2 is not None:  # XEP-0388 §2.5: only SASL2 elements meanwhile
                raise StreamError(StreamErrorCondition.POLICY_VIOLATION, "SASL2 under way")
            return self._on_sasl(element, tag[len(ns.SASL) + 2 :])
        if self.username is None and self.config.sasl2 and tag.startswith("{" + ns.SASL2 + "}"):
            return self._on_sasl2(element, tag[len(ns.SASL2) + 2 :])
        if tag == f"{{{ns.TLS}}}starttls":
            return self._on_starttls()
        raise StreamError(StreamErrorCondition.UNSUPPORTED_STANZA_TYPE)

    def _on_header(self, header: StreamOpened) -> Event | None:
        peer_from = header.attrs.get("from")
        try:
            peer = parse_jid(peer_from) if peer_from else None
        except JIDError:
            peer = None
        host = self._host(header.attrs.get("to"))
        if host is not None and not self._header_sent:
            self.config = host  # our header names the domain the client asked for
        self._ensure_header(str(peer) if peer else None)
        if header.stream_ns != ns.STREAM or header.local_name != "stream":
            raise StreamError(StreamErrorCondition.INVALID_NAMESPACE)
        if header.default_ns != ns.CLIENT:
            raise StreamError(StreamErrorCondition.INVALID_NAMESPACE)
        version = header.attrs.get("version", "")
        major = version.partition(".")[0]
        if not major.isdigit() or int(major) < 1:
            raise StreamError(StreamErrorCondition.UNSUPPORTED_VERSION, "version 1.0 required")
        to = header.attrs.get("to")
        if to is None:
            raise StreamError(StreamErrorCondition.HOST_UNKNOWN, "the header has no 'to'")
        if host is None:  # not a domain, or not one served here (RFC 6120 §4.9.3.6)
            raise StreamError(StreamErrorCondition.HOST_UNKNOWN)
        self.config = host
        if self.tls and self.username is None and host.placement is not None:
            target = host.placement()
            if target:  # RFC 6120 §4.9.3.19: the client reconnects there, same 'to'
                raise StreamError(StreamErrorCondition.SEE_OTHER_HOST, content=target)
        self.state = State.OPEN
        self._out.append(self._features())
        return None

    def _host(self, to: str | None) -> StreamConfig | None:
        """The configuration of the domain ``to`` names, or None: not served (or, once
        authenticated, not the domain the stream authenticated in, RFC 6120 §4.3.3)."""
        if to is None:
            return None
        try:
            domain = str(parse_jid(to))
        except JIDError:
            return None
        config = self.config
        if config.hosts is None or (self.username is not None and domain != config.domain):
            return config if domain == config.domain else None
        return config.hosts(domain, config)

    def _features(self) -> bytes:
        types = self._binding.types if self._binding is not None else ()
        return _features(self.config, self.tls, 1 if self.username is not None else 0, types)

    def _offered(self) -> tuple[str, ...]:
        """The SASL mechanisms offered on this connection (-PLUS ones with a binding)."""
        return offered_mechanisms(self.config.mechanisms, self._binding)

    # ---- stream management (XEP-0198) ------------------------------------------------------

    def _on_sm(self, element: etree._Element, tag: str) -> Event | None:
        queue = self.sm
        if tag == sm.ACK:
            if queue is None:
                return None  # nothing was counted: nothing to acknowledge
            return Acked(queue.ack(sm.parse_h(element)))  # too high: a stream error (§4)
        if tag == sm.REQUEST:
            if queue is not None:
                if self.config.sm_deferred_acks:
                    return AckRequested(queue.handled)
                self._out.append(sm.answer(queue.handled))
            return None
        if tag == sm.ENABLE:
            return self._on_enable(element)
        if tag == sm.RESUME:
            return self._on_resume(element)
        raise StreamError(StreamErrorCondition.UNSUPPORTED_STANZA_TYPE)

    def _on_enable(self, element: etree._Element) -> Event | None:
        """§3: after binding, once; with resume='true' the session outlives its stream."""
        if self.sm is not None:  # §3: twice
            self._out.append(sm.failed("unexpected-request", self.sm.handled))
            return None
        if self.jid is None:  # §3: before resource binding
            self._out.append(sm.failed("unexpected-request"))
            return None
        xml, event = self._enable_sm(element.get("resume") in ("true", "1"),
                                     element.get("max", ""))
        self._out.append(xml)
        return event

    def _enable_sm(self, resume: bool, asked: str) -> tuple[bytes, SMEnabled]:
        """§3: SM on for this bound stream; its <enabled/> and the event."""
        config = self.config
        max_s = 0
        if resume and config.sm_resume_s > 0:
            # §5: 'max' is the client's preferred maximum; the server's may be lower
            max_s = min(int(asked), config.sm_resume_max_s) if asked.isdigit() else 0
            max_s = max_s or config.sm_resume_s
        sm_id = secrets.token_urlsafe(_SM_ID_BYTES) if max_s else ""
        self.sm = sm.Queue(sm_id, max_s)
        xml = sm.enabled_resumable(sm_id, max_s, config.sm_location) if sm_id else sm.enabled()
        return xml, SMEnabled(sm_id, max_s)

    def _on_resume(self, element: etree._Element) -> Event | None:
        """§5: after authentication, instead of binding."""
        if self.username is None or self.jid is not None or self.sm is not None:
            self._out.append(sm.failed("unexpected-request"))
            return None
        if self.config.sm_resume_s <= 0:
            self._out.append(sm.failed("feature-not-implemented"))
            return None
        previd = element.get("previd") or ""
        if not previd:
            self._out.append(sm.failed("bad-request"))
            return None
        self._resume = ResumeRequested(previd, sm.parse_h(element))
        return self._wait(self._resume)

    def _sasl_allowed(self) -> bool:
        return _sasl_allowed(self.config, self.tls)

    # ---- STARTTLS (RFC 6120 §5) ------------------------------------------------------------

    def _on_starttls(self) -> Event:
        if self.tls or not self.config.tls_available or self.username is not None:
            return self._refuse_starttls()
        self._out.append(f'<proceed xmlns="{ns.TLS}"/>'.encode())
        self._pending.clear()  # nothing sent in the clear after <starttls/> is ever processed
        return self._wait(StartTLS())

    # ---- SASL (RFC 6120 §6) ----------------------------------------------------------------

    def _on_sasl(self, element: etree._Element, name: str) -> Event | None:
        if name == "auth":
            if not self._sasl_allowed():
                return self._sasl_failure("encryption-required", element.get("mechanism", ""))
            mechanism = element.get("mechanism", "")
            self._mechanism = mechanism
            self._auth_user = None
            offered = self._offered()
            if mechanism not in offered:
                return self._sasl_failure("invalid-mechanism", mechanism)
            try:
                initial = _b64(element.text)
            except ValueError:
                return self._sasl_failure("incorrect-encoding", mechanism)
            try:
                if self.config.auth_backend != "internal":
                    self._auth = DelegatedAuthenticator(mechanism, domain=self.config.domain)
                else:
                    self._auth = Authenticator(mechanism, domain=self.config.domain,
                                               channel_binding=self._binding, offered=offered)
            except SASLFailure as exc:
                return self._sasl_failure(exc.condition.value, mechanism)
            return self._sasl_step(lambda auth: auth.start(initial))
        if self._auth is None:
            raise StreamError(StreamErrorCondition.POLICY_VIOLATION, "no SASL exchange")
        return self._sasl_continue(element, name)

    def _sasl_step(self, step: object) -> Event | None:
        assert self._auth is not None
        try:
            result = step(self._auth)  # type: ignore[operator]
        except SASLFailure as exc:
            return self._sasl_failure(exc.condition.value, self._mechanism)
        if isinstance(result, NeedCredentials):
            self._auth_user = result.username
            return self._wait(CredentialsNeeded(result.username))
        if isinstance(result, fast.NeedTokens):
            self._auth_user = result.username
            assert self._sasl2 is not None
            return self._wait(TokensNeeded(result.username, self._mechanism,
                                           self._sasl2.request.user_agent_id))
        if isinstance(result, NeedVerification):
            self._auth_user = result.username
            return self._wait(VerificationNeeded(self._mechanism, result.username, result.secret))
        sasl_ns = ns.SASL2 if self._sasl2 is not None else ns.SASL
        if isinstance(result, Challenge):
            data = base64.b64encode(result.data).decode()
            self._out.append(f'<challenge xmlns="{sasl_ns}">{data}</challenge>'.encode())
            return None
        assert isinstance(result, Success)
        self.username = result.username
        self._auth = None
        self._binding = None  # needed no more: logins are over on this stream
        pending = self._sasl2
        if pending is not None:  # XEP-0388 §2.6.1: no restart; the answer waits for the bind
            pending.data = result.data
            self._parser.limits = _post_auth_limits(self.config.max_stanza_bytes)
            request = pending.request
            resource = None
            if request.bind is not None:
                resource = _bind2_resource(result.username, request.bind.tag,
                                           request.user_agent_id)
            token = result.detail if isinstance(result.detail, fast.StoredToken) else None
            return self._wait(AuthSucceeded(result.username, self._mechanism, request,
                                            resource, token))
        data = base64.b64encode(result.data).decode() if result.data else ""
        self._out.append(f'<success xmlns="{ns.SASL}">{data}</success>'.encode())
        self._restart()
        return AuthSucceeded(result.username, self._mechanism)

    def _on_sasl2(self, element: etree._Element, name: str) -> Event | None:
        """XEP-0388 §2.3-2.6: <authenticate/>, <response/>, <abort/>."""
        if name == "authenticate":
            if self._sasl2 is not None or self._auth is not None:
                raise StreamError(StreamErrorCondition.POLICY_VIOLATION, "SASL2 under way")
            mechanism = element.get("mechanism", "")
            self._mechanism = mechanism
            self._auth_user = None
            try:
                request = _sasl2_request(element, self.config)
            except ValueError as exc:
                self._sasl2 = _Sasl2(_NO_REQUEST)
                return self._sasl_failure("malformed-request", mechanism, str(exc))
            self._sasl2 = _Sasl2(request)
            if not self._sasl_allowed():
                return self._sasl_failure("encryption-required", mechanism)
            fast_offered = fast.offered(self._binding) if self.config.fast else ()
            try:
                initial = _b64(element.findtext(f"{{{ns.SASL2}}}initial-response"), sasl2=True)
            except ValueError:
                return self._sasl_failure("incorrect-encoding", mechanism)
            try:
                if mechanism in fast_offered:
                    if not request.user_agent_id:  # XEP-0484 §6.1
                        return self._sasl_failure("malformed-request", mechanism,
                                                  "a FAST login needs <user-agent id/>")
                    self._auth = fast.TokenAuthenticator(  # type: ignore[assignment]
                        mechanism, domain=self.config.domain, channel_binding=self._binding)
                elif mechanism in self._offered():
                    self._auth = Authenticator(mechanism, domain=self.config.domain,
                                               channel_binding=self._binding,
                                               offered=self._offered())
                else:
                    return self._sasl_failure("invalid-mechanism", mechanism)
            except SASLFailure as exc:
                return self._sasl_failure(exc.condition.value, mechanism)
            return self._sasl_step(lambda auth: auth.start(initial))
        if self._auth is None or self._sasl2 is None:
            raise StreamError(StreamErrorCondition.POLICY_VIOLATION, "no SASL2 exchange")
        return self._sasl_continue(element, name)

    def _sasl_continue(self, element: etree._Element, name: str) -> Event | None:
        """<abort/> or <response/> of an exchange under way (RFC 6120 §6.4.5, §6.4.2;
        XEP-0388 §2.6 uses the same two elements)."""
        if name == "abort":
            return self._sasl_failure("aborted", self._mechanism)
        if name == "response":
            try:
                data = _b64(element.text) or b""
            except ValueError:
                return self._sasl_failure("incorrect-encoding", self._mechanism)
            return self._sasl_step(lambda auth: auth.respond(data))
        raise StreamError(StreamErrorCondition.UNSUPPORTED_STANZA_TYPE)

    def _sasl_failure(self, condition: str, mechanism: str, text: str | None = None) -> Event:
        self._auth = None
        if self._sasl2 is not None:
            # XEP-0388 §2.6.2: the RFC 6120 condition inside a SASL2 <failure/>
            self._sasl2 = None
            body = f'<{condition} xmlns="{ns.SASL}"/>'
            if text:
                body += f"<text>{escape(text)}</text>"
            self._out.append(f'<failure xmlns="{ns.SASL2}">{body}</failure>'.encode())
            return self._count_failure(mechanism, condition)
        body = f"<{condition}/>"
        if text:
            body += f'<text xml:lang="en">{escape(text)}</text>'
        self._out.append(f'<failure xmlns="{ns.SASL}">{body}</failure>'.encode())
        return self._count_failure(mechanism, condition)

    def _count_failure(self, mechanism: str, condition: str) -> Event:
        self._auth_attempts += 1
        if self._auth_attempts >= MAX_AUTH_ATTEMPTS:
            self._ready.append(
                self._fail(StreamError(StreamErrorCondition.POLICY_VIOLATION, "too many attempts"))
            )
        return AuthFailed(mechanism, condition, self._auth_user)

    # ---- stanzas (RFC 6120 §7, §8) ----------------------------------------------------------

    def _on_stanza(self, element: etree._Element, kind: str) -> Event | None:
        if kind not in STANZA_KINDS:
            raise StreamError(StreamErrorCondition.UNSUPPORTED_STANZA_TYPE)
        if self.username is None:
            if kind == "iq" and self._registration_iq(element):
                return self._on_register(element)
            if kind == "iq" and self._delegated_registration_iq(element):
                # XEP-0077 §3.1: a host without in-band registration answers
                # <service-unavailable/>; the platform's identity system makes the accounts
                self._out.append(_iq_error(element.get("id") or "", StanzaError(
                    StanzaErrorCondition.SERVICE_UNAVAILABLE,
                    f"accounts of {self.config.domain} are made by its identity provider")))
                return None
            raise StreamError(StreamErrorCondition.NOT_AUTHORIZED)
        if self.jid is None:
            if kind == "iq" and element.find(f"{{{ns.BIND}}}bind") is not None:
                return self._on_bind(element)
            raise StreamError(StreamErrorCondition.NOT_AUTHORIZED, "bind a resource first")
        if self.sm is not None:
            self.sm.handled += 1  # XEP-0198 §4: every stanza, bounced ones too
        return self._on_session_stanza(element, kind)

    def _on_session_stanza(self, element: etree._Element, kind: str) -> Event | None:
        jid = self.jid
        assert jid is not None
        claimed = element.get("from")
        full = str(jid)
        if claimed is not None and claimed != full and claimed != jid.bare_str:
            # RFC 6120 §8.1.2.1 (4): a 'from' that is not the session's own JID.
            raise StreamError(StreamErrorCondition.INVALID_FROM)
        element.set("from", full)
        type_ = element.get("type") or ""
        stanza_id = element.get("id") or ""
        if kind == "iq":
            if type_ not in IQ_TYPES or not stanza_id:
                return self._bounce_now(element, StanzaErrorCondition.BAD_REQUEST)
            if type_ in ("get", "set") and len(element) != 1:
                return self._bounce_now(element, StanzaErrorCondition.BAD_REQUEST)
            if type_ == "set" and element.find(f"{{{ns.SESSION}}}session") is not None:
                # RFC 3921 §3 legacy session establishment: a no-op we still answer.
                self._stanza_out(iq_result(stanza_id, None, None))
                return None
            if type_ == "set" and element.find(f"{{{ns.BIND}}}bind") is not None:
                return self._bounce_now(element, StanzaErrorCondition.NOT_ALLOWED)
        to_attr = element.get("to")
        to: JID | None = None
        if to_attr is not None:
            try:
                to = parse_jid(to_attr)
            except JIDError:
                return self._bounce_now(element, StanzaErrorCondition.JID_MALFORMED)
            element.set("to", str(to))
        return StanzaIn(kind, type_, stanza_id, to, element, serialize(element))

    def _bounce_now(self, element: etree._Element, condition: StanzaErrorCondition) -> None:
        self.stanza_error(element, StanzaError(condition))
        return None

    def _bounce(self, element: etree._Element, error: StanzaError) -> bytes:
        return error_reply(
            element,
            error,
            to=str(self.jid) if self.jid else None,
            from_=element.get("to") or (self.jid.bare_str if self.jid else None),
        )

    def _on_bind(self, element: etree._Element) -> Event | None:
        """RFC 6120 §7.6: the client asks for a resource, or lets the server choose one."""
        stanza_id = element.get("id") or ""
        if element.get("type") != "set" or not stanza_id:
            return self._bounce_now(element, StanzaErrorCondition.BAD_REQUEST)
        self._bind_iq = stanza_id
        bind = element.find(f"{{{ns.BIND}}}bind")
        assert bind is not None
        res_el = bind.find(f"{{{ns.BIND}}}resource")
        requested = (res_el.text or "").strip() if res_el is not None else ""
        if not requested:
            return self._wait(BindRequested(None))
        try:
            resource = JID(None, self.config.domain, None).with_resource(requested).resource
        except JIDError:
            # RFC 6120 §7.7.2.1: a resourcepart the server cannot process.
            self._out.append(_iq_error(stanza_id, StanzaError(StanzaErrorCondition.BAD_REQUEST)))
            return None
        return self._wait(BindRequested(resource))

    # ---- in-band registration (XEP-0077 §3) ------------------------------------------------

    def _registration_iq(self, element: etree._Element) -> bool:
        return (
            self.config.registration
            and self._sasl_allowed()
            and element.find(f"{{{ns.REGISTER}}}query") is not None
        )

    def _delegated_registration_iq(self, element: etree._Element) -> bool:
        """A registration request on a domain whose accounts are the platform's (a token or
        HTTP backend): refused, without ending the stream (the client logs in next)."""
        return (
            self.config.auth_backend != "internal"
            and self._sasl_allowed()
            and element.get("type") in ("get", "set")
            and element.find(f"{{{ns.REGISTER}}}query") is not None
        )

    def _on_register(self, element: etree._Element) -> Event | None:
        stanza_id = element.get("id") or ""
        query = element.find(f"{{{ns.REGISTER}}}query")
        assert query is not None
        if element.get("type") == "get":
            form = (
                f'<query xmlns="{ns.REGISTER}"><instructions>Choose a username and password.'
                "</instructions><username/><password/></query>"
            )
            self._out.append(iq_result(stanza_id, None, None, form))
            return None
        if element.get("type") != "set" or not stanza_id:
            self._out.append(_iq_error(stanza_id, StanzaError(StanzaErrorCondition.BAD_REQUEST)))
            return None
        username = query.findtext(f"{{{ns.REGISTER}}}username") or ""
        password = query.findtext(f"{{{ns.REGISTER}}}password") or ""
        if query.find(f"{{{ns.REGISTER}}}remove") is not None:
            self._out.append(_iq_error(stanza_id, StanzaError(StanzaErrorCondition.NOT_ALLOWED)))
            return None
        if not username or not password:
            self._out.append(
                _iq_error(stanza_id, StanzaError(StanzaErrorCondition.NOT_ACCEPTABLE))
            )
            return None
        self._register_iq = stanza_id
        return self._wait(RegisterRequested(username, password))


def _iq_error(stanza_id: str, error: StanzaError) -> bytes:
    return f'<iq type="error" id={quoteattr(stanza_id)}>{error.to_xml()}</iq>'.encode()


def _b64(text: str | None, *, sasl2: bool = False) -> bytes | None:
    """RFC 6120 §6.4.2: no text means no initial response; '=' means an empty one.  SASL2
    (XEP-0388 §2.2): no element (None) means none, an empty one empty data."""
    if sasl2 and text is not None and not text.strip():
        return b""
    if text is None or text == "":
        return None
    text = text.strip()
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64") from None


class _Sasl2:
    """A SASL2 exchange under way: its request, and the success data until `sasl2_done`."""

    __slots__ = ("data", "request")

    def __init__(self, request: Sasl2Request) -> None:
        self.request = request
        self.data: bytes | None = None


_NO_REQUEST: Final = Sasl2Request("", "", None, None, False)
_MAX_USER_AGENT_ID: Final = 256
_MAX_TAG: Final = 64


def _sasl2_request(element: etree._Element, config: StreamConfig) -> Sasl2Request:
    """The extensions of an <authenticate/> (XEP-0388 §2.3, XEP-0386 §3.2, XEP-0484 §4.2,
    §4.4); ValueError for malformed ones."""
    agent = element.find(f"{{{ns.SASL2}}}user-agent")
    agent_id, user_agent = "", ""
    if agent is not None:
        agent_id = (agent.get("id") or "").strip()
        if len(agent_id) > _MAX_USER_AGENT_ID:
            raise ValueError("user-agent id too long")
        user_agent = " / ".join(
            t.strip() for t in (agent.findtext(f"{{{ns.SASL2}}}software"),
                                agent.findtext(f"{{{ns.SASL2}}}device")) if t and t.strip())
    bind: Bind2Request | None = None
    bind_el = element.find(f"{{{ns.BIND2}}}bind")
    if bind_el is not None:
        tag = (bind_el.findtext(f"{{{ns.BIND2}}}tag") or "").strip()[:_MAX_TAG]
        if tag:
            try:
                tag = JID(None, config.domain, None).with_resource(tag).resource or ""
            except JIDError:
                raise ValueError("bad bind tag") from None
        enable = bind_el.find(f"{{{ns.SM}}}enable")
        active = None
        if bind_el.find(csi.ACTIVE) is not None:
            active = True
        elif bind_el.find(csi.INACTIVE) is not None:
            active = False
        bind = Bind2Request(
            tag=tag,
            carbons=config.carbons and bind_el.find(f"{{{ns.CARBONS}}}enable") is not None,
            active=active,
            sm_enable=(enable.get("resume") in ("true", "1"), enable.get("max", ""))
            if enable is not None else None,
        )
    request_token = None
    asked = element.find(f"{{{ns.FAST}}}request-token")
    if asked is not None and config.fast:
        request_token = asked.get("mechanism") or ""
        if request_token not in fast.MECHANISMS:
            raise ValueError("unknown FAST mechanism")
    used = element.find(f"{{{ns.FAST}}}fast")
    invalidate = used is not None and used.get("invalidate") in ("true", "1")
    return Sasl2Request(agent_id, user_agent, bind, request_token, invalidate)


def _bind2_resource(username: str, tag: str, user_agent_id: str) -> str:
    """XEP-0386 §3.3: "tag/id"; the id is stable for the same account, client and tag (a
    hash, never the user-agent id itself), random without a user-agent id."""
    if user_agent_id:
        digest = hashlib.sha256(f"bind2\0{username}\0{user_agent_id}\0{tag}".encode()).digest()
        suffix = base64.b32encode(digest[:10]).decode().lower()
    else:
        suffix = secrets.token_hex(8)
    return f"{tag}/{suffix}" if tag else suffix


@functools.lru_cache(maxsize=64)
def _features(config: StreamConfig, tls: bool, stage: int, binding_types: tuple[str, ...]
              ) -> bytes:
    """<stream:features/> (RFC 6120 §4.3.2): a handful of variants per server, built once.
    `stage`: 0 before authentication, 1 authenticated, 2 bound (SASL2 with Bind2)."""
    parts = ["<stream:features>"]
    if stage:
        if stage == 1:
            parts.append(f'<bind xmlns="{ns.BIND}"/>')
            parts.append(f'<session xmlns="{ns.SESSION}"><optional/></session>')
        parts.append(f'<ver xmlns="{ns.ROSTER_VERSIONING}"/>')  # RFC 6121 §2.6.1
        parts.append(f'<sub xmlns="{ns.PRE_APPROVAL}"/>')  # RFC 6121 §3.4.1
        if config.stream_management:
            parts.append(sm.FEATURE.decode())  # XEP-0198 §2
        if config.client_state:
            parts.append(csi.FEATURE)  # XEP-0352 §3
    else:
        if config.tls_available and not tls:
            required = "<required/>" if config.tls_required else ""
            parts.append(f'<starttls xmlns="{ns.TLS}">{required}</starttls>')
        if _sasl_allowed(config, tls):
            offered = config.mechanisms if binding_types else tuple(
                m for m in config.mechanisms if not m.endswith("-PLUS"))
            mechs = "".join(f"<mechanism>{m}</mechanism>" for m in offered)
            parts.append(f'<mechanisms xmlns="{ns.SASL}">{mechs}</mechanisms>')
            parts.append(binding_feature(binding_types))  # XEP-0440
            if config.sasl2:
                parts.append(_sasl2_feature(config, offered, binding_types))
            if config.registration:
                parts.append(f'<register xmlns="{ns.REGISTER_FEATURE}"/>')
    parts.append("</stream:features>")
    return "".join(parts).encode()


def _sasl2_feature(config: StreamConfig, offered: tuple[str, ...],
                   binding_types: tuple[str, ...]) -> str:
    """XEP-0388 §2.1 <authentication/>, with Bind2 (XEP-0386 §3.1: what it enables inline)
    and FAST (XEP-0484 §4.1: its mechanisms) inline."""
    mechs = "".join(f"<mechanism>{m}</mechanism>" for m in offered)
    inline = [ns.CARBONS] if config.carbons else []
    if config.client_state:
        inline.append(ns.CSI)
    if config.stream_management:
        inline.append(ns.SM)
    features = "".join(f"<feature var={quoteattr(v)}/>" for v in inline)
    parts = [f'<inline><bind xmlns="{ns.BIND2}"><inline>{features}</inline></bind>']
    if config.fast:
        ht = tuple(m for m, kind in fast.MECHANISMS.items()
                   if kind is None or kind in binding_types)
        parts.append(f'<fast xmlns="{ns.FAST}">'
                     + "".join(f"<mechanism>{m}</mechanism>" for m in ht) + "</fast>")
    parts.append("</inline>")
    return f'<authentication xmlns="{ns.SASL2}">{mechs}{"".join(parts)}</authentication>'


def _sasl_allowed(config: StreamConfig, tls: bool) -> bool:
    """SASL only over TLS unless the configuration allows it in the clear (RFC 6120 §5.3.1)."""
    return tls or not config.tls_required


@functools.lru_cache(maxsize=16)
def _quoted(value: str) -> str:
    """quoteattr of the server's own domain, once."""
    return quoteattr(value)


@functools.lru_cache(maxsize=8)
def _post_auth_limits(max_stanza_bytes: int) -> ParserLimits:
    """One shared (frozen) limits object per size instead of one per connection."""
    return ParserLimits(max_stanza_bytes=max_stanza_bytes)
