"""The s2s stream state machines, bytes in and events out, no event loop
(RFC 6120 §4-§6, §8.1, §13.7; XEP-0220 Server Dialback; XEP-0185 keys; XEP-0178)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from shared.xmpp.content_ns import to_client, to_server
from shared.xmpp.dialback import check_key, dialback_key
from shared.xmpp.errors import StreamError, StreamErrorCondition
from shared.xmpp.parser import parse_fragment
from shared.xmpp.s2s import (
    AuthFailed,
    DialbackRequested,
    PeerAuthenticated,
    ReceivingStream,
    S2SConfig,
    SMEnabled,
    StanzaIn,
    StartTLS,
    StreamEnded,
    VerifyAnswered,
)
from shared.xmpp.s2s_out import (
    Acked,
    InitiatingStream,
    Ready,
    SMFailed,
    VerifyRequest,
    VerifyResult,
)

SECRET_A = b"secret of a"
SECRET_B = b"secret of b"
A = S2SConfig(domain="a.example", secret=SECRET_A)
B = S2SConfig(domain="b.example", secret=SECRET_B)
STREAM_NS = "http://etherx.jabber.org/streams"


def header(to: str = "b.example", from_: str = "a.example", default_ns: str = "jabber:server",
           extra: str = "") -> bytes:
    return (
        f"<?xml version='1.0'?><stream:stream to='{to}' from='{from_}' version='1.0' "
        f"xmlns='{default_ns}' xmlns:stream='{STREAM_NS}' "
        f"xmlns:db='jabber:server:dialback'{extra}>"
    ).encode()


def drain(stream: ReceivingStream | InitiatingStream, data: bytes = b"") -> list[object]:
    if data:
        stream.receive_data(data)
    out = []
    while (event := stream.next_event()) is not None:
        out.append(event)
    return out


class CertFor:
    """A peer certificate valid for the given domains (shared.tls.peer_cert.PeerCertificate)."""

    def __init__(self, *domains: str) -> None:
        self.domains = set(domains)

    def valid_for(self, domain: str) -> bool:
        return domain in self.domains


def after_tls(config: S2SConfig = B, cert: CertFor | None = None) -> ReceivingStream:
    stream = ReceivingStream(config)
    peer = "a.example" if config.domain == "b.example" else "b.example"
    drain(stream, header(to=config.domain, from_=peer))
    features = stream.data_to_send()
    assert b"<starttls" in features and b"<required/>" in features
    assert b"urn:xmpp:features:dialback" not in features  # not before TLS
    [tls] = drain(stream, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert isinstance(tls, StartTLS)
    assert b"<proceed" in stream.data_to_send()
    stream.tls_established(cert)
    assert drain(stream, header(to=config.domain, from_=peer)) == []
    return stream


def dialback_authenticated() -> ReceivingStream:
    stream = after_tls()
    features = stream.data_to_send()
    assert b'xmlns:db="jabber:server:dialback"' in features
    assert b"urn:xmpp:features:dialback" in features and b"EXTERNAL" not in features
    key = dialback_key(SECRET_A, "b.example", "a.example", stream.stream_id)
    [request] = drain(
        stream, f"<db:result from='a.example' to='b.example'>{key}</db:result>".encode()
    )
    assert request == DialbackRequested("a.example", "b.example", stream.stream_id, key)
    assert drain(stream) == []  # waiting for the authoritative server
    stream.dialback_result(True)
    assert drain(stream) == [PeerAuthenticated("a.example", "dialback")]
    assert stream.data_to_send() == (
        b"<db:result from=\"b.example\" to=\"a.example\" type='valid'/>"
    )
    return stream


# ---- XEP-0185 keys --------------------------------------------------------------------------


def test_xep0185_2_key_is_hmac_sha256_of_hashed_secret_over_domains_and_stream_id() -> None:
    secret = b"s3cr3tf0rd14lb4ck"
    key = dialback_key(secret, "example.net", "example.org", "D60000229F")
    expected = hmac.new(hashlib.sha256(secret).digest(),
                        b"example.net example.org D60000229F", hashlib.sha256).hexdigest()
    assert key == expected and len(key) == 64
    assert check_key(secret, "example.net", "example.org", "D60000229F", key)
    assert check_key(secret, "example.net", "example.org", "D60000229F", key.upper())
    assert not check_key(secret, "example.net", "example.org", "other", key)
    assert not check_key(secret, "example.org", "example.net", "D60000229F", key)
    assert not check_key(b"another secret", "example.net", "example.org", "D60000229F", key)


# ---- the receiving side ---------------------------------------------------------------------


def test_rfc6120_4_7_header_names_our_domain_and_declares_dialback() -> None:
    stream = ReceivingStream(B)
    assert drain(stream, header()) == []
    out = stream.data_to_send()
    assert b'xmlns="jabber:server"' in out and b'xmlns:db="jabber:server:dialback"' in out
    assert b'from="b.example" to="a.example"' in out
    assert f'id="{stream.stream_id}"'.encode() in out


def test_rfc6120_4_9_3_6_header_to_another_domain_is_host_unknown() -> None:
    stream = ReceivingStream(B)
    assert drain(stream, header(to="c.example")) == [
        StreamEnded(StreamErrorCondition.HOST_UNKNOWN)
    ]
    assert b"<host-unknown" in stream.data_to_send()


def test_rfc6120_4_8_3_client_namespace_on_s2s_is_invalid_namespace() -> None:
    stream = ReceivingStream(B)
    assert drain(stream, header(default_ns="jabber:client")) == [
        StreamEnded(StreamErrorCondition.INVALID_NAMESPACE)
    ]


def test_xep0220_2_1_2_dialback_before_tls_is_refused_when_tls_is_required() -> None:
    stream = ReceivingStream(B)
    drain(stream, header())
    [ended] = drain(stream, b"<db:result from='a.example' to='b.example'>k</db:result>")
    assert ended == StreamEnded(StreamErrorCondition.POLICY_VIOLATION)


def test_xep0220_2_1_2_result_to_a_domain_we_do_not_serve_is_host_unknown() -> None:
    stream = after_tls()
    [ended] = drain(stream, b"<db:result from='a.example' to='c.example'>k</db:result>")
    assert ended == StreamEnded(StreamErrorCondition.HOST_UNKNOWN)


def test_xep0220_2_1_3_valid_result_authenticates_and_stanzas_flow_as_jabber_client() -> None:
    stream = dialback_authenticated()
    [st] = drain(
        stream,
        b"<message from='juliet@a.example/balcony' to='romeo@b.example' type='chat' id='m1'>"
        b"<body>jabber:server is just text</body></message>",
    )
    assert isinstance(st, StanzaIn)
    assert (st.kind, st.type, st.id) == ("message", "chat", "m1")
    assert str(st.from_) == "juliet@a.example/balcony" and str(st.to) == "romeo@b.example"
    assert st.payload == (
        b'<message xmlns="jabber:client" from="juliet@a.example/balcony" to="romeo@b.example" '
        b'type="chat" id="m1"><body>jabber:server is just text</body></message>'
    )


def test_xep0220_2_1_3_invalid_result_ends_the_stream() -> None:
    stream = after_tls()
    stream.data_to_send()
    drain(stream, b"<db:result from='a.example' to='b.example'>bad</db:result>")
    stream.dialback_result(False)
    events = drain(stream)
    assert events == [AuthFailed("dialback", "invalid"),
                      StreamEnded(StreamErrorCondition.NOT_AUTHORIZED)]
    out = stream.data_to_send()
    assert b"type='invalid'" in out and b"<not-authorized" in out


def test_xep0220_2_4_unreachable_authoritative_server_is_an_error_result() -> None:
    stream = after_tls()
    stream.data_to_send()
    drain(stream, b"<db:result from='a.example' to='b.example'>k</db:result>")
    stream.dialback_result(None)
    assert drain(stream) == [AuthFailed("dialback", "remote-server-not-found")]
    assert b"type='error'" in stream.data_to_send()
    assert not stream.closed and not stream.authenticated


def test_rfc6120_8_1_2_1_stanza_from_an_unauthenticated_domain_is_invalid_from() -> None:
    stream = dialback_authenticated()
    [ended] = drain(stream, b"<message from='mallory@evil.example' to='romeo@b.example'/>")
    assert ended == StreamEnded(StreamErrorCondition.INVALID_FROM)
    assert b"<invalid-from" in stream.data_to_send()


def test_rfc6120_13_7_1_4_stanza_before_authentication_is_not_authorized() -> None:
    stream = after_tls()
    [ended] = drain(stream, b"<message from='juliet@a.example' to='romeo@b.example'/>")
    assert ended == StreamEnded(StreamErrorCondition.NOT_AUTHORIZED)


def test_rfc6120_4_9_3_6_stanza_to_a_domain_we_do_not_serve_is_host_unknown() -> None:
    stream = dialback_authenticated()
    [ended] = drain(stream, b"<message from='juliet@a.example' to='romeo@c.example'/>")
    assert ended == StreamEnded(StreamErrorCondition.HOST_UNKNOWN)


@pytest.mark.parametrize("stanza", [
    b"<message to='romeo@b.example'/>",
    b"<presence from='juliet@a.example'/>",
])
def test_rfc6120_8_1_1_s2s_stanza_without_to_or_from_is_improper_addressing(
    stanza: bytes,
) -> None:
    stream = dialback_authenticated()
    assert drain(stream, stanza) == [StreamEnded(StreamErrorCondition.IMPROPER_ADDRESSING)]


def test_xep0220_2_3_2_authoritative_server_answers_verify_from_its_secret() -> None:
    stream = after_tls(A)
    stream.data_to_send()
    key = dialback_key(SECRET_A, "b.example", "a.example", "S1")
    [answer] = drain(
        stream,
        f"<db:verify from='b.example' to='a.example' id='S1'>{key}</db:verify>".encode(),
    )
    assert answer == VerifyAnswered(True)
    assert stream.data_to_send() == (
        b"<db:verify from=\"a.example\" to=\"b.example\" id=\"S1\" type='valid'/>"
    )
    [answer] = drain(
        stream, f"<db:verify from='b.example' to='a.example' id='S2'>{key}</db:verify>".encode()
    )
    assert answer == VerifyAnswered(False)
    assert b"type='invalid'" in stream.data_to_send()


def test_rfc6120_13_12_stanza_size_limit_is_512_kib() -> None:
    stream = dialback_authenticated()
    big = b"x" * (512 * 1024 + 8192)
    events = drain(stream, b"<message from='j@a.example' to='r@b.example'><body>" + big)
    assert events == [StreamEnded(StreamErrorCondition.POLICY_VIOLATION)]
    stream = dialback_authenticated()
    fits = b"x" * (400 * 1024)
    [st] = drain(stream, b"<message from='j@a.example' to='r@b.example'><body>" + fits
                 + b"</body></message>")
    assert isinstance(st, StanzaIn)


def test_xep0178_3_external_offered_only_for_a_certificate_valid_for_the_peer() -> None:
    stream = after_tls(cert=CertFor("a.example"))
    assert b"<mechanism>EXTERNAL</mechanism>" in stream.data_to_send()
    token = base64.b64encode(b"a.example").decode()
    [ok] = drain(
        stream,
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{token}</auth>"
        .encode(),
    )
    assert ok == PeerAuthenticated("a.example", "EXTERNAL")
    assert b"<success" in stream.data_to_send()
    drain(stream, header())
    assert b"EXTERNAL" not in stream.data_to_send()
    [st] = drain(stream, b"<presence from='j@a.example/r' to='r@b.example'/>")
    assert isinstance(st, StanzaIn)


def test_xep0178_3_external_for_another_domain_fails() -> None:
    stream = after_tls(cert=CertFor("c.example"))
    assert b"EXTERNAL" not in stream.data_to_send()
    [failed] = drain(
        stream, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>"
    )
    assert failed == AuthFailed("EXTERNAL", "not-authorized")  # XEP-0178 §3.3
    assert b"<not-authorized/>" in stream.data_to_send()
    # the peer falls back to dialback on the same stream
    key = dialback_key(SECRET_A, "b.example", "a.example", stream.stream_id)
    [asked] = drain(stream, f"<db:result from='a.example' to='b.example'>{key}</db:result>"
                    .encode())
    assert isinstance(asked, DialbackRequested)


def test_xep0178_3_no_certificate_no_external_but_dialback() -> None:
    stream = after_tls(cert=None)
    features = stream.data_to_send()
    assert b"EXTERNAL" not in features and b"urn:xmpp:features:dialback" in features


def test_xep0368_direct_tls_stream_offers_external_without_starttls() -> None:
    stream = ReceivingStream(B, direct_tls=True)
    stream.direct_tls_established(CertFor("a.example"))
    drain(stream, header())
    features = stream.data_to_send()
    assert b"<starttls" not in features
    assert b"<mechanism>EXTERNAL</mechanism>" in features
    assert b"urn:xmpp:features:dialback" in features


# ---- both sides together --------------------------------------------------------------------


def pump(out: InitiatingStream, inn: ReceivingStream) -> tuple[list[object], list[object]]:
    """Move bytes both ways until neither side has anything to say; TLS is 'done' at once,
    dialback is answered by a third machine playing the authoritative server."""
    out_events: list[object] = []
    in_events: list[object] = []
    for _ in range(20):
        moved = False
        data = out.data_to_send()
        if data:
            moved = True
            inn.receive_data(data)
        for ev in drain(inn):
            in_events.append(ev)
            if isinstance(ev, StartTLS):
                inn.data_to_send() and out.receive_data(b"")
                out.receive_data(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                inn.tls_established()
            elif isinstance(ev, DialbackRequested):
                inn.dialback_result(authoritative_answer(ev))
        data = inn.data_to_send()
        if data:
            moved = True
            out.receive_data(data)
        for ev in drain(out):
            out_events.append(ev)
            if isinstance(ev, StartTLS):
                out.tls_established(cert_valid=False)
        if not moved:
            break
    return out_events, in_events


def authoritative_answer(request: DialbackRequested) -> bool | None:
    """What a.example's verify stream answers (XEP-0220 §2.3)."""
    asking = InitiatingStream(
        B, request.originating,
        verify=VerifyRequest(request.receiving, request.originating, request.stream_id,
                             request.key),
    )
    authoritative = ReceivingStream(
        S2SConfig("a.example", SECRET_A, tls_available=False, tls_required=False,
                  other_domains=frozenset({"conference.a.example"})))
    asking.config = S2SConfig("b.example", SECRET_B, tls_available=False, tls_required=False)
    asking.initiate()
    result: list[object] = []
    for _ in range(10):
        authoritative.receive_data(asking.data_to_send())
        drain(authoritative)
        asking.receive_data(authoritative.data_to_send())
        result += [e for e in drain(asking) if isinstance(e, VerifyResult)]
        if result:
            break
    [verdict] = result
    assert isinstance(verdict, VerifyResult)
    return verdict.valid


