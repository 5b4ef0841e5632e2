"""shared.tls.keylog: OpenSSL's key log of a server context, read back through a pipe."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from shared.tls.context import ensure_self_signed, server_context
from shared.tls.keylog import CLIENT_TRAFFIC, SERVER_TRAFFIC, KeyLog
from shared.tls.session import TLSSession


def _context(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    ensure_self_signed(cert, key, "example.org")
    return server_context(cert, key), cert


def _writers(keylog: KeyLog) -> list[int]:
    """The descriptions of the pipe other than its read end and our own write end."""
    read = os.fstat(keylog._read_fd)
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in (keylog._read_fd, keylog._write_fd):
            continue
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (read.st_dev, read.st_ino):
            found.append(fd)
    return found


def test_the_contexts_writer_is_non_blocking(tmp_path: Path) -> None:
    """A full pipe must fail that one write, never block the event loop in OpenSSL's."""
    ctx, _ = _context(tmp_path)
    keylog = KeyLog()
    assert keylog.attach(ctx)
    writers = _writers(keylog)
    assert writers and all(not os.get_blocking(fd) for fd in writers)
    keylog.close()


def test_only_this_sessions_traffic_secrets_are_taken(tmp_path: Path) -> None:
    ctx, cert = _context(tmp_path)
    keylog = KeyLog()
    assert keylog.attach(ctx)
    server = TLSSession(ctx)  # no keylog given: its lines stay in the pipe
    client = TLSSession(ssl.create_default_context(cafile=cert), server_side=False,
                        server_hostname="example.org")
    client.start()
    hello = client.data_to_send()
    server.receive(hello)
    mine: dict[bytes, bytearray] = {}
    keylog.take(b"\x00" * 32, mine)  # another session's random: nothing is ours
    assert mine == {}
    os.write(keylog._write_fd, b"CLIENT_TRAFFIC_SECRET_0 " + hello[11:43].hex().encode()
             + b" " + b"ab" * 32 + b"\n")
    keylog.take(hello[11:43], mine)
    assert mine == {CLIENT_TRAFFIC: b"\xab" * 32}  # the earlier lines were read and dropped
    assert SERVER_TRAFFIC not in mine
    keylog.close()
    keylog.take(hello[11:43], mine)  # closed: nothing more, no error


def test_the_slow_scan_finds_a_writer_the_quick_guess_missed() -> None:
    keylog = KeyLog()
    other = os.open(f"/proc/self/fd/{keylog._write_fd}", os.O_WRONLY)  # a new description
    assert os.get_blocking(other)
    keylog._writers_nonblocking()
    assert not os.get_blocking(other)
    assert os.get_blocking(keylog._read_fd) is False  # it was made non-blocking at creation
    os.close(other)
    keylog.close()


def test_no_key_log_when_its_writer_cannot_be_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without /proc the writer could stay blocking: the context then logs nothing."""
    ctx, _ = _context(tmp_path)
    keylog = KeyLog()
    monkeypatch.setattr(KeyLog, "_nonblocking", lambda self, fd: False)
    monkeypatch.setattr(os, "listdir", lambda path: (_ for _ in ()).throw(OSError("no /proc")))
    assert not keylog.attach(ctx)
    assert ctx.keylog_filename is None
    keylog.close()



def test_a_full_pipe_is_emptied_by_one_take_and_fails_only_the_handshake_it_meets(
    tmp_path: Path,
) -> None:
    ctx, cert = _context(tmp_path)
    keylog = KeyLog()
    assert keylog.attach(ctx)
    line = b"SERVER_HANDSHAKE_TRAFFIC_SECRET " + b"00" * 32 + b" " + b"cd" * 32 + b"\n"

    writer = os.open(f"/proc/self/fd/{keylog._write_fd}", os.O_WRONLY | os.O_NONBLOCK)

    def fill() -> None:
        with pytest.raises(BlockingIOError):
            while True:  # the pipe fills, then refuses
                os.write(writer, line)

    fill()
    mine: dict[bytes, bytearray] = {}
    keylog.take(b"\x00" * 32, mine)  # reads until the pipe is empty, however full it was
    with pytest.raises(BlockingIOError):
        os.read(keylog._read_fd, 1)
    client_ctx = ssl.create_default_context(cafile=cert)

    def hello_to_server() -> None:
        client = TLSSession(client_ctx, server_side=False, server_hostname="example.org")
        client.start()
        TLSSession(ctx, keylog=keylog).receive(client.data_to_send())

    fill()
    with pytest.raises(ssl.SSLError):  # OpenSSL could not log: this handshake fails...
        hello_to_server()
    hello_to_server()  # ...and emptied the pipe on its way out: the next one logs again
    os.close(writer)
    keylog.close()


def test_only_the_two_application_traffic_secrets_are_decoded() -> None:
    """Handshake and exporter secrets, TLS 1.2's master secret (CLIENT_RANDOM), other
    sessions' lines and malformed ones are dropped; the read buffer is zeroed afterwards."""
    keylog = KeyLog()
    random = bytes(range(32))
    mine, other = random.hex(), (b"\x01" * 32).hex()
    lines = [
        f"CLIENT_HANDSHAKE_TRAFFIC_SECRET {mine} {'11' * 48}",
        f"SERVER_HANDSHAKE_TRAFFIC_SECRET {mine} {'22' * 48}",
        f"CLIENT_TRAFFIC_SECRET_0 {other} {'33' * 48}",  # another session's
        f"CLIENT_TRAFFIC_SECRET_0 {mine} {'44' * 48}",
        f"SERVER_TRAFFIC_SECRET_0 {mine} {'55' * 48}",
        f"EXPORTER_SECRET {mine} {'66' * 48}",
        f"CLIENT_RANDOM {mine} {'77' * 48}",  # TLS 1.2
        f"CLIENT_TRAFFIC_SECRET_01 {mine} {'88' * 48}",  # not quite the label
        f"SERVER_TRAFFIC_SECRET_0 {mine} {'zz' * 48}",  # not hex: ignored
    ]
    os.write(keylog._write_fd, "\n".join(lines).encode() + b"\n")
    taken: dict[bytes, bytearray] = {}
    keylog.take(random, taken)
    assert taken == {CLIENT_TRAFFIC: bytearray(b"\x44" * 48),
                     SERVER_TRAFFIC: bytearray(b"\x55" * 48)}
    assert all(type(secret) is bytearray for secret in taken.values())  # wipeable
    assert not any(keylog._buffer)
    keylog.close()


def test_the_read_buffer_is_zeroed_even_when_parsing_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keylog = KeyLog()
    os.write(keylog._write_fd, b"CLIENT_TRAFFIC_SECRET_0 " + b"00" * 32 + b" " + b"ab" * 32)

    def broken(self: KeyLog, size: int, wanted: bytes, into: dict[bytes, bytearray]) -> None:
        raise RuntimeError("parsing failed")

    monkeypatch.setattr(KeyLog, "_parse", broken)
    with pytest.raises(RuntimeError):
        keylog.take(b"\x00" * 32, {})
    assert not any(keylog._buffer)
    keylog.close()
