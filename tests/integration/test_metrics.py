"""Every running service's /metrics follows the naming rules (tests/support/metric_rules.py)."""

from __future__ import annotations

import asyncio

import pytest

from shared.tls.context import check_certificate
from tests.conftest import Users
from tests.support import metric_rules
from tests.support.cluster import Cluster, metric_value
from tests.support.xmpp import RawClient, raw_login

SERVICES = ("cm-1", "router-1", "presence-1", "roster-1", "admin-1")

# What the issue asks every deployment to be able to see, by the service that exposes it.
REQUIRED = {
    "cm-1": {
        "stanzad_cm_connections", "stanzad_cm_sessions", "stanzad_cm_logins_total",
        "stanzad_cm_stanzas_in_total", "stanzad_cm_stanzas_delivered_total",
        "stanzad_cm_stanza_errors_total", "stanzad_cm_stream_errors_total",
        "stanzad_bus_publish_failures_total", "stanzad_bus_reconnects_total",
        "stanzad_bus_connected", "stanzad_store_command_duration_seconds_bucket",
        "stanzad_store_connected", "process_open_fds", "process_max_fds",
        # XEP-0198 (issue 16)
        "stanzad_cm_sm_sessions", "stanzad_cm_sm_detached_sessions",
        "stanzad_cm_sm_unacked_stanzas", "stanzad_cm_sm_longest_queue_stanzas",
        "stanzad_cm_sm_acks_outstanding",
        # issue 25: the certificate expiry alert
        "stanzad_tls_certificate_expiry_timestamp_seconds",
    },
    "router-1": {
        "stanzad_router_stanzas_total", "stanzad_router_stanza_errors_total",
        "stanzad_router_partitions", "stanzad_router_ghost_sessions",
        "stanzad_cluster_partitions_configured",  # issue 25: the unowned partitions alert
        "stanzad_router_offline_queue_messages_bucket",
        "stanzad_bus_connected",
        "stanzad_store_connected", "stanzad_store_command_duration_seconds_bucket",
    },
    "presence-1": {
        "stanzad_presence_partitions", "stanzad_presence_broadcasts_total",
        "stanzad_presence_reaped_sessions_total", "stanzad_presence_offline_delivered_total",
        "stanzad_presence_fanout_sessions_bucket", "stanzad_bus_connected",
    },
    "roster-1": {
        "stanzad_roster_partitions", "stanzad_roster_requests_total",
        "stanzad_roster_pushes_total", "stanzad_bus_connected",
    },
    "admin-1": {"stanzad_admin_requests_total", "stanzad_bus_connected",
                "stanzad_store_connected"},
}


async def _traffic(cluster: Cluster, users: Users) -> None:
    """A login, a delivered message and a bounce, so labelled series have samples."""
    jid, pw = await users.create("metrics")
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(raw, jid, pw)
        await raw.send(b"<presence/>")  # available: messages to the bare JID are delivered
        await raw.read_until(b"<presence")
        await raw.send(b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        await raw.read_until(b'id="r1"')
        await raw.send(f"<message to='{jid}' id='m1' type='chat'><body>hi</body></message>"
                       .encode())
        await raw.read_until(b"id=\"m1\"")
        await raw.send(b"<message to='nobody-here@localhost' id='m2' type='chat'>"
                       b"<body>x</body></message>")
        await raw.read_until(b"service-unavailable")
    finally:
        await raw.close()


@pytest.fixture
async def scraped(cluster: Cluster, admin_url: str, users: Users) -> dict[str, str]:
    await _traffic(cluster, users)
    return {name: await asyncio.to_thread(cluster.metrics, name) for name in SERVICES}


async def test_every_metric_follows_the_naming_rules(scraped: dict[str, str]) -> None:
    found = []
    for service, text in scraped.items():
        fams = metric_rules.families(text)
        assert any(f.name.startswith("stanzad_") for f in fams), service
        found += [f"{service}: {p}" for p in metric_rules.type_line_problems(text)]
        for fam in fams:
            found += [f"{service}: {p}" for p in metric_rules.problems(fam)]
    assert found == []


async def test_the_metrics_the_issue_asks_for_are_exposed(scraped: dict[str, str]) -> None:
    for service, required in REQUIRED.items():
        names = metric_rules.exposed_names(metric_rules.families(scraped[service]))
        assert required - names == set(), service


async def test_labelled_series_have_samples_after_traffic(scraped: dict[str, str]) -> None:
    cm, router = scraped["cm-1"], scraped["router-1"]
    assert 'stanzad_cm_logins_total{mechanism="PLAIN",result="success"}' in cm
    assert 'stanzad_cm_stanzas_delivered_total{kind="message"}' in cm
    assert 'stanzad_router_stanza_errors_total{condition="service-unavailable"}' in router
    assert 'stanzad_store_connected{service="router"} 1.0' in router


async def test_the_alerts_gauges_hold_the_certificate_and_the_partition_count(
    cluster: Cluster, scraped: dict[str, str]
) -> None:
    """StanzadCertificateExpiresSoon reads the served certificate's notAfter;
    StanzadPartitionsUnowned compares the held partitions with STANZAD_PARTITIONS."""
    cert = check_certificate(str(cluster.workdir / "tls" / "cert.pem"))
    expiry = metric_value(scraped["cm-1"], "stanzad_tls_certificate_expiry_timestamp_seconds",
                          service="connection_manager")
    assert expiry == cert.not_valid_after_utc.timestamp()
    for name, service in (("router-1", "router"), ("presence-1", "presence"),
                          ("roster-1", "roster")):
        configured = metric_value(scraped[name], "stanzad_cluster_partitions_configured",
                                  service=service)
        assert configured == cluster.partitions, name
    # the only router holds every routing partition: the alert stays quiet
    assert metric_value(scraped["router-1"], "stanzad_router_partitions") == cluster.partitions
