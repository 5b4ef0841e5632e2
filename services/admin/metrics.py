"""Metrics of the admin API (stanzad_admin_*)."""

from __future__ import annotations

from prometheus_client import Counter

REQUESTS = Counter(
    "stanzad_admin_requests_total", "Admin API requests by operation and HTTP status code.",
    ["operation", "code"],
)
IMPORTED = Counter(
    "stanzad_admin_imported_accounts_total",
    "Entries of account imports by result (created, exists, invalid).", ["result"],
)
