"""Presence fan-out: a user with a roster of N contacts, all online, logs in.

Measures (RFC 6121 §4.2, §4.3): the time from the user's initial presence until every contact
has received it, and until the user has received every contact's presence (probe answers),
plus the CPU seconds of each server process.  Roster items are written straight into Redis
(both directions 'both') so that the setup is quick; every contact is a real TLS client.

    .venv/bin/python -m loadtest.presence_fanout --contacts 1000

Bounded: at most 5,000 contacts and --seconds of wall time; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.chat_throughput import cpu_seconds  # noqa: E402
from shared.store.accounts import AccountStore  # noqa: E402
from shared.store.pg.database import connect as db_connect  # noqa: E402
from shared.store.roster import RosterItem, RosterStore  # noqa: E402
from shared.xmpp.credentials import derive_credentials  # noqa: E402
from shared.xmpp.subscription import State, Subscription  # noqa: E402
from tests.support.cluster import Cluster, new_cluster  # noqa: E402
from tests.support.xmpp import RawClient, raw_login  # noqa: E402

BOTH = State(Subscription.BOTH)


async def wait_for(client: RawClient, needle: bytes, deadline: float) -> float | None:
    """perf_counter when `needle` arrived, or None at the deadline."""
    assert client.reader is not None
    buf = b""
    loop = asyncio.get_running_loop()
    while needle not in buf:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        try:
            chunk = await asyncio.wait_for(client.reader.read(65536), remaining)
        except TimeoutError:
            return None
        if not chunk:
            return None
        buf = buf[-len(needle):] + chunk
    return time.perf_counter()


async def run(cluster: Cluster, n: int, seconds: float) -> dict[str, float]:
    db = await db_connect(cluster.database_url, "loadtest", size=1)
    accounts = AccountStore(db, "loadtest")
    rosters = RosterStore(db, "loadtest")
    creds = derive_credentials("pw", 4096)
    user = "star@localhost"
    contacts = [f"fan{i}@localhost" for i in range(n)]
    await accounts.create(user, creds)
    for c in contacts:
        await accounts.create(c, creds)
        await rosters.put(user, RosterItem(c, state=BOTH))
        await rosters.put(c, RosterItem(user, state=BOTH))
    await db.close()
    t0 = time.perf_counter()
    fans = []
    for i in range(0, n, 50):  # log in 50 at a time
        group = [RawClient("127.0.0.1", cluster.c2s_port) for _ in contacts[i:i + 50]]
        await asyncio.gather(*(raw_login(cl, c, "pw", "r")
                               for cl, c in zip(group, contacts[i:i + 50], strict=True)))
        for cl in group:
            await cl.send(b"<presence/>")
        fans.extend(group)
    login_s = time.perf_counter() - t0
    await asyncio.sleep(2)  # let the contacts' own presence settle
    star = RawClient("127.0.0.1", cluster.c2s_port)
    await raw_login(star, user, "pw", "home")
    cpu0 = {name: cpu_seconds(p.pid) for name, p in cluster.procs.items()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    waiters = [asyncio.create_task(wait_for(f, b'from="star@localhost/home"', deadline))
               for f in fans]
    probe_answers = asyncio.create_task(count_presences(star, n, deadline))
    start = time.perf_counter()
    await star.send(b"<presence/>")
    arrivals = await asyncio.gather(*waiters)
    got_back, all_back_at = await probe_answers
    cpu = {name: cpu_seconds(p.pid) - cpu0[name] for name, p in cluster.procs.items()}
    received = [a for a in arrivals if a is not None]
    for client in [*fans, star]:
        await client.close()
    return {
        "contacts": n,
        "fans_login_s": login_s,
        "delivered": len(received),
        "all_contacts_s": (max(received) - start) if len(received) == n else float("nan"),
        "median_contact_s": sorted(received)[len(received) // 2] - start if received else 0.0,
        "probe_answers": got_back,
        "all_answers_s": (all_back_at - start) if all_back_at else float("nan"),
        **{f"cpu_{k}": v for k, v in cpu.items()},
    }


async def count_presences(client: RawClient, n: int, deadline: float) -> tuple[int, float | None]:
    assert client.reader is not None
    loop = asyncio.get_running_loop()
    seen = 0
    tail = b""
    while seen < n:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return seen, None
        try:
            chunk = await asyncio.wait_for(client.reader.read(262144), remaining)
        except TimeoutError:
            return seen, None
        if not chunk:
            return seen, None
        data = tail + chunk
        seen += data.count(b'from="fan')
        tail = data[-16:] if not data.endswith(b">") else b""
        if tail:
            seen -= tail.count(b'from="fan')
    return seen, time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    if not 1 <= args.contacts <= 5000:
        raise SystemExit("--contacts must be 1..5000")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.contacts * 2 + 200
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    cluster = new_cluster()
    cluster.partitions = 64
    try:
        cluster.start_servers()
        cluster.start_core()
        cluster.start_cm()  # the per-address cap counts unauthenticated connections only
        result = asyncio.run(run(cluster, args.contacts, args.seconds))
    finally:
        cluster.stop()
    print(f"contacts={result['contacts']} (logged in in {result['fans_login_s']:.1f} s)")
    print(f"initial presence reached {result['delivered']}/{result['contacts']} contacts: "
          f"median {result['median_contact_s'] * 1000:.0f} ms, "
          f"all {result['all_contacts_s'] * 1000:.0f} ms")
    print(f"probe answers back to the user: {result['probe_answers']}/{result['contacts']} "
          f"in {result['all_answers_s'] * 1000:.0f} ms")
    cpu = "  ".join(f"{k[4:]} {v:.2f}" for k, v in result.items() if k.startswith("cpu_"))
    print(f"server CPU s during the login: {cpu}")


if __name__ == "__main__":
    main()
