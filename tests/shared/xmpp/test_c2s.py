"""The c2s stream state machine, bytes in and events out, no event loop (RFC 6120)."""

from __future__ import annotations

import base64
from unittest import mock

import pytest
from scramp import ScramClient

from shared.xmpp.c2s import (
    AuthFailed,
    AuthSucceeded,
    BindRequested,
    C2SStream,
    CredentialsNeeded,
    Event,
    RegisterRequested,
    StanzaIn,
    StartTLS,
    StreamConfig,
    StreamEnded,
)
from shared.xmpp.credentials import derive_credentials
from shared.xmpp.errors import StanzaError, StanzaErrorCondition, StreamErrorCondition
from shared.xmpp.jid import JID
from shared.xmpp.parser import StreamParser

HEADER = (
    b"<?xml version='1.0'?><stream:stream to='example.com' version='1.0' "
    b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)
CREDS = derive_credentials("pencil", 4096)
CONFIG = StreamConfig(domain="example.com")


def events(stream: C2SStream, data: bytes = b"") -> list[Event]:
    if data:
        stream.receive_data(data)
    out = []
    while (event := stream.next_event()) is not None:
        out.append(event)
    return out


def plain(user: str, password: str, authzid: str = "") -> bytes:
    token = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
    sasl = "urn:ietf:params:xml:ns:xmpp-sasl"
    return f"<auth xmlns='{sasl}' mechanism='PLAIN'>{token}</auth>".encode()


