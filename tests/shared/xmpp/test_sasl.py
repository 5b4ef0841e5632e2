"""Sans-I/O SASL: PLAIN (RFC 4616), SCRAM-SHA-1 (RFC 5802), SCRAM-SHA-256 (RFC 7677)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from scramp import ScramClient, ScramMechanism

from shared.xmpp import sasl
from shared.xmpp.credentials import ScramKeys, StoredCredentials, derive_credentials
from shared.xmpp.sasl import (
    MAX_MESSAGE_BYTES,
    MECHANISMS,
    Authenticator,
    Challenge,
    NeedCredentials,
    SASLCondition,
    SASLFailure,
    Success,
    binding_feature,
    offered_mechanisms,
    ssdp_hash,
)
from tests.support.scram import HASHES, ManualClient

DOMAIN = "example.com"
SCRAM = ["SCRAM-SHA-1", "SCRAM-SHA-256"]


@pytest.fixture(scope="module")
def creds() -> StoredCredentials:
    return derive_credentials("pencil", iterations=4096)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _failure(condition: SASLCondition) -> pytest.RaisesExc[SASLFailure]:
    return pytest.raises(SASLFailure, check=lambda exc: exc.condition is condition)


def _scram_to_challenge(
    mechanism: str, first: bytes, creds: StoredCredentials | None, username: str = "user"
) -> tuple[Authenticator, bytes]:
    auth = Authenticator(mechanism, domain=DOMAIN)
    assert auth.start(first) == NeedCredentials(username)
    step = auth.provide_credentials(creds)
    assert isinstance(step, Challenge)
    return auth, step.data


# ---- general ----------------------------------------------------------------------------


def test_mechanisms_offered_strongest_first() -> None:
    assert MECHANISMS == ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256",
                          "SCRAM-SHA-1", "PLAIN")
    # RFC 5802 §6: -PLUS only where the connection has a channel binding
    assert offered_mechanisms(MECHANISMS, None) == ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")
    assert offered_mechanisms(MECHANISMS, _Binding(())) == ("SCRAM-SHA-256", "SCRAM-SHA-1",
                                                            "PLAIN")
    assert offered_mechanisms(MECHANISMS, _Binding(("tls-exporter",))) == MECHANISMS


@pytest.mark.parametrize("mechanism", ["DIGEST-MD5", "SCRAM-SHA-1-PLUS", "", "plain", "X-OAUTH2"])
def test_invalid_mechanism(mechanism: str) -> None:
    with _failure(SASLCondition.INVALID_MECHANISM):
        Authenticator(mechanism, domain=DOMAIN)


def test_failure_to_xml() -> None:
    xml = SASLFailure(SASLCondition.NOT_AUTHORIZED, "a < b").to_xml()
    assert xml == (
        b'<failure xmlns="urn:ietf:params:xml:ns:xmpp-sasl"><not-authorized/>'
        b'<text xml:lang="en">a &lt; b</text></failure>'
    )
    assert SASLFailure(SASLCondition.ABORTED).to_xml().endswith(b"<aborted/></failure>")


@pytest.mark.parametrize("mechanism", [*SCRAM, "PLAIN"])  # -PLUS: below
def test_base64_is_the_callers_business(mechanism: str) -> None:
    # The caller decodes base64; encoded text handed in is just a malformed message.
    encoded = base64.b64encode(b"\0user\0pencil")
    with _failure(SASLCondition.MALFORMED_REQUEST):
        Authenticator(mechanism, domain=DOMAIN).start(encoded)
    with pytest.raises(TypeError):
        Authenticator(mechanism, domain=DOMAIN).start("\0user\0pencil")  # type: ignore[arg-type]


@pytest.mark.parametrize("mechanism", [*SCRAM, "PLAIN"])  # -PLUS: below
def test_oversized_messages_are_refused(mechanism: str) -> None:
    big = b"\0user\0" + b"p" * MAX_MESSAGE_BYTES
    if mechanism != "PLAIN":
        big = b"n,,n=user,r=" + b"x" * MAX_MESSAGE_BYTES
    with _failure(SASLCondition.MALFORMED_REQUEST):
        Authenticator(mechanism, domain=DOMAIN).start(big)


@pytest.mark.parametrize("mechanism", [*SCRAM, "PLAIN"])  # -PLUS: below
def test_empty_initial_response_is_malformed(mechanism: str) -> None:
    # RFC 6120 §6.4.2: "=" is an empty initial response, which neither mechanism allows.
    with _failure(SASLCondition.MALFORMED_REQUEST):
        Authenticator(mechanism, domain=DOMAIN).start(b"")


# ---- PLAIN (RFC 4616) -------------------------------------------------------------------


def _plain(message: bytes, creds: StoredCredentials | None, username: str = "user") -> Success:
    auth = Authenticator("PLAIN", domain=DOMAIN)
    assert auth.start(message) == NeedCredentials(username)
    step = auth.provide_credentials(creds)
    assert isinstance(step, Success)
    return step


@pytest.mark.parametrize(
    "message",
    [b"\0user\0pencil", b"user\0user\0pencil", b"user@example.com\0user\0pencil"],
)
def test_plain_success(creds: StoredCredentials, message: bytes) -> None:
    assert _plain(message, creds) == Success("user", None)


def test_plain_username_is_precis_prepared(creds: StoredCredentials) -> None:
    # RFC 8265 §3.3 UsernameCaseMapped; the authzid is compared after preparation too.
    assert _plain(b"User@EXAMPLE.com\0USER\0pencil", creds) == Success("user", None)


def test_plain_without_initial_response(creds: StoredCredentials) -> None:
    auth = Authenticator("PLAIN", domain=DOMAIN)
    assert auth.start(None) == Challenge(b"")
    assert auth.respond(b"\0user\0pencil") == NeedCredentials("user")
    assert auth.provide_credentials(creds) == Success("user", None)


def test_plain_wrong_password(creds: StoredCredentials) -> None:
    auth = Authenticator("PLAIN", domain=DOMAIN)
    assert auth.start(b"\0user\0pencil2") == NeedCredentials("user")
    with _failure(SASLCondition.NOT_AUTHORIZED):
        auth.provide_credentials(creds)


def test_plain_unknown_user() -> None:
    auth = Authenticator("PLAIN", domain=DOMAIN)
    assert auth.start(b"\0nobody\0pencil") == NeedCredentials("nobody")
    with _failure(SASLCondition.NOT_AUTHORIZED):
        auth.provide_credentials(None)


@pytest.mark.parametrize(
    "authzid",
    [b"admin", b"admin@example.com", b"user@example.org", b"user@example.com/res", b"@"],
)
def test_plain_bad_authzid(authzid: bytes) -> None:
    with _failure(SASLCondition.INVALID_AUTHZID):
        Authenticator("PLAIN", domain=DOMAIN).start(authzid + b"\0user\0pencil")


@pytest.mark.parametrize(
    "message",
    [
        b"user\0pencil",
        b"userpencil",
        b"\0\0pencil",
        b"\0user\0",
        b"a\0user\0pencil\0more",
        b"\0us\xffer\0pencil",
    ],
)
def test_plain_malformed(message: bytes) -> None:
    with _failure(SASLCondition.MALFORMED_REQUEST):
        Authenticator("PLAIN", domain=DOMAIN).start(message)


@pytest.mark.parametrize("authcid", [b"us er", b"user@example.com", b"a/b", b"\xe2\x80\x8buser"])
def test_plain_unpreparable_username(authcid: bytes) -> None:
    with _failure(SASLCondition.NOT_AUTHORIZED):
        Authenticator("PLAIN", domain=DOMAIN).start(b"\0" + authcid + b"\0pencil")


# ---- SCRAM (RFC 5802, RFC 7677) ---------------------------------------------------------


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_full_exchange_with_scramp_client(creds: StoredCredentials, mechanism: str) -> None:
    client = ScramClient([mechanism], "User", "pencil")
    auth = Authenticator(mechanism, domain=DOMAIN)
    assert auth.start(client.get_client_first().encode()) == NeedCredentials("user")
    step = auth.provide_credentials(creds)
    assert isinstance(step, Challenge)
    keys = creds.sha256 if mechanism == "SCRAM-SHA-256" else creds.sha1
    assert f",s={_b64(keys.salt)},i=4096".encode() in step.data
    client.set_server_first(step.data.decode())
    step = auth.respond(client.get_client_final().encode())
    assert isinstance(step, Success)
    assert step.username == "user"
    assert step.data is not None and step.data.startswith(b"v=")
    client.set_server_final(step.data.decode())  # the client checks the server signature


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_without_initial_response(creds: StoredCredentials, mechanism: str) -> None:
    client = ScramClient([mechanism], "user", "pencil")
    auth = Authenticator(mechanism, domain=DOMAIN)
    assert auth.start(None) == Challenge(b"")
    assert auth.respond(client.get_client_first().encode()) == NeedCredentials("user")
    step = auth.provide_credentials(creds)
    assert isinstance(step, Challenge)
    client.set_server_first(step.data.decode())
    step = auth.respond(client.get_client_final().encode())
    assert isinstance(step, Success)
    client.set_server_final(step.data.decode())  # type: ignore[union-attr]


# The examples of RFC 5802 §5 and RFC 7677 §3, byte for byte.
RFC_VECTORS = [
    (
        "SCRAM-SHA-1",
        "QSXCR+Q6sek8bf92",
        "fyko+d2lbbFgONRv9qkxdawL",
        "3rfcNHYJY1ZVvWVs7j",
        "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
    ),
    (
        "SCRAM-SHA-256",
        "W22ZaJ0SNY7soEsUEjb6gQ==",
        "rOprNGfwEbeRWgbNEkqO",
        "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
    ),
]


@pytest.mark.parametrize(
    ("mechanism", "salt", "client_nonce", "server_nonce", "client_final", "server_final"),
    RFC_VECTORS,
)
def test_scram_rfc_test_vectors(
    monkeypatch: pytest.MonkeyPatch,
    mechanism: str,
    salt: str,
    client_nonce: str,
    server_nonce: str,
    client_final: str,
    server_final: str,
) -> None:
    salt_bytes, stored, server, i = ScramMechanism(mechanism).make_auth_info(
        "pencil", iteration_count=4096, salt=base64.b64decode(salt)
    )
    keys = ScramKeys(salt_bytes, i, stored, server)
    monkeypatch.setattr(sasl, "_new_server_nonce", lambda: server_nonce)
    auth, server_first = _scram_to_challenge(
        mechanism, f"n,,n=user,r={client_nonce}".encode(), StoredCredentials(keys, keys)
    )
    assert server_first == f"r={client_nonce}{server_nonce},s={salt},i=4096".encode()
    assert auth.respond(client_final.encode()) == Success("user", server_final.encode())


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_wrong_password(creds: StoredCredentials, mechanism: str) -> None:
    client = ScramClient([mechanism], "user", "pencil2")
    auth, server_first = _scram_to_challenge(mechanism, client.get_client_first().encode(), creds)
    client.set_server_first(server_first.decode())
    with _failure(SASLCondition.NOT_AUTHORIZED):
        auth.respond(client.get_client_final().encode())


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_unknown_user_still_gets_a_challenge(mechanism: str) -> None:
    client = ScramClient([mechanism], "nobody", "pencil")
    auth, server_first = _scram_to_challenge(
        mechanism, client.get_client_first().encode(), None, "nobody"
    )
    attrs = dict(item.split("=", 1) for item in server_first.decode().split(","))
    assert set(attrs) == {"r", "s", "i"}
    assert len(base64.b64decode(attrs["s"])) == 16
    assert int(attrs["i"]) >= 4096
    client.set_server_first(server_first.decode())
    with _failure(SASLCondition.NOT_AUTHORIZED):
        auth.respond(client.get_client_final().encode())


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_fake_salt_is_stable_per_name(mechanism: str) -> None:
    def salt(username: str) -> str:
        first = ManualClient(mechanism, username=username).first()
        _, server_first = _scram_to_challenge(mechanism, first, None, username)
        return server_first.decode().split(",")[1]

    assert salt("nobody") == salt("nobody")
    assert salt("nobody") != salt("someone")


@pytest.mark.parametrize("mechanism", SCRAM)
@pytest.mark.parametrize(
    "authzid", ["user", "user@example.com", "User@Example.COM", "user@example.com."]
)
def test_scram_authzid_of_oneself_is_accepted(
    creds: StoredCredentials, mechanism: str, authzid: str
) -> None:
    client = ManualClient(mechanism, gs2_header=f"n,a={authzid},")
    auth, server_first = _scram_to_challenge(mechanism, client.first(), creds)
    step = auth.respond(client.final(server_first))
    assert isinstance(step, Success)
    assert step.username == "user"
    client.check_final(step.data)


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_authzid_must_match_the_proof(creds: StoredCredentials, mechanism: str) -> None:
    # The gs2-header (with its authzid) is covered by c=: a client cannot swap it afterwards.
    client = ManualClient(mechanism, gs2_header="n,a=user@example.com,")
    auth, server_first = _scram_to_challenge(mechanism, client.first(), creds)
    client.gs2_header = "n,,"
    with _failure(SASLCondition.NOT_AUTHORIZED):
        auth.respond(client.final(server_first))


@pytest.mark.parametrize("mechanism", SCRAM)
@pytest.mark.parametrize("authzid", ["admin", "admin@example.com", "user@example.org", "u=2Cser"])
def test_scram_bad_authzid(mechanism: str, authzid: str) -> None:
    first = ManualClient(mechanism, gs2_header=f"n,a={authzid},").first()
    with _failure(SASLCondition.INVALID_AUTHZID):
        Authenticator(mechanism, domain=DOMAIN).start(first)


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_y_flag_is_accepted(creds: StoredCredentials, mechanism: str) -> None:
    # RFC 5802 §6 "y": the client could bind but thinks we cannot (we offer no -PLUS).
    client = ManualClient(mechanism, gs2_header="y,,")
    auth, server_first = _scram_to_challenge(mechanism, client.first(), creds)
    step = auth.respond(client.final(server_first))
    assert isinstance(step, Success)
    client.check_final(step.data)


@pytest.mark.parametrize("mechanism", SCRAM)
@pytest.mark.parametrize("flag", ["p=tls-exporter", "p=tls-server-end-point", "p=tls-unique"])
def test_scram_channel_binding_is_refused(mechanism: str, flag: str) -> None:
    first = ManualClient(mechanism, gs2_header=f"{flag},,").first()
    with _failure(SASLCondition.NOT_AUTHORIZED):
        Authenticator(mechanism, domain=DOMAIN).start(first)


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_wrong_nonce_in_client_final(creds: StoredCredentials, mechanism: str) -> None:
    client = ManualClient(mechanism)
    auth, server_first = _scram_to_challenge(mechanism, client.first(), creds)
    nonce = server_first.decode().split(",")[0][2:]
    with _failure(SASLCondition.NOT_AUTHORIZED):
        auth.respond(client.final(server_first, nonce=nonce[:-1] + "X"))


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_tampered_proof(creds: StoredCredentials, mechanism: str) -> None:
    client = ManualClient(mechanism)
    auth, server_first = _scram_to_challenge(mechanism, client.first(), creds)
    without_proof, proof = client.final(server_first).rsplit(b",p=", 1)
    raw = bytearray(base64.b64decode(proof))
    raw[0] ^= 1
    with _failure(SASLCondition.NOT_AUTHORIZED):
        auth.respond(without_proof + b",p=" + base64.b64encode(bytes(raw)))


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_escaped_username(creds: StoredCredentials, mechanism: str) -> None:
    # RFC 5802 §5.1: "," and "=" travel as "=2C" and "=3D".
    client = ManualClient(mechanism, username="a=2Cb=3Dc")
    auth = Authenticator(mechanism, domain=DOMAIN)
    assert auth.start(client.first()) == NeedCredentials("a,b=c")


@pytest.mark.parametrize("mechanism", SCRAM)
@pytest.mark.parametrize(
    "first",
    [
        b"n,,",
        b"n",
        b"x,,n=user,r=abc",
        b"n,z=user,n=user,r=abc",
        b"n,a=,n=user,r=abc",
        b"n,,m=ext,n=user,r=abc",
        b"n,,n=us=41er,r=abc",
        b"n,,n=,r=abc",
        b"n,,r=abc,n=user",
        b"n,,n=user",
        b"n,,n=user,r=",
        b"n,,n=user,r=a\x7fb",
        b"n,,n=us\xffer,r=abc",
    ],
)
def test_scram_malformed_client_first(mechanism: str, first: bytes) -> None:
    with _failure(SASLCondition.MALFORMED_REQUEST):
        Authenticator(mechanism, domain=DOMAIN).start(first)


@pytest.mark.parametrize("mechanism", SCRAM)
@pytest.mark.parametrize(
    "final",
    [
        b"garbage",
        b"c=biws",
        b"\xff\xfe",
        b"c=biws,r={nonce}",
        b"c=biws,r={nonce},p=",
        b"c=biws,r={nonce},p=!!notbase64!!",
        b"c=biws,r={nonce},p=AAAA",
        b"c=Ymx1Yg==,r={nonce},p=AAAA",
        b"c=!!,r={nonce},p=AAAA",
        b"c=biws,r={nonce},x=ext,p=AAAA",
        b"r={nonce},c=biws,p=AAAA",
    ],
)
def test_scram_junk_client_final_fails_cleanly(
    creds: StoredCredentials, mechanism: str, final: bytes
) -> None:
    client = ManualClient(mechanism)
    auth, server_first = _scram_to_challenge(mechanism, client.first(), creds)
    nonce = server_first.decode().split(",")[0][2:]
    with pytest.raises(SASLFailure) as info:
        auth.respond(final.replace(b"{nonce}", nonce.encode()))
    assert info.value.condition in (
        SASLCondition.MALFORMED_REQUEST,
        SASLCondition.NOT_AUTHORIZED,
    )


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_failure_spends_the_authenticator(creds: StoredCredentials, mechanism: str) -> None:
    client = ManualClient(mechanism)
    auth, server_first = _scram_to_challenge(mechanism, client.first(), creds)
    final = client.final(server_first)
    with _failure(SASLCondition.NOT_AUTHORIZED):
        auth.respond(final.replace(b"p=", b"p=AAAA"))
    with _failure(SASLCondition.MALFORMED_REQUEST):
        auth.respond(final)  # the right answer, too late


@pytest.mark.parametrize("mechanism", [*SCRAM, "PLAIN"])  # -PLUS: below
def test_response_after_success_is_refused(creds: StoredCredentials, mechanism: str) -> None:
    auth = Authenticator(mechanism, domain=DOMAIN)
    if mechanism == "PLAIN":
        auth.start(b"\0user\0pencil")
        assert isinstance(auth.provide_credentials(creds), Success)
    else:
        client = ManualClient(mechanism)
        auth.start(client.first())
        step = auth.provide_credentials(creds)
        assert isinstance(step, Challenge)
        assert isinstance(auth.respond(client.final(step.data)), Success)
    with _failure(SASLCondition.MALFORMED_REQUEST):
        auth.respond(b"")


def test_calls_out_of_order_are_caller_bugs(creds: StoredCredentials) -> None:
    auth = Authenticator("SCRAM-SHA-256", domain=DOMAIN)
    with pytest.raises(RuntimeError):
        auth.provide_credentials(creds)
    auth.start(None)
    with pytest.raises(RuntimeError):
        auth.start(None)


def test_rfc8265_printable_ascii_usernames_are_precis_enforced_and_localpart_checked() -> None:
    """prepare_username: PRECIS UsernameCaseMapped (precis_i18n) plus the localpart rules."""
    from precis_i18n import get_profile

    from shared.xmpp.sasl import _LOCALPART_FORBIDDEN, prepare_username

    profile = get_profile("UsernameCaseMapped")
    samples = [chr(i) for i in range(0x21, 0x7F)] + ["AliCe", "x.Y-z_9~", "ABC!#$%*+"]
    for raw in samples:
        expected = profile.enforce(raw)
        if _LOCALPART_FORBIDDEN.intersection(expected):
            with pytest.raises(ValueError):
                prepare_username(raw)
        else:
            assert prepare_username(raw) == expected
    for raw in ("", " a", "a b", "a\tb"):  # not printable ASCII: still refused by PRECIS
        with pytest.raises(ValueError):
            prepare_username(raw)


# ---- channel binding: SCRAM-*-PLUS (RFC 5802 §6), XEP-0440, XEP-0474 --------------------------

PLUS = ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"]
BINDING_DATA = {"tls-exporter": bytes(range(32)), "tls-unique": b"\x07" * 12,
                "tls-server-end-point": hashlib.sha256(b"certificate").digest()}


class _Binding:
    """A connection's channel bindings, as shared.tls.binding gives them."""

    def __init__(self, types: tuple[str, ...]) -> None:
        self.types = types

    def data(self, kind: str) -> bytes | None:
        return BINDING_DATA[kind] if kind in self.types else None


