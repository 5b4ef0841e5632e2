"""Outputs of a run: the JSON result, a markdown summary and PNG plots (matplotlib is
optional: without it the plots are skipped with a message)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def clean(value: Any) -> Any:
    """NaN and infinities become null: JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(clean(doc), indent=1, sort_keys=False) + "\n")


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value:,.{digits}f}{unit}"


def _login_rows(login: dict[str, Any]) -> list[tuple[str, str]]:
    t = login["time_to_bound_ms"]
    return [
        ("logins bound / failed", f"{login['bound']:,} / {login['failed']:,}"),
        ("login rate", _fmt(login["logins_per_s"], "/s")),
        ("time to bound p50 / p99", f"{_fmt(t['p50'], ' ms')} / {_fmt(t['p99'], ' ms')}"),
        ("logins per server CPU-second", _fmt(login["logins_per_server_cpu_s"])),
    ]


def _send_rows(step: dict[str, Any]) -> list[tuple[str, str]]:
    lat = step["latency_ms"]
    return [
        ("target rate", _fmt(step["target_rate"], "/s", 0)),
        ("sent / delivered / not delivered within the drain",
         f"{step['sent']:,} / {step['delivered']:,} / {step['loss']:,}"),
        ("delivered per second", _fmt(step["delivered_per_s"], "/s", 0)),
        ("latency p50 / p95 / p99", f"{_fmt(lat['p50'])} / {_fmt(lat['p95'])} / "
                                    f"{_fmt(lat['p99'])} ms"),
        ("server CPU per delivery (net of idle)",
         f"{_fmt(step['server_cpu_us_per_delivery'], ' µs')} "
         f"({_fmt(step['net_server_cpu_us_per_delivery'], ' µs')})"),
        ("deliveries per server CPU-second", _fmt(step["deliveries_per_server_cpu_s"], "", 0)),
    ]


def headline(doc: dict[str, Any]) -> list[tuple[str, str]]:
    r = doc["result"]
    scenario = doc["scenario"]
    rows: list[tuple[str, str]] = []
    if scenario == "idle":
        rows += [
            ("connections (measured)", f"{r['connections']:,} ({r['measured_connections']:,})"),
            ("RSS per connection, connection manager(s) or the one-process server", _fmt(
                _div(r["cm_rss_per_connection_bytes"], 1024), " KiB", 2)),
            ("all server processes' RSS per connection", _fmt(
                _div(r["all_rss_per_connection_bytes"], 1024), " KiB", 2)),
        ]
        rows += _login_rows(r["login"])
    elif scenario == "login":
        rows += _login_rows(r["login"])
    elif scenario == "chat":
        rows += _send_rows(r["chat"])
    elif scenario == "presence":
        f = r["presence"]["fanout"]
        rows += _login_rows(r["login"])
        rows += [
            ("contacts per roster", _fmt(f["contacts_per_broadcast"])),
            ("broadcasts reaching every contact", f"{f['complete']:,} / "
                                                   f"{r['presence']['sent']:,}"),
            ("time to all contacts p50 / p99",
             f"{_fmt(f['time_to_all_contacts_ms']['p50'])} / "
             f"{_fmt(f['time_to_all_contacts_ms']['p99'])} ms"),
        ]
        rows += _send_rows(r["presence"])
    elif scenario == "scale":
        rows += [
            ("connections (measured after the warm-up) / online",
             f"{r['connections']:,} ({r['measured_connections']:,}) / {r['online']:,}"),
            ("contacts per roster / online contacts per online user (mean)",
             f"{doc['options']['contacts']} / {_fmt(r['online_contacts_mean'])}"),
            ("memory per idle connection, connection managers (after login)", _fmt(
                _div(r["cm_rss_per_connection_bytes"], 1024), " KiB", 2) + " (" + _fmt(
                _div(r["rss_after_login_per_connection_bytes"], 1024), " KiB", 2) + ")"),
            ("memory per idle connection, all server processes", _fmt(
                _div(r["all_rss_per_connection_bytes"], 1024), " KiB", 2)),
            ("Redis used_memory per connection (login)", _fmt(_div(
                r["login"]["ops"].get("redis.used_memory"), r["measured_connections"]),
                " B", 0)),
            ("keepalive pings answered in the hold", _fmt(r["hold"]["pings_answered"])),
        ]
        rows += _login_rows(r["login"])
        f = r["presence"]["fanout"]
        rows += [("presence broadcasts reaching every online contact", f"{f['complete']:,} / "
                  f"{r['presence']['sent']:,}")]
    elif scenario == "ramp":
        rows.append(("peak delivered rate with p99 ≤ "
                     f"{r['p99_bound_ms']:g} ms", _fmt(r["peak_delivered_per_s"], "/s", 0)))
        for s in r["steps"]:
            lat = s["latency_ms"]
            rows.append((f"step {s['target_rate']:g}/s",
                         f"{_fmt(s['delivered_per_s'], '/s', 0)}, p99 {_fmt(lat['p99'])} ms, "
                         f"{_fmt(s['server_cpu_us_per_delivery'])} µs CPU/msg, "
                         f"loss {s['loss']:,}{'' if s['passed'] else ' (over the bound)'}"))
    return rows


