"""BOSH (XEP-0124, XEP-0206) on the connection manager's HTTP port, with plain HTTP POSTs."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest
from lxml import etree

from tests.conftest import Users
from tests.integration.test_chat import _wait_available
from tests.support.cluster import Cluster
from tests.support.xmpp import Client

BOSH = "http://jabber.org/protocol/httpbind"
XBOSH = "urn:xmpp:xbosh"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


class BoshClient:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.rid = 4_000_000
        self.sid = ""

    async def post(self, inner: str = "", timeout: float = 20, **attrs: str) -> etree._Element:
        self.rid += 1
        attrs = {"rid": str(self.rid), **({"sid": self.sid} if self.sid else {}), **attrs}
        text = " ".join(f"{k}='{v}'" for k, v in attrs.items())
        body = f"<body {text} xmlns='{BOSH}' xmlns:xmpp='{XBOSH}'>{inner}</body>"
        async with self.http.post(self.url, data=body.encode(),
                                  headers={"Content-Type": "text/xml; charset=utf-8"},
                                  timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            assert resp.status == 200, await resp.text()
            return etree.fromstring(await resp.read())

    async def create(self) -> etree._Element:
        """XEP-0206 §3: the session creation request."""
        reply = await self.post(to="localhost", wait="5", hold="1", ver="1.11",
                                **{"xmpp:version": "1.0", "xml:lang": "en"})
        self.sid = reply.get("sid") or ""
        assert self.sid, etree.tostring(reply)
        return reply

    async def until(self, tag: str, tries: int = 10) -> etree._Element:
        """Empty polls until an element arrives (XEP-0124 §8)."""
        for _ in range(tries):
            reply = await self.post()
            found = reply.find(tag)
            if found is not None:
                return found
        raise AssertionError(f"no {tag}")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _url(cluster: Cluster) -> str:
    return f"http://127.0.0.1:{cluster.http_ports['cm-1']}/http-bind"


async def test_bosh_session_logs_in_and_chats_with_a_tcp_client(
    cluster: Cluster, users: Users, http: aiohttp.ClientSession
) -> None:
    alice_jid, alice_pw = await users.create("boshalice")
    bob_jid, bob_pw = await users.create("boshbob")
    bob = Client(bob_jid + "/tcp", bob_pw)
    await bob.login("127.0.0.1", cluster.c2s_port)
    client = BoshClient(http, _url(cluster))
    created = await client.create()
    assert created.get("ver") and created.get("requests") == "2"
    assert created.get(f"{{{XBOSH}}}version") == "1.0"
    features = created.find("{http://etherx.jabber.org/streams}features")
    if features is None:  # the features may come in the next answer
        features = await client.until("{http://etherx.jabber.org/streams}features")
    assert features.find(f"{{{SASL}}}mechanisms") is not None
    token = base64.b64encode(f"\0{alice_jid.partition('@')[0]}\0{alice_pw}".encode()).decode()
    reply = await client.post(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
    success = reply.find(f"{{{SASL}}}success")
    if success is None:
        success = await client.until(f"{{{SASL}}}success")
    reply = await client.post(to="localhost", **{"xmpp:restart": "true"})  # XEP-0206 §5
    if reply.find("{http://etherx.jabber.org/streams}features") is None:
        await client.until("{http://etherx.jabber.org/streams}features")
    reply = await client.post(
        "<iq xmlns='jabber:client' type='set' id='b1'><bind "
        "xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bosh</resource></bind></iq>")
    iq = reply.find("{jabber:client}iq")
    if iq is None:
        iq = await client.until("{jabber:client}iq")
    assert iq.get("type") == "result"
    assert iq.findtext(".//{urn:ietf:params:xml:ns:xmpp-bind}jid") == f"{alice_jid}/bosh"
    await client.post("<presence xmlns='jabber:client'/>")
    await _wait_available(users, [alice_jid, bob_jid])
    await client.post(f"<message xmlns='jabber:client' to='{bob_jid}' type='chat'>"
                      "<body>from bosh</body></message>")
    assert (await asyncio.wait_for(bob.messages.get(), 15))["body"] == "from bosh"
    # a held request (long poll) is answered when bob's message arrives
    poll = asyncio.create_task(client.post())
    await asyncio.sleep(0.3)
    bob.send_message(mto=f"{alice_jid}/bosh", mbody="to bosh", mtype="chat")
    reply = await poll
    message = reply.find("{jabber:client}message")
    if message is None:
        message = await client.until("{jabber:client}message")
    assert message.findtext("{jabber:client}body") == "to bosh"
    end = await client.post(type="terminate")
    assert end.get("type") == "terminate"
    # the session is gone: its sid is unknown now (XEP-0124 §17.2)
    gone = await client.post()
    assert gone.get("type") == "terminate" and gone.get("condition") == "item-not-found"
    await bob.logout()


async def test_bosh_refusals(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    client = BoshClient(http, _url(cluster))
    reply = await client.post(to="elsewhere.example", wait="5", hold="1")
    assert reply.get("type") == "terminate" and reply.get("condition") == "host-unknown"
    client.sid = "no-such-session"
    reply = await client.post()
    assert reply.get("condition") == "item-not-found"
    async with http.post(_url(cluster), data=b"<notbody/>") as resp:
        assert resp.status == 400
    async with http.get(_url(cluster)) as resp:
        assert resp.status == 405
    async with http.post(_url(cluster), data=b"x" * (70 * 1024)) as resp:  # > 64 KiB
        assert resp.status == 413
