"""One run end to end: check bounds, start the cluster, create users, start the workers,
run the scenario, sample the servers, tear everything down."""

from __future__ import annotations

import asyncio
import json
import platform
import secrets
import sys
import time
from typing import Any

from loadtest import bounds, cores, ejabberd, identity, prosody, target
from loadtest.fleet import Fleet
from loadtest.opcount import OpCounters
from loadtest.phases import Run
from loadtest.procstat import ProcSampler
from loadtest.scenarios import RUNNERS, SCENARIOS, Options
from loadtest.users import (
    PASSWORD,
    User,
    create_accounts,
    create_rosters,
    make_users,
    ring_contacts,
)
from shared.store.pg.database import connect as db_connect
from shared.xmpp.credentials import MAX_ITERATIONS, MIN_ITERATIONS
from tests.support.cluster import Cluster

MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "OAUTHBEARER")
SERVERS = ("stanzad", "prosody", "ejabberd")
AUTHS = ("internal", "token", "http")  # loadtest/identity.py
DEFAULT_MECHANISM = {"internal": "SCRAM-SHA-256", "token": "OAUTHBEARER", "http": "PLAIN"}


def validate(opt: Options) -> bounds.Plan:
    """Every bound of a run, checked before anything starts."""
    if opt.scenario not in SCENARIOS:
        raise bounds.BoundsError(f"scenario must be one of {', '.join(SCENARIOS)}")
    if opt.server not in SERVERS:
        raise bounds.BoundsError(f"--server must be one of {', '.join(SERVERS)}")
    if opt.server == "prosody":
        if opt.mechanism == "SCRAM-SHA-256":
            raise bounds.BoundsError("--mechanism: Prosody 0.12 offers SCRAM-SHA-1 and PLAIN")
        if opt.scenario == "presence":
            raise bounds.BoundsError("scenario: presence needs rosters written into stanzad")
        if (opt.cms, opt.routers) != (1, 1):
            raise bounds.BoundsError("--cms/--routers: Prosody is one process")
    if opt.sm and opt.server != "stanzad":
        raise bounds.BoundsError("--sm: the private Prosody and ejabberd run without XEP-0198")
    if opt.server == "ejabberd" and (opt.cms, opt.routers) != (1, 1):
        raise bounds.BoundsError("--cms/--routers: the private ejabberd is one node")
    if opt.mechanism not in MECHANISMS:
        raise bounds.BoundsError(f"--mechanism must be one of {', '.join(MECHANISMS)}")
    if opt.auth not in AUTHS:
        raise bounds.BoundsError(f"--auth must be one of {', '.join(AUTHS)}")
    if opt.auth != "internal" and opt.server != "stanzad":
        raise bounds.BoundsError("--auth: token and http backends are stanzad's domains")
    if (opt.mechanism == "OAUTHBEARER") != (opt.auth == "token"):
        raise bounds.BoundsError("--mechanism OAUTHBEARER goes with --auth token, and only")
    if opt.auth == "http" and opt.mechanism != "PLAIN":
        raise bounds.BoundsError("--auth http: the password goes to the endpoint with PLAIN")
    bounds.check_range("--seconds", opt.seconds, 0.1, bounds.MAX_SECONDS)
    bounds.check_range("--hold", opt.hold_s, 0, bounds.MAX_SECONDS)
    bounds.check_range("--messages", opt.messages, 1, bounds.MAX_MESSAGES)
    bounds.check_range("--rate", opt.rate, 0.1, bounds.MAX_RATE_PER_S)
    bounds.check_range("--concurrency", opt.concurrency, 1, 10_000)
    bounds.check_range("--iterations", opt.iterations, MIN_ITERATIONS, MAX_ITERATIONS)
    bounds.check_range("--drain", opt.drain_s, 0, 60)
    bounds.check_range("--ramp-steps", opt.ramp_steps, 1, bounds.MAX_RAMP_STEPS)
    bounds.check_range("--ramp-step-seconds", opt.ramp_step_s, 0.5, 120)
    bounds.check_range("--ramp-start", opt.ramp_start, 1, bounds.MAX_RATE_PER_S)
    bounds.check_range("--ramp-factor", opt.ramp_factor, 1.05, 10)
    if opt.scenario == "ramp" and opt.ramp_steps * (opt.ramp_step_s + opt.drain_s + 1) > \
            bounds.MAX_SECONDS:
        raise bounds.BoundsError("the ramp would last longer than the time bound")
    if opt.scenario == "scale":
        if opt.server != "stanzad":
            raise bounds.BoundsError("scenario: scale needs rosters written into stanzad")
        bounds.check_range("--online-share", opt.online_share, 0.01, 1)
        bounds.check_range("--presence-rate", opt.presence_rate, 0.1, bounds.MAX_RATE_PER_S)
    if opt.scenario in ("presence", "scale"):
        bounds.check_range("--contacts", opt.contacts, 1, min(bounds.MAX_CONTACTS,
                                                              opt.connections - 1))
        if opt.contacts % 2 and opt.connections % 2:
            # the ring of contacts is only mutual for an even count of one or the other
            raise bounds.BoundsError("--contacts: an odd roster size needs an even --connections")
    if opt.scenario in ("chat", "ramp") and opt.connections < 2:
        raise bounds.BoundsError("--connections: chat needs at least 2 users")
    bounds.source_addresses(opt.sources)
    return bounds.plan(opt.connections, opt.workers)