def _div(value: float | None, by: float) -> float | None:
    return None if value is None or not math.isfinite(value) else value / by


def markdown(doc: dict[str, Any]) -> str:
    opts = doc["options"]
    topo = doc["topology"]
    routers = (f"{topo['routers']} router(s)" if topo.get("routers")
               else "a router embedded in each")
    shape = (f"{topo['cms']} connection manager(s), {routers}"
             if "cms" in topo else "one server process")
    lines = [
        f"## {doc['scenario']} — {doc['server']} ({doc['started']})",
        "",
        f"{shape}; "
        f"{opts['connections']:,} connections from {topo['workers']} worker process(es) over "
        f"{len(topo['sources'])} source addresses; {opts['mechanism']}"
        f"{'; XEP-0198 on every client' if opts.get('sm') else ''}; "
        f"machine: {doc['machine']['cpus']} CPUs (shared and noisy: figures are lower bounds).",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in headline(doc)]
    setup = doc.get("setup") or {}
    if "accounts_s" in setup:
        via = f" through the {setup['accounts_via']}" if "accounts_via" in setup else ""
        lines += ["", f"Accounts created{via} in {setup['accounts_s']:.2f} s (before the run)."]
    if doc["scenario"] == "scale":
        from loadtest import capacity

        lines += ["", *phase_tables(doc), "", "The capacity model's prediction "
                  "(`python -m loadtest.capacity --predict-run`; CPU net of nothing, each "
                  "process's idle CPU predicted too):", "",
                  capacity.render_rows(capacity.predict_run(doc))]
    last = doc["samples"][-1] if doc["samples"] else None
    if last:
        rss = ", ".join(f"{k} {v / MiB:.0f}" for k, v in last["rss"].items())
        lines += ["", f"Server RSS at the end (MiB): {rss}."]
    return "\n".join(lines) + "\n"


SCALE_PHASES = ("login", "hold", "chat", "presence")


