"""Settings from environment variables, one frozen object per service.

Every variable has the prefix ``STANZAD_`` and a default that runs locally with no setup.
Invalid values stop the service at start with an error that names the variable.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Any, Final, TypeVar

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.xmpp import extdisco, sm
from shared.xmpp.server_iq import Contacts, parse_contact_addresses

ENV_PREFIX: Final = "STANZAD_"
KiB: Final = 1024


class ConfigError(Exception):
    """A setting is invalid; the message names the environment variable."""


class CommonSettings(BaseSettings):
    """Settings every service shares."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    domain: str = Field("localhost", description="The XMPP domain this cluster serves.")
    # virtual hosts (shared/store/domains.py): more account domains, from a file and from
    # the database (admin API), reloaded without a restart
    domains_file: str = Field(
        "", description="JSON file of more account domains and their settings "
        "({\"domains\": [{\"name\": ..., \"allow_registration\": ..., \"auth\": {...}}]})."
    )
    domains_reload_s: float = Field(
        30.0, gt=0, description="How often every service reloads the domains (a change made "
        "through the admin API or CLI is also announced on the bus at once)."
    )
    # The defaults are the ports of the local cluster (`make run`), chosen off the standard
    # 4222/6379 so that a system NATS or Redis never gets our data by accident.
    nats_url: str = Field(
        "nats://127.0.0.1:14222",
        description="NATS URL(s), comma-separated; may carry user:password@ credentials.",
    )
    nats_user: str = Field(
        "", description="NATS user of this service's role (shared/bus/permissions.py)."
    )
    nats_password: SecretStr = Field(SecretStr(""), description="That NATS user's password.")
    nats_tls_ca: str = Field(
        "",
        description="PEM file of the CA that signed NATS's certificate: connect with TLS and "
        "verify it (empty: TLS only for a tls:// URL or a server that requires it, verified "
        "against the system's trust store).",
    )
    nats_tls_cert: str = Field(
        "", description="PEM client certificate for NATS (when it asks for one: mutual TLS)."
    )
    nats_tls_key: str = Field("", description="That client certificate's private key.")
    redis_url: str = Field(
        "redis://127.0.0.1:16379/0",
        description="Redis URL, with this role's ACL user and password; rediss:// for TLS.",
    )
    redis_tls_ca: str = Field(
        "",
        description="PEM file of the CA that signed Redis's certificate (a rediss:// URL; "
        "empty: the system's trust store).",
    )
    durable: bool = Field(
        True,
        description="Durable delivery: the partitioned subjects on NATS JetStream streams "
        "(docs/architecture.md); false: core NATS, faster, a crash loses what is in flight.",
    )
    durable_deliveries: bool = Field(
        True,
        description="With STANZAD_DURABLE: the connection managers' deliveries and XEP-0198 "
        "queues on JetStream too, so a killed connection manager loses none "
        "(docs/architecture.md); false: core NATS for those.",
    )
    stream_replicas: int = Field(
        1, ge=1, le=5, description="Replicas of each JetStream stream (3 on a NATS cluster)."
    )
    stream_max_bytes: int = Field(
        1024**3, ge=1024 * 1024,
        description="Bytes each JetStream stream may hold; beyond, publishes are refused.",
    )
    stream_memory: bool = Field(
        False, description="JetStream streams in memory rather than files (tests)."
    )
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:15432/stanzad",
        description="PostgreSQL URL of the store of record (accounts, rosters, stored data).",
    )
    database_owner_url: str = Field(
        "",
        description="PostgreSQL URL of the role that owns the tables: when set, the service "
        "migrates at start as that role and runs as the role of STANZAD_DATABASE_URL; empty: "
        "migrates as the latter (shared/store/pg/roles.py).",
    )
    db_pool_size: int = Field(
        10, ge=1, le=1000, description="Most PostgreSQL connections one process opens."
    )
    db_timeout_s: float = Field(
        5.0, gt=0, description="PostgreSQL connect, pool wait and statement timeout."
    )
    partitions: int = Field(
        64, ge=1, le=4096, description="Routing partitions; the same on every service."
    )
    http_host: str = Field("127.0.0.1", description="Side port address for /metrics, /healthz.")
    http_port: int = Field(0, ge=0, le=65535, description="Side port; 0 picks a free port.")
    log_format: str = Field("text", pattern="^(text|json)$", description="text or json lines.")
    log_level: str = Field("INFO", description="Python logging level.")
    session_ttl_s: int = Field(
        15, ge=2, description="A connection manager's heartbeat key lives this long."
    )
    muc_domain: str = Field(
        "",
        description="Domain of the multi-user chat service (XEP-0045); empty: "
        "conference.<domain>; 'off': none.",
    )
    pubsub_domain: str = Field(
        "",
        description="Domain of the publish-subscribe service (XEP-0060); empty: "
        "pubsub.<domain>; 'off': none.",
)
    upload_domain: str = Field(
        "",
        description="Domain of the HTTP upload service (XEP-0363); empty: upload.<domain>; "
        "'off': none.",
    )
    components: SecretStr = Field(
        SecretStr(""),
        description="External components (XEP-0114) 'domain=secret,...': every service "
        "routes their domains to the gateway holding them; only the s2s gateway needs the "
        "secrets (elsewhere 'domain,...' is enough).",
    )
    contact_addresses: str = Field(
        "",
        description="XEP-0157 contact addresses in the server's disco#info: "
        "'field=uri,uri;field=uri', e.g. 'abuse-addresses=mailto:abuse@example.com'.",
    )
    gc_thresholds: str = Field(
        "20000,20,100",
        description="CPython's garbage collector thresholds (gc.set_threshold), three "
        "integers; see shared/runtime/gc_tuning.py.",
    )

    # XEP-0313 message archive (docs/operations.md "Message archive"): read by the
    # connection manager and the s2s gateway (stanza ids), routers (writes), roster (queries)
    mam_enabled: bool = Field(
        True, description="Archive messages (XEP-0313) and give them XEP-0359 stanza ids."
    )
    mam_default: str = Field(
        "always", pattern="^(always|never|roster)$",
        description="XEP-0441 default of accounts that set no preferences.",
    )
    mam_retention_days: int = Field(
        365, ge=0, description="Archived messages older than this are dropped (0: never)."
    )
    mam_max_messages_per_user: int = Field(
        100_000, ge=0, description="Newest messages kept per archive (0: no cap)."
    )
    mam_max_pending_rows: int = Field(
        100_000, ge=1,
        description="Archive rows a process queues while PostgreSQL fails; the oldest beyond.",
    )
    mam_write_linger_ms: float = Field(
        100.0, ge=0, le=5000,
        description="Archive rows wait this long to share one INSERT (and one commit).",
    )
    mam_maintenance_interval_s: float = Field(
        3600.0, gt=0, description="How often retention and caps are applied (roster service)."
    )

    @field_validator("contact_addresses")
    @classmethod
    def _check_contact_addresses(cls, value: str) -> str:
        parse_contact_addresses(value)
        return value

    @field_validator("gc_thresholds")
    @classmethod
    def _check_gc_thresholds(cls, value: str) -> str:
        parse_gc_thresholds(value)
        return value

    @field_validator("redis_tls_ca")
    @classmethod
    def _check_redis_tls(cls, value: str, info: ValidationInfo) -> str:
        if value and not str(info.data.get("redis_url", "")).startswith("rediss://"):
            raise ValueError("a Redis CA needs a rediss:// STANZAD_REDIS_URL")
        return value

    def nats_options(self) -> dict[str, Any]:
        """The keyword arguments of `shared.bus.client.Bus` for this service's identity:
        ``user``, ``password`` and ``tls`` (an SSL context when a CA or client certificate
        is set)."""
        from shared.tls.context import client_context

        tls = (client_context(self.nats_tls_ca, self.nats_tls_cert, self.nats_tls_key)
               if self.nats_tls_ca or self.nats_tls_cert else None)
        return {"user": self.nats_user, "password": self.nats_password.get_secret_value(),
                "tls": tls}

    @field_validator("components")
    @classmethod
    def _check_components(cls, value: SecretStr) -> SecretStr:
        parse_components(value.get_secret_value())
        return value

    @property
    def component_secrets(self) -> dict[str, str]:
        """The external components' domains and secrets ('' when not given here)."""
        return parse_components(self.components.get_secret_value())

    @property
    def contacts(self) -> Contacts:
        """`contact_addresses` parsed (XEP-0157)."""
        return parse_contact_addresses(self.contact_addresses)

    @property
    def gc_threshold_values(self) -> tuple[int, int, int]:
        return parse_gc_thresholds(self.gc_thresholds)

    @property
    def service_domains(self) -> dict[str, str]:
        """The local service domains this cluster serves, each mapped to the name of the
        service family that consumes its stanzas (shared/bus/destinations.py)."""
        found = dict.fromkeys(self.component_secrets, "component")
        for family, value, prefix in (("muc", self.muc_domain, "conference"),
                                      ("pubsub", self.pubsub_domain, "pubsub"),
                                      ("upload", self.upload_domain, "upload")):
            name = value.strip().lower() or f"{prefix}.{self.domain}"
            if name != "off":
                found[name] = family
        return found