def after_tls(config: StreamConfig = CONFIG) -> C2SStream:
    stream = C2SStream(config)
    events(stream, HEADER)
    [tls] = events(stream, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert isinstance(tls, StartTLS)
    stream.data_to_send()
    stream.tls_established()
    events(stream, HEADER)
    stream.data_to_send()
    return stream


def authenticated(user: str = "juliet", config: StreamConfig = CONFIG) -> C2SStream:
    stream = after_tls(config)
    [need] = events(stream, plain(user, "pencil"))
    assert need == CredentialsNeeded(user)
    stream.credentials_loaded(CREDS)
    [ok] = events(stream)
    assert ok == AuthSucceeded(user, "PLAIN")
    assert b"<success" in stream.data_to_send()
    events(stream, HEADER)
    stream.data_to_send()
    return stream


def bound(
    user: str = "juliet", resource: str = "balcony", config: StreamConfig = CONFIG
) -> C2SStream:
    stream = authenticated(user, config)
    [bind] = events(
        stream,
        b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        + f"<resource>{resource}</resource></bind></iq>".encode(),
    )
    assert bind == BindRequested(resource)
    stream.bind_succeeded(JID(user, "example.com", resource))
    assert f"<jid>{user}@example.com/{resource}</jid>".encode() in stream.data_to_send()
    return stream


def test_rfc6120_4_3_2_header_answered_with_header_and_starttls_required() -> None:
    stream = C2SStream(CONFIG)
    assert events(stream, HEADER) == []
    out = stream.data_to_send()
    assert out.startswith(b"<?xml version='1.0'?><stream:stream ")
    assert b'from="example.com"' in out and b'version="1.0"' in out
    assert b"<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"><required/></starttls>" in out
    assert b"<mechanisms" not in out  # no SASL before TLS when TLS is required


@pytest.mark.parametrize(
    ("header", "condition"),
    [
        (HEADER.replace(b"example.com", b"other.example"), "host-unknown"),
        (HEADER.replace(b" to='example.com'", b""), "host-unknown"),
        (HEADER.replace(b"xmlns='jabber:client'", b"xmlns='jabber:server'"), "invalid-namespace"),
        (HEADER.replace(b"http://etherx.jabber.org/streams", b"urn:wrong"), "invalid-namespace"),
        (
            HEADER.replace(b"to='example.com' version='1.0'", b"to='example.com'"),
            "unsupported-version",
        ),
    ],
)
def test_rfc6120_4_9_3_bad_headers_get_stream_errors(header: bytes, condition: str) -> None:
    stream = C2SStream(CONFIG)
    [ended] = events(stream, header)
    assert isinstance(ended, StreamEnded)
    assert ended.error is not None and ended.error.value == condition
    out = stream.data_to_send()
    assert out.startswith(b"<?xml")  # §4.9.1.3: our header precedes the error
    assert f"<{condition} xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\"/>".encode() in out
    assert out.endswith(b"</stream:stream>")
    assert stream.closed


def test_rfc6120_5_4_2_3_bytes_pipelined_after_starttls_are_discarded() -> None:
    stream = C2SStream(CONFIG)
    events(stream, HEADER)
    injected = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" + plain("juliet", "x")
    [tls] = events(stream, injected)
    assert tls == StartTLS()
    assert b"<proceed" in stream.data_to_send()
    stream.tls_established()
    assert events(stream) == []  # the <auth/> sent in the clear is gone


def test_rfc6120_5_4_2_2_starttls_twice_fails_and_closes() -> None:
    stream = after_tls()
    [ended] = events(stream, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert isinstance(ended, StreamEnded)
    assert b"<failure xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"/>" in stream.data_to_send()


def test_rfc6120_6_4_sasl_before_tls_is_encryption_required() -> None:
    stream = C2SStream(CONFIG)
    events(stream, HEADER)
    [failed] = events(stream, plain("juliet", "pencil"))
    assert failed == AuthFailed("PLAIN", "encryption-required")
    assert b"<encryption-required/>" in stream.data_to_send()


def test_rfc6120_6_4_features_after_tls_list_mechanisms() -> None:
    stream = C2SStream(CONFIG)
    events(stream, HEADER)
    events(stream, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    stream.tls_established()
    stream.data_to_send()
    events(stream, HEADER)
    out = stream.data_to_send()
    assert b"<mechanism>SCRAM-SHA-256</mechanism>" in out
    assert b"<mechanism>PLAIN</mechanism>" in out
    assert b"starttls" not in out


def test_rfc6120_6_5_10_wrong_password_then_too_many_attempts() -> None:
    stream = after_tls()
    for attempt in range(3):
        evs = events(stream, plain("juliet", "wrong"))
        assert evs[0] == CredentialsNeeded("juliet")
        stream.credentials_loaded(CREDS)
        evs = events(stream)
        assert evs[0] == AuthFailed("PLAIN", "not-authorized", "juliet")
        assert b"<not-authorized/>" in stream.data_to_send() or attempt == 2
    assert isinstance(evs[-1], StreamEnded)
    assert stream.closed


def test_xep0205_refused_attempt_is_temporary_auth_failure_and_counts() -> None:
    stream = after_tls()
    evs = events(stream, plain("juliet", "secret"))
    assert evs[0] == CredentialsNeeded("juliet")
    stream.credentials_refused("too many failed attempts")
    evs = events(stream)
    assert evs == [AuthFailed("PLAIN", "temporary-auth-failure", "juliet")]
    assert stream.data_to_send() == (
        b'<failure xmlns="urn:ietf:params:xml:ns:xmpp-sasl"><temporary-auth-failure/>'
        b'<text xml:lang="en">too many failed attempts</text></failure>'
    )
    assert stream.username is None and not stream.closed


def test_rfc6120_6_4_6_plain_with_forged_authzid_is_invalid_authzid() -> None:
    stream = after_tls()
    evs = events(stream, plain("juliet", "pencil", authzid="romeo@example.com"))
    if evs and isinstance(evs[0], CredentialsNeeded):
        stream.credentials_loaded(CREDS)
        evs = events(stream)
    assert evs[0] == AuthFailed("PLAIN", "invalid-authzid")
    assert stream.username is None


def test_rfc7677_scram_sha_256_exchange_authenticates() -> None:
    stream = after_tls()
    client = ScramClient(["SCRAM-SHA-256"], "juliet", "pencil")
    first = base64.b64encode(client.get_client_first().encode()).decode()
    [need] = events(
        stream,
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{first}</auth>"
        .encode(),
    )
    assert need == CredentialsNeeded("juliet")
    stream.credentials_loaded(CREDS)
    assert events(stream) == []
    out = stream.data_to_send().decode()
    challenge = out.partition(">")[2].partition("<")[0]
    client.set_server_first(base64.b64decode(challenge).decode())
    final = base64.b64encode(client.get_client_final().encode()).decode()
    [ok] = events(
        stream, f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{final}</response>".encode()
    )
    assert ok == AuthSucceeded("juliet", "SCRAM-SHA-256")
    success = stream.data_to_send().decode()
    client.set_server_final(base64.b64decode(success.partition(">")[2].partition("<")[0]).decode())


def test_rfc6120_7_features_after_auth_offer_bind() -> None:
    stream = after_tls()
    events(stream, plain("juliet", "pencil"))
    stream.credentials_loaded(CREDS)
    events(stream)
    stream.data_to_send()
    events(stream, HEADER)
    out = stream.data_to_send()
    assert b'<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/>' in out
    assert b"<mechanisms" not in out


def test_rfc6120_7_6_server_generated_resource() -> None:
    stream = authenticated()
    [bind] = events(
        stream,
        b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
    )
    assert bind == BindRequested(None)


def test_rfc6120_7_7_bind_failure_is_an_iq_error() -> None:
    stream = authenticated()
    events(
        stream,
        b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        b"<resource>r</resource></bind></iq>",
    )
    stream.bind_failed(StanzaError(StanzaErrorCondition.RESOURCE_CONSTRAINT))
    out = stream.data_to_send()
    assert b'type="error"' in out and b"<resource-constraint" in out
    assert not stream.bound


def test_rfc6120_6_4_stanza_before_auth_is_not_authorized() -> None:
    stream = after_tls()
    [ended] = events(stream, b"<message to='romeo@example.com'><body>hi</body></message>")
    assert ended == StreamEnded(StreamErrorCondition.NOT_AUTHORIZED)


def test_rfc6120_7_1_stanza_before_bind_is_not_authorized() -> None:
    stream = authenticated()
    [ended] = events(stream, b"<message to='romeo@example.com'><body>hi</body></message>")
    assert ended == StreamEnded(StreamErrorCondition.NOT_AUTHORIZED)


def test_rfc6120_8_1_2_1_from_is_stamped_with_the_full_jid() -> None:
    stream = bound()
    [st] = events(stream, b"<message to='Romeo@Example.com' id='m1'><body>hi</body></message>")
    assert isinstance(st, StanzaIn)
    assert st.kind == "message" and st.id == "m1"
    assert st.to == JID("romeo", "example.com", None)
    assert b'from="juliet@example.com/balcony"' in st.payload
    assert b'to="romeo@example.com"' in st.payload
    assert b"xmlns:stream" not in st.payload


def test_rfc6120_8_1_2_1_bare_from_of_own_account_is_accepted() -> None:
    stream = bound()
    [st] = events(stream, b"<message to='romeo@example.com' from='juliet@example.com'/>")
    assert isinstance(st, StanzaIn)
    assert b'from="juliet@example.com/balcony"' in st.payload


def test_rfc6120_8_1_2_1_spoofed_from_is_invalid_from() -> None:
    stream = bound()
    [ended] = events(stream, b"<message to='romeo@example.com' from='romeo@example.com/x'/>")
    assert ended == StreamEnded(StreamErrorCondition.INVALID_FROM)


def test_rfc6120_8_3_3_8_malformed_to_is_jid_malformed() -> None:
    stream = bound()
    assert events(stream, b"<message to='@bad' id='x'><body>hi</body></message>") == []
    out = stream.data_to_send()
    assert b'type="error"' in out and b"<jid-malformed" in out


def test_rfc6120_8_2_3_iq_without_id_is_bad_request() -> None:
    stream = bound()
    assert events(stream, b"<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>") == []
    assert b"<bad-request" in stream.data_to_send()


def test_rfc3921_3_legacy_session_iq_is_answered() -> None:
    stream = bound()
    assert events(
        stream, b"<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
    ) == []
    assert b'<iq type="result" id="s"/>' in stream.data_to_send()


def test_rfc6120_4_4_closing_the_stream() -> None:
    stream = bound()
    [ended] = events(stream, b"</stream:stream>")
    assert ended == StreamEnded(None)
    assert stream.data_to_send() == b"</stream:stream>"


def test_rfc6120_unknown_top_level_element_is_unsupported_stanza_type() -> None:
    stream = bound()
    [ended] = events(stream, b"<compress xmlns='http://jabber.org/protocol/compress'/>")
    assert ended == StreamEnded(StreamErrorCondition.UNSUPPORTED_STANZA_TYPE)


def test_xep0077_registration_only_when_allowed() -> None:
    iq = (
        b"<iq type='set' id='r'><query xmlns='jabber:iq:register'>"
        b"<username>new</username><password>pw</password></query></iq>"
    )
    closed = after_tls()
    [ended] = events(closed, iq)
    assert ended == StreamEnded(StreamErrorCondition.NOT_AUTHORIZED)
    stream = after_tls(StreamConfig(domain="example.com", allow_registration=True))
    [req] = events(stream, iq)
    assert req == RegisterRequested("new", "pw")
    stream.register_done(None)
    assert b'<iq type="result" id="r"/>' in stream.data_to_send()


def test_xep0077_3_1_registration_on_a_delegated_domain_is_service_unavailable() -> None:
    """The accounts of a token or HTTP domain are the platform's: no <register/> feature,
    and a registration request is answered, not the stream ended (the client logs in)."""
    config = StreamConfig(domain="example.com", auth_backend="token", allow_registration=True,
                          mechanisms=("OAUTHBEARER", "PLAIN"))
    stream = C2SStream(config)
    events(stream, HEADER)
    events(stream, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    stream.data_to_send()
    stream.tls_established()
    events(stream, HEADER)
    features = stream.data_to_send()
    assert b"<mechanism>OAUTHBEARER</mechanism>" in features
    assert b"iq-register" not in features
    for type_ in ("get", "set"):
        assert events(stream, f"<iq type='{type_}' id='r-{type_}'><query "
                      "xmlns='jabber:iq:register'><username>new</username><password>pw"
                      "</password></query></iq>".encode()) == []
        out = stream.data_to_send()
        assert f'id="r-{type_}"'.encode() in out and b"<service-unavailable" in out, out
        assert b'type="cancel"' in out and b"identity provider" in out
    # anything else before authentication still ends the stream (RFC 6120 §6.4)
    [ended] = events(stream, b"<message to='romeo@example.com'><body>hi</body></message>")
    assert ended == StreamEnded(StreamErrorCondition.NOT_AUTHORIZED)


def test_rfc6120_restart_after_sasl_uses_post_auth_limits() -> None:
    stream = bound()
    big = b"<message to='romeo@example.com'><body>" + b"x" * 20_000 + b"</body></message>"
    [st] = events(stream, big)  # over the 8 KiB pre-auth limit, under 256 KiB
    assert isinstance(st, StanzaIn)


def test_rfc6120_6_5_12_store_outage_is_temporary_auth_failure() -> None:
    stream = after_tls()
    [need] = events(stream, plain("juliet", "pencil"))
    assert need == CredentialsNeeded("juliet")
    stream.credentials_unavailable()
    [failed] = events(stream)
    assert (failed.mechanism, failed.condition) == ("PLAIN", "temporary-auth-failure")
    assert b"<temporary-auth-failure/>" in stream.data_to_send()
    assert not stream.closed


def test_rfc6120_4_9_3_19_see_other_host_carries_the_host() -> None:
    stream = bound()
    stream.close(StreamErrorCondition.SEE_OTHER_HOST, content="[2001:db8::1]:5222")
    out = stream.data_to_send()
    assert (b'<see-other-host xmlns="urn:ietf:params:xml:ns:xmpp-streams">'
            b"[2001:db8::1]:5222</see-other-host>") in out
    assert out.endswith(b"</stream:stream>")


def test_rfc6120_4_9_3_19_placement_redirects_a_new_stream_only_once_tls_protects_it() -> None:
    asked: list[int] = []

    def elsewhere() -> str:
        asked.append(1)
        return "cm-2.example.com:5224"

    config = StreamConfig(domain="example.com", placement=elsewhere)
    stream = C2SStream(config)
    assert events(stream, HEADER) == []  # (a): not before TLS
    assert b"<starttls" in stream.data_to_send() and not asked
    [tls] = events(stream, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert isinstance(tls, StartTLS)
    stream.data_to_send()
    stream.tls_established()
    [ended] = events(stream, HEADER)
    assert ended == StreamEnded(StreamErrorCondition.SEE_OTHER_HOST)
    out = stream.data_to_send()
    assert out.startswith(b"<?xml version='1.0'?><stream:stream ")  # §4.9.1.3: header first
    assert (b'<see-other-host xmlns="urn:ietf:params:xml:ns:xmpp-streams">'
            b"cm-2.example.com:5224</see-other-host>") in out
    assert out.endswith(b"</stream:stream>") and b"<stream:features" not in out
    assert stream.closed and asked == [1]


def test_placement_serving_here_and_authenticated_streams_are_not_asked_again() -> None:
    answers = [""]
    config = StreamConfig(domain="example.com", placement=lambda: answers.pop(0))
    stream = authenticated(config=config)  # asked once after TLS ("": served here); the
    assert answers == []  # restart after SASL would pop an empty list: never asked again
    assert not stream.closed


def test_rfc6120_4_3_3_a_restart_releases_the_old_streams_parser() -> None:
    released: list[StreamParser] = []
    release = StreamParser.release

    def spy(self: StreamParser) -> None:
        released.append(self)
        release(self)

    stream = C2SStream(CONFIG)
    events(stream, HEADER)
    first = stream._parser
    with mock.patch.object(StreamParser, "release", spy):
        [tls] = events(stream, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        assert isinstance(tls, StartTLS)
        stream.tls_established()
    assert released == [first]
    events(stream, HEADER)  # the new stream's parser works
    assert b"<stream:features>" in stream.data_to_send()
