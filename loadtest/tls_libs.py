"""Leaner TLS libraries than OpenSSL for c2s: memory per idle server session and server CPU.

`python -m loadtest.tls_libs [-n 2000] [--handshakes 300] [--records 20000] [backend ...]`
builds, for each backend, n server sessions that each finished a full handshake with a CPython
``ssl`` client (the load tool's TLS stack) over memory buffers and carried one ~300 B record
each way, keeps them alive, and prints per session:

* the RSS growth and the malloc heap growth (``mallinfo2`` bytes in use), both after
  ``malloc_trim``, the way `loadtest.conn_memory` measures (handshake scratch is not counted);
* the server side's CPU per handshake (the session's construction included) and per record
  round trip (one stanza in, one out), the way `loadtest.tls_bench` measures;
* with ``--burst BYTES``, the memory after that many bytes each way (one write each side):
  what a library keeps of buffers that were once large;
* the negotiated version and suite (the interop check: every row is a CPython ``ssl``
  client talking to that library).

Backends (one whose library, or the library feature it needs, is missing is reported as not
available and skipped):

* ``openssl`` / ``openssl-tls12`` — `shared.tls_session.TLSSession` over
  `shared.tls.server_context` (today's c2s layer, the system OpenSSL);
* ``wolfssl`` / ``wolfssl-tls12`` — wolfSSL through ctypes over its OpenSSL-style memory BIOs
  (`WolfSSLSession` below).  The PyPI module ``wolfssl`` only wraps sockets and cannot be used
  here (loadtest/RESULTS.md has why); this drives the same C library, found as
  ``libwolfssl.so`` (Debian's ``libwolfssl35``) or at ``$STANZAD_WOLFSSL_LIB`` (a build of
  one's own), with no session cache and no tickets;
* ``openssl-socket`` / ``wolfssl-module`` — memory only: CPython ``ssl`` and the PyPI module
  ``wolfssl`` each wrapping the server end of a `socket.socketpair` (`SocketSessions`), the
  only way that module can be driven;
* ``wolfssl-native`` — the same library on its own I/O callbacks instead of BIOs
  (`WolfSSLNativeSession`): works with a build without the OpenSSL compatibility layer
  (``--enable-opensslextra``), which makes every session ~3 KiB smaller;
* ``mbedtls`` — python-mbedtls's sans-I/O ``TLSWrappedBuffer`` (its wheel bundles Mbed TLS
  2.28, which has no TLS 1.3: the row is TLS 1.2).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from loadtest import tls_harness
from loadtest.conn_memory import _rss_kib, _trim
from loadtest.tls_harness import DOMAIN, STANZA, Client, TLSFailed, certificate
from shared.tls import server_context
from shared.tls_session import TLSSession

MAX_SECONDS: Final = 15.0  # per backend and phase: the loops stop early past it
_READ: Final = 16 * 1024


class Session(tls_harness.Session, Protocol):
    def describe(self) -> str: ...


# --- OpenSSL (today's layer) ---------------------------------------------------------------


class OpenSSLSession(TLSSession):
    __slots__ = ()

    def describe(self) -> str:
        tls: Any = self._tls
        return f"{tls.version()} {tls.cipher()[0]}"


# --- wolfSSL through ctypes ----------------------------------------------------------------

_WOLF_WANT_READ: Final = 2  # SSL_ERROR_WANT_READ
_WOLF_WANT_WRITE: Final = 3
_WOLF_ZERO_RETURN: Final = 6
_WOLF_FILETYPE_PEM: Final = 1
_WOLF_TLSV1_2: Final = 3  # WOLFSSL_TLSV1_2 for wolfSSL_CTX_SetMinVersion
_WOLF_CIPHERS: Final = (
    "TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305"
)


_WOLF_BIO: Final = (  # the OpenSSL compatibility layer (--enable-opensslextra) only
    "wolfSSL_BIO_s_mem", "wolfSSL_BIO_new", "wolfSSL_set_bio", "wolfSSL_BIO_write",
    "wolfSSL_BIO_read", "wolfSSL_BIO_ctrl_pending",
)
_WOLF_OPTIONAL: Final = frozenset({
    "wolfSSL_CTX_no_ticket_TLSv13", "wolfSSL_CTX_NoTicketTLSv12", "wolfSSL_get_curve_name",
    *_WOLF_BIO,
})
_WOLF_CBIO_WANT_READ: Final = -2  # WOLFSSL_CBIO_ERR_WANT_READ
_IORecv = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p
)


def _wolf_lib() -> Any | None:
    name = os.environ.get("STANZAD_WOLFSSL_LIB") or ctypes.util.find_library("wolfssl")
    if not name:
        return None
    lib: Any = ctypes.CDLL(name)
    vp, i, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for fn, res, args in [
        ("wolfSSL_Init", i, []),
        ("wolfSSL_lib_version", cp, []),
        ("wolfSSLv23_server_method", vp, []),
        ("wolfTLSv1_2_server_method", vp, []),
        ("wolfSSL_CTX_new", vp, [vp]),
        ("wolfSSL_CTX_SetMinVersion", i, [vp, i]),
        ("wolfSSL_CTX_use_certificate_chain_file", i, [vp, cp]),
        ("wolfSSL_CTX_use_PrivateKey_file", i, [vp, cp, i]),
        ("wolfSSL_CTX_set_cipher_list", i, [vp, cp]),
        ("wolfSSL_CTX_set_verify", None, [vp, i, vp]),
        ("wolfSSL_CTX_no_ticket_TLSv13", i, [vp]),
        ("wolfSSL_CTX_NoTicketTLSv12", i, [vp]),
        ("wolfSSL_CTX_set_session_cache_mode", ctypes.c_long, [vp, ctypes.c_long]),
        ("wolfSSL_new", vp, [vp]),
        ("wolfSSL_free", None, [vp]),
        ("wolfSSL_BIO_s_mem", vp, []),
        ("wolfSSL_BIO_new", vp, [vp]),
        ("wolfSSL_set_bio", None, [vp, vp, vp]),
        ("wolfSSL_BIO_write", i, [vp, cp, i]),
        ("wolfSSL_BIO_read", i, [vp, vp, i]),
        ("wolfSSL_BIO_ctrl_pending", ctypes.c_size_t, [vp]),
        ("wolfSSL_accept", i, [vp]),
        ("wolfSSL_read", i, [vp, vp, i]),
        ("wolfSSL_write", i, [vp, cp, i]),
        ("wolfSSL_get_error", i, [vp, i]),
        ("wolfSSL_get_version", cp, [vp]),
        ("wolfSSL_get_cipher", cp, [vp]),
        ("wolfSSL_get_curve_name", cp, [vp]),
        ("wolfSSL_CTX_SetIORecv", None, [vp, _IORecv]),
        ("wolfSSL_CTX_SetIOSend", None, [vp, _IORecv]),
    ]:
        try:
            f = getattr(lib, fn)
        except AttributeError:  # a build without that feature (tickets, curve names)
            if fn not in _WOLF_OPTIONAL:
                raise
            continue
        f.restype, f.argtypes = res, args
    lib.wolfSSL_Init()
    lib.path = name
    return lib


_WOLF: Any | None = None
_WOLF_LOADED = False


def wolf() -> Any | None:
    """The ctypes handle on libwolfssl, or None when it is not installed."""
    global _WOLF, _WOLF_LOADED
    if not _WOLF_LOADED:
        _WOLF, _WOLF_LOADED = _wolf_lib(), True
    return _WOLF


class WolfSSLContext:
    """`shared.tls.server_context`'s policy on wolfSSL: TLS 1.2+, ECDHE + AEAD, no tickets."""

    def __init__(self, cert: str, key: str, *, tls12_only: bool = False) -> None:
        lib = wolf()
        if lib is None:
            raise RuntimeError("libwolfssl is not installed")
        method = lib.wolfTLSv1_2_server_method() if tls12_only else lib.wolfSSLv23_server_method()
        ctx = lib.wolfSSL_CTX_new(method)
        checks = [
            lib.wolfSSL_CTX_SetMinVersion(ctx, _WOLF_TLSV1_2),
            lib.wolfSSL_CTX_use_certificate_chain_file(ctx, cert.encode()),
            lib.wolfSSL_CTX_use_PrivateKey_file(ctx, key.encode(), _WOLF_FILETYPE_PEM),
            lib.wolfSSL_CTX_set_cipher_list(ctx, _WOLF_CIPHERS.encode()),
        ]
        if checks != [1, 1, 1, 1]:
            raise TLSFailed(f"wolfSSL context setup failed: {checks}")
        lib.wolfSSL_CTX_set_verify(ctx, 0, None)  # servers do not ask for client certificates
        for no_tickets in ("wolfSSL_CTX_no_ticket_TLSv13", "wolfSSL_CTX_NoTicketTLSv12"):
            if hasattr(lib, no_tickets):  # else built without tickets
                getattr(lib, no_tickets)(ctx)
        lib.wolfSSL_CTX_set_session_cache_mode(ctx, 0)  # WOLFSSL_SESS_CACHE_OFF
        self.lib, self.ctx = lib, ctx
        self.buf = ctypes.create_string_buffer(64 * 1024)  # one scratch buffer for all reads


