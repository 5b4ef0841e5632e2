"""`make bench`: the documented default comparison, end to end, in a few minutes.

Runs, each against a fresh stanzad cluster started on free loopback ports:

1. idle — 10,000 connections (STARTTLS + SCRAM-SHA-256 + bind + presence), held 10 s:
   connection-manager RSS per connection, the issue's memory target;
2. login — 1,000 logins, 100 in flight: login rate, time to bound p50/p99; the same on a
   domain whose users the platform's identity system authenticates (loadtest/identity.py):
   login-token (SASL OAUTHBEARER with an RS256 JWT, checked against a static key) and
   login-http (PLAIN, the password asked of an HTTP check_password endpoint): logins per
   server CPU-second of each beside the internal SCRAM store's;
3. chat — 200 users at 1,000 and 2,000 msgs/s for 10 s: latency p50/p95/p99, CPU/message;
   at 2,000 msgs/s once more with XEP-0313 archiving off on every service (archiving is on
   by default, so chat-2000 archives every message for both parties): the ratio of
   deliveries per server CPU-second, PostgreSQL counted, is archiving's price;
   at 2,000 msgs/s also with XEP-0198 stream management enabled on every client
   (chat-2000-sm), and idle once more with it (idle-sm): deliveries per server CPU-second
   with SM over without (issue 16: at least 0.9), RSS per idle connection with SM beside
   the plain figure;
4. ramp — 200 users from 1,000 msgs/s, times 1.5 per 5 s step until p99 > 50 ms: the peak;
   chat-half-peak, chat at half that peak (issue 21: p99 under 10 ms there); then the ramp
   with the router embedded in the connection manager (ramp-embedded);
5. scale-out — chat at 4,000 msgs/s on 2 connection managers + 2 routers, against chat-2000
   on 1 + 1 (the same rate per process): server CPU per message as processes are added;
6. presence — 500 users with rosters of 20 contacts, 100 broadcasts/s for 5 s: fan-out;
7. side by side, when the Debian packages `prosody` and/or `ejabberd` are installed: login
   (2,000, the servers taking turns three times; the table shows medians), chat at 2,000/s
   (``--sbs-rate``) and idle (1,000 connections), with SCRAM-SHA-1 (Prosody 0.12 has no
   SCRAM-SHA-256), stanzad first, then a private Prosody, then a private ejabberd, each on
   its own loopback port.  stanzad's chat runs on every topology of ``TOPOLOGIES``
   (``--topologies`` picks some): the cluster as users run it, 1 connection manager + 1
   router (the headline), the same with durable delivery off (issue 20's figure beside),
   2 + 2, and one node (the router embedded); login and idle on the first of them.  A
   headline section (the 1 + 1 figure against ejabberd's) and a table of the figures and of
   the ratios to ejabberd's.

Every run is on the defaults users get (durable delivery and archiving on, every defence at
its default) unless its name says otherwise, and, unless ``--no-pin``, with every server
process (stanzad's, NATS, Redis and PostgreSQL together, or ejabberd's or Prosody's one)
pinned to one CPU and the load generator to the others: the same core budget for each
(loadtest/cores.py).  ``--sbs-only`` runs the side-by-side part alone.

Writes every run's JSON, summary and plots under loadtest/out/bench-<time>/ and a
combined BENCH.md there.  `--quick` runs the same with tiny sizes (a smoke test).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from loadtest import ejabberd, prosody, report
from loadtest.runner import run
from loadtest.scenarios import Options

OUT = Path(__file__).resolve().parent / "out"


# stanzad's topologies in the side-by-side table, as (column key, label, Options changes).
# The first is the headline: what users run (`make run`, Kubernetes), at the defaults they
# get (durable delivery on); "one node" embeds the router in the connection manager.
TOPOLOGIES: dict[str, tuple[str, dict[str, Any]]] = {
    "1+1": ("stanzad (1 cm + 1 router)", {"cms": 1, "routers": 1}),
    "1+1-nondurable": ("stanzad 1 + 1, durable delivery off",
                       {"cms": 1, "routers": 1, "durable": False}),
    "2+2": ("stanzad (2 cm + 2 routers)", {"cms": 2, "routers": 2}),
    "node": ("stanzad as one node (router embedded)", {"cms": 1, "routers": 0}),
}
HEADLINE = "1+1"
SBS_RATE = 2000.0


def server_key(topology: str) -> str:
    """The "server" part of a side-by-side run's name: ``stanzad`` for the headline
    topology, ``stanzad@2+2`` for the others."""
    return "stanzad" if topology == HEADLINE else f"stanzad@{topology}"


def plan(quick: bool, topologies: tuple[str, ...] = tuple(TOPOLOGIES),
         sbs_rate: float = SBS_RATE, pin: bool = True) -> list[tuple[str, Options]]:
    s = 0.1 if quick else 1.0  # size factor
    chat = Options("chat", connections=max(4, int(200 * s)), seconds=10 * s, messages=200_000)
    ramp = Options("ramp", connections=chat.connections, ramp_start=1000, ramp_factor=1.5,
                   ramp_steps=2 if quick else 7, ramp_step_s=5 * s if not quick else 1,
                   p99_bound_ms=50)
    runs = [
        # the size for the memory target; held past STANZAD_HIBERNATE_AFTER_S (5 s)
        ("idle", Options("idle", connections=200 if quick else 10_000, hold_s=10 * s,
                         concurrency=100)),
        # the same with XEP-0198 (resumption) enabled on every connection: its memory
        ("idle-sm", Options("idle", connections=200 if quick else 10_000, hold_s=10 * s,
                            concurrency=100, sm=True)),
        ("login", Options("login", connections=max(10, int(1000 * s)), concurrency=100)),
        # the platform's identity instead of the stored keys (issue 23), same size
        ("login-token", Options("login", connections=max(10, int(1000 * s)), concurrency=100,
                                auth="token", mechanism="OAUTHBEARER")),
        ("login-http", Options("login", connections=max(10, int(1000 * s)), concurrency=100,
                               auth="http", mechanism="PLAIN")),
        ("chat-1000", replace(chat, rate=1000)),
        ("chat-2000", replace(chat, rate=2000)),
        # every client with XEP-0198, answering the server's <r/> (one per 5 stanzas):
        # deliveries per server CPU-second of this one over chat-2000 is SM's price
        ("chat-2000-sm", replace(chat, rate=2000, sm=True)),
        # the same load with archiving off on every service: deliveries per server
        # CPU-second (PostgreSQL counted) of chat-2000 over this one is archiving's price
        ("chat-2000-no-archive", replace(chat, rate=2000, archive=False)),
        ("ramp", ramp),
        # p99 at half the peak the ramp found (issue 21: under 10 ms); its rate is set from
        # the ramp's result when it runs
        ("chat-half-peak", replace(chat, rate=1000)),
        ("ramp-embedded", replace(ramp, routers=0, ramp_steps=2 if quick else 8)),
        # twice the rate on twice the processes: each process carries what the 1 + 1 run of
        # chat-2000 does, since the cost per message depends on each process's own rate
        ("scale-2cm-2router", replace(chat, rate=4000, cms=2, routers=2)),
        ("presence", Options("presence", connections=max(10, int(500 * s)),
                             contacts=4 if quick else 20, rate=100, seconds=5 * s,
                             messages=100_000)),
    ]
    runs = [(name, replace(opt, pin=pin)) for name, opt in runs]
    others = [name for name, there in (("prosody", prosody.available()),
                                       ("ejabberd", ejabberd.available())) if there]
    if others and topologies:
        sha1 = {"mechanism": "SCRAM-SHA-1"}
        # idle at 1,000 (a tenth of run 1) keeps the whole bench near 8 minutes; a quick
        # reading only: ejabberd's RSS per connection grows from ~51 KiB at 1,000 to ~65 KiB
        # at 5,000-10,000 (stanzad's and Prosody's are flat), RESULTS.md has those runs.
        # Held 8 s: past STANZAD_HIBERNATE_AFTER_S (5 s), when stanzad's idle sessions let
        # go of their parser and OpenSSL state (held 5 s, the reading was a coin toss)
        named = dict(runs)  # by name: runs[1] is idle-sm, not the login run
        idle = replace(named["idle"], connections=max(10, int(1000 * s)), hold_s=8 * s)
        login = replace(named["login"], connections=max(10, int(2000 * s)))
        # logins are short runs and this machine's neighbours come and go: the servers take
        # turns, LOGIN_ROUNDS times, and the table shows each one's median
        rounds = [("login" if k == 1 else f"login-r{k}", login)
                  for k in range(1, (1 if quick else LOGIN_ROUNDS) + 1)]
        # logins and idle memory are the connection manager's: on the first topology only
        # (the headline, unless left out); chat on every topology asked for, the same load
        for what, opt in (*rounds, ("chat", replace(chat, rate=sbs_rate)), ("idle", idle)):
            shapes = topologies if what == "chat" else topologies[:1]
            runs += [(f"sbs-{what}-{server_key(t)}",
                      replace(opt, **sha1, **TOPOLOGIES[t][1], pin=pin)) for t in shapes]
            runs += [(f"sbs-{what}-{server}", replace(opt, server=server, **sha1, pin=pin))
                     for server in others]
    return runs


LOGIN_ROUNDS = 3


SIDE_BY_SIDE = (
    ("logins per server CPU-second", "sbs-login", ("login", "logins_per_server_cpu_s")),
    ("login time to bound p99 (ms)", "sbs-login", ("login", "time_to_bound_ms", "p99")),
    ("chat deliveries per server CPU-second", "sbs-chat",
     ("chat", "deliveries_per_server_cpu_s")),
    ("chat latency p99 (ms)", "sbs-chat", ("chat", "latency_ms", "p99")),
    ("idle RSS per connection (KiB)", "sbs-idle", ("cm_rss_per_connection_bytes",)),
)


def sm_figures(docs: dict[str, dict[str, Any]]) -> list[str]:
    """XEP-0198 on every client vs on none, same run (issue 16): chat deliveries per server
    CPU-second (chat-2000-sm over chat-2000, at least 0.9 wanted) and RSS per idle
    connection (idle-sm beside idle)."""
    rate = ("chat", "deliveries_per_server_cpu_s")
    plain, with_sm = (_dig(docs.get(n, {"result": {}}), rate)
                      for n in ("chat-2000", "chat-2000-sm"))
    idle = ("cm_rss_per_connection_bytes",)
    idle_plain, idle_sm = (_dig(docs.get(n, {"result": {}}), idle) for n in ("idle", "idle-sm"))
    lines = []
    if plain and with_sm:
        lines.append(f"chat deliveries per server CPU-second: without SM {plain:,.0f}, with SM "
                     f"{with_sm:,.0f}, ratio {with_sm / plain:.2f} (issue 16 wants >= 0.90)")
    if idle_plain and idle_sm:
        lines.append(f"connection-manager RSS per idle connection: without SM "
                     f"{idle_plain / 1024:,.1f} KiB, with SM {idle_sm / 1024:,.1f} KiB")
    if not lines:
        return []
    return ["## stream management (XEP-0198) on every client vs on none", "", *lines, ""]


def auth_figures(docs: dict[str, dict[str, Any]]) -> list[str]:
    """Logins per server CPU-second with the internal SCRAM store and with each delegated
    backend (issue 23), same run."""
    rate, p99 = ("login", "logins_per_server_cpu_s"), ("login", "time_to_bound_ms", "p99")
    rows = []
    base = _dig(docs.get("login", {}), rate)
    for name, label in (("login", "internal (SCRAM-SHA-256, stored keys)"),
                        ("login-token", "token (OAUTHBEARER, RS256 JWT, static key)"),
                        ("login-http", "http (PLAIN, check_password endpoint)")):
        value = _dig(docs.get(name, {}), rate)
        if value is None:
            continue
        ratio = f"{value / base:.2f}" if base else "n/a"
        rows.append(f"| {label} | {value:,.1f} | {ratio} | "
                    f"{_num(_dig(docs.get(name, {}), p99))} |")
    if len(rows) < 2:
        return []
    return ["## logins per server CPU-second by authentication backend", "",
            "| backend | logins per server CPU-second | / internal | time to bound p99 (ms) |",
            "|---|---|---|---|", *rows, ""]


def archive_ratio(docs: dict[str, dict[str, Any]]) -> list[str]:
    """Deliveries per server CPU-second with archiving on (chat-2000) over off."""
    path = ("chat", "deliveries_per_server_cpu_s")
    on, off = (_dig(docs.get(n, {}), path) for n in ("chat-2000", "chat-2000-no-archive"))
    if not on or not off:
        return []
    return ["## archiving (XEP-0313) on vs off", "",
            f"chat deliveries per server CPU-second (PostgreSQL counted): on {on:,.0f}, "
            f"off {off:,.0f}, ratio {on / off:.2f}", ""]


def _dig(doc: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = doc.get("result")  # a scenario left out (--only) has no result
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


OTHERS = (("prosody", "Prosody"), ("ejabberd", "ejabberd"))


def side_by_side(docs: dict[str, dict[str, Any]]) -> list[str]:
    """A table of the servers' figures (stanzad in each topology that ran) and of their
    ratios to ejabberd's (the issue's reference); a row needs stanzad and one other."""
    servers = [(server_key(t), label) for t, (label, _) in TOPOLOGIES.items()
               if any(n.endswith(f"-{server_key(t)}") and n.startswith("sbs-") for n in docs)]
    servers += list(OTHERS)
    ratio_of = [key for key, _ in servers if key != "ejabberd"]
    rows = ["## side by side (SCRAM-SHA-1, same scenario, one after the other)", "",
            "stanzad's columns: the cluster as users run it (connection managers and routers "
            "as processes of their own, plus presence and roster), durable delivery on "
            "unless said; NATS, Redis and PostgreSQL are counted as server CPU. Logins and "
            "idle memory are measured on the first topology only.", "",
            "Ratios are to ejabberd's figure: above 1 is better for rates per CPU-second, "
            "below 1 is better for latency and memory.", "",
            "Logins: the servers take turns (`sbs-login-*`, `sbs-login-r2-*`, ...); the login "
            "rows are each server's median over its rounds.", "",
            "| figure | " + " | ".join(label for _, label in servers)
            + " | " + " | ".join(f"{dict(servers)[k]} / ejabberd" for k in ratio_of) + " |",
            "|---|" + "---|" * (len(servers) + len(ratio_of))]
    head = len(rows)
    for label, prefix, path in SIDE_BY_SIDE:
        found = {key: _rounds(docs, prefix, key) for key, _ in servers}
        if not any(found[k] for k, _ in servers if k.startswith("stanzad")) \
                or all(not found[k] for k, _ in OTHERS):
            continue
        values = {k: _median([_dig(d, path) for d in ds]) for k, ds in found.items()}
        if "KiB" in label:
            values = {k: None if v is None else v / 1024 for k, v in values.items()}
        ref = values["ejabberd"]
        ratios = [f"{values[k] / ref:.2f}" if values[k] is not None and ref else "n/a"
                  for k in ratio_of]
        rows.append(f"| {label} | " + " | ".join(_num(values[k]) for k, _ in servers)
                    + " | " + " | ".join(ratios) + " |")
    return [*rows, ""] if len(rows) > head else []


def headline(docs: dict[str, dict[str, Any]]) -> list[str]:
    """The figure operators size clusters by (issue 21): chat deliveries per server
    CPU-second of 1 connection manager + 1 router, durable delivery on, against ejabberd in
    the same run; beside it the same without durability (issue 20: on >= 0.8x ejabberd),
    2 + 2 (per-delivery CPU within 10 % of 1 + 1), one node, and p99 at half the peak."""
    rate = ("chat", "deliveries_per_server_cpu_s")

    def chat(key: str) -> dict[str, Any] | None:
        return docs.get(f"sbs-chat-{key}")

    ej = chat("ejabberd")
    ref = _dig(ej, rate) if ej else None
    lines = []
    for t, (label, _) in TOPOLOGIES.items():
        doc = chat(server_key(t))
        if doc is None:
            continue
        v = _dig(doc, rate)
        p50, p99 = (_dig(doc, ("chat", "latency_ms", q)) for q in ("p50", "p99"))
        nats = _dig(doc, ("chat", "server", "cpu_s", "nats"))
        delivered = _dig(doc, ("chat", "delivered"))
        line = (f"- **{label}**: {_num(v)} chat deliveries per server CPU-second"
                + (f" (**{v / ref:.2f}x** ejabberd's {ref:,.0f})" if v and ref else "")
                + f", latency p50 {_num(p50)} ms, p99 {_num(p99)} ms")
        if nats is not None and delivered:
            line += f"; NATS {nats * 1e6 / delivered:,.0f} µs of CPU per delivery"
        lines.append(line)
    first = next((d for n, d in docs.items() if n.startswith("sbs-chat-stanzad")), None)
    sbs_rate = _dig(first, ("chat", "target_rate")) if first else None
    users = (first or {}).get("options", {}).get("connections")
    one, two = (_dig(chat(server_key(t)) or {}, rate) for t in ("1+1", "2+2"))
    if one and two:
        lines.append(f"- 2 + 2 over 1 + 1, server CPU per delivery: {one / two:.2f} "
                     "(issue 21: within 10 %)")
    on, off = (_dig(chat(server_key(t)) or {}, rate) for t in ("1+1", "1+1-nondurable"))
    if on and off:
        lines.append(f"- durable delivery on over off (1 + 1): {on / off:.2f} of the "
                     "deliveries per server CPU-second")
    half = docs.get("chat-half-peak")
    if half is not None:
        lines.append(f"- 1 + 1 at half the ramp's peak ({_num(_dig(half, ('chat', 'target_rate')))}"
                     f"/s): p50 {_num(_dig(half, ('chat', 'latency_ms', 'p50')))} ms, p99 "
                     f"{_num(_dig(half, ('chat', 'latency_ms', 'p99')))} ms "
                     "(issue 21: p99 < 10 ms)")
    if not lines:
        return []
    where = (f"Chat at {_num(sbs_rate)} messages/s ({users or 'n/a'} users), SCRAM-SHA-1"
             if sbs_rate else "Chat")
    return ["## headline: the cluster, at the defaults users get (durable delivery on)", "",
            f"{where}; unless `--no-pin`, every server process pinned to one CPU and the load "
            "generator to the others (loadtest/cores.py).", "", *lines, ""]


def _rounds(docs: dict[str, dict[str, Any]], prefix: str, server: str) -> list[dict[str, Any]]:
    """The runs of one scenario on one server: ``sbs-login-stanzad``, ``sbs-login-r2-stanzad``..."""
    def is_round(name: str) -> bool:
        return (name.startswith(f"{prefix}-r") and name.endswith(f"-{server}")
                and name[len(prefix) + 2 : -len(server) - 1].isdigit())

    return [doc for name, doc in docs.items() if name == f"{prefix}-{server}" or is_round(name)]


def _median(values: list[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    return statistics.median(known) if known else None


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--only", nargs="*", help="run only these names")
    p.add_argument("--sbs-only", action="store_true",
                   help="only the side-by-side runs (and the headline made of them)")
    p.add_argument("--topologies", nargs="*", choices=tuple(TOPOLOGIES),
                   default=list(TOPOLOGIES),
                   help="stanzad's side-by-side topologies (default: all; the first one also "
                   "runs the login and idle comparisons)")
    p.add_argument("--sbs-rate", type=float, default=SBS_RATE,
                   help="chat messages per second of the side-by-side runs")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the servers to one CPU and the load to the others")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    out = args.out or OUT / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        "# stanzad benchmark (`make bench`)", "",
        "Every figure comes from a machine shared with other work: treat them as lower bounds "
        "and compare runs made one after another, not across days.", "",
    ]
    failed = []
    docs: dict[str, dict[str, Any]] = {}
    for name, opt in plan(args.quick, tuple(args.topologies), args.sbs_rate, args.pin):
        if (args.only and name not in args.only) or (args.sbs_only
                                                     and not name.startswith("sbs-")):
            continue
        if name == "chat-half-peak":  # half the peak of the ramp of this run
            peak = _dig(docs.get("ramp", {}), ("peak_delivered_per_s",))
            if not peak:
                print("chat-half-peak: skipped, no ramp peak in this run", file=sys.stderr)
                continue
            opt = replace(opt, rate=round(peak / 2))
        print(f"== {name}", file=sys.stderr)
        try:
            doc = run(opt)
        except Exception as exc:  # one failed run must not hide the others' figures
            print(f"{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(name)
            parts += [f"## {name}: failed ({type(exc).__name__}: {exc})", ""]
            continue
        report.write_all(doc, out / name)
        docs[name] = report.clean(doc)
        parts += [report.markdown(report.clean(doc)).replace("## ", f"## {name}: ", 1), ""]
    parts[4:4] = headline(docs)
    parts += sm_figures(docs)
    parts += auth_figures(docs)
    parts += side_by_side(docs)
    parts += archive_ratio(docs)
    (out / "BENCH.md").write_text("\n".join(parts))
    print("\n".join(parts))
    print(f"written under {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
