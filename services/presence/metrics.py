"""Metrics of the presence service (stanzad_presence_*)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PARTITIONS = Gauge("stanzad_presence_partitions", "Presence partitions this process consumes.")
BROADCASTS = Counter(
    "stanzad_presence_broadcasts_total", "Presence stanzas handled, by type.", ["type"]
)
FANOUT_RECIPIENTS = Histogram(
    "stanzad_presence_fanout_sessions",
    "Sessions one broadcast presence was delivered to.",
    buckets=(0, 1, 2, 5, 10, 50, 100, 500, 1000, 5000),
)
OFFLINE_DELIVERED = Counter(
    "stanzad_presence_offline_delivered_total", "Stored offline messages delivered at login."
)
REAPED = Counter(
    "stanzad_presence_reaped_sessions_total",
    "Sessions removed after their connection manager died.",
)