def phase_tables(doc: dict[str, Any]) -> list[str]:
    """The scale scenario's phases side by side: what each did, its latency, Redis and NATS
    operations; then each server process's CPU and RSS per phase."""
    r = doc["result"]
    n = max(1, r["connections"])
    lines = ["| phase | seconds | what | rate | latency p50 / p95 / p99 (ms) | server CPU-s "
             "| Redis commands/s (per 1,000 connections) | NATS messages/s in + out |",
             "|---|---|---|---|---|---|---|---|"]
    for name in SCALE_PHASES:
        part = r[name]
        server, ops = part["server"], part.get("ops") or {}
        secs = max(float(server["seconds"]), 1e-9)
        if name == "login":
            what = (f"{part['bound']:,} logins ({part['available']:,} with initial "
                    f"presence), the services quiet {part.get('settled_s', 0):.0f} s after "
                    "the last")
            rate, lat = _fmt(part["logins_per_s"], "/s"), part["time_to_bound_ms"]
        elif name == "hold":
            what = (f"{part['live_connections']:,} held, {part['pings_answered']:,} "
                    "pings answered")
            rate, lat = _fmt(part["pings_answered"] / secs, " pings/s"), None
        else:
            what = f"{part['sent']:,} sent, {part['delivered']:,} of {part['expected']:,} " \
                   "delivered"
            rate, lat = _fmt(part["delivered_per_s"], "/s", 0), part["latency_ms"]
        latency = (f"{_fmt(lat['p50'])} / {_fmt(lat.get('p95'))} / {_fmt(lat['p99'])}"
                   if lat else "—")
        redis_s = ops.get("redis.commands", math.nan) / secs
        nats_s = (ops.get("nats.in_msgs", math.nan) + ops.get("nats.out_msgs", math.nan)) / secs
        lines.append(f"| {name} | {secs:,.1f} | {what} | {rate} | {latency} | "
                     f"{_fmt(server['total_cpu_s'], '', 1)} | {_fmt(redis_s, '', 0)} "
                     f"({_fmt(redis_s * 1000 / n, '', 1)}) | {_fmt(nats_s, '', 0)} |")
    procs = list(r["login"]["server"]["cpu_s"])
    lines += ["", "CPU-seconds (share of one core) and RSS at the end (MiB) of each phase:", "",
              "| process | " + " | ".join(SCALE_PHASES) + " |",
              "|---|" + "---|" * len(SCALE_PHASES)]
    for proc in procs:
        cells = []
        for name in SCALE_PHASES:
            server = r[name]["server"]
            cpu = server["cpu_s"].get(proc, math.nan)
            cells.append(f"{cpu:,.1f} ({cpu / max(server['seconds'], 1e-9):.0%}), "
                         f"{server['rss_after'].get(proc, 0) / MiB:,.0f} MiB")
        lines.append(f"| {proc} | " + " | ".join(cells) + " |")
    return lines


def plots(doc: dict[str, Any], out: Path) -> list[Path]:
    """Latency percentiles over time, throughput and server RSS; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: plots skipped (pip install -e '.[bench]')")
        return []
    written = []
    series = _series(doc)
    if series:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        t = [b["t_s"] for b in series]
        for q in ("p50", "p95", "p99"):
            ax1.plot(t, [b[q] if b[q] is not None else math.nan for b in series], label=q)
        ax1.set_ylabel("latency (ms)")
        ax1.set_yscale("log")
        ax1.legend()
        ax2.plot(t, [b["delivered"] for b in series])
        ax2.set_ylabel("delivered per second")
        ax2.set_xlabel("seconds")
        fig.suptitle(f"{doc['scenario']}: latency and throughput")
        path = out / "latency_throughput.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    if doc["samples"]:
        samples = doc["samples"]
        written.append(_lines(
            plt, out / "rss.png", [s["t"] for s in samples],
            {name: [s["rss"].get(name, 0) / MiB for s in samples]
             for name in samples[0]["rss"]},
            "RSS (MiB)", f"{doc['scenario']}: server RSS"))
    if len(doc["samples"]) > 1:
        pairs = list(zip(doc["samples"], doc["samples"][1:], strict=False))
        written.append(_lines(
            plt, out / "cpu.png", [b["t"] for _, b in pairs],
            {name: [(b["cpu_s"].get(name, 0) - a["cpu_s"].get(name, 0))
                    / max(b["t"] - a["t"], 1e-9) for a, b in pairs]
             for name in doc["samples"][0]["cpu_s"]},
            "CPU (cores)", f"{doc['scenario']}: server CPU"))
    return written


def _lines(plt: Any, path: Path, t: list[float], series: dict[str, list[float]],
           ylabel: str, title: str) -> Path:
    """One line per process against time, written to ``path``."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, values in series.items():
        ax.plot(t, values, label=name)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("seconds")
    ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _series(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The send phases' per-second buckets, one phase after the other."""
    r = doc["result"]
    steps = r.get("steps") or [r[k] for k in ("chat", "presence") if k in r]
    out: list[dict[str, Any]] = []
    offset = 0.0
    for s in steps:
        out += [{**b, "t_s": b["t_s"] + offset} for b in s["series"]]
        offset = out[-1]["t_s"] if out else offset
    return out


def write_all(doc: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_json(doc, out / "result.json")
    (out / "summary.md").write_text(markdown(clean(doc)))
    return [out / "result.json", out / "summary.md", *plots(clean(doc), out)]