ALL_TYPES = _Binding(("tls-exporter", "tls-unique", "tls-server-end-point"))


def _plus_exchange(mechanism: str, client: ManualClient, creds: StoredCredentials,
                   binding: _Binding = ALL_TYPES, offered: tuple[str, ...] | None = MECHANISMS
                   ) -> tuple[Authenticator, bytes]:
    auth = Authenticator(mechanism, domain=DOMAIN, channel_binding=binding, offered=offered)
    assert auth.start(client.first()) == NeedCredentials("user")
    step = auth.provide_credentials(creds)
    assert isinstance(step, Challenge)
    return auth, step.data


@pytest.mark.parametrize("mechanism", PLUS)
@pytest.mark.parametrize("kind", ["tls-exporter", "tls-unique", "tls-server-end-point"])
def test_scram_plus_each_binding_type(creds: StoredCredentials, mechanism: str,
                                      kind: str) -> None:
    client = ManualClient(mechanism, gs2_header=f"p={kind},,", binding_data=BINDING_DATA[kind])
    auth, server_first = _plus_exchange(mechanism, client, creds)
    step = auth.respond(client.final(server_first))
    assert isinstance(step, Success) and step.username == "user"
    client.check_final(step.data)


@pytest.mark.parametrize("mechanism", PLUS)
def test_scram_plus_with_an_authzid(creds: StoredCredentials, mechanism: str) -> None:
    client = ManualClient(mechanism, gs2_header=f"p=tls-exporter,a=user@{DOMAIN},",
                          binding_data=BINDING_DATA["tls-exporter"])
    auth, server_first = _plus_exchange(mechanism, client, creds)
    assert isinstance(auth.respond(client.final(server_first)), Success)