class ConnectionManagerSettings(CommonSettings):
    """connection_manager: c2s listener, TLS, limits."""

    c2s_host: str = Field("127.0.0.1", description="c2s listen address.")
    c2s_port: int = Field(5222, ge=0, le=65535, description="c2s listen port (STARTTLS).")
    tls_cert: str = Field("var/tls/cert.pem", description="PEM certificate chain.")
    tls_key: str = Field("var/tls/key.pem", description="PEM private key.")
    tls_required: bool = Field(True, description="Refuse SASL before STARTTLS.")
    tls_certs_dir: str = Field(
        "", description="Directory of per-domain certificates chosen by SNI: <domain>/tls.crt "
        "and <domain>/tls.key (cert-manager Secrets mounted as volumes); empty: none.",
    )
    tls_reload_s: float = Field(
        10.0, gt=0, description="How often the certificate files are checked for changes "
        "(a changed one is loaded for new connections).",
    )
    # ---- other ways in (issue 22): direct TLS, WebSocket, BOSH; README "Ports" ----
    c2s_tls_port: int = Field(
        5223, ge=-1, le=65535,
        description="Direct TLS c2s port (XEP-0368, ALPN xmpp-client); 0: a free port, "
        "-1: off.",
    )
    c2s_http_port: int = Field(
        5280, ge=-1, le=65535,
        description="HTTP port of WebSocket (RFC 7395), BOSH (XEP-0206) and host-meta "
        "(XEP-0156); 0: a free port, -1: off.",
    )
    c2s_http_tls: bool = Field(
        False, description="Serve the HTTP port over TLS (wss://, https://) with the c2s "
        "certificate; off when an ingress terminates TLS.",
    )
    websocket_path: str = Field("/xmpp-websocket", description="WebSocket endpoint path.")
    bosh_path: str = Field("/http-bind", description="BOSH endpoint path.")
    public_http_url: str = Field(
        "",
        description="The HTTP port's URL as clients reach it (https://chat.example.org), for "
        "host-meta; empty: http(s)://<domain>:<port>.",
    )
    websocket_origins: str = Field(
        "",
        description="Origins (scheme://host[:port], comma-separated) whose browsers may open "
        "WebSocket and BOSH sessions; '*': any; empty: requests without an Origin only.",
    )
    http_trusted_proxies: str = Field(
        "",
        description="CIDR list of reverse proxies (ingress) whose X-Forwarded-For names the "
        "client and whose X-Forwarded-Proto: https counts as TLS; empty: none.",
    )
    websocket_redirect_uri: str = Field(
        "",
        description="ws(s):// URI sent as <close see-other-uri/> (RFC 7395 §3.6.1) to "
        "WebSocket clients on SIGTERM; empty: system-shutdown.",
    )
    http_max_request_bytes: int = Field(
        64 * KiB, ge=1 * KiB,
        description="Largest HTTP request head plus body (a BOSH body) accepted.",
    )
    bosh_wait_s: int = Field(
        60, ge=1, le=300, description="Longest a BOSH request is held (XEP-0124 'wait')."
    )
    bosh_inactivity_s: int = Field(
        60, ge=5,
        description="A BOSH session with no request for this long ends (XEP-0124 "
        "'inactivity').",
    )
    bosh_polling_s: int = Field(
        2, ge=0, le=60,
        description="Shortest interval between empty BOSH requests (XEP-0124 'polling', "
        "§11, §12): a client polling faster gets policy-violation; 0: no limit.",
    )
    bosh_maxpause_s: int = Field(
        120, ge=0, le=3600,
        description="Longest BOSH session pause a client may ask for (XEP-0124 'maxpause', "
        "§10); 0: no pauses.",
    )
    tls_session_tickets: int = Field(
        0, ge=0, le=8, description="TLS 1.3 session tickets sent after each full handshake."
    )
    tls_lean_sessions: bool = Field(
        False,
        description="Opt-in memory saver: when an idle TLS 1.3 session hibernates, free "
        "OpenSSL's session and protect its records in stanzad's own record layer (needs no "
        "session tickets).",
    )
    allow_registration: bool = Field(False, description="XEP-0077 in-band registration.")
    registrations_per_ip_per_hour: int = Field(
        5, ge=0,
        description="In-band registrations from one address (IPv6: /64) per hour, across the "
        "cluster; trusted networks are not counted; 0 = no limit.",
    )
    cm_id: str = Field("", description="Connection manager id; generated when empty.")
    embedded_router: bool = Field(
        False,
        description="Run a router in this process too (router settings from the same "
        "environment); stanzas between its own users then skip NATS.",
    )
    max_stanza_bytes: int = Field(256 * KiB, ge=1 * KiB, description="Stanza size after auth.")
    max_sessions_per_account: int = Field(10, ge=1, description="Resources bound per account.")
    scram_iterations: int = Field(10_000, ge=4096, description="SCRAM iterations for new users.")
    drain_timeout_s: float = Field(
        10.0, ge=0,
        description="Time to close streams on SIGTERM, and the longest a stopping connection "
        "manager waits for its detached XEP-0198 sessions to be resumed elsewhere.",
    )
    shutdown_redirect: str = Field(
        "", description="host:port sent as see-other-host on SIGTERM; empty: system-shutdown."
    )
    auth_timeout_s: float = Field(60.0, gt=0, description="Time to authenticate and bind.")
    max_write_buffer_bytes: int = Field(
        4 * 1024 * KiB, ge=64 * KiB, description="Unsent bytes per connection before it is closed."
    )
    # ---- edge limits (issue 4); README "Security and limits" lists them all ----
    # 64 KiB/s with a burst of one largest stanza (256 KiB): a client uploading an avatar or
    # a busy bot is not slowed, a flood of one session is (with the stanza rate below).
    max_inbound_bytes_per_s: int = Field(
        64 * KiB, ge=0, description="Bytes a connection may send per second; 0 = unlimited."
    )
    inbound_burst_bytes: int = Field(
        256 * KiB, ge=1 * KiB, description="Bytes a connection may send at once above the rate."
    )
    max_stanzas_per_s: float = Field(
        100.0, ge=0, description="Stanzas a session may send per second; 0 = unlimited."
    )
    stanza_burst: int = Field(200, ge=1, description="Stanzas a session may send at once.")
    max_connections_per_ip: int = Field(
        100, ge=0,
        description="Unauthenticated connections per source address (IPv6: /64); past it the "
        "address's oldest unauthenticated connection is closed; 0 = unlimited.",
    )
    max_connections: int = Field(
        200_000, ge=0,
        description="Open connections of this process (its capacity: more are refused with "
        "resource-constraint); 0 = unlimited.",
    )
    # ---- load-aware placement (shared/cluster/placement.py; docs/operations.md) ----
    placement_high_water: float = Field(
        0.9, gt=0, le=1,
        description="Fraction of max_connections from which this connection manager is full: "
        "its /readyz fails and, with direct addressing, new streams are sent to a less loaded "
        "one (see-other-host).",
    )
    placement_low_water: float = Field(
        0.0, ge=0, le=1,
        description="A full connection manager stays full until its connections are below "
        "this fraction of max_connections; 0: 0.05 under placement_high_water.",
    )
    c2s_direct_port: int = Field(
        -1, ge=-1, le=65535,
        description="c2s port (STARTTLS) that clients redirected here connect to; streams on "
        "it are never redirected; 0: a free port, -1: off (no direct addressing).",
    )
    c2s_public_address: str = Field(
        "",
        description="host[:port] at which clients reach this process's c2s_direct_port (a "
        "bare host gets that port); with it, a full connection manager redirects new streams "
        "to less loaded ones; empty: off.",
    )
    trusted_networks: str = Field(
        "", description="CIDR list of networks with their own per-address limits."
    )
    trusted_max_connections_per_ip: int = Field(
        0, ge=0, description="max_connections_per_ip for trusted networks; 0 = unlimited."
    )
    proxy_protocol_networks: str = Field(
        "",
        description="CIDR list of load balancers whose connections start with a PROXY "
        "protocol header (v1 or v2) naming the client; empty: none.",
    )
    keepalive_interval_s: float = Field(
        60.0, ge=0, description="Ping a session idle this long (XEP-0199); 0 = never."
    )
    keepalive_timeout_s: float = Field(
        30.0, gt=0, description="Close a pinged session that stays silent this long."
    )
    hibernate_after_s: float = Field(
        5.0, ge=0, description="Free an idle session's XML parser after this long; 0 = never."
    )
    # ---- login throttling (shared/store/auth_throttle.py; docs/operations.md) ----
    auth_pair_free_failures: int = Field(
        5, ge=0,
        description="Failed logins to one account from one address before delays start; "
        "0 = no delay.",
    )
    auth_pair_max_delay_s: float = Field(
        300.0, ge=0, description="Longest delay of one account from one address."
    )
    auth_account_free_failures: int = Field(
        20, ge=0,
        description="Failed logins to one account from anywhere before delays start; "
        "0 = no delay.",
    )
    auth_account_max_delay_s: float = Field(
        60.0, ge=0, description="Longest delay of one account from anywhere."
    )
    auth_delay_base_s: float = Field(
        1.0, gt=0, description="The first delay; each further failure doubles it."
    )
    auth_failure_reset_s: int = Field(
        900, ge=1, description="Failure counts are forgotten this long after the last failure."
    )
    auth_failure_answer_delay_s: float = Field(
        0.1, ge=0,
        description="A failure answer waits this long per failure from the address in the "
        "last minute.",
    )
    auth_failure_answer_max_delay_s: float = Field(
        3.0, ge=0, description="Longest wait of a failure answer."
    )
    auth_max_concurrent_per_ip: int = Field(
        10, ge=0,
        description="SASL exchanges in progress per address on this process; more wait; "
        "0 = unlimited.",
    )
    auth_block_failures_per_min: int = Field(
        100, ge=0,
        description="Failed logins from one address in a minute that block it; 0 = never.",
    )
    trusted_auth_block_failures_per_min: int = Field(
        0, ge=0, description="auth_block_failures_per_min for trusted networks; 0 = never."
    )
    auth_block_s: int = Field(60, ge=1, description="How long a blocked address stays blocked.")
    # ---- XEP-0198 stream management (README "Stream management") ----
    sm_enabled: bool = Field(True, description="Offer XEP-0198 stream management to clients.")
    sm_resume_timeout_s: int = Field(
        300, ge=0,
        description="How long a resumable session stays detached after its connection broke, "
        "when the client asks for no 'max'; 0 = no resumption.",
    )
    sm_max_resume_timeout_s: int = Field(
        600, ge=0, description="The longest resumption timeout a client's 'max' can get."
    )
    sm_max_unacked: int = Field(
        1000, ge=1,
        description="Stanzas written to a session and not yet acknowledged; past it the "
        "stream is closed with <policy-violation/> (a detached session ends).",
    )
    sm_ack_every: int = Field(
        5, ge=1, description="Ask for an ack (<r/>) once this many stanzas await one."
    )
    sm_ack_after_s: float = Field(
        10.0, gt=0, description="... and when unacknowledged stanzas have waited this long."
    )
    csi_enabled: bool = Field(True, description="Offer XEP-0352 client state indication.")
    # ---- SASL2, Bind2, FAST (README "Logging in") ----
    sasl2_enabled: bool = Field(
        True, description="Offer XEP-0388 SASL2 with XEP-0386 Bind2 (one round trip from the "
        "stream features to a bound session)."
    )
    fast_enabled: bool = Field(True, description="Offer XEP-0484 FAST tokens with SASL2.")
    fast_token_ttl_s: int = Field(
        14 * 86400, ge=60,
        description="How long a FAST token is valid; a login with one that has less than "
        "half of this left gets a new one.",
    )
    fast_token_secret: SecretStr = Field(
        SecretStr(""),
        description="The key FAST tokens are derived under (the database keeps only ids and "
        "hashes); empty: one random key kept in Redis, so losing Redis ends every token "
        "(clients fall back to their password).",
    )
    csi_max_held: int = Field(
        256, ge=1,
        description="Stanzas held for an inactive client (XEP-0352); when one more would "
        "not fit, everything held is written.",
    )
    sm_takeover_timeout_s: float = Field(
        2.0, gt=0,
        description="How long a <resume/> for a session of another connection manager waits "
        "for that one to hand it over; then <failed><item-not-found/></failed>.",
    )
    # ---- XEP-0215 external services (STUN/TURN for calls) ----
    external_services: str = Field(
        "",
        description="STUN/TURN services handed to clients (XEP-0215): 'type:host:port/transport"
        ",...' with type stun, turn, stuns or turns, e.g. 'stun:turn.example.com:3478/udp,"
        "turn:turn.example.com:3478/udp,turns:turn.example.com:5349/tcp'; empty: none.",
    )
    turn_secret: SecretStr = Field(
        SecretStr(""),
        description="The TURN REST API shared secret (coturn's static-auth-secret): TURN "
        "entries get time-limited credentials; empty: none offered.",
    )
    turn_credential_ttl_s: int = Field(
        86400, ge=60, description="How long TURN credentials handed out stay valid."
    )
    sm_location: str = Field(
        "",
        description="This pod's address for resumption, host:port ([IPv6]:port), sent as "
        "<enabled location/> (XEP-0198 §5); empty: no attribute (a resume works on any "
        "connection manager).",
    )

    @field_validator("trusted_networks", "proxy_protocol_networks", "http_trusted_proxies")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("placement_low_water")
    @classmethod
    def _check_low_water(cls, value: float, info: ValidationInfo) -> float:
        if value > info.data.get("placement_high_water", 1.0):
            raise ValueError("placement_low_water must not be above placement_high_water")
        return value

    @property
    def low_water(self) -> float:
        """placement_low_water, or its default: 0.05 under the high-water mark."""
        return self.placement_low_water or max(0.0, self.placement_high_water - 0.05)

    @field_validator("c2s_public_address")
    @classmethod
    def _check_public_address(cls, value: str, info: ValidationInfo) -> str:
        if value.strip() and info.data.get("c2s_direct_port", -1) < 0:
            raise ValueError("c2s_public_address needs c2s_direct_port: a redirect names only "
                             "a direct listener (no redirect loop)")
        return value.strip()

    @property
    def direct_addressing(self) -> bool:
        """Whether full connection managers redirect new streams (see-other-host)."""
        return bool(self.c2s_public_address) and self.c2s_direct_port >= 0

    @field_validator("sm_location")
    @classmethod
    def _check_sm_location(cls, value: str) -> str:
        return sm.check_location(value.strip())

    @field_validator("external_services")
    @classmethod
    def _check_external_services(cls, value: str) -> str:
        extdisco.parse_services(value)
        return value


