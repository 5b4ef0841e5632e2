"""TLS over memory BIOs: the record layer of one connection without a transport of its own.

Why not ``loop.start_tls``: uvloop's (and asyncio's) TLS transport keeps a protocol object, a
transport object, a backlog deque and a 256 KiB read buffer per connection, on top of the
OpenSSL state itself; measured with 3,000 idle connections (loadtest/RESULTS.md, "Memory per
idle connection") it costs 26 KiB a connection where this class costs the OpenSSL state
alone, about 17 KiB (OpenSSL 3.0; ``SSL_MODE_RELEASE_BUFFERS`` is set by CPython, so an idle
connection holds no record buffers).  The connection shell calls it from ``data_received``
and its write path: sans-I/O, like the stream machines.

A memory BIO never gives back the room it once needed: its buffer stays as large as the most
bytes it ever held at once, for the life of the connection.  So `send` and `receive` pass
large writes through in slices of `SLICE` bytes, draining the BIO after each one: 20 KB each
way (a roster result, a burst of stanzas) would otherwise leave the session 45 KiB heavier for
as long as it stays idle, 1 KiB with slices (loadtest/RESULTS.md, "session 3 — TLS backend";
a slice costs about 1 µs of CPU).  Small writes, the usual case, go in whole.

Why CPython's ``ssl`` and not pyOpenSSL on the OpenSSL 4.0 that ``cryptography`` bundles:
measured in-process (``python -m loadtest.tls_bench``, ``python -m loadtest.conn_memory``),
an OpenSSL 4.0 session holds 23-24 KiB after the handshake where 3.0 holds 16, handshakes
cost the server the same CPU, and a small record costs 4 times as much through pyOpenSSL's
wrappers (still a quarter more calling OpenSSL 4.0 through cffi directly).

``receive`` takes bytes from the socket and returns the plaintext they complete (the
handshake happens inside it); ``send`` takes plaintext; ``data_to_send`` returns the records
to write to the socket (handshake messages, session tickets, application data, alerts).
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Final

__all__ = ["TLSClosed", "TLSSession"]

_READ: Final = 16 * 1024  # one TLS record's worth of plaintext at most
SLICE: Final = 1024  # bytes per BIO write for large writes (see the module's docstring)


class TLSClosed(Exception):
    """The peer sent close_notify: no more plaintext will come."""


class TLSSession:
    """One TLS connection over two memory BIOs."""

    __slots__ = ("_incoming", "_outgoing", "_sent", "_tls", "established")

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool = True,
        server_hostname: str | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side,
            server_hostname=server_hostname,
        )
        self._sent = b""  # records already taken from `_outgoing` by a sliced `send`
        self.established = False

    def start(self) -> None:
        """Begin the handshake (a client's ClientHello lands in `data_to_send`)."""
        self._handshake()

    def receive(self, data: bytes) -> bytes:
        """Bytes from the socket in, the plaintext they complete out (maybe b"").

        Raises `ssl.SSLError` when the handshake or a record fails (the connection is then
        unusable: write `data_to_send` for the alert and close) and `TLSClosed` after the
        peer's close_notify (plaintext before it is returned by the call before).
        """
        if len(data) <= SLICE:
            return self._receive(data)
        view = memoryview(data)
        parts: list[bytes] = []
        for start in range(0, len(data), SLICE):
            try:
                part = self._receive(view[start : start + SLICE])
            except TLSClosed:
                if not parts:
                    raise
                break  # hand over what came before the close_notify; the next call raises
            if part:
                parts.append(part)
        return b"".join(parts)

    def _receive(self, data: bytes | memoryview) -> bytes:
        incoming = self._incoming
        incoming.write(data)
        if not self.established and not self._handshake():
            return b""
        tls = self._tls
        chunks: list[bytes] = []
        try:
            while True:
                # CPython's read gives b"" for the peer's close_notify (memory BIOs have no
                # EOF of their own) and raises SSLWantReadError for a partial record
                chunk = tls.read(_READ)
                if not chunk:
                    if not chunks:
                        raise TLSClosed
                    break  # hand over what came before it; the next call raises
                chunks.append(chunk)
                if not incoming.pending and not tls.pending():
                    break
        except ssl.SSLWantReadError:
            pass  # the rest of a record is still on its way
        except ssl.SSLZeroReturnError:  # read again after the close_notify
            if not chunks:
                raise TLSClosed from None
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def send(self, data: bytes) -> None:
        """Plaintext to encrypt; the records wait in `data_to_send`."""
        tls = self._tls
        if len(data) <= SLICE:
            tls.write(data)
            return
        view = memoryview(data)
        outgoing = self._outgoing
        parts = [self._sent]
        for start in range(0, len(data), SLICE):
            tls.write(view[start : start + SLICE])
            parts.append(outgoing.read())
        self._sent = b"".join(parts)

    def data_to_send(self) -> bytes:
        if not self._sent:
            return self._outgoing.read()
        out = self._sent + self._outgoing.read()
        self._sent = b""
        return out

    def pending_bytes(self) -> int:
        """Encrypted bytes not yet taken by `data_to_send`."""
        return len(self._sent) + self._outgoing.pending

    def close(self) -> None:
        """Queue our close_notify (best effort: a broken session just gets none)."""
        with contextlib.suppress(ssl.SSLError, ValueError):  # SSLWantReadError included
            self._tls.unwrap()

    def _handshake(self) -> bool:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.established = True
        return True