@pytest.mark.parametrize("mechanism", PLUS)
@pytest.mark.parametrize("kind", ["tls-exporter", "tls-server-end-point"])
def test_scram_plus_mismatched_binding_is_refused(creds: StoredCredentials, mechanism: str,
                                                  kind: str) -> None:
    # RFC 5802 §6: the client's TLS channel is not ours (a man in the middle): other data
    client = ManualClient(mechanism, gs2_header=f"p={kind},,", binding_data=b"\x00" * 32)
    auth, server_first = _plus_exchange(mechanism, client, creds)
    with _failure(SASLCondition.NOT_AUTHORIZED):
        auth.respond(client.final(server_first))


@pytest.mark.parametrize("mechanism", PLUS)
def test_scram_plus_binding_type_not_offered_is_refused(mechanism: str) -> None:
    binding = _Binding(("tls-server-end-point",))
    first = ManualClient(mechanism, gs2_header="p=tls-exporter,,").first()
    with _failure(SASLCondition.NOT_AUTHORIZED):
        Authenticator(mechanism, domain=DOMAIN, channel_binding=binding).start(first)


@pytest.mark.parametrize("mechanism", PLUS)
@pytest.mark.parametrize("header", ["n,,", "y,,"])
def test_scram_plus_without_binding_is_refused(mechanism: str, header: str) -> None:
    first = ManualClient(mechanism, gs2_header=header).first()
    with _failure(SASLCondition.NOT_AUTHORIZED):
        Authenticator(mechanism, domain=DOMAIN, channel_binding=ALL_TYPES).start(first)


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_y_flag_while_plus_offered_is_a_downgrade(mechanism: str) -> None:
    # RFC 5802 §6: "y" says the client thinks we cannot bind, but we offered -PLUS
    first = ManualClient(mechanism, gs2_header="y,,").first()
    auth = Authenticator(mechanism, domain=DOMAIN, channel_binding=ALL_TYPES, offered=MECHANISMS)
    with _failure(SASLCondition.NOT_AUTHORIZED):
        auth.start(first)


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_p_flag_with_a_mechanism_without_plus_is_refused(mechanism: str) -> None:
    first = ManualClient(mechanism, gs2_header="p=tls-exporter,,").first()
    with _failure(SASLCondition.NOT_AUTHORIZED):
        Authenticator(mechanism, domain=DOMAIN, channel_binding=ALL_TYPES).start(first)