class PartitionedSettings(CommonSettings):
    """Services that own partitions (router, presence, roster)."""

    lease_ttl_s: float = Field(6.0, ge=1.0, description="Partition lease lifetime.")


class RouterSettings(PartitionedSettings):
    """router: partition leases and the session cache."""

    router_id: str = Field("", description="Router id; generated when empty.")
    max_offline_messages: int = Field(
        100, ge=0, description="Messages stored per account while it is offline (XEP-0160)."
    )
    cache_size: int = Field(100_000, ge=0, description="Bare JIDs kept in the session cache.")
    cache_ttl_s: float = Field(30.0, ge=0, description="Session cache entry lifetime.")
    push_timeout_s: float = Field(
        10.0, gt=0, description="How long an XEP-0357 notification waits for the app server's "
        "answer before it is sent again.",
    )
    push_max_attempts: int = Field(
        3, ge=1, description="Attempts per XEP-0357 notification (the first included).",
    )


class PresenceSettings(PartitionedSettings):
    """presence: broadcast, probes, directed presence, offline delivery, the reaper."""

    presence_id: str = Field("", description="Presence service id; generated when empty.")


class RosterSettings(PartitionedSettings):
    """roster: jabber:iq:roster, subscriptions, versioning."""

    roster_id: str = Field("", description="Roster service id; generated when empty.")
    max_roster_items: int = Field(5000, ge=1, description="Roster items per account.")
    max_roster_name_bytes: int = Field(1023, ge=1, description="Item name and group length.")


