"""Chat throughput between pairs of clients through a real local cluster.

Starts nats-server, redis-server, a router and a connection manager on free loopback ports,
logs in PAIRS pairs of raw TLS clients (SASL PLAIN, the cheapest login, so the figure is about
routing), and has each sender send MESSAGES chat messages to its partner's full JID, either as
fast as possible or at a fixed total RATE.  Prints delivered messages per second, loss,
end-to-end latency percentiles (timestamps in the bodies), and the CPU seconds each server
process used, so the cost per message can be read off.

    .venv/bin/python -m loadtest.chat_throughput --pairs 10 --messages 2000
    .venv/bin/python -m loadtest.chat_throughput --pairs 10 --messages 2000 --rate 5000
    .venv/bin/python -m loadtest.chat_throughput --pairs 10 --messages 2000 --rate 2000 \
        --transports tcp,wss,ws

``--transports`` runs the same load once per transport, one after the other on the same
cluster, and prints each phase's CPU: ``tcp`` (STARTTLS on the c2s port), ``wss`` (RFC 7395
over TLS on the connection manager's HTTP port, ``STANZAD_C2S_HTTP_TLS``) and ``ws`` (plain
WebSocket, as behind an ingress that ends TLS: a second connection manager, cm-2, whose HTTP
port has no TLS).  WebSocket clients are aiohttp's, one stanza per text message.

Every run is bounded: at most PAIRS*MESSAGES messages and --seconds of wall time.  Only
loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.store.accounts import AccountStore  # noqa: E402
from shared.store.pg.database import connect as db_connect  # noqa: E402
from shared.xmpp.credentials import derive_credentials  # noqa: E402
from tests.support.cluster import Cluster, new_cluster  # noqa: E402
from tests.support.xmpp import RawClient, insecure_context, raw_login  # noqa: E402

BODY = re.compile(rb"<body>(\d+)</body>")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"


class TcpPeer:
    """A logged-in TCP client (STARTTLS): stanzas go out in one write."""

    def __init__(self, client: RawClient) -> None:
        self.client = client

    async def send(self, stanzas: list[bytes]) -> None:
        await self.client.send(b"".join(stanzas))

    async def read(self) -> bytes:
        assert self.client.reader is not None
        return await self.client.reader.read(262144)

    async def close(self) -> None:
        await self.client.close()


class WsPeer:
    """A logged-in RFC 7395 client (aiohttp): one stanza per text message."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, stanzas: list[bytes]) -> None:
        for stanza in stanzas:
            await self.ws.send_str(stanza.decode())

    async def read(self) -> bytes:
        import aiohttp

        msg = await self.ws.receive()
        return msg.data.encode() if msg.type is aiohttp.WSMsgType.TEXT else b""

    async def close(self) -> None:
        await self.ws.close()

    async def until(self, marker: str) -> str:
        while True:
            data = (await asyncio.wait_for(self.read(), 30)).decode()
            if not data:
                raise ConnectionError(f"closed before {marker}")
            if marker in data:
                return data

    @classmethod
    async def login(cls, http: Any, url: str, jid: str, password: str) -> WsPeer:
        """<open/>, SASL PLAIN, <open/> again, bind (RFC 7395 §3.3, §3.5)."""
        ctx = insecure_context() if url.startswith("wss:") else None
        peer = cls(await http.ws_connect(url, protocols=("xmpp",), ssl=ctx or False))
        hello = f'<open xmlns="{FRAMING}" to="localhost" version="1.0"/>'
        await peer.ws.send_str(hello)
        await peer.until("<stream:features")
        token = base64.b64encode(f"\0{jid.partition('@')[0]}\0{password}".encode()).decode()
        await peer.ws.send_str("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' "
                               f"mechanism='PLAIN'>{token}</auth>")
        await peer.until("<success")
        await peer.ws.send_str(hello)
        await peer.until("<stream:features")
        await peer.ws.send_str("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns="
                               "'urn:ietf:params:xml:ns:xmpp-bind'><resource>bench</resource>"
                               "</bind></iq>")
        await peer.until("</iq>")
        return peer


async def receiver(client: TcpPeer | WsPeer, expected: int, latencies: list[float],
                   deadline: float) -> int:
    got = 0
    buf = b""
    loop = asyncio.get_running_loop()
    while got < expected and loop.time() < deadline:
        try:
            chunk = await asyncio.wait_for(client.read(), deadline - loop.time())
        except TimeoutError:
            break
        if not chunk:
            break
        now = time.perf_counter_ns()
        buf += chunk
        cut = buf.rfind(b"</message>")
        if cut < 0:
            continue
        done, buf = buf[: cut + 10], buf[cut + 10 :]
        for m in BODY.finditer(done):
            latencies.append((now - int(m.group(1))) / 1e6)
            got += 1
    return got


async def sender(client: TcpPeer | WsPeer, to: str, n: int, rate_per_sender: float,
                 xmlns: str = "") -> None:
    # flat out: bursts of 50; paced: about 100 sends a second per sender
    burst = 50 if rate_per_sender <= 0 else max(1, int(rate_per_sender / 100))
    interval = burst / rate_per_sender if rate_per_sender > 0 else 0.0
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    sent = 0
    while sent < n:
        k = min(burst, n - sent)
        stamp = time.perf_counter_ns()
        await client.send([
            f"<message{xmlns} to='{to}' type='chat'><body>{stamp}</body></message>".encode()
            for _ in range(k)
        ])
        sent += k
        if interval:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        else:
            await asyncio.sleep(0)


def _ws_url(cluster: Cluster, transport: str) -> str:
    if transport == "wss":
        return f"wss://127.0.0.1:{cluster.http_ports['cm-1']}/xmpp-websocket"
    return f"ws://127.0.0.1:{cluster.http_ports['cm-2']}/xmpp-websocket"