def test_xep0220_2_full_dialback_between_two_servers_then_stanzas_in_order() -> None:
    out = InitiatingStream(A, "b.example")
    inn = ReceivingStream(B)
    out.initiate()
    out_events, in_events = pump(out, inn)
    assert Ready("dialback", sm=True) in out_events  # XEP-0198 offered and requested
    assert PeerAuthenticated("a.example", "dialback") in in_events
    for i in range(3):
        out.send(f'<message xmlns="jabber:client" from="j@a.example/r" to="r@b.example" '
                 f'id="{i}"><body>{i}</body></message>'.encode())
    inn.receive_data(out.data_to_send())
    stanzas = drain(inn)
    assert [s.id for s in stanzas if isinstance(s, StanzaIn)] == ["0", "1", "2"]


def test_xep0220_2_3_wrong_secret_means_invalid_and_no_stanzas() -> None:
    out = InitiatingStream(S2SConfig("a.example", b"not the real secret"), "b.example")
    inn = ReceivingStream(B)
    out.initiate()
    out_events, in_events = pump(out, inn)
    assert AuthFailed("dialback", "invalid") in out_events
    assert not out.ready and out.closed
    assert AuthFailed("dialback", "invalid") in in_events


def test_rfc6120_4_8_3_content_namespace_is_rewritten_on_the_tree_not_the_text() -> None:
    payload = (
        b'<message xmlns="jabber:client" from="a@x/r" to="b@y"><body>xmlns="jabber:client"'
        b'</body><x xmlns="jabber:x:data"><field var="a"/></x></message>'
    )
    server = to_server(payload, 1 << 20)
    assert server.startswith(b'<message xmlns="jabber:server"')
    assert b'<body>xmlns="jabber:client"</body>' in server
    assert b'<x xmlns="jabber:x:data">' in server
    assert to_client(parse_fragment(server)) == payload


