"""Server CPU per TLS handshake and per small record, in-process, for each c2s TLS backend.

`python -m loadtest.tls_bench [-n 300] [-r 20000] [backend ...]` runs, for each backend, n
full handshakes (a CPython ``ssl`` client over memory BIOs, TLS 1.3, the same self-signed
P-256 certificate the load tool's servers use) and then r record round trips on one session
(a ~300 B stanza in, one out), and prints the *server side's* CPU per operation: the client's
work is done outside the timed calls.

Backends:

* ``ssl`` — `shared.tls.session.TLSSession` over `shared.tls.context.server_context` (the c2s layer:
  CPython's ``ssl``, the system OpenSSL, no session tickets);
* ``ssl-lean`` — the same with a `KeyLog` (``STANZAD_TLS_LEAN_SESSIONS``): OpenSSL's
  handshake, then `shared.tls.records.Records13` on ``cryptography``'s AEADs;
* ``ssl-tickets2`` — the same with OpenSSL's default of two TLS 1.3 session tickets;
* ``pyopenssl`` — `PyOpenSSLSession` below: pyOpenSSL on the OpenSSL ``cryptography``
  bundles, same policy, ``SSL_MODE_RELEASE_BUFFERS``, no tickets, no session cache;
* ``pyopenssl-cffi`` — the same, with the record path calling OpenSSL through cffi directly
  (no pyOpenSSL wrapper per call, a reused read buffer): what OpenSSL itself costs.

`loadtest.conn_memory` measures the same backends' memory per idle session.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Callable
from typing import Any, Final

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi  # benchmark only: the record path without wrappers
from OpenSSL._util import lib as _lib

from loadtest import tls_harness
from loadtest.tls_harness import STANZA, Client, Session, certificate
from shared.tls.context import TLS12_CIPHERS, server_context
from shared.tls.keylog import KeyLog
from shared.tls.session import TLSSession

MAX_SECONDS: Final = 20.0  # per backend and phase: the loops stop early past it


class PyOpenSSLSession:
    """A server-side session on pyOpenSSL over its memory BIOs (the `TLSSession` interface)."""

    __slots__ = ("_conn", "established")

    def __init__(self, ctx: SSL.Context) -> None:
        self._conn = SSL.Connection(ctx, None)
        self._conn.set_accept_state()
        self.established = False

    def receive(self, data: bytes) -> bytes:
        conn = self._conn
        conn.bio_write(data)
        if not self.established:
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                return b""
            self.established = True
        out = []
        while True:
            try:
                out.append(conn.recv(16 * 1024))
            except (SSL.WantReadError, SSL.ZeroReturnError):
                break
        return b"".join(out)

    def send(self, data: bytes) -> None:
        self._conn.send(data)

    def data_to_send(self) -> bytes:
        out = []
        while True:
            try:
                out.append(self._conn.bio_read(64 * 1024))
            except SSL.WantReadError:
                break
        return b"".join(out)


_BUF: Any = _ffi.new("char[]", 64 * 1024)


class CffiSession(PyOpenSSLSession):
    """`PyOpenSSLSession` with the record path straight on OpenSSL (benchmark only)."""

    __slots__ = ()

    def receive(self, data: bytes) -> bytes:
        if not self.established:
            return super().receive(data)
        conn: Any = self._conn
        _lib.BIO_write(conn._into_ssl, data, len(data))
        out = []
        while (n := _lib.SSL_read(conn._ssl, _BUF, 16 * 1024)) > 0:
            out.append(_ffi.buffer(_BUF, n)[:])
        _lib.ERR_clear_error()
        return b"".join(out)

    def send(self, data: bytes) -> None:
        conn: Any = self._conn
        _lib.SSL_write(conn._ssl, data, len(data))

    def data_to_send(self) -> bytes:
        if not self.established:
            return super().data_to_send()
        conn: Any = self._conn
        n = _lib.BIO_read(conn._from_ssl, _BUF, 64 * 1024)
        return _ffi.buffer(_BUF, n)[:] if n > 0 else b""


def pyopenssl_context(cert: str, key: str) -> SSL.Context:
    """`shared.tls.context.server_context`'s policy on pyOpenSSL, tuned for memory."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_NO_TICKET  # TLS 1.3: stateful tickets, which need the (disabled) cache
    )
    ctx.set_cipher_list(TLS12_CIPHERS.encode())
    ctx.use_certificate_chain_file(cert)
    ctx.use_privatekey_file(key)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return ctx


def makers(cert: str, key: str) -> dict[str, Callable[[], Session]]:
    """A new server-side session of each backend."""
    plain = server_context(cert, key)
    tickets = server_context(cert, key, session_tickets=2)
    py = pyopenssl_context(cert, key)
    lean = server_context(cert, key)
    keylog = KeyLog()
    keylog.attach(lean)
    return {
        "ssl": lambda: TLSSession(plain),
        "ssl-lean": lambda: TLSSession(lean, keylog=keylog),
        "ssl-tickets2": lambda: TLSSession(tickets),
        "pyopenssl": lambda: PyOpenSSLSession(py),
        "pyopenssl-cffi": lambda: CffiSession(py),
    }


def handshakes(make: Callable[[], Session], client: Client, n: int) -> float:
    """Server CPU seconds per handshake (`tls_harness.handshakes`, bounded by MAX_SECONDS)."""
    return tls_harness.handshakes(make, client, n, MAX_SECONDS)


def records(make: Callable[[], Session], client: Client, n: int) -> float:
    """Server CPU seconds per record round trip (`tls_harness.records`)."""
    return tls_harness.records(make, client, n, MAX_SECONDS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=300, help="handshakes per backend (max 5,000)")
    ap.add_argument("-r", type=int, default=20_000, help="records per backend (max 200,000)")
    cert, key = certificate("stanzad-tlsbench-")
    backends = makers(cert, key)
    ap.add_argument("backends", nargs="*", help=f"of {', '.join(backends)} (default: all)")
    args = ap.parse_args()
    unknown = set(args.backends) - set(backends)
    if unknown:
        ap.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    n, r = max(1, min(args.n, 5000)), max(1, min(args.r, 200_000))
    client = Client(cert)
    print(f"server CPU; {n:,} handshakes (TLS 1.3, P-256 certificate), {r:,} records of "
          f"{len(STANZA)} B in + out")
    print("| backend | OpenSSL | handshakes/CPU-s | µs/handshake | records/CPU-s | µs/record |")
    print("|---|---|---|---|---|---|")
    for name in args.backends or backends:
        make = backends[name]
        version = ssl.OPENSSL_VERSION if name.startswith("ssl") else SSL.SSLeay_version(
            SSL.SSLEAY_VERSION
        ).decode()
        hs = handshakes(make, client, n)
        rec = records(make, client, r)
        print(f"| {name} | {version.split()[1]} | {1 / hs:,.0f} | {hs * 1e6:.0f} | "
              f"{1 / rec:,.0f} | {rec * 1e6:.2f} |", flush=True)


if __name__ == "__main__":
    main()
