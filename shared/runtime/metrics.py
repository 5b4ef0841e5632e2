"""Prometheus metrics shared by every service.

Names follow ``stanzad_<component>_<thing>_<unit>``; counters end in ``_total``; labels take a
small fixed set of values (never a JID, an address or a pod name).
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from typing import Any, Final

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

PREFIX: Final = "stanzad"

# No `<name>_created` series: they double the series count and no query of ours reads them.
disable_created_metrics()

BUS_PUBLISHED = Counter(
    f"{PREFIX}_bus_published_messages_total", "Messages published to NATS.", ["service"]
)
BUS_RECEIVED = Counter(
    f"{PREFIX}_bus_received_messages_total", "Messages received from NATS.", ["service"]
)
BUS_LOCAL = Counter(
    f"{PREFIX}_bus_local_messages_total",
    "Messages handed to a consumer of the same process instead of NATS (shared/bus/local.py).",
    ["service"],
)
BUS_PUBLISH_FAILURES = Counter(
    f"{PREFIX}_bus_publish_failures_total", "Publishes NATS refused or that failed.", ["service"]
)
BUS_RECONNECTS = Counter(f"{PREFIX}_bus_reconnects_total", "NATS reconnections.", ["service"])
BUS_CONNECTED = Gauge(f"{PREFIX}_bus_connected", "1 while connected to NATS.", ["service"])
BUS_ACK_LATENCY = Histogram(
    f"{PREFIX}_bus_publish_ack_seconds",
    "Time from a durable publish to its JetStream PubAck.",
    ["service"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
BUS_TAKEN_OVER = Counter(
    f"{PREFIX}_bus_takeover_backlog_total",
    "Messages waiting in a partition's stream when this member (re)created its consumer: "
    "what a previous owner left unacked, or what came while nobody held the partition.",
    ["service"],
)
BUS_CONSUMER_LAG = Gauge(
    f"{PREFIX}_bus_consumer_unacked",
    "Messages this member pulled from its partitions' streams and has not acked yet.",
    ["service"],
)
BUS_BATCH_SIZE = Histogram(
    f"{PREFIX}_bus_batch_messages",
    "Messages handled per consumer batch.",
    ["service"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
STORE_LATENCY = Histogram(
    f"{PREFIX}_store_command_duration_seconds",
    "Redis round trips (a pipeline counts once).",
    ["service", "operation"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
)
STORE_ERRORS = Counter(
    f"{PREFIX}_store_errors_total", "Redis commands that failed.", ["service", "operation"]
)
STORE_CONNECTED = Gauge(
    f"{PREFIX}_store_connected", "1 while the last Redis PING answered.", ["service"]
)
# Alerts: "partitions without an owner" compares the sum of a role's partitions gauges with
# this; "certificate expires within 14 days" reads the notAfter.
PARTITIONS_CONFIGURED = Gauge(
    f"{PREFIX}_cluster_partitions_configured",
    "STANZAD_PARTITIONS of a partitioned service: what its role's members hold between them.",
    ["service"],
)
TLS_DOMAIN_CERT_EXPIRY = Gauge(
    f"{PREFIX}_tls_domain_certificate_expiry_timestamp_seconds",
    "notAfter of each domain's certificate of the certificates directory (SNI; Unix time), "
    "set at load and on every reload.",
    ["service", "domain"],
)
TLS_CERT_EXPIRY = Gauge(
    f"{PREFIX}_tls_certificate_expiry_timestamp_seconds",
    "notAfter of the certificate this process serves (Unix time), set at start and on every "
    "successful reload.",
    ["service"],
)
# PostgreSQL (shared/store/pg/database.py): ``operation`` is the name a store gives the
# statement (or the transaction of a few); ``kind`` of an error is one of DB_ERROR_KINDS.
DB_ERROR_KINDS: Final = ("unreachable", "timeout", "constraint", "data", "server")
DB_LATENCY = Histogram(
    f"{PREFIX}_store_db_query_duration_seconds",
    "PostgreSQL operations (a statement or a short transaction), waiting for a pooled "
    "connection included, by statement name.",
    ["service", "operation"],
    buckets=(0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
             2.5, 5.0),
)
DB_ERRORS = Counter(
    f"{PREFIX}_store_db_errors_total",
    "PostgreSQL operations that failed, by kind: unreachable (no connection), timeout (no "
    "pooled connection or no answer in time), constraint, data, server (any other error "
    "PostgreSQL returned).",
    ["service", "operation", "kind"],
)
DB_POOL_CONNECTIONS = Gauge(
    f"{PREFIX}_store_db_pool_connections",
    "Open PostgreSQL connections of the pool, by kind: in_use or idle.",
    ["service", "kind"],
)
DB_POOL_MAX = Gauge(
    f"{PREFIX}_store_db_pool_max_connections", "The bound of the PostgreSQL pool.", ["service"]
)
DB_CONNECTED = Gauge(
    f"{PREFIX}_store_db_connected",
    "1 while the pool is open and PostgreSQL answered the last query or check.",
    ["service"],
)


# ---- tallies: counts on the hot path without a locked increment per event -------------------
#
# prometheus_client takes a threading.Lock on every inc() and observe(); per message that was
# a few per cent of a connection manager's CPU (loadtest/RESULTS.md, "CPU per message,
# session 2").  A tally counts in plain attributes and hands the sum to its metric when
# /metrics is scraped (`flush_tallies`, called by the service runner).

_TALLIES: weakref.WeakSet[Tally | HistogramTally] = weakref.WeakSet()


class Tally:
    """Counts for one counter (or one label set of it): ``tally.n += k`` on the hot path."""

    __slots__ = ("__weakref__", "_child", "n")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.n: float = 0
        _TALLIES.add(self)

    def flush(self) -> None:
        if self.n:
            n, self.n = self.n, 0
            self._child.inc(n)


class HistogramTally:
    """Observations for one histogram (or one label set of it), bucketed locally."""

    __slots__ = ("__weakref__", "_bounds", "_child", "_counts", "sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self.sum = 0.0
        _TALLIES.add(self)

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        for i, n in enumerate(counts):
            if n:
                self._child._buckets[i].inc(n)
                counts[i] = 0
        self._child._sum.inc(self.sum)
        self.sum = 0.0


def flush_tallies() -> None:
    """Add every tally's counts to its Prometheus metric (before each scrape)."""
    for tally in list(_TALLIES):
        tally.flush()
