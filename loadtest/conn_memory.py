"""What one idle connection's pieces cost in memory, measured one piece at a time in-process.

`python -m loadtest.conn_memory [-n 2000]` builds N of each piece, keeps them alive and prints
the RSS growth divided by N (after `malloc_trim`, so freed handshake scratch is not counted):

* ``tls`` — a server-side TLS session (`shared.tls.session.TLSSession`) after a full
  TLS 1.3 handshake with a client over memory BIOs and one record each way: the OpenSSL
  state a connection cannot do without;
* ``tls12`` — the same with TLS 1.2;
* ``tls-tickets2`` — ``tls`` with OpenSSL's default of two TLS 1.3 session tickets sent;
* ``tls-burst`` — ``tls`` after 20 KB each way (a roster result, say), then idle: what the
  memory BIOs keep of it;
* ``tls-burst-unsliced`` — the same with the whole 20 KB written into the BIOs at once (the
  layer before `shared.tls.session.SLICE`);
* ``tls-fresh`` — a server session before any handshake (what ``SSL_new`` and the two
  memory BIOs cost by themselves);
* ``tls-lean`` — ``tls`` with a `KeyLog` (``STANZAD_TLS_LEAN_SESSIONS=true``) after its
  hand-over to `shared.tls.records.Records13`, records flowing (both AEAD contexts made);
* ``tls-lean-hibernated`` — the same after `TLSSession.hibernate` dropped the AEAD contexts;
* ``tls-lean-burst`` — ``tls-lean`` after 20 KB each way;
* ``parser`` — a `StreamParser` that has read a stream header and one stanza (awake);
* ``parser-hibernated`` — the same after `hibernate()` (what an idle session keeps);
* ``idle``, ``idle-lean`` — what an idle connection keeps of the two, side by side: the TLS
  session after the connection's hibernation (`TLSSession.hibernate`) and the hibernated
  parser, with the default (OpenSSL for the whole session) and with lean sessions on.

No sockets: the figures are the floor under `python -m loadtest idle`, which adds the TCP
transport, the session objects and allocator fragmentation.  loadtest/RESULTS.md has them.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

from shared.tls import session as tls_session
from shared.tls.context import ensure_self_signed, server_context
from shared.tls.keylog import KeyLog
from shared.tls.session import TLSSession
from shared.xmpp.parser import POST_AUTH_LIMITS, StreamParser

HEADER = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    b"to='example.org' version='1.0'>"
)
STANZA = (
    b"<presence><show>away</show><c xmlns='http://jabber.org/protocol/caps' ver='x'/></presence>"
)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _trim() -> None:
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


BURST = 20_000


def _tls_maker(
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    *,
    tickets: int = 0,
    burst: int = 0,
    sliced: bool = True,
    handshake: bool = True,
    lean: bool = False,
    hibernate: bool = False,
) -> Callable[[], object]:
    workdir = Path(tempfile.mkdtemp(prefix="stanzad-connmem-"))
    cert, key = str(workdir / "cert.pem"), str(workdir / "key.pem")
    ensure_self_signed(cert, key, "example.org")
    server_ctx = server_context(cert, key, session_tickets=tickets)
    server_ctx.maximum_version = max_version
    client_ctx = ssl.create_default_context(cafile=cert)
    keylog = KeyLog() if lean else None
    if keylog is not None:
        keylog.attach(server_ctx)

    def make() -> object:
        server = TLSSession(server_ctx, keylog=keylog)
        if not handshake:
            return server
        client = TLSSession(client_ctx, server_side=False, server_hostname="example.org")
        client.start()
        for _ in range(10):
            server.receive(client.data_to_send())
            client.receive(server.data_to_send())
            if server.established and client.established:
                break
        client.send(HEADER)
        assert server.receive(client.data_to_send()) == HEADER
        server.send(HEADER)
        client.receive(server.data_to_send())
        if lean:  # the hand-over happens when a session goes idle; then records flow again
            assert server.hibernate() and server.lean
            client.send(HEADER)
            assert server.receive(client.data_to_send()) == HEADER
            server.send(HEADER)
            client.receive(server.data_to_send())
        if burst:
            with mock.patch.object(tls_session, "SLICE", tls_session.SLICE if sliced else burst):
                client.send(b"x" * burst)
                assert len(server.receive(client.data_to_send())) == burst
                server.send(b"y" * burst)
                assert len(client.receive(server.data_to_send())) == burst
        if hibernate:
            server.hibernate()  # hands nothing over without a key log: as a connection does
        return server  # the client goes away

    return make


def _parser(hibernate: bool) -> Callable[[], object]:
    def make() -> object:
        parser = StreamParser(POST_AUTH_LIMITS)
        parser.feed(HEADER)
        parser.feed(STANZA)
        if hibernate:
            assert parser.hibernate()
        return parser

    return make


def _idle(lean: bool) -> Callable[[], object]:
    tls, parser = _tls_maker(lean=lean, hibernate=True), _parser(True)

    def make() -> object:
        return tls(), parser()

    return make


PIECES: dict[str, Callable[[], Callable[[], object]]] = {
    "tls": lambda: _tls_maker(),
    "tls12": lambda: _tls_maker(ssl.TLSVersion.TLSv1_2),
    "tls-tickets2": lambda: _tls_maker(tickets=2),
    "tls-burst": lambda: _tls_maker(burst=BURST),
    "tls-burst-unsliced": lambda: _tls_maker(burst=BURST, sliced=False),
    "tls-fresh": lambda: _tls_maker(handshake=False),
    "tls-lean": lambda: _tls_maker(lean=True),
    "tls-lean-hibernated": lambda: _tls_maker(lean=True, hibernate=True),
    "tls-lean-burst": lambda: _tls_maker(lean=True, burst=BURST),
    "parser": lambda: _parser(False),
    "parser-hibernated": lambda: _parser(True),
    "idle": lambda: _idle(False),
    "idle-lean": lambda: _idle(True),
}


def measure(piece: str, n: int) -> float:
    """KiB of RSS per instance of `piece`, n instances alive at once."""
    make = PIECES[piece]()
    for _ in range(50):  # warm-up: one-off allocations (caches, interned names) not counted
        make()
    _trim()
    before = _rss_kib()
    alive = [make() for _ in range(n)]
    _trim()
    after = _rss_kib()
    del alive
    return (after - before) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="instances of each piece (max 20,000)")
    ap.add_argument("pieces", nargs="*", help=f"of {', '.join(PIECES)} (default: all)")
    args = ap.parse_args()
    unknown = set(args.pieces) - set(PIECES)
    if unknown:
        ap.error(f"unknown piece(s): {', '.join(sorted(unknown))}")
    n = max(1, min(args.n, 20_000))
    print(f"| piece | KiB each (n = {n:,}) |\n|---|---|")
    for piece in args.pieces or PIECES:
        print(f"| {piece} | {measure(piece, n):.2f} |", flush=True)


if __name__ == "__main__":
    main()
