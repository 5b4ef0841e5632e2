"""Loss counts of durable delivery over a long run with a pod SIGKILLed every so often.

Starts a local cluster (two routers, two presence and two roster services, one connection
manager, short leases), logs in SENDERS and RECEIVERS raw TLS clients with XEP-0198, and has
every sender send numbered chat messages to every receiver at RATE rounds a second for
SECONDS; every KILL_EVERY seconds one partitioned pod picked at random is SIGKILLed and
started again.  At the end each sender asks for its 'h' (the stanzas the server stored),
and the table counts, per sender and receiver, what was acknowledged, delivered, lost,
duplicated, out of order and bounced (docs/architecture.md, "Durable delivery").

    .venv/bin/python -m loadtest.durable_faults --seconds 180 --kill-every 30

Bounded: at most SECONDS * RATE rounds of SENDERS * RECEIVERS messages; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.store.accounts import AccountStore  # noqa: E402
from shared.store.pg.database import connect as db_connect  # noqa: E402
from shared.xmpp.credentials import derive_credentials  # noqa: E402
from tests.support.cluster import Cluster, new_cluster  # noqa: E402
from tests.support.xmpp import RawClient, raw_sm_login  # noqa: E402

LEASE = {"STANZAD_LEASE_TTL_S": "2"}
BODY = re.compile(rb"<body>s(\d+):(\d+)</body>")
R = b'<r xmlns="urn:xmpp:sm:3"/>'
PODS = {  # name -> how to start it again
    "router-a": "router", "router-b": "router", "presence-a": "presence",
    "presence-b": "presence", "roster-a": "roster", "roster-b": "roster",
}


def start(cluster: Cluster, name: str) -> None:
    kind = PODS[name]
    if kind == "router":
        cluster.start_router(name, **LEASE)
    elif kind == "presence":
        cluster.start_presence(name, **LEASE)
    else:
        cluster.start_roster(name, **LEASE)


async def collect(client: RawClient, stop: asyncio.Event) -> list[tuple[int, int]]:
    """Numbered messages as they come; <r/> answered with what was read (XEP-0198 §4)."""
    assert client.reader is not None
    got: list[tuple[int, int]] = []
    data = b""
    while True:
        try:
            chunk = await asyncio.wait_for(client.reader.read(262144), 1.0)
        except TimeoutError:
            if stop.is_set():
                return got
            continue
        if not chunk:
            return got
        data += chunk
        cut = data.rfind(b"</message>")
        if cut >= 0:
            done, data = data[: cut + 10], data[cut + 10 :]
            got.extend((int(m.group(1)), int(m.group(2))) for m in BODY.finditer(done))
            if R in done:
                await client.send(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % len(got))
        if R in data:
            data = data.replace(R, b"")
            await client.send(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % len(got))


async def acked(client: RawClient) -> tuple[int, int]:
    """(the 'h' the server answers, the error bounces read meanwhile)."""
    await client.send(R.replace(b'"', b"'"))
    data = await client.read_until(b"<a xmlns=", timeout=30)
    while not (found := re.findall(rb'<a xmlns="urn:xmpp:sm:3" h="(\d+)"', data)):
        data += await client.read_until(b"/>", timeout=5)
    return int(found[-1]), data.count(b'type="error"')


async def run(cluster: Cluster, args: argparse.Namespace) -> None:
    senders = [f"fs{k}@localhost" for k in range(args.senders)]
    receivers = [f"fr{k}@localhost" for k in range(args.receivers)]
    db = await db_connect(cluster.database_url, "loadtest", size=1)
    accounts = AccountStore(db, "loadtest")
    creds = derive_credentials("pw", 4096)
    for jid in senders + receivers:
        await accounts.create(jid, creds)
    await db.close()
    rx = [RawClient("127.0.0.1", cluster.c2s_port) for _ in receivers]
    tx = [RawClient("127.0.0.1", cluster.c2s_port) for _ in senders]
    for jid, client in zip(receivers + senders, rx + tx, strict=True):
        await raw_sm_login(client, jid, "pw", "r" if jid in receivers else "s")
    stop = asyncio.Event()
    collectors = [asyncio.create_task(collect(c, stop)) for c in rx]
    loop = asyncio.get_running_loop()
    rounds = 0
    kills: list[tuple[float, str]] = []
    started = loop.time()
    next_kill = started + args.kill_every
    rng = random.Random(args.seed)
    restarting: asyncio.Task[None] | None = None
    while loop.time() - started < args.seconds:
        for k, client in enumerate(tx):
            await client.send(b"".join(
                f"<message to='{jid}/r' type='chat'><body>s{k}:{rounds}</body></message>"
                .encode() for jid in receivers))
        rounds += 1
        if loop.time() >= next_kill and (restarting is None or restarting.done()):
            victim = rng.choice(sorted(PODS))
            cluster.kill(victim)
            kills.append((loop.time() - started, victim))
            print(f"{loop.time() - started:6.1f}s SIGKILL {victim}", flush=True)
            restarting = asyncio.create_task(asyncio.to_thread(start, cluster, victim))
            next_kill += args.kill_every
        await asyncio.sleep(1 / args.rate)
    if restarting is not None:
        await restarting
    results = [await acked(c) for c in tx]
    await asyncio.sleep(args.settle)
    stop.set()
    got = await asyncio.gather(*collectors)
    for client in rx + tx:
        await client.close()
    per_receiver = len(senders) * rounds
    lost = duplicated = disordered = 0
    for messages in got:
        for k in range(len(senders)):
            seq = [n for s, n in messages if s == k]
            duplicated += len(seq) - len(set(seq))
            lost += rounds - len(set(seq))
            disordered += sum(1 for a, b in itertools.pairwise(seq) if b < a)
    sent = per_receiver * len(receivers)
    print(f"\n{args.seconds:.0f} s, {len(kills)} kills "
          f"({', '.join(f'{v} at {t:.0f}s' for t, v in kills)})")
    print("| sent | acknowledged ('h') | delivered | lost | duplicated | out of order | bounced |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {sent} | {sum(h for h, _ in results)} | {sum(len(m) for m in got)} | {lost} | "
          f"{duplicated} | {disordered} | {sum(b for _, b in results)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--kill-every", type=float, default=30)
    parser.add_argument("--senders", type=int, default=3)
    parser.add_argument("--receivers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=10, help="rounds a second")
    parser.add_argument("--settle", type=float, default=5, help="seconds to wait at the end")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    if args.seconds * args.rate * args.senders * args.receivers > 2_000_000:
        raise SystemExit("bounded runs only: at most 2,000,000 messages")
    cluster = new_cluster()
    cluster.partitions = 16
    try:
        cluster.start_servers()
        for name in PODS:
            start(cluster, name)
        cluster.start_cm("cm-1")  # every limit at its default: 3 receivers x 10 rounds/s is
        # 30 stanzas/s per sender, under the default 100/s
        asyncio.run(run(cluster, args))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
