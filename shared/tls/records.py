"""The TLS 1.3 record layer after the handshake (RFC 8446 §5, §7.1-7.3), sans-I/O.

OpenSSL does the handshake; once the session is idle, a `Records13` built from the two
application traffic secrets (and the sequence numbers OpenSSL reached) protects and
unprotects the records, and the OpenSSL session is freed (`shared/tls/session.py`).  This
is the split that kernel TLS makes: the handshake stays in the TLS library, the symmetric
record layer moves elsewhere.  Why: an idle OpenSSL 3.0
session holds 16.4 KiB, this object holds well under 1 KiB while idle (its AEAD contexts, ~2.5
KiB each, exist only while records flow; `hibernate` drops them): loadtest/RESULTS.md,
"session 4 — lean TLS sessions".

Only the record protection is ours; the ciphers are ``cryptography``'s AEADs (OpenSSL
underneath) and the key derivation its HKDF.  What this handles after the handshake:

- application data in both directions, split into records of at most 2^14 bytes (§5.1);
- the peer's KeyUpdate (§4.6.3): its keys are updated, and when it asks, ours too: one
  KeyUpdate of ours, under the old key, before our next application data answers however
  many requests came while we were silent;
- our own KeyUpdate before an AES-GCM key has protected `REKEY_AFTER` records (§5.5 limits
  it to 2^24.5);
- alerts (§6): close_notify ends the stream (`TLSClosed`), user_canceled is ignored, any
  other alert is fatal.  A record that fails is answered with a fatal alert of our own and
  an `ssl.SSLError`: bad_record_mac, record_overflow, unexpected_message (a CCS or a
  plaintext record after the handshake, handshake messages other than KeyUpdate, a KeyUpdate
  not at the end of its record, a zero-length handshake record, more than `MAX_EMPTY_RECORDS`
  records in a row without application data), decode_error, illegal_parameter.
- after our own close_notify nothing more is written: `send` and `key_update` raise.

Not handled, so the caller keeps OpenSSL when they are in play: TLS 1.2, session tickets sent
after the handshake (they would advance our write sequence number), post-handshake client
authentication (we never ask for it), 0-RTT (never enabled), and suites other than the three
below.
"""

from __future__ import annotations

import ssl
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

__all__ = ["SUITES", "RecordError", "Records13", "TLSClosed", "hkdf_expand_label", "wipe"]

# OpenSSL's names of the TLS 1.3 suites we take over: (AEAD, key length, hash).
_Aead = type[AESGCM] | type[ChaCha20Poly1305]
SUITES: Final[dict[str, tuple[_Aead, int, type[hashes.HashAlgorithm]]]] = {
    "TLS_AES_128_GCM_SHA256": (AESGCM, 16, hashes.SHA256),
    "TLS_AES_256_GCM_SHA384": (AESGCM, 32, hashes.SHA384),
    "TLS_CHACHA20_POLY1305_SHA256": (ChaCha20Poly1305, 32, hashes.SHA256),
}

_APPLICATION_DATA: Final = 23
_HANDSHAKE: Final = 22
_ALERT: Final = 21
_KEY_UPDATE: Final = 24
MAX_PLAINTEXT: Final = 1 << 14  # §5.1
_MAX_CIPHERTEXT: Final = MAX_PLAINTEXT + 256  # §5.2
_TAG: Final = 16
# §5.5: at most 2^24.5 full-size records under one AES-GCM key; rekey well before.
REKEY_AFTER: Final = 1 << 23
# Records in a row that bring no application data (empty application data, user_canceled
# alerts, KeyUpdates) before the session fails: a peer could otherwise keep us decrypting
# forever without a byte for the stream's limits to count (OpenSSL's MAX_EMPTY_RECORDS).
MAX_EMPTY_RECORDS: Final = 32

# Alert descriptions (§6)
CLOSE_NOTIFY: Final = 0
UNEXPECTED_MESSAGE: Final = 10
BAD_RECORD_MAC: Final = 20
RECORD_OVERFLOW: Final = 22
ILLEGAL_PARAMETER: Final = 47
DECODE_ERROR: Final = 50
USER_CANCELED: Final = 90


def _header(length: int) -> bytes:
    """The record header of a protected record of ``length`` bytes of content (§5.2)."""
    return struct.pack("!BHH", _APPLICATION_DATA, 0x0303, length + 1 + _TAG)


