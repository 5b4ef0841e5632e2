"""Direct TLS c2s (XEP-0368): TLS from the first byte on its own port, ALPN xmpp-client.

Real software here: slixmpp's direct TLS, and go-sendxmpp (Debian package; `.ci/run` installs
it, elsewhere its test skips with the reason) sending a message over direct TLS."""

from __future__ import annotations

import asyncio
import shutil
import ssl

import pytest

from tests.conftest import Users
from tests.integration.test_chat import _wait_available
from tests.support.cluster import Cluster, metric_value
from tests.support.xmpp import Client, insecure_context


async def test_slixmpp_logs_in_over_direct_tls_and_chats(cluster: Cluster, users: Users) -> None:
    alice_jid, alice_pw = await users.create("dtls")
    bob_jid, bob_pw = await users.create("starttls")
    alice = Client(alice_jid + "/direct", alice_pw)
    alice.enable_direct_tls = True
    alice.enable_starttls = False
    bob = Client(bob_jid + "/tcp", bob_pw)
    await alice.login("127.0.0.1", cluster.tls_ports["cm-1"])
    await bob.login("127.0.0.1", cluster.c2s_port)
    try:
        assert alice.used_mech == "SCRAM-SHA-256"
        await _wait_available(users, [alice_jid, bob_jid])
        alice.send_message(mto=bob_jid, mbody="over direct TLS", mtype="chat")
        msg = await asyncio.wait_for(bob.messages.get(), 15)
        assert msg["body"] == "over direct TLS"
        bob.send_message(mto=alice_jid + "/direct", mbody="back", mtype="chat")
        assert (await asyncio.wait_for(alice.messages.get(), 15))["body"] == "back"
    finally:
        await alice.logout()
        await bob.logout()
    text = cluster.metrics("cm-1")
    assert metric_value(text, "stanzad_cm_transport_opened_total", transport="tls") >= 1


async def _features_over_direct_tls(port: int, alpn: list[str] | None) -> tuple[str | None, bytes]:
    ctx = insecure_context()
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname="localhost")
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        selected = ssl_object.selected_alpn_protocol()
        writer.write(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                     b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' "
                     b"version='1.0'>")
        data = b""
        while b"</stream:features>" not in data:
            chunk = await asyncio.wait_for(reader.read(4096), 10)
            assert chunk, data
            data += chunk
        return selected, data
    finally:
        writer.close()


async def test_alpn_xmpp_client_and_no_starttls_inside(cluster: Cluster) -> None:
    """XEP-0368 §3: ALPN "xmpp-client" is selected when offered, a client without ALPN is
    served too; the stream is already protected, so SASL is offered and STARTTLS is not."""
    port = cluster.tls_ports["cm-1"]
    selected, features = await _features_over_direct_tls(port, ["xmpp-client"])
    assert selected == "xmpp-client"
    assert b"<mechanisms" in features and b"starttls" not in features
    selected, features = await _features_over_direct_tls(port, None)
    assert selected is None and b"<mechanisms" in features


async def test_plaintext_on_the_direct_tls_port_gets_no_stream(cluster: Cluster) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.tls_ports["cm-1"])
    try:
        writer.write(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                     b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' "
                     b"version='1.0'>")
        data = await asyncio.wait_for(reader.read(4096), 10)
        assert b"<stream:" not in data  # a TLS alert at most, then the connection closes
    finally:
        writer.close()


@pytest.mark.skipif(shutil.which("go-sendxmpp") is None,
                    reason="go-sendxmpp (Debian package) is not installed")
async def test_go_sendxmpp_sends_over_direct_tls(cluster: Cluster, users: Users) -> None:
    """XEP-0368 held against another client: go-sendxmpp logs in with direct TLS (`-t`) and
    its message reaches a slixmpp client."""
    sender_jid, sender_pw = await users.create("gosend")
    bob_jid, bob_pw = await users.create("gorecv")
    bob = Client(bob_jid + "/tcp", bob_pw)
    await bob.login("127.0.0.1", cluster.c2s_port)
    try:
        await _wait_available(users, [bob_jid])
        proc = await asyncio.create_subprocess_exec(
            "go-sendxmpp", "-t", "-n", "-j", f"127.0.0.1:{cluster.tls_ports['cm-1']}",
            "-u", sender_jid, "-p", sender_pw, "--timeout", "20", bob_jid,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(b"hello from go-sendxmpp\n"), 60)
        assert proc.returncode == 0, out
        msg = await asyncio.wait_for(bob.messages.get(), 20)
        assert msg["body"].strip() == "hello from go-sendxmpp"
        assert msg["from"].bare == sender_jid
    finally:
        await bob.logout()
