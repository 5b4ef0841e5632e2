"""The scenarios of issue 7: idle, login, chat, presence and ramp.

Each takes a running fleet and its users and returns a JSON-able dict; `headline` picks the
figures that the markdown summary shows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from loadtest import stats
from loadtest.phases import Run, login, send
from loadtest.procstat import cost
from loadtest.users import User

SCENARIOS = ("idle", "login", "chat", "presence", "ramp")


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


def idle(run: Run, users: list[User], opt: Options, front: list[str]) -> dict[str, Any]:
    """Log everyone in and stay; RSS growth of the connection managers per connection.

    A few connections log in first so that one-off allocations (TLS context, first parser,
    caches) are in the baseline, not in the per-connection figure."""
    warm = max(1, min(50, len(users) // 20))
    first = login(run, users[:warm], opt.concurrency, opt.presence, "idle warm-up")
    time.sleep(1.0)
    base = run.sampler.sample()
    rest = users[warm:]
    main = login(run, rest, opt.concurrency, opt.presence, "idle login") if rest else first
    time.sleep(2.0)
    loaded = run.sampler.sample()
    end = time.monotonic() + opt.hold_s
    while time.monotonic() < end:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        run.fleet.progress("idle hold", end - opt.hold_s)
    run.fleet.end_progress()
    held = run.sampler.sample()
    n = main["bound"] if rest else 0
    grown = {k: loaded.rss[k] - base.rss[k] for k in loaded.rss}
    cm_growth = sum(grown[k] for k in front)
    hold = cost(loaded, held)
    return {
        "connections": warm + n,
        "measured_connections": n,
        "login": main,
        "rss_growth_bytes": grown,
        "cm_rss_per_connection_bytes": stats.per(cm_growth, n),
        "all_rss_per_connection_bytes": stats.per(sum(grown.values()), n),
        "hold": hold.as_dict(),
        "idle_cpu_s_per_connection_hour": stats.per(hold.total_cpu_s * 3600 / max(hold.seconds,
                                                                                  1e-9), n),
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


RUNNERS = {"idle": idle, "login": login_rate, "chat": chat, "presence": presence,
           "ramp": ramp}