class WolfSSLSession:
    """A server-side wolfSSL session over two memory BIOs (the `TLSSession` interface)."""

    __slots__ = ("_c", "_in", "_out", "_ssl", "established")

    def __init__(self, context: WolfSSLContext) -> None:
        lib = context.lib
        self._c = context
        self._ssl = lib.wolfSSL_new(context.ctx)
        self._in = lib.wolfSSL_BIO_new(lib.wolfSSL_BIO_s_mem())
        self._out = lib.wolfSSL_BIO_new(lib.wolfSSL_BIO_s_mem())
        lib.wolfSSL_set_bio(self._ssl, self._in, self._out)  # the session frees them
        self.established = False

    def __del__(self) -> None:
        self._c.lib.wolfSSL_free(self._ssl)

    def _fail(self, ret: int, what: str) -> int:
        err = self._c.lib.wolfSSL_get_error(self._ssl, ret)
        if err in (_WOLF_WANT_READ, _WOLF_WANT_WRITE, _WOLF_ZERO_RETURN):
            return err
        raise TLSFailed(f"wolfSSL {what}: error {err}")

    def receive(self, data: bytes) -> bytes:
        c = self._c
        lib = c.lib
        lib.wolfSSL_BIO_write(self._in, data, len(data))
        if not self.established:
            ret = lib.wolfSSL_accept(self._ssl)
            if ret != 1:
                self._fail(ret, "accept")
                return b""
            self.established = True
        chunks = []
        while (n := lib.wolfSSL_read(self._ssl, c.buf, _READ)) > 0:
            chunks.append(c.buf.raw[:n] if n > 4096 else ctypes.string_at(c.buf, n))
        self._fail(n, "read")
        return b"".join(chunks)

    def send(self, data: bytes) -> None:
        if self._c.lib.wolfSSL_write(self._ssl, data, len(data)) != len(data):
            raise TLSFailed("wolfSSL write failed")

    def data_to_send(self) -> bytes:
        lib = self._c.lib
        n = lib.wolfSSL_BIO_ctrl_pending(self._out)
        if not n:
            return b""
        buf = ctypes.create_string_buffer(n) if n > len(self._c.buf) else self._c.buf
        got = lib.wolfSSL_BIO_read(self._out, buf, n)
        return ctypes.string_at(buf, got)

    def describe(self) -> str:
        lib = self._c.lib
        name = getattr(lib, "wolfSSL_get_curve_name", None)
        curve = (name(self._ssl) if name else None) or b"?"
        return (
            f"{lib.wolfSSL_get_version(self._ssl).decode()} "
            f"{lib.wolfSSL_get_cipher(self._ssl).decode()} ({curve.decode()})"
        )


