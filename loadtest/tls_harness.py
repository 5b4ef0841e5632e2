"""What the in-process TLS benchmark (`loadtest.tls_bench`) is made of: the CPython ``ssl``
client over memory BIOs, the test certificate, and the timed loops of server CPU per
handshake and per record round trip.  Loopback-free: nothing here opens a socket."""

from __future__ import annotations

import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

from shared.tls.context import ensure_self_signed
from shared.tls.session import TLSSession

DOMAIN: Final = "example.org"
STANZA: Final = (
    b"<message to='juliet@example.org/balcony' from='romeo@example.org/orchard' type='chat' "
    b"id='a1b2c3d4'><body>" + b"x" * 160 + b"</body><active xmlns='http://jabber.org/protocol/"
    b"chatstates'/></message>"
)


class Session(Protocol):
    """The server side under test (the `TLSSession` interface)."""

    established: bool

    def receive(self, data: bytes) -> bytes: ...
    def send(self, data: bytes) -> None: ...
    def data_to_send(self) -> bytes: ...
    def hibernate(self) -> bool: ...


class TLSFailed(Exception):
    """The library reported a fatal error (handshake or record)."""


def certificate(prefix: str = "stanzad-tls-") -> tuple[str, str]:
    """The load tool's self-signed P-256 certificate (`shared.tls.context.ensure_self_signed`)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    cert, key = str(workdir / "cert.pem"), str(workdir / "key.pem")
    ensure_self_signed(cert, key, DOMAIN)
    return cert, key


class Client:
    """The client side: CPython ``ssl`` over memory BIOs, like the load tool; not timed."""

    def __init__(self, cert: str) -> None:
        self.ctx = ssl.create_default_context(cafile=cert)

    def connect(self, server: Session) -> tuple[TLSSession, float]:
        """A full handshake and one record each way; the server's CPU seconds for it."""
        client = TLSSession(self.ctx, server_side=False, server_hostname=DOMAIN)
        client.start()
        cpu = 0.0
        for _ in range(10):
            wire = client.data_to_send()
            t0 = time.process_time()
            server.receive(wire)
            reply = server.data_to_send()
            cpu += time.process_time() - t0
            client.receive(reply)
            if server.established and client.established:
                break
        else:
            raise TLSFailed("no handshake after 10 flights")
        client.send(STANZA)
        wire = client.data_to_send()
        t0 = time.process_time()  # the client's Finished may come with it: tickets go now
        got = server.receive(wire)
        server.send(STANZA)
        reply = server.data_to_send()
        cpu += time.process_time() - t0
        if got != STANZA or client.receive(reply) != STANZA:
            raise TLSFailed("the first record did not make it both ways")
        return client, cpu


def handshakes(
    make: Callable[[], Session], client: Client, n: int, max_seconds: float
) -> float:
    """Server CPU seconds per handshake, the new session's construction included."""
    for _ in range(20):
        client.connect(make())
    total, done, deadline = 0.0, 0, time.monotonic() + max_seconds
    while done < n and time.monotonic() < deadline:
        t0 = time.process_time()
        server = make()  # SSL_new and the BIOs: part of every login too
        total += time.process_time() - t0 + client.connect(server)[1]
        done += 1
    return total / done


def records(
    make: Callable[[], Session], client: Client, n: int, max_seconds: float
) -> float:
    """Server CPU seconds per record round trip (one stanza in, one out), after the session
    went idle once (`TLSSession.hibernate`): a lean session's records then run on our record
    layer, as an idle-then-active connection's do, not on OpenSSL's counted path."""
    server = make()
    peer, _ = client.connect(server)
    server.hibernate()
    wires = []
    for _ in range(n):
        peer.send(STANZA)
        wires.append(peer.data_to_send())
    deadline = time.monotonic() + max_seconds
    t0 = time.process_time()
    done = 0
    for wire in wires:
        if server.receive(wire) != STANZA:
            raise TLSFailed("a record was lost")
        server.send(STANZA)
        server.data_to_send()
        done += 1
        if not done % 1000 and time.monotonic() > deadline:
            break
    return (time.process_time() - t0) / done
