"""`python -m loadtest.unit_costs`: the unit costs the capacity model (loadtest/capacity.py)
is built from, measured on one cluster of the tool's own: per login, per initial presence,
per chat message, per presence broadcast (at two roster sizes, for a cost per contact) and
per idle connection — CPU of every process, Redis commands, NATS messages, PostgreSQL
transactions and row writes, memory per connection.  Every figure is net of what the cluster
does with no load (leases, heartbeats), measured for `--background` seconds first.

Bounded like every run of the tool (loadtest/bounds.py); each step is a `loadtest.runner`
run on the shared cluster, so its per-phase figures are the ones a `python -m loadtest` run
of the same shape records.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from loadtest import bounds, target
from loadtest.opcount import OpCounters, delta, pg_writes
from loadtest.procstat import ProcSampler, cost
from loadtest.runner import run
from loadtest.scenarios import Options

OUT = Path(__file__).resolve().parent / "out"
SHARED = ("nats", "redis", "postgres")


def background(cluster: Any, ops: OpCounters, seconds: float) -> dict[str, Any]:
    """CPU per process and operations per second with nothing connected."""
    sampler = ProcSampler(target.server_pids(cluster))
    before_ops = ops.read(start=True)
    before = sampler.sample()
    time.sleep(seconds)
    after = sampler.sample()
    d = delta(before_ops, ops.read())
    c = cost(before, after)
    return {"seconds": c.seconds,
            "cpu_per_s": {k: v / c.seconds for k, v in c.cpu_s.items()},
            "ops_per_s": {k: v / c.seconds for k, v in d.items() if not k.startswith("pg.")},
            "pg": d}


def net(phase: dict[str, Any], bg: dict[str, Any], events: float) -> dict[str, Any]:
    """A phase's cost per event, net of the background: CPU µs per process, operations."""
    seconds = phase["server"]["seconds"]
    cpu = {k: max(0.0, v - bg["cpu_per_s"].get(k, 0.0) * seconds) * 1e6 / events
           for k, v in phase["server"]["cpu_s"].items()}
    ops = {k: (v - bg["ops_per_s"].get(k, 0.0) * seconds) / events
           for k, v in phase.get("ops", {}).items()
           if k in ("redis.commands", "redis.usec", "nats.in_msgs", "nats.out_msgs")
           or k.startswith("pg.")}
    ops["pg.writes"] = pg_writes(phase.get("ops", {})) / events
    return {"events": events, "cpu_us": cpu, "ops": ops}


def measure(args: argparse.Namespace, quiet: bool) -> dict[str, Any]:
    cluster = target.start(target.Topology(cms=1, routers=1))
    try:
        ops = OpCounters(cluster.redis_url, cluster.nats_http_port, cluster.database_url)
        bg = background(cluster, ops, args.background)
        out: dict[str, Any] = {"background": bg, "runs": {}}

        def go(name: str, **opt: Any) -> dict[str, Any]:
            o = Options(**{"iterations": 10_000, "drain_s": 5.0, **opt})
            if not quiet:
                print(f"--- {name}: {o}", file=sys.stderr)
            doc = run(o, quiet=quiet, cluster=cluster, ops=ops)
            out["runs"][name] = doc["result"]
            return doc["result"]

        login = go("login", scenario="login", connections=args.logins, concurrency=100)
        out["login"] = net(login["login"], bg, login["login"]["bound"])
        chat = go("chat", scenario="chat", connections=args.chat_users, rate=args.chat_rate,
                  seconds=args.seconds, messages=int(args.chat_rate * args.seconds))
        out["login_with_presence"] = net(chat["login"], bg, chat["login"]["bound"])
        out["message"] = net(chat["chat"], bg, chat["chat"]["delivered"])
        for contacts in args.contacts:
            p = go(f"presence-{contacts}", scenario="presence", connections=args.presence_users,
                   contacts=contacts, rate=args.presence_rate, seconds=args.seconds,
                   messages=int(args.presence_rate * args.seconds))
            out[f"login_roster_{contacts}"] = net(p["login"], bg, p["login"]["bound"])
            out[f"broadcast_{contacts}"] = net(p["presence"], bg, p["presence"]["sent"])
        idle = go("idle", scenario="idle", connections=args.idle, concurrency=100, hold_s=10)
        n = idle["measured_connections"]
        hold = idle["hold"]
        grown = idle["rss_growth_bytes"]
        out["idle"] = {
            "connections": n,
            "rss_kib_per_connection": {k: v / 1024 / n for k, v in grown.items()},
            "redis_used_memory_per_connection":
                idle["login"]["ops"].get("redis.used_memory", 0) / n,
            "cpu_s_per_connection_hour": {
                k: max(0.0, v - bg["cpu_per_s"].get(k, 0.0) * hold["seconds"]) * 3600
                / hold["seconds"] / n for k, v in hold["cpu_s"].items()},
            "rss_mib_at_end": {k: v / 2**20 for k, v in hold["rss_after"].items()},
        }
        return out
    finally:
        cluster.stop()


def role_of(process: str) -> str:
    return process.rsplit("-", 1)[0] if process[-1:].isdigit() else process


