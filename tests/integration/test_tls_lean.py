"""Lean TLS sessions against other TLS stacks' own clients, over the connection manager's socket.

Lean sessions are opt-in (`STANZAD_TLS_LEAN_SESSIONS`, off by default): these tests start a
connection manager of their own with them on.  Each client logs in and binds, then stays
silent until the connection manager hands the idle session's record layer over to its own
(`stanzad_cm_tls_lean_handovers_total`); everything after that goes through
`shared/tls/records.py`.

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
from collections.abc import AsyncIterator, Iterator

import pytest

from devtools import localservers
from tests.conftest import Users
from tests.support.cluster import Cluster, metric_value

LEAN_CM = "cm-lean"

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


@pytest.fixture(scope="module")
def lean_port(cluster: Cluster) -> Iterator[int]:
    """A connection manager with lean sessions on (the session's cm-1 has the default, off)."""
    port = cluster.start_cm(
        LEAN_CM, STANZAD_TLS_LEAN_SESSIONS="true", STANZAD_HIBERNATE_AFTER_S="0.5"
    )
    try:
        yield port
    finally:
        localservers.stop(cluster.procs.pop(LEAN_CM))
        cluster.c2s_ports.remove(port)


def _handovers(cluster: Cluster, cm: str = LEAN_CM) -> float:
    return metric_value(cluster.metrics(cm), "stanzad_cm_tls_lean_handovers_total")


async def _log_in_and_idle(
    cluster: Cluster, stdin: asyncio.StreamWriter, stdout: asyncio.StreamReader,
    seen: bytearray, jid: str, password: str,
) -> None:
    """SASL PLAIN and bind over the client's TLS, then silence until the connection manager
    hands the idle session's record layer over (STANZAD_HIBERNATE_AFTER_S, 0.5 s here)."""
    before = _handovers(cluster)
    await _log_in(stdin, stdout, seen, jid, password)
    deadline = time.monotonic() + 15
    while _handovers(cluster) < before + 1:
        assert time.monotonic() < deadline, "the idle session was not handed over"
        await asyncio.sleep(0.5)


async def _log_in(
    stdin: asyncio.StreamWriter, stdout: asyncio.StreamReader, seen: bytearray, jid: str,
    password: str,
) -> None:
    """SASL PLAIN and bind over the client's TLS."""
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


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
@pytest.mark.parametrize("command", [b"K\n", b"k\n"], ids=["update-requested", "not-requested"])
async def test_key_update_from_openssl_s_client(
    cluster: Cluster, users: Users, lean_port: int, command: bytes
) -> None:
    jid, password = await users.create("lean")
    seen = bytearray()
    async with _client(
        "openssl", "s_client", "-connect", f"127.0.0.1:{lean_port}",
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
    cluster: Cluster, users: Users, lean_port: int
) -> None:
    jid, password = await users.create("lean")
    seen = bytearray()
    async with _client(
        "gnutls-cli", "--insecure", "--starttls-proto=xmpp", "--inline-commands",
        "-p", str(lean_port), "localhost",
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


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
async def test_lean_sessions_are_off_by_default(cluster: Cluster, users: Users) -> None:
    """The session's cm-1 runs with the default STANZAD_TLS_LEAN_SESSIONS=false: a TLS 1.3
    session that idles past its hibernation stays on OpenSSL."""
    jid, password = await users.create("notlean")
    metrics = cluster.metrics("cm-1")
    openssl_before = metric_value(metrics, "stanzad_cm_tls_handshakes_total", kind="openssl")
    hibernated = metric_value(metrics, "stanzad_cm_parsers_hibernated_total")
    seen = bytearray()
    async with _client(
        "openssl", "s_client", "-connect", f"127.0.0.1:{cluster.c2s_port}",
        "-starttls", "xmpp", "-xmpphost", "localhost", "-tls1_3",
    ) as (stdin, stdout):
        await _read_until(stdout, seen, b"Verify return code")
        await _log_in(stdin, stdout, seen, jid, password)
        deadline = time.monotonic() + 15  # cm-1 hibernates after 0.5 s (tests/conftest.py)
        while metric_value(cluster.metrics("cm-1"), "stanzad_cm_parsers_hibernated_total") \
                <= hibernated:
            assert time.monotonic() < deadline, "the idle session did not hibernate"
            await asyncio.sleep(0.5)
        stdin.write(b"<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>\n")
        await _read_until(stdout, seen, b"id=\"p2\"")
    metrics = cluster.metrics("cm-1")
    assert metric_value(metrics, "stanzad_cm_tls_handshakes_total", kind="openssl") \
        >= openssl_before + 1
    assert metric_value(metrics, "stanzad_cm_tls_handshakes_total", kind="lean") == 0
    assert _handovers(cluster, "cm-1") == 0
