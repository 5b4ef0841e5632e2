"""`python -m loadtest.capacity`: the pods, Redis shards, NATS nodes and PostgreSQL load a
given load needs, from the measured unit costs in `UNITS` (docs/capacity.md is the same table
with where each figure comes from; tests/loadtest/test_capacity.py checks they agree).

    python -m loadtest.capacity --connections 1000000 --messages-per-user-hour 30 \\
        --presence-changes-per-user-hour 4 --contacts 50 --online-share 0.3 \\
        --logins-per-second-peak 2000

`--predict-run result.json` instead predicts, for a finished `python -m loadtest` run (the
scale scenario's login, hold, chat and presence phases too), the CPU of each role in each
phase and the connection managers' memory, beside what the run measured (`predict_run` is
what a larger run's report calls).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ROLES = ("cm", "router", "presence", "roster", "nats", "redis", "postgres")
EVENTS = ("login", "initial_presence", "login_delivery", "message", "broadcast",
          "presence_delivery", "keepalive")


@dataclass(frozen=True, slots=True)
class Unit:
    value: float
    unit: str
    source: str  # the loadtest/RESULTS.md section and the command


_M = ("RESULTS \"capacity unit costs\": `python -m loadtest.unit_costs` "
      "(results/2026-12-07/unit-costs.json)")
_BENCH = "RESULTS \"`make bench` after the layout, the defences and PostgreSQL\", run 2"
_SCALE = ("RESULTS \"100,000 connections\": the scale run at 10,000, its idle hold (the "
          "connection managers' CPU net of their background over the pings answered)")

# Every figure the model uses, "<role>.<what>.<event>".  cpu_us: µs of one core of the 2-core
# development VM per event, net of the idle cluster; commands, msgs (NATS in + out), writes
# (PostgreSQL rows) and commits (its transactions): counts per event.  Events: a login
# (STARTTLS + SCRAM-SHA-256 + bind); its initial presence with a roster, and each presence
# stanza a login makes reach or come back (login_delivery: its broadcast to an online
# contact, a contact's answer to its probe); a chat message delivered (archived, durable
# delivery on); a presence broadcast (the sender's part) and each delivery of one to an
# online contact; a keepalive: the server's XEP-0199 ping of an idle session and its answer
# (the hibernated parser and TLS buffers woken and freed again).  A unit that is not here
# was measured as 0.
UNITS: dict[str, Unit] = {
    "cm.cpu_us.login": Unit(2015.59, "µs", _M),
    "cm.cpu_us.message": Unit(185.98, "µs", _M),
    "cm.cpu_us.broadcast": Unit(845.55, "µs", _M),
    "cm.cpu_us.presence_delivery": Unit(29.34, "µs", _M),
    "cm.cpu_us.initial_presence": Unit(85.27, "µs", _M),
    "cm.cpu_us.login_delivery": Unit(9.2, "µs", _M),
    "cm.cpu_us.keepalive": Unit(542.28, "µs", _SCALE),
    "nats.cpu_us.login": Unit(47.97, "µs", _M),
    "nats.cpu_us.message": Unit(164.82, "µs", _M),
    "nats.cpu_us.broadcast": Unit(961.08, "µs", _M),
    "nats.cpu_us.presence_delivery": Unit(9.38, "µs", _M),
    "nats.cpu_us.initial_presence": Unit(281.36, "µs", _M),
    "nats.cpu_us.login_delivery": Unit(1.02, "µs", _M),
    "nats.msgs.login": Unit(2.21, "messages in + out", _M),
    "nats.msgs.message": Unit(7.14, "messages in + out", _M),
    "nats.msgs.broadcast": Unit(10, "messages in + out", _M),
    "nats.msgs.initial_presence": Unit(6.97, "messages in + out", _M),
    "postgres.commits.login": Unit(0.19, "transactions", _M),
    "postgres.commits.message": Unit(0.01, "transactions", _M),
    "postgres.commits.broadcast": Unit(2.06, "transactions", _M),
    "postgres.commits.initial_presence": Unit(3.02, "transactions", _M),
    "postgres.cpu_us.login": Unit(50, "µs", _M),
    "postgres.cpu_us.message": Unit(23, "µs", _M),
    "postgres.cpu_us.broadcast": Unit(460, "µs", _M),
    "postgres.cpu_us.presence_delivery": Unit(2, "µs", _M),
    "postgres.cpu_us.initial_presence": Unit(558.33, "µs", _M),
    "postgres.writes.message": Unit(1.99, "rows", _M),
    "postgres.writes.initial_presence": Unit(0.13, "rows", _M),
    "presence.cpu_us.broadcast": Unit(2067.75, "µs", _M),
    "presence.cpu_us.presence_delivery": Unit(34.72, "µs", _M),
    "presence.cpu_us.initial_presence": Unit(1079.33, "µs", _M),
    "presence.cpu_us.login_delivery": Unit(16.02, "µs", _M),
    "redis.commands.login": Unit(10.13, "commands", _M),
    "redis.commands.message": Unit(0.04, "commands", _M),
    "redis.commands.broadcast": Unit(7.76, "commands", _M),
    "redis.commands.presence_delivery": Unit(1.01, "commands", _M),
    "redis.commands.initial_presence": Unit(9.84, "commands", _M),
    "redis.commands.login_delivery": Unit(0.81, "commands", _M),
    "redis.cpu_us.login": Unit(56.78, "µs", _M),
    "redis.cpu_us.broadcast": Unit(216.65, "µs", _M),
    "redis.cpu_us.presence_delivery": Unit(2.03, "µs", _M),
    "redis.cpu_us.initial_presence": Unit(54.15, "µs", _M),
    "redis.cpu_us.login_delivery": Unit(1.78, "µs", _M),
    "roster.cpu_us.login": Unit(7.97, "µs", _M),
    "router.cpu_us.login": Unit(37.97, "µs", _M),
    "router.cpu_us.message": Unit(124.81, "µs", _M),
    "router.cpu_us.broadcast": Unit(241.08, "µs", _M),
    "router.cpu_us.presence_delivery": Unit(1.38, "µs", _M),
    "router.cpu_us.initial_presence": Unit(66.36, "µs", _M),
    "router.cpu_us.login_delivery": Unit(1.02, "µs", _M),
    "nats.cpu_s.background": Unit(0.005, "CPU-s/s", _M),
    "redis.cpu_s.background": Unit(0.003, "CPU-s/s", _M),
    "router.cpu_s.background": Unit(0.005, "CPU-s/s", _M),
    "presence.cpu_s.background": Unit(0.005, "CPU-s/s", _M),
    "roster.cpu_s.background": Unit(0.005, "CPU-s/s", _M),
    "cm.cpu_s.background": Unit(0.001, "CPU-s/s", _M),
    "redis.commands.background": Unit(570.9, "commands/s", _M),
    # memory
    "cm.kib.connection": Unit(22.85, "KiB", f"{_BENCH}: idle 10,000, the connection manager"),
    "cm.kib.connection_lean": Unit(10.79, "KiB", "RESULTS \"session 5 — where the issue 7 "
                                   "targets stand\": idle 10,000, lean TLS sessions"),
    "cm.kib.connection_sm": Unit(25.1, "KiB", "RESULTS \"`make bench` figures for Stream "
                                 "Management\": idle 10,000, XEP-0198 on every client"),
    "cm.kib.connection_websocket": Unit(7.2, "KiB", "derived: cm.kib.connection - 15.79 "
                                        "(RESULTS \"lean TLS opt-in\": an idle OpenSSL "
                                        "session) + 0.14 (RESULTS \"WebSocket\": ws-own - "
                                        "tcp), TLS ended at the ingress"),
    "cm.mib.base": Unit(90.1, "MiB", f"{_M}: RSS before the first login"),
    "router.mib.base": Unit(81.4, "MiB", f"{_M}: RSS before the first login"),
    "presence.mib.base": Unit(80.9, "MiB", f"{_M}: RSS before the first login"),
    "roster.mib.base": Unit(82.9, "MiB", f"{_M}: RSS before the first login"),
    "redis.bytes.connection": Unit(635, "B", f"{_M}: used_memory growth per idle session"),
    # an idle connection's CPU: none seen at /proc's 10 ms over a 10 s hold of 1,950, so the
    # bound that resolution leaves (0.01 CPU-s x 360 / 1,950)
    "cm.cpu_s.connection_hour": Unit(0.0018, "CPU-s", f"{_M}: idle hold, an upper bound"),
}


def u(key: str) -> float:
    """The unit `key`; 0 for one that is not in the table (measured as 0)."""
    unit = UNITS.get(key)
    return unit.value if unit is not None else 0.0


@dataclass(frozen=True, slots=True)
class Load:
    connections: int
    messages_per_user_hour: float = 30
    presence_changes_per_user_hour: float = 4
    contacts: int = 50
    online_share: float = 0.3  # share of a user's contacts online (one session each)
    logins_per_second_peak: float = 0.0
    # the server pings a connection idle this long (STANZAD_KEEPALIVE_INTERVAL_S): at most
    # one ping per connection and interval; 0: no keepalives
    keepalive_interval_s: float = 60.0

    @property
    def messages_per_s(self) -> float:
        return self.connections * self.messages_per_user_hour / 3600

    @property
    def broadcasts_per_s(self) -> float:
        return self.connections * self.presence_changes_per_user_hour / 3600

    @property
    def online_contacts(self) -> float:
        return self.contacts * self.online_share


@dataclass(frozen=True, slots=True)
class Budget:
    """The named assumptions of the sizing."""

    headroom: float = 0.3  # share of every pod's CPU and memory left free
    cores_per_pod: float = 1.0  # a service process is one event loop: one core at most
    cm_memory_mib: float = 2048  # the connection manager's memory limit (k8s/base)
    cm_max_connections: int = 50_000  # per pod: descriptors, drain time (docs/operations.md)
    min_pods: int = 2  # per role, so that one pod may fail (the base runs two of each)
    speed: float = 1.0  # a production core / a core of the VM the units were measured on
    connection: str = "tls"  # an idle connection's memory: CONNECTIONS
    redis_shard_cores: float = 1.0  # Redis executes commands on one thread
    redis_shard_memory_mib: float = 8192
    redis_ops_per_shard: float = 0.0  # 0: one core at the Redis CPU per command measured
    nats_node_cores: float = 2.0
    nats_nodes_min: int = 3  # JetStream replicas 3 (k8s/base)
    stream_replicas: int = 3  # each replica stores each message: NATS CPU x replicas


def rates(load: Load) -> dict[str, float]:
    """Events per second of each kind.  Initial presence goes with every login, and makes
    twice `online_contacts` login deliveries (its broadcast, the contacts' answers to its
    probes); every broadcast makes `online_contacts` presence deliveries."""
    d = load.online_contacts
    logins = load.logins_per_second_peak
    return {
        "login": logins,
        "initial_presence": logins,
        "login_delivery": logins * 2 * d,
        "message": load.messages_per_s,
        "broadcast": load.broadcasts_per_s,
        "presence_delivery": load.broadcasts_per_s * d,
        "keepalive": (load.connections / load.keepalive_interval_s
                      if load.keepalive_interval_s > 0 else 0.0),
    }


def per_second(load: Load, what: str, role: str) -> float:
    """the sum over the events of rate x the unit `role.what.event` (0 where none is measured)."""
    r = rates(load)
    return sum(r[e] * UNITS[k].value for e in EVENTS
               if (k := f"{role}.{what}.{e}") in UNITS)


def cores(load: Load, role: str, budget: Budget) -> float:
    """Cores of the measured kind that `role` needs for `load` (the idle connections' CPU
    included for the connection managers)."""
    c = per_second(load, "cpu_us", role) / 1e6
    if role == "cm":
        c += load.connections * u("cm.cpu_s.connection_hour") / 3600
    return c / budget.speed


@dataclass(frozen=True, slots=True)
class Plan:
    load: Load
    budget: Budget
    cores: dict[str, float]
    pods: dict[str, int]
    memory_mib: dict[str, float]  # per pod
    cm_pods_by: dict[str, int]  # what each limit alone asks of the connection managers
    redis_ops_per_s: float
    redis_ops_per_shard: float
    redis_memory_mib: float
    redis_shards: int
    nats_msgs_per_s: float
    nats_nodes: int
    pg_writes_per_s: float
    pg_commits_per_s: float


# --connection: which memory unit an idle connection costs
CONNECTIONS = {
    "tls": "cm.kib.connection",  # STARTTLS, OpenSSL sessions (the default)
    "lean": "cm.kib.connection_lean",  # STANZAD_TLS_LEAN_SESSIONS=true
    "sm": "cm.kib.connection_sm",  # XEP-0198 enabled by every client
    "websocket": "cm.kib.connection_websocket",  # TLS ended at the ingress
}


def kib_per_connection(budget: Budget) -> float:
    if budget.connection not in CONNECTIONS:
        raise ValueError(f"connection: one of {', '.join(CONNECTIONS)}")
    return u(CONNECTIONS[budget.connection])


def plan(load: Load, budget: Budget | None = None) -> Plan:
    b = budget or Budget()
    if not 0 <= b.headroom < 1:
        raise ValueError("headroom is a share in [0, 1)")
    free = 1 - b.headroom
    need = {role: cores(load, role, b) for role in ROLES}
    pods: dict[str, int] = {}
    for role in ("router", "presence", "roster"):
        pods[role] = max(b.min_pods, math.ceil(need[role] / (b.cores_per_pod * free)))
    kib = kib_per_connection(b)
    room_mib = b.cm_memory_mib * free - u("cm.mib.base")
    if room_mib <= 0:
        raise ValueError("the connection manager's memory limit is below its base RSS")
    by = {
        "cpu": math.ceil(need["cm"] / (b.cores_per_pod * free)),
        "memory": math.ceil(load.connections * kib / 1024 / room_mib),
        "connections": math.ceil(load.connections / b.cm_max_connections),
    }
    pods["cm"] = max(b.min_pods, *by.values())
    memory = {"cm": u("cm.mib.base") + load.connections / pods["cm"] * kib / 1024}
    for role in ("router", "presence", "roster"):
        memory[role] = u(f"{role}.mib.base")
    ops = per_second(load, "commands", "redis")
    redis_us = per_second(load, "cpu_us", "redis")
    us_per_command = redis_us / ops if ops > 0 else _redis_us_per_command()
    per_shard = b.redis_ops_per_shard or (
        b.redis_shard_cores * free * 1e6 / us_per_command * b.speed)
    redis_mib = load.connections * u("redis.bytes.connection") / 2**20
    shards = max(1, math.ceil(ops / per_shard),
                 math.ceil(need["redis"] / (b.redis_shard_cores * free)),
                 math.ceil(redis_mib / (b.redis_shard_memory_mib * free)))
    nats_cores = need["nats"] * b.stream_replicas
    nodes = max(b.nats_nodes_min, math.ceil(nats_cores / (b.nats_node_cores * free)))
    return Plan(load, b, need, pods, memory, by, ops, per_shard, redis_mib, shards,
                per_second(load, "msgs", "nats"), nodes,
                per_second(load, "writes", "postgres"),
                per_second(load, "commits", "postgres"))


def _redis_us_per_command() -> float:
    """Redis CPU per command over every measured event that has commands."""
    cpu = sum(u(f"redis.cpu_us.{e}") for e in EVENTS)
    n = sum(u(f"redis.commands.{e}") for e in EVENTS)
    return cpu / n if n else 1.0


def render(p: Plan) -> str:
    load, b = p.load, p.budget
    r = rates(load)
    out = [
        f"Load: {load.connections:,} connections; {r['message']:,.0f} messages/s, "
        f"{r['broadcast']:,.0f} presence broadcasts/s to {load.online_contacts:g} online "
        f"contacts each ({r['presence_delivery']:,.0f} presence deliveries/s), "
        f"{r['login']:,.0f} logins/s at the peak.",
        "",
        "| role | cores needed | pods | cores per pod | memory per pod (MiB) |",
        "|---|---|---|---|---|",
    ]
    for role in ("cm", "router", "presence", "roster"):
        out.append(f"| {role} | {p.cores[role]:.2f} | {p.pods[role]} | {b.cores_per_pod:g} "
                   f"| {p.memory_mib[role]:,.0f} |")
    out += [
        "",
        f"Connection managers: {p.pods['cm']} pods (CPU asks {p.cm_pods_by['cpu']}, memory "
        f"{p.cm_pods_by['memory']}, {b.cm_max_connections:,} connections per pod "
        f"{p.cm_pods_by['connections']}); {kib_per_connection(b):.2f} KiB per connection "
        f"(connections: {b.connection}).",
        f"Redis: {p.redis_ops_per_s:,.0f} commands/s, {p.cores['redis']:.2f} cores, "
        f"{p.redis_memory_mib:,.0f} MiB of sessions: {p.redis_shards} shard(s) (primaries; "
        f"budget {p.redis_ops_per_shard:,.0f} commands/s per shard).",
        f"NATS: {p.nats_msgs_per_s:,.0f} messages/s in + out, {p.cores['nats']:.2f} cores "
        f"at one replica, x {b.stream_replicas} stream replicas: {p.nats_nodes} nodes of "
        f"{b.nats_node_cores:g} cores.",
        f"PostgreSQL: {p.pg_writes_per_s:,.0f} row writes/s in {p.pg_commits_per_s:,.0f} "
        f"transactions/s, {p.cores['postgres']:.2f} cores of backends (one primary).",
        "",
        "Assumptions: " + "; ".join(assumptions(b, load)) + ".",
    ]
    return "\n".join(out)


def assumptions(b: Budget, load: Load | None = None) -> list[str]:
    interval = load.keepalive_interval_s if load is not None else Load(0).keepalive_interval_s
    _interval = f"{interval:g} s" if interval > 0 else "none"
    return [
        f"headroom {b.headroom:.0%} of every pod's CPU and memory",
        f"{b.cores_per_pod:g} core per service pod (one event loop per process)",
        f"a production core does {b.speed:g}x the work of a core of the 2-core development "
        "VM the units were measured on",
        "the login peak comes on top of the steady load (a reconnect storm)",
        "one session per user; a message reaches one online recipient; archiving on",
        "each online contact gets each broadcast, and answers each login's probe",
        "every connection is pinged once per keepalive interval "
        f"({_interval}) (an upper bound: a busy one is not)",
        f"at least {b.min_pods} pods per role, {b.nats_nodes_min} NATS nodes",
        f"NATS CPU x {b.stream_replicas} for the stream replicas",
        "Redis commands/s per shard: one core at the Redis CPU per command of this load's "
        "mix" if not b.redis_ops_per_shard else
        f"Redis: {b.redis_ops_per_shard:,.0f} commands/s per shard",
        "roster requests, MUC, pubsub, federation and message carbons are not in the model",
    ]


# ---- a run's prediction beside its measurements ----


def role_of(process: str) -> str:
    """'cm-2' → 'cm', 'router-1' → 'router', 'nats' → 'nats'."""
    return process.rsplit("-", 1)[0] if process[-1:].isdigit() else process


def phase_events(phase: str, part: dict[str, Any], opt: dict[str, Any],
                 result: dict[str, Any] | None = None) -> dict[str, float]:
    """The events of one phase of a run, from what the run counted (`result`: the whole
    run's, for the scale scenario's online contacts)."""
    pings = {"keepalive": float(part["pings_answered"])} if part.get("pings_answered") else {}
    return {**_phase_events(phase, part, opt, result), **pings}


def _phase_events(phase: str, part: dict[str, Any], opt: dict[str, Any],
                  result: dict[str, Any] | None) -> dict[str, float]:
    if "bound" in part:  # a login phase
        n = float(part["bound"])
        if phase == "login" and opt.get("scenario") == "login":
            return {"login": n}
        if opt.get("scenario") == "scale":
            # only the online users send initial presence; each pair of online contacts
            # exchanges two presences at login (the later one's broadcast, the answer to
            # its probe): the online users x their online contacts in all
            online = float(part.get("available", n))
            near = float((result or {}).get("online_contacts_mean") or 0.0)
            return {"login": n, "initial_presence": online, "login_delivery": online * near}
        contacts = float(opt.get("contacts", 0)) if opt.get("scenario") == "presence" else 0
        # the ring logs in together: on average half of a user's contacts are online when
        # it logs in (each gets its broadcast) and half come later (it gets theirs)
        return {"login": n, "initial_presence": n, "login_delivery": n * contacts}
    if part.get("kind") == "chat":
        return {"message": float(part["delivered"])}
    if part.get("kind") == "presence":
        return {"broadcast": float(part["sent"]), "presence_delivery": float(part["delivered"])}
    return {}


def predict_cpu_s(events: dict[str, float], role: str) -> float:
    return sum(n * UNITS[k].value for e, n in events.items()
               if (k := f"{role}.cpu_us.{e}") in UNITS) / 1e6


@dataclass(frozen=True, slots=True)
class Row:
    phase: str
    role: str
    predicted: float
    measured: float
    unit: str

    @property
    def ratio(self) -> float:
        return self.predicted / self.measured if self.measured else math.nan


def phases_of(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, part in result.items():
        if isinstance(part, dict) and "server" in part:
            out.append((name, part))
    for i, step in enumerate(result.get("steps", [])):
        out.append((f"step-{i + 1}", step))
    return out


def predict_run(doc: dict[str, Any], background: bool = True) -> list[Row]:
    """Per phase and role: predicted CPU-seconds (the phase's events x the units, plus with
    `background` each process's own CPU for the phase's seconds) beside those the run
    measured; for an idle run also its hold and the connection managers' RSS growth."""
    opt = doc.get("options", {})
    r = doc["result"]
    parts = [(name, part, part["server"]) for name, part in phases_of(r)]
    if "hold" in r and "server" not in r["hold"]:  # the idle scenario's hold: a cost
        parts.append(("hold", {}, r["hold"]))
    rows: list[Row] = []
    for name, part, server in parts:
        events = phase_events(name, part, opt, r)
        measured: dict[str, float] = {}
        count: dict[str, int] = {}
        for proc, cpu in server["cpu_s"].items():
            role = role_of(proc)
            measured[role] = measured.get(role, 0.0) + cpu
            count[role] = count.get(role, 0) + 1
        seconds = float(server["seconds"])
        for role in ROLES:
            if role not in measured:
                continue
            predicted = predict_cpu_s(events, role)
            if background and f"{role}.cpu_s.background" in UNITS:
                predicted += u(f"{role}.cpu_s.background") * count[role] * seconds
            if name == "hold" and role == "cm":
                predicted += (r["measured_connections"] * u("cm.cpu_s.connection_hour")
                              * seconds / 3600)
            rows.append(Row(name, role, predicted, measured[role], "CPU-s"))
    if "rss_growth_bytes" in r:
        n = r["measured_connections"]
        grown = sum(v for k, v in r["rss_growth_bytes"].items() if role_of(k) == "cm")
        kib = u("cm.kib.connection_sm") if opt.get("sm") else u("cm.kib.connection")
        rows.append(Row("idle", "cm", n * kib / 1024, grown / 2**20, "MiB RSS growth"))
        used = (r.get("login") or {}).get("ops", {}).get("redis.used_memory")
        if used is not None and opt.get("scenario") == "scale":
            rows.append(Row("idle", "redis", n * u("redis.bytes.connection") / 2**20,
                            used / 2**20, "MiB used_memory growth"))
    return rows