_CACHED: Final = 2048
_HEADERS: Final = tuple(_header(n) for n in range(_CACHED))
_KINDS: Final = {kind: bytes((kind,)) for kind in (_APPLICATION_DATA, _HANDSHAKE, _ALERT)}


class TLSClosed(Exception):
    """The peer sent close_notify: no more plaintext will come."""


class RecordError(ssl.SSLError):
    """A record failed, or the peer sent a fatal alert: an `ssl.SSLError` with a ``reason``,
    as OpenSSL's own errors have, so callers handle both alike."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.library = "stanzad"


def wipe(secret: bytearray) -> None:
    """Overwrite a secret we hold in a mutable buffer before letting it go."""
    secret[:] = bytes(len(secret))


def hkdf_expand_label(
    algorithm: type[hashes.HashAlgorithm], secret: bytes | bytearray, label: bytes, length: int,
    context: bytes = b"",
) -> bytes:
    """HKDF-Expand-Label (RFC 8446 §7.1)."""
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + bytes([len(context)]) + context
    return HKDFExpand(algorithm(), length, info).derive(secret)


class _Direction:
    """One direction's traffic secret, key, IV and sequence number (§5.3).  The secret is a
    copy in a buffer of our own, overwritten when the next one replaces it."""

    __slots__ = ("aead", "iv", "key", "secret", "seq")

    def __init__(self, suite: str, secret: bytes | bytearray) -> None:
        self.secret = bytearray(secret)
        self.aead: AESGCM | ChaCha20Poly1305 | None = None
        self.seq = 0
        self.key = b""
        self.iv = 0
        self._derive(suite)

    def _derive(self, suite: str) -> None:
        _, key_length, algorithm = SUITES[suite]
        self.key = hkdf_expand_label(algorithm, self.secret, b"key", key_length)
        self.iv = int.from_bytes(hkdf_expand_label(algorithm, self.secret, b"iv", 12))
        self.aead = None
        self.seq = 0

    def update(self, suite: str) -> None:
        """§7.2: application_traffic_secret_N+1 from _N."""
        algorithm = SUITES[suite][2]
        old = self.secret
        self.secret = bytearray(
            hkdf_expand_label(algorithm, old, b"traffic upd", algorithm.digest_size)
        )
        wipe(old)
        self._derive(suite)

    def nonce(self) -> bytes:
        """§5.3: the IV XORed with the sequence number, which then moves on."""
        nonce = (self.iv ^ self.seq).to_bytes(12)
        self.seq += 1
        return nonce


class Records13:
    """Both directions of one TLS 1.3 connection's record layer after its handshake.

    ``receive`` takes bytes from the socket and returns the plaintext of the records they
    complete; ``send`` protects plaintext into records that wait in ``data_to_send``.
    ``write_secret`` is our application traffic secret, ``read_secret`` the peer's.
    """

    __slots__ = ("_aead_type", "_closed", "_empty", "_failed", "_handshake", "_out", "_pending",
                 "_read", "_sent_close", "_suite", "_update_due", "_write")

    def __init__(
        self, suite: str, read_secret: bytes | bytearray, write_secret: bytes | bytearray, *,
        read_seq: int = 0, write_seq: int = 0,
    ) -> None:
        if suite not in SUITES:
            raise ValueError(f"not a TLS 1.3 suite this record layer serves: {suite}")
        self._suite = suite
        self._aead_type = SUITES[suite][0]
        self._read = _Direction(suite, read_secret)
        self._write = _Direction(suite, write_secret)
        # records already protected under these secrets by the TLS library before us
        self._read.seq = read_seq
        self._write.seq = write_seq
        self._pending = b""  # the start of a record still on its way
        self._handshake = b""  # the start of a handshake message split across records
        self._out: list[bytes] = []
        self._closed = False  # the peer's close_notify came
        self._failed = False  # a fatal alert went one way or the other
        self._sent_close = False  # our close_notify is queued: nothing more to write
        self._update_due = False  # the peer asked for our KeyUpdate (§4.6.3); not yet sent
        self._empty = 0  # records in a row without application data (MAX_EMPTY_RECORDS)

    # ---- reading ---------------------------------------------------------------------------

    def receive(self, data: bytes | memoryview) -> bytes:
        """The plaintext that ``data`` completes (maybe b"").

        Raises `TLSClosed` once the peer's close_notify came (the plaintext before it is
        returned by this call when there is any, and the next call raises) and
        `ssl.SSLError` when a record fails (a fatal alert then waits in ``data_to_send``).
        """
        if self._failed:
            raise RecordError("TLS record layer already failed")
        if self._closed:
            raise TLSClosed
        buf = self._pending + data if self._pending else bytes(data)
        size = len(buf)
        if (
            size >= 5 and buf[0] == _APPLICATION_DATA
            and ((buf[3] << 8) | buf[4]) + 5 == size and size <= _MAX_CIPHERTEXT + 5
        ):
            # the usual read: exactly one whole record
            self._pending = b""
            plain = self._open(buf[:5], buf[5:])
            if self._closed:
                if plain:
                    return plain
                raise TLSClosed
            return plain
        at = 0
        chunks: list[bytes] = []
        while size - at >= 5:
            kind = buf[at]
            length = (buf[at + 3] << 8) | buf[at + 4]
            if kind != _APPLICATION_DATA:
                # §5: after the handshake every record is protected; a change_cipher_spec
                # or a plaintext record now is unexpected.
                self._fail(UNEXPECTED_MESSAGE, f"unprotected record of type {kind}")
            if length > _MAX_CIPHERTEXT:
                self._fail(RECORD_OVERFLOW, f"record of {length} bytes")
            end = at + 5 + length
            if end > size:
                break
            plain = self._open(buf[at : at + 5], buf[at + 5 : end])
            at = end
            if plain:
                chunks.append(plain)
            if self._closed:
                self._pending = b""
                if chunks:
                    return b"".join(chunks)
                raise TLSClosed
        self._pending = buf[at:] if at < size else b""
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _open(self, header: bytes, body: bytes) -> bytes:
        read = self._read
        aead = read.aead
        if aead is None:
            aead = read.aead = self._aead_type(read.key)
        if len(body) < _TAG + 1:
            self._fail(DECODE_ERROR, "record too short")
        seq = read.seq
        read.seq = seq + 1
        try:
            inner = aead.decrypt((read.iv ^ seq).to_bytes(12), body, header)
        except InvalidTag:
            self._fail(BAD_RECORD_MAC, "record failed authentication")
        # §5.4: TLSInnerPlaintext (content, type, padding) is at most 2^14 + 1 bytes, padding
        # included: checked before the padding goes.
        if len(inner) > MAX_PLAINTEXT + 1:
            self._fail(RECORD_OVERFLOW, f"inner plaintext of {len(inner)} bytes")
        # §5.4: the content type is the last non-zero byte; zeros after it are padding.
        if inner and inner[-1] == 0:
            inner = inner.rstrip(b"\0")
        end = len(inner)
        if not end:
            self._fail(UNEXPECTED_MESSAGE, "record without a content type")
        kind = inner[end - 1]
        if kind == _APPLICATION_DATA and end > 1 and not self._handshake:
            self._empty = 0
            return inner[: end - 1]
        self._empty += 1
        if self._empty > MAX_EMPTY_RECORDS:
            self._fail(UNEXPECTED_MESSAGE, f"{self._empty} records without application data")
        if self._handshake and kind != _HANDSHAKE:
            self._fail(UNEXPECTED_MESSAGE, "handshake message interleaved with other records")
        if kind == _APPLICATION_DATA:
            return b""  # §5.1: zero-length application data may be sent (and is counted)
        if kind == _ALERT:
            self._alert(inner[: end - 1])
            return b""
        if kind == _HANDSHAKE:
            if end == 1:  # §5.1: "MUST NOT send zero-length fragments of Handshake types"
                self._fail(UNEXPECTED_MESSAGE, "zero-length handshake record")
            self._handshake_messages(inner[: end - 1])
            return b""
        self._fail(UNEXPECTED_MESSAGE, f"record of content type {kind}")
        raise AssertionError  # not reached: _fail raises

    def _alert(self, body: bytes) -> None:
        if len(body) != 2:
            self._fail(DECODE_ERROR, "malformed alert")
        description = body[1]
        if description == CLOSE_NOTIFY:
            self._closed = True
        elif description != USER_CANCELED:  # §6.1: user_canceled alone is no reason to stop
            self._failed = True  # §6.2: no alert back after a fatal one
            raise RecordError(f"peer sent TLS alert {description}")

    def _handshake_messages(self, body: bytes) -> None:
        """§4.6.3: KeyUpdate is the one handshake message a client sends after Finished."""
        data = self._handshake + body if self._handshake else body
        self._handshake = b""
        at = 0
        while at < len(data):
            if data[at] != _KEY_UPDATE:
                self._fail(UNEXPECTED_MESSAGE, f"handshake message {data[at]} after Finished")
            if len(data) - at < 5:
                self._handshake = data[at:]  # the rest comes in the next record
                return
            length = int.from_bytes(data[at + 1 : at + 4])
            if length != 1:
                self._fail(DECODE_ERROR, "KeyUpdate of the wrong length")
            request = data[at + 4]
            if request not in (0, 1):
                self._fail(ILLEGAL_PARAMETER, "KeyUpdate request neither 0 nor 1")
            at += 5
            if at != len(data):
                # §5.1: a key change ends its record
                self._fail(UNEXPECTED_MESSAGE, "data after a KeyUpdate in its record")
            self._read.update(self._suite)
            if request == 1:
                # §4.6.3: answered before our next application data; requests that come
                # while we are silent are all answered by that one KeyUpdate
                self._update_due = True

    def _fail(self, description: int, reason: str) -> None:
        """Queue a fatal alert (none after our close_notify) and raise (§6.2)."""
        if not self._failed:
            self._failed = True
            if not self._sent_close:
                self._sent_close = True
                self._out.append(self._seal(bytes((2, description)), _ALERT))
        raise RecordError(reason)

    # ---- writing ---------------------------------------------------------------------------

    def send(self, data: bytes | memoryview) -> None:
        """Plaintext to protect; the records wait in ``data_to_send``.  Raises `RecordError`
        once our close_notify (or a fatal alert) is queued: nothing is written after it."""
        self._check_writable()
        if self._update_due:
            self._key_update()
        out = self._out
        if len(data) <= MAX_PLAINTEXT:
            out.append(self._seal(data, _APPLICATION_DATA))
            return
        view = memoryview(data)
        for start in range(0, len(data), MAX_PLAINTEXT):
            out.append(self._seal(view[start : start + MAX_PLAINTEXT], _APPLICATION_DATA))

    def _seal(self, data: bytes | memoryview, kind: int) -> bytes:
        write = self._write
        if write.seq >= REKEY_AFTER and kind == _APPLICATION_DATA:
            self._key_update(requested=False)
        aead = write.aead
        if aead is None:
            aead = write.aead = self._aead_type(write.key)
        header = _HEADERS[len(data)] if len(data) < _CACHED else _header(len(data))
        seq = write.seq
        write.seq = seq + 1
        inner = (data if type(data) is bytes else bytes(data)) + _KINDS[kind]
        return header + aead.encrypt((write.iv ^ seq).to_bytes(12), inner, header)

    def _key_update(self, requested: bool = False) -> None:
        """Send KeyUpdate under the current key, then move to the next (§4.6.3)."""
        message = bytes((_KEY_UPDATE, 0, 0, 1, 1 if requested else 0))
        self._update_due = False  # this one answers the peer's requests too
        self._out.append(self._seal(message, _HANDSHAKE))
        self._write.update(self._suite)

    def key_update(self, request_peer: bool = False) -> None:
        """Rotate our write key now (and ask the peer to rotate theirs when ``request_peer``)."""
        self._check_writable()
        self._key_update(requested=request_peer)

    def _check_writable(self) -> None:
        if self._failed:
            raise RecordError("TLS record layer already failed")
        if self._sent_close:
            raise RecordError("write after our close_notify")  # §6.1

    def close(self) -> None:
        """Queue our close_notify (§6.1); afterwards `send` raises."""
        if not self._failed and not self._sent_close:
            self._out.append(self._seal(bytes((1, CLOSE_NOTIFY)), _ALERT))
            self._sent_close = True

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def pending_bytes(self) -> int:
        return sum(map(len, self._out))

    def hibernate(self) -> None:
        """Drop the AEAD contexts (~2.5 KiB each) of an idle connection; the next record
        makes them again from the keys (about a microsecond)."""
        self._read.aead = None
        self._write.aead = None
