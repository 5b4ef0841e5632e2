"""Publish-subscribe fan-out (XEP-0060, XEP-0163): what one publish costs its subscribers.

Two scenarios, each against stanzad or, with ``--server ejabberd``, a private ejabberd
with mod_pubsub (and mod_caps for PEP) on the same loopback:

- ``node``: one node on ``pubsub.<domain>`` with N subscribers online (their full JIDs
  subscribed, XEP-0060 §6.1), spread over ``--cms`` connection managers; its owner publishes
  ``--publishes`` items one after the other (each once the previous one reached everyone).
  The subscribers are the load tool's fleet (loadtest/fleet.py: worker processes holding
  thousands of lean TLS clients each, SCRAM-SHA-256, loadtest/pubsub_worker.py's commands):
  each sends its subscribe request and waits for the answer, then records when each
  publish's notification arrived; the publisher is one client of this process and stamps
  each item's payload with its clock (CLOCK_MONOTONIC is one clock for every process);
- ``pep``: a user with N contacts (mutual subscriptions) whose clients announce
  ``urn:xmpp:avatar:metadata+notify`` in their XEP-0115 caps (and answer the server's
  disco#info for that ``ver``) publishes avatar metadata (XEP-0084 §4.2) the same way; its
  contacts are RawClients of this one process (fine at 1,000).

Measured per publish: the time from sending the publish until the first, the median and the
last subscriber has the notification; and for the whole run the server CPU (every server
process, PostgreSQL included, as loadtest/target.py counts it; ejabberd's beam) per delivered
notification, beside the same servers' CPU over an idle window before the publishes.

    .venv/bin/python -m loadtest.pubsub_fanout --subscribers 1000 --cms 2
    .venv/bin/python -m loadtest.pubsub_fanout --subscribers 100000 --cms 7 --workers 6
    .venv/bin/python -m loadtest.pubsub_fanout --scenario pep --subscribers 1000
    .venv/bin/python -m loadtest.pubsub_fanout --subscribers 1000 --server ejabberd

Bounded: at most 100,000 subscribers (RLIMIT_NOFILE permitting: each worker and each
connection manager holds its share), 20 publishes, --seconds per publish, every phase with
a time bound; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lxml import etree  # noqa: E402

from loadtest import bounds, ejabberd, phases, target  # noqa: E402
from loadtest.bounds import check_range, raise_nofile, source_addresses  # noqa: E402
from loadtest.fleet import Fleet  # noqa: E402
from loadtest.phases import Run  # noqa: E402
from loadtest.procstat import (  # noqa: E402
    TREES,
    ProcSampler,
    cpu_seconds,
    rss_bytes,
    tree_cpu_seconds,
)
from loadtest.pubsub_worker import PUBSUB, PubsubWorker  # noqa: E402
from loadtest.users import PASSWORD, User, create_accounts, create_rosters  # noqa: E402
from shared.store.pg.database import connect as db_connect  # noqa: E402
from shared.xmpp.caps import ver_of  # noqa: E402
from tests.support.cluster import metric_total  # noqa: E402
from tests.support.xmpp import RawClient, raw_login  # noqa: E402

AVATAR_META = "urn:xmpp:avatar:metadata"
CAPS_NODE = "https://stanzad.invalid/loadtest"
NODE = "bench"
MAX_SUBSCRIBERS = 100_000
MAX_PUBLISHES = 20
IDLE_S = 5.0
POLL_S = 0.005
LOGINS_IN_FLIGHT = 100
MECHANISM = "SCRAM-SHA-256"  # the fleet's; ejabberd stores its keys with that hash
SOURCES = 50  # loopback source addresses the subscribers connect from
ITERATIONS = 4096
ITEM = re.compile(rb"<item id=[\"'](it\d+)[\"']")
IQ_GET = re.compile(rb"<iq\b[^>]*>")
ATTR = re.compile(rb"\b(type|id|from)=[\"']([^\"']*)[\"']")


def disco_answer() -> tuple[str, str]:
    """(ver, the <query/> body) of the subscribers' caps: a client that wants avatar
    metadata notifications (XEP-0115 §5.1 over this very answer)."""
    body = ('<identity category="client" type="bot" name="loadtest"/>'
            '<feature var="http://jabber.org/protocol/caps"/>'
            '<feature var="http://jabber.org/protocol/disco#info"/>'
            f'<feature var="{AVATAR_META}+notify"/>')
    query = etree.fromstring(f'<query xmlns="http://jabber.org/protocol/disco#info">{body}'
                             "</query>")
    ver = ver_of(query, "sha-1")
    assert ver is not None
    return ver, body


@dataclass
class Subscriber:
    """One client's stream, read by one task: notification arrival times by item id; caps
    queries answered (XEP-0115 §6.3)."""

    client: RawClient
    jid: str
    caps: tuple[str, str] | None = None
    arrived: dict[bytes, float] = field(default_factory=dict)
    caps_answered: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        assert self.client.reader is not None
        tail = b""
        while chunk := await self.client.reader.read(262144):
            now = time.perf_counter()
            data = tail + chunk
            for item in ITEM.findall(data):
                self.arrived.setdefault(item, now)
            if self.caps is not None and b"disco#info" in data:
                await self._answer_caps(data)
            elif b"urn:xmpp:ping" in data:  # XEP-0199 keepalive of an idle session
                await self._answer_pings(data)
            tail = data[-200:]
            self.changed.set()

    async def _answer_pings(self, data: bytes) -> None:
        for tag in IQ_GET.findall(data):
            attrs = dict(ATTR.findall(tag))
            if attrs.get(b"type") == b"get" and b"id" in attrs:
                to = attrs.get(b"from", b"").decode()
                await self.client.send(
                    f"<iq type='result' id='{attrs[b'id'].decode()}' to='{to}'/>".encode())

    async def _answer_caps(self, data: bytes) -> None:
        for tag in IQ_GET.findall(data):
            attrs = dict(ATTR.findall(tag))
            if attrs.get(b"type") != b"get" or b"id" not in attrs:
                continue
            assert self.caps is not None
            ver, body = self.caps
            to = attrs.get(b"from", b"").decode()
            await self.client.send(
                f"<iq type='result' id='{attrs[b'id'].decode()}' to='{to}'>"
                "<query xmlns='http://jabber.org/protocol/disco#info' "
                f"node='{CAPS_NODE}#{ver}'>{body}</query></iq>".encode())
            self.caps_answered += 1


async def ask(client: RawClient, iq: str, stanza_id: str, timeout: float = 60) -> bytes:
    """Send an IQ, read up to the end of its answer (ejabberd quotes attributes with ')."""
    await client.send(iq.encode())
    sid = stanza_id.encode()
    data = await client.read_until_any((b'id="' + sid + b'"', b"id='" + sid + b"'"), timeout)
    if not data.rstrip().endswith((b"/>", b"</iq>")):
        data += await client.read_until(b"</iq>", timeout)
    return data


@dataclass
class Server:
    """Where the run goes: its c2s ports, the pubsub service JID, its server processes."""

    name: str
    ports: tuple[int, ...]
    service: str
    pids: Callable[[], dict[str, int]]
    close: Callable[[], None]
    # what the connection managers counted (sessions, slow consumers...), when known
    counters: Callable[[], dict[str, dict[str, float]]] = dict

    @property
    def domain(self) -> str:
        return self.service.removeprefix("pubsub.")


def per_process_cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each server process (PostgreSQL's and beam's with children)."""
    return {name: tree_cpu_seconds(pid) if name in TREES else cpu_seconds(pid)
            for name, pid in pids.items()}


def cpu_since(before: dict[str, float], pids: dict[str, int]) -> dict[str, float]:
    now = per_process_cpu(pids)
    return {name: now[name] - before.get(name, 0.0) for name in now}


def start_stanzad(users: list[User], contacts: list[list[int]], cms: int) -> Server:
    cluster = target.start(target.Topology(cms=cms, routers=1, archive=False))
    try:
        # the limits at their defaults: 100,000 subscriptions per node (MAX_SUBSCRIBERS), and
        # the publishes, one at a time, stay under the per-account publish rate
        cluster.start_pubsub(**target.QUIET)
        url, token = target.admin(cluster)

        async def provision() -> None:
            await create_accounts(url, token, users, ITERATIONS)
            if contacts:
                db = await db_connect(cluster.database_url, "loadtest", size=1)
                try:
                    await create_rosters(db, users, contacts)
                finally:
                    await db.close()

        asyncio.run(provision())
    except BaseException:
        cluster.stop()
        raise
    return Server("stanzad", target.c2s_ports(cluster), f"pubsub.{cluster.domain}",
                  lambda: target.server_pids(cluster), cluster.stop,
                  lambda: cm_counters(cluster))


CM_COUNTERS = ("sessions", "stanzas_delivered_total", "slow_consumers_total",
               "dead_peers_total", "undeliverable_total", "stream_errors_total",
               "keepalive_pings_total")


def cm_counters(cluster: target.Cluster) -> dict[str, dict[str, float]]:
    """Each connection manager's figures that tell where notifications went missing."""
    out = {}
    for name in target.cm_names(cluster):
        text = cluster.metrics(name)
        out[name] = {c: metric_total(text, f"stanzad_cm_{c}") for c in CM_COUNTERS}
    return out


def start_ejabberd(users: list[User], contacts: list[list[int]]) -> Server:
    server = ejabberd.start(pubsub=True)
    try:
        made = server.create([u.jid.partition("@")[0] for u in users], PASSWORD, ITERATIONS,
                             contacts)
        if made.registered < len(users):
            raise RuntimeError(f"ejabberd registered {made.registered}/{len(users)}: "
                               f"{made.errors}")
    except BaseException:
        ejabberd.remove(server)
        raise
    return Server("ejabberd", (server.port,), f"pubsub.{server.domain}", server.pids,
                  lambda: ejabberd.remove(server))


async def connect(server: Server, users: list[User], caps: tuple[str, str] | None,
                  password: str = PASSWORD
                  ) -> tuple[list[Subscriber], list[asyncio.Task[None]]]:
    """Every user logged in (spread over the ports and source addresses) with presence, each
    read from its login on (a long login phase must not leave the first ones unanswered to
    the server's keepalive pings); the subscribers and their reading tasks."""
    sources = source_addresses(SOURCES)
    gate = asyncio.Semaphore(LOGINS_IN_FLIGHT)
    ver = caps[0] if caps else ""

    async def one(i: int, user: User) -> Subscriber:
        client = RawClient("127.0.0.1", server.ports[i % len(server.ports)],
                           source=sources[i % len(sources)])
        async with gate:
            await raw_login(client, user.jid, password, user.resource)
        sub = Subscriber(client, user.full, caps)
        presence = (f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
                    f"node='{CAPS_NODE}' ver='{ver}'/></presence>" if caps else "<presence/>")
        await client.send(presence.encode())
        readers.append(asyncio.create_task(sub.read()))
        return sub

    readers: list[asyncio.Task[None]] = []
    subs = list(await asyncio.gather(*(one(i, u) for i, u in enumerate(users))))
    return subs, readers


async def publish_rounds(owner: RawClient, to: str, node: str, payload: str,
                         subs: list[Subscriber], publishes: int, seconds: float
                         ) -> list[dict[str, float]]:
    """The pep scenario's publishes, each until every RawClient had it or ``seconds``."""
    rounds = []
    loop = asyncio.get_running_loop()
    for k in range(publishes):
        item = f"it{k}".encode()
        start = time.perf_counter()
        await publish(owner, k, to, node, payload)
        acked = time.perf_counter()
        deadline = loop.time() + seconds
        for sub in subs:
            while item not in sub.arrived and loop.time() < deadline:
                sub.changed.clear()
                try:
                    await asyncio.wait_for(sub.changed.wait(), deadline - loop.time())
                except TimeoutError:
                    break
        times = sorted(s.arrived[item] - start for s in subs if item in s.arrived)
        rounds.append({"delivered": len(times), "ack_s": acked - start,
                       "first_s": times[0] if times else float("nan"),
                       "median_s": statistics.median(times) if times else float("nan"),
                       "last_s": times[-1] if len(times) == len(subs) else float("nan")})
    return rounds


async def idle_then(server: Server, rounds: Callable[[], Awaitable[list[dict[str, float]]]]
                    ) -> dict[str, Any]:
    """The servers idle for IDLE_S first (what the connections cost by themselves:
    keepalives, session refreshes), then ``rounds``; the CPU of each window by process."""
    idle0 = per_process_cpu(server.pids())
    t_idle = time.perf_counter()
    await asyncio.sleep(IDLE_S)
    idle = cpu_since(idle0, server.pids())
    idle_s = time.perf_counter() - t_idle
    cpu0 = per_process_cpu(server.pids())
    t_pub = time.perf_counter()
    done = await rounds()
    publish_s = time.perf_counter() - t_pub
    return {"rounds": done, "publish_s": publish_s, "by_process": cpu_since(cpu0, server.pids()),
            "idle": idle, "idle_s": idle_s, "counters": server.counters()}


def summary(server: Server, scenario: str, subscribers: int, publishes: int,
            measured: dict[str, Any], **more: Any) -> dict[str, Any]:
    """The run's figures: medians over the publishes, CPU per delivered notification."""
    rounds = measured["rounds"]
    by_process, idle = measured["by_process"], measured["idle"]
    publish_s = measured["publish_s"]
    delivered = sum(r["delivered"] for r in rounds)
    lasts = [r["last_s"] for r in rounds]
    cpu = sum(by_process.values())
    idle_rate = sum(idle.values()) / measured["idle_s"]
    return {
        "server": server.name, "scenario": scenario, "subscribers": subscribers,
        "cms": len(server.ports), "publishes": publishes,
        "delivered": delivered, "expected": publishes * subscribers,
        "ack_ms_median": statistics.median(r["ack_s"] for r in rounds) * 1000,
        "first_ms_median": statistics.median(r["first_s"] for r in rounds) * 1000,
        "median_ms_median": statistics.median(r["median_s"] for r in rounds) * 1000,
        "last_ms_median": statistics.median(lasts) * 1000,
        "last_ms_max": max(lasts) * 1000,
        "server_cpu_s": cpu,
        "cpu_us_per_notification": cpu / delivered * 1e6 if delivered else float("nan"),
        "publish_s": publish_s,
        "idle_cpu_per_s": idle_rate,
        "cpu_us_per_notification_net": ((cpu - idle_rate * publish_s) / delivered * 1e6
                                        if delivered else float("nan")),
        "cpu_by_process_s": {k: round(v, 3) for k, v in sorted(by_process.items())},
        "idle_cpu_by_process_s": {k: round(v, 3) for k, v in sorted(idle.items())},
        "cm_counters": measured["counters"],
        "rounds": rounds,
        **more,
    }


def publish_iq(k: int, to: str, node: str, payload: str) -> str:
    attr = f" to='{to}'" if to else ""
    return (f"<iq type='set' id='pub{k}'{attr}><pubsub xmlns='{PUBSUB}'>"
            f"<publish node='{node}'><item id='it{k}'>{payload}</item></publish></pubsub></iq>")


async def publish(owner: RawClient, k: int, to: str, node: str, payload: str) -> None:
    answer = await ask(owner, publish_iq(k, to, node, payload), f"pub{k}")
    if b"type='result'" not in answer and b'type="result"' not in answer:
        raise RuntimeError(f"publish refused: {answer[-400:]!r}")


async def owner_login(server: Server, user: User, password: str) -> RawClient:
    owner = RawClient("127.0.0.1", server.ports[0], server.domain)
    await raw_login(owner, user.jid, password, user.resource)
    await owner.send(b"<presence/>")
    return owner


def fleet_round(stamp: int, subscribers: int, replies: list[dict[str, Any]], ack_s: float
                ) -> dict[str, float]:
    """One publish's figures from the workers' first arrivals of its stamp."""
    times = sorted((t - stamp) / 1e9 for r in replies
                   for t in array("q", r["arrivals"].get(stamp, b"")))
    return {"delivered": len(times), "ack_s": ack_s,
            "first_s": times[0] if times else float("nan"),
            "median_s": statistics.median(times) if times else float("nan"),
            "last_s": times[-1] if len(times) == subscribers else float("nan")}


async def run_node(server: Server, users: list[User], publishes: int, seconds: float,
                   password: str = PASSWORD, settle_s: float | None = None, workers: int = 1,
                   concurrency: int = LOGINS_IN_FLIGHT, quiet: bool = True) -> dict[str, Any]:
    """``users[0]`` owns the node and publishes; the others are the fleet's subscribers."""
    subscribers = users[1:]
    plan = bounds.plan(len(subscribers), workers)
    fleet = Fleet(plan, "127.0.0.1", server.ports, tuple(source_addresses(SOURCES)),
                  server.domain, password, MECHANISM, quiet=quiet, worker=PubsubWorker)
    # the node first, on a connection of its own (the owner publishes from a second one
    # later: a client of this process must not sit unread through the long phases below)
    owner = await owner_login(server, users[0], password)
    try:
        created = await ask(owner, (
            f"<iq type='set' id='create' to='{server.service}'><pubsub xmlns='{PUBSUB}'>"
            f"<create node='{NODE}'/></pubsub></iq>"), "create")
        if b"error" in created:
            raise RuntimeError(f"create refused: {created[-400:]!r}")
    finally:
        await owner.close()
    fleet.start()
    owner = None
    try:
        session = Run(fleet, ProcSampler(server.pids()))
        login = await asyncio.to_thread(phases.login, session, subscribers, concurrency, True,
                                        "login")
        if login["bound"] < len(subscribers):
            raise RuntimeError(f"logged in {login['bound']}/{len(subscribers)}: "
                               f"{login['errors']}")
        # memory once everyone is online: the servers' (by process) and the fleet's
        rss = {"server": login["server"]["rss_after"],
               "fleet": sum(rss_bytes(proc.pid) for proc in fleet.procs if proc.pid)}
        t_sub = time.perf_counter()
        # every subscription answered (stored, XEP-0060 §6.1.2), so that none of their work
        # falls into the measured publishes; bounded
        replies = await asyncio.to_thread(
            fleet.call, "subscribe",
            {"service": server.service, "node": NODE, "timeout_s": 60 + len(subscribers) / 50,
             "concurrency": max(1, concurrency // plan.workers)},
            "subscribe", 120 + len(subscribers) / 50)
        subscribe_s = time.perf_counter() - t_sub
        subscribed = sum(r["subscribed"] for r in replies)
        if subscribed < len(subscribers):
            errors = [e for r in replies for e in r["errors"]]
            raise RuntimeError(f"subscribed {subscribed}/{len(subscribers)}: {errors[:3]}")
        await asyncio.sleep(1 if settle_s is None else settle_s)
        owner = await owner_login(server, users[0], password)
        stamps: list[int] = []
        acks: list[float] = []

        async def rounds() -> list[dict[str, float]]:
            assert owner is not None
            loop = asyncio.get_running_loop()
            for k in range(publishes):
                before = fleet.totals()["received"]
                stamp = time.monotonic_ns()
                payload = f"<reading xmlns='urn:example:iot'><status>{stamp}</status></reading>"
                await publish(owner, k, server.service, NODE, payload)
                acks.append((time.monotonic_ns() - stamp) / 1e9)
                stamps.append(stamp)
                # the workers' shared counters, polled: each notification's time is
                # taken by its worker, not here; bounded by ``seconds``
                deadline = loop.time() + seconds
                for _ in range(int(seconds / POLL_S) + 1):
                    if (fleet.totals()["received"] - before >= subscribed
                            or loop.time() >= deadline):
                        break
                    await asyncio.sleep(POLL_S)
            return []

        measured = await idle_then(server, rounds)
        notes = await asyncio.to_thread(fleet.call, "notifications", {}, "collect", 120)
    finally:
        if owner is not None:
            await owner.close()
        await asyncio.to_thread(fleet.stop)
    measured["rounds"] = [fleet_round(stamp, subscribed, notes, ack)
                          for stamp, ack in zip(stamps, acks, strict=True)]
    return summary(server, "node", len(subscribers), publishes, measured,
                   workers=plan.workers, login_s=login["seconds"],
                   logins_per_s=login["logins_per_s"], subscribed=subscribed,
                   subscribe_s=subscribe_s,
                   duplicates=sum(r["duplicates"] for r in notes),
                   live=sum(r["live"] for r in notes),
                   rss_after_login=rss)


async def run_pep(server: Server, users: list[User], publishes: int, seconds: float,
                  password: str = PASSWORD, settle_s: float | None = None) -> dict[str, Any]:
    """``users[0]`` publishes avatar metadata to its contacts, the others (RawClients)."""
    caps = disco_answer()
    t0 = time.perf_counter()
    subs, readers = await connect(server, users[1:], caps, password)
    login_s = time.perf_counter() - t0
    # the publisher last: it reads only its answers, so it must not idle through the logins
    owner = await owner_login(server, users[0], password)
    try:
        # caps resolved, presence settled
        await asyncio.sleep(3 + len(subs) / 1000 if settle_s is None else settle_s)
        payload = (f"<metadata xmlns='{AVATAR_META}'><info bytes='12345' id='it' "
                   "height='64' width='64' type='image/png'/></metadata>")
        measured = await idle_then(server, lambda: publish_rounds(
            owner, "", AVATAR_META, payload, subs, publishes, seconds))
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        # at once: a server that does not answer the TLS close costs each client 2 s
        await asyncio.gather(*(c.close() for c in [owner, *(s.client for s in subs)]))
    return summary(server, "pep", len(subs), publishes, measured, login_s=login_s,
                   caps_answered=sum(s.caps_answered for s in subs))


async def run(server: Server, scenario: str, users: list[User], publishes: int,
              seconds: float, password: str = PASSWORD, settle_s: float | None = None,
              workers: int = 1, concurrency: int = LOGINS_IN_FLIGHT, quiet: bool = True
              ) -> dict[str, Any]:
    """``users[0]`` publishes, the others receive; ``settle_s``: the wait after the
    subscriptions (node) or for caps to be resolved (pep), by default from their number."""
    if scenario == "node":
        return await run_node(server, users, publishes, seconds, password, settle_s, workers,
                              concurrency, quiet)
    return await run_pep(server, users, publishes, seconds, password, settle_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("node", "pep"), default="node")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--cms", type=int, default=2, help="connection managers (stanzad)")
    parser.add_argument("--publishes", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=60, help="bound per publish")
    parser.add_argument("--server", "--against", dest="server", choices=("stanzad", "ejabberd"),
                        default="stanzad")
    parser.add_argument("--workers", type=int, default=2,
                        help="load worker processes of the node scenario's subscribers (more "
                        "when RLIMIT_NOFILE needs them)")
    parser.add_argument("--concurrency", type=int, default=LOGINS_IN_FLIGHT,
                        help="logins and subscribe requests in flight, in total")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args(argv)
    check_range("--subscribers", args.subscribers, 1, MAX_SUBSCRIBERS)
    check_range("--publishes", args.publishes, 1, MAX_PUBLISHES)
    check_range("--seconds", args.seconds, 1, 600)
    check_range("--concurrency", args.concurrency, 1, 2000)
    nofile = raise_nofile()
    if args.scenario == "node":
        bounds.plan(args.subscribers, args.workers)  # the fleet's share of descriptors
        # each connection manager (or the one ejabberd) holds its share of the subscribers
        fronts = args.cms if args.server == "stanzad" else 1
        if -(-args.subscribers // fronts) + 1000 > nofile:
            raise SystemExit(f"RLIMIT_NOFILE ({nofile}) is too low for {args.subscribers} "
                             f"subscribers on {fronts} server process(es): more --cms")
    elif nofile < args.subscribers + 1000:
        raise SystemExit("RLIMIT_NOFILE is too low for that many subscribers in one process")
    users = [User(f"ps{i}@localhost", f"r{i}") for i in range(args.subscribers + 1)]
    # pep: user 0 has every other user as a contact, and each of them has user 0
    contacts = ([list(range(1, len(users))), *([0] for _ in users[1:])]
                if args.scenario == "pep" else [])
    if args.server == "ejabberd":
        server = start_ejabberd(users, contacts)
    else:
        server = start_stanzad(users, contacts, args.cms)
    try:
        result = asyncio.run(run(server, args.scenario, users, args.publishes, args.seconds,
                                 workers=args.workers, concurrency=args.concurrency,
                                 quiet=False))
    finally:
        server.close()
    if result["scenario"] == "node":
        print(f"{result['server']} node: {result['subscribers']:,} subscribers (fleet of "
              f"{result['workers']} workers) on {result['cms']} port(s), logged in in "
              f"{result['login_s']:.1f} s ({result['logins_per_s']:.0f}/s); "
              f"{result['subscribed']:,} subscribed in {result['subscribe_s']:.1f} s; "
              f"{result['live']:,} still connected, {result['duplicates']} duplicates")
        rss = result["rss_after_login"]
        print(f"  RSS online: servers {sum(rss['server'].values()) / 2**20:,.0f} MiB ("
              + ", ".join(f"{k} {v / 2**20:,.0f}" for k, v in sorted(rss["server"].items()))
              + f"), the fleet {rss['fleet'] / 2**20:,.0f} MiB")
    else:
        print(f"{result['server']} pep: {result['subscribers']} contacts on {result['cms']} "
              f"port(s), logged in in {result['login_s']:.1f} s; caps queries answered: "
              f"{result['caps_answered']}")
    print(f"notifications {result['delivered']}/{result['expected']}; per publish (median of "
          f"{result['publishes']}): ack {result['ack_ms_median']:.0f} ms, first "
          f"{result['first_ms_median']:.0f} ms, median {result['median_ms_median']:.0f} ms, "
          f"last {result['last_ms_median']:.0f} ms (worst {result['last_ms_max']:.0f} ms)")
    print(f"server CPU {result['server_cpu_s']:.2f} s: "
          f"{result['cpu_us_per_notification']:.1f} µs per delivered notification "
          f"({result['publish_s']:.1f} s of publishing; idle servers burn "
          f"{result['idle_cpu_per_s']:.2f} CPU-s/s, net "
          f"{result['cpu_us_per_notification_net']:.1f} µs)")
    print("  by process (publishing / idle "
          f"{IDLE_S:.0f} s): " + ", ".join(
              f"{k} {v:.2f}/{result['idle_cpu_by_process_s'].get(k, 0.0):.2f}"
              for k, v in result["cpu_by_process_s"].items()))
    for name, figures in result["cm_counters"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v:,.0f}" for k, v in figures.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
