"""What one login costs in server CPU, piece by piece, in-process and without sockets.

`python -m loadtest.login_cost [-n 2000]` prints the process CPU time per login of:

* ``tls`` — the server side of a TLS 1.3 handshake (`shared.tls.session.TLSSession` over
  memory BIOs, against a client in the same process whose CPU is not counted), then the
  login's records after it: four client messages in, four answers out;
* ``stream`` — the sans-I/O stream machine (`shared.xmpp.c2s.C2SStream`: parser, stream
  headers and features, SCRAM-SHA-1 on stored keys, bind) from the first stream header to
  the bind result, with the client messages made once beforehand.
* ``token`` — the same with SASL OAUTHBEARER (RFC 7628) on a token domain: the stream
  machine plus the token backend's check of an RS256 JWT against a static key
  (services/connection_manager/auth_backends.py), one token per login made beforehand.

What these leave out is the I/O shell: socket reads and writes (whose loopback delivery the
kernel charges to the writer), the Redis and NATS round trips, tasks and timers; compare
with `python -m loadtest login` (loadtest/RESULTS.md, "CPU per login").
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import tempfile
import time
from pathlib import Path
from unittest import mock

from scramp import ScramClient

from loadtest import identity
from services.connection_manager.auth_backends import HttpClients, TokenBackend
from shared.tls.context import ensure_self_signed, server_context
from shared.tls.session import TLSSession
from shared.xmpp import sasl
from shared.xmpp.c2s import C2SStream, StreamConfig, VerificationNeeded
from shared.xmpp.credentials import derive_credentials
from shared.xmpp.jid import JID
from shared.xmpp.sasl_delegated import TOKEN_MECHANISMS

DOMAIN = "localhost"
HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
)
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
BIND = (
    b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
    b"<resource>r</resource></bind></iq>"
)
SERVER_NONCE = "f" * 32  # fixed, so that one client-final-message serves every login


def tls_cost(n: int) -> tuple[float, float]:
    """(handshake, records) server CPU seconds per login."""
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = str(Path(tmp) / "cert.pem"), str(Path(tmp) / "key.pem")
        ensure_self_signed(cert, key, DOMAIN)
        server_ctx = server_context(cert, key)
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    handshake = records = 0.0
    for _ in range(n):
        server = TLSSession(server_ctx)
        client = TLSSession(client_ctx, server_side=False, server_hostname=DOMAIN)
        client.start()
        while not (server.established and client.established):
            data = client.data_to_send()
            t = time.process_time()
            server.receive(data)
            out = server.data_to_send()
            handshake += time.process_time() - t
            client.receive(out)
        for _ in range(4):
            client.send(b"<x" + b"a" * 150 + b"/>")
            data = client.data_to_send()
            t = time.process_time()
            server.receive(data)
            server.send(b"<y" + b"b" * 200 + b"/>")
            out = server.data_to_send()
            records += time.process_time() - t
            client.receive(out)
    return handshake / n, records / n


def _drain(stream: C2SStream) -> None:
    while stream.next_event() is not None:
        pass
    stream.data_to_send()


def stream_cost(n: int) -> float:
    """Server CPU seconds per login of the stream machine alone."""
    creds = derive_credentials("pencil", 4096)
    config = StreamConfig(domain=DOMAIN)
    client = ScramClient(["SCRAM-SHA-1"], "user1", "pencil")
    first = base64.b64encode(client.get_client_first().encode())
    auth = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>"
    auth += first + b"</auth>"
    full = JID("user1", DOMAIN, "r")

    def up_to_challenge() -> C2SStream:
        stream = C2SStream(config)
        stream.receive_data(HEADER + STARTTLS)
        _drain(stream)
        stream.tls_established()
        stream.receive_data(HEADER)
        _drain(stream)
        stream.receive_data(auth)
        _drain(stream)
        stream.credentials_loaded(creds)
        return stream

    with mock.patch.object(sasl, "_new_server_nonce", lambda: SERVER_NONCE):
        stream = up_to_challenge()
        stream.next_event()
        challenge = stream.data_to_send().split(b">", 1)[1].split(b"<", 1)[0]
        client.set_server_first(base64.b64decode(challenge).decode())
        final = b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
        final += base64.b64encode(client.get_client_final().encode()) + b"</response>"
        t = time.process_time()
        for _ in range(n):
            stream = up_to_challenge()
            _drain(stream)
            stream.receive_data(final)
            _drain(stream)
            stream.receive_data(HEADER)
            _drain(stream)
            stream.receive_data(BIND)
            _drain(stream)
            stream.bind_succeeded(full)
            _drain(stream)
            if not stream.bound:
                raise RuntimeError("the login did not bind")
        return (time.process_time() - t) / n


def token_cost(n: int) -> float:
    """Server CPU seconds per login of the stream machine with OAUTHBEARER and the token
    backend's verification (its metrics included, as in the connection manager)."""
    key = identity.signing_key()
    private = json.dumps(key.as_dict(private=True))
    backend = TokenBackend(identity.token_auth(key), HttpClients())
    config = StreamConfig(domain=DOMAIN, auth_backend="token", mechanisms=TOKEN_MECHANISMS)
    tokens = [identity.mint(private, f"user{i}@{DOMAIN}") for i in range(n)]
    auths = [b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='OAUTHBEARER'>"
             + base64.b64encode(f"n,,\x01auth=Bearer {t}\x01\x01".encode()) + b"</auth>"
             for t in tokens]

    async def logins() -> float:
        t = time.process_time()
        for i, auth in enumerate(auths):
            stream = C2SStream(config)
            stream.receive_data(HEADER + STARTTLS)
            _drain(stream)
            stream.tls_established()
            stream.receive_data(HEADER)
            _drain(stream)
            stream.receive_data(auth)
            event = stream.next_event()
            if not isinstance(event, VerificationNeeded):
                raise RuntimeError(f"no verification asked: {event!r}")
            user = await backend.verify(event.username, event.secret, DOMAIN)
            if user != f"user{i}":
                raise RuntimeError("the token was refused")
            stream.verified(user)
            _drain(stream)
            stream.receive_data(HEADER)
            _drain(stream)
            stream.receive_data(BIND)
            _drain(stream)
            stream.bind_succeeded(JID(user, DOMAIN, "r"))
            _drain(stream)
            if not stream.bound:
                raise RuntimeError("the login did not bind")
        return (time.process_time() - t) / len(auths)

    return asyncio.run(logins())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.login_cost", description=__doc__)
    p.add_argument("-n", type=int, default=2000, help="logins (at most 20,000)")
    n = min(max(1, p.parse_args(argv).n), 20_000)
    handshake, records = tls_cost(max(1, n // 4))
    stream = stream_cost(n)
    token = token_cost(max(1, n // 4))
    print(f"{ssl.OPENSSL_VERSION}")
    print(f"tls handshake (server side)   {handshake * 1e6:7.0f} µs per login")
    print(f"tls records of the login      {records * 1e6:7.0f} µs per login")
    print(f"stream machine (sans-I/O)     {stream * 1e6:7.0f} µs per login (SCRAM-SHA-1)")
    print(f"stream machine + token check  {token * 1e6:7.0f} µs per login (OAUTHBEARER, RS256)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
