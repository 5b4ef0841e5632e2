"""The traffic secrets of our own TLS handshakes, from OpenSSL's key log, over a pipe.

CPython's ``ssl`` hands a session's secrets to one place only: ``SSLContext.keylog_filename``
(OpenSSL's keylog callback, NSS key log format, one line per secret).  A `KeyLog` points that
file at a pipe of this process, so the secrets never touch a disk, and reads the lines right
after each handshake step (``shared/tls/session.py``), which writes them synchronously.  The
secrets are those OpenSSL already holds in this process's memory; they go nowhere else.

The writing end that CPython opens is made non-blocking, so that the process can never block
in a write to it.  The pipe does not fill: it is emptied after every handshake step, so it
holds at most one handshake's ~1 KB of its 64 KiB.  If it ever were full, OpenSSL's write
would fail and with it that one handshake (``[BIO] system lib``, seen by filling it on
purpose); the client gets an alert and connects again.

Of what the pipe holds, only the two application traffic secrets of the session asking
(``CLIENT_TRAFFIC_SECRET_0``, ``SERVER_TRAFFIC_SECRET_0``) are decoded, into buffers of their
own; the handshake secrets, the exporter secret, TLS 1.2's master secrets (``CLIENT_RANDOM``,
never needed: TLS 1.2 sessions stay on OpenSSL) and other sessions' lines are not.  The pipe
is read into one reused buffer that is overwritten with zeros before `take` returns, so no
copy of a line outlives the call.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Final

log = logging.getLogger(__name__)

__all__ = ["KeyLog"]

# The secrets a server needs to take over the record layer (RFC 8446 §7.1; NSS key log labels)
CLIENT_TRAFFIC: Final = b"CLIENT_TRAFFIC_SECRET_0"
SERVER_TRAFFIC: Final = b"SERVER_TRAFFIC_SECRET_0"
_WANTED: Final = (CLIENT_TRAFFIC, SERVER_TRAFFIC)
_READ: Final = 65536  # a pipe's whole default capacity: one read empties it
_MAX_SECRET_HEX: Final = 2 * 64  # SHA-384's 48 bytes at most in TLS 1.3; room to spare
_HEX: Final = tuple(
    int(chr(c), 16) if chr(c) in "0123456789abcdefABCDEF" else -1 for c in range(256)
)


def _unhex(view: memoryview) -> bytearray | None:
    """Hex digits to a buffer of our own, with no immutable copy on the way; None if not hex."""
    if len(view) % 2 or len(view) > _MAX_SECRET_HEX:
        return None
    out = bytearray(len(view) // 2)
    for i in range(len(out)):
        high, low = _HEX[view[2 * i]], _HEX[view[2 * i + 1]]
        if high < 0 or low < 0:
            out[:] = bytes(len(out))
            return None
        out[i] = (high << 4) | low
    return out


class KeyLog:
    """A pipe that OpenSSL's key log for our server contexts writes into."""

    __slots__ = ("_buffer", "_identity", "_read_fd", "_write_fd")

    def __init__(self) -> None:
        self._buffer = bytearray(_READ)  # every read lands here, and is zeroed after use
        self._read_fd, self._write_fd = os.pipe()  # close-on-exec (PEP 446)
        os.set_blocking(self._read_fd, False)
        st = os.fstat(self._read_fd)
        self._identity = (st.st_dev, st.st_ino)

    def attach(self, context: ssl.SSLContext) -> bool:
        """Log ``context``'s secrets into this pipe; False where that cannot be done."""
        # open() takes the lowest free descriptor (POSIX): that is where CPython's file lands
        probe = os.dup(self._read_fd)
        os.close(probe)
        try:
            context.keylog_filename = f"/proc/self/fd/{self._write_fd}"
        except (OSError, NotImplementedError, AttributeError) as exc:
            log.warning("TLS key log unavailable, sessions stay on OpenSSL: %s", exc)
            return False
        if self._nonblocking(probe):
            return True
        try:
            self._writers_nonblocking()  # another thread took that number first: look at all
        except OSError as exc:  # no /proc: a writer we cannot make non-blocking is not kept
            context.keylog_filename = None
            log.warning("TLS key log writer not found, sessions stay on OpenSSL: %s", exc)
            return False
        return True

    def _nonblocking(self, fd: int) -> bool:
        """Make ``fd`` non-blocking if it is a description of our pipe (not its read end)."""
        if fd == self._read_fd:
            return False
        try:
            st = os.fstat(fd)
        except OSError:
            return False
        if (st.st_dev, st.st_ino) != self._identity:
            return False
        os.set_blocking(fd, False)
        return True

    def _writers_nonblocking(self) -> None:
        """CPython opened a new description of the pipe for the context: find it and make it
        non-blocking (see the module's docstring).  The slow way, one look at every open
        descriptor (~22 ms with 10,000 open, timed once by hand), for when the quick guess
        missed."""
        for name in os.listdir("/proc/self/fd"):
            self._nonblocking(int(name))

    def take(self, client_random: bytes, into: dict[bytes, bytearray]) -> None:
        """Read what the pipe holds; the two application traffic secrets of
        ``client_random``'s session go ``into`` (label → secret, a buffer the caller wipes
        when done with it).  Every other line is dropped unread: each handshake step reads
        its own lines right after writing them (see the module's docstring)."""
        wanted = client_random.hex().encode()
        buf = self._buffer
        while True:
            try:
                size = os.readv(self._read_fd, [buf])
            except OSError:  # nothing more now (EAGAIN), or closed at shutdown
                return
            try:
                self._parse(size, wanted, into)
            finally:
                buf[:size] = bytes(size)
            if size < _READ:  # the pipe is empty now: no second read to find that out
                return

    def _parse(self, size: int, wanted: bytes, into: dict[bytes, bytearray]) -> None:
        """Lines ``LABEL <client random> <secret>`` (NSS key log format) in the buffer."""
        buf = self._buffer
        view = memoryview(buf)
        try:
            at = 0
            while at < size:
                end = buf.find(b"\n", at, size)
                if end < 0:
                    end = size
                for label in _WANTED:
                    random_at = at + len(label) + 1
                    secret_at = random_at + len(wanted) + 1
                    if (
                        secret_at < end
                        and buf.startswith(label, at)
                        and buf[random_at - 1] == 0x20
                        and view[random_at : secret_at - 1] == wanted
                        and buf[secret_at - 1] == 0x20
                    ):
                        secret = _unhex(view[secret_at:end])
                        if secret is not None:
                            into[label] = secret
                        break
                at = end + 1
        finally:
            view.release()

    def close(self) -> None:
        if self._read_fd >= 0:
            os.close(self._read_fd)
            os.close(self._write_fd)
            self._read_fd = self._write_fd = -1