def test_xep0178_external_between_two_servers_then_stanzas() -> None:
    out = InitiatingStream(A, "b.example")
    inn = ReceivingStream(B)
    out.initiate()
    inn.receive_data(out.data_to_send())
    drain(inn)
    out.receive_data(inn.data_to_send())
    drain(out)  # features: STARTTLS
    inn.receive_data(out.data_to_send())
    [tls_in] = drain(inn)
    out.receive_data(inn.data_to_send())
    [tls_out] = drain(out)
    assert isinstance(tls_in, StartTLS) and isinstance(tls_out, StartTLS)
    inn.tls_established(CertFor("a.example"))  # a.example's certificate checked out
    out.tls_established(cert_valid=True)  # and so did b.example's
    events_in: list[object] = []
    events_out: list[object] = []
    for _ in range(6):
        inn.receive_data(out.data_to_send())
        events_in += drain(inn)
        out.receive_data(inn.data_to_send())
        events_out += drain(out)
    assert events_out == [Ready("EXTERNAL", sm=True)]
    assert events_in == [PeerAuthenticated("a.example", "EXTERNAL"), SMEnabled()]
    out.send(b'<presence xmlns="jabber:client" from="j@a.example/r" to="r@b.example"/>')
    inn.receive_data(out.data_to_send())
    [st] = drain(inn)
    assert isinstance(st, StanzaIn) and st.kind == "presence"


