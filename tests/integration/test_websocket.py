"""XMPP over WebSocket (RFC 7395) and XEP-0156 discovery on the connection manager's HTTP
port, with aiohttp's WebSocket client speaking the protocol as a browser client does.

slixmpp (1.17, the test client elsewhere) has no WebSocket transport, so a real client's
view here is aiohttp's."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from collections.abc import AsyncIterator

import aiohttp
import pytest
from lxml import etree

from tests.conftest import Users
from tests.integration.test_chat import _wait_available
from tests.support.cluster import Cluster, metric_value
from tests.support.xmpp import Client

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
OPEN = f'<open xmlns="{FRAMING}" to="localhost" version="1.0"/>'
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


class WSClient:
    """An RFC 7395 client: one element per text message, each parsed on its own (§3.3.3)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, xml: str) -> None:
        await self.ws.send_str(xml)

    async def recv(self, timeout: float = 15) -> etree._Element:
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        return etree.fromstring(msg.data.encode())  # a standalone document, or this fails

    async def recv_until(self, tag: str, timeout: float = 15) -> etree._Element:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            el = await self.recv(max(0.1, deadline - loop.time()))
            if el.tag == tag:
                return el

    async def open(self) -> etree._Element:
        """<open/> both ways, then the features."""
        await self.send(OPEN)
        opened = await self.recv()
        assert opened.tag == f"{{{FRAMING}}}open"
        assert opened.get("from") == "localhost" and opened.get("version") == "1.0"
        assert opened.get("id")
        features = await self.recv()
        assert features.tag == "{http://etherx.jabber.org/streams}features"
        return features

    async def login(self, jid: str, password: str, resource: str = "ws") -> str:
        features = await self.open()
        mechs = [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
        assert "PLAIN" in mechs
        assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None  # §3.7
        local = jid.partition("@")[0]
        token = base64.b64encode(f"\0{local}\0{password}".encode()).decode()
        await self.send(f'<auth xmlns="{SASL}" mechanism="PLAIN">{token}</auth>')
        assert (await self.recv()).tag == f"{{{SASL}}}success"
        features = await self.open()
        assert features.find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is not None
        assert features.find("{urn:xmpp:sm:3}sm") is not None  # the same features as TCP
        await self.send(
            '<iq xmlns="jabber:client" type="set" id="b1"><bind '
            f'xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>{resource}</resource></bind></iq>'
        )
        result = await self.recv_until("{jabber:client}iq")
        assert result.get("type") == "result", etree.tostring(result)
        return result.findtext(".//{urn:ietf:params:xml:ns:xmpp-bind}jid") or ""


def _url(cluster: Cluster, name: str = "cm-1", path: str = "/xmpp-websocket") -> str:
    return f"http://127.0.0.1:{cluster.http_ports[name]}{path}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_rfc7395_client_logs_in_and_chats_with_a_tcp_client(
    cluster: Cluster, users: Users, http: aiohttp.ClientSession
) -> None:
    alice_jid, alice_pw = await users.create("wsalice")
    bob_jid, bob_pw = await users.create("tcpbob")
    bob = Client(bob_jid + "/tcp", bob_pw)
    await bob.login("127.0.0.1", cluster.c2s_port)
    async with http.ws_connect(_url(cluster), protocols=("xmpp",)) as ws:
        assert ws.protocol == "xmpp"  # RFC 7395 §3.1
        alice = WSClient(ws)
        full = await alice.login(alice_jid, alice_pw)
        assert full == f"{alice_jid}/ws"
        await alice.send('<presence xmlns="jabber:client"/>')
        await _wait_available(users, [alice_jid, bob_jid])
        for i in range(20):  # one stanza per message, in order both ways
            await alice.send(f'<message xmlns="jabber:client" to="{bob_jid}" type="chat">'
                             f"<body>ws{i}</body></message>")
            bob.send_message(mto=full, mbody=f"tcp{i}", mtype="chat")
        got_bob = [(await asyncio.wait_for(bob.messages.get(), 15))["body"] for _ in range(20)]
        assert got_bob == [f"ws{i}" for i in range(20)]
        got_alice = []
        while len(got_alice) < 20:
            el = await alice.recv_until("{jabber:client}message")
            assert el.get("from", "").startswith(bob_jid)
            got_alice.append(el.findtext("{jabber:client}body"))
        assert got_alice == [f"tcp{i}" for i in range(20)]
        # a server IQ's answer comes in its own message, as a standalone document
        await alice.send('<iq xmlns="jabber:client" type="get" id="p1" to="localhost">'
                         '<ping xmlns="urn:xmpp:ping"/></iq>')
        pong = await alice.recv_until("{jabber:client}iq")
        assert pong.get("id") == "p1" and pong.get("type") == "result"
        await alice.send(f'<close xmlns="{FRAMING}"/>')  # RFC 7395 §3.6
        closed = await alice.recv_until(f"{{{FRAMING}}}close")
        assert closed.get("see-other-uri") is None
        end = await asyncio.wait_for(ws.receive(), 10)
        assert end.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await bob.logout()
    text = cluster.metrics("cm-1")
    assert metric_value(text, "stanzad_cm_transport_opened_total", transport="websocket") >= 1
    assert metric_value(text, "stanzad_cm_http_requests_total", endpoint="websocket",
                        status="101") >= 1