class WolfSSLNativeContext(WolfSSLContext):
    """The same policy with wolfSSL's own I/O callbacks: no OpenSSL compatibility layer needed.

    wolfSSL calls back for every read and write; the callbacks work on the session whose
    call is running (`WolfSSLNativeSession` sets it: one thread, synchronous calls).
    """

    current: WolfSSLNativeSession | None = None

    def __init__(self, cert: str, key: str) -> None:
        super().__init__(cert, key)
        self._recv, self._send = _IORecv(self._on_recv), _IORecv(self._on_send)  # kept alive
        self.lib.wolfSSL_CTX_SetIORecv(self.ctx, self._recv)
        self.lib.wolfSSL_CTX_SetIOSend(self.ctx, self._send)

    def _on_recv(self, _ssl: int, buf: int, size: int, _ctx: int) -> int:
        session = self.current
        if session is None or not session._in:
            return _WOLF_CBIO_WANT_READ
        pending = session._in
        n = min(size, len(pending))
        ctypes.memmove(buf, bytes(pending[:n]), n)
        del pending[:n]
        return n

    def _on_send(self, _ssl: int, buf: int, size: int, _ctx: int) -> int:
        session = self.current
        if session is None:
            return -1  # WOLFSSL_CBIO_ERR_GENERAL
        session._out += ctypes.string_at(buf, size)
        return size


