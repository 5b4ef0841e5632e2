"""A load worker process: holds its share of the connections on its own event loop (uvloop
when installed) and obeys commands from the coordinator over a pipe.

Commands (each answered with one dict): `login` logs in a list of users, `send` starts a
bounded, paced send task (chat messages or presence broadcasts), `collect` waits for that
task and hands back the time stamps received since the last collect, `status` counts the
open connections and the keepalive pings they answered, `close` ends it all.
Live counters go to a shared array that the coordinator reads for its progress line.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final

from scramp import ScramException

from loadtest import client, identity
from loadtest.bounds import raise_nofile

# slots of one worker in the shared counter array
BOUND, FAILED, SENT, RECEIVED, DROPPED, SENDING = range(6)
NCOUNTERS: Final = 6
TICK_S: Final = 0.01
MAX_BUFFERED: Final = 256 * 1024  # skip a sender whose socket is this far behind
MAX_ERRORS: Final = 5


def spread(n: int, k: int) -> int:
    """Which of `k` connection managers connection number `n` goes to: Fibonacci hashing,
    as even as round robin over consecutive numbers, and over every other one or every
    tenth (the scale scenario's online users) too."""
    return ((n * 2654435769) & 0xFFFFFFFF) * k >> 32


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    index: int
    host: str
    ports: tuple[int, ...]
    sources: tuple[str, ...]
    domain: str
    password: str
    mechanism: str
    max_connections: int
    sm: bool = False  # XEP-0198 enabled on every connection
    token_key: str = ""  # OAUTHBEARER: the private JWK that signs each user's token


class Worker:
    def __init__(self, cfg: WorkerConfig, pipe: Connection, counters: Any) -> None:
        self.cfg = cfg
        self.pipe = pipe
        self.counters = counters
        self.base = cfg.index * NCOUNTERS
        self.conns: list[client.XmppConnection] = []
        self.arrivals: array[int] = array("q")
        self.latencies: array[int] = array("q")
        # presence sent: each broadcast's stamp and its sender's number, to know whom it
        # should reach
        self.broadcasts: array[int] = array("q")
        self.broadcasters: array[int] = array("q")
        self.sender: asyncio.Task[int] | None = None
        self.ctx = client.insecure_context()

    def count(self, slot: int, n: int = 1) -> None:
        self.counters[self.base + slot] += n

    def sink(self, stamp: int, now: int) -> None:
        self.arrivals.append(now)
        self.latencies.append(now - stamp)
        self.counters[self.base + RECEIVED] += 1

    def lost(self, _conn: client.XmppConnection) -> None:
        self.count(DROPPED)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            command, args = await loop.run_in_executor(None, self.pipe.recv)
            try:
                reply = await getattr(self, f"do_{command}")(**args)
            except Exception as exc:  # reported to the coordinator, which stops the run
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            self.pipe.send(reply)
            if command == "close":
                return

    async def do_login(self, users: list[tuple[str, str]], concurrency: int,
                       presence: bool | list[bool], timeout_s: float, offset: int
                       ) -> dict[str, Any]:
        """`presence`: whether every user (or each, by position) sends initial presence."""
        if len(self.conns) + len(users) > self.cfg.max_connections:
            raise ValueError("more connections than this worker may hold (RLIMIT_NOFILE)")
        gate = asyncio.Semaphore(max(1, concurrency))
        durations: list[float] = []
        errors: list[str] = []
        # the platform's token for each user, signed before the logins are timed
        secrets = ([identity.mint(self.cfg.token_key, jid) for jid, _ in users]
                   if self.cfg.mechanism == "OAUTHBEARER" else [self.cfg.password] * len(users))
        available = presence if isinstance(presence, list) else [presence] * len(users)
        first = time.monotonic_ns()

        async def one(i: int, jid: str, resource: str) -> None:
            n = offset + i
            conn = client.XmppConnection(self.sink, self.lost)
            secret = secrets[i]
            async with gate:
                t0 = time.monotonic_ns()
                try:
                    await client.login(
                        conn, host=self.cfg.host,
                        port=self.cfg.ports[spread(n, len(self.cfg.ports))],
                        source=self.cfg.sources[n % len(self.cfg.sources)],
                        domain=self.cfg.domain, jid=jid, password=secret,
                        resource=resource, mechanism=self.cfg.mechanism, ctx=self.ctx,
                        timeout=timeout_s, sm=self.cfg.sm,
                    )
                except (OSError, TimeoutError, client.LoginFailed, ScramException,
                        ValueError) as exc:
                    conn.close()
                    self.count(FAILED)
                    if len(errors) < MAX_ERRORS:
                        errors.append(f"{jid}: {type(exc).__name__}: {exc}"[:300])
                    return
                durations.append((time.monotonic_ns() - t0) / 1e6)
                conn.index, conn.available = n, available[i]
                if conn.available:
                    conn.write(b"<presence/>")
                self.conns.append(conn)
                self.count(BOUND)

        await asyncio.gather(*(one(i, j, r) for i, (j, r) in enumerate(users)))
        return {"bound": len(durations), "failed": len(users) - len(durations),
                "errors": errors, "durations_ms": durations, "first_ns": first,
                "last_ns": time.monotonic_ns()}

    async def do_register(self, users: list[str], concurrency: int, timeout_s: float
                          ) -> dict[str, Any]:
        """In-band registration of `users`, each on a connection closed afterwards."""
        gate = asyncio.Semaphore(max(1, concurrency))
        errors: list[str] = []

        async def one(i: int, jid: str) -> bool:
            conn = client.XmppConnection()
            async with gate:
                try:
                    await client.register(
                        conn, host=self.cfg.host, port=self.cfg.ports[i % len(self.cfg.ports)],
                        source=self.cfg.sources[i % len(self.cfg.sources)],
                        domain=self.cfg.domain, jid=jid, password=self.cfg.password,
                        ctx=self.ctx, timeout=timeout_s)
                except (OSError, TimeoutError, client.LoginFailed) as exc:
                    if len(errors) < MAX_ERRORS:
                        errors.append(f"{jid}: {type(exc).__name__}: {exc}"[:300])
                    return False
                finally:
                    conn.close()
                return True

        done = await asyncio.gather(*(one(i, j) for i, j in enumerate(users)))
        return {"registered": sum(done), "errors": errors}

    async def do_send(self, kind: str, rate: float, count: int, seconds: float,
                      recipients: list[str], start_ns: int, available_only: bool = False
                      ) -> dict[str, Any]:
        """`available_only`: only connections that sent initial presence send."""
        if self.sender is not None and not self.sender.done():
            raise RuntimeError("a send task is still running")
        self.sender = asyncio.create_task(self._send(kind, rate, count, seconds, recipients,
                                                     start_ns, available_only))
        return {"ok": True}

    async def _send(self, kind: str, rate: float, count: int, seconds: float,
                    recipients: list[str], start_ns: int, available_only: bool) -> int:
        live = [c for c in self.conns if not c.closed and (c.available or not available_only)]
        if not live or count <= 0 or rate <= 0:
            return 0
        self.count(SENDING)
        try:
            await asyncio.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
            targets = [t.encode() for t in recipients]
            rng = random.Random(self.cfg.index)
            start = time.monotonic_ns()
            end = start + int(seconds * 1e9)
            sent = 0
            last = 0
            turn = 0
            while sent < count:
                now = time.monotonic_ns()
                if now >= end:
                    break
                due = min(count, int(rate * (now - start) / 1e9) + 1) - sent
                before = sent
                for _ in range(max(0, due)):
                    conn = live[turn % len(live)]
                    turn += 1
                    if conn.closed or conn.buffered() > MAX_BUFFERED:
                        continue
                    last = max(last + 1, time.monotonic_ns())
                    stamp = str(last).encode()
                    if kind == "chat":
                        to = targets[rng.randrange(len(targets))]
                        conn.write(b"<message type='chat' to='" + to + b"'><body>" + stamp
                                   + b"</body></message>")
                    else:
                        if len(conn.own_stamps) > 10_000:
                            conn.own_stamps.clear()
                        conn.own_stamps.add(stamp)
                        self.broadcasts.append(last)
                        self.broadcasters.append(conn.index)
                        conn.write(b"<presence><status>" + stamp + b"</status></presence>")
                    sent += 1
                self.count(SENT, sent - before)
                await asyncio.sleep(TICK_S)
            return sent
        finally:
            self.count(SENDING, -1)

    async def do_collect(self, wait_s: float) -> dict[str, Any]:
        sent = 0
        if self.sender is not None:
            try:
                sent = await asyncio.wait_for(self.sender, wait_s)
            except TimeoutError:
                sent = -1
            self.sender = None
        arrivals, latencies = self.arrivals, self.latencies
        self.arrivals, self.latencies = array("q"), array("q")
        stamps, senders = self.broadcasts, self.broadcasters
        self.broadcasts, self.broadcasters = array("q"), array("q")
        return {"sent": sent, "arrivals": arrivals.tobytes(), "latencies": latencies.tobytes(),
                "broadcasts": stamps.tobytes(), "broadcasters": senders.tobytes(),
                **await self.do_status()}

    async def do_status(self) -> dict[str, Any]:
        """Connections still open, and the server pings they answered so far."""
        return {"live": sum(1 for c in self.conns if not c.closed),
                "pings": sum(c.pings for c in self.conns)}

    async def do_close(self) -> dict[str, Any]:
        if self.sender is not None:
            self.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sender
        for conn in self.conns:
            conn.close()
        await asyncio.sleep(0.1)
        n = len(self.conns)
        self.conns.clear()
        return {"closed": n}


def worker_main(cfg: WorkerConfig, pipe: Connection, counters: Any,
                kind: type[Worker] = Worker) -> None:
    """Process entry point; ``kind``: a Worker subclass with more commands."""
    raise_nofile()
    client.cache_salted_passwords()
    worker = kind(cfg, pipe, counters)
    try:
        import uvloop
    except ImportError:
        asyncio.run(worker.serve())
    else:
        uvloop.run(worker.serve())