async def run(cluster: Cluster, pairs: int, messages: int, rate: float, seconds: float,
              transport: str = "tcp", phase: int = 0) -> dict:
    """One phase: ``pairs`` pairs log in over ``transport`` and exchange the load."""
    import aiohttp

    db = await db_connect(cluster.database_url, "loadtest", size=1)
    accounts = AccountStore(db, "loadtest")
    creds = derive_credentials("pw", 4096)
    clients: list[tuple[TcpPeer | WsPeer, str]] = []
    http = aiohttp.ClientSession()
    for i in range(pairs * 2):
        jid = f"load{phase}x{i}@localhost"
        await accounts.create(jid, creds)
        peer: TcpPeer | WsPeer
        if transport == "tcp":
            client = RawClient("127.0.0.1", cluster.c2s_port)
            await raw_login(client, jid, "pw", resource="bench")
            peer = TcpPeer(client)
            await peer.send([b"<presence/>"])
        else:
            peer = await WsPeer.login(http, _ws_url(cluster, transport), jid, "pw")
            await peer.send([b"<presence xmlns='jabber:client'/>"])
        clients.append((peer, jid))
    await db.close()
    await asyncio.sleep(0.5)
    procs = {name: p.pid for name, p in cluster.procs.items()}
    cpu0 = {name: cpu_seconds(pid) for name, pid in procs.items()}
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    start = time.perf_counter()
    per_sender = rate / pairs if rate > 0 else 0.0
    receivers = [
        asyncio.create_task(receiver(clients[2 * i + 1][0], messages, latencies, deadline))
        for i in range(pairs)
    ]
    xmlns = "" if transport == "tcp" else " xmlns='jabber:client'"  # RFC 7395 §3.3.3
    senders = [
        asyncio.create_task(sender(clients[2 * i][0], clients[2 * i + 1][1] + "/bench", messages,
                                   per_sender, xmlns))
        for i in range(pairs)
    ]
    await asyncio.gather(*senders)
    received = sum(await asyncio.gather(*receivers))
    elapsed = time.perf_counter() - start
    cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in procs.items()}
    rss = {name: rss_bytes(pid) for name, pid in procs.items()}
    for client, _ in clients:
        await client.close()
    await http.close()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    total_cpu = sum(cpu.values())
    return {
        "transport": transport,
        "sent": pairs * messages,
        "received": received,
        "elapsed_s": elapsed,
        "msgs_per_s": received / elapsed,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(latencies) if latencies else 0.0,
        "cpu_s": cpu,
        "server_cpu_us_per_msg": total_cpu / max(1, received) * 1e6,
        "rss_mb": {k: v / 2**20 for k, v in rss.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--messages", type=int, default=2000, help="per sender")
    parser.add_argument("--rate", type=float, default=0, help="total msgs/s; 0 = flat out")
    parser.add_argument("--seconds", type=float, default=120, help="hard time limit")
    parser.add_argument("--transports", default="tcp",
                        help="comma-separated phases, one after the other: tcp, wss, ws")
    parser.add_argument("--durable-deliveries", choices=("on", "off"), default="on",
                        help="STANZAD_DURABLE_DELIVERIES: the connection managers' "
                        "deliveries on JetStream too (docs/architecture.md)")
    args = parser.parse_args()
    transports = [t for t in args.transports.split(",") if t]
    if not transports or set(transports) - {"tcp", "wss", "ws"}:
        raise SystemExit("--transports: tcp, wss and/or ws")
    if args.pairs * args.messages * len(transports) > 2_000_000:
        raise SystemExit("bounded runs only: at most 2,000,000 messages")
    cluster = new_cluster()
    cluster.partitions = 64
    results = []
    cluster.common_env["STANZAD_DURABLE_DELIVERIES"] = str(args.durable_deliveries == "on")
    try:
        cluster.start_servers()
        cluster.start_core()
        # the defaults: a sender flat out meets the per-session stanza rate, as deployed
        cluster.start_cm(STANZAD_C2S_HTTP_TLS="true" if "wss" in transports else "false")
        if "ws" in transports:
            cluster.start_cm("cm-2", STANZAD_C2S_HTTP_TLS="false")

        async def phases() -> None:
            for i, transport in enumerate(transports):
                results.append(await run(cluster, args.pairs, args.messages, args.rate,
                                         args.seconds, transport, i))

        asyncio.run(phases())
    finally:
        cluster.stop()
    for result in results:
        report(args, result)


def report(args: argparse.Namespace, result: dict) -> None:
    print(f"[{result['transport']}]")
    print(f"pairs={args.pairs} messages/sender={args.messages} rate={args.rate or 'flat out'} "
          f"durable deliveries {args.durable_deliveries}")
    print(f"delivered {result['received']}/{result['sent']} in {result['elapsed_s']:.2f} s "
          f"= {result['msgs_per_s']:,.0f} msgs/s; loss {result['sent'] - result['received']}")
    print(f"latency ms: p50 {result['p50_ms']:.1f}  p95 {result['p95_ms']:.1f}  "
          f"p99 {result['p99_ms']:.1f}  mean {result['mean_ms']:.1f}")
    cpu = "  ".join(f"{k} {v:.2f}" for k, v in result["cpu_s"].items())
    print(f"server CPU s: {cpu}  => {result['server_cpu_us_per_msg']:.1f} µs CPU per message")
    rss = "  ".join(f"{k} {v:.0f}" for k, v in result["rss_mb"].items())
    print(f"server RSS MB: {rss}")


if __name__ == "__main__":
    main()