class MucSettings(PartitionedSettings):
    """muc: multi-user chat rooms (XEP-0045) on the muc domain, by partition of the room."""

    muc_id: str = Field("", description="Muc service id; generated when empty.")
    muc_create_rooms: str = Field(
        "local", pattern="^(local|anyone)$",
        description="Who may create rooms: users of the main domain (local) or anyone.",
    )
    muc_max_rooms_per_user: int = Field(
        100, ge=0, description="Rooms one user may own (create); 0: no limit."
    )
    muc_max_occupants: int = Field(
        1000, ge=1, description="Occupants per room, whatever its configuration says."
    )
    muc_max_history: int = Field(
        50, ge=0, description="Groupchat messages kept per room for history on join."
    )
    muc_message_rate: float = Field(
        10.0, gt=0, description="Groupchat and private messages per second per occupant."
    )
    muc_message_burst: int = Field(
        30, ge=1, description="Messages an occupant may send at once before the rate applies."
    )
    muc_archive_default: bool = Field(
        True, description="New rooms keep a XEP-0313 archive (muc#roomconfig_enablearchiving"
        " changes it per room; nothing is archived when STANZAD_MAM_ENABLED is off).",
    )
    muc_remote_idle_s: float = Field(
        300.0, ge=0, description="A remote occupant silent this long is asked whether it is "
        "still there (disco#info); 0: never.",
    )
    muc_remote_timeout_s: float = Field(
        60.0, gt=0, description="A remote occupant that does not answer within this leaves "
        "its room (status 333).",
    )