class WolfSSLNativeSession:
    """A server-side wolfSSL session on its I/O callbacks (the `TLSSession` interface)."""

    __slots__ = ("_c", "_in", "_out", "_ssl", "established")

    def __init__(self, context: WolfSSLNativeContext) -> None:
        self._c = context
        self._ssl = context.lib.wolfSSL_new(context.ctx)
        self._in = bytearray()
        self._out = bytearray()
        self.established = False

    def __del__(self) -> None:
        self._c.lib.wolfSSL_free(self._ssl)

    def receive(self, data: bytes) -> bytes:
        c = self._c
        lib = c.lib
        self._in += data
        c.current = self
        try:
            if not self.established:
                ret = lib.wolfSSL_accept(self._ssl)
                if ret != 1:
                    WolfSSLSession._fail(self, ret, "accept")  # type: ignore[arg-type]
                    return b""
                self.established = True
            chunks = []
            while (n := lib.wolfSSL_read(self._ssl, c.buf, _READ)) > 0:
                chunks.append(ctypes.string_at(c.buf, n))
            WolfSSLSession._fail(self, n, "read")  # type: ignore[arg-type]
        finally:
            c.current = None
        return b"".join(chunks)

    def send(self, data: bytes) -> None:
        c = self._c
        c.current = self
        try:
            if c.lib.wolfSSL_write(self._ssl, data, len(data)) != len(data):
                raise TLSFailed("wolfSSL write failed")
        finally:
            c.current = None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    describe = WolfSSLSession.describe


# --- Mbed TLS through python-mbedtls -------------------------------------------------------


def mbedtls_context(cert: str, key: str) -> Any:
    from mbedtls import pk, x509
    from mbedtls import tls as mtls

    chain = [x509.CRT.from_PEM(Path(cert).read_text())]
    private = pk.ECC.from_PEM(Path(key).read_text())
    conf = mtls.TLSConfiguration(
        certificate_chain=(chain, private),
        validate_certificates=False,
        ciphers=[
            "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256",
            "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384",
            "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256",
        ],
        lowest_supported_version=mtls.TLSVersion.TLSv1_2,
        highest_supported_version=mtls.TLSVersion.TLSv1_2,
    )
    return mtls.ServerContext(conf)


