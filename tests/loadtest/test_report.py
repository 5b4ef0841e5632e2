"""Outputs: JSON without NaN, a markdown table of each scenario's headline figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from loadtest import report


def _login() -> dict[str, Any]:
    return {"bound": 5, "failed": 0, "logins_per_s": 10.0, "logins_per_server_cpu_s": 20.0,
            "time_to_bound_ms": {"p50": 1.0, "p99": 2.0}}


def _doc(scenario: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "scenario": scenario, "server": "stanzad", "started": "2026-01-01T00:00:00",
        "options": {"connections": 5, "mechanism": "SCRAM-SHA-256"},
        "topology": {"cms": 1, "routers": 1, "workers": 1, "sources": ["127.0.0.2"]},
        "machine": {"cpus": 2},
        "result": result,
        "samples": [{"t": 0.0, "cpu_s": {"cm-1": 1.0}, "rss": {"cm-1": 2 * 2**20}},
                    {"t": 1.0, "cpu_s": {"cm-1": 1.5}, "rss": {"cm-1": 3 * 2**20}}],
    }


def test_json_has_no_nan(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    report.write_json({"a": math.nan, "b": [1.0, math.inf], "c": {"d": 2}}, path)
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None], "c": {"d": 2}}


def test_markdown_for_idle_and_login() -> None:
    idle = _doc("idle", {"connections": 5, "measured_connections": 4,
                         "cm_rss_per_connection_bytes": 20480.0,
                         "all_rss_per_connection_bytes": None, "login": _login()})
    text = report.markdown(idle)
    assert ("| RSS per connection, connection manager(s) or the one-process server | 20.00 KiB |"
            in text)
    assert "| all server processes' RSS per connection | n/a |" in text
    assert "| logins bound / failed | 5 / 0 |" in text
    assert "noisy" in text
    assert "cm-1 3" in text


def test_markdown_for_a_ramp_names_the_peak() -> None:
    step = {"target_rate": 100.0, "delivered_per_s": 99.0, "latency_ms": {"p99": 3.0},
            "server_cpu_us_per_delivery": 50.0, "loss": 0, "passed": True, "series": []}
    text = report.markdown(_doc("ramp", {"steps": [step], "peak_delivered_per_s": 99.0,
                                         "p99_bound_ms": 50.0}))
    assert "| peak delivered rate with p99 ≤ 50 ms | 99/s |" in text


def test_write_all(tmp_path: Path) -> None:
    doc = _doc("login", {"login": _login()})
    written = report.write_all(doc, tmp_path / "out")
    assert (tmp_path / "out" / "result.json").exists()
    assert "logins per server CPU-second" in (tmp_path / "out" / "summary.md").read_text()
    assert all(p.exists() for p in written)


def test_markdown_says_how_long_creating_the_accounts_took() -> None:
    doc = _doc("login", {"login": _login()})
    assert "Accounts created" not in report.markdown(doc)
    doc["setup"] = {"accounts_s": 0.8734, "accounts_via": "admin API"}
    assert "Accounts created through the admin API in 0.87 s" in report.markdown(doc)
