"""BOSH (XEP-0124, XEP-0206) on the connection manager's HTTP port, with plain HTTP POSTs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
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
STREAM = "http://etherx.jabber.org/streams"


def key_chain(n: int) -> list[str]:
    """XEP-0124 §15.3: K(1) = hex(SHA-1(seed)), K(i) = hex(SHA-1(K(i-1))); K(1) … K(n)."""
    keys = [hashlib.sha1(secrets.token_bytes(20)).hexdigest()]
    while len(keys) < n:
        keys.append(hashlib.sha1(keys[-1].encode()).hexdigest())
    return keys


class BoshClient:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.rid = 4_000_000
        self.sid = ""
        self.polling = 0.0  # a polling session's 'polling' (XEP-0124 §12)
        self.last_empty = False  # the last answer carried nothing
        self.created: etree._Element | None = None  # the session creation response

    async def post(self, inner: str = "", timeout: float = 20, rid: int | None = None,
                   **attrs: str) -> etree._Element:
        return etree.fromstring(await self.post_raw(inner, timeout, rid, **attrs))

    async def post_raw(self, inner: str = "", timeout: float = 20, rid: int | None = None,
                       **attrs: str) -> bytes:
        """One request; ``rid`` given: that one again (a retransmission, §14.3)."""
        if rid is None:
            self.rid += 1
            rid = self.rid
        attrs = {"rid": str(rid), **({"sid": self.sid} if self.sid else {}), **attrs}
        text = " ".join(f"{k}='{v}'" for k, v in attrs.items())
        body = f"<body {text} xmlns='{BOSH}' xmlns:xmpp='{XBOSH}'>{inner}</body>"
        if self.polling and self.last_empty and not inner and len(attrs) <= 2:
            await asyncio.sleep(self.polling + 0.2)  # §12: not more often than 'polling'
        async with self.http.post(self.url, data=body.encode(),
                                  headers={"Content-Type": "text/xml; charset=utf-8"},
                                  timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            assert resp.status == 200, await resp.text()
            data = await resp.read()
        self.last_empty = len(etree.fromstring(data)) == 0
        return data

    async def create(self, **attrs: str) -> etree._Element:
        """XEP-0206 §3: the session creation request."""
        attrs = {"wait": "5", "hold": "1", **attrs}
        reply = await self.post(to="localhost", ver="1.11",
                                **{"xmpp:version": "1.0", "xml:lang": "en"}, **attrs)
        self.sid = reply.get("sid") or ""
        assert self.sid, etree.tostring(reply)
        self.created = reply
        return reply

    async def until(self, tag: str, tries: int = 10) -> etree._Element:
        """Empty polls until an element arrives (XEP-0124 §8)."""
        for _ in range(tries):
            reply = await self.post()
            found = reply.find(tag)
            if found is not None:
                return found
        raise AssertionError(f"no {tag}")

    async def reply_with(self, tag: str, inner: str = "", **attrs: str) -> etree._Element:
        """A request and the element it brings, in its answer or a later one."""
        reply = await self.post(inner, **attrs)
        found = reply.find(tag)
        return found if found is not None else await self.until(tag)

    async def login(self, jid: str, password: str, resource: str) -> None:
        """SASL PLAIN, the restart (XEP-0206 §5), binding and initial presence."""
        if self.created is None or self.created.find(f"{{{STREAM}}}features") is None:
            await self.until(f"{{{STREAM}}}features")
        token = base64.b64encode(f"\0{jid.partition('@')[0]}\0{password}".encode()).decode()
        await self.reply_with(f"{{{SASL}}}success",
                              f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        await self.reply_with(f"{{{STREAM}}}features", to="localhost",
                              **{"xmpp:restart": "true"})
        iq = await self.reply_with(
            "{jabber:client}iq", "<iq xmlns='jabber:client' type='set' id='b1'><bind "
            f"xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource>"
            "</bind></iq>")
        assert iq.get("type") == "result"
        await self.post("<presence xmlns='jabber:client'/>")


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


def _terminated(reply: etree._Element, condition: str) -> bool:
    return reply.get("type") == "terminate" and reply.get("condition") == condition


async def test_bosh_key_sequence_xep0124_s15(cluster: Cluster, http: aiohttp.ClientSession
                                             ) -> None:
    """§15.4: each request's key hashes (SHA-1) to the one before; §15.5: a new sequence
    starts with 'newkey' beside the old one's last key; a wrong or missing key ends the
    session with item-not-found; a retransmission must repeat its key (§14.3)."""
    k = key_chain(4)
    client = BoshClient(http, _url(cluster))
    await client.create(wait="1", newkey=k[3])
    assert not (await client.post(key=k[2])).get("type")
    first = await client.post_raw(key=k[1])
    assert etree.fromstring(first).get("type") is None
    assert await client.post_raw(rid=client.rid, key=k[1]) == first  # §14.3: same answer
    new = key_chain(3)
    assert not (await client.post(key=k[0], newkey=new[2])).get("type")  # §15.5
    assert not (await client.post(key=new[1])).get("type")
    # an injected request that does not know the next key: refused, and the session ends
    assert _terminated(await client.post(key=new[1]), "item-not-found")
    assert _terminated(await client.post(key=new[0]), "item-not-found")
    # a request without a key where one is due
    other = BoshClient(http, _url(cluster))
    k = key_chain(3)
    await other.create(wait="1", newkey=k[2])
    assert _terminated(await other.post(), "item-not-found")
    assert _terminated(await other.post(key=k[1]), "item-not-found")
    # a retransmission with another key than the original's
    third = BoshClient(http, _url(cluster))
    k = key_chain(3)
    await third.create(wait="1", newkey=k[2])
    assert not (await third.post(key=k[1])).get("type")
    assert _terminated(await third.post(rid=third.rid, key=k[2]), "item-not-found")
    # a session without keys takes requests without them (the mechanism is optional)
    plain = BoshClient(http, _url(cluster))
    await plain.create(wait="1")
    assert not (await plain.post()).get("type")
    await plain.post(type="terminate")


async def test_bosh_polling_session_xep0124_s12(
    cluster: Cluster, users: Users, http: aiohttp.ClientSession
) -> None:
    """§12: 'hold' 0 asks for a polling session: 'hold' 0, 'requests' 1, 'polling' and a
    longer 'inactivity' in the creation response (§7.2), every request answered at once; a
    session polling at the 'polling' interval logs in and chats; two empty polls closer than
    that, the first answered empty: policy-violation."""
    alice_jid, alice_pw = await users.create("pollalice")
    bob_jid, bob_pw = await users.create("pollbob")
    bob = Client(bob_jid + "/tcp", bob_pw)
    await bob.login("127.0.0.1", cluster.c2s_port)
    client = BoshClient(http, _url(cluster))
    created = await client.create(hold="0", wait="60")
    assert created.get("hold") == "0" and created.get("requests") == "1"
    polling = int(created.get("polling") or 0)
    assert polling >= 1
    assert int(created.get("inactivity") or 0) > polling
    client.polling = polling
    await client.login(alice_jid, alice_pw, "poll")
    await _wait_available(users, [alice_jid, bob_jid])
    bob.send_message(mto=f"{alice_jid}/poll", mbody="to a poller", mtype="chat")
    message = await client.until("{jabber:client}message")
    assert message.findtext("{jabber:client}body") == "to a poller"
    # a request held by a polling session would be answered after 'wait' (60 s): no
    for _ in range(10):  # until an answer comes back empty
        if (await asyncio.wait_for(client.post(), 15)).find("*") is None:
            break
    else:
        raise AssertionError("every poll brought something")
    client.polling = 0  # now too soon after an empty answer
    assert _terminated(await client.post(), "policy-violation")
    assert _terminated(await client.post(), "item-not-found")
    await bob.logout()


async def test_bosh_pause_xep0124_s10(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    """§10: 'maxpause' in the creation response; a 'pause' answers every held request at
    once and sets this idle period's inactivity; the next request restores the usual one."""
    client = BoshClient(http, _url(cluster))
    created = await client.create(wait="30")
    maxpause = int(created.get("maxpause") or 0)
    assert maxpause >= 2
    if created.find("*") is None:
        await client.until(f"{{{STREAM}}}features")
    held = asyncio.create_task(client.post())  # held up to 30 s
    await asyncio.sleep(0.3)
    paused = await asyncio.wait_for(client.post(pause=str(maxpause)), 10)
    assert paused.get("type") is None and paused.find("*") is None  # no payloads (§10)
    assert (await asyncio.wait_for(held, 10)).get("type") is None  # answered, not held
    # the next request ends the pause; a pause shorter than 'inactivity' ends the session
    # sooner (§10: a client that fears losing its connection may ask for that)
    assert (await client.post(pause="1")).get("type") is None
    await asyncio.sleep(5)
    assert _terminated(await client.post(), "item-not-found")