class PubsubSettings(PartitionedSettings):
    """pubsub: XEP-0060 nodes on the pubsub domain and XEP-0163 PEP on every account."""

    pubsub_id: str = Field("", description="Pubsub service id; generated when empty.")
    pubsub_max_items: int = Field(
        1000, ge=1, description="Items one node keeps at most (pubsub#max_items 'max')."
    )
    pubsub_max_payload_bytes: int = Field(
        200_000, ge=1024, description="Largest item payload (XEP-0060 payload-too-big beyond)."
    )
    pubsub_max_nodes: int = Field(
        1000, ge=1, description="Nodes per account: PEP nodes, and nodes it creates on the "
        "pubsub domain."
    )
    pubsub_max_subscriptions: int = Field(
        100_000, ge=1, description="Subscriptions one node accepts."
    )
    pubsub_publish_rate: float = Field(
        20.0, gt=0, description="Publishes per second one account may make (burst: 5 s)."
    )
    pubsub_fanout_page: int = Field(
        1000, ge=1, le=100_000, description="Subscribers read per page when notifying."
    )


class AdminSettings(CommonSettings):
    """The admin API (services/admin) and the stanzad command-line tool."""

    admin_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token of the admin API; may be empty only on a loopback address.",
    )
    admin_host: str = Field("127.0.0.1", description="Admin API listen address.")
    admin_port: int = Field(9190, ge=0, le=65535, description="Admin API port; 0 picks one.")
    scram_iterations: int = Field(10_000, ge=4096, description="SCRAM iterations for new users.")
    scram_min_iterations: int = Field(
        4096, ge=4096, le=10_000_000,
        description="Lowest SCRAM iteration count accepted for imported keys.",
    )