def test_rfc6120_8_1_2_1_we_never_send_a_stanza_not_from_our_domain() -> None:
    out = InitiatingStream(A, "b.example")
    inn = ReceivingStream(B)
    out.initiate()
    pump(out, inn)
    assert out.ready
    with pytest.raises(StreamError):
        out.send(b'<message xmlns="jabber:client" from="x@c.example" to="r@b.example"/>')
    with pytest.raises(StreamError):
        out.send(b'<message xmlns="jabber:client" from="j@a.example" to="r@c.example"/>')
    with pytest.raises(StreamError):
        out.send(b'<iq xmlns="jabber:client" type="result" id="1" to="r@b.example"/>')
    assert out.data_to_send() == b""


# ---- several domains of ours (RFC 6120 §13.7, XEP-0220 §2.4, XEP-0344 §2.4) ------------------

A_MANY = S2SConfig("a.example", SECRET_A, other_domains=frozenset({"conference.a.example"}))
B_MANY = S2SConfig("b.example", SECRET_B, other_domains=frozenset({"conference.b.example"}))


def test_rfc6120_4_7_2_header_to_any_domain_we_serve_is_answered_from_that_domain() -> None:
    stream = ReceivingStream(B_MANY)
    assert drain(stream, header(to="conference.b.example")) == []
    assert b'from="conference.b.example" to="a.example"' in stream.data_to_send()
    assert stream.local == "conference.b.example"
    stream = ReceivingStream(B_MANY)
    [ended] = drain(stream, header(to="chat.b.example"))
    assert ended == StreamEnded(StreamErrorCondition.HOST_UNKNOWN)


