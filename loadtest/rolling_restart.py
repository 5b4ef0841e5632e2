"""A rolling restart of every connection manager under chat load, counting every message.

Starts nats-server, redis-server, a router, presence and roster and CMS connection managers
on free loopback ports (a database of its own on a local PostgreSQL), logs in CLIENTS slixmpp
clients with XEP-0198 resumption spread over the connection managers, and has each send
MESSAGES numbered chat messages to the next client while each connection manager in turn gets
SIGTERM and is started again on its port.  The clients resume on the next connection manager
(tests/support/rolling.py).  Prints the counts: sent, received, lost, duplicated, out of
order; exits 1 when anything was lost, duplicated or reordered.

    .venv/bin/python -m loadtest.rolling_restart --clients 40 --messages 200

Every run is bounded: at most CLIENTS*MESSAGES messages and --seconds of wall time.  Only
loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.store.accounts import AccountStore  # noqa: E402
from shared.store.pg.database import connect as db_connect  # noqa: E402
from shared.xmpp.credentials import derive_credentials  # noqa: E402
from tests.support.cluster import Cluster, metric_total, new_cluster  # noqa: E402
from tests.support.rolling import Counts, rolling_restart  # noqa: E402

MAX_MESSAGES = 200_000


async def run(cluster: Cluster, cms: list[str], clients: int, messages: int,
              interval_s: float, seconds: float) -> Counts:
    db = await db_connect(cluster.database_url, "loadtest", size=1)
    store = AccountStore(db, "loadtest")
    creds = derive_credentials("pw", 4096)
    accounts = []
    for i in range(clients):
        jid = f"roll{i}@localhost"
        await store.create(jid, creds)
        accounts.append((jid, "pw"))
    await db.close()
    return await rolling_restart(cluster, cms, accounts, messages, interval_s=interval_s,
                                 deadline_s=seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--messages", type=int, default=200, help="per client")
    parser.add_argument("--interval", type=float, default=0.05,
                        help="seconds between one client's messages")
    parser.add_argument("--cms", type=int, default=2, help="connection managers")
    parser.add_argument("--seconds", type=float, default=300, help="hard time limit")
    args = parser.parse_args()
    if args.clients * args.messages > MAX_MESSAGES or args.clients < 2 or args.cms < 2:
        raise SystemExit(f"bounded runs only: at most {MAX_MESSAGES:,} messages, at least two "
                         "clients and two connection managers")
    cluster = new_cluster()
    cms = [f"cm-{i}" for i in range(args.cms)]
    started = time.monotonic()
    try:
        cluster.start_servers()
        cluster.start_core()
        for name in cms:  # every setting at its default, the drain timeout included
            cluster.start_cm(name)
        counts = asyncio.run(run(cluster, cms, args.clients, args.messages, args.interval,
                                 args.seconds))
        # what reached the restarted pods for sessions they no longer had (stale routes
        # after the old process exited) and what went to offline storage unresumed
        stale = {name: metric_total(cluster.metrics(name), "stanzad_cm_undeliverable_total")
                 for name in cms}
        returned = {name: metric_total(cluster.metrics(name),
                                       "stanzad_cm_sm_returned_stanzas_total")
                    for name in cms}
    finally:
        cluster.stop()
    print(f"clients={args.clients} messages/client={args.messages} "
          f"connection managers={args.cms} in {time.monotonic() - started:.1f} s")
    print("restarts (SIGTERM to exit): "
          + ", ".join(f"{name} {took:.2f} s" for name, took in counts.restarts))
    print(counts.line())
    print("on the restarted pods: deliveries for a session not there "
          + ", ".join(f"{n} {v:.0f}" for n, v in stale.items())
          + "; unacknowledged stanzas sent to offline storage "
          + ", ".join(f"{n} {v:.0f}" for n, v in returned.items()))
    for line in counts.details():
        print(line)
    if counts.kept:
        print(f"client side: {len(counts.kept)} messages whose turn to be written came after "
              "their client's connection was lost, kept for re-sending after <resumed/>")
    print(f"logs: {cluster.workdir}")
    bad = counts.lost or counts.duplicated or counts.out_of_order
    return 1 if bad or counts.received != counts.sent else 0


if __name__ == "__main__":
    sys.exit(main())