class UploadSettings(PartitionedSettings):
    """upload: HTTP file upload (XEP-0363) on the upload domain, slots over XMPP, files over
    HTTP (docs/operations.md "HTTP upload")."""

    upload_id: str = Field("", description="Upload service id; generated when empty.")
    upload_http_host: str = Field("127.0.0.1", description="HTTP listen address (PUT, GET).")
    upload_http_port: int = Field(5281, ge=0, le=65535, description="HTTP listen port.")
    upload_public_url: str = Field(
        "",
        description="Base URL clients reach the HTTP listener at (https://upload.example.com, "
        "TLS by the ingress); empty: http://<upload_http_host>:<port>.",
    )
    upload_secret: SecretStr = Field(
        SecretStr(""),
        description="HMAC key of the signed URLs, the same on every upload pod; empty: one "
        "random key kept in Redis for the cluster.",
    )
    upload_max_file_bytes: int = Field(
        100 * 1024 * KiB, ge=1, description="Largest file (XEP-0363 max-file-size)."
    )
    upload_quota_bytes: int = Field(
        1024 * 1024 * KiB, ge=0, description="Bytes one account may keep stored; 0: no quota."
    )
    upload_put_ttl_s: int = Field(
        300, ge=10, description="How long a slot's PUT URL stays valid."
    )
    upload_retention_s: int = Field(
        30 * 86400, ge=60,
        description="How long an uploaded file (and its GET URL) lives; then it is deleted.",
    )
    upload_cleanup_interval_s: float = Field(
        600.0, gt=0, description="How often expired files and unused slots are removed."
    )
    upload_cors_origins: str = Field(
        "*", description="Origins browsers may PUT and GET from ('*', or a comma list)."
    )
    upload_storage: str = Field(
        "fs", pattern="^(fs|s3)$", description="fs (a directory) or s3 (S3-compatible store)."
    )
    upload_dir: str = Field("var/upload", description="Directory of the fs storage.")
    upload_s3_bucket: str = Field("", description="S3 bucket of the s3 storage.")
    upload_s3_endpoint: str = Field(
        "", description="S3 endpoint URL (MinIO, Ceph, moto...); empty: AWS's."
    )
    upload_s3_region: str = Field("us-east-1", description="S3 region.")
    upload_s3_access_key: SecretStr = Field(SecretStr(""), description="S3 access key id.")
    upload_s3_secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key.")


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S]) -> S:
    """Read settings from the environment; raise ConfigError naming the variable."""
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}")
        raise ConfigError("; ".join(problems)) from None