def test_xep0220_2_4_dialback_authenticates_one_pair_and_stanzas_need_their_pair() -> None:
    stream = after_tls(B_MANY)  # the header named b.example
    stream.data_to_send()
    key = dialback_key(SECRET_A, "conference.b.example", "a.example", stream.stream_id)
    [request] = drain(stream, f"<db:result from='a.example' to='conference.b.example'>"
                              f"{key}</db:result>".encode())
    assert request == DialbackRequested("a.example", "conference.b.example", stream.stream_id,
                                        key)
    stream.dialback_result(True)
    assert drain(stream) == [PeerAuthenticated("a.example", "dialback")]
    assert b'from="conference.b.example" to="a.example" type=\'valid\'' in (
        stream.data_to_send())
    [st] = drain(stream, b"<message from='j@a.example/r' to='room@conference.b.example/n'/>")
    assert isinstance(st, StanzaIn) and str(st.to) == "room@conference.b.example/n"
    # (b.example, a.example) was never authenticated on this stream
    [ended] = drain(stream, b"<message from='j@a.example/r' to='romeo@b.example'/>")
    assert ended == StreamEnded(StreamErrorCondition.HOST_UNKNOWN)


def test_xep0344_2_4_certificate_valid_for_the_originating_domain_needs_no_verification(
) -> None:
    stream = after_tls(B_MANY, CertFor("a.example"))
    stream.data_to_send()
    events = drain(stream, b"<db:result from='a.example' to='conference.b.example'>"
                           b"any</db:result>")
    assert events == [PeerAuthenticated("a.example", "dialback")]
    assert b"type='valid'" in stream.data_to_send()
    # a domain the certificate does not cover still goes to its authoritative server
    [request] = drain(stream, b"<db:result from='c.example' to='b.example'>k</db:result>")
    assert isinstance(request, DialbackRequested) and request.originating == "c.example"


