"""The building blocks every scenario is made of: log users in, send at a rate, collect."""

from __future__ import annotations

import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from loadtest import stats
from loadtest.fleet import Fleet
from loadtest.opcount import OpCounters, delta
from loadtest.procstat import ProcSampler, cost
from loadtest.users import User


@dataclass
class Run:
    fleet: Fleet
    sampler: ProcSampler
    login_timeout_s: float = 60.0
    ops: OpCounters | None = None  # Redis/NATS operations per phase (stanzad only)


def _ops(run: Run, start: bool = False) -> dict[str, float]:
    return run.ops.read(start) if run.ops is not None else {}


def split(items: list[Any], shares: list[int]) -> list[list[Any]]:
    out, at = [], 0
    for n in shares:
        out.append(items[at:at + n])
        at += n
    return out


def login(run: Run, users: list[User], concurrency: int, presence: bool | Sequence[bool],
          label: str, first: int = 0, settle: Collection[str] = ()) -> dict[str, Any]:
    """Log `users` in, spread over the workers; time to bound and rate, server cost.
    `presence`: initial presence from every user, or from each by position; `first`: the
    run's number of `users[0]` (a connection's number picks its port and source address,
    and names the sender of a broadcast); `settle`: processes whose work for the logins
    (initial presence, probes, broadcasts) may go on after the last bind: the server cost
    runs until they are quiet (`quiet`)."""
    workers = run.fleet.plan.workers
    base, extra = divmod(len(users), workers)
    shares = [base + (1 if i < extra else 0) for i in range(workers)]
    parts = split(users, shares)
    offsets = [first + sum(shares[:i]) for i in range(workers)]
    flags = (split(list(presence), shares) if not isinstance(presence, bool)
             else [presence] * workers)
    per_worker = max(1, concurrency // workers)
    pings = _pings(run, label)
    ops_before = _ops(run, start=True)
    before = run.sampler.sample()
    replies = run.fleet.call("login", [
        {"users": [(u.jid, u.resource) for u in part], "concurrency": per_worker,
         "presence": flag, "timeout_s": run.login_timeout_s, "offset": off}
        for part, off, flag in zip(parts, offsets, flags, strict=True)
    ], label, timeout_s=run.login_timeout_s * (1 + len(users) / max(1, concurrency)) + 30)
    settled_s = quiet(run, settle, label) if settle else 0.0
    after = run.sampler.sample()
    ops = delta(ops_before, _ops(run)) if ops_before else {}
    durations = [d for r in replies for d in r["durations_ms"]]
    bound = sum(r["bound"] for r in replies)
    span_s = (max(r["last_ns"] for r in replies) - min(r["first_ns"] for r in replies)) / 1e9
    c = cost(before, after)
    return {
        "users": len(users),
        "bound": bound,
        "available": sum(presence) if not isinstance(presence, bool)
        else len(users) * presence,
        "failed": sum(r["failed"] for r in replies),
        "errors": [e for r in replies for e in r["errors"]][:5],
        "seconds": span_s,
        "logins_per_s": stats.rate(bound, span_s),
        "time_to_bound_ms": stats.summarize(durations).as_dict(),
        "server": c.as_dict(),
        "logins_per_server_cpu_s": stats.per(bound, c.total_cpu_s),
        "ops": ops,
        "pings_answered": _pings(run, label) - pings,
        "settled_s": settled_s,
    }


QUIET_SHARE: Final = 0.05  # of one core: a process counts as quiet under it
QUIET_WINDOW_S: Final = 2.0
MAX_SETTLE_S: Final = 300.0


def quiet(run: Run, names: Collection[str], label: str, max_s: float = MAX_SETTLE_S
          ) -> float:
    """Wait until each of `names` used under QUIET_SHARE of a core over QUIET_WINDOW_S (or
    `max_s` went by); the seconds waited."""
    started = time.monotonic()
    last = run.sampler.sample()
    while time.monotonic() - started < max_s:
        time.sleep(QUIET_WINDOW_S)
        now = run.sampler.sample()
        c = cost(last, now)
        run.fleet.progress(f"{label}: settling", started)
        if all(c.cpu_s.get(n, 0.0) < QUIET_SHARE * c.seconds for n in names):
            break
        last = now
    run.fleet.end_progress()
    return time.monotonic() - started


def send(run: Run, kind: str, rate: float, seconds: float, count: int, recipients: list[str],
         fanout: int, drain_s: float, label: str, available_only: bool = False,
         reach: Callable[[int], int] | None = None) -> dict[str, Any]:
    """Send `kind` ('chat' or 'presence') at `rate` in total for at most `seconds` or `count`
    stanzas, wait for deliveries (`fanout` per stanza) or `drain_s`, and measure.
    `available_only`: only connections that sent initial presence send; `reach`: for
    presence, the deliveries a broadcast of user number n makes (its online contacts),
    instead of `fanout` for every one."""
    fleet = run.fleet
    workers = fleet.plan.workers
    idle, idle_ops = _idle_cpu_per_s(run)
    pings = _pings(run, label)
    ops_before = _ops(run, start=True)
    start_ns = time.monotonic_ns() + 200_000_000
    before = run.sampler.sample()
    fleet.call("send", [
        {"kind": kind, "rate": rate / workers, "count": count // workers
         + (1 if i < count % workers else 0), "seconds": seconds, "recipients": recipients,
         "start_ns": start_ns, "available_only": available_only}
        for i in range(workers)
    ], label, timeout_s=30)
    t0 = fleet.totals()
    started = time.monotonic()
    hard_end = started + 0.2 + seconds + drain_s
    send_end = started + 0.2 + seconds
    while time.monotonic() < hard_end:
        time.sleep(0.25)
        fleet.progress(label, started)
        t = fleet.totals()
        sent, got = t["sent"] - t0["sent"], t["received"] - t0["received"]
        # with `reach`, the deliveries expected are only known at the end: wait the drain
        if reach is None and time.monotonic() > send_end and got >= sent * fanout:
            break
        if reach is None and sent >= count and got >= sent * fanout:
            break
    fleet.end_progress()
    replies = fleet.call("collect", {"wait_s": 5.0}, label, timeout_s=30)
    after = run.sampler.sample()
    ops = delta(ops_before, _ops(run)) if ops_before else {}
    arrivals, latencies = array("q"), array("q")
    stamps, senders = array("q"), array("q")
    for r in replies:
        arrivals.frombytes(r["arrivals"])
        latencies.frombytes(r["latencies"])
        stamps.frombytes(r["broadcasts"])
        senders.frombytes(r["broadcasters"])
    sent = sum(max(0, r["sent"]) for r in replies)
    delivered = len(latencies)
    expect: int | dict[int, int] = fanout
    if reach is not None:
        expect = {st: reach(n) for st, n in zip(stamps, senders, strict=True)}
    expected = sum(expect.values()) if isinstance(expect, dict) else sent * fanout
    window_s = ((max(arrivals) - start_ns) / 1e9) if delivered else seconds
    c = cost(before, after)
    lat_ms = [x / 1e6 for x in latencies]
    result: dict[str, Any] = {
        "kind": kind,
        "target_rate": rate,
        "sent": sent,
        "delivered": delivered,
        "expected": expected,
        "loss": max(0, expected - delivered),
        "loss_ratio": stats.per(max(0, expected - delivered), expected),
        "seconds": window_s,
        "delivered_per_s": stats.rate(delivered, window_s),
        "latency_ms": stats.summarize(lat_ms).as_dict(),
        "series": _series(arrivals, lat_ms, start_ns),
        "server": c.as_dict(),
        "idle_server_cpu_per_s": idle,
        "net_server_cpu_us_per_delivery": stats.per(
            max(0.0, c.total_cpu_s - idle * c.seconds) * 1e6, delivered),
        "server_cpu_us_per_delivery": stats.per(c.total_cpu_s * 1e6, delivered),
        "deliveries_per_server_cpu_s": stats.per(delivered, c.total_cpu_s),
        "live_connections": sum(r["live"] for r in replies),
        "pings_answered": sum(r["pings"] for r in replies) - pings,
        "senders": len(set(senders)) if reach is not None else None,
        "ops": ops,
        "idle_ops_per_s": idle_ops,
    }
    if kind == "presence":
        result["fanout"] = _fanout(arrivals, latencies, expect)
    return result


def hold(run: Run, seconds: float, label: str) -> dict[str, Any]:
    """Hold every connection idle for `seconds` (the server pings the idle ones, XEP-0199,
    and the clients answer); server cost, Redis/NATS operations and pings answered."""
    fleet = run.fleet
    pings_before = _pings(run, label)
    ops_before = _ops(run, start=True)
    before = run.sampler.sample()
    started = time.monotonic()
    end = started + seconds
    while time.monotonic() < end:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        fleet.progress(label, started)
    fleet.end_progress()
    after = run.sampler.sample()
    ops = delta(ops_before, _ops(run)) if ops_before else {}
    status = fleet.call("status", {}, label, timeout_s=60)
    return {
        "seconds": after.t - before.t,
        "live_connections": sum(r["live"] for r in status),
        "pings_answered": sum(r["pings"] for r in status) - pings_before,
        "server": cost(before, after).as_dict(),
        "ops": ops,
    }


def _pings(run: Run, label: str) -> int:
    """Keepalive pings the clients answered so far (XEP-0199)."""
    return sum(r["pings"] for r in run.fleet.call("status", {}, label, timeout_s=60))


def _idle_cpu_per_s(run: Run, seconds: float = 1.0) -> tuple[float, dict[str, float]]:
    """Server CPU per second with no load (heartbeats, leases, metrics), to subtract; and the
    Redis/NATS operations per second of the same window (PostgreSQL's lag a second)."""
    quick = replace(run.ops, database_url="") if run.ops is not None else None
    ops_before = quick.read() if quick is not None else {}
    before = run.sampler.sample()
    time.sleep(seconds)
    c = cost(before, run.sampler.sample())
    if c.seconds <= 0:
        return 0.0, {}
    ops = delta(ops_before, quick.read()) if quick is not None else {}
    return c.total_cpu_s / c.seconds, {k: v / c.seconds for k, v in ops.items()}


def _bucket(b: stats.Bucket) -> dict[str, float]:
    return {"t_s": b.t_s, "delivered": b.delivered, "p50": b.p50, "p95": b.p95, "p99": b.p99}


def _series(arrivals: array[int], lat_ms: list[float], start_ns: int) -> list[dict[str, float]]:
    pairs = zip(((a - start_ns) / 1e9 for a in arrivals), lat_ms, strict=True)
    return [_bucket(b) for b in stats.series(pairs, 0.0)]


def _fanout(arrivals: array[int], latencies: array[int], expected: int | dict[int, int]
            ) -> dict[str, Any]:
    """Per broadcast (grouped by its stamp): contacts reached and time until the last one;
    `expected`: the contacts each broadcast should reach, or a count per stamp."""
    reached: dict[int, int] = defaultdict(int)
    slowest: dict[int, int] = defaultdict(int)
    for a, lat in zip(arrivals, latencies, strict=True):
        stamp = a - lat
        reached[stamp] += 1
        slowest[stamp] = max(slowest[stamp], lat)
    if isinstance(expected, dict):
        complete = [slowest[s] / 1e6 for s, n in reached.items() if n >= expected.get(s, 0)]
        complete += [0.0] * sum(1 for s, n in expected.items() if n == 0 and s not in reached)
        per = stats.per(sum(expected.values()), len(expected))
    else:
        complete = [slowest[s] / 1e6 for s, n in reached.items() if n >= expected]
        per = expected
    return {
        "broadcasts_seen": len(reached),
        "complete": len(complete),
        "contacts_per_broadcast": per,
        "time_to_all_contacts_ms": stats.summarize(complete).as_dict(),
    }
