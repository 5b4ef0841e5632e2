"""Metrics of the router (stanzad_router_*)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PARTITIONS = Gauge("stanzad_router_partitions", "Routing partitions this router consumes.")
ROUTED = Counter(
    "stanzad_router_stanzas_total", "Stanzas routed, by kind and outcome.", ["kind", "outcome"]
)
CACHE_LOOKUPS = Counter(
    "stanzad_router_cache_lookups_total", "Session cache lookups by result.", ["result"]
)
BATCH_DURATION = Histogram(
    "stanzad_router_batch_duration_seconds",
    "Time to route one batch from the bus, Redis lookups included.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
STANZA_ERRORS = Counter(
    "stanzad_router_stanza_errors_total", "Stanzas bounced to their sender, by condition.",
    ["condition"],
)
GHOST_SESSIONS = Gauge(
    "stanzad_router_ghost_sessions",
    "Sessions still indexed on connection managers whose heartbeat expired (reaped soon).",
)
OFFLINE_QUEUE = Histogram(
    "stanzad_router_offline_queue_messages",
    "Length of an account's offline queue after a message was stored (XEP-0160).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
CARBON_COPIES = Counter(
    "stanzad_router_carbon_copies_total",
    "XEP-0280 copies sent to users' other resources, by direction (sent, received).",
    ["direction"],
)
PUSH_NOTIFICATIONS = Counter(
    "stanzad_router_push_notifications_total",
    "XEP-0357 notifications to app servers, by result: sent (each attempt), ok (the app "
    "server answered with a result), error (it answered with an error: the registration is "
    "disabled), retried (no answer in time, or a 'wait' error: sent again), timeout (no "
    "answer after every attempt), dropped (too many in flight).",
    ["result"],
)
PUSH_PENDING = Gauge(
    "stanzad_router_push_pending", "XEP-0357 notifications sent and not yet answered."
)
