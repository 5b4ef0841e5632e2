"""Prometheus config, alert rules and the Grafana dashboard refer only to real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from tests.ops.conftest import NOT_YET_EMITTED, metric_names

# The alerts issue 6 asks for, by the name they ship under.
REQUIRED_ALERTS = {
    "StanzadPodDown", "StanzadAuthFailureSpike", "StanzadRoutingLatencyHigh",
    "StanzadStanzaErrors", "StanzadRedisUnreachable", "StanzadNatsUnreachable",
    "StanzadGhostSessions",
}


def _rules(root: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load((root / "ops/prometheus/alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / "ops/grafana/dashboards/stanzad.json").read_text()))


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_alert_rules_are_complete_and_well_formed(root: Path) -> None:
    rules = _rules(root)
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS
    for rule in rules:
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["for"].endswith("m"), rule["alert"]


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes of a Markdown file's headings: lower case, punctuation other
    than `-` and `_` dropped, spaces to `-` (a repeated heading gets `-1`, `-2`, ...)."""
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_anchors_follow_github_headings() -> None:
    doc = "# Operating x\n## Redis auth\n```sh\n# not a heading\n```\n### A, b (c)\n## Redis auth\n"
    assert _anchors(doc) == {"operating-x", "redis-auth", "a-b-c", "redis-auth-1"}


def test_every_alert_has_a_runbook_section(root: Path) -> None:
    """Each alert's runbook_url is a section of docs/operations.md under "Runbooks" that
    exists (an anchor of one of its headings) and is the alert's own."""
    operations = (root / "docs/operations.md").read_text()
    anchors = _anchors(operations)
    runbooks = operations[operations.index("\n## Runbooks\n"):]
    runbooks = runbooks[: runbooks.index("\n## ", 1)]
    for rule in _rules(root):
        url = rule["annotations"].get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "docs/operations.md", rule["alert"]
        assert anchor in anchors, (rule["alert"], anchor)
        assert anchor == rule["alert"].lower()
        assert f"\n### {rule['alert']}\n" in runbooks, rule["alert"]
        section = runbooks.split(f"\n### {rule['alert']}\n")[1].split("\n### ")[0]
        assert "**Means:**" in section and "**Do:**" in section, rule["alert"]


def test_the_alerts_issue_25_asks_for_exist(root: Path) -> None:
    rules = {r["alert"]: r for r in _rules(root)}
    assert 'job="stanzad-connection-manager"' in rules["StanzadNoConnectionManager"]["expr"]
    assert 'job="stanzad-s2s-gateway"' in rules["StanzadNoS2SGateway"]["expr"]
    unowned = rules["StanzadPartitionsUnowned"]["expr"]
    for role in ("router", "presence", "roster", "s2s", "muc"):
        assert f"stanzad_{role}_partitions" in unowned, role
    assert "14 * 86400" in rules["StanzadCertificateExpiresSoon"]["expr"]


def test_alerts_name_only_scraped_jobs(root: Path) -> None:
    """`up{job="stanzad-presence"}` and the like: a job nobody scrapes would never fire."""
    config = yaml.safe_load((root / "ops/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    named = {job for rule in _rules(root) for job in re.findall(r'job="([^"]+)"', rule["expr"])}
    assert named and named <= jobs
    assert {"stanzad-router", "stanzad-presence", "stanzad-roster"} <= named  # No* alerts


def test_alerts_use_only_exposed_metrics(root: Path, exposed: set[str]) -> None:
    used = {name for rule in _rules(root) for name in metric_names(rule["expr"])}
    assert used - exposed - NOT_YET_EMITTED == set()
    assert used >= NOT_YET_EMITTED  # the allow-list holds no name nobody uses


def test_dashboard_queries_parse_and_use_only_exposed_metrics(
    root: Path, exposed: set[str]
) -> None:
    dashboard = _dashboard(root)
    used: set[str] = set()
    for title, expr in _exprs(dashboard):
        try:
            used |= metric_names(expr)
        except Exception as exc:
            raise AssertionError(f"panel {title!r}: {expr}: {exc}") from None
    assert used - exposed - NOT_YET_EMITTED == set()
    assert {"stanzad_cm_connections", "stanzad_cm_logins_total",
            "stanzad_store_command_duration_seconds_bucket",
            "stanzad_presence_broadcasts_total", "stanzad_presence_fanout_sessions_bucket",
            "stanzad_roster_requests_total", "stanzad_s2s_connections"} <= used


def test_dashboard_is_grafana_shaped(root: Path) -> None:
    dashboard = _dashboard(root)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    provisioned = yaml.safe_load(
        (root / "ops/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert dashboard["templating"]["list"][0]["current"]["value"] == provisioned["uid"]
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize("expr", ["rate(x[5m]", "sum by (le) rate(x[5m])"])
def test_a_broken_query_is_caught(expr: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - promql_parser raises a plain ValueError
        metric_names(expr)


def test_prometheus_scrapes_every_stanzad_service(root: Path) -> None:
    config = yaml.safe_load((root / "ops/prometheus/prometheus.yml").read_text())
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    stanzad = {name for name, svc in compose["services"].items()
               if svc.get("image", "").startswith("stanzad:")}
    scraped = {name for job in config["scrape_configs"]
               for sd in job.get("dns_sd_configs", []) for name in sd["names"]}
    assert stanzad == scraped == {"connection_manager", "router", "presence", "roster",
                                  "s2s_gateway", "muc", "pubsub", "upload", "admin"}
    jobs = {job["job_name"]: sd["names"] for job in config["scrape_configs"]
            for sd in job.get("dns_sd_configs", [])}
    # the job names of the Kubernetes ServiceMonitor (the Service names), which alerts use
    assert {job: names[0] for job, names in jobs.items()} == {
        f"stanzad-{name.replace('_', '-')}": name for name in stanzad
    }
    assert all(sd["port"] == 9100 for job in config["scrape_configs"]
               for sd in job.get("dns_sd_configs", []))
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
