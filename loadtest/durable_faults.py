"""Loss counts of durable delivery over a long run with a pod SIGKILLed every so often.

Starts a local cluster (two routers, two presence and two roster services, three connection
managers, short leases), logs in SENDERS raw TLS clients with XEP-0198 on the first
connection manager and RECEIVERS on the other two, and has every sender send numbered chat
messages to every receiver at RATE rounds a second for SECONDS; every KILL_EVERY seconds
one pod picked at random is SIGKILLed and started again: a partitioned pod, a receivers'
connection manager (its receivers log in again on another one; the unacknowledged messages
of their old sessions go from the session logs to offline storage after the resumption
timeout, STANZAD_SM_RESUME_TIMEOUT_S=10 here), Redis (restarted empty: sessions are soft
state) or, with ``--nats-nodes 3`` (NATS as a 3-node cluster, streams replicated 3 times),
one NATS node.  The senders' connection manager is not killed (the table needs each
sender's one 'h'): tests/faults/test_durable_cm.py kills a sender's.
At the end each sender asks for its 'h' (the stanzas the server stored), and the table
(tests/support/durable.py) puts every acknowledged (sender, receiver, n) in one class:
delivered, stored offline (taken from the store at the end), bounced, lost, duplicated;
and counts the out of order (docs/architecture.md, "Durable delivery").

    .venv/bin/python -m loadtest.durable_faults --seconds 180 --kill-every 30 --nats-nodes 3

Bounded: at most SECONDS * RATE rounds of SENDERS * RECEIVERS messages; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.store.accounts import AccountStore  # noqa: E402
from shared.store.pg.database import connect as db_connect  # noqa: E402
from shared.store.presence import OfflineStore  # noqa: E402
from shared.xmpp.credentials import derive_credentials  # noqa: E402
from tests.support import durable  # noqa: E402
from tests.support.cluster import Cluster, metric_value, new_cluster  # noqa: E402

LEASE = {"STANZAD_LEASE_TTL_S": "2"}
PODS = {  # name -> how to start it again
    "router-a": "router", "router-b": "router", "presence-a": "presence",
    "presence-b": "presence", "roster-a": "roster", "roster-b": "roster",
    "cm-2": "cm", "cm-3": "cm",
}
SENDERS_CM = "cm-1"  # never killed
# every limit at its default (3 receivers x 10 rounds/s is 30 stanzas/s per sender, under
# the default 100/s) but a short XEP-0198 resumption timeout: what a killed connection
# manager's sessions had not acknowledged is in offline storage before the end
CM_ENV = {"STANZAD_SM_RESUME_TIMEOUT_S": "10"}


def pods(cluster: Cluster) -> dict[str, str]:
    """What a kill may pick: the partitioned pods, Redis, and the NATS nodes when NATS runs
    as a cluster (losing the only nats-server is an outage, not a pod failure)."""
    found = dict(PODS, redis="redis")
    if cluster.nats_nodes > 1:
        found.update({name: "nats" for name in cluster.nats_names()})
    return found


def start(cluster: Cluster, name: str) -> None:
    kind = pods(cluster)[name]
    if kind == "router":
        cluster.start_router(name, **LEASE)
    elif kind == "presence":
        cluster.start_presence(name, **LEASE)
    elif kind == "roster":
        cluster.start_roster(name, **LEASE)
    elif kind == "cm":
        port = int(cluster.cm_env[name]["STANZAD_C2S_PORT"]) if name in cluster.cm_env else 0
        cluster.start_cm(name, port, **CM_ENV)
    elif kind == "redis":
        cluster.start_redis()
    else:
        cluster.start_nats_node(cluster.nats_names().index(name))


async def run(cluster: Cluster, args: argparse.Namespace) -> None:
    ports = {name: int(env["STANZAD_C2S_PORT"]) for name, env in cluster.cm_env.items()}
    senders = [durable.Sender(f"fs{k}@localhost", ports[SENDERS_CM])
               for k in range(args.senders)]
    mine = ["cm-2", "cm-3"]
    receivers = [durable.Receiver(f"fr{k}@localhost", ports[mine[k % 2]],
                                  ports=[ports[mine[(k + 1) % 2]], ports[SENDERS_CM]])
                 for k in range(args.receivers)]
    db = await db_connect(cluster.database_url, "loadtest", size=1)
    accounts = AccountStore(db, "loadtest")
    creds = derive_credentials(durable.PASSWORD, 4096)
    for jid in [s.jid for s in senders] + [r.jid for r in receivers]:
        await accounts.create(jid, creds)
    for r in receivers:
        await r.login()
    for s in senders:
        await s.login()
    stop = asyncio.Event()
    reading = [asyncio.create_task(r.read(stop)) for r in receivers]
    draining = [asyncio.create_task(s.drain(stop)) for s in senders]
    loop = asyncio.get_running_loop()
    rounds = 0
    kills: list[tuple[float, str]] = []
    started = loop.time()
    next_kill = started + args.kill_every
    rng = random.Random(args.seed)
    victims = sorted(pods(cluster))
    restarting: asyncio.Task[None] | None = None
    while loop.time() - started < args.seconds:
        for k, s in enumerate(senders):
            assert s.client is not None
            await s.client.send(b"".join(
                f"<message to='{r.jid}/r' type='chat'><body>s{k}:{rounds}</body></message>"
                .encode() for r in receivers))
        rounds += 1
        if loop.time() >= next_kill and (restarting is None or restarting.done()):
            victim = (args.victims[len(kills) % len(args.victims)] if args.victims
                      else rng.choice(victims))
            if victim.startswith("leader:"):  # the NATS node leading that stream now
                victim = await durable.stream_leader(cluster, victim.split(":", 1)[1])
            cluster.kill(victim)
            kills.append((loop.time() - started, victim))
            print(f"{loop.time() - started:6.1f}s SIGKILL {victim}", flush=True)
            restarting = asyncio.create_task(asyncio.to_thread(start, cluster, victim))
            next_kill += args.kill_every
        await asyncio.sleep(1 / args.rate)
    if restarting is not None:
        await restarting
    acked = [await s.acked(t) for s, t in zip(senders, draining, strict=True)]
    await asyncio.sleep(args.settle)
    stop.set()
    await asyncio.gather(*reading)
    offline = OfflineStore(db, "loadtest")  # what went to storage while a receiver was
    for r in receivers:  # online but not known to be (Redis restarted empty)
        for payload in await offline.take_all(r.jid):
            if (m := durable.BODY.search(payload)) is not None:
                r.got.append((r.jid, int(m.group(1)), int(m.group(2)), True))
    await db.close()
    for client in [r.client for r in receivers] + [s.client for s in senders]:
        if client is not None:
            await client.close()
    counts = durable.count(senders, receivers, rounds, acked)
    dropped = {}  # copies the connection managers' replay check did not deliver (since start)
    for name in cluster.cm_env:
        with contextlib.suppress(Exception):
            dropped[name] = int(metric_value(await asyncio.to_thread(cluster.metrics, name),
                                             "stanzad_cm_duplicates_dropped_total"))
        with contextlib.suppress(Exception):
            swept = metric_value(await asyncio.to_thread(cluster.metrics, name),
                                 "stanzad_cm_sm_swept_total")
            dropped[f"{name} sessions swept"] = int(swept)
    print(f"\n{args.seconds:.0f} s, {len(kills)} kills "
          f"({', '.join(f'{v} at {t:.0f}s' for t, v in kills)}); NATS nodes "
          f"{cluster.nats_nodes}")
    print(durable.Counts.HEADER)
    print(counts.row())
    print(f"\n{counts}; bounces: {dict(sum((s.conditions for s in senders), Counter()))}")
    print(f"replay check drops and sweeps per connection manager (since its last start): "
          f"{dropped}")
    print(f"logs in {cluster.workdir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--kill-every", type=float, default=30)
    parser.add_argument("--senders", type=int, default=3)
    parser.add_argument("--receivers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=10, help="rounds a second")
    parser.add_argument("--settle", type=float, default=30,
                        help="seconds to wait at the end (a killed connection manager's "
                        "sessions reach offline storage within about 20 s)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--victims", type=lambda v: v.split(","), default=[],
                        help="kill these in turn (router-a,redis,nats-1,...; leader:cm is the "
                        "NATS node leading STANZAD_CM then) instead of at random")
    parser.add_argument("--nats-nodes", type=int, default=1, choices=(1, 3),
                        help="3: a NATS cluster, streams replicated 3 times, nodes killed too")
    args = parser.parse_args()
    if args.seconds * args.rate * args.senders * args.receivers > 2_000_000:
        raise SystemExit("bounded runs only: at most 2,000,000 messages")
    cluster = new_cluster()
    cluster.partitions = 16
    cluster.nats_nodes = args.nats_nodes
    if args.nats_nodes > 1:
        cluster.common_env = {"STANZAD_STREAM_REPLICAS": str(args.nats_nodes)}
    try:
        cluster.start_servers()
        for name in PODS:  # cm-2 and cm-3 among them
            start(cluster, name)
        cluster.start_cm(SENDERS_CM, **CM_ENV)
        asyncio.run(run(cluster, args))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
