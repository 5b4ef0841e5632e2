"""Multi-user chat benchmark (issue 18): one room of 10, 100 and 1,000 occupants.

For each server and room size N, on a fresh server: N accounts log in (STARTTLS,
SCRAM-SHA-1, which Prosody 0.12 has too), stanzad's spread over two connection managers,
and join one room, created by the first as an instant room (XEP-0045 §10.1.2).  Then one
occupant sends ``--messages`` groupchat messages at ``--rate`` per second, each carrying the
monotonic clock in its body.  Measured for the send phase (until every copy arrived, or
``--drain`` seconds):

* latency: per message, from its send to its arrival at the last occupant (XEP-0045 §7.4
  reflects it to the sender too, which counts as an occupant): p50 and p99 over messages;
* copies delivered (N per message) and lost;
* server CPU seconds per delivered copy, of every server process (stanzad: both connection
  managers, the muc process, router, presence, roster, NATS, Redis and PostgreSQL;
  Prosody's process; ejabberd's VM), and per process.

The same scenario runs against Prosody's MUC (Debian `prosody`) and ejabberd's mod_muc
(Debian `ejabberd`) when installed, each a private instance on a loopback port (see
loadtest/prosody.py, loadtest/ejabberd.py), one after the other.  The load client is one
process: at 1,000 occupants it parses N x rate stanzas a second, so keep the rate modest
(the default 10/s) or the client is what is measured.

    .venv/bin/python -m loadtest.muc_bench                     # 10, 100, 1000; every server
    .venv/bin/python -m loadtest.muc_bench --sizes 3 --messages 10 --servers stanzad  # smoke

Bounded: rooms of at most 2,000, at most 10,000 messages, loopback only.  Writes the JSON of
every run under loadtest/out/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from loadtest import client, ejabberd, prosody, target
from loadtest.bounds import check_range
from loadtest.procstat import tree_cpu_seconds
from loadtest.users import PASSWORD, User, create_accounts, make_users

HOST: Final = "127.0.0.1"
MECHANISM: Final = "SCRAM-SHA-1"
ITERATIONS: Final = 4096  # logins are not what is measured here
MUC_NS: Final = "http://jabber.org/protocol/muc"
LOGINS_IN_FLIGHT: Final = 50
JOINS_IN_FLIGHT: Final = 20
OUT: Final = Path(__file__).resolve().parent / "out"


@dataclass
class Target:
    """A server under test: where to connect, its processes, how to make accounts."""

    name: str
    domain: str
    ports: list[int]
    pids: Callable[[], dict[str, int]]
    create: Callable[[list[User]], Awaitable[None]]


@contextmanager
def stanzad() -> Iterator[Target]:
    """Two connection managers, a router, presence, roster and one muc process."""
    cluster = target.start(target.Topology(cms=2))
    try:
        cluster.start_muc("muc-1", **target.QUIET)
        url, token = target.admin(cluster)

        async def create(users: list[User]) -> None:
            await create_accounts(url, token, users, ITERATIONS)

        yield Target("stanzad", cluster.domain, cluster.c2s_ports[:2],
                     lambda: target.server_pids(cluster), create)
    finally:
        cluster.stop()


@contextmanager
def prosody_muc() -> Iterator[Target]:
    server = prosody.start(iterations=ITERATIONS, muc=True)
    try:
        async def create(users: list[User]) -> None:
            gate = asyncio.Semaphore(LOGINS_IN_FLIGHT)
            ctx = client.insecure_context()

            async def one(u: User) -> None:
                conn = client.XmppConnection()
                async with gate:
                    try:
                        await client.register(conn, host=HOST, port=server.port, source=HOST,
                                              domain=server.domain, jid=u.jid,
                                              password=PASSWORD, ctx=ctx)
                    finally:
                        conn.close()

            await asyncio.gather(*(one(u) for u in users))

        yield Target("prosody", server.domain, [server.port],
                     lambda: {"prosody": server.proc.pid}, create)
    finally:
        server.stop()


@contextmanager
def ejabberd_muc() -> Iterator[Target]:
    server = ejabberd.start(MECHANISM, muc=True)
    try:
        async def create(users: list[User]) -> None:
            made = await asyncio.to_thread(
                server.create, [u.jid.partition("@")[0] for u in users], PASSWORD, ITERATIONS)
            if made.registered < len(users):
                raise RuntimeError(f"ejabberd registered {made.registered}/{len(users)}: "
                                   f"{made.errors}")

        yield Target("ejabberd", server.domain, [server.port], server.pids, create)
    finally:
        ejabberd.remove(server)


SERVERS: Final = {"stanzad": (stanzad, lambda: True), "prosody": (prosody_muc, prosody.available),
                  "ejabberd": (ejabberd_muc, ejabberd.available)}


class Arrivals:
    """Per stamp (one message): copies seen and the last arrival (monotonic ns)."""

    def __init__(self) -> None:
        self.seen: dict[int, list[int]] = {}
        self.total = 0
        self.expected = 0  # set before the send phase: then `done` is set at that count
        self.done = asyncio.Event()

    def sink(self, stamp: int, now: int) -> None:
        entry = self.seen.get(stamp)
        if entry is None:
            self.seen[stamp] = [1, now]
        else:
            entry[0] += 1
            entry[1] = max(entry[1], now)
        self.total += 1
        if self.expected and self.total >= self.expected:
            self.done.set()

    def copies(self, stamps: list[int]) -> int:
        return sum(self.seen[s][0] for s in stamps if s in self.seen)


async def join(conn: client.XmppConnection, room: str, nick: str, create: bool) -> None:
    """XEP-0045 §7.2: presence to room/nick, until our own presence (status 110); the
    creator accepts the default configuration (§10.1.2, an instant room)."""
    conn.live = False  # buffer the answers for `until`
    conn.write(f"<presence to='{room}/{nick}'><x xmlns='{MUC_NS}'/></presence>".encode())
    await conn.until(b'code="110"', b"code='110'", timeout=60)
    if create:
        conn.write(f"<iq type='set' to='{room}' id='instant'><query xmlns='{MUC_NS}#owner'>"
                   "<x xmlns='jabber:x:data' type='submit'/></query></iq>".encode())
        await conn.until(b"'instant'", b'"instant"', timeout=60)
    conn._buf = b""
    conn.live = True


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def room_run(t: Target, n: int, rate: float, messages: int, drain_s: float
                   ) -> dict[str, Any]:
    users = make_users(n, t.domain, f"muc{secrets.token_hex(3)}-")
    t0 = time.monotonic()
    await t.create(users)
    arrivals = Arrivals()
    ctx = client.insecure_context()
    gate = asyncio.Semaphore(LOGINS_IN_FLIGHT)

    async def login(i: int) -> client.XmppConnection:
        conn = client.XmppConnection(arrivals.sink)
        async with gate:
            await client.login(conn, host=HOST, port=t.ports[i % len(t.ports)], source=HOST,
                               domain=t.domain, jid=users[i].jid, password=PASSWORD,
                               resource=users[i].resource, mechanism=MECHANISM, ctx=ctx)
        return conn

    conns = list(await asyncio.gather(*(login(i) for i in range(n))))
    try:
        room = f"bench{n}-{secrets.token_hex(3)}@conference.{t.domain}"
        await join(conns[0], room, "o0", create=True)
        joins = asyncio.Semaphore(JOINS_IN_FLIGHT)

        async def enter(i: int) -> None:
            async with joins:
                await join(conns[i], room, f"o{i}", create=False)

        await asyncio.gather(*(enter(i) for i in range(1, n)))
        setup_s = time.monotonic() - t0
        await asyncio.sleep(2 + n / 500)  # the joins' presence broadcasts settle
        pids = t.pids()
        before = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
        loop = asyncio.get_running_loop()
        sender, stamps = conns[0], []
        arrivals.total, arrivals.expected = 0, messages * n
        started = next_at = loop.time()
        for _ in range(messages):
            stamp = time.monotonic_ns()
            stamps.append(stamp)
            sender.write(f"<message to='{room}' type='groupchat'><body>{stamp}</body>"
                         "</message>".encode())
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        sent_s = loop.time() - started
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrivals.done.wait(), drain_s)
        after = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
    finally:
        for conn in conns:
            conn.close()
    copies = arrivals.copies(stamps)
    complete = [(arrivals.seen[s][1] - s) / 1e6 for s in stamps
                if arrivals.seen.get(s, [0])[0] >= n]
    cpu = {name: round(after[name] - before[name], 3) for name in pids}
    total = sum(cpu.values())
    return {
        "server": t.name, "occupants": n, "rate": rate, "messages": messages,
        "send_s": round(sent_s, 2), "setup_s": round(setup_s, 1),
        "copies": copies, "lost": messages * n - copies,
        "p50_ms": round(quantile(complete, 0.5), 2), "p99_ms": round(quantile(complete, 0.99), 2),
        "cpu_s": round(total, 3), "cpu_us_per_copy": round(total / copies * 1e6, 1) if copies
        else None, "cpu_by_process": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10,100,1000", help="room sizes (occupants)")
    p.add_argument("--rate", type=float, default=10.0, help="groupchat messages per second")
    p.add_argument("--messages", type=int, default=100, help="messages per room")
    p.add_argument("--drain", type=float, default=30.0, help="seconds to wait for copies")
    p.add_argument("--servers", default="stanzad,prosody,ejabberd")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    for size in sizes:
        check_range("--sizes", size, 2, 2000)
    check_range("--messages", args.messages, 1, 10_000)
    check_range("--rate", int(args.rate), 1, 10_000)
    client.cache_salted_passwords()
    results = []
    for name in args.servers.split(","):
        factory, available = SERVERS[name]
        if not available():
            print(f"{name}: not installed, skipped", file=sys.stderr)
            continue
        for n in sizes:
            with factory() as t:
                doc = asyncio.run(room_run(t, n, args.rate, args.messages, args.drain))
            results.append(doc)
            print(f"{name:9} {n:5} occupants  {args.rate:g}/s x {args.messages}: "
                  f"p50 {doc['p50_ms']} ms  p99 {doc['p99_ms']} ms  copies {doc['copies']} "
                  f"(lost {doc['lost']})  CPU {doc['cpu_us_per_copy']} µs/copy  "
                  f"{doc['cpu_by_process']}", flush=True)
    OUT.mkdir(exist_ok=True)
    path = OUT / f"muc-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