def load_or_exit(cls: type[S]) -> S:
    """`load`, printing the error and exiting with status 2 when it fails."""
    try:
        return load(cls)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


class S2SSettings(PartitionedSettings):
    """s2s_gateway: federation with other XMPP servers (RFC 6120, XEP-0220, XEP-0368)."""

    s2s_id: str = Field("", description="Gateway id; generated when empty.")
    s2s_host: str = Field("127.0.0.1", description="s2s listen address.")
    s2s_port: int = Field(5269, ge=0, le=65535, description="s2s listen port (STARTTLS).")
    s2s_direct_tls_port: int = Field(
        0, ge=0, le=65535,
        description="Direct TLS s2s listen port (XEP-0368, usually 5270); 0: none.",
    )
    tls_cert: str = Field("var/tls/cert.pem", description="PEM certificate chain of the domain.")
    tls_key: str = Field("var/tls/key.pem", description="PEM private key.")
    # certificates per domain, as the connection manager's (shared/tls/certs.py): inbound
    # by SNI, outbound the certificate of the local domain a stream speaks for (XEP-0178)
    tls_certs_dir: str = Field(
        "", description="Directory of per-domain certificates: <domain>/tls.crt and "
        "<domain>/tls.key (cert-manager Secrets mounted as volumes), presented inbound by SNI "
        "and outbound for that domain (SASL EXTERNAL); empty: none.",
    )
    tls_reload_s: float = Field(
        10.0, gt=0, description="How often the certificate files are checked for changes "
        "(a changed one is loaded for new handshakes).",
    )
    s2s_tls_required: bool = Field(True, description="Require STARTTLS on s2s, both ways.")
    s2s_dialback_secret: SecretStr = Field(
        SecretStr(""), description="XEP-0185 secret; empty: one random secret kept in Redis."
    )
    s2s_overrides: str = Field(
        "", description="Static routes 'domain=host:port,...' used instead of DNS."
    )
    s2s_connect_timeout_s: float = Field(
        15.0, gt=0, description="Time to resolve, connect and authenticate to a peer."
    )
    s2s_max_queue: int = Field(
        1000, ge=1,
        description="Stanzas queued per remote domain while connecting (or acks are due); "
        "beyond, bounced, or with durable delivery its partition is not pulled meanwhile.",
    )
    s2s_idle_timeout_s: float = Field(
        300.0, gt=0, description="Close an s2s stream after this long without traffic."
    )
    s2s_max_stanza_bytes: int = Field(
        512 * KiB, ge=1 * KiB, description="Stanza size limit on s2s streams."
    )
    s2s_max_stanzas_per_s: float = Field(
        500.0, gt=0, description="Inbound stanzas per second per s2s stream (reading pauses)."
    )

    s2s_max_connections_per_ip: int = Field(
        50, ge=0, description="Open inbound s2s connections per source address; 0 = unlimited."
    )
    s2s_connections_per_ip_per_min: int = Field(
        120, ge=0,
        description="New inbound s2s connections per source address per minute; 0 = unlimited.",
    )
    s2s_proxy_protocol_networks: str = Field(
        "",
        description="CIDR list of load balancers whose s2s connections start with a PROXY "
        "protocol header (v1 or v2); empty: none.",
    )
    s2s_stream_management: bool = Field(
        True, description="XEP-0198 acks on s2s streams (outbound when offered; inbound offered)."
    )
    s2s_sm_max_unacked: int = Field(
        1000, ge=1, description="Stanzas written but not yet acked per outbound s2s stream."
    )
    s2s_sm_ack_timeout_s: float = Field(
        30.0, gt=0, description="An unanswered XEP-0198 <r/> after this long: the stream is dead."
    )

    s2s_trusted_certs: str = Field(
        "", description="Self-signed certificates accepted per domain: 'domain=file.pem,...'."
    )
    s2s_dns_servers: str = Field(
        "", description="DNS servers for peer lookups 'host:port,...'; empty: the system's."
    )
    # ---- external components (XEP-0114): the listener runs when STANZAD_COMPONENTS names any
    component_host: str = Field("127.0.0.1", description="Component listen address.")
    component_port: int = Field(
        5347, ge=0, le=65535, description="Component listen port (XEP-0114, plain TCP)."
    )
    component_max_stanza_bytes: int = Field(
        256 * KiB, ge=1 * KiB, description="Stanza size limit on component streams."
    )
    component_max_stanzas_per_s: float = Field(
        500.0, gt=0, description="Stanzas per second per component stream (reading pauses)."
    )

    @field_validator("s2s_proxy_protocol_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("s2s_overrides")
    @classmethod
    def _check_overrides(cls, value: str) -> str:
        parse_overrides(value)
        return value

    @field_validator("s2s_trusted_certs")
    @classmethod
    def _check_trusted(cls, value: str) -> str:
        parse_trusted_certs(value)
        return value

    @field_validator("s2s_dns_servers")
    @classmethod
    def _check_dns(cls, value: str) -> str:
        parse_dns_servers(value)
        return value

    def dns_servers(self) -> list[tuple[str, int]]:
        return parse_dns_servers(self.s2s_dns_servers)

    def trusted_certs(self) -> dict[str, str]:
        return parse_trusted_certs(self.s2s_trusted_certs)

    def override_map(self) -> dict[str, tuple[str, int]]:
        return parse_overrides(self.s2s_overrides)


def parse_gc_thresholds(value: str) -> tuple[int, int, int]:
    """``"20000,20,100"`` → (20000, 20, 100), for `gc.set_threshold`; raises ValueError on
    anything else.  A first threshold of 0 turns the collector off (CPython's meaning)."""
    parts = [p.strip() for p in value.split(",")]
    # at most 9 digits each: gc.set_threshold takes C ints, and a larger value would fail
    # at startup with an OverflowError instead of here, naming the variable
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 9 for p in parts):
        raise ValueError(
            f"expected three integers from 0 to 999999999 like '20000,20,100': {value!r}"
        )
    first, second, third = (int(p) for p in parts)
    return first, second, third


