"""A tiny real run of each scenario against the test session's cluster: 5 connections, at
most 20 stanzas, a few seconds each.  Counts are checked, timing never is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest import prosody, report
from loadtest.runner import run
from loadtest.scenarios import Options
from tests.support.cluster import Cluster

pytestmark = pytest.mark.timeout(90)


def tiny(scenario: str, **change: Any) -> Options:
    base: dict[str, Any] = {"connections": 5, "workers": 1, "sources": 2, "concurrency": 5,
                            "rate": 20.0, "seconds": 2.0, "messages": 20, "hold_s": 0.0,
                            "iterations": 4096, "drain_s": 3.0}
    return Options(scenario=scenario, **{**base, **change})


def check_login(login: dict[str, Any], n: int = 5) -> None:
    assert (login["bound"], login["failed"]) == (n, 0), login["errors"]
    assert login["time_to_bound_ms"]["count"] == n


def test_idle(cluster: Cluster, tmp_path: Path) -> None:
    doc = run(tiny("idle"), quiet=True, cluster=cluster)
    r = doc["result"]
    assert r["connections"] == 5 and r["measured_connections"] == 4
    check_login(r["login"], 4)
    assert "cm-1" in r["rss_growth_bytes"]
    # the logins' Redis commands (lookup, bind) were read from INFO commandstats
    assert r["login"]["ops"]["redis.commands"] >= 4
    assert {"nats", "redis", "router-1", "cm-1"} <= set(doc["samples"][-1]["rss"])
    # the users were imported through the cluster's admin API, which is not sampled
    assert doc["setup"]["accounts_via"] == "admin API" and doc["setup"]["accounts_s"] > 0
    assert cluster.admin_ports and not set(cluster.admin_ports) & set(doc["samples"][-1]["rss"])
    written = report.write_all(doc, tmp_path)
    assert (tmp_path / "summary.md").read_text().startswith("## idle")
    assert all(p.exists() for p in written)


def test_login_with_scram_sha_1_and_plain(cluster: Cluster) -> None:
    for mechanism in ("SCRAM-SHA-1", "PLAIN"):
        doc = run(tiny("login", mechanism=mechanism), quiet=True, cluster=cluster)
        check_login(doc["result"]["login"])


def test_login_on_token_and_http_domains(cluster: Cluster) -> None:
    """Issue 23: logins on a domain of the platform's identity (loadtest/identity.py), one
    with a JWT over OAUTHBEARER, one with PLAIN asked of the tool's HTTP endpoint."""
    doc = run(tiny("login", auth="token", mechanism="OAUTHBEARER"), quiet=True,
              cluster=cluster)
    check_login(doc["result"]["login"])
    doc = run(tiny("login", auth="http", mechanism="PLAIN"), quiet=True, cluster=cluster)
    check_login(doc["result"]["login"])
    assert doc["setup"]["endpoint_questions"] == 5  # every login asked the platform


def test_delegated_auth_runs_refuse_what_does_not_fit() -> None:
    from loadtest.bounds import BoundsError
    from loadtest.runner import validate

    with pytest.raises(BoundsError, match="OAUTHBEARER"):
        validate(tiny("login", auth="token"))  # SCRAM on a token domain
    with pytest.raises(BoundsError, match="OAUTHBEARER"):
        validate(tiny("login", mechanism="OAUTHBEARER"))  # on the stored keys
    with pytest.raises(BoundsError, match="PLAIN"):
        validate(tiny("login", auth="http", mechanism="SCRAM-SHA-1"))
    with pytest.raises(BoundsError, match="stanzad"):
        validate(tiny("login", server="prosody", auth="http", mechanism="PLAIN"))


def test_chat(cluster: Cluster) -> None:
    doc = run(tiny("chat", workers=2), quiet=True, cluster=cluster)
    chat = doc["result"]["chat"]
    check_login(doc["result"]["login"])
    assert chat["sent"] == 20
    assert chat["delivered"] == 20 and chat["loss"] == 0
    assert chat["latency_ms"]["count"] == 20
    assert sum(b["delivered"] for b in chat["series"]) == 20
    assert doc["topology"]["workers"] == 2


def test_chat_and_idle_with_xep0198_on_every_client(cluster: Cluster) -> None:
    """`make bench`'s chat-2000-sm and idle-sm at a tiny size (issue 16): every client
    enables stream management with resumption at login and answers the server's <r/>
    (one per 5 stanzas: 8 messages each here)."""
    doc = run(tiny("chat", messages=40, rate=40.0, sm=True), quiet=True, cluster=cluster)
    chat = doc["result"]["chat"]
    check_login(doc["result"]["login"])
    assert doc["options"]["sm"] is True
    assert chat["sent"] == 40 and chat["delivered"] == 40 and chat["loss"] == 0
    assert "XEP-0198 on every client" in report.markdown(report.clean(doc))
    doc = run(tiny("idle", sm=True), quiet=True, cluster=cluster)
    check_login(doc["result"]["login"], 4)


def test_presence_fanout(cluster: Cluster) -> None:
    doc = run(tiny("presence", contacts=2, messages=10), quiet=True, cluster=cluster)
    pres = doc["result"]["presence"]
    check_login(doc["result"]["login"])
    assert pres["sent"] == 10
    assert pres["expected"] == 20 and pres["delivered"] == 20
    assert pres["fanout"]["complete"] == 10


def test_ramp(cluster: Cluster) -> None:
    doc = run(tiny("ramp", ramp_start=10.0, ramp_factor=2.0, ramp_steps=2, ramp_step_s=1.0,
                   p99_bound_ms=60_000.0), quiet=True, cluster=cluster)
    steps = doc["result"]["steps"]
    assert 1 <= len(steps) <= 2
    assert all(s["sent"] <= 20 and s["delivered"] <= s["sent"] for s in steps)
    assert steps[0]["target_rate"] == 10


@pytest.mark.skipif(not prosody.available(), reason="Debian package prosody not installed")
def test_side_by_side_prosody_accounts_by_registration_then_chat() -> None:
    doc = run(tiny("chat", server="prosody", mechanism="SCRAM-SHA-1"), quiet=True)
    assert doc["server"] == "prosody"
    check_login(doc["result"]["login"])
    assert doc["result"]["chat"]["delivered"] == 20
    assert set(doc["samples"][-1]["rss"]) == {"prosody"}


def test_prosody_runs_refuse_what_it_cannot_do() -> None:
    from loadtest.bounds import BoundsError
    from loadtest.runner import validate

    with pytest.raises(BoundsError, match="SCRAM-SHA-1"):
        validate(tiny("chat", server="prosody"))
    with pytest.raises(BoundsError, match="presence"):
        validate(tiny("presence", server="prosody", mechanism="PLAIN", contacts=2))
