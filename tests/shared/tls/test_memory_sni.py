"""shared.tls.memory `choose_by_sni`: the pyOpenSSL server side (the s2s gateway's inbound
TLS) presents the certificate of the name the client sends in SNI (RFC 6066 §3), or, when it
sends none, of the name the connection was given; an unknown name keeps the default."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from OpenSSL import SSL

from shared.tls.context import ensure_dev_ca, ensure_issued
from shared.tls.memory import ServerTLS, choose_by_sni, server_context


@pytest.fixture
def contexts(tmp_path: Path) -> tuple[Path, dict[str, SSL.Context]]:
    ensure_dev_ca(str(tmp_path / "ca.crt"), str(tmp_path / "ca.key"))
    out = {}
    for name in ("default.example", "a.example", "b.example"):
        cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        ensure_issued(str(cert), str(key), str(tmp_path / "ca.crt"), str(tmp_path / "ca.key"),
                      [name])
        out[name] = server_context(str(cert), str(key))
    return tmp_path / "ca.crt", out


def _served(ca: Path, server: ServerTLS, sni: str | None) -> str:
    """The CN of the certificate the client got, verified against the CA."""
    client_ctx = ssl.create_default_context(cafile=str(ca))
    client_ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=sni)
    for _ in range(10):  # a handshake is a few flights
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        server.receive_data(outgoing.read())
        incoming.write(server.data_to_send())
    else:
        raise AssertionError("the handshake did not finish")
    cert = x509.load_der_x509_certificate(client.getpeercert(binary_form=True) or b"")
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def test_sni_picks_the_domain_certificate_else_the_connection_name_else_the_default(
    contexts: tuple[Path, dict[str, SSL.Context]],
) -> None:
    ca, ctxs = contexts
    default = ctxs["default.example"]
    choose_by_sni(default, lambda name: ctxs.get(name) if name != "default.example" else None)
    assert _served(ca, ServerTLS(default), "a.example") == "a.example"
    assert _served(ca, ServerTLS(default), "b.example") == "b.example"
    # SNI wins over the connection's name (a STARTTLS stream header's 'to')
    tls = ServerTLS(default, "a.example")
    assert _served(ca, tls, "b.example") == "b.example" and tls.server_name == "b.example"
    # no SNI: the connection's name
    tls = ServerTLS(default, "b.example")
    assert _served(ca, tls, None) == "b.example" and tls.server_name == ""
    # nothing known: the default certificate
    assert _served(ca, ServerTLS(default), "c.example") == "default.example"
    assert _served(ca, ServerTLS(default), None) == "default.example"
