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

Lean sessions: given a `KeyLog` (``STANZAD_TLS_LEAN_SESSIONS``, on by default), a server
session that negotiated TLS 1.3 with one of the `tls_records.SUITES` and sends no session
tickets hands its record layer to a `tls_records.Records13` the moment the handshake ends,
and the OpenSSL session and both BIOs are freed: 16.4 KiB of OpenSSL state per idle
connection become a few hundred bytes (loadtest/RESULTS.md, "session 4 — lean TLS
sessions").  To make that hand-over exact, the handshake is fed one whole record at a time,
so when OpenSSL reports the handshake done it holds no byte of a later record, and the rest
of the socket's bytes go to the new record layer.  Anything else (TLS 1.2, tickets on, a
missing secret) stays on OpenSSL as before.

``receive`` takes bytes from the socket and returns the plaintext they complete (the
handshake happens inside it); ``send`` takes plaintext; ``data_to_send`` returns the records
to write to the socket (handshake messages, session tickets, application data, alerts).
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Final

from shared.tls_keylog import CLIENT_TRAFFIC, SERVER_TRAFFIC, KeyLog
from shared.tls_records import SUITES, Records13, TLSClosed

__all__ = ["TLSClosed", "TLSSession"]

_READ: Final = 16 * 1024  # one TLS record's worth of plaintext at most
SLICE: Final = 1024  # bytes per BIO write for large writes (see the module's docstring)
# A handshake record longer than this goes to OpenSSL as it is, to be refused there.
_MAX_HANDSHAKE_RECORD: Final = (1 << 14) + 2048
_RECORD_TYPES: Final = frozenset((20, 21, 22, 23))  # RFC 8446 §5.1 ContentType


class TLSSession:
    """One TLS connection over two memory BIOs."""

    __slots__ = ("_framing", "_incoming", "_keylog", "_outgoing", "_random", "_records",
                 "_secrets", "_sent", "_tls", "established")

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool = True,
        server_hostname: str | None = None,
        keylog: KeyLog | None = None,
    ) -> None:
        self._incoming: ssl.MemoryBIO | None = ssl.MemoryBIO()
        self._outgoing: ssl.MemoryBIO | None = ssl.MemoryBIO()
        self._tls: ssl.SSLObject | None = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side,
            server_hostname=server_hostname,
        )
        self._sent = b""  # records already taken from `_outgoing` by a sliced `send`
        self.established = False
        # lean sessions (see the module's docstring): only servers, only without tickets
        lean = keylog is not None and server_side and context.num_tickets == 0
        self._keylog = keylog if lean else None
        self._framing: bytes | None = b"" if lean else None  # handshake bytes not yet fed
        self._random = b""  # the ClientHello's random: which key log lines are ours
        self._secrets: dict[bytes, bytes] = {}
        self._records: Records13 | None = None

    @property
    def lean(self) -> bool:
        """True once the record layer is ours and OpenSSL's session is gone."""
        return self._records is not None

    def start(self) -> None:
        """Begin the handshake (a client's ClientHello lands in `data_to_send`)."""
        self._handshake()

    def receive(self, data: bytes) -> bytes:
        """Bytes from the socket in, the plaintext they complete out (maybe b"").

        Raises `ssl.SSLError` when the handshake or a record fails (the connection is then
        unusable: write `data_to_send` for the alert and close) and `TLSClosed` after the
        peer's close_notify (plaintext before it is returned by the call before).
        """
        records = self._records
        if records is not None:
            return records.receive(data)
        if self._framing is not None:
            return self._receive_framed(data)
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

    def _receive_framed(self, data: bytes | memoryview) -> bytes:
        """The handshake, one whole record at a time (see the module's docstring)."""
        assert self._framing is not None and self._incoming is not None
        buf = self._framing + data
        at = 0
        while len(buf) - at >= 5:
            length = (buf[at + 3] << 8) | buf[at + 4]
            if length > _MAX_HANDSHAKE_RECORD or buf[at] not in _RECORD_TYPES or buf[at + 1] != 3:
                break  # not a TLS record: OpenSSL refuses it below, at once
            end = at + 5 + length
            if end > len(buf):
                self._framing = buf[at:]
                return b""
            if buf[at] == 20 and end + 5 <= len(buf):
                # a compatibility change_cipher_spec (RFC 8446 §D.4) cannot end the
                # handshake: it goes in with the record after it, in one step
                end += 5 + ((buf[end + 3] << 8) | buf[end + 4])
                if end > len(buf):
                    self._framing = buf[at:]
                    return b""
            if not self._random and buf[at] == 22 and length >= 38 and buf[at + 5] == 1:
                self._random = bytes(buf[at + 11 : at + 43])  # ClientHello.random (§4.1.2)
            self._incoming.write(buf[at:end])
            at = end
            if self._handshake():
                rest = buf[at:]
                self._framing = None
                records = self._take_over()
                if records is not None:
                    return records.receive(rest) if rest else b""
                return self._receive(rest) if rest else b""
        else:
            self._framing = buf[at:]
            return b""
        # a record too long to frame (not TLS at all, perhaps): OpenSSL has the last word
        self._framing = None
        return self._receive(buf[at:])

    def _take_over(self) -> Records13 | None:
        """Hand the record layer to `Records13` if this session allows it (docstring)."""
        tls = self._tls
        assert tls is not None and self._outgoing is not None
        secrets, self._secrets = self._secrets, {}
        cipher = tls.cipher()
        if (
            tls.version() != "TLSv1.3"
            or cipher is None
            or cipher[0] not in SUITES
            or CLIENT_TRAFFIC not in secrets
            or SERVER_TRAFFIC not in secrets
            or tls.pending()
            or self._outgoing.pending
            or self._sent
        ):
            return None
        records = Records13(cipher[0], secrets[CLIENT_TRAFFIC], secrets[SERVER_TRAFFIC])
        self._records = records
        self._tls = self._incoming = self._outgoing = None
        return records

    def _receive(self, data: bytes | memoryview) -> bytes:
        incoming = self._incoming
        assert incoming is not None
        incoming.write(data)
        if not self.established and not self._handshake():
            return b""
        tls = self._tls
        assert tls is not None
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
        if self._records is not None:
            self._records.send(data)
            return
        tls = self._tls
        assert tls is not None and self._outgoing is not None
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
        if self._records is not None:
            return self._records.data_to_send()
        assert self._outgoing is not None
        if not self._sent:
            return self._outgoing.read()
        out = self._sent + self._outgoing.read()
        self._sent = b""
        return out

    def pending_bytes(self) -> int:
        """Encrypted bytes not yet taken by `data_to_send`."""
        if self._records is not None:
            return self._records.pending_bytes()
        assert self._outgoing is not None
        return len(self._sent) + self._outgoing.pending

    def close(self) -> None:
        """Queue our close_notify (best effort: a broken session just gets none)."""
        if self._records is not None:
            self._records.close()
            return
        assert self._tls is not None
        with contextlib.suppress(ssl.SSLError, ValueError):  # SSLWantReadError included
            self._tls.unwrap()

    def hibernate(self) -> None:
        """An idle connection: a lean session drops its AEAD contexts until the next record."""
        if self._records is not None:
            self._records.hibernate()

    def _handshake(self) -> bool:
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        finally:
            # the step that answers the ClientHello logs all its secrets: read them at once
            if self._keylog is not None and len(self._secrets) < 2:
                self._keylog.take(self._random, self._secrets)
        self.established = True
        return True
