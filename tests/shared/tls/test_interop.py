"""Lean sessions against OpenSSL's own record layer, one run per TLS 1.3 suite.

Python's ``ssl`` (3.11) cannot choose a TLS 1.3 suite, but `openssl s_client -ciphersuites`
can: it connects over loopback to a small echo server built on `TLSSession` with a `KeyLog`,
which hands the session over to `Records13` after the first line, so every later line, and
s_client's KeyUpdates (its ``K`` and ``k`` commands, RFC 8446 §4.6.3), go through our record
layer under the suite s_client chose.  One run forces a HelloRetryRequest (§4.1.4): the
server accepts only P-256 and s_client offers an X25519 key share first.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.tls.context import ensure_self_signed, server_context
from shared.tls.keylog import KeyLog
from shared.tls.records import TLSClosed
from shared.tls.session import TLSSession

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")


class EchoServer:
    """Upper-cases each line; hands the session over after the first reply."""

    def __init__(self, ctx: ssl.SSLContext, keylog: KeyLog) -> None:
        self.ctx, self.keylog = ctx, keylog
        self.suites: list[str] = []  # the suite of each session handed over
        self.lines_lean = 0  # lines answered by our record layer
        self.closed_cleanly = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = TLSSession(self.ctx, keylog=self.keylog)
        pending = b""
        try:
            for _ in range(1000):  # bounded: a test run sends a handful of records
                data = await reader.read(65536)
                if not data:
                    return
                try:
                    pending += session.receive(data)
                except TLSClosed:
                    session.close()
                    writer.write(session.data_to_send())
                    self.closed_cleanly += 1
                    return
                writer.write(session.data_to_send())
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if session.lean:
                        self.lines_lean += 1
                    session.send(line.upper() + b"\n")
                    writer.write(session.data_to_send())
                    if not session.lean and session.hibernate():
                        records = session._records
                        assert records is not None
                        self.suites.append(records._suite)
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()


async def _read_until(stdout: asyncio.StreamReader, seen: bytearray, needle: bytes) -> None:
    deadline = time.monotonic() + 15
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not seen; s_client said: {bytes(seen)[-2000:]!r}")
        chunk = await asyncio.wait_for(stdout.read(4096), left)
        if not chunk:
            raise AssertionError(f"s_client ended before {needle!r}: {bytes(seen)[-2000:]!r}")
        seen += chunk


@contextlib.asynccontextmanager
async def _server(tmp_path: Path, p256_only: bool) -> AsyncIterator[tuple[EchoServer, int]]:
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    ensure_self_signed(cert, key, "example.org")
    ctx = server_context(cert, key)
    if p256_only:
        ctx.set_ecdh_curve("prime256v1")  # OpenSSL 3: the server's only group
    keylog = KeyLog()
    assert keylog.attach(ctx)
    echo = EchoServer(ctx, keylog)
    server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
    try:
        yield echo, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        keylog.close()


@pytest.mark.parametrize(
    ("suite", "hello_retry"),
    [
        ("TLS_AES_128_GCM_SHA256", False),
        ("TLS_AES_256_GCM_SHA384", False),
        ("TLS_CHACHA20_POLY1305_SHA256", False),
        ("TLS_CHACHA20_POLY1305_SHA256", True),
    ],
    ids=["aes128gcm", "aes256gcm", "chacha20", "chacha20-hello-retry"],
)
async def test_openssl_s_client_on_each_suite(
    tmp_path: Path, suite: str, hello_retry: bool
) -> None:
    async with _server(tmp_path, hello_retry) as (echo, port):
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
                "-ciphersuites", suite, "-servername", "example.org"]
        if hello_retry:
            argv += ["-groups", "X25519:P-256"]  # a key share for X25519 only
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdin is not None and proc.stdout is not None
        seen = bytearray()
        try:
            await _read_until(proc.stdout, seen, b"Verify return code")  # handshake done
            assert f"Cipher is {suite}".encode() in seen
            assert (b"Server Temp Key: ECDH, prime256v1" in seen) is hello_retry
            proc.stdin.write(b"line-one\n")  # through OpenSSL; handed over after the answer
            await _read_until(proc.stdout, seen, b"LINE-ONE")
            assert echo.suites == [suite]
            for command, line in ((b"K\n", b"line-two"), (b"k\n", b"line-three")):
                proc.stdin.write(command)  # KeyUpdate, asking for ours (K) or not (k)
                await _read_until(proc.stdout, seen, b"KEYUPDATE")
                del seen[: seen.index(b"KEYUPDATE") + 9]
                await asyncio.sleep(0.3)  # s_client takes a command only alone in its read
                proc.stdin.write(line + b"\n")
                await _read_until(proc.stdout, seen, line.upper())
            proc.stdin.write(b"x" * 40_000 + b"\n")  # more than a record (2^14) each way
            await _read_until(proc.stdout, seen, b"X" * 40_000)
            proc.stdin.close()  # s_client sends close_notify and ends
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert echo.lines_lean == 3 and echo.closed_cleanly == 1
        assert b"alert" not in bytes(seen).lower()
