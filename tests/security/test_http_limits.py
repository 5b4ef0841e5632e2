"""The TCP port's edge limits on the HTTP port (WebSocket, BOSH) and on direct TLS: the
per-address cap of unauthenticated connections (RFC 6120 §13.12, oldest evicted), the time
to authenticate, the stanza rate."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from tests.security.conftest import TIGHT
from tests.support.cluster import Cluster
from tests.support.xmpp import new_source

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
OPEN = f'<open xmlns="{FRAMING}" to="localhost" version="1.0"/>'
CAP = int(TIGHT["STANZAD_MAX_CONNECTIONS_PER_IP"])


async def _text_until(ws: aiohttp.ClientWebSocketResponse, needle: str, timeout: float = 15
                      ) -> str:
    seen = ""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while needle not in seen:
        msg = await asyncio.wait_for(ws.receive(), max(0.1, deadline - loop.time()))
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"{needle} never came; got {seen!r} then {msg.type}")
        seen += msg.data
    return seen


async def test_websocket_streams_share_the_per_address_cap_oldest_evicted(
    cluster: Cluster, tight_cm: int
) -> None:
    url = f"http://127.0.0.1:{cluster.http_ports['cm-tight']}/xmpp-websocket"
    connector = aiohttp.TCPConnector(local_addr=(new_source(), 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        streams = []
        for _ in range(CAP):
            ws = await http.ws_connect(url, protocols=("xmpp",))
            await ws.send_str(OPEN)
            await _text_until(ws, "features")
            streams.append(ws)
        newest = await http.ws_connect(url, protocols=("xmpp",))
        await newest.send_str(OPEN)
        await _text_until(newest, "features")
        evicted = await _text_until(streams[0], "</stream:error>")
        assert "policy-violation" in evicted
        for ws in [*streams, newest]:
            await ws.close()


async def test_an_unauthenticated_websocket_stream_times_out(
    cluster: Cluster, tight_cm: int
) -> None:
    url = f"http://127.0.0.1:{cluster.http_ports['cm-tight']}/xmpp-websocket"
    connector = aiohttp.TCPConnector(local_addr=(new_source(), 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.ws_connect(url, protocols=("xmpp",)) as ws:
        await ws.send_str(OPEN)
        error = await _text_until(ws, "</stream:error>", timeout=20)  # auth timeout 2 s
        assert "connection-timeout" in error


async def test_idle_http_connections_count_per_address(cluster: Cluster, tight_cm: int) -> None:
    """HTTP connections that have not become streams are unauthenticated connections of
    their address too: past the cap the oldest is closed."""
    port = cluster.http_ports["cm-tight"]
    source = new_source()
    conns = [await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
             for _ in range(CAP + 1)]
    try:
        reader, _ = conns[0]
        assert await asyncio.wait_for(reader.read(100), 10) == b""  # closed
    finally:
        for _, writer in conns:
            writer.close()


async def test_direct_tls_connections_share_the_per_address_cap(
    cluster: Cluster, tight_cm: int
) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    port = cluster.tls_ports["cm-tight"]
    source = new_source()
    header = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream="
              b"'http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
    conns = []
    try:
        for _ in range(CAP + 1):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, local_addr=(source, 0))
            writer.write(header)
            conns.append((reader, writer))
        reader = conns[0][0]
        data = b""
        while b"</stream:stream>" not in data:
            chunk = await asyncio.wait_for(reader.read(4096), 10)
            assert chunk, data
            data += chunk
        assert b"policy-violation" in data
    finally:
        for _, writer in conns:
            writer.close()
