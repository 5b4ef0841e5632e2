"""External components (XEP-0114) on the s2s gateway's component port: a slixmpp
ComponentXMPP serves bot.localhost and users talk to it; wrong secrets and unknown domains
are refused; a reconnect replaces the old stream."""

from __future__ import annotations

import asyncio
from typing import Any

import slixmpp

from tests.conftest import COMPONENT_SECRET, Users
from tests.support.cluster import Cluster, metric_value
from tests.support.xmpp import Client, RawClient, eventually

BOT = "bot.localhost"


class Echo(slixmpp.ComponentXMPP):
    """A component that answers every chat message with its body, prefixed by its name."""

    def __init__(self, secret: str, port: int, name: str = "echo") -> None:
        super().__init__(BOT, secret, "127.0.0.1", port)
        self.name = name
        self.started = asyncio.Event()
        self.ended = asyncio.Event()
        self.received: list[str] = []
        self.register_plugin("xep_0030")
        self.add_event_handler("session_start", lambda *_: self.started.set())
        self.add_event_handler("disconnected", lambda *_: self.ended.set())
        self.add_event_handler("message", self._echo)

    def _echo(self, msg: Any) -> None:
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.received.append(str(msg["body"]))
            msg.reply(f"{self.name}: {msg['body']}").send()


async def _start(component: Echo) -> None:
    component.connect()
    await asyncio.wait_for(component.started.wait(), 20)


async def _stop(component: Echo) -> None:
    component.disconnect()
    await asyncio.wait_for(component.ended.wait(), 10)


async def _raw_component(cluster: Cluster, domain: str) -> tuple[RawClient, bytes]:
    raw = RawClient("127.0.0.1", cluster.component_port)
    await raw.open()
    await raw.send(f"<stream:stream xmlns='jabber:component:accept' "
                   f"xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>".encode())
    return raw, await raw.read_until(b"id=", timeout=10)


async def test_xep0114_a_component_handles_its_domain_and_a_user_talks_to_it(
    ways_cluster: Cluster, ways_users: Users
) -> None:
    jid, pw = await ways_users.create("alice")
    bot = Echo(COMPONENT_SECRET, ways_cluster.component_port)
    alice = Client(jid, pw)
    try:
        await _start(bot)
        await alice.login("127.0.0.1", ways_cluster.c2s_port)
        # the component's domain is listed with the server's items (XEP-0030)
        alice.register_plugin("xep_0030")
        items = await alice.plugin["xep_0030"].get_items(jid="localhost", timeout=10)
        assert BOT in {i[0] for i in items["disco_items"]["items"]}
        for n in range(5):  # in order, RFC 6120 §10.1
            alice.send_message(mto=f"weather@{BOT}", mbody=f"ping {n}", mtype="chat")
        got = [await asyncio.wait_for(alice.messages.get(), 15) for _ in range(5)]
        assert [str(m["body"]) for m in got] == [f"echo: ping {n}" for n in range(5)]
        assert all(str(m["from"]) == f"weather@{BOT}" for m in got)
        # an IQ to the component's domain is answered by the component (its disco#info)
        info = await alice.plugin["xep_0030"].get_info(jid=BOT, timeout=10)
        assert info["type"] == "result"
        text = ways_cluster.metrics("s2s-1")
        assert metric_value(text, "stanzad_component_connected", domain=BOT) == 1
        assert metric_value(text, "stanzad_component_stanzas_total", domain=BOT,
                            direction="in") >= 6
        assert metric_value(text, "stanzad_component_stanzas_total", domain=BOT,
                            direction="out") >= 6
    finally:
        await alice.logout()
        await _stop(bot)


async def test_xep0114_3_1_a_wrong_secret_is_refused(ways_cluster: Cluster) -> None:
    raw, header = await _raw_component(ways_cluster, BOT)
    try:
        assert b"id=" in header and b"jabber:component:accept" in header
        await raw.send(b"<handshake>0123456789abcdef0123456789abcdef01234567</handshake>")
        data = await raw.read_all(10)
        assert b"<not-authorized" in data and data.rstrip().endswith(b"</stream:stream>")
    finally:
        await raw.close()
    bot = Echo("not-the-secret", ways_cluster.component_port)
    bot.connect()
    try:
        await asyncio.wait_for(bot.ended.wait(), 15)
        assert not bot.started.is_set()
    finally:
        bot.disconnect()
    text = ways_cluster.metrics("s2s-1")
    assert metric_value(text, "stanzad_component_auth_failures_total",
                        reason="bad-handshake") >= 2


async def test_rfc6120_4_9_3_6_an_unknown_domain_is_host_unknown(ways_cluster: Cluster) -> None:
    raw, header = await _raw_component(ways_cluster, "nobody.localhost")
    try:
        data = header + await raw.read_all(10)
        assert b"<host-unknown" in data, data
    finally:
        await raw.close()


async def test_a_reconnect_replaces_the_old_stream(ways_cluster: Cluster,
                                                   ways_users: Users) -> None:
    jid, pw = await ways_users.create("bob")
    first = Echo(COMPONENT_SECRET, ways_cluster.component_port, "first")
    second = Echo(COMPONENT_SECRET, ways_cluster.component_port, "second")
    bob = Client(jid, pw)
    try:
        await _start(first)
        await bob.login("127.0.0.1", ways_cluster.c2s_port)
        bob.send_message(mto=BOT, mbody="one", mtype="chat")
        assert str((await asyncio.wait_for(bob.messages.get(), 15))["body"]) == "first: one"
        await _start(second)
        await asyncio.wait_for(first.ended.wait(), 15)  # closed with <conflict/>
        # the new stream gets what is sent from now on (its claim may need a moment)
        async def second_answers() -> bool:
            bob.send_message(mto=BOT, mbody="two", mtype="chat")
            try:
                got = await asyncio.wait_for(bob.messages.get(), 2)
            except TimeoutError:
                return False
            return str(got["body"]) == "second: two"

        await eventually(second_answers, 20, "the second stream answering")
        assert "two" not in first.received
    finally:
        await bob.logout()
        first.disconnect()
        await _stop(second)
