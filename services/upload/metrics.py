"""Metrics of the HTTP upload service (stanzad_upload_*)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PARTITIONS = Gauge("stanzad_upload_partitions", "Upload partitions this process owns.")
SLOTS = Counter(
    "stanzad_upload_slots_total", "Slot requests (XEP-0363) by result (granted, "
    "file-too-large, quota, not-allowed, bad-request, error).", ["result"],
)
HTTP = Counter(
    "stanzad_upload_http_requests_total", "HTTP requests by method and status.",
    ["method", "status"],
)
BYTES = Counter("stanzad_upload_bytes_total", "Bytes received by PUT (filesystem storage).")
DELETED = Counter(
    "stanzad_upload_deleted_total", "Files and unused slots removed by the cleanup, by why "
    "(expired, unused).", ["why"],
)
