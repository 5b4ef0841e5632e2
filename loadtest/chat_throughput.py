"""Chat throughput between pairs of clients through a real local cluster.

Starts nats-server, redis-server, a router and a connection manager on free loopback ports,
logs in PAIRS pairs of raw TLS clients (SASL PLAIN, the cheapest login, so the figure is about
routing), and has each sender send MESSAGES chat messages to its partner's full JID, either as
fast as possible or at a fixed total RATE.  Prints delivered messages per second, loss,
end-to-end latency percentiles (timestamps in the bodies), and the CPU seconds each server
process used, so the cost per message can be read off.

    .venv/bin/python -m loadtest.chat_throughput --pairs 10 --messages 2000
    .venv/bin/python -m loadtest.chat_throughput --pairs 10 --messages 2000 --rate 5000

Every run is bounded: at most PAIRS*MESSAGES messages and --seconds of wall time.  Only
loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.store.accounts import AccountStore  # noqa: E402
from shared.store.pg.database import connect as db_connect  # noqa: E402
from shared.xmpp.credentials import derive_credentials  # noqa: E402
from tests.support.cluster import Cluster, new_cluster  # noqa: E402
from tests.support.xmpp import RawClient, raw_login  # noqa: E402

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


async def receiver(client: RawClient, expected: int, latencies: list[float],
                   deadline: float) -> int:
    assert client.reader is not None
    got = 0
    buf = b""
    loop = asyncio.get_running_loop()
    while got < expected and loop.time() < deadline:
        try:
            chunk = await asyncio.wait_for(client.reader.read(262144), deadline - loop.time())
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


async def sender(client: RawClient, to: str, n: int, rate_per_sender: float) -> None:
    # flat out: bursts of 50; paced: about 100 sends a second per sender
    burst = 50 if rate_per_sender <= 0 else max(1, int(rate_per_sender / 100))
    interval = burst / rate_per_sender if rate_per_sender > 0 else 0.0
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    sent = 0
    while sent < n:
        k = min(burst, n - sent)
        stamp = time.perf_counter_ns()
        await client.send(b"".join(
            f"<message to='{to}' type='chat'><body>{stamp}</body></message>".encode()
            for _ in range(k)
        ))
        sent += k
        if interval:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        else:
            await asyncio.sleep(0)


async def run(cluster: Cluster, pairs: int, messages: int, rate: float, seconds: float) -> dict:
    db = await db_connect(cluster.database_url, "loadtest", size=1)
    accounts = AccountStore(db, "loadtest")
    creds = derive_credentials("pw", 4096)
    clients = []
    for i in range(pairs * 2):
        jid = f"load{i}@localhost"
        await accounts.create(jid, creds)
        client = RawClient("127.0.0.1", cluster.c2s_port)
        await raw_login(client, jid, "pw", resource="bench")
        await client.send(b"<presence/>")
        clients.append((client, jid))
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
    senders = [
        asyncio.create_task(sender(clients[2 * i][0], clients[2 * i + 1][1] + "/bench", messages,
                                   per_sender))
        for i in range(pairs)
    ]
    await asyncio.gather(*senders)
    received = sum(await asyncio.gather(*receivers))
    elapsed = time.perf_counter() - start
    cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in procs.items()}
    rss = {name: rss_bytes(pid) for name, pid in procs.items()}
    for client, _ in clients:
        await client.close()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    total_cpu = sum(cpu.values())
    return {
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
    parser.add_argument("--durable-deliveries", choices=("on", "off"), default="on",
                        help="STANZAD_DURABLE_DELIVERIES: the connection managers' "
                        "deliveries on JetStream too (docs/architecture.md)")
    args = parser.parse_args()
    if args.pairs * args.messages > 2_000_000:
        raise SystemExit("bounded runs only: at most 2,000,000 messages")
    cluster = new_cluster()
    cluster.partitions = 64
    cluster.common_env["STANZAD_DURABLE_DELIVERIES"] = str(args.durable_deliveries == "on")
    try:
        cluster.start_servers()
        cluster.start_core()
        # the defaults: a sender flat out meets the per-session stanza rate, as deployed
        cluster.start_cm()
        result = asyncio.run(run(cluster, args.pairs, args.messages, args.rate, args.seconds))
    finally:
        cluster.stop()
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