def _fig(v: dict[str, Any], what: str) -> dict[str, float]:
    """One event's figures by model key suffix: '<role>.cpu_us', 'redis.commands',
    'nats.msgs', 'postgres.writes', 'postgres.commits'."""
    out = {f"{role_of(p)}.cpu_us": c for p, c in v["cpu_us"].items()}
    o = v["ops"]
    out["redis.commands"] = o.get("redis.commands", 0.0)
    out["nats.msgs"] = o.get("nats.in_msgs", 0.0) + o.get("nats.out_msgs", 0.0)
    out["postgres.writes"] = o.get("pg.writes", 0.0)
    out["postgres.commits"] = o.get("pg.xact_commit", 0.0)
    return out


def derive(out: dict[str, Any], contacts: tuple[int, int]) -> dict[str, float]:
    """The capacity model's units (loadtest/capacity.py `UNITS` keys) from a measurement:
    a login; a chat message; a presence broadcast = a fixed part + a part per contact
    reached (the line through the two roster sizes); a login's presence with a roster = a
    fixed part + a part per contact delivery (the ring's logins make one per contact),
    net of the bare login.  Negative parts (noise) are 0."""
    lo, hi = contacts
    login = _fig(out["login"], "")
    msg = _fig(out["message"], "")
    b_lo, b_hi = _fig(out[f"broadcast_{lo}"], ""), _fig(out[f"broadcast_{hi}"], "")
    l_lo, l_hi = _fig(out[f"login_roster_{lo}"], ""), _fig(out[f"login_roster_{hi}"], "")
    units: dict[str, float] = {}
    for key in sorted(set(login) | set(msg) | set(b_lo) | set(l_lo)):
        role, what = key.split(".")
        slope = (b_hi.get(key, 0.0) - b_lo.get(key, 0.0)) / (hi - lo)
        lslope = (l_hi.get(key, 0.0) - l_lo.get(key, 0.0)) / (hi - lo)
        fixed = b_lo.get(key, 0.0) - lo * slope
        lfixed = l_lo.get(key, 0.0) - login.get(key, 0.0) - lo * lslope
        for event, value in (("login", login.get(key, 0.0)), ("message", msg.get(key, 0.0)),
                             ("broadcast", fixed), ("presence_delivery", slope),
                             ("initial_presence", lfixed), ("login_delivery", lslope)):
            units[f"{role}.{what}.{event}"] = round(max(0.0, value), 2)
    for proc, per_s in out["background"]["cpu_per_s"].items():
        units[f"{role_of(proc)}.cpu_s.background"] = round(per_s, 4)
    units["redis.commands.background"] = round(
        out["background"]["ops_per_s"].get("redis.commands", 0.0), 1)
    return units


def table(out: dict[str, Any]) -> str:
    """The per-event figures as a markdown table."""
    procs = sorted({p for k, v in out.items() if isinstance(v, dict) and "cpu_us" in v
                    for p in v["cpu_us"]})
    head = ["event", "count", *[f"{p} µs" for p in procs], "Redis cmds", "Redis µs",
            "NATS in", "NATS out", "PG commits", "PG rows"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, v in out.items():
        if not (isinstance(v, dict) and "cpu_us" in v):
            continue
        o = v["ops"]
        cells = [name, f"{v['events']:,.0f}", *[f"{v['cpu_us'].get(p, 0):.1f}" for p in procs],
                 *[f"{o.get(k, 0):.2f}" for k in ("redis.commands", "redis.usec",
                                                  "nats.in_msgs", "nats.out_msgs",
                                                  "pg.xact_commit", "pg.writes")]]
        lines.append("| " + " | ".join(cells) + " |")
    idle = out.get("idle")
    if idle:
        lines.append("")
        lines.append(f"idle, {idle['connections']:,} connections: KiB of RSS per connection "
                     + ", ".join(f"{k} {v:.2f}" for k, v in idle["rss_kib_per_connection"].items())
                     + f"; Redis used_memory {idle['redis_used_memory_per_connection']:.0f} B "
                     "per connection; CPU-s per connection-hour "
                     + ", ".join(f"{k} {v:.4f}" for k, v in
                                 idle["cpu_s_per_connection_hour"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.unit_costs", description=__doc__)
    p.add_argument("--logins", type=int, default=1000)
    p.add_argument("--chat-users", type=int, default=200)
    p.add_argument("--chat-rate", type=float, default=1000)
    p.add_argument("--presence-users", type=int, default=400)
    p.add_argument("--presence-rate", type=float, default=50)
    p.add_argument("--contacts", type=int, nargs=2, default=[10, 40])
    p.add_argument("--idle", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--background", type=float, default=10)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quiet", action="store_true")
    ns = p.parse_args(argv)
    try:
        for flag, value in (("--logins", ns.logins), ("--chat-users", ns.chat_users),
                            ("--presence-users", ns.presence_users), ("--idle", ns.idle)):
            bounds.check_range(flag, value, 2, bounds.MAX_CONNECTIONS)
        bounds.check_range("--background", ns.background, 1, 120)
        out = measure(ns, ns.quiet)
    except bounds.BoundsError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    path = ns.out or OUT / f"unit-costs-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    print(table(out))
    print()
    for key, value in derive(out, (ns.contacts[0], ns.contacts[-1])).items():
        print(f"{key} = {value:g}")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
