"""SASL checked by a backend (token, HTTP): PLAIN (RFC 4616) and OAUTHBEARER (RFC 7628)."""

from __future__ import annotations

import base64

import pytest

from shared.xmpp.c2s import (
    AuthFailed,
    AuthSucceeded,
    C2SStream,
    StreamConfig,
    VerificationNeeded,
)
from shared.xmpp.sasl import Challenge, SASLCondition, SASLFailure, Success
from shared.xmpp.sasl_delegated import (
    ERROR_CHALLENGE,
    DelegatedAuthenticator,
    NeedVerification,
)
from tests.shared.xmpp.test_c2s import after_tls, events, plain

SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
CONFIG = StreamConfig(domain="example.com", mechanisms=("OAUTHBEARER", "PLAIN"),
                      auth_backend="token")


def bearer(token: str, authzid: str = "") -> bytes:
    """RFC 7628 §3.1 client response (the example of §4.1, without host and port)."""
    gs2 = f"n,a={authzid}," if authzid else "n,,"
    return f"{gs2}\x01host=server.example.com\x01port=5222\x01auth=Bearer {token}\x01\x01".encode()


def auth(mechanism: str, data: bytes) -> bytes:
    return (f"<auth xmlns='{SASL}' mechanism='{mechanism}'>"
            f"{base64.b64encode(data).decode()}</auth>").encode()


def test_rfc7628_3_1_parses_the_bearer_token_and_authzid() -> None:
    auth_ = DelegatedAuthenticator("OAUTHBEARER", domain="example.com")
    step = auth_.start(bearer("eyJ.abc-_.x~+/=", "juliet@example.com"))
    assert step == NeedVerification("juliet", "eyJ.abc-_.x~+/=")
    assert auth_.verified("Juliet") == Success("juliet", None)


@pytest.mark.parametrize("data", [
    b"n,,auth=Bearer x\x01\x01",  # no kvsep after the gs2-header
    b"n,,\x01auth=Bearer x\x01",  # no closing kvsep
    b"p=tls-unique,,\x01auth=Bearer x\x01\x01",  # channel binding is not offered
    b"n,,\x01auth=Basic eA==\x01\x01",  # not a bearer token
    b"n,,\x01host=a\x01\x01",  # no auth at all
    b"n,,\x01auth=Bearer x y\x01\x01",  # not a b64token (RFC 6750 §2.1)
])
def test_rfc7628_3_1_malformed_responses(data: bytes) -> None:
    with pytest.raises(SASLFailure) as exc:
        DelegatedAuthenticator("OAUTHBEARER", domain="example.com").start(data)
    assert exc.value.condition is SASLCondition.MALFORMED_REQUEST


def test_rfc7628_authzid_of_another_domain_is_invalid_authzid() -> None:
    with pytest.raises(SASLFailure) as exc:
        DelegatedAuthenticator("OAUTHBEARER", domain="example.com").start(
            bearer("t", "juliet@example.net"))
    assert exc.value.condition is SASLCondition.INVALID_AUTHZID


def test_rfc6120_6_3_8_token_of_another_user_than_the_authzid_fails() -> None:
    auth_ = DelegatedAuthenticator("OAUTHBEARER", domain="example.com")
    auth_.start(bearer("t", "juliet"))
    with pytest.raises(SASLFailure) as exc:
        auth_.verified("romeo")
    assert exc.value.condition is SASLCondition.INVALID_AUTHZID


def test_rfc7628_3_2_2_rejection_sends_an_error_then_fails_after_the_dummy() -> None:
    auth_ = DelegatedAuthenticator("OAUTHBEARER", domain="example.com")
    auth_.start(bearer("t"))
    assert auth_.rejected() == Challenge(ERROR_CHALLENGE)
    with pytest.raises(SASLFailure) as exc:
        auth_.respond(b"\x01")
    assert exc.value.condition is SASLCondition.NOT_AUTHORIZED


def test_plain_password_goes_to_the_backend_and_a_no_is_not_authorized() -> None:
    auth_ = DelegatedAuthenticator("PLAIN", domain="example.com")
    assert auth_.start(b"\0Juliet\0secret") == NeedVerification("juliet", "secret")
    with pytest.raises(SASLFailure) as exc:
        auth_.rejected()
    assert exc.value.condition is SASLCondition.NOT_AUTHORIZED


def test_the_secret_stays_out_of_reprs() -> None:
    assert "s3cret" not in repr(NeedVerification("juliet", "s3cret"))
    assert "s3cret" not in repr(VerificationNeeded("PLAIN", "juliet", "s3cret"))


def test_stream_offers_the_backend_mechanisms_and_logs_in_with_a_token() -> None:
    stream = C2SStream(CONFIG)
    events(stream, b"<?xml version='1.0'?><stream:stream to='example.com' version='1.0' "
                   b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
    assert b"<mechanism>" not in stream.data_to_send()  # RFC 7628 §5: bearer tokens need TLS
    stream = after_tls(CONFIG)
    [need] = events(stream, auth("OAUTHBEARER", bearer("tok")))
    assert need == VerificationNeeded("OAUTHBEARER", None, "tok")
    stream.verified("juliet")
    [ok] = events(stream)
    assert ok == AuthSucceeded("juliet", "OAUTHBEARER")
    assert b"<success" in stream.data_to_send()
    assert stream.username == "juliet"


def test_stream_rejected_token_fails_not_authorized_after_the_dummy_response() -> None:
    stream = after_tls(CONFIG)
    events(stream, auth("OAUTHBEARER", bearer("tok")))
    stream.verification_rejected()
    assert events(stream) == []
    out = stream.data_to_send()
    assert base64.b64encode(ERROR_CHALLENGE) in out and b"<challenge" in out
    dummy = base64.b64encode(b"\x01").decode()
    response = f"<response xmlns='{SASL}'>{dummy}</response>"
    [failed] = events(stream, response.encode())
    assert failed == AuthFailed("OAUTHBEARER", "not-authorized", None)
    assert b"<not-authorized/>" in stream.data_to_send()


def test_stream_backend_down_is_temporary_auth_failure() -> None:
    stream = after_tls(CONFIG)
    [need] = events(stream, plain("juliet", "pw"))
    assert need == VerificationNeeded("PLAIN", "juliet", "pw")
    stream.credentials_unavailable()
    [failed] = events(stream)
    assert failed == AuthFailed("PLAIN", "temporary-auth-failure", "juliet")


def test_stream_internal_domain_never_asks_a_backend() -> None:
    stream = after_tls(StreamConfig(domain="example.com"))
    [need] = events(stream, plain("juliet", "pw"))
    assert not isinstance(need, VerificationNeeded)