def test_xep0220_2_3_2_we_answer_verify_for_each_of_our_domains() -> None:
    stream = after_tls(A_MANY)
    stream.data_to_send()
    key = dialback_key(SECRET_A, "b.example", "conference.a.example", "S1")
    [answer] = drain(stream, f"<db:verify from='b.example' to='conference.a.example' id='S1'>"
                             f"{key}</db:verify>".encode())
    assert answer == VerifyAnswered(True)
    # the same key is not valid for the main domain: keys are per pair (XEP-0185 §3)
    [answer] = drain(stream, f"<db:verify from='b.example' to='a.example' id='S1'>"
                             f"{key}</db:verify>".encode())
    assert answer == VerifyAnswered(False)


def test_rfc6120_13_7_stream_of_a_service_domain_by_dialback_carries_only_its_stanzas() -> None:
    first = InitiatingStream(A_MANY, "b.example", local="conference.a.example")
    first.initiate()
    assert b'from="conference.a.example" to="b.example"' in first.data_to_send()
    out = InitiatingStream(A_MANY, "b.example", local="conference.a.example")
    inn = ReceivingStream(B_MANY)
    out.initiate()
    out_events, in_events = pump(out, inn)
    assert Ready("dialback", sm=True) in out_events
    assert PeerAuthenticated("conference.a.example", "dialback") in in_events
    out.send(b'<message xmlns="jabber:client" from="room@conference.a.example/n" '
             b'to="r@b.example" type="groupchat"/>')
    inn.receive_data(out.data_to_send())
    [st] = drain(inn)
    assert isinstance(st, StanzaIn) and st.from_.domain == "conference.a.example"
    with pytest.raises(StreamError):  # the main domain has a stream of its own
        out.send(b'<message xmlns="jabber:client" from="j@a.example" to="r@b.example"/>')


def test_xep0178_external_as_a_service_domain() -> None:
    out = InitiatingStream(A_MANY, "b.example", local="conference.a.example",
                           direct_tls=True)
    inn = ReceivingStream(B_MANY, direct_tls=True)
    inn.direct_tls_established(CertFor("conference.a.example"))
    out.initiate(cert_valid=True)
    events_in: list[object] = []
    events_out: list[object] = []
    for _ in range(6):
        inn.receive_data(out.data_to_send())
        events_in += drain(inn)
        out.receive_data(inn.data_to_send())
        events_out += drain(out)
    assert events_out == [Ready("EXTERNAL", sm=True)]
    assert PeerAuthenticated("conference.a.example", "EXTERNAL") in events_in


# ---- XEP-0198 acks on s2s -------------------------------------------------------------------


def _message(i: int) -> bytes:
    return (f'<message xmlns="jabber:client" from="j@a.example/r" to="r@b.example" id="{i}">'
            f"<body>{i}</body></message>").encode()


def sm_pair(receiving: S2SConfig = B) -> tuple[InitiatingStream, ReceivingStream]:
    out = InitiatingStream(A, "b.example")
    inn = ReceivingStream(receiving)
    out.initiate()
    pump(out, inn)
    assert out.ready
    return out, inn


