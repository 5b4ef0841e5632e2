"""Metrics of the roster service (stanzad_roster_*)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PARTITIONS = Gauge("stanzad_roster_partitions", "Roster partitions this process consumes.")
REQUESTS = Counter(
    "stanzad_roster_requests_total", "jabber:iq:roster requests by result.", ["result"]
)
SUBSCRIPTIONS = Counter(
    "stanzad_roster_subscriptions_total",
    "Subscription presence handled, by direction and type.",
    ["direction", "type"],
)
PUSHES = Counter("stanzad_roster_pushes_total", "Roster changes pushed to a user's resources.")
PUSH_REGISTRATIONS = Counter(
    "stanzad_roster_push_registrations_total",
    "XEP-0357 push registrations enabled and disabled by clients.", ["operation"],
)
VCARD_TO_AVATAR = Counter(
    "stanzad_roster_vcard_to_avatar_total",
    "XEP-0398: vCard PHOTOs published as the account's PEP avatar.",
)
