"""Metrics of the connection manager (stanzad_cm_*)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("stanzad_cm_connections", "Open client connections.")
CONNECTIONS_OPENED = Counter("stanzad_cm_connections_opened_total", "Client connections accepted.")
# issue 22: the same by way in (tcp: 5222 STARTTLS, tls: direct TLS XEP-0368, websocket:
# RFC 7395, bosh: XEP-0206 sessions)
TRANSPORT_CONNECTIONS = Gauge(
    "stanzad_cm_transport_connections", "Open client streams by transport.", ["transport"]
)
TRANSPORT_OPENED = Counter(
    "stanzad_cm_transport_opened_total", "Client streams opened by transport.", ["transport"]
)
HTTP_REQUESTS = Counter(
    "stanzad_cm_http_requests_total",
    "Requests on the HTTP port by endpoint (websocket, bosh, host-meta, other) and status.",
    ["endpoint", "status"],
)
SESSIONS = Gauge("stanzad_cm_sessions", "Bound client sessions.")
LOGINS = Counter(
    "stanzad_cm_logins_total", "SASL authentications by mechanism and result.",
    ["mechanism", "result"],
)
STANZAS_IN = Counter("stanzad_cm_stanzas_in_total", "Stanzas received from clients.", ["kind"])
STANZAS_OUT = Counter("stanzad_cm_stanzas_out_total", "Stanzas written to clients.")
DUPLICATES_DROPPED = Counter(
    "stanzad_cm_duplicates_dropped_total",
    "Messages not delivered again after a partition take-over replayed them (durable delivery).",
)
STANZA_ERRORS = Counter(
    "stanzad_cm_stanza_errors_total", "Stanza errors sent to clients by condition.", ["condition"]
)
STREAM_ERRORS = Counter(
    "stanzad_cm_stream_errors_total", "Streams closed with an error, by condition.", ["condition"]
)
BYTES_IN = Counter("stanzad_cm_received_bytes_total", "Bytes read from client sockets.")
BYTES_OUT = Counter("stanzad_cm_sent_bytes_total", "Bytes written to client sockets.")
TLS_FAILURES = Counter("stanzad_cm_tls_failures_total", "STARTTLS handshakes that failed.")
TLS_HANDSHAKES = Counter(
    "stanzad_cm_tls_handshakes_total",
    "TLS handshakes completed, by the record layer that can serve the session once it is "
    "idle (lean: stanzad's own, OpenSSL's session freed; openssl).",
    ["kind"],
)
TLS_LEAN_HANDOVERS = Counter(
    "stanzad_cm_tls_lean_handovers_total",
    "Idle TLS sessions whose OpenSSL state was freed for stanzad's own record layer.",
)
AUTH_TIMEOUTS = Counter(
    "stanzad_cm_auth_timeouts_total", "Connections closed for not binding in time."
)
SLOW_CONSUMERS = Counter(
    "stanzad_cm_slow_consumers_total", "Connections closed because their write buffer was full."
)
UNDELIVERABLE = Counter(
    "stanzad_cm_undeliverable_total", "Bus deliveries for a session no longer here.", ["kind"]
)
UNDELIVERABLE.labels("fanout")  # a room's broadcast to a gone occupant: an alert reads it
BIND_LATENCY = Histogram(
    "stanzad_cm_bind_duration_seconds", "Resource binding, Redis included.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
ROUTING_LATENCY = Histogram(
    "stanzad_cm_routing_latency_seconds",
    "From a connection manager accepting a stanza to one writing it to its recipient.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
STANZAS_DELIVERED = Counter(
    "stanzad_cm_stanzas_delivered_total", "Stanzas from the bus written to a session, by kind.",
    ["kind"],
)

# ---- edge limits (issue 4) -----------------------------------------------------------------
RATE_LIMITED = Counter(
    "stanzad_cm_rate_limited_total",
    "Times reading a connection was paused by a rate limit (bytes or stanzas).", ["limit"],
)
CONNECTIONS_REFUSED = Counter(
    "stanzad_cm_connections_refused_total", "Connections refused at once, by reason.", ["reason"]
)
PARSERS_HIBERNATED = Counter(
    "stanzad_cm_parsers_hibernated_total",
    "Idle sessions whose XML parser was freed until their next byte.",
)
KEEPALIVE_PINGS = Counter(
    "stanzad_cm_keepalive_pings_total", "XEP-0199 pings sent to idle sessions."
)
DEAD_PEERS = Counter(
    "stanzad_cm_dead_peers_total", "Sessions closed because they did not answer a ping."
)
AUTH_THROTTLED = Counter(
    "stanzad_cm_auth_throttled_total",
    "SASL attempts refused under a lock, by scope (pair: the account from that address; "
    "account: from anywhere; ip: a blocked address).", ["scope"],
)
AUTH_ANSWERS_DELAYED = Counter(
    "stanzad_cm_auth_answers_delayed_total",
    "Failed SASL attempts whose answer was delayed (the address failed lately).",
)
AUTH_BLOCKED = Counter(
    "stanzad_cm_auth_blocked_addresses_total",
    "Addresses blocked for failing logins faster than STANZAD_AUTH_BLOCK_FAILURES_PER_MIN.",
)
SESSION_LIMIT_HITS = Counter(
    "stanzad_cm_session_limit_total", "Binds refused because the account has too many sessions."
)

# ---- XEP-0198 stream management (issue 16) ---------------------------------------------------
SM_SESSIONS = Gauge("stanzad_cm_sm_sessions", "Sessions with stream management enabled.")
SM_DETACHED = Gauge(
    "stanzad_cm_sm_detached_sessions",
    "Resumable sessions whose connection broke, waiting for a <resume/> (presence kept).",
)
SM_UNACKED = Gauge(
    "stanzad_cm_sm_unacked_stanzas",
    "Stanzas written to (or held for) sessions and not yet acknowledged, all sessions.",
)
SM_LONGEST_QUEUE = Gauge(
    "stanzad_cm_sm_longest_queue_stanzas", "The longest unacknowledged queue of one session."
)
SM_ACKS_OUTSTANDING = Gauge(
    "stanzad_cm_sm_acks_outstanding", "Sessions asked for an ack (<r/>) that did not answer yet."
)
SM_RESUMPTIONS = Counter(
    "stanzad_cm_sm_resumptions_total",
    "<resume/> requests by result (same_pod, other_pod, not_found, owner_silent: the owner "
    "did not hand it over in time, lost_race: a new bind took the full JID first, bad_h).",
    ["result"],
)
SM_HANDED_OVER = Counter(
    "stanzad_cm_sm_handed_over_total",
    "XEP-0198 sessions of this pod handed over to a <resume/> on another connection manager.",
)
SM_FROM_LOG = Counter(
    "stanzad_cm_sm_resumed_from_log_total",
    "Sessions of a dead connection manager resumed here from their XEP-0198 log (durable "
    "deliveries).",
)
SM_SWEPT = Counter(
    "stanzad_cm_sm_swept_total",
    "Sessions of a dead connection manager not resumed within their timeout whose "
    "unacknowledged stanzas this one handed to the router from their XEP-0198 log.",
)
DRAINS = Counter(
    "stanzad_cm_drains_total",
    "Dead connection managers whose deliveries this one started draining.",
)
DRAINED = Counter(
    "stanzad_cm_drained_stanzas_total",
    "Stanzas drained from dead connection managers' deliveries, by where they went (log: a "
    "resumable session's log; undelivered: offline storage or bounced).",
    ["outcome"],
)
SM_TIMEOUTS = Counter(
    "stanzad_cm_sm_timeouts_total", "Detached sessions that ended unresumed (timeout or limit)."
)
SM_OVERFLOWS = Counter(
    "stanzad_cm_sm_overflows_total",
    "Sessions ended for holding more than STANZAD_SM_MAX_UNACKED unacknowledged stanzas.",
)
SM_RETURNED = Counter(
    "stanzad_cm_sm_returned_stanzas_total",
    "Unacknowledged stanzas of ended sessions handed back to the router, by kind (messages "
    "go to offline storage, IQ requests are bounced).", ["kind"],
)
CARBONS = Counter(
    "stanzad_cm_carbons_requests_total",
    "XEP-0280 <enable/> and <disable/> requests answered.", ["outcome"],
)
FAST_TOKENS = Counter(
    "stanzad_cm_fast_tokens_total",
    "XEP-0484 FAST tokens issued, rotated (issued because the used one was half way to its "
    "expiry) and invalidated by their client.", ["outcome"],
)
CSI_INACTIVE = Gauge(
    "stanzad_cm_csi_inactive_sessions", "Sessions whose client said it is inactive (XEP-0352)."
)
CSI_HELD = Gauge(
    "stanzad_cm_csi_held_stanzas", "Stanzas held for inactive clients (XEP-0352), all sessions."
)
CSI_FLUSHES = Counter(
    "stanzad_cm_csi_flushes_total",
    "Held stanzas written to a client (XEP-0352), by why: active (the client said so), "
    "urgent (an urgent stanza came), full (the queue was full), closed (the session ended).",
    ["reason"],
)
CSI_FLUSH_SIZE = Histogram(
    "stanzad_cm_csi_flushed_messages",
    "Stanzas (of any kind) written per flush of an XEP-0352 queue: its size then.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
CSI_REPLACED = Counter(
    "stanzad_cm_csi_replaced_total",
    "Held presence dropped for a newer one of the same sender (never written: XEP-0352).",
)
IN_BAND = Counter(
    "stanzad_cm_in_band_total",
    "XEP-0077 requests: register (new accounts; result limited when over the per-address "
    "rate), password, remove, form; by result.",
    ["operation", "result"],
)
# issue 23: the authentication backends of domains (kind: token, http)
AUTH_BACKEND_SECONDS = Histogram(
    "stanzad_cm_auth_backend_seconds",
    "Time a domain's authentication backend took to answer, by kind (token, http).",
    ["kind"], buckets=(0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
AUTH_BACKEND_RESULTS = Counter(
    "stanzad_cm_auth_backend_results_total",
    "Answers of the authentication backends by kind (token, http) and result (ok, rejected, "
    "unavailable).",
    ["kind", "result"],
)

# ---- load-aware placement (issue 24; shared/cluster/placement.py) --------------------------
CONNECTION_CAPACITY = Gauge(
    "stanzad_cm_connection_capacity",
    "Connections this process takes (STANZAD_MAX_CONNECTIONS; 0: unlimited); "
    "stanzad_cm_connections over it is the pod's share in use.",
)
FULL = Gauge(
    "stanzad_cm_full",
    "1 while this connection manager is full (from the placement high-water mark until below "
    "the low-water mark): /readyz fails, new streams are redirected when they can be.",
)
REDIRECTS = Counter(
    "stanzad_cm_redirects_total",
    "Streams sent elsewhere with see-other-host, by reason (load: this one is full, a new "
    "stream went to a less loaded one; shutdown: SIGTERM with STANZAD_SHUTDOWN_REDIRECT).",
    ["reason"],
)
FULL_ACCEPTED = Counter(
    "stanzad_cm_full_accepted_total",
    "New streams served although this connection manager was full, by reason "
    "(no_direct_addressing: redirects are off; no_target: no fresh peer with room).",
    ["reason"],
)
PLACEMENT_PEERS = Gauge(
    "stanzad_cm_placement_peers",
    "Load records of connection managers (this one included) the last heartbeat read "
    "(direct addressing only).",
)
PLACEMENT_TARGETS = Gauge(
    "stanzad_cm_placement_targets",
    "Of those, the connection managers a new stream could be redirected to then: fresh, "
    "another one, with a direct address and room.",
)
for _reason in ("load", "shutdown"):
    REDIRECTS.labels(_reason)
for _reason in ("no_direct_addressing", "no_target"):
    FULL_ACCEPTED.labels(_reason)