def test_plus_mechanism_without_channel_binding_is_invalid() -> None:
    for binding in (None, _Binding(())):
        with _failure(SASLCondition.INVALID_MECHANISM):
            Authenticator("SCRAM-SHA-256-PLUS", domain=DOMAIN, channel_binding=binding)


def test_binding_feature_xep_0440() -> None:
    assert binding_feature(()) == ""
    assert binding_feature(("tls-exporter", "tls-server-end-point")) == (
        '<sasl-channel-binding xmlns="urn:xmpp:sasl-cb:0"><channel-binding type="tls-exporter"/>'
        '<channel-binding type="tls-server-end-point"/></sasl-channel-binding>')


def test_ssdp_hash_xep_0474_5_1() -> None:
    # sorted by octets, 0x1E between items, 0x1F before the binding types
    text = ("PLAIN\x1eSCRAM-SHA-1\x1eSCRAM-SHA-1-PLUS\x1eSCRAM-SHA-256\x1eSCRAM-SHA-256-PLUS"
            "\x1ftls-exporter\x1etls-server-end-point")
    want = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    assert ssdp_hash(MECHANISMS, ("tls-server-end-point", "tls-exporter"), "sha256") == want
    # without XEP-0440 advertising there is no 0x1F part at all
    plain = base64.b64encode(hashlib.sha1(b"PLAIN\x1eSCRAM-SHA-1").digest()).decode()
    assert ssdp_hash(("SCRAM-SHA-1", "PLAIN"), None, "sha1") == plain


