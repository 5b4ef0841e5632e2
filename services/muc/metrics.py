"""Metrics of the multi-user chat service (stanzad_muc_*)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PARTITIONS = Gauge("stanzad_muc_partitions", "Muc partitions this process consumes.")
ROOMS = Gauge("stanzad_muc_rooms", "Rooms this process holds in memory (of its partitions).")
OCCUPANTS = Gauge("stanzad_muc_occupants", "Occupants of the rooms this process holds.")
FANNED_OUT = Counter(
    "stanzad_muc_fanned_out_total",
    "Stanzas the rooms sent to occupants, by kind (one per receiving occupant).",
    ["kind"],
)
ENVELOPES = Counter(
    "stanzad_muc_envelopes_total",
    "Bus messages the rooms published, by kind (fanout: one per connection manager).",
    ["kind"],
)
FANOUT_SIZE = Histogram(
    "stanzad_muc_fanout_recipients",
    "Occupants one room broadcast (a groupchat message, a presence variant) went to.",
    buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000),
)
ROOM_MOVES = Counter(
    "stanzad_muc_room_moves_total",
    "Rooms taken over with live occupants from another process (its partition moved).",
)
ERRORS = Counter(
    "stanzad_muc_errors_total", "Stanzas the rooms refused, by condition.", ["condition"]
)
ARCHIVE_QUERIES = Counter(
    "stanzad_muc_archive_queries_total", "XEP-0313 queries of room archives answered."
)

# every series the dashboard and the alerts read exists from the start, at 0
for _kind in ("message", "presence", "iq"):
    FANNED_OUT.labels(_kind)
for _kind in ("fanout", "batch", "message", "presence", "iq"):
    ENVELOPES.labels(_kind)
for _condition in ("resource-constraint", "internal-server-error"):  # the stores fail
    ERRORS.labels(_condition)
