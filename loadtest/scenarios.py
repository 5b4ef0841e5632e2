"""The scenarios of issue 7 (idle, login, chat, presence and ramp) and of issue 24 (scale:
one set of connections through an idle hold, a chat phase and a presence phase).

Each takes a running fleet and its users and returns a JSON-able dict; `headline` picks the
figures that the markdown summary shows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from loadtest import stats
from loadtest.phases import Run, hold, login, send
from loadtest.procstat import Sample
from loadtest.users import User, ring_contacts

SCENARIOS = ("idle", "login", "chat", "presence", "ramp", "scale")


@dataclass(frozen=True, slots=True)
class Options:
    scenario: str
    server: str = "stanzad"
    connections: int = 100
    workers: int = 2
    sources: int = 4
    concurrency: int = 100
    rate: float = 1000.0
    seconds: float = 10.0
    messages: int = 100_000
    contacts: int = 10
    hold_s: float = 5.0
    mechanism: str = "SCRAM-SHA-256"
    iterations: int = 10_000
    cms: int = 1
    routers: int = 1
    ramp_start: float = 500.0
    ramp_factor: float = 1.5
    ramp_steps: int = 8
    ramp_step_s: float = 5.0
    p99_bound_ms: float = 50.0
    drain_s: float = 5.0
    presence: bool = True
    archive: bool = True  # stanzad only: every user's messages archived (XEP-0313) or none
    sm: bool = False  # every client enables XEP-0198 with resumption and answers <r/>
    # stanzad only: who checks the users' secrets (loadtest/identity.py): "internal" (the
    # stored SCRAM keys), "token" (OAUTHBEARER, a JWT), "http" (PLAIN, an HTTP endpoint)
    auth: str = "internal"
    durable: bool = True  # stanzad only: durable delivery on JetStream (the default) or off
    pin: bool = True  # servers on one CPU, the load on the others (runner.Cores)
    online_share: float = 1.0  # scale: share of the users that send initial presence
    presence_rate: float = 100.0  # scale: presence broadcasts/s in its presence phase


def warm_login(run: Run, users: list[User], opt: Options, presence: bool | list[bool],
               label: str, settle: Collection[str] = ()
               ) -> tuple[int, dict[str, Any], Sample, Sample]:
    """Log everyone in, a few connections first so that one-off allocations (TLS context,
    first parser, caches) are in the baseline, not in the per-connection figure: (how many
    warmed up, the main login, the samples before and 2 s after it)."""
    warm = max(1, min(50, len(users) // 20))
    flags = presence if isinstance(presence, bool) else presence[warm:]
    first = login(run, users[:warm], opt.concurrency,
                  presence if isinstance(presence, bool) else presence[:warm], f"{label} warm-up")
    time.sleep(1.0)
    base = run.sampler.sample()
    rest = users[warm:]
    main = (login(run, rest, opt.concurrency, flags, label, first=warm, settle=settle)
            if rest else first)
    time.sleep(2.0)
    return warm, main, base, run.sampler.sample()


def rss_growth(base: dict[str, int], now: dict[str, int], n: int, front: list[str]
               ) -> dict[str, Any]:
    """RSS growth of each process from `base`, and per connection of `n`."""
    grown = {k: now[k] - base.get(k, 0) for k in now}
    return {
        "rss_growth_bytes": grown,
        "cm_rss_per_connection_bytes": stats.per(sum(grown[k] for k in front), n),
        "all_rss_per_connection_bytes": stats.per(sum(grown.values()), n),
    }


def idle(run: Run, users: list[User], opt: Options, front: list[str]) -> dict[str, Any]:
    """Log everyone in and stay; RSS growth of the connection managers per connection."""
    warm, main, base, loaded = warm_login(run, users, opt, opt.presence, "idle login")
    held = hold(run, opt.hold_s, "idle hold")
    n = main["bound"] if len(users) > warm else 0
    seconds = max(held["seconds"], 1e-9)
    return {
        "connections": warm + n,
        "measured_connections": n,
        "login": main,
        **rss_growth(base.rss, loaded.rss, n, front),
        "hold": held["server"],
        "idle_cpu_s_per_connection_hour": stats.per(
            held["server"]["total_cpu_s"] * 3600 / seconds, n),
    }


def login_rate(run: Run, users: list[User], opt: Options, cms: list[str]) -> dict[str, Any]:
    return {"login": login(run, users, opt.concurrency, False, "login")}


def chat(run: Run, users: list[User], opt: Options, cms: list[str]) -> dict[str, Any]:
    logged = login(run, users, opt.concurrency, True, "chat login")
    time.sleep(1.0)
    step = send(run, "chat", opt.rate, opt.seconds, opt.messages, [u.full for u in users], 1,
                opt.drain_s, f"chat {opt.rate:g}/s")
    return {"login": logged, "chat": step}


def ramp_rates(start: float, factor: float, steps: int, ceiling: float) -> list[float]:
    """start, start*factor, … (at most `steps`, none above `ceiling`)."""
    if start <= 0 or factor <= 1:
        raise ValueError("a ramp needs a positive start and a factor above 1")
    out, r = [], start
    while len(out) < steps and r <= ceiling:
        out.append(round(r))
        r *= factor
    return out


def passed(step: dict[str, Any], bound_ms: float) -> bool:
    p99 = step["latency_ms"]["p99"]
    return (not math.isnan(p99) and p99 <= bound_ms and step["loss_ratio"] <= 0.01
            and step["delivered_per_s"] >= 0.9 * step["target_rate"])


def ramp(run: Run, users: list[User], opt: Options, cms: list[str]) -> dict[str, Any]:
    from loadtest.bounds import MAX_RATE_PER_S

    logged = login(run, users, opt.concurrency, True, "ramp login")
    time.sleep(1.0)
    steps: list[dict[str, Any]] = []
    peak = 0.0
    full = [u.full for u in users]
    for rate in ramp_rates(opt.ramp_start, opt.ramp_factor, opt.ramp_steps, MAX_RATE_PER_S):
        count = min(opt.messages, int(rate * opt.ramp_step_s) + 1)
        step = send(run, "chat", rate, opt.ramp_step_s, count, full, 1, opt.drain_s,
                    f"ramp {rate:g}/s")
        step["passed"] = passed(step, opt.p99_bound_ms)
        steps.append(step)
        if not step["passed"]:
            break
        peak = max(peak, step["delivered_per_s"])
        time.sleep(1.0)
    return {"login": logged, "steps": steps, "peak_delivered_per_s": peak,
            "p99_bound_ms": opt.p99_bound_ms}


def presence(run: Run, users: list[User], opt: Options, cms: list[str]) -> dict[str, Any]:
    """Users with rosters of `contacts` mutual contacts log in (initial presence, probes),
    then broadcast presence updates; fan-out time per broadcast."""
    logged = login(run, users, opt.concurrency, True, "presence login")
    time.sleep(2.0)
    step = send(run, "presence", opt.rate, opt.seconds, opt.messages, [], opt.contacts,
                opt.drain_s, f"presence {opt.rate:g}/s")
    return {"login": logged, "presence": step}


def online(count: int, share: float) -> list[bool]:
    """Which of `count` users are online (send initial presence): `share` of them, spread
    evenly over the ring of contacts."""
    return [int((i + 1) * share) > int(i * share) for i in range(count)]


def scale(run: Run, users: list[User], opt: Options, front: list[str]) -> dict[str, Any]:
    """Issue 24: every user logs in (TLS, SCRAM) with a roster of `contacts` mutual contacts,
    `online_share` of them with initial presence (RFC 6121 §4.2: probes to and broadcasts
    from their online contacts); then on the same connections an idle hold (`hold_s`; the
    server pings idle sessions, XEP-0199), chat between the online users (`rate`, `seconds`)
    and presence changes of online users (`presence_rate`, `seconds`), each reaching the
    sender's online contacts (RFC 6121 §4.4.2).  Per phase: server CPU and RSS, Redis and
    NATS operations; memory per idle connection at the end of the hold."""
    flags = online(len(users), opt.online_share)
    # the login phase lasts until the services are done with the initial presences (the
    # connection managers are busy with keepalives from a minute in, and never quiet)
    behind = [n for n in run.sampler.pids if not n.startswith("cm-")]
    warm, main, base, loaded = warm_login(run, users, opt, flags, "scale login", behind)
    n = len(users)
    held = hold(run, opt.hold_s, "scale idle hold")
    after_hold = held["server"]["rss_after"]
    time.sleep(1.0)
    full = [u.full for u, on in zip(users, flags, strict=True) if on]
    chat = send(run, "chat", opt.rate, opt.seconds, opt.messages, full, 1, opt.drain_s,
                f"scale chat {opt.rate:g}/s", available_only=True)
    time.sleep(1.0)
    reach = [sum(flags[j] for j in near) for near in ring_contacts(n, opt.contacts)]
    presence = send(run, "presence", opt.presence_rate, opt.seconds, opt.messages, [], 0,
                    opt.drain_s, f"scale presence {opt.presence_rate:g}/s",
                    available_only=True, reach=reach.__getitem__)
    measured = main["bound"] if n > warm else 0
    return {
        "connections": warm + measured,
        "measured_connections": measured,
        "online": sum(flags),
        "online_contacts_mean": stats.per(sum(r for r, on in zip(reach, flags, strict=True)
                                              if on), sum(flags)),
        "login": main,
        "hold": held,
        "chat": chat,
        "presence": presence,
        # the idle figure: growth from before the main login to the end of the hold (parsers
        # of idle sessions freed, STANZAD_HIBERNATE_AFTER_S)
        **rss_growth(base.rss, after_hold, measured, front),
        "rss_after_login_per_connection_bytes": rss_growth(
            base.rss, loaded.rss, measured, front)["cm_rss_per_connection_bytes"],
    }


RUNNERS = {"idle": idle, "login": login_rate, "chat": chat, "presence": presence,
           "ramp": ramp, "scale": scale}