@pytest.mark.parametrize("mechanism", PLUS + SCRAM)
def test_ssdp_attribute_in_server_first_is_signed(creds: StoredCredentials,
                                                  mechanism: str) -> None:
    # XEP-0474 §5.1: "h" in the server-first-message, which the AuthMessage (and so the
    # client's proof and the server signature) covers
    binding = ALL_TYPES if mechanism.endswith("-PLUS") else None
    header = "p=tls-exporter,," if binding else "n,,"
    client = ManualClient(mechanism, gs2_header=header, binding_data=BINDING_DATA["tls-exporter"])
    offered = offered_mechanisms(MECHANISMS, binding)
    auth, server_first = _plus_exchange(mechanism, client, creds,
                                        binding or _Binding(()), offered)
    step = auth.respond(client.final(server_first))
    assert isinstance(step, Success)
    client.check_final(step.data)
    types = binding.types if binding else None
    hash_name = HASHES[mechanism.removesuffix("-PLUS")]
    assert client.server_first["h"] == ssdp_hash(offered, types, hash_name)


@pytest.mark.parametrize("mechanism", SCRAM)
def test_no_ssdp_attribute_unless_asked(creds: StoredCredentials, mechanism: str) -> None:
    _, server_first = _scram_to_challenge(mechanism, ManualClient(mechanism).first(), creds)
    assert b",h=" not in server_first