def parse_networks(value: str) -> list[str]:
    """'10.0.0.0/8, 2001:db8::/32' -> the CIDR networks; raises ValueError on a bad one."""
    nets = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            nets.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"expected a CIDR network like 10.0.0.0/8, got {item!r}") from None
    return nets


def parse_overrides(value: str) -> dict[str, tuple[str, int]]:
    """'a.example=127.0.0.1:5270,b.example=[::1]:5269' -> {domain: (host, port)}."""
    routes: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        domain, sep, target = item.partition("=")
        host, colon, port = target.rpartition(":")
        if not sep or not colon or not domain.strip() or not host or not port.isdigit():
            raise ValueError(f"expected domain=host:port, got {item!r}")
        if not 0 < int(port) < 65536:
            raise ValueError(f"bad port in {item!r}")
        routes[domain.strip().lower()] = (host.strip("[]"), int(port))
    return routes


def parse_dns_servers(value: str) -> list[tuple[str, int]]:
    """'127.0.0.1:5353,[::1]:53,10.0.0.2' -> [(host, port)] (port 53 when left out)."""
    servers: list[tuple[str, int]] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else "53"
            if rest and not rest.startswith(":"):
                raise ValueError(f"expected host:port, got {item!r}")
        elif item.count(":") == 1:
            host, _, port = item.partition(":")
        else:
            host, port = item, "53"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {item!r}")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"a DNS server is an IP address, got {host!r}") from None
        servers.append((host, int(port)))
    return servers


def parse_trusted_certs(value: str) -> dict[str, str]:
    """'a.example=/etc/stanzad/a.pem,...' -> {domain: PEM file}."""
    certs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        domain, sep, path = item.partition("=")
        if not sep or not domain.strip() or not path.strip():
            raise ValueError(f"expected domain=file.pem, got {item!r}")
        certs[domain.strip().lower()] = path.strip()
    return certs


def parse_components(value: str) -> dict[str, str]:
    """'bot.example.com=secret,bridge.example.com=other' -> {domain: secret}; an entry
    without '=' names the domain only (a service that routes to it needs no secret)."""
    found: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        domain, _, secret = item.partition("=")
        domain = domain.strip().lower().rstrip(".")
        if not domain or "@" in domain or "/" in domain or " " in domain:
            raise ValueError(f"expected domain=secret, got a bad domain in {item.split('=')[0]!r}")
        if domain in found:
            raise ValueError(f"component {domain} given twice")
        found[domain] = secret.strip()
    return found