class MbedTLSSession:
    """A server-side python-mbedtls ``TLSWrappedBuffer`` (the `TLSSession` interface)."""

    __slots__ = ("_buf", "established")

    def __init__(self, context: Any) -> None:
        self._buf = context.wrap_buffers()
        self.established = False

    def receive(self, data: bytes) -> bytes:
        from mbedtls.tls import WantReadError, WantWriteError

        buf = self._buf
        buf.receive_from_network(data)
        if not self.established:
            try:
                buf.do_handshake()
            except (WantReadError, WantWriteError):
                return b""
            self.established = True
        chunks = []
        try:
            while chunk := buf.read(_READ):
                chunks.append(chunk)
        except (WantReadError, WantWriteError):
            pass
        return b"".join(chunks)

    def send(self, data: bytes) -> None:
        self._buf.write(data)

    def data_to_send(self) -> bytes:
        buf = self._buf
        out = buf.peek_outgoing(64 * 1024)
        buf.consume_outgoing(len(out))
        return bytes(out)

    def describe(self) -> str:
        return f"{self._buf.negotiated_tls_version().name} {self._buf.cipher()}"


# --- socket-only APIs: the PyPI ``wolfssl`` module, and CPython ``ssl`` the same way ------


def _socket_server(backend: str, cert: str, key: str) -> Callable[[socket.socket], Any]:
    """Wrap the server end of a connected socket: the module's API, or CPython's for scale."""
    if backend == "wolfssl-module":
        import wolfssl

        wctx = wolfssl.SSLContext(wolfssl.PROTOCOL_TLS, server_side=True)
        wctx.load_cert_chain(cert, key)
        return lambda sock: wctx.wrap_socket(sock, server_side=True,
                                             do_handshake_on_connect=False)
    ctx = server_context(cert, key)
    return lambda sock: ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


def _pump(step: Callable[[], Any], tries: int = 50) -> Any:
    """Call a non-blocking step until it stops wanting I/O (the peer is in the same thread)."""
    for _ in range(tries):
        try:
            return step()
        except OSError as exc:  # ssl's and the wolfssl module's SSLWant*Error alike
            if "Want" not in type(exc).__name__:
                raise
    raise TLSFailed(f"{step} still wants I/O after {tries} tries")


class SocketSessions:
    """Server sessions over `socket.socketpair`, a CPython ``ssl`` client on the other end.

    For APIs that only wrap sockets: the row counts the library's session plus its Python
    socket object (kernel socket buffers are not in RSS).  The client is closed after the
    first record each way, the server end stays open.
    """

    def __init__(self, backend: str, cert: str, key: str) -> None:
        self.wrap = _socket_server(backend, cert, key)
        self.client_ctx = ssl.create_default_context(cafile=cert)
        self.negotiated = ""

    def __call__(self) -> Any:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        server = self.wrap(a)
        client = self.client_ctx.wrap_socket(b, server_hostname=DOMAIN,
                                             do_handshake_on_connect=False)
        done = [False, False]
        for _ in range(20):
            for i, side in enumerate((client, server)):
                if not done[i]:
                    try:
                        side.do_handshake()
                        done[i] = True
                    except OSError as exc:
                        if "Want" not in type(exc).__name__:
                            raise
            if all(done):
                break
        else:
            raise TLSFailed("no handshake over the socket pair")
        client.send(STANZA)
        got = _pump(lambda: server.recv(_READ))
        server.send(STANZA)
        back = _pump(lambda: client.recv(_READ))
        if got != STANZA or back != STANZA:
            raise TLSFailed("the first record did not make it both ways")
        self.negotiated = f"{client.version()} {client.cipher()[0]}"
        client.close()
        return server


def socket_memory(backend: str, n: int, cert: str, key: str) -> tuple[str, float, float]:
    """Negotiated version and suite, RSS and heap KiB per server session, n alive."""
    make = SocketSessions(backend, cert, key)
    for _ in range(50):
        make()
    _trim()
    rss, heap = _rss_kib(), _heap_bytes()
    alive = [make() for _ in range(n)]
    _trim()
    per_rss = (_rss_kib() - rss) / n
    per_heap = (_heap_bytes() - heap) / 1024 / n
    for server in alive:
        server.close()
    del alive
    _trim()
    return make.negotiated, per_rss, per_heap