async def _setup_users(cluster: Cluster, users: list[User], opt: Options) -> dict[str, float]:
    """Accounts through the cluster's admin API, rosters into its PostgreSQL; the seconds each
    took."""
    admin_url, token = await asyncio.to_thread(target.admin, cluster)
    started = time.perf_counter()
    await create_accounts(admin_url, token, users, opt.iterations)
    out = {"accounts_s": round(time.perf_counter() - started, 3)}
    if opt.scenario in ("presence", "scale"):
        db = await db_connect(cluster.database_url, "loadtest", size=1)
        try:
            started = time.perf_counter()
            await create_rosters(db, users, ring_contacts(len(users), opt.contacts))
            out["rosters_s"] = round(time.perf_counter() - started, 3)
        finally:
            await db.close()
    return out


def run(opt: Options, host: str = "127.0.0.1", quiet: bool = False,
        cluster: Cluster | None = None, ops: OpCounters | None = None) -> dict[str, Any]:
    """One run against stanzad: `cluster` when given (left running), else a cluster of its
    own; with `opt.server` "prosody" or "ejabberd", against a private instance of that
    server instead.  `ops`: where each phase reads the operations of the shared servers
    (default: the cluster's Redis and NATS, `target.ops`)."""
    plan = validate(opt)
    host = bounds.require_loopback("--host", host)
    pins = cores.split() if opt.pin and cluster is None else None
    try:
        if opt.server == "prosody":
            return _run_prosody(opt, plan, host, quiet, pins)
        if opt.server == "ejabberd":
            return _run_ejabberd(opt, plan, host, quiet, pins)
        return _run_stanzad(opt, plan, host, quiet, cluster, pins, ops)
    finally:
        if pins is not None:
            cores.unpinned()


def _run_stanzad(opt: Options, plan: bounds.Plan, host: str, quiet: bool,
                 cluster: Cluster | None, pins: cores.Cores | None,
                 ops: OpCounters | None = None) -> dict[str, Any]:
    topology = target.Topology(opt.cms, opt.routers, archive=opt.archive, durable=opt.durable)
    own = cluster is None
    if cluster is None:
        with cores.starting_servers(pins):
            cluster = target.start(topology)
    endpoint: identity.PasswordEndpoint | None = None
    try:
        prefix = f"lt{secrets.token_hex(3)}-"  # several runs may share one cluster
        domain, token_key = cluster.domain, ""
        if opt.auth != "internal":  # a domain of the platform's users, with its backend
            domain = f"{opt.auth}-{secrets.token_hex(3)}.{cluster.domain}"
            if opt.auth == "token":
                key = identity.signing_key()
                token_key, auth = json.dumps(key.as_dict(private=True)), identity.token_auth(key)
            else:
                endpoint = identity.PasswordEndpoint(PASSWORD)
                endpoint.start()
                auth = identity.http_auth(endpoint.url)
            admin_url, token = target.admin(cluster)
            asyncio.run(identity.add_domain(admin_url, token, domain, auth,
                                            target.c2s_ports(cluster)[0]))
        users = make_users(opt.connections, domain, prefix)
        setup = asyncio.run(_setup_users(cluster, users, opt))
        if not quiet:
            print(f"created {len(users):,} accounts through the admin API in "
                  f"{setup['accounts_s']:.2f} s", file=sys.stderr)
        seen = {
            "cms": len(target.cm_names(cluster)),
            "routers": sum(1 for n in target.server_pids(cluster) if n.startswith("router")),
        }
        doc = _drive(opt, plan, host, quiet, users, target.c2s_ports(cluster), domain,
                     target.server_pids(cluster), target.cm_names(cluster), seen, None,
                     token_key, ops or target.ops(cluster), pins)
        doc["setup"] = {**setup, "accounts_via": "admin API"}
        if endpoint is not None:
            doc["setup"]["endpoint_questions"] = endpoint.asked
        return doc
    finally:
        if endpoint is not None:
            endpoint.stop()
        if own:
            cluster.stop()


