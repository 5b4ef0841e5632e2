"""Server-side TLS over memory buffers (pyOpenSSL), sans-I/O: ciphertext in, plaintext out.

Why not the standard library's ``ssl``: an s2s listener must *ask* the peer for its
certificate (SASL EXTERNAL, XEP-0178) without failing the handshake of the many peers whose
certificates it cannot verify (they go on with dialback, XEP-0220).  ``ssl`` offers only
CERT_OPTIONAL, which still aborts the handshake on a certificate it cannot verify.  OpenSSL's
verify callback can accept every certificate; the chain and the name are then checked by
`shared.tls.peer_cert` once the peer has said which domain it claims.

    tls = ServerTLS(server_context(cert, key, alpn=...))
    plaintext = tls.receive_data(ciphertext)   # raises TLSFailed
    tls.send(plaintext); wire = tls.data_to_send()
    if tls.handshake_done: leaf, chain = tls.peer_chain()

Same policy as `shared.tls.context.server_context` (RFC 7525): TLS 1.2 or newer, ECDHE with AEAD
suites, no compression, no renegotiation.

Certificates per domain: `choose_by_sni` makes a context hand each handshake to the context of
the name the client sent in SNI (RFC 6066 §3), or, when it sent none, of the name the
connection was given (``ServerTLS(ctx, name)``: an s2s stream header's 'to', known before
STARTTLS).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Final

from cryptography import x509
from OpenSSL import SSL

from shared.tls.context import TLS12_CIPHERS, CertificateProblem, check_certificate

READ_CHUNK: Final = 64 * 1024
SESSION_ID_CONTEXT: Final = b"stanzad-s2s"


class TLSFailed(ConnectionError):
    """The TLS layer failed (handshake or record error); the connection must close."""


def _accept_any(_conn: SSL.Connection, _cert: object, _errno: int, _depth: int, _ok: int) -> bool:
    return True  # the chain is checked later, against the domain the peer claims


def server_context(cert_path: str, key_path: str, alpn: Sequence[bytes] = ()) -> SSL.Context:
    """A server context that requests, but never requires nor rejects, a client certificate.
    ``alpn``: protocols we accept when the client offers ALPN (XEP-0368 §3: xmpp-server)."""
    check_certificate(cert_path)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
    )
    ctx.set_cipher_list(TLS12_CIPHERS.encode())
    try:
        ctx.use_certificate_chain_file(cert_path)
        ctx.use_privatekey_file(key_path)
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise CertificateProblem(f"{cert_path} / {key_path}: {exc}") from None
    ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
    ctx.set_session_id(SESSION_ID_CONTEXT)  # needed once client certificates are requested
    if alpn:
        wanted = list(alpn)
        ctx.set_alpn_select_callback(_alpn_selector(wanted))
    return ctx


def _alpn_selector(wanted: list[bytes]) -> Callable[[SSL.Connection, list[bytes]], bytes]:
    def select(_conn: SSL.Connection, offered: list[bytes]) -> bytes:
        for proto in wanted:
            if proto in offered:
                return proto
        return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[no-any-return]

    return select


def choose_by_sni(ctx: SSL.Context, pick: Callable[[str], SSL.Context | None]) -> None:
    """Handshakes on ``ctx`` go on with ``pick(name)`` when it is not None: ``name`` is the
    SNI host name (RFC 6066 §3), else the connection's own (`ServerTLS`), else ''.  OpenSSL
    asks on every ClientHello, with SNI or without; the certificate and key switch, the other
    settings should match (the same `server_context` makes both)."""

    def on_client_hello(conn: SSL.Connection) -> None:
        sent = conn.get_servername()
        name = sent.decode("ascii", "replace") if sent else str(conn.get_app_data() or "")
        chosen = pick(name) if name else None
        if chosen is not None:
            conn.set_context(chosen)

    ctx.set_tlsext_servername_callback(on_client_hello)


class ServerTLS:
    """One server-side TLS connection over memory BIOs; ``name``: the domain whose
    certificate to present when the client sends no SNI (`choose_by_sni`)."""

    def __init__(self, ctx: SSL.Context, name: str = "") -> None:
        self._conn = SSL.Connection(ctx, None)
        self._conn.set_app_data(name)
        self._conn.set_accept_state()
        self.handshake_done = False
        self.peer_closed = False  # close_notify received

    def receive_data(self, data: bytes) -> bytes:
        """Feed ciphertext; returns the plaintext it completed (maybe b'')."""
        if data:
            self._conn.bio_write(data)
        try:
            if not self.handshake_done:
                try:
                    self._conn.do_handshake()
                except SSL.WantReadError:
                    return b""
                self.handshake_done = True
            out = []
            while True:
                try:
                    chunk = self._conn.recv(READ_CHUNK)
                except SSL.WantReadError:
                    break
                except SSL.ZeroReturnError:
                    self.peer_closed = True
                    break
                if not chunk:
                    break
                out.append(chunk)
            return b"".join(out)
        except SSL.Error as exc:
            raise TLSFailed(f"TLS failed: {_reason(exc)}") from None

    def send(self, plaintext: bytes) -> None:
        if not self.handshake_done:
            raise RuntimeError("TLS handshake not complete")
        view = memoryview(plaintext)
        try:
            while view:
                n = self._conn.send(view[:READ_CHUNK])
                view = view[n:]
        except SSL.Error as exc:
            raise TLSFailed(f"TLS failed: {_reason(exc)}") from None

    def data_to_send(self) -> bytes:
        out = []
        while True:
            try:
                chunk = self._conn.bio_read(READ_CHUNK)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out.append(chunk)
        return b"".join(out)

    def close(self) -> None:
        """Queue our close_notify."""
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()

    def peer_chain(self) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]] | None:
        """The peer's certificate and the other certificates it sent, unverified; None when
        it sent none."""
        leaf = self._conn.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            return None
        # on the server side OpenSSL's peer chain does not hold the leaf
        chain = self._conn.get_peer_cert_chain(as_cryptography=True) or []
        return leaf, tuple(c for c in chain if c != leaf)

    @property
    def server_name(self) -> str:
        """The SNI host name the client sent ('' if none)."""
        sent = self._conn.get_servername()
        return sent.decode("ascii", "replace") if sent else ""

    @property
    def version(self) -> str:
        return str(self._conn.get_protocol_version_name())

    @property
    def alpn(self) -> bytes:
        return bytes(self._conn.get_alpn_proto_negotiated() or b"")


def _reason(exc: SSL.Error) -> str:
    args = exc.args[0] if exc.args else ""
    if isinstance(args, list) and args and isinstance(args[0], tuple):
        return "; ".join(str(part[-1]) for part in args)
    return str(exc) or type(exc).__name__
