"""Numbered messages while a pod is killed, and the loss counts (docs/architecture.md,
"Durable delivery on NATS JetStream").

Every sender (raw client with XEP-0198) sends ``s<k>:<n>`` to every receiver, round after
round; the receivers read all the time (answering the server's <r/>, XEP-0198 §4), and log
in again when their stream ends (a receiver's session is soft state: its messages meanwhile
are stored offline, RFC 6121 §8.5.2.1.1, and come back with a <delay/>, XEP-0203); the
senders read their bounces.  At the end each sender's 'h' says which of its stanzas the
server acknowledged (the first 'h' it sent), and every acknowledged (sender, receiver, n)
is put in one class: delivered once (live or from offline storage), bounced, duplicated or
lost; deliveries out of order per sender and receiver are counted too (RFC 6120 §10.1)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import nats

from shared.bus import streams
from tests.support.xmpp import RawClient, raw_login, raw_sm_login

BODY = re.compile(rb"<body[^>]*>s(\d+):(\d+)</body>")
R = b'<r xmlns="urn:xmpp:sm:3"/>'
ACKED = re.compile(rb'<a xmlns=["\']urn:xmpp:sm:3["\'] h=["\'](\d+)["\']')
PASSWORD = "pw"

if TYPE_CHECKING:
    from tests.support.cluster import Cluster
CONDITION = re.compile(rb"<error[^>]*><([a-z-]+)")


@dataclass
class Receiver:
    """A receiving account on some server: ``host``, ``port``, its domain; what it got as
    (sender, n, from offline storage)."""

    jid: str
    port: int
    domain: str = "localhost"
    sm: bool = True
    got: list[tuple[str, int, int, bool]] = field(default_factory=list)  # (jid, k, n, delay)
    # other connection managers' ports, tried in turn when logging in again fails (its own
    # connection manager was killed)
    ports: list[int] = field(default_factory=list)
    logins: int = 0
    client: RawClient | None = None

    async def login(self) -> None:
        client = RawClient("127.0.0.1", self.port, self.domain)
        if self.sm:
            await raw_sm_login(client, self.jid, PASSWORD, "r")
        else:
            await raw_login(client, self.jid, PASSWORD, "r")
        # available: stored messages come (RFC 6121 §8.5.2.1.1)
        await client.send(b"<presence/>")
        self.client = client
        self.logins += 1

    async def read(self, stop: asyncio.Event) -> None:
        """Until ``stop`` and a second of quiet; a stream that ends is opened again."""
        data = b""
        seen = 0
        while True:
            assert self.client is not None
            reader = self.client.reader
            assert reader is not None
            try:
                chunk = await asyncio.wait_for(reader.read(262144), 1.0)
            except TimeoutError:
                if stop.is_set():
                    return
                continue
            except (ConnectionError, OSError):
                chunk = b""
            if not chunk:
                await self._again()
                data = b""
                seen = 0  # a new session: XEP-0198 counts from 0 again
                continue
            data += chunk
            cut = data.rfind(b"</message>")
            if cut >= 0:
                done, data = data[: cut + 10], data[cut + 10:]
                for stanza in done.split(b"</message>"):
                    seen += stanza.count(b"<presence")  # stanzas 'h' counts too (§4)
                    if (m := BODY.search(stanza)) is not None and b'type="error"' not in \
                            stanza and b"type='error'" not in stanza:
                        delayed = b"urn:xmpp:delay" in stanza
                        self.got.append((self.jid, int(m.group(1)), int(m.group(2)), delayed))
                        seen += 1
                if R in done or R.replace(b'"', b"'") in done:
                    await self.client.send(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % seen)
            for r in (R, R.replace(b'"', b"'")):
                if r in data:
                    data = data.replace(r, b"")
                    await self.client.send(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % seen)

    async def _again(self) -> None:
        assert self.client is not None
        with contextlib.suppress(Exception):
            await self.client.close()
        ports = [self.port, *self.ports]
        for attempt in range(60):  # the server may be recovering: up to about a minute
            try:
                await self.login()
                return
            except Exception:
                self.port = ports[(ports.index(self.port) + 1) % len(ports)]
                await asyncio.sleep(min(0.2 * (attempt + 1), 2.0))
        raise ConnectionError(f"{self.jid} could not log in again")


@dataclass
class Sender:
    jid: str
    port: int
    client: RawClient | None = None
    bounced: list[tuple[str, int]] = field(default_factory=list)  # (receiver bare, n)
    conditions: Counter[str] = field(default_factory=Counter)  # of the bounces read
    _data: bytes = b""

    async def login(self) -> None:
        self.client = RawClient("127.0.0.1", self.port, self.jid.partition("@")[2])
        await raw_sm_login(self.client, self.jid, PASSWORD, "s")

    def take(self, chunk: bytes) -> None:
        """Bounces in what the server wrote: errors carrying our numbered body."""
        self._data += chunk
        cut = self._data.rfind(b"</message>")
        if cut < 0:
            return
        done, self._data = self._data[: cut + 10], self._data[cut + 10:]
        for stanza in done.split(b"</message>"):
            if b'type="error"' in stanza and (m := BODY.search(stanza)) is not None:
                condition = CONDITION.search(stanza)
                self.conditions[condition.group(1).decode() if condition else "?"] += 1
                sender = re.search(rb'from="([^"/]+)', stanza)
                who = sender.group(1).decode() if sender else ""
                self.bounced.append((who, int(m.group(2))))

    async def drain(self, stop: asyncio.Event) -> None:
        assert self.client is not None and self.client.reader is not None
        while not stop.is_set():
            try:
                chunk = await asyncio.wait_for(self.client.reader.read(65536), 0.5)
            except TimeoutError:
                continue
            if not chunk:
                return
            self.take(chunk)

    async def acked(self, reading: asyncio.Task[None]) -> int:
        """XEP-0198 §4: the 'h' the server answers (stored stanzas only)."""
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        assert self.client is not None and self.client.reader is not None
        await self.client.send(R.replace(b'"', b"'"))
        data = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not ACKED.search(data):
            assert loop.time() < deadline, data[-300:]
            chunk = await asyncio.wait_for(self.client.reader.read(65536), 60)
            assert chunk, "the sender's stream closed"
            data += chunk
        self.take(data)
        self.take(b"")
        # bounces that come after the 'h' (a publish refused late): read a little longer
        with contextlib.suppress(TimeoutError):
            while chunk := await asyncio.wait_for(self.client.reader.read(65536), 2.0):
                self.take(chunk)
        return int(ACKED.findall(data)[-1])


@dataclass
class Counts:
    """Each acknowledged (sender, receiver, n) in one class."""

    sent: int = 0
    acked: int = 0
    delivered: int = 0  # exactly once, live
    offline: int = 0  # exactly once, from offline storage
    bounced: int = 0  # not delivered, an error came back
    lost: int = 0
    duplicated: int = 0  # copies beyond the first
    disordered: int = 0  # a (sender, receiver) sequence not increasing
    unacked_delivered: int = 0  # not acknowledged, delivered anyway (allowed)
    logins: int = 0  # receivers' logins beyond the first
    # where the lost ones are: (receiver, sender) -> (first lost n, how many)
    missing: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)

    def row(self) -> str:
        return (f"| {self.sent} | {self.acked} | {self.delivered} | {self.offline} | "
                f"{self.bounced} | {self.lost} | {self.duplicated} | {self.disordered} |")

    HEADER = ("| sent | acknowledged ('h') | delivered | from offline storage | bounced | "
              "lost | duplicated | out of order |\n|---|---|---|---|---|---|---|---|")

    def __str__(self) -> str:
        return (f"sent {self.sent}, acknowledged {self.acked}, delivered {self.delivered}, "
                f"from offline storage {self.offline}, bounced {self.bounced}, lost "
                f"{self.lost}, duplicated {self.duplicated}, out of order {self.disordered} "
                f"(not acknowledged but delivered {self.unacked_delivered}; receivers "
                f"logged in again {self.logins} times; lost (receiver, sender): (first, "
                f"count) {self.missing})")


def count(senders: list[Sender], receivers: list[Receiver], rounds: int,
          acked: list[int]) -> Counts:
    """The classes of every message sent (``acked``: each sender's 'h')."""
    c = Counts(sent=rounds * len(senders) * len(receivers))
    bounced = {(k, who, n) for k, s in enumerate(senders) for who, n in s.bounced}
    for r in receivers:
        copies = Counter((k, n) for _jid, k, n, _d in r.got)
        delayed = {(k, n) for _jid, k, n, d in r.got if d}
        for k in range(len(senders)):
            for delay in (False, True):  # live, and from storage (which comes later)
                seq = [n for _jid, kk, n, d in r.got if kk == k and d is delay]
                c.disordered += sum(1 for a, b in itertools.pairwise(seq) if b < a)
            # the first 'h' stanzas of sender k, in order, went one per receiver per round
            through = acked[k] // len(receivers) + (
                1 if receivers.index(r) < acked[k] % len(receivers) else 0)
            for n in range(rounds):
                got = copies.get((k, n), 0)
                if n >= through:
                    c.unacked_delivered += got > 0
                    continue
                c.acked += 1
                c.duplicated += max(0, got - 1)
                if got and (k, n) in delayed:
                    c.offline += 1
                elif got:
                    c.delivered += 1
                elif (k, r.jid, n) in bounced:
                    c.bounced += 1
                else:
                    c.lost += 1
                    first, many = c.missing.get((receivers.index(r), k), (n, 0))
                    c.missing[(receivers.index(r), k)] = (first, many + 1)
        c.logins += r.logins - 1
    return c