def _run_prosody(opt: Options, plan: bounds.Plan, host: str, quiet: bool,
                 pins: cores.Cores | None) -> dict[str, Any]:
    with cores.starting_servers(pins):
        server = prosody.start(iterations=opt.iterations)
    try:
        users = make_users(opt.connections, server.domain, f"lt{secrets.token_hex(3)}-")
        return _drive(opt, plan, host, quiet, users, (server.port,), server.domain,
                      {"prosody": server.proc.pid}, ["prosody"], {"processes": 1},
                      "register", pins=pins)
    finally:
        server.stop()


def _run_ejabberd(opt: Options, plan: bounds.Plan, host: str, quiet: bool,
                  pins: cores.Cores | None) -> dict[str, Any]:
    with cores.starting_servers(pins):
        server = ejabberd.start(opt.mechanism)
    try:
        users = make_users(opt.connections, server.domain, f"lt{secrets.token_hex(3)}-")
        contacts = (ring_contacts(len(users), opt.contacts) if opt.scenario == "presence"
                    else [])
        made = server.create([u.jid.partition("@")[0] for u in users], PASSWORD,
                             opt.iterations, contacts)
        if made.registered < len(users) or made.errors != "[]":
            raise RuntimeError(f"ejabberd: registered {made.registered}/{len(users)}: "
                               f"{made.errors}")
        doc = _drive(opt, plan, host, quiet, users, (server.port,), server.domain,
                     server.pids(), ["ejabberd"], {"processes": 1}, None, pins=pins)
        doc["setup"] = {"accounts_s": made.seconds, "roster_items": made.roster_items,
                        "scram_hash": server.settings.scram_hash}
    except BaseException:
        server.stop()
        print(f"ejabberd logs kept in {server.workdir}", file=sys.stderr)
        raise
    ejabberd.remove(server)
    return doc


def _drive(opt: Options, plan: bounds.Plan, host: str, quiet: bool, users: list[User],
           ports: tuple[int, ...], domain: str, pids: dict[str, int], front: list[str],
           topology: dict[str, int], register: str | None, token_key: str = "",
           ops: OpCounters | None = None, pins: cores.Cores | None = None) -> dict[str, Any]:
    """Start the workers and the sampler, create accounts in-band if asked, run."""
    sources = bounds.source_addresses(opt.sources)
    started = time.time()
    fleet = Fleet(plan, host, ports, tuple(sources), domain, PASSWORD, opt.mechanism,
                  quiet=quiet, sm=opt.sm, token_key=token_key)
    sampler = ProcSampler(pids)
    try:
        fleet.start()
        if register:
            per = [u.jid for u in users]
            shares = [per[i::plan.workers] for i in range(plan.workers)]
            replies = fleet.call("register", [
                {"users": part, "concurrency": max(1, opt.concurrency // plan.workers),
                 "timeout_s": 60.0} for part in shares], "register", timeout_s=600)
            made = sum(r["registered"] for r in replies)
            if made < len(users):
                errors = [e for r in replies for e in r["errors"]]
                raise RuntimeError(f"registered {made}/{len(users)}: {errors[:3]}")
        sampler.start()
        result = RUNNERS[opt.scenario](Run(fleet, sampler, ops=ops), users, opt, front)
    finally:
        fleet.stop()
        sampler.stop()
    t0 = sampler.samples[0].t if sampler.samples else 0.0
    return {
        "scenario": opt.scenario,
        "server": opt.server,
        "options": {k: getattr(opt, k) for k in opt.__dataclass_fields__},
        "topology": {**topology, "workers": plan.workers, "sources": sources,
                     **(pins.as_dict() if pins is not None else {"pinned": False})},
        "machine": {"cpus": _cpus(), "python": platform.python_version(),
                    "kernel": platform.release()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),  # workers' start to the end
        "result": result,
        "samples": [{"t": s.t - t0, "cpu_s": s.cpu_s, "rss": s.rss} for s in sampler.samples],
    }


def _cpus() -> int:
    return len(cores.ALL)  # the machine's share, not the load CPUs this process is pinned to
