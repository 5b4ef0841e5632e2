"""Lean TLS sessions against other TLS stacks' own clients, over the connection manager's socket.

`openssl s_client -starttls xmpp` negotiates STARTTLS (RFC 6120 §5.4), then its `K` command
sends a KeyUpdate asking for ours (RFC 8446 §4.6.3).  If our record layer derived a key,
nonce or next traffic secret differently from OpenSSL, the stream would die with a
bad_record_mac alert one way or the other; here the stream goes on and closes cleanly, and
the connection manager counts the session as lean.  `gnutls-cli` (GnuTLS, the TLS of Dino
and of GLib-based clients; Debian's gnutls-bin, installed by .ci/run) does the same with its
`^rekey1^` and `^rekey^` commands and a stanza larger than one record.
"""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from tests.support.cluster import Cluster, metric_value

HEADER = (
    b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
    b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>\n"
)


async def _read_until(stream: asyncio.StreamReader, seen: bytearray, needle: bytes) -> None:
    deadline = time.monotonic() + 10
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not seen; s_client said: {bytes(seen)[-2000:]!r}")
        chunk = await asyncio.wait_for(stream.read(4096), left)
        if not chunk:
            raise AssertionError(f"s_client ended before {needle!r}: {bytes(seen)[-2000:]!r}")
        seen += chunk


def _lean_handshakes(cluster: Cluster) -> float:
    return metric_value(cluster.metrics("cm-1"), "stanzad_cm_tls_handshakes_total", kind="lean")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
@pytest.mark.parametrize("command", [b"K\n", b"k\n"], ids=["update-requested", "not-requested"])
async def test_key_update_from_openssl_s_client(cluster: Cluster, command: bytes) -> None:
    before = _lean_handshakes(cluster)
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{cluster.c2s_port}",
        "-starttls", "xmpp", "-xmpphost", "localhost", "-tls1_3",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    seen = bytearray()
    try:
        await _read_until(proc.stdout, seen, b"Verify return code")  # handshake done
        proc.stdin.write(HEADER)  # the stream restarts over TLS (RFC 6120 §5.4.3.3)
        await _read_until(proc.stdout, seen, b"</stream:features>")
        proc.stdin.write(command)  # s_client: KeyUpdate (K: and ask for the server's)
        await _read_until(proc.stdout, seen, b"KEYUPDATE")
        await asyncio.sleep(0.3)  # s_client reads its stdin in chunks: the command alone
        proc.stdin.write(HEADER)  # an XML declaration mid-stream: a stream error back
        await _read_until(proc.stdout, seen, b"</stream:stream>")
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    text = bytes(seen)
    assert text.count(b"<stream:features") == 1
    assert b"bad record mac" not in text.lower() and b"alert" not in text.lower()
    assert _lean_handshakes(cluster) == before + 1


@pytest.mark.skipif(shutil.which("gnutls-cli") is None, reason="no gnutls-cli (gnutls-bin)")
async def test_gnutls_cli_rekeys_and_sends_more_than_a_record(cluster: Cluster) -> None:
    before = _lean_handshakes(cluster)
    proc = await asyncio.create_subprocess_exec(
        "gnutls-cli", "--insecure", "--starttls-proto=xmpp", "--inline-commands",
        "-p", str(cluster.c2s_port), "localhost",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    seen = bytearray()
    try:
        await _read_until(proc.stdout, seen, b"Handshake was completed")
        proc.stdin.write(HEADER)
        await _read_until(proc.stdout, seen, b"</stream:features>")
        for command in (b"^rekey1^\n", b"^rekey^\n"):  # KeyUpdate asking for ours; not asking
            proc.stdin.write(command)
            await _read_until(proc.stdout, seen, b"Rekey was completed")
            del seen[: seen.index(b"Rekey was completed") + 5]
        # 20 KB, more than a record (2^14) and than a stanza may be before authentication
        proc.stdin.write(b"<presence>" + b"x" * 20_000 + b"</presence>\n")
        await _read_until(proc.stdout, seen, b"</stream:stream>")
        await _read_until(proc.stdout, seen, b"Peer has closed the GnuTLS connection")
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert b"stanza too large" in seen  # our stream error, read through the rekeyed session
    assert _lean_handshakes(cluster) == before + 1
