"""Prometheus metrics shared by every service.

Names follow ``stanzad_<component>_<thing>_<unit>``; counters end in ``_total``; labels take a
small fixed set of values (never a JID, an address or a pod name).
"""

from __future__ import annotations

from typing import Final

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
BUS_PUBLISH_FAILURES = Counter(
    f"{PREFIX}_bus_publish_failures_total", "Publishes NATS refused or that failed.", ["service"]
)
BUS_RECONNECTS = Counter(f"{PREFIX}_bus_reconnects_total", "NATS reconnections.", ["service"])
BUS_CONNECTED = Gauge(f"{PREFIX}_bus_connected", "1 while connected to NATS.", ["service"])
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
