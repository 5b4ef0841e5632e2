"""TLS over memory BIOs: the record layer of one connection without a transport of its own.

The connection shell calls it from ``data_received`` and its write path: sans-I/O, like the
stream machines.  Large writes pass through the BIOs in slices of `SLICE` bytes (a memory
BIO keeps the largest size it ever held).  With a `KeyLog` (``STANZAD_TLS_LEAN_SESSIONS``,
opt-in), an idle TLS 1.3 session hands its record layer to `tls_records.Records13` and frees
OpenSSL's state (`hibernate`).  Why memory BIOs rather than ``loop.start_tls``, why CPython's
``ssl``, and how the hand-over is made exact: docs/architecture.md ("The c2s TLS backend",
"Lean TLS sessions").

``receive`` takes bytes from the socket and returns the plaintext they complete (the
handshake happens inside it); ``send`` takes plaintext; ``data_to_send`` returns the records
to write to the socket (handshake messages, session tickets, application data, alerts).
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Final

from shared.tls.binding import TLSChannelBinding
from shared.tls.keylog import CLIENT_TRAFFIC, SERVER_TRAFFIC, KeyLog
from shared.tls.records import SUITES, RecordError, Records13, TLSClosed, wipe

__all__ = ["TLSClosed", "TLSSession"]

_READ: Final = 16 * 1024  # one TLS record's worth of plaintext at most
SLICE: Final = 1024  # bytes per BIO write for large writes (see the module's docstring)
# A handshake record longer than this goes to OpenSSL as it is, to be refused there.
_MAX_HANDSHAKE_RECORD: Final = (1 << 14) + 2048
_RECORD_TYPES: Final = frozenset((20, 21, 22, 23))  # RFC 8446 §5.1 ContentType
_MAX_RECORD: Final = (1 << 14) + 256  # a TLS 1.3 ciphertext at most (RFC 8446 §5.2)


class TLSSession:
    """One TLS connection over two memory BIOs."""

    __slots__ = ("_closed", "_framing", "_in_seq", "_incoming", "_keylog", "_lean_keys",
                 "_out_seq", "_outgoing", "_random", "_records", "_secrets", "_sent", "_tls",
                 "established")

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
        self._secrets: dict[bytes, bytearray] = {}
        self._records: Records13 | None = None
        # after the handshake, until `hibernate` hands over: (suite, client secret, server
        # secret), and the records OpenSSL has protected so far each way under them
        self._lean_keys: tuple[str, bytearray, bytearray] | None = None
        self._closed = False  # our close_notify is queued: nothing more to write
        self._in_seq = 0
        self._out_seq = 0

    @property
    def lean(self) -> bool:
        """True once the record layer is ours and OpenSSL's session is gone."""
        return self._records is not None

    @property
    def lean_ready(self) -> bool:
        """True when `hibernate` can hand the record layer over (or already has)."""
        return self._records is not None or self._lean_keys is not None

    def channel_binding(self, end_point: bytes | None) -> TLSChannelBinding | None:
        """The channel bindings of this established session (`shared.tls.binding`), given
        the server certificate's ``tls-server-end-point`` hash; None before the handshake
        ends or once the session is lean (OpenSSL's session is gone: logins come first)."""
        if not self.established or self._tls is None:
            return None
        return TLSChannelBinding(self._tls, end_point)

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
            if self._lean_keys is not None:
                return self._receive_counted(data)
            return self._receive_framed(data)
        return self._receive_sliced(data)

    def _receive_sliced(self, data: bytes | memoryview) -> bytes:
        """Through OpenSSL, `SLICE` bytes at a time (see the module's docstring)."""
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
                if self._ready_for_lean():
                    self._framing = b""
                    return self._receive_counted(rest) if rest else b""
                return self._receive_sliced(rest) if rest else b""
        else:
            self._framing = buf[at:]
            return b""
        # a record too long to frame (not TLS at all, perhaps): OpenSSL has the last word
        self._framing = None
        return self._receive(buf[at:])

    def _ready_for_lean(self) -> bool:
        """Whether this session's record layer can be handed over later (docstring): then
        its secrets are kept, and the records OpenSSL protects from now on are counted."""
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
            for secret in secrets.values():  # TLS 1.2 and the rest: never handed over
                wipe(secret)
            return False
        self._lean_keys = (cipher[0], secrets[CLIENT_TRAFFIC], secrets[SERVER_TRAFFIC])
        return True

    def _receive_counted(self, data: bytes | memoryview) -> bytes:
        """Application records through OpenSSL one at a time, counted: the read sequence
        number a hand-over starts from.  A record that brings no application data (a
        KeyUpdate, which OpenSSL applies out of our sight, or anything unusual) ends the
        counting, and the session stays on OpenSSL."""
        assert self._framing is not None
        if (
            not self._framing and len(data) <= SLICE and len(data) >= 5 and data[0] == 23
            and ((data[3] << 8) | data[4]) + 5 == len(data)
        ):  # the usual read: one small whole record
            plain = self._receive(data)  # TLSClosed: it was an alert, no counting needed
            self._in_seq += 1
            if not plain:
                self._stop_counting()
            return plain
        buf = self._framing + data if self._framing else bytes(data)
        at = 0
        parts: list[bytes] = []
        while len(buf) - at >= 5:
            length = (buf[at + 3] << 8) | buf[at + 4]
            if buf[at] != 23 or length > _MAX_RECORD:
                break
            end = at + 5 + length
            if end > len(buf):
                self._framing = buf[at:]
                return b"".join(parts)
            try:
                plain = self._receive_sliced(memoryview(buf)[at:end])
            except TLSClosed:
                self._stop_counting()
                if parts:
                    return b"".join(parts)  # the next call raises
                raise
            at = end
            self._in_seq += 1
            if not plain:
                break
            parts.append(plain)
        else:
            self._framing = buf[at:]
            return b"".join(parts)
        self._stop_counting()
        if at < len(buf):
            parts.append(self._receive_sliced(memoryview(buf)[at:]))
        return b"".join(parts)

    def _stop_counting(self) -> None:
        self._drop_lean_keys()
        self._framing = None

    def _drop_lean_keys(self) -> None:
        if self._lean_keys is not None:
            wipe(self._lean_keys[1])
            wipe(self._lean_keys[2])
            self._lean_keys = None

    def _count_sent(self, out: bytes) -> None:
        """The records OpenSSL wrote since the handshake: the write sequence number.  (TLS 1.3
        hides every record's type behind application_data's: all are counted alike.)"""
        at = 0
        while at + 5 <= len(out):
            at += 5 + ((out[at + 3] << 8) | out[at + 4])
            self._out_seq += 1

    def _hand_over(self) -> bool:
        """Free OpenSSL's session for `Records13` if nothing is half-way (docstring)."""
        keys, tls = self._lean_keys, self._tls
        if keys is None or tls is None or self._framing or self._sent:
            return False
        assert self._incoming is not None and self._outgoing is not None
        if self._incoming.pending or self._outgoing.pending or tls.pending():
            return False
        suite, client, server = keys
        self._records = Records13(suite, client, server, read_seq=self._in_seq,
                                  write_seq=self._out_seq)
        self._drop_lean_keys()  # Records13 holds copies of its own
        self._framing = None
        self._tls = self._incoming = self._outgoing = None
        return True

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
        """Plaintext to encrypt; the records wait in `data_to_send`.  Raises `ssl.SSLError`
        after `close`: nothing is written after our close_notify (RFC 8446 §6.1)."""
        if self._records is not None:
            self._records.send(data)
            return
        if self._closed:
            raise RecordError("write after our close_notify")
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
            out = self._outgoing.read()
        else:
            out = self._sent + self._outgoing.read()
            self._sent = b""
        if self._lean_keys is not None and out:
            self._count_sent(out)
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
        self._closed = True
        self._stop_counting()  # the session ends on OpenSSL
        for secret in self._secrets.values():  # a handshake that never finished
            wipe(secret)
        self._secrets = {}
        with contextlib.suppress(ssl.SSLError, ValueError):  # SSLWantReadError included
            self._tls.unwrap()

    def hibernate(self) -> bool:
        """An idle connection: hand the record layer over if it can be (True then), and drop
        a lean session's AEAD contexts until its next record."""
        handed = self._hand_over()
        if self._records is not None:
            self._records.hibernate()
        return handed

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