async def test_handshake_refusals(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    """RFC 7395 §3.1: the xmpp subprotocol; RFC 6455 §10.2: the Origin is checked (none
    configured here, so a browser's is refused); a plain GET gets 426."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(_url(cluster))
    assert exc.value.status == 400
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(_url(cluster), protocols=("xmpp",), origin="https://evil.example")
    assert exc.value.status == 403
    async with http.get(_url(cluster)) as resp:
        assert resp.status == 426
    async with http.get(_url(cluster, path="/nothing")) as resp:
        assert resp.status == 404


async def test_rfc6455_violations_close_the_connection(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """A binary message is not XMPP (RFC 7395 §3.2): closed with 1003."""
    async with http.ws_connect(_url(cluster), protocols=("xmpp",)) as ws:
        await ws.send_bytes(b"<open/>")
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1003


async def test_a_malformed_stanza_is_a_stream_error_then_close(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(_url(cluster), protocols=("xmpp",)) as ws:
        client = WSClient(ws)
        await client.open()
        await client.send("<message><body>unclosed</message>")
        error = await client.recv_until("{http://etherx.jabber.org/streams}error")
        assert error.find("{urn:ietf:params:xml:ns:xmpp-streams}not-well-formed") is not None
        await client.recv_until(f"{{{FRAMING}}}close")


async def test_host_meta_names_the_endpoints(cluster: Cluster, http: aiohttp.ClientSession
                                             ) -> None:
    """XEP-0156 §3: host-meta (XRD) and host-meta.json (JRD), readable cross-origin."""
    port = cluster.http_ports["cm-1"]
    ws_url = f"ws://localhost:{port}/xmpp-websocket"
    bosh_url = f"http://localhost:{port}/http-bind"
    async with http.get(_url(cluster, path="/.well-known/host-meta")) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        xrd = etree.fromstring(await resp.read())
    links = {link.get("rel"): link.get("href")
             for link in xrd.iter("{http://docs.oasis-open.org/ns/xri/xrd-1.0}Link")}
    assert links == {"urn:xmpp:alt-connections:websocket": ws_url,
                     "urn:xmpp:alt-connections:xbosh": bosh_url}
    async with http.get(_url(cluster, path="/.well-known/host-meta.json")) as resp:
        assert resp.status == 200
        doc = json.loads(await resp.read())
    assert {link["rel"]: link["href"] for link in doc["links"]} == links


async def test_behind_an_ingress_and_see_other_uri_on_drain(
    cluster: Cluster, users: Users, http: aiohttp.ClientSession
) -> None:
    """TLS by the ingress: from a trusted proxy, X-Forwarded-Proto says whether the client's
    bytes were protected (no SASL in the clear otherwise) and X-Forwarded-For names the
    client.  On SIGTERM the stream gets RFC 7395 §3.6.1's <close see-other-uri/>."""
    name = "cm-ws-ingress"
    redirect = "wss://other.example/xmpp-websocket"
    cluster.start_cm(name, STANZAD_HTTP_TRUSTED_PROXIES="127.0.0.0/8",
                     STANZAD_WEBSOCKET_REDIRECT_URI=redirect,
                     STANZAD_WEBSOCKET_ORIGINS="https://chat.example")
    try:
        async with http.ws_connect(
            _url(cluster, name), protocols=("xmpp",),
            headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "http"},
        ) as ws:
            features = await WSClient(ws).open()
            assert features.find(f"{{{SASL}}}mechanisms") is None  # not protected: no SASL
        jid, pw = await users.create("wsingress")
        async with http.ws_connect(
            _url(cluster, name), protocols=("xmpp",), origin="https://chat.example",
            headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.8",
                     "X-Forwarded-Proto": "https"},
        ) as ws:
            client = WSClient(ws)
            assert await client.login(jid, pw) == f"{jid}/ws"
            await asyncio.to_thread(cluster.kill, name, signal.SIGTERM, 30)
            closed = await client.recv_until(f"{{{FRAMING}}}close")
            assert closed.get("see-other-uri") == redirect
    finally:
        if cluster.procs[name].poll() is None:
            cluster.kill(name)