# --- the measurements ----------------------------------------------------------------------


def _available(backend: str) -> bool:
    if backend == "wolfssl-module":
        import importlib

        try:  # the module imports even when its C extension does not load: ask for that
            importlib.import_module("wolfssl._ffi")
        except ImportError:  # not installed, or its libwolfssl cannot be loaded (another
            return False  # libwolfssl.so.35 already in this process, without DTLS 1.3)
        return True
    if backend.startswith("wolfssl"):
        lib = wolf()
        if lib is None:
            return False
        return backend == "wolfssl-native" or hasattr(lib, "wolfSSL_set_bio")
    if backend == "mbedtls":
        try:
            import mbedtls.tls  # noqa: F401
        except ImportError:
            return False
    return True


def makers(cert: str, key: str) -> dict[str, Callable[[], Callable[[], Session]] | None]:
    """For each backend, a builder of its session factory (None: the library is missing)."""

    def openssl(tls12: bool) -> Callable[[], Session]:
        ctx = server_context(cert, key)
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return lambda: OpenSSLSession(ctx)

    def wolfssl(tls12: bool) -> Callable[[], Session]:
        ctx = WolfSSLContext(cert, key, tls12_only=tls12)
        return lambda: WolfSSLSession(ctx)

    def wolfssl_native() -> Callable[[], Session]:
        ctx = WolfSSLNativeContext(cert, key)
        return lambda: WolfSSLNativeSession(ctx)

    def mbed() -> Callable[[], Session]:
        ctx = mbedtls_context(cert, key)
        return lambda: MbedTLSSession(ctx)

    every: dict[str, Callable[[], Callable[[], Session]]] = {
        "openssl": lambda: openssl(False),
        "openssl-tls12": lambda: openssl(True),
        "wolfssl": lambda: wolfssl(False),
        "wolfssl-tls12": lambda: wolfssl(True),
        "wolfssl-native": wolfssl_native,
        "mbedtls": mbed,
    }
    return {name: (build if _available(name) else None) for name, build in every.items()}


def library_version(backend: str) -> str:
    if backend == "wolfssl-module":
        import importlib

        from wolfssl import __version__

        ext = importlib.import_module("wolfssl._ffi").__file__  # the C library it links
        return f"PyPI wolfssl {__version__} ({Path(ext or '?').name})"
    if backend.startswith("openssl"):
        return ssl.OPENSSL_VERSION
    if backend.startswith("wolfssl"):
        lib = wolf()
        return f"wolfSSL {lib.wolfSSL_lib_version().decode()} ({lib.path})" if lib else "-"
    from mbedtls import version

    return str(version.version)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost",
    )]


_LIBC: Any = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _heap_bytes() -> int:
    """Bytes malloc has handed out (small chunks plus mmap'd ones), glibc only."""
    if not hasattr(_LIBC, "mallinfo2"):
        return 0
    _LIBC.mallinfo2.restype = _MallInfo2
    info = _LIBC.mallinfo2()
    return int(info.uordblks + info.hblkhd)


@dataclass
class Row:
    backend: str
    library: str
    negotiated: str
    rss_kib: float
    heap_kib: float
    handshake_us: float
    record_us: float


def _burst(server: Session, peer: TLSSession, size: int) -> None:
    """`size` bytes each way, each side writing them in one call (a roster, a backlog)."""
    blob = b"x" * size
    peer.send(blob)
    if len(server.receive(peer.data_to_send())) != size:
        raise TLSFailed("the burst did not arrive whole")
    server.send(blob)
    if len(peer.receive(server.data_to_send())) != size:
        raise TLSFailed("the burst did not come back whole")


