"""TLS channel bindings for SCRAM-*-PLUS and FAST (RFC 5929, RFC 9266), server side.

Three types, each only where its RFC allows it:

- ``tls-exporter`` (RFC 9266): 32 bytes of the TLS exporter (RFC 5705, RFC 8446 §7.5) with
  the label "EXPORTER-Channel-Binding" and no context; on TLS 1.3, and on TLS 1.2 only with
  the extended master secret (RFC 9266 §3, RFC 7627).  OpenSSL computes it
  (``SSL_export_keying_material``); CPython's ``ssl`` does not expose that call, so it is
  reached through ``ctypes`` in the same libssl that ``_ssl`` loaded, on the ``SSL`` of the
  connection's ``SSLObject``.  The pointer is taken from CPython's object and used only after
  OpenSSL confirms it: ``_ssl`` stores its own object as the ``SSL``'s application data
  (``SSL_get_ex_data(ssl, 0)``), so a pointer whose application data is not that object is
  never used.  Where any of this is missing (another Python, no /proc, a libssl of another
  version than ``_ssl``'s), ``tls-exporter`` is simply not offered.
- ``tls-unique`` (RFC 5929 §3): CPython's ``get_channel_binding``; TLS 1.2 only (RFC 9266
  §1: it is not defined for TLS 1.3).
- ``tls-server-end-point`` (RFC 5929 §4): the hash of the server's certificate, computed
  with ``cryptography``, any TLS version.

No cryptography of our own: the exporter is OpenSSL's, the certificate hash
``cryptography``'s.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
import sys
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes

log = logging.getLogger(__name__)

__all__ = ["EXPORTER", "SERVER_END_POINT", "UNIQUE", "TLSChannelBinding", "exporter",
           "server_end_point", "server_end_point_of_file"]

EXPORTER: Final = "tls-exporter"
UNIQUE: Final = "tls-unique"
SERVER_END_POINT: Final = "tls-server-end-point"

_LABEL: Final = b"EXPORTER-Channel-Binding"  # RFC 9266 §2
_LENGTH: Final = 32
_TLS13: Final = 0x0304
_TLS12: Final = 0x0303
_SSL_CTRL_GET_EXTMS_SUPPORT: Final = 122  # OpenSSL's ssl.h
# PySSLSocket (CPython's Modules/_ssl.c): PyObject_HEAD, then the socket's weak reference,
# then the SSL pointer; the same from 3.7 through 3.13
_SSL_OFFSET: Final = 3 * ctypes.sizeof(ctypes.c_void_p)


def server_end_point(cert_der: bytes) -> bytes:
    """RFC 5929 §4.1: the certificate hashed with its signature's hash function, SHA-256
    when that is MD5 or SHA-1 (or has none, as Ed25519)."""
    cert = x509.load_der_x509_certificate(cert_der)
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return digest.finalize()


def server_end_point_of_file(cert_path: str) -> bytes:
    """`server_end_point` of the first certificate of a PEM chain (the one served)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return server_end_point(cert.public_bytes(Encoding.DER))


class _LibSSL:
    """The libssl functions we call, from the library ``_ssl`` itself loaded."""

    def __init__(self) -> None:
        path = next((line.split()[-1] for line in Path("/proc/self/maps").read_text()
                     .splitlines() if "/libssl.so" in line), None)
        if path is None:
            raise OSError("libssl is not mapped into this process")
        lib = ctypes.CDLL(path)
        version = ctypes.CDLL(path).OpenSSL_version_num
        version.restype = ctypes.c_ulong
        if version() != ssl.OPENSSL_VERSION_NUMBER:
            raise OSError(f"{path} is not the OpenSSL of the ssl module")
        self.get_ex_data = lib.SSL_get_ex_data
        self.get_ex_data.restype = ctypes.c_void_p
        self.get_ex_data.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.version = lib.SSL_version
        self.version.restype = ctypes.c_int
        self.version.argtypes = [ctypes.c_void_p]
        self.ctrl = lib.SSL_ctrl
        self.ctrl.restype = ctypes.c_long
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.export = lib.SSL_export_keying_material
        self.export.restype = ctypes.c_int
        self.export.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                ctypes.c_size_t, ctypes.c_int]


def _load() -> _LibSSL | None:
    if sys.implementation.name != "cpython" or not (3, 7) <= sys.version_info[:2] <= (3, 13):
        return None
    try:
        return _LibSSL()
    except (OSError, AttributeError) as exc:
        log.warning("tls-exporter channel binding unavailable: %s", exc)
        return None


_LIB: Final = _load()


def _ssl_pointer(tls: ssl.SSLObject) -> int | None:
    """The connection's ``SSL *``, once OpenSSL has confirmed it (the module's docstring)."""
    inner = getattr(tls, "_sslobj", None)
    if _LIB is None or inner is None:
        return None
    pointer = ctypes.c_void_p.from_address(id(inner) + _SSL_OFFSET).value
    if not pointer or _LIB.get_ex_data(pointer, 0) != id(inner):
        return None
    return pointer


def exporter(tls: ssl.SSLObject) -> bytes | None:
    """RFC 9266 ``tls-exporter`` data of an established connection, or None where it is not
    defined (TLS 1.2 without the extended master secret) or cannot be had."""
    pointer = _ssl_pointer(tls)
    if pointer is None or _LIB is None:
        return None
    version = _LIB.version(pointer)
    if version != _TLS13 and not (
        version == _TLS12 and _LIB.ctrl(pointer, _SSL_CTRL_GET_EXTMS_SUPPORT, 0, None) == 1
    ):
        return None
    out = ctypes.create_string_buffer(_LENGTH)
    if _LIB.export(pointer, out, _LENGTH, _LABEL, len(_LABEL), None, 0, 0) != 1:
        return None
    return out.raw


class TLSChannelBinding:
    """The channel bindings of one established server-side TLS connection (the
    `shared.xmpp.sasl.ChannelBinding` protocol): which types there are, and their data,
    computed when asked (a login asks once; nothing is kept per connection)."""

    __slots__ = ("_end_point", "_tls", "types")

    def __init__(self, tls: ssl.SSLObject, end_point: bytes | None) -> None:
        self._tls = tls
        self._end_point = end_point
        types: list[str] = []
        version = tls.version()
        if (version == "TLSv1.3" and _ssl_pointer(tls) is not None) or (
            version == "TLSv1.2" and exporter(tls) is not None
        ):
            types.append(EXPORTER)
        if version == "TLSv1.2":
            types.append(UNIQUE)
        if end_point:
            types.append(SERVER_END_POINT)
        self.types: tuple[str, ...] = tuple(types)

    def data(self, kind: str) -> bytes | None:
        """The binding data of type `kind`, None if this connection has no such binding."""
        if kind not in self.types:
            return None
        if kind == EXPORTER:
            return exporter(self._tls)
        if kind == UNIQUE:
            return self._tls.get_channel_binding(UNIQUE)
        return self._end_point
