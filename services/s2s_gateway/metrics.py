"""Metrics of the s2s gateway (stanzad_s2s_*)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PARTITIONS = Gauge("stanzad_s2s_partitions", "s2s partitions (remote domains) this gateway owns.")
CONNECTIONS = Gauge(
    "stanzad_s2s_connections", "Open s2s connections by direction.", ["direction"]
)
CONNECTIONS_OPENED = Counter(
    "stanzad_s2s_connections_opened_total", "s2s connections opened by direction.", ["direction"]
)
AUTHENTICATED = Counter(
    "stanzad_s2s_authentications_total", "Peers authenticated, by direction and mechanism.",
    ["direction", "mechanism"],
)
AUTH_FAILURES = Counter(
    "stanzad_s2s_auth_failures_total", "Failed s2s authentications by mechanism.", ["mechanism"]
)
DIALBACK_VERIFY = Counter(
    "stanzad_s2s_dialback_verifications_total",
    "Dialback keys checked with an authoritative server (asked) or for a peer (answered).",
    ["role", "result"],
)
QUEUED = Gauge("stanzad_s2s_queue_stanzas", "Stanzas waiting for a connection to be set up.")
PAUSED = Gauge(
    "stanzad_s2s_paused_partitions",
    "s2s partitions not pulled because a link's queue is full (durable delivery: flow control "
    "instead of resource-constraint bounces).",
)
STANZAS = Counter("stanzad_s2s_stanzas_total", "Stanzas sent and received.", ["direction"])
BOUNCES = Counter(
    "stanzad_s2s_bounces_total", "Stanzas bounced to local senders, by condition.", ["condition"]
)
STREAM_ERRORS = Counter(
    "stanzad_s2s_stream_errors_total", "s2s streams ended with an error, by condition.",
    ["condition"],
)
THROTTLED = Counter(
    "stanzad_s2s_throttled_total", "Times an inbound stream hit its stanza rate and paused."
)
DIRECT_TLS = Counter(
    "stanzad_s2s_direct_tls_connections_total",
    "Inbound connections to the direct TLS port (XEP-0368).",
)
TLS_FAILURES = Counter(
    "stanzad_s2s_tls_failures_total", "Inbound s2s TLS handshakes or records that failed."
)
STREAMS = Gauge(
    "stanzad_s2s_streams", "Open s2s connections by direction and state (negotiating: TLS and "
    "authentication under way, or a dialback check; authenticated).", ["direction", "state"],
)
REFUSED = Counter(
    "stanzad_s2s_connections_refused_total",
    "Inbound s2s connections refused at once, by reason (per_ip: too many open from the "
    "address; rate: opened too fast; proxy: a PROXY header from an untrusted address, or a "
    "bad one from a trusted proxy).", ["reason"],
)
SM_STREAMS = Counter(
    "stanzad_s2s_sm_enabled_total", "s2s streams with XEP-0198 acks enabled, by direction.",
    ["direction"],
)
UNACKED = Gauge(
    "stanzad_s2s_unacked_stanzas",
    "Stanzas written on outbound s2s streams and not yet acked by the peer (XEP-0198).",
)
RESENT = Counter(
    "stanzad_s2s_resent_total",
    "Unacked stanzas of a broken outbound stream sent again on the next one (XEP-0198).",
)
ACK_TIMEOUTS = Counter(
    "stanzad_s2s_ack_timeouts_total",
    "Outbound s2s streams closed because an XEP-0198 <r/> went unanswered.",
)

# ---- external components (XEP-0114), services/s2s_gateway/component.py ----
COMPONENT_CONNECTED = Gauge(
    "stanzad_component_connected", "Component streams this process holds, by domain.",
    ["domain"],
)
COMPONENT_STANZAS = Counter(
    "stanzad_component_stanzas_total", "Stanzas from (in) and to (out) components, by domain.",
    ["domain", "direction"],
)
COMPONENT_AUTH_FAILURES = Counter(
    "stanzad_component_auth_failures_total",
    "Component streams refused at their header (unknown-domain: host-unknown) or handshake "
    "(bad-handshake: not-authorized).", ["reason"],
)
COMPONENT_REPLACED = Counter(
    "stanzad_component_replaced_total", "Component streams closed because a new stream took "
    "their domain (<conflict/>).", ["domain"],
)
COMPONENT_DROPPED = Counter(
    "stanzad_component_dropped_total", "Stanzas for a component domain this process no "
    "longer holds (it moved or disconnected).", ["domain"],
)
COMPONENT_REFUSED = Counter(
    "stanzad_component_connections_refused_total",
    "Component connections refused at once, by reason (per_ip, rate).", ["reason"],
)
COMPONENT_BOUNCES = Counter(
    "stanzad_component_bounces_total", "Component stanzas refused, by condition.",
    ["condition"],
)