def memory(
    make: Callable[[], Session], client: Client, n: int, burst: int = 0
) -> tuple[float, float]:
    """RSS and heap KiB per server session, n alive (the clients go away).

    With `burst`, each session has also carried that many bytes each way after its first
    record: what a library keeps of its buffers once they were large.
    """

    def build() -> Session:
        server = make()
        peer, _ = client.connect(server)
        if burst:
            _burst(server, peer, burst)
        return server

    for _ in range(50):  # one-off allocations (caches, interned names) not counted
        build()
    _trim()
    rss, heap = _rss_kib(), _heap_bytes()
    alive = []
    for _ in range(n):
        alive.append(build())
    _trim()
    per_rss = (_rss_kib() - rss) / n
    per_heap = (_heap_bytes() - heap) / 1024 / n
    del alive
    _trim()
    return per_rss, per_heap


def run(
    backend: str, n: int, hs: int, rec: int, cert: str, key: str, burst: int = 0
) -> Row | None:
    """One backend's row, or None when its library is not installed."""
    if backend in SOCKET_BACKENDS:
        if not _available(backend):
            return None
        negotiated, rss, heap = socket_memory(backend, n, cert, key)
        return Row(backend, library_version(backend), negotiated, rss, heap, math.nan, math.nan)
    build = makers(cert, key)[backend]
    if build is None:
        return None
    make = build()
    client = Client(cert)
    probe = make()
    client.connect(probe)
    rss, heap = memory(make, client, n, burst)
    return Row(
        backend, library_version(backend), probe.describe(), rss, heap,
        tls_harness.handshakes(make, client, hs, MAX_SECONDS) * 1e6,
        tls_harness.records(make, client, rec, MAX_SECONDS) * 1e6,
    )


SOCKET_BACKENDS: Final = ("openssl-socket", "wolfssl-module")
BACKENDS: Final = (
    "openssl", "openssl-tls12", "wolfssl", "wolfssl-tls12", "wolfssl-native", "mbedtls",
    *SOCKET_BACKENDS,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="sessions alive at once (max 20,000)")
    ap.add_argument("--handshakes", type=int, default=300, help="timed handshakes (max 5,000)")
    ap.add_argument("--records", type=int, default=20_000, help="timed records (max 200,000)")
    ap.add_argument("--burst", type=int, default=0,
                    help="bytes each way per session before measuring (max 1 MB; not for the "
                    "socket backends)")
    ap.add_argument("backends", nargs="*", help=f"of {', '.join(BACKENDS)} (default: all)")
    args = ap.parse_args()
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        ap.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    n = max(1, min(args.n, 20_000))
    hs = max(1, min(args.handshakes, 5000))
    rec = max(1, min(args.records, 200_000))
    cert, key = certificate("stanzad-tlslibs-")
    burst = f", then {args.burst:,} B each way" if args.burst else ""
    print(f"{n:,} server sessions alive (CPython ssl client, P-256 certificate, one "
          f"{len(STANZA)} B record each way{burst}); server CPU over {hs:,} handshakes, "
          f"{rec:,} records")
    print("| backend | library | negotiated | RSS KiB/session | heap KiB/session "
          "| µs/handshake | µs/record |")
    print("|---|---|---|---|---|---|---|")
    for backend in args.backends or BACKENDS:
        row = run(backend, n, hs, rec, cert, key, max(0, min(args.burst, 1_000_000)))
        if row is None:
            print(f"| {backend} | not available (library or build feature missing) "
                  "| | | | | |", flush=True)
            continue
        hs_us = "-" if math.isnan(row.handshake_us) else f"{row.handshake_us:.0f}"
        rec_us = "-" if math.isnan(row.record_us) else f"{row.record_us:.2f}"
        print(f"| {row.backend} | {row.library} | {row.negotiated} | {row.rss_kib:.2f} | "
              f"{row.heap_kib:.2f} | {hs_us} | {rec_us} |", flush=True)


if __name__ == "__main__":
    main()