async def run(senders: list[Sender], receivers: list[Receiver], rounds: int,
              kill: Callable[[], Awaitable[None]], kill_at: int, pace_s: float = 0.02,
              settle_s: float = 60,
              stored: Callable[[str], Awaitable[list[bytes]]] | None = None) -> Counts:
    """Log everyone in, send ``rounds`` rounds (every sender to every receiver, one write
    per sender and round), call ``kill`` after round ``kill_at``, and count once every
    receiver got what was acknowledged (or ``settle_s`` passed).  ``stored``: a receiver's
    offline messages, taken from the store at the end (a receiver that stayed online while
    the server thought it was not gets them only at its next login)."""
    for r in receivers:
        await r.login()
    for s in senders:
        await s.login()
    stop = asyncio.Event()
    reading = [asyncio.create_task(r.read(stop)) for r in receivers]
    draining = [asyncio.create_task(s.drain(stop)) for s in senders]
    killing: asyncio.Task[None] | None = None
    for n in range(rounds):
        for k, s in enumerate(senders):
            assert s.client is not None
            await s.client.send(b"".join(
                f"<message to='{r.jid}/r' type='chat' id='m{k}-{n}'><body>s{k}:{n}</body>"
                f"</message>".encode() for r in receivers))
        if n == kill_at:
            killing = asyncio.create_task(kill())
        await asyncio.sleep(pace_s)
    if killing is not None:
        await killing
    acked = [await s.acked(t) for s, t in zip(senders, draining, strict=True)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle_s
    while loop.time() < deadline:  # every acknowledged one arrived, bounced, or time is up
        c = count(senders, receivers, rounds, acked)
        if not c.lost:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)  # late copies (duplicates) have a moment to show
    stop.set()
    await asyncio.gather(*reading)
    for r in receivers if stored is not None else ():
        for payload in await stored(r.jid):  # type: ignore[misc]
            if (m := BODY.search(payload)) is not None:
                r.got.append((r.jid, int(m.group(1)), int(m.group(2)), True))
    for client in [r.client for r in receivers] + [s.client for s in senders]:
        if client is not None:
            await client.close()
    return count(senders, receivers, rounds, acked)


async def stream_leader(cluster: Cluster, fam: str) -> str:
    """The NATS node leading ``fam``'s stream (the same STREAM.CREATE the services send
    answers with the stream's info, its cluster's leader included)."""
    nc = await nats.connect(cluster.nats_url_of("router"), tls=cluster.nats_tls(),
                            connect_timeout=5)
    try:
        name = streams.stream_name(fam)
        config = streams.stream_config(fam, streams.StreamLimits(replicas=3))
        msg = await nc.request(f"$JS.API.STREAM.CREATE.{name}", json.dumps(config).encode(),
                               timeout=10)
        info = json.loads(msg.data)
        assert "error" not in info, info
        return str(info["cluster"]["leader"])
    finally:
        await nc.close()