def render_rows(rows: list[Row]) -> str:
    out = ["| phase | role | predicted | measured | predicted / measured |",
           "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.phase} | {r.role} | {r.predicted:.3f} {r.unit} | "
                   f"{r.measured:.3f} {r.unit} | {r.ratio:.2f} |")
    return "\n".join(out)


# ---- command line ----


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.capacity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predict-run", type=Path, default=None, metavar="RESULT_JSON",
                   help="a `python -m loadtest` run's result.json: prediction vs measured")
    p.add_argument("--connections", type=int, default=None)
    p.add_argument("--messages-per-user-hour", type=float, default=30)
    p.add_argument("--presence-changes-per-user-hour", type=float, default=4)
    p.add_argument("--contacts", type=int, default=50)
    p.add_argument("--online-share", type=float, default=0.3)
    p.add_argument("--logins-per-second-peak", type=float, default=None,
                   help="default: every connection logs in again within 10 minutes")
    p.add_argument("--keepalive-interval-s", type=float, default=60,
                   help="the server's XEP-0199 ping interval (STANZAD_KEEPALIVE_INTERVAL_S); "
                   "0: none")
    p.add_argument("--units", action="store_true", help="print the unit table (markdown)")
    for f in fields(Budget):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default),
                       default=f.default, help=f"default {f.default}",
                       **({"choices": list(CONNECTIONS)} if f.name == "connection" else {}))
    return p


def units_markdown() -> str:
    """docs/capacity.md's unit table."""
    out = ["| unit | value | of | from |", "|---|---|---|---|"]
    for key, unit in UNITS.items():
        out.append(f"| `{key}` | {unit.value:g} | {unit.unit} | {unit.source} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    if ns.units:
        print(units_markdown())
        return 0
    if ns.predict_run is not None:
        doc = json.loads(ns.predict_run.read_text())
        print(render_rows(predict_run(doc)))
        return 0
    if ns.connections is None or ns.connections < 1:
        print("--connections (≥ 1) or --predict-run is needed", file=sys.stderr)
        return 2
    peak = ns.logins_per_second_peak
    if peak is None:
        peak = ns.connections / 600
    load = Load(ns.connections, ns.messages_per_user_hour, ns.presence_changes_per_user_hour,
                ns.contacts, ns.online_share, peak, ns.keepalive_interval_s)
    budget = Budget(**{f.name: getattr(ns, f.name) for f in fields(Budget)})
    try:
        print(render(plan(load, budget)))
    except ValueError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
