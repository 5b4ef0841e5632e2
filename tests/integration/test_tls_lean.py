"""Lean TLS sessions against other TLS stacks' own clients, over the connection manager's socket.

Each client logs in and binds, then stays silent until the connection manager hands the idle
session's record layer over to its own (`stanzad_cm_tls_lean_handovers_total`); everything
after that goes through `shared/tls/records.py`.

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
import base64
import contextlib
import shutil
import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import Users
from tests.support.cluster import Cluster, metric_value

HEADER = (
    b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
    b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>\n"
)


async def _read_until(stream: asyncio.StreamReader, seen: bytearray, needle: bytes) -> None:
    deadline = time.monotonic() + 15
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not seen; the client said: {bytes(seen)[-2000:]!r}")
        chunk = await asyncio.wait_for(stream.read(4096), left)
        if not chunk:
            raise AssertionError(f"the client ended before {needle!r}: {bytes(seen)[-2000:]!r}")
        seen += chunk


@contextlib.asynccontextmanager
async def _client(*argv: str) -> AsyncIterator[tuple[asyncio.StreamWriter, asyncio.StreamReader]]:
    """A command-line TLS client on pipes (its stderr with its stdout), killed at the end."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        yield proc.stdin, proc.stdout
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def _handovers(cluster: Cluster) -> float:
    return metric_value(cluster.metrics("cm-1"), "stanzad_cm_tls_lean_handovers_total")


async def _log_in_and_idle(
    cluster: Cluster, stdin: asyncio.StreamWriter, stdout: asyncio.StreamReader,
    seen: bytearray, jid: str, password: str,
) -> None:
    """SASL PLAIN and bind over the client's TLS, then silence until the connection manager
    hands the idle session's record layer over (STANZAD_HIBERNATE_AFTER_S, 5 s)."""
    before = _handovers(cluster)
    stdin.write(HEADER)  # the stream restarts over TLS (RFC 6120 §5.4.3.3)
    await _read_until(stdout, seen, b"</stream:features>")
    token = base64.b64encode(f"\0{jid.split('@')[0]}\0{password}".encode()).decode()
    stdin.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                f"{token}</auth>\n".encode())
    await _read_until(stdout, seen, b"<success")
    stdin.write(HEADER)  # RFC 6120 §6.4.6
    await _read_until(stdout, seen, b"urn:ietf:params:xml:ns:xmpp-bind")
    stdin.write(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
                b"</iq>\n")
    await _read_until(stdout, seen, b"</jid>")
    deadline = time.monotonic() + 15
    while _handovers(cluster) < before + 1:
        assert time.monotonic() < deadline, "the idle session was not handed over"
        await asyncio.sleep(0.5)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
@pytest.mark.parametrize("command", [b"K\n", b"k\n"], ids=["update-requested", "not-requested"])
async def test_key_update_from_openssl_s_client(
    cluster: Cluster, users: Users, command: bytes
) -> None:
    jid, password = await users.create("lean")
    seen = bytearray()
    async with _client(
        "openssl", "s_client", "-connect", f"127.0.0.1:{cluster.c2s_port}",
        "-starttls", "xmpp", "-xmpphost", "localhost", "-tls1_3",
    ) as (stdin, stdout):
        await _read_until(stdout, seen, b"Verify return code")  # handshake done
        await _log_in_and_idle(cluster, stdin, stdout, seen, jid, password)
        stdin.write(command)  # s_client: KeyUpdate (K: and ask for the server's)
        await _read_until(stdout, seen, b"KEYUPDATE")
        await asyncio.sleep(0.3)  # s_client reads its stdin in chunks: the command alone
        stdin.write(b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>\n")
        await _read_until(stdout, seen, b"id=\"p1\"")  # under the new keys
        stdin.write(b"</stream:stream>\n")
        await _read_until(stdout, seen, b"</stream:stream>")
    assert b"alert" not in bytes(seen).lower()


@pytest.mark.skipif(shutil.which("gnutls-cli") is None, reason="no gnutls-cli (gnutls-bin)")
async def test_gnutls_cli_rekeys_and_sends_more_than_a_record(
    cluster: Cluster, users: Users
) -> None:
    jid, password = await users.create("lean")
    seen = bytearray()
    async with _client(
        "gnutls-cli", "--insecure", "--starttls-proto=xmpp", "--inline-commands",
        "-p", str(cluster.c2s_port), "localhost",
    ) as (stdin, stdout):
        await _read_until(stdout, seen, b"Handshake was completed")
        await _log_in_and_idle(cluster, stdin, stdout, seen, jid, password)
        full = seen[seen.rindex(b"<jid>") + 5 : seen.rindex(b"</jid>")].decode()
        for command in (b"^rekey1^\n", b"^rekey^\n"):  # KeyUpdate asking for ours; not asking
            stdin.write(command)
            await _read_until(stdout, seen, b"Rekey was completed")
            del seen[: seen.index(b"Rekey was completed") + 5]
        # 20 KB to our own full JID: more than a record (2^14) each way
        body = "y" * 20_000
        stdin.write(f"<message to='{full}' id='big'><body>{body}</body></message>\n".encode())
        await _read_until(stdout, seen, body.encode() + b"</body>")
        stdin.write(b"</stream:stream>\n")
        await _read_until(stdout, seen, b"Peer has closed the GnuTLS connection")
    assert b"</stream:stream>" in seen and b"stream:error" not in seen
