"""XEP-0313 query latency: pages of 50 from one large archive, through a real local cluster.

Starts a stanzad cluster on free loopback ports (target.start), gives one account an
archive of ARCHIVE messages written straight through the store (shared/store/archive.py,
one INSERT per 1,000 rows), logs that account in over a raw TLS stream and asks QUERIES
queries one after another, each a page of PAGE: after a random archived id (RSM <after>),
the last page (<before/>) and the first, in turn.  Prints the round-trip latency
percentiles (client IQ out to the IQ result in, the results streamed before it included).

    .venv/bin/python -m loadtest.mam_query --archive 100000 --queries 300

Bounded: at most 1,000,000 archived messages and 10,000 queries, and --seconds of wall time.
Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest import target  # noqa: E402
from shared.store.accounts import AccountStore  # noqa: E402
from shared.store.archive import ArchiveWriter  # noqa: E402
from shared.store.pg.database import connect as db_connect  # noqa: E402
from shared.xmpp import archive  # noqa: E402
from shared.xmpp.credentials import derive_credentials  # noqa: E402
from tests.support.cluster import Cluster  # noqa: E402
from tests.support.xmpp import RawClient, ask_iq, raw_login  # noqa: E402

JID = "archived@localhost"


async def fill(cluster: Cluster, n: int) -> list[str]:
    db = await db_connect(cluster.database_url, "loadtest", size=2)
    try:
        await AccountStore(db, "loadtest").create(JID, derive_credentials("pw", 4096))
        writer = ArchiveWriter(db, "always", n + 1)
        base = time.time_ns() // 1000 - n * 1000  # one a millisecond, ending now
        ids = []
        for i in range(n):
            sid = archive.new_id(base + i * 1000)
            ids.append(sid)
            peer = f"peer{i % 50}@example.org"
            writer.add(JID, sid, peer, peer, i % 2 == 0,
                       f'<message xmlns="jabber:client" from="{peer}/r" to="{JID}" type="chat">'
                       f"<body>message number {i} of the archive</body></message>".encode())
            if i % 20_000 == 19_999:
                await writer.flush(300)
        await writer.flush(300)
        return ids
    finally:
        await db.close()


async def measure(cluster: Cluster, ids: list[str], queries: int, page: int,
                  seconds: float) -> list[float]:
    client = RawClient("127.0.0.1", target.c2s_ports(cluster)[0])
    await raw_login(client, JID, "pw", resource="mam")
    rng = random.Random(1)
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    try:
        for n in range(queries):
            if time.monotonic() > deadline:
                break
            rsm = (f"<after>{rng.choice(ids[:-page])}</after>", "<before/>", "")[n % 3]
            iq = (f"<iq type='set' id='q{n}'><query xmlns='urn:xmpp:mam:2' queryid='x{n}'>"
                  f"<set xmlns='http://jabber.org/protocol/rsm'><max>{page}</max>{rsm}</set>"
                  "</query></iq>")
            started = time.perf_counter()
            reply = await ask_iq(client, iq, f"q{n}")
            latencies.append((time.perf_counter() - started) * 1000)
            if b"<fin" not in reply:
                raise RuntimeError(f"no <fin/> in {reply[-300:]!r}")
    finally:
        await client.close()
    return latencies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archive", type=int, default=100_000, help="archived messages")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--page", type=int, default=50)
    p.add_argument("--seconds", type=float, default=300, help="hard limit for the queries")
    args = p.parse_args()
    if not (1 <= args.archive <= 1_000_000 and 1 <= args.queries <= 10_000
            and 1 <= args.page <= archive.MAX_PAGE and args.archive > args.page):
        raise SystemExit("bounded runs only: --archive 1..1,000,000, --queries 1..10,000")
    cluster = target.start(target.Topology())
    try:
        started = time.perf_counter()
        ids = asyncio.run(fill(cluster, args.archive))
        filled = time.perf_counter() - started
        lat = sorted(asyncio.run(measure(cluster, ids, args.queries, args.page, args.seconds)))
    finally:
        cluster.stop()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))]

    print(f"archive of {args.archive:,} messages written in {filled:.1f} s "
          f"({args.archive / filled:,.0f} rows/s through the batched writer)")
    print(f"{len(lat)} queries, a page of {args.page} each (after a random id, last, first): "
          f"latency ms p50 {pct(0.5):.1f}  p95 {pct(0.95):.1f}  p99 {pct(0.99):.1f}  "
          f"max {lat[-1]:.1f}")


if __name__ == "__main__":
    main()