def test_xep0198_4_stanzas_are_counted_from_enable_and_acked_by_h() -> None:
    out, inn = sm_pair()
    assert out.sm is not None and inn.sm_handled == 0  # <enable/> went with the last result
    for i in range(3):
        out.send(_message(i))
    out.request_ack()
    assert out.sm.unacked == 3
    inn.receive_data(out.data_to_send())
    assert [e.id for e in drain(inn) if isinstance(e, StanzaIn)] == ["0", "1", "2"]
    answer = inn.data_to_send()
    assert answer == b'<a xmlns="urn:xmpp:sm:3" h="3"/>'
    out.send(_message(3))  # written after the <r/>: still unacked after the answer
    out.receive_data(answer)
    assert drain(out) == [Acked(3)]
    assert out.sm.unacked == 1


def test_xep0198_4_dropped_stanzas_count_as_handled() -> None:
    """An IQ without an id is dropped by rule (RFC 6120 §8.2.3), but it was handled."""
    out, inn = sm_pair()
    out.send(b'<iq xmlns="jabber:client" type="get" from="j@a.example/r" to="r@b.example"/>')
    out.send(_message(1))
    out.request_ack()
    inn.receive_data(out.data_to_send())
    assert [type(e) for e in drain(inn)] == [StanzaIn]
    assert inn.data_to_send() == b'<a xmlns="urn:xmpp:sm:3" h="2"/>'


def test_xep0198_4_h_beyond_what_was_sent_is_a_stream_error() -> None:
    out, _ = sm_pair()
    out.send(_message(0))
    out.receive_data(b"<a xmlns='urn:xmpp:sm:3' h='2'/>")
    [ended] = drain(out)
    assert ended == StreamEnded(StreamErrorCondition.UNDEFINED_CONDITION)
    assert b"handled-count-too-high" in out.data_to_send()


def test_xep0198_4_a_stale_h_acks_nothing() -> None:
    out, _ = sm_pair()
    out.send(_message(0))
    out.send(_message(1))
    out.receive_data(b"<a xmlns='urn:xmpp:sm:3' h='2'/><a xmlns='urn:xmpp:sm:3' h='1'/>")
    assert drain(out) == [Acked(2), Acked(0)]
    assert out.sm is not None and out.sm.unacked == 0


def test_xep0198_3_refused_enable_means_no_acks() -> None:
    out, _ = sm_pair()
    out.receive_data(b"<failed xmlns='urn:xmpp:sm:3'><unexpected-request "
                     b"xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>")
    assert drain(out) == [SMFailed()]
    assert out.sm is None
    out.request_ack()
    assert out.data_to_send() == b""


def test_xep0198_2_not_offered_not_requested() -> None:
    off = S2SConfig(domain="b.example", secret=SECRET_B, stream_management=False)
    out = InitiatingStream(A, "b.example")
    inn = ReceivingStream(off)
    out.initiate()
    out_events, _ = pump(out, inn)
    assert Ready("dialback", sm=False) in out_events
    assert out.sm is None and inn.sm_handled is None


def test_xep0198_3_enable_before_authentication_fails_and_r_without_sm_is_ignored() -> None:
    stream = after_tls()
    features = stream.data_to_send()
    assert b'<sm xmlns="urn:xmpp:sm:3"/>' in features  # offered with the auth features
    assert drain(stream, b"<enable xmlns='urn:xmpp:sm:3'/><r xmlns='urn:xmpp:sm:3'/>") == []
    assert stream.data_to_send() == (
        b'<failed xmlns="urn:xmpp:sm:3"><unexpected-request '
        b'xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></failed>'
    )


def test_xep0198_3_enabled_once_per_stream() -> None:
    stream = dialback_authenticated()
    assert drain(stream, b"<enable xmlns='urn:xmpp:sm:3'/>") == [SMEnabled()]
    assert stream.data_to_send() == b'<enabled xmlns="urn:xmpp:sm:3"/>'
    assert drain(stream, b"<enable xmlns='urn:xmpp:sm:3'/>") == []
    assert b"<failed" in stream.data_to_send()
