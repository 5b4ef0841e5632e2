"""Fixtures for the operations files (ops/, k8s/, docker-compose.yml, Dockerfile)."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Final

import promql_parser
import pytest

from tests.support import metric_rules
from tests.support.cluster import ROOT, Cluster

# Names queries may use that no running service emits yet.  Keep this tiny: the routing
# latency histogram is being added by another branch (CM in -> CM out).
NOT_YET_EMITTED: Final[frozenset[str]] = frozenset()
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES: Final = frozenset({"up"})
S2S: Final = "s2s-ops"  # not "s2s-1": federation tests start their own
MUC: Final = "muc-ops"  # not "muc-1": the muc tests start their own
GRAFANA_VARIABLES: Final = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}

_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects; raises if it does not parse."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    return set(_SELECTOR.findall(str(promql_parser.parse(expr))))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def exposed(cluster: Cluster, admin_url: str) -> set[str]:
    """Every series name the running services expose, plus Prometheus's own.  The session
    cluster has no s2s gateway and no muc process: one of each joins it just long enough to
    be scraped; the pubsub service is started as the pubsub tests start it (and stays)."""
    names: set[str] = set(PROMETHEUS_SERIES)
    if "pubsub-1" not in cluster.procs:
        cluster.start_pubsub()
    for service in ("cm-1", "router-1", "presence-1", "roster-1", "admin-1", "pubsub-1"):
        names |= metric_rules.exposed_names(metric_rules.families(cluster.metrics(service)))
    for name, start in ((S2S, cluster.start_s2s), (MUC, cluster.start_muc)):
        start(name)
        try:
            names |= metric_rules.exposed_names(metric_rules.families(cluster.metrics(name)))
        finally:
            cluster.kill(name, signal.SIGTERM)  # gives its partitions back at once
    return names
