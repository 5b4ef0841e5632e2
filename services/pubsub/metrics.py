"""Metrics of the pubsub service (stanzad_pubsub_*)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PARTITIONS = Gauge("stanzad_pubsub_partitions", "Pubsub partitions this process consumes.")
REQUESTS = Counter(
    "stanzad_pubsub_requests_total", "Pubsub requests by operation and result.",
    ["operation", "result"],
)
NODES = Counter(
    "stanzad_pubsub_nodes_total", "Nodes created and deleted, by kind (pep, service).",
    ["kind", "change"],
)
ITEMS = Counter("stanzad_pubsub_items_stored_total", "Items written to PostgreSQL.")
PUBLISHES = Counter("stanzad_pubsub_publishes_total", "Items published (acknowledged).")
NOTIFICATIONS = Counter(
    "stanzad_pubsub_notifications_total", "Event notifications sent, by kind.", ["kind"]
)
FANOUT = Histogram(
    "stanzad_pubsub_fanout_recipients",
    "Recipients (sessions and remote JIDs) of one notification.",
    buckets=(0, 1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10_000, 100_000),
)
CAPS = Counter(
    "stanzad_pubsub_caps_total", "XEP-0115 ver lookups, by outcome (cached, asked, "
    "verified, mismatch, failed).", ["outcome"],
)
AVATAR_TO_VCARD = Counter(
    "stanzad_pubsub_avatar_to_vcard_total",
    "XEP-0398: avatar metadata publishes copied into the account's vCard.",
)
