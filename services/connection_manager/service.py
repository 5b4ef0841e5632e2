"""The connection manager: c2s listener, sessions of this pod, and the bus on both sides.

Stanzas from clients are parsed once (by the stream), stamped, and published in an envelope
to the routing partition of their recipient.  What the bus delivers for this pod's sessions
is written to their sockets as it is, with no parsing.

XEP-0198 sessions (README "Stream management"): what is written to them is kept until
acknowledged.  A resumable session whose connection breaks (no </stream:stream>) is
*detached*: it stays bound and available, what comes for it is held, and a <resume/> on a
new connection of this pod takes it over.  When its timeout passes it ends as a lost
connection does, and its unacknowledged stanzas go back to the router (`SM_UNACKED_ORIGIN`:
messages to offline storage, IQ requests bounced).  On SIGTERM every resumable session is
detached this way and handed over to the pod its client resumes on (`stop`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hmac
import logging
import os
import secrets
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from xml.sax.saxutils import quoteattr

import redis.asyncio as aioredis

from shared.bus import destinations, streams, subjects
from shared.bus.client import Bus, BusUnavailable
from shared.bus.envelope import (
    FANOUT_SEPARATOR,
    PUSH_ORIGIN,
    SM_UNACKED_ORIGIN,
    STANZA_KINDS,
    Envelope,
    Kind,
    decoded,
    session_event,
)
from shared.cluster.source_limits import Networks, SlotsPerSource, UnauthenticatedPerSource
from shared.cluster.vhosts import VirtualHosts
from shared.router import ingress
from shared.router.service import Router
from shared.runtime.metrics import (
    TLS_CERT_EXPIRY,
    TLS_DOMAIN_CERT_EXPIRY,
    HistogramTally,
    Tally,
)
from shared.runtime.settings import ConnectionManagerSettings, RouterSettings, load_or_exit
from shared.store import keys
from shared.store.accounts import AccountExists, AccountStore
from shared.store.auth_throttle import AuthThrottleStore, LoginCheck, Progressive
from shared.store.domains import VirtualHost
from shared.store.fast_tokens import FastTokenStore
from shared.store.pg.database import Database, DatabaseUnavailable
from shared.store.redis import connect as redis_connect
from shared.store.sessions import SessionLimitReached, SessionRecord, SessionStore
from shared.store.sm_facts import SmFactsStore
from shared.tls.binding import server_end_point_of_file
from shared.tls.certs import DomainCertificates
from shared.tls.context import certificate_expiry, ensure_self_signed, server_context
from shared.tls.keylog import KeyLog
from shared.xmpp import archive, extdisco, fast, ns, pubsub, server_iq, sm
from shared.xmpp import credentials as creds_mod
from shared.xmpp.c2s import AuthSucceeded, SMEnabled, StanzaIn, StreamConfig
from shared.xmpp.errors import StanzaError, StanzaErrorCondition, StreamErrorCondition
from shared.xmpp.jid import JID, JIDError, bare_of, domain_of
from shared.xmpp.parser import parse_fragment, serialize
from shared.xmpp.sasl_delegated import PASSWORD_MECHANISMS, TOKEN_MECHANISMS
from shared.xmpp.stanza import iq_result, local_name, must_not_bounce, split_stanzas, with_to

from . import metrics
from .account import InBand, is_register_query
from .auth_backends import Backend, Backends
from .bosh import BoshSessions
from .connection import C2SConnection
from .http import HttpEdge

log = logging.getLogger(__name__)

MAX_HOPS = 2
SERVICE = "connection_manager"
ALPN_CLIENT: Final = "xmpp-client"  # XEP-0368 §3


class ConnectionManager:
    name = SERVICE

    def __init__(self, settings: ConnectionManagerSettings) -> None:
        self.settings = settings
        self.cm_id = settings.cm_id or f"cm-{secrets.token_hex(4)}"
        self.domain = settings.domain  # the main domain; streams serve every virtual host
        self.service_domains = settings.service_domains  # rooms, nodes: their services
        self.destinations = destinations.of(settings)
        self.stream_config = StreamConfig(
            domain=settings.domain,
            tls_available=True,
            tls_required=settings.tls_required,
            allow_registration=settings.allow_registration,
            max_stanza_bytes=settings.max_stanza_bytes,
            stream_management=settings.sm_enabled,
            client_state=settings.csi_enabled,
            sm_resume_s=settings.sm_resume_timeout_s,
            sm_resume_max_s=max(settings.sm_max_resume_timeout_s, settings.sm_resume_timeout_s),
            sm_location=settings.sm_location,
            sm_deferred_acks=settings.durable,  # 'h' counts stored stanzas only
            hosts=self._host_config,
            sasl2=settings.sasl2_enabled,
            fast=settings.sasl2_enabled and settings.fast_enabled,
        )
        self._host_configs: dict[tuple[str, bool], tuple[VirtualHost, StreamConfig]] = {}
        # what the server's own answers tell (XEP-0012 uptime, XEP-0157, XEP-0077 in band)
        self.server_info = server_iq.ServerInfo(
            time.time(), settings.contacts, in_band=True,
            external=extdisco.Config(extdisco.parse_services(settings.external_services),
                                     settings.turn_secret.get_secret_value().encode(),
                                     settings.turn_credential_ttl_s),
        )
        self.connections: set[C2SConnection] = set()
        self.sessions: dict[str, C2SConnection] = {}  # full JID -> connection
        self.resumable: dict[str, C2SConnection] = {}  # XEP-0198 id -> connection (or detached)
        self.detached: set[C2SConnection] = set()
        metrics.SM_UNACKED.set_function(
            lambda: sum(len(c.stream.sm.queue) for c in self._sm_sessions())
        )
        metrics.SM_LONGEST_QUEUE.set_function(
            lambda: max((len(c.stream.sm.queue) for c in self._sm_sessions()), default=0)
        )
        metrics.SM_ACKS_OUTSTANDING.set_function(
            lambda: sum(1 for c in self.sessions.values() if c._ack_asked)
        )
        # WebSocket and BOSH streams: no STARTTLS inside them (RFC 7395 §3.7, XEP-0206)
        self.ws_stream_config = dataclasses.replace(self.stream_config, tls_available=False)
        self.http_edges: set[HttpEdge] = set()  # HTTP connections not (yet) streams
        self.http_proxies = Networks(settings.http_trusted_proxies)
        self._origins = frozenset(
            o.strip().rstrip("/").lower() for o in settings.websocket_origins.split(",")
            if o.strip()
        )
        self.bosh = BoshSessions(self)
        self.tls_context: ssl.SSLContext | None = None
        # certificates per domain, chosen by SNI (shared/tls/certs.py)
        self.domain_certs = DomainCertificates(
            settings.tls_certs_dir, self._configured_context,
            lambda domain, expiry: TLS_DOMAIN_CERT_EXPIRY.labels(SERVICE, domain).set(expiry))
        self._cert_stamp: tuple[float, float] | None = None
        # lean TLS sessions need the secrets, which come only with no tickets after them
        self.tls_keylog: KeyLog | None = (
            KeyLog() if settings.tls_lean_sessions and not settings.tls_session_tickets
            else None
        )
        self.port = 0
        self.c2s_address = ""  # "host:port" once listening
        self._redis = redis_connect(settings.redis_url, settings.redis_tls_ca)
        self.store = SessionStore(self._redis, SERVICE)
        self.in_band = InBand(self)  # XEP-0077 on authenticated streams, registration limits
        self.sm_facts = SmFactsStore(self._redis, SERVICE)
        # XEP-0198 take-overs (docs/architecture.md "Stream management"): answers awaited
        # by token; deliveries held for a full JID whose take-over is being committed; full
        # JIDs handed over to another connection manager -> its id (stale routes forwarded)
        self._takeovers: dict[str, asyncio.Future[Envelope]] = {}
        self._arriving: dict[str, list[Envelope]] = {}
        self.handed_over: dict[str, str] = {}
        # per-address limits count what is suspicious (docs/operations.md "Per-address
        # limits"): unauthenticated connections, failed logins; trusted networks have theirs
        self.trusted = Networks(settings.trusted_networks)
        self.proxies = Networks(settings.proxy_protocol_networks)  # may send PROXY headers
        self.unauthenticated: UnauthenticatedPerSource[C2SConnection] = (
            UnauthenticatedPerSource(settings.max_connections_per_ip, self.trusted,
                                     settings.trusted_max_connections_per_ip)
        )
        self.sasl_slots: SlotsPerSource[C2SConnection] = SlotsPerSource(
            settings.auth_max_concurrent_per_ip
        )
        # the store of record; opened (and migrated) by start()
        self.db = Database(settings.database_url, SERVICE, size=settings.db_pool_size,
                           timeout_s=settings.db_timeout_s, owner_url=settings.database_owner_url)
        self.accounts = AccountStore(self.db, SERVICE)
        # the account domains served (shared/cluster/vhosts.py), kept current in destinations
        self.vhosts = VirtualHosts(settings, self.db, self.destinations)
        self.fast_tokens = FastTokenStore(self.db)  # XEP-0484
        self._fast_secret: bytes = settings.fast_token_secret.get_secret_value().encode()
        self.tls_end_point: bytes | None = None  # RFC 5929 tls-server-end-point of our cert
        self.vhosts.listeners.append(self._hosts_changed)
        # the token and HTTP backends of the domains that use one (auth_backends.py)
        self.auth_backends = Backends()
        self.auth_throttle = AuthThrottleStore(
            self._redis, self.accounts, SERVICE,
            pair=Progressive(settings.auth_pair_free_failures, settings.auth_delay_base_s,
                             settings.auth_pair_max_delay_s),
            account=Progressive(settings.auth_account_free_failures,
                                settings.auth_delay_base_s, settings.auth_account_max_delay_s),
            reset_s=settings.auth_failure_reset_s,
            block_per_min=settings.auth_block_failures_per_min,
            block_s=settings.auth_block_s,
        )
        self.bus = Bus(settings.nats_url, SERVICE, self._on_bus_batch,
                       fail_while_disconnected=True, durable=settings.durable,
                       limits=streams.limits_of(settings), **settings.nats_options())
        self._last_ts_us = 0  # strictly increasing: (origin, ts_us) names a client stanza
        self._server: asyncio.Server | None = None
        self._servers: list[asyncio.Server] = []  # direct TLS, HTTP
        self.tls_port = 0
        self.http_port = 0
        # STANZAD_EMBEDDED_ROUTER: a router in this process; what its partitions and our
        # subject carry between the two skips NATS (shared/bus/local.py)
        self.router: Router | None = None
        if settings.embedded_router:
            router_settings = load_or_exit(RouterSettings)  # names a bad STANZAD_ variable
            self.router = Router(router_settings.model_copy(
                update={"router_id": router_settings.router_id or f"{self.cm_id}-router"}
            ))
        self._heartbeat: asyncio.Task[None] | None = None
        self._watchers: list[asyncio.Task[None]] = []  # virtual hosts, certificate files
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._forwarding_until = 0.0  # stopping: stale routes to forward until then

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.db.start()  # not ready until it is open; logins fail meanwhile
        if ensure_self_signed(s.tls_cert, s.tls_key, s.domain):
            log.info("wrote a self-signed certificate for %s to %s", s.domain, s.tls_cert)
        self.domain_certs.load()  # a missing or expired one stops the start, named
        self.tls_context = self._tls_context()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_tls)
        self._watchers.append(asyncio.create_task(self._watch_certificates()))
        if self.router is not None:
            await self.router.start()
        await self.bus.connect()
        self._watchers.append(asyncio.create_task(self.vhosts.run(self.bus)))
        own = subjects.connection_manager(self.cm_id)
        await self.bus.subscribe(own)
        await self.bus.flush()
        self.bus.offer_local(own)  # this pod alone consumes its subject
        try:
            await self.store.heartbeat(self.cm_id, s.session_ttl_s)
        except Exception as exc:  # Redis not there yet: the heartbeat loop keeps trying
            log.warning("first heartbeat failed: %s", exc)
        self._heartbeat = asyncio.create_task(self._beat())
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: C2SConnection(self), s.c2s_host, s.c2s_port, backlog=1024, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.c2s_address = f"{s.c2s_host}:{self.port}"
        try:  # `stanzad status` shows where it listens
            await self.store.heartbeat(self.cm_id, s.session_ttl_s, self.c2s_address)
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc)
        log.info("%s listening for c2s on %s:%d (domain %s)", self.cm_id, s.c2s_host, self.port,
                 s.domain)
        if s.c2s_tls_port >= 0:  # XEP-0368 direct TLS
            server = await loop.create_server(
                lambda: C2SConnection(self, "tls"), s.c2s_host, s.c2s_tls_port, backlog=1024,
                reuse_address=True,
            )
            self._servers.append(server)
            self.tls_port = server.sockets[0].getsockname()[1]
            log.info("%s listening for direct TLS c2s on %s:%d (ALPN %s)", self.cm_id,
                     s.c2s_host, self.tls_port, ALPN_CLIENT)
        if s.c2s_http_port >= 0:  # RFC 7395 WebSocket, XEP-0206 BOSH, XEP-0156 host-meta
            server = await loop.create_server(
                lambda: HttpEdge(self), s.c2s_host, s.c2s_http_port, backlog=1024,
                reuse_address=True,
                ssl=server_context(s.tls_cert, s.tls_key) if s.c2s_http_tls else None,
            )
            self._servers.append(server)
            self.http_port = server.sockets[0].getsockname()[1]
            scheme = "wss" if s.c2s_http_tls else "ws"
            log.info("%s listening for WebSocket on %s://%s:%d%s, BOSH on %s, host-meta on "
                     "/.well-known/host-meta", self.cm_id, scheme, s.c2s_host, self.http_port,
                     s.websocket_path, s.bosh_path)

    async def _watch_certificates(self) -> None:
        """Certificates replaced on disk (cert-manager renewing a Secret, a deploy) are
        loaded for new connections without a restart or a SIGHUP."""
        while True:
            await asyncio.sleep(self.settings.tls_reload_s)
            changed = bool(self.domain_certs.refresh())
            if changed or self._stamp() != self._cert_stamp:
                self.reload_tls()

    def _stamp(self) -> tuple[float, float] | None:
        s = self.settings
        try:
            return (os.stat(s.tls_cert).st_mtime, os.stat(s.tls_key).st_mtime)
        except OSError:
            return None

    def reload_tls(self) -> None:
        """SIGHUP: load the certificate and key again; new STARTTLS handshakes use them."""
        s = self.settings
        try:
            self.domain_certs.refresh()
            self.tls_context = self._tls_context()
        except Exception as exc:
            log.error("TLS reload failed, keeping the old certificate: %s", exc)
            return
        log.info("reloaded the TLS certificate from %s", s.tls_cert)

    def _tls_context(self) -> ssl.SSLContext:
        """The c2s server context; its TLS 1.3 secrets go to `tls_keylog` for lean sessions
        (STANZAD_TLS_LEAN_SESSIONS, shared/tls/session.py).  A handshake whose SNI names a
        domain of STANZAD_TLS_CERTS_DIR switches to that domain's context."""
        s = self.settings
        self._cert_stamp = self._stamp()
        ctx = self._configured_context(s.tls_cert, s.tls_key, keylog=False)
        TLS_CERT_EXPIRY.labels(SERVICE).set(certificate_expiry(s.tls_cert))
        self.tls_end_point = server_end_point_of_file(s.tls_cert)  # RFC 5929 §4
        if self.tls_keylog is not None and not self.tls_keylog.attach(ctx):
            self.tls_keylog.close()
            self.tls_keylog = None
        self.domain_certs.install(ctx)
        return ctx

    def _configured_context(self, cert: str, key: str, keylog: bool = True) -> ssl.SSLContext:
        ctx = server_context(cert, key, session_tickets=self.settings.tls_session_tickets)
        # XEP-0368 §3: direct TLS clients may ask for ALPN "xmpp-client" (so that 443 can be
        # shared behind an SNI/ALPN router); one without ALPN, or STARTTLS, is served alike
        ctx.set_alpn_protocols([ALPN_CLIENT])
        if keylog and self.tls_keylog is not None:
            self.tls_keylog.attach(ctx)
        return ctx

    @property
    def stopping(self) -> bool:
        return self._stopping

    def origin_allowed(self, origin: str) -> bool:
        """A browser's Origin may open WebSocket and BOSH sessions (STANZAD_WEBSOCKET_ORIGINS;
        RFC 6455 §10.2: the server decides)."""
        return "*" in self._origins or origin.strip().rstrip("/").lower() in self._origins

    def public_urls(self) -> tuple[str, str]:
        """(WebSocket URL, BOSH URL) as clients reach them, for host-meta (XEP-0156)."""
        s = self.settings
        base = s.public_http_url.rstrip("/")
        if not base:
            scheme = "https" if s.c2s_http_tls else "http"
            base = f"{scheme}://{self.domain}:{self.http_port}"
        ws = ("wss" if base.startswith("https") else "ws") + base[base.index(":"):]
        return ws + s.websocket_path, base + s.bosh_path

    def healthy(self) -> bool:
        return not self._stopping or bool(self.connections or self.detached)

    def ready(self) -> bool:
        router_ready = self.router is None or self.router.ready()
        return (self._server is not None and self.bus.connected and not self._stopping
                and router_ready and self.db.up)

    async def stop(self) -> None:
        """Drain (SIGTERM): stop accepting; resumable XEP-0198 sessions are detached (their
        TCP connections closed without </stream:stream>) and handed over to the pods their
        clients resume on, until every one was taken or the drain timeout passed; every
        other stream is closed with system-shutdown (or see-other-host).  Then what is left
        ends (unacknowledged messages to offline storage), unbind, retire."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for server in self._servers:
            server.close()
        for edge in list(self.http_edges):  # requests not yet streams: nothing to keep
            if not edge._busy:
                edge.close()
        redirect = self.settings.shutdown_redirect
        for conn in list(self.connections):
            if self._resumable_session(conn):
                conn.hang_up()  # detached by connection_closed: another pod may take it
            elif redirect or (conn.kind == "websocket" and self.settings.websocket_redirect_uri):
                # RFC 6120 §4.9.3.19: reconnect there (WebSocket: RFC 7395 §3.6.1's URI)
                conn.close(StreamErrorCondition.SEE_OTHER_HOST, content=redirect)
            else:
                conn.close(StreamErrorCondition.SYSTEM_SHUTDOWN)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout_s
        while (self.connections or self._background or self.detached
               or loop.time() < self._forwarding_until):
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        if self.detached:
            log.info("drain timeout: %d detached sessions end here", len(self.detached))
        for conn in list(self.detached):  # not resumed in time: their queues go offline
            self.expire(conn)
        if self._background:  # the unbinds just spawned
            await asyncio.wait(set(self._background), timeout=FINAL_WRITES_S)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for task in self._watchers:
            task.cancel()
        await self.auth_backends.close()
        try:
            await self.store.retire(self.cm_id)
        except Exception as exc:
            log.warning("could not retire %s: %s", self.cm_id, exc)
        await self.bus.close()
        await self._redis.aclose()
        await self.db.close()
        if self.tls_keylog is not None:
            self.tls_keylog.close()  # a handshake after this just stays on OpenSSL
        if self.router is not None:  # after the drain: the streams' last stanzas pass it
            await self.router.stop()

    def _resumable_session(self, conn: C2SConnection) -> bool:
        """A bound session with resumption enabled, the one its full JID names here."""
        queue, jid = conn.stream.sm, conn.stream.jid
        return (queue is not None and queue.resumable and jid is not None
                and conn.record is not None and not conn.stream.closed and not conn.replaced
                and self.sessions.get(str(jid)) is conn)

    async def _beat(self) -> None:
        interval = max(1.0, self.settings.session_ttl_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.heartbeat(self.cm_id, self.settings.session_ttl_s,
                                           self.c2s_address)
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- authentication and binding --------------------------------------------------------

    def _host_config(self, domain: str, base: StreamConfig) -> StreamConfig | None:
        """The stream configuration of a virtual host (None: not served here): ``base``
        (the transport's) with the host's domain, registration and SASL mechanisms."""
        host = self.vhosts.get(domain)
        if host is None:
            return None
        key = (domain, base.tls_available)
        known = self._host_configs.get(key)
        if known is not None and known[0] is host:
            return known[1]
        backend = host.backend
        config = dataclasses.replace(
            base, domain=domain,
            allow_registration=host.registration(self.settings.allow_registration),
            auth_backend=backend,
            # SCRAM only where the keys are stored; elsewhere the secret goes to the backend
            mechanisms=(base.mechanisms if backend == "internal"
                        else TOKEN_MECHANISMS if backend == "token" else PASSWORD_MECHANISMS),
            # SASL2 and FAST only where the keys are stored: a FAST token must not outlive
            # the platform's say on the account (its backend is asked at every login)
            sasl2=base.sasl2 and backend == "internal",
            fast=base.fast and backend == "internal",
        )
        if len(self._host_configs) > 4 * len(self.vhosts.hosts) + 16:  # removed hosts
            self._host_configs.clear()
        self._host_configs[key] = (host, config)
        return config

    def backend_of(self, domain: str) -> Backend | None:
        """The backend that checks the secrets of ``domain`` (None: its stored keys)."""
        host = self.vhosts.get(domain)
        if host is None or host.backend == "internal":
            return None
        return self.auth_backends.for_host(domain, host, host.auth)

    def creates_accounts(self, domain: str) -> bool:
        """Whether a user the backend of ``domain`` authenticates gets an account here on
        the first login (the domain's ``create_accounts``)."""
        host = self.vhosts.get(domain)
        return host is not None and bool(host.auth.get("create_accounts", False))

    async def create_external_account(self, username: str, domain: str) -> None:
        """The account of a user of the platform's identity system, on the first login:
        random SCRAM keys (no password works here; the backend stays the judge)."""
        bare = f"{username}@{domain}"
        try:
            await self.accounts.create(bare, creds_mod.unusable_credentials())
        except AccountExists:
            return  # a concurrent first login made it
        self.account_changed(bare)
        log.info("created the account of a user of %s on the first login", domain)

    def _hosts_changed(self, hosts: dict[str, VirtualHost]) -> None:
        """Domains removed: their streams end (RFC 6120 §4.9.3.5 host-gone), their
        backends go."""
        self.auth_backends.forget(set(hosts))
        for conn in list(self.connections):
            domain = conn.stream.config.domain
            if domain not in hosts:
                conn.close(StreamErrorCondition.HOST_GONE, "this domain is no longer served")

    async def lookup_login(self, source: str, username: str, domain: str = "") -> LoginCheck:
        """What a SASL attempt needs, in one round trip: the throttling lock it waits for,
        if any (XEP-0205 §3), and the account's keys (None: no such account)."""
        return await self.auth_throttle.lookup(source, f"{username}@{domain or self.domain}")

    async def _fast_key(self) -> bytes:
        """The key FAST tokens are derived under: configured, or the cluster's random one
        (created once, in Redis)."""
        if not self._fast_secret:
            await self._redis.set(keys.fast_token_secret(), secrets.token_hex(32), nx=True)
            stored = await self._redis.get(keys.fast_token_secret())
            if stored is None:
                raise RuntimeError("the FAST key vanished from Redis")
            self._fast_secret = bytes(stored)
        return self._fast_secret

    async def fast_tokens_for(self, username: str, client_id: str) -> list[fast.StoredToken]:
        """XEP-0484: the tokens of a client of the account, derived again from their ids; a
        row whose hash does not match (another key) is skipped."""
        rows = await self.fast_tokens.load(f"{username}@{self.domain}", client_id)
        if not rows:
            return []
        key = await self._fast_key()
        found = []
        for row in rows:
            token = fast.derive_token(key, row.token_id)
            if hmac.compare_digest(fast.token_hash(token), row.token_hash):
                found.append(fast.StoredToken(row.slot, row.mechanism, token,
                                              row.expires_at.timestamp()))
        return found

    async def fast_after_login(self, event: AuthSucceeded) -> tuple[str, str] | None:
        """XEP-0484 §4.3-§4.6 after a SASL2 login: the used token's rotation (a "new" one
        becomes "current"; one past half its life is replaced), invalidation, and a token
        asked for; the token to put in <success/> (token, XEP-0082 expiry) or None.  A store
        failure costs the token, never the login."""
        request = event.sasl2
        if request is None or not self.stream_config.fast or not request.user_agent_id:
            return None
        owner = f"{event.username}@{self.domain}"
        client = request.user_agent_id
        used = event.token
        mechanism = request.request_token
        try:
            if used is not None:
                if request.fast_invalidate:
                    await self.fast_tokens.revoke(owner, client)
                    metrics.FAST_TOKENS.labels("invalidated").inc()
                elif used.slot == fast.NEW:
                    await self.fast_tokens.promote(owner, client)
                elif (mechanism is None and used.expires_at - time.time()
                      < self.settings.fast_token_ttl_s / 2):
                    mechanism = used.mechanism  # §4.5: due for rotation
                    metrics.FAST_TOKENS.labels("rotated").inc()
            if mechanism is None:
                return None
            token_id = secrets.token_bytes(16)
            token = fast.derive_token(await self._fast_key(), token_id)
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
                seconds=self.settings.fast_token_ttl_s)
            await self.fast_tokens.put(owner, client, mechanism, token_id,
                                       fast.token_hash(token), expires, request.user_agent)
        except Exception as exc:
            log.warning("FAST token store failed: %s", exc)
            return None
        metrics.FAST_TOKENS.labels("issued").inc()
        return token, expires.strftime("%Y-%m-%dT%H:%M:%SZ")

    def failure_answer_delay(self, source_failures: int) -> float:
        """How long a failed login's answer waits: longer the more the address failed in
        the last minute (``source_failures``, this one included)."""
        s = self.settings
        return min(s.auth_failure_answer_max_delay_s,
                   s.auth_failure_answer_delay_s * source_failures)

    def block_rate(self, source: str) -> int:
        """Failed logins a minute that block the address (trusted networks: their own)."""
        s = self.settings
        if source in self.trusted:
            return s.trusted_auth_block_failures_per_min
        return s.auth_block_failures_per_min

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    def account_changed(self, bare: str) -> None:
        """Routers cache whether an account exists: tell them (created, removed)."""
        self._session_event(bare, 0)

    async def register(self, username: str, password: str, source: str = "",
                       domain: str = "") -> StanzaError | None:
        """XEP-0077 §3.1 registration of a new account, at most
        ``registrations_per_ip_per_hour`` from one address."""
        try:
            jid = JID.parse(f"{username}@{domain or self.domain}")
        except JIDError:
            return StanzaError(StanzaErrorCondition.JID_MALFORMED)
        try:
            allowed = await self.in_band.may_register(source)
        except Exception as exc:
            log.warning("registration rate lookup failed: %s", exc)
            return StanzaError(StanzaErrorCondition.RESOURCE_CONSTRAINT)
        if not allowed:
            metrics.IN_BAND.labels("register", "limited").inc()
            log.info("refused an in-band registration from %s: over %d an hour", source,
                     self.settings.registrations_per_ip_per_hour)
            return StanzaError(StanzaErrorCondition.RESOURCE_CONSTRAINT,
                               "too many registrations from your address; try again later")
        try:
            creds = await asyncio.to_thread(
                creds_mod.derive_credentials, password, self.settings.scram_iterations
            )
        except ValueError:
            return StanzaError(StanzaErrorCondition.NOT_ACCEPTABLE, "unusable password")
        try:
            await self.accounts.create(jid.bare_str, creds)
        except AccountExists:
            return StanzaError(StanzaErrorCondition.CONFLICT)
        except DatabaseUnavailable as exc:  # never a hang: RFC 6120 §8.3.3.8
            log.warning("registration failed: %s", exc)
            return StanzaError(StanzaErrorCondition.RESOURCE_CONSTRAINT)
        self.account_changed(jid.bare_str)  # a router may have cached "no account"
        metrics.IN_BAND.labels("register", "ok").inc()
        log.info("registered a new account in band")
        return None

    async def bind(self, conn: C2SConnection, resource: str | None, carbons: bool = False
                   ) -> JID | StanzaError:
        """RFC 6120 §7: bind in Redis (atomically), replacing an older session of the JID;
        `carbons`: with XEP-0280 on from the start (XEP-0386 §3.2)."""
        assert conn.stream.username is not None
        bare = JID(conn.stream.username, conn.stream.config.domain, None)
        try:
            full = bare.with_resource(resource or secrets.token_hex(8))
        except JIDError:  # a Bind2 tag and suffix too long together
            full = bare.with_resource(secrets.token_hex(8))
        record = SessionRecord(self.cm_id, conn.session_id, 0, False, carbons)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            result = await self.store.bind(
                str(full), record, self.settings.max_sessions_per_account, conn.peer
            )
        except SessionLimitReached:
            return StanzaError(StanzaErrorCondition.RESOURCE_CONSTRAINT, "too many sessions")
        except Exception as exc:
            log.warning("bind failed: %s", exc)
            return StanzaError(StanzaErrorCondition.INTERNAL_SERVER_ERROR)
        _BIND_LATENCY.observe(loop.time() - started)
        if conn.transport is None or conn.transport.is_closing():
            self._spawn(self.store.unbind(str(full), record))
            return StanzaError(StanzaErrorCondition.GONE)
        conn.record = record
        old_local = self.sessions.get(str(full))
        self.sessions[str(full)] = conn
        metrics.SESSIONS.set(len(self.sessions))
        if old_local is not None and old_local is not conn:
            if old_local.detached is not None:  # XEP-0198: no <resume/> for it any more
                self.expire(old_local, replaced=True)
            old_local.close(StreamErrorCondition.CONFLICT, "replaced by a new session")
        elif result.replaced is not None and result.replaced.cm_id != self.cm_id:
            kick = Envelope(Kind.KICK, to=str(full), from_="", id=result.replaced.session_id)
            await self._publish(subjects.connection_manager(result.replaced.cm_id), kick)
        self._session_event(bare.bare_str, result.version)
        return full

    def connection_closed(self, conn: C2SConnection) -> None:
        """The connection is gone: the session ends, or waits detached for a <resume/>
        (XEP-0198 §5: the stream broke without </stream:stream> from either side)."""
        if conn.replaced:
            return
        jid = conn.stream.jid
        if jid is None or conn.record is None:
            return
        queue = conn.stream.sm
        if queue is not None and self._resumable_session(conn):
            conn.detached = asyncio.get_running_loop().call_later(
                queue.max_s, self.expire, conn
            )
            self.detached.add(conn)
            metrics.SM_DETACHED.set(len(self.detached))
            self._spawn(self._write_facts(conn, detached=True))
            log.info("session detached for %d s, %d stanzas unacknowledged", queue.max_s,
                     queue.unacked)
            return
        self.end_session(conn)

    def expire(self, conn: C2SConnection, *, replaced: bool = False) -> None:
        """A detached session's resumption timeout passed (or it held too much, or a new
        bind took its full JID: ``replaced``): it ends."""
        if not self._undetach(conn):
            return
        metrics.SM_TIMEOUTS.inc()
        self.end_session(conn, replaced=replaced)

    def _undetach(self, conn: C2SConnection) -> bool:
        if conn.detached is None:
            return False
        conn.detached.cancel()
        conn.detached = None
        self.detached.discard(conn)
        metrics.SM_DETACHED.set(len(self.detached))
        return True

    def end_session(self, conn: C2SConnection, *, replaced: bool = False) -> None:
        """RFC 6121 §4.5.2 for a session that is over: unavailable presence, unbind; with
        XEP-0198, what it did not acknowledge goes back to the router.  A session
        ``replaced`` by a new bind of its full JID leaves presence and record to that one."""
        jid = conn.stream.jid
        assert jid is not None and conn.record is not None
        full = str(jid)
        unacked: list[bytes] = []
        queue = conn.stream.sm
        if queue is not None:
            metrics.SM_SESSIONS.dec()
            conn.stream.sm = None
            if self.resumable.get(queue.id) is conn:
                del self.resumable[queue.id]
                self._spawn(self._forget_facts(full, queue.id))
            unacked = list(queue.queue)
            queue.queue.clear()
        if self.sessions.get(full) is conn:
            del self.sessions[full]
            metrics.SESSIONS.set(len(self.sessions))
        if replaced:
            if unacked:
                self._return_unacked(full, unacked)
            return
        # RFC 6121 §4.5.2: the contacts learn the session ended; §4.6.3: and those it sent
        # directed presence to (rooms joined without initial presence: the presence service
        # remembers them and tells them, with nothing to broadcast)
        if conn.available or conn.directed:
            gone = f'<presence xmlns="jabber:client" from="{full}" type="unavailable"/>'
            env = Envelope(Kind.PRESENCE, to="", from_=full, type="unavailable",
                           origin=f"{self.cm_id}/{conn.session_id}", payload=gone.encode())
            p = subjects.partition(jid.bare_str, self.settings.partitions)
            self.bus.publish_soon(subjects.presence(p), env.encode())
        self._spawn(self._unbind(full, conn.record, unacked))

    async def _unbind(self, full: str, record: SessionRecord, unacked: list[bytes]) -> None:
        try:
            version = await self.store.unbind(full, record)
        except Exception as exc:
            log.warning("unbind failed (the reaper will clean up): %s", exc)
            version = 0
        if version:
            self._session_event(bare_of(full), version)
        if unacked:
            self._return_unacked(full, unacked)

    def _return_unacked(self, full: str, unacked: list[bytes]) -> None:
        """XEP-0198 §5 (the session will not be resumed): the stanzas it did not acknowledge
        go back to the router as undelivered, after the unbind: messages to offline storage
        (XEP-0160; not to the other resources, which had their own copies), IQ requests
        bounced, the rest as RFC 6121 §8.5.3.2 says for a resource that is gone."""
        route = subjects.route_for(bare_of(full), self.settings.partitions)
        for payload in unacked:
            try:
                element = parse_fragment(payload, self.settings.max_stanza_bytes)
            except Exception:  # ours, so it parses; if not, say so rather than lose it quietly
                log.warning("an unacknowledged stanza did not parse; dropped")
                continue
            kind = _KINDS.get(local_name(element.tag))
            from_ = element.get("from") or ""
            if kind is None or from_ == domain_of(full):  # our own pings: nobody to tell
                continue
            metrics.SM_RETURNED.labels(kind.value).inc()
            env = Envelope(kind, to=full, from_=from_, type=element.get("type") or "",
                           id=element.get("id") or "", origin=SM_UNACKED_ORIGIN,
                           payload=payload)
            self.bus.publish_soon(route, env.encode())

    # ---- XEP-0198 -------------------------------------------------------------------------

    def sm_enabled(self, conn: C2SConnection, event: SMEnabled) -> None:
        metrics.SM_SESSIONS.inc()
        if event.id:
            self.resumable[event.id] = conn
            self._spawn(self._write_facts(conn))

    async def _write_facts(self, conn: C2SConnection, *, detached: bool = False) -> None:
        """The resumption facts of `conn`'s session in Redis (`shared.store.sm_facts`):
        at <enable/>, at detach (with the counters and the deadline) and after a resume."""
        queue, jid = conn.stream.sm, conn.stream.jid
        if queue is None or jid is None or not queue.resumable:
            return
        counters = (queue.handled, queue.sent, queue.acked) if detached else None
        try:
            await self.sm_facts.write(str(jid), queue.id, self.cm_id, conn.session_id,
                                      queue.max_s, counters)
        except Exception as exc:  # then only a resume on this pod finds it
            log.warning("could not store the resumption facts: %s", exc)

    async def _forget_facts(self, full: str, sm_id: str) -> None:
        try:
            await self.sm_facts.forget(full, sm_id)
        except Exception as exc:  # they expire with their TTL
            log.warning("could not delete the resumption facts: %s", exc)

    def resumable_for(self, conn: C2SConnection, previd: str) -> C2SConnection | None:
        """The session `previd` names, if it is here and of the account `conn` authenticated
        (XEP-0198 §5: anything else is item-not-found, which tells nothing about others)."""
        old = self.resumable.get(previd)
        if old is None or old is conn or old.stream.jid is None:
            return None
        if old.stream.jid.local != conn.stream.username:
            return None
        return old

    def take_over(self, conn: C2SConnection, old: C2SConnection) -> None:
        """`conn` resumed the session of `old` (detached, or whose broken connection we had
        not noticed yet: that one is cut without a word).  The session keeps its id, its
        record in the session table and its presence; nothing is published."""
        jid = old.stream.jid
        queue = conn.stream.sm
        assert jid is not None and queue is not None
        if old.detached is not None:
            old.detached.cancel()
            old.detached = None
            self.detached.discard(old)
            metrics.SM_DETACHED.set(len(self.detached))
        old.replaced = True
        if not old._closing:
            old.stream.sm = None  # its queue is conn's now
            old.abandon()
        conn.session_id = old.session_id  # the session table's record names it
        conn.record = old.record
        conn.available, conn.directed = old.available, old.directed
        self.sessions[str(jid)] = conn
        self.resumable[queue.id] = conn
        self._spawn(self._write_facts(conn))  # attached again
        log.info("session resumed, %d stanzas written again", queue.unacked)

    # ---- XEP-0198 resumption on another connection manager ---------------------------------

    async def fetch_session(self, conn: C2SConnection, previd: str) -> Handed | NotResumed:
        """`<resume previd/>` for a session this pod does not hold: ask its owner (named by
        the facts in Redis) to hand it over, then move its session-table record to this pod
        (the commit point).  The session, or why it cannot be resumed (a `SM_RESUMPTIONS`
        label, and the 'h' of <failed/> when known).  Deliveries for its full JID that
        arrive meanwhile are held and go out after the queue (`adopt`)."""
        bare = f"{conn.stream.username}@{conn.stream.config.domain}"
        try:
            facts = await self.sm_facts.get(bare, previd)
        except Exception as exc:
            log.warning("resumption facts lookup failed: %s", exc)
            return NotResumed("not_found")
        if facts is None:
            return NotResumed("not_found")
        failed = NotResumed("not_found", facts.handled)  # §5: with 'h' when it is known
        if facts.expired(time.time()) or facts.cm_id == self.cm_id:
            return failed
        full = facts.jid
        if full in self._arriving or full in self.sessions:  # another resume or bind here
            return failed
        token = secrets.token_hex(8)
        answer: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._takeovers[token] = answer
        self._arriving[full] = []
        ask = Envelope(Kind.TAKEOVER, to=full, from_=self.cm_id, id=previd, type=token)
        self.bus.publish_soon(subjects.connection_manager(facts.cm_id), ask.encode())
        committed = False
        try:
            try:
                reply = await asyncio.wait_for(answer, self.settings.sm_takeover_timeout_s)
            except TimeoutError:  # dead or stuck; a late answer is returned (`_handed`)
                return NotResumed("owner_silent", facts.handled)
            finally:
                self._takeovers.pop(token, None)
            if reply.type != "ok":
                return failed
            try:
                queue = sm.import_queue(previd, facts.max_s, reply.payload)
            except ValueError:
                log.warning("a handed-over session did not decode")
                return failed
            try:
                moved = await self.store.move(full, reply.origin, self.cm_id, conn.peer)
            except Exception as exc:
                log.warning("moving a resumed session failed: %s", exc)
                moved = None
            # a new bind of the full JID won: before the move, or after it on this pod (its
            # bind replaced the record we had just moved; adopting now would hide it)
            if moved is None or moved.replaced is None or full in self.sessions:
                self._return_unacked(full, list(queue.queue))
                return NotResumed("lost_race", queue.handled)
            committed = True
            return Handed(JID.parse(full), queue, moved.replaced, moved.version)
        finally:
            if not committed:
                for env in self._arriving.pop(full, []):
                    await self._undeliverable(env)

    def adopt(self, conn: C2SConnection, handed: Handed) -> None:
        """`conn` resumed (`stream.resume_succeeded` done) the session handed over from
        another pod: it is this pod's now; then what arrived for it meanwhile."""
        full = str(handed.jid)
        queue = handed.queue
        conn.session_id = handed.record.session_id
        conn.record = handed.record
        conn.available = handed.record.available
        self.sessions[full] = conn
        metrics.SESSIONS.set(len(self.sessions))
        self.resumable[queue.id] = conn
        metrics.SM_SESSIONS.inc()
        self._session_event(handed.jid.bare_str, handed.version)  # routers' caches follow
        self._spawn(self._write_facts(conn))
        for env in self._arriving.pop(full, []):
            self._deliver_held(conn, env)
        conn.flush()
        log.info("session resumed from another connection manager, %d stanzas written "
                 "again", queue.unacked)

    def _deliver_held(self, conn: C2SConnection, env: Envelope) -> None:
        if env.kind is Kind.KICK:  # the record we moved was replaced by a bind elsewhere
            if env.id == conn.session_id:
                self._kick(conn, env.payload)
        elif env.kind is Kind.BATCH:
            for stanza in split_stanzas(env.payload):
                conn.deliver(stanza)
        elif env.kind is Kind.FANOUT:  # one recipient: this session (see _on_bus_batch)
            conn.deliver(with_to(env.payload, env.to))
        elif env.kind in STANZA_KINDS:
            conn.deliver(env.payload)

    def abandon_handed(self, handed: Handed) -> None:
        """A take-over committed whose client then failed the resume (an 'h' too high, §4):
        the session ends here as a lost connection does."""
        full = str(handed.jid)
        if handed.record.available:
            gone = f'<presence xmlns="jabber:client" from="{full}" type="unavailable"/>'
            env = Envelope(Kind.PRESENCE, to="", from_=full, type="unavailable",
                           origin=f"{self.cm_id}/{handed.record.session_id}",
                           payload=gone.encode())
            p = subjects.partition(handed.jid.bare_str, self.settings.partitions)
            self.bus.publish_soon(subjects.presence(p), env.encode())
        unacked = list(handed.queue.queue)
        unacked += [e.payload for e in self._arriving.pop(full, []) if e.kind in STANZA_KINDS]
        self._spawn(self._unbind(full, handed.record, unacked))
        self._spawn(self._forget_facts(full, handed.queue.id))

    def _hand_over(self, env: Envelope) -> None:
        """TAKEOVER from the connection manager `env.from_`: stop writing to the session
        `env.id` of `env.to`, forget it, and answer with its counters and queue; what still
        comes here for that full JID (stale routes) is forwarded there for a while."""
        reply_to = subjects.connection_manager(env.from_)
        full = env.to
        old = self.resumable.get(env.id)
        if old is not None:
            old.release_held()  # XEP-0352 state is not handed over: what it held goes along
        queue = old.stream.sm if old is not None else None
        payload = sm.export_queue(queue) if queue is not None else b""
        if (old is None or queue is None or old.record is None or old.replaced
                or str(old.stream.jid) != full or len(payload) > MAX_HANDOVER_BYTES):
            # not here, or too big for one NATS message: it stays here (until its timeout)
            gone = Envelope(Kind.HANDOVER, to=full, from_=self.cm_id, id=env.type, type="gone")
            self.bus.publish_soon(reply_to, gone.encode())
            return
        self._undetach(old)
        old.replaced = True
        old.stream.sm = None
        if not old._closing:
            old.abandon()  # cut without a word: the client is on the other pod now
        del self.resumable[queue.id]
        if self.sessions.get(full) is old:
            del self.sessions[full]
            metrics.SESSIONS.set(len(self.sessions))
        metrics.SM_SESSIONS.dec()
        metrics.SM_HANDED_OVER.inc()
        self.store.left(full, self.cm_id)
        self.handed_over[full] = env.from_
        if self._stopping:  # stay up a little for what routers still send here
            self._forwarding_until = asyncio.get_running_loop().time() + SHUTDOWN_FORWARD_S
        asyncio.get_running_loop().call_later(
            HANDED_OVER_S, self._handed_over_done, full, env.from_, old.record, old.available
        )
        ok = Envelope(Kind.HANDOVER, to=full, from_=self.cm_id, id=env.type, type="ok",
                      origin=old.record.owner, payload=payload)
        self.bus.publish_soon(reply_to, ok.encode())
        log.info("session handed over to %s with %d stanzas unacknowledged", env.from_,
                 len(queue.queue))

    def _handed(self, env: Envelope) -> None:
        """HANDOVER: the answer to a TAKEOVER of ours.  One that comes after we gave up
        waiting has its queue returned to the router, as for a session that timed out."""
        answer = self._takeovers.pop(env.id, None)
        if answer is not None and not answer.done():
            answer.set_result(env)
            return
        if env.type == "ok":
            try:
                queue = sm.import_queue("", 0, env.payload)
            except ValueError:
                return
            self._return_unacked(env.to, list(queue.queue))

    def _handed_over_done(self, full: str, to_cm: str, record: SessionRecord,
                          available: bool) -> None:
        if self.handed_over.get(full) == to_cm:
            del self.handed_over[full]
        self._spawn(self._unbind_stale(full, record, available))

    async def _unbind_stale(self, full: str, record: SessionRecord, available: bool) -> None:
        """A session handed over whose record still names this pod: the other pod never
        committed (it died, or gave up): the session ends here as a lost connection does."""
        try:
            version = await self.store.unbind(full, record)
        except Exception as exc:
            log.warning("unbind of a handed-over session failed: %s", exc)
            return
        if not version:
            return
        self._session_event(bare_of(full), version)
        if available:
            gone = f'<presence xmlns="jabber:client" from="{full}" type="unavailable"/>'
            env = Envelope(Kind.PRESENCE, to="", from_=full, type="unavailable",
                           origin=f"{self.cm_id}/{record.session_id}", payload=gone.encode())
            p = subjects.partition(bare_of(full), self.settings.partitions)
            self.bus.publish_soon(subjects.presence(p), env.encode())

    def _sm_sessions(self) -> list[C2SConnection]:
        return [c for c in self.sessions.values() if c.stream.sm is not None]

    def _session_event(self, bare: str, version: int) -> None:
        """Tell the routers that the sessions of `bare` changed.  Queued like the client's
        stanzas (`publish_soon`: one NATS write per tick), so it still goes out before any
        stanza the client sends after its bind result."""
        p = subjects.partition(bare, self.settings.partitions)
        self.bus.publish_soon(subjects.session_events(p), session_event(bare, version).encode())

    # ---- stanzas from clients --------------------------------------------------------------

    def stanza_from_client(self, conn: C2SConnection, st: StanzaIn) -> None:
        """Where a client's stanza goes: the presence service, the roster service, the
        router, or an answer from here (RFC 6120 §10, RFC 6121 §2-§4, §8)."""
        jid = conn.stream.jid
        assert jid is not None
        child_ns = _child_ns(st) if st.kind == "iq" else ""
        node = ""
        if (child_ns and st.to is not None
                and self.service_domains.get(st.to.domain) == ingress.Family.PUBSUB.value):
            node = pubsub.request_node(st.element)  # the node's partition (XEP-0060)
        where = ingress.from_client(st.kind, st.type, st.to, jid, self.destinations.accounts,
                                    child_ns, self.service_domains, node)
        if isinstance(where, ingress.Publish):
            if where.family is ingress.Family.PRESENCE:
                if st.to is None:
                    conn.available = st.type == ""  # broadcast presence, RFC 6121 §4.2, §4.5
                elif st.type == "":
                    conn.directed = True  # directed presence, §4.6 (a room joined)
            self._publish_for(where.subject(self.settings.partitions), conn, st, where.to)
        elif isinstance(where, ingress.ToServer):
            self._to_server(conn, st, addressed=where.addressed)

    def when_stored(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every stanza published so far is stored by JetStream (or
        bounced): XEP-0198 'h' counts a stanza only then (docs/architecture.md, "Durable
        delivery")."""
        self.bus.when_stored(self.bus.stored_mark(), callback)

    def _publish_for(self, subject: str, conn: C2SConnection, st: StanzaIn, to: str) -> None:
        """Publish a client stanza on ``subject``, addressed to ``to``.  Its ``ts_us`` is
        strictly increasing in this process, so (origin, ts_us) names it: a receiving
        connection manager drops a replayed copy by it."""
        jid = conn.stream.jid
        assert jid is not None
        ts_us = self._last_ts_us = max(time.time_ns() // 1000, self._last_ts_us + 1)
        env = Envelope(
            _KINDS[st.kind], to=to, from_=str(jid), type=st.type, id=st.id,
            origin=f"{self.cm_id}/{conn.session_id}", payload=st.payload, ts_us=ts_us,
        )
        bounce = lambda: self._bounce_to_client(  # noqa: E731
            conn, st, StanzaErrorCondition.RESOURCE_CONSTRAINT)
        if env.kind is Kind.MESSAGE:
            env = self._message_ingress(env, st, jid.bare_str)
        self.bus.publish_soon(subject, env.encode(), bounce)

    def _message_ingress(self, env: Envelope, st: StanzaIn, sender: str) -> Envelope:
        """A message enters the cluster (docs/architecture.md "Carbons and the archive"):
        stanza-ids a client forged in our name are removed (XEP-0359 §4); one to archive
        gets its id here, once, appended for the recipient's archive (``by`` the recipient
        when local; the sender, whose router strips it, when remote).  One to another local
        account carries the sender's tail too, before the recipient's: the recipient's router
        writes both rows and sends the sent carbons (or hands them to the router of the
        sender's partition, `Router._sender_side`).  One that is not archived but that the
        sender's other resources want is announced to the router of the sender's partition
        in a SENT envelope (sent carbons).
        """
        payload = serialize(st.element) if archive.strip_forged(
            st.element, domain_of(sender), st.payload) else env.payload
        facts = archive.facts(st.element)
        sid = archive.new_id(env.ts_us) if facts.archive and self.settings.mam_enabled else ""
        recipient = bare_of(env.to)
        if domain_of(env.to) not in self.destinations.accounts:
            if sid:
                payload = archive.with_stanza_id(payload, sender, sid)
            return env._replace(payload=payload)
        if sid:
            if recipient != sender:
                payload = archive.with_stanza_id(payload, sender, sid)
            payload = archive.with_stanza_id(payload, recipient, sid)
        elif recipient != sender and facts.carbons:
            self.bus.publish_soon(subjects.route_for(sender, self.settings.partitions),
                                  env._replace(kind=Kind.SENT, payload=payload).encode())
        return env._replace(payload=payload)

    def _to_server(self, conn: C2SConnection, st: StanzaIn, *, addressed: bool) -> None:
        """Stanzas with no 'to' (RFC 6120 §10.3) or addressed to the domain itself."""
        jid = conn.stream.jid
        assert jid is not None
        if st.kind == "iq" and is_register_query(st.element) and st.type in ("get", "set"):
            self.in_band.handle(conn, st)  # XEP-0077 §3.2, §3.3 on one's own account
        elif st.kind == "iq":
            if st.type == "set" and len(st.element) and st.element[0].tag in _CARBONS_TAGS:
                self._spawn(self._carbons(conn, st))
                return
            reply = server_iq.answer(st.element, st.type, self.server_info, time.time(),
                                     self.service_domains, jid.bare_str)
            if isinstance(reply, StanzaError):
                self._bounce_to_client(conn, st, reply.condition)
            elif reply is not None:
                conn.write_stanza(
                    iq_result(st.id, str(jid), st.element.get("to") or None, reply)
                )
        elif st.kind == "message" and not addressed:
            # RFC 6120 §10.3.1: no 'to' means the sender's own bare JID.
            route = subjects.route_for(jid.bare_str, self.settings.partitions)
            self._publish_for(route, conn, st, jid.bare_str)

    async def _carbons(self, conn: C2SConnection, st: StanzaIn) -> None:
        """XEP-0280 §4, §5: <enable/> or <disable/> for this resource.  The flag lives with
        the session record; the routers learn it from the session event, which is queued
        before the answer, so what the client sends after the answer finds it."""
        jid = conn.stream.jid
        assert jid is not None
        enabled = st.element[0].tag == _CARBONS_ENABLE
        try:
            version = await self.store.set_carbons(
                str(jid), f"{self.cm_id} {conn.session_id}", enabled)
        except Exception as exc:
            log.warning("carbons %s failed: %s", "enable" if enabled else "disable", exc)
            self._bounce_to_client(conn, st, StanzaErrorCondition.INTERNAL_SERVER_ERROR)
            return
        if version:
            self._session_event(jid.bare_str, version)
        metrics.CARBONS.labels("enable" if enabled else "disable").inc()
        conn.write_stanza(iq_result(st.id, str(jid), None))

    def _bounce_to_client(
        self, conn: C2SConnection, st: StanzaIn, condition: StanzaErrorCondition
    ) -> None:
        if must_not_bounce(st.type):
            return
        metrics.STANZA_ERRORS.labels(condition.value).inc()
        conn.stream.stanza_error(st.element, StanzaError(condition))
        conn.write(conn.stream.data_to_send())

    async def _publish(self, subject: str, env: Envelope) -> None:
        try:
            await self.bus.publish(subject, env.encode())
        except BusUnavailable as exc:
            log.warning("publish to %s failed: %s", subject, exc)

    # ---- deliveries from the bus -----------------------------------------------------------

    async def _on_bus_batch(self, batch: list[tuple[str, bytes]]) -> None:
        now_us = time.time_ns() // 1000
        observe = _ROUTING_LATENCY.observe
        delivered = _DELIVERED
        written = 0  # stanzas handed to sockets, counted once per batch
        touched: list[C2SConnection] = []  # one write each at the end of the batch
        dedup = self.bus.durable
        for env in decoded(batch):
            conn = self.sessions.get(env.to)
            if env.kind is Kind.KICK:
                if conn is None:
                    self._not_here(env)  # a session arriving here (take-over) gets it after
                elif conn.session_id == env.id:
                    self._kick(conn, env.payload)
                continue
            if env.kind is Kind.BATCH:
                if conn is None:
                    self._not_here(env)
                else:
                    if conn.stream.sm is None and not conn.inactive:
                        if conn.deliver(env.payload):
                            touched.append(conn)
                    else:  # XEP-0198 counts stanzas, XEP-0352 holds some: one at a time
                        for stanza in split_stanzas(env.payload):
                            if conn.deliver(stanza):
                                touched.append(conn)
                    written += 1
                continue
            if env.kind is Kind.FANOUT:
                for full in env.to.split(FANOUT_SEPARATOR):
                    target = self.sessions.get(full)
                    if target is not None:
                        if target.deliver(with_to(env.payload, full)):
                            touched.append(target)
                        written += 1
                    elif not self._not_here(env._replace(to=full)):
                        self._gone_from_service(env, full)
                continue
            if env.kind not in STANZA_KINDS:
                if env.kind is Kind.TAKEOVER:
                    self._hand_over(env)
                elif env.kind is Kind.HANDOVER:
                    self._handed(env)
                continue
            if conn is not None:
                if dedup and env.kind is Kind.MESSAGE and env.ts_us and _replayed(conn, env):
                    _DUPLICATES.n += 1
                    continue
                delivered[env.kind].n += 1
                written += 1
                if conn.deliver(env.payload):
                    touched.append(conn)
                if conn.detached is not None and env.kind is Kind.MESSAGE:
                    self._push_detached(conn, env)
                if env.ts_us:
                    observe(max(0, now_us - env.ts_us) / 1e6)
            elif not self._not_here(env):
                await self._undeliverable(env)
        for conn in touched:
            conn.flush()
        _STANZAS_OUT.n += written

    def _kick(self, conn: C2SConnection, payload: bytes) -> None:
        """KICK: a newer bind of the full JID on another pod (RFC 6120 §7.7.2.2: the active
        session gets <conflict/>), or the admin API.  A detached XEP-0198 session has no
        stream to close: it ends here and now, so that no <resume/> brings it back beside
        the session that replaced it (two writers for one full JID)."""
        if conn.detached is None:
            conn.close(*_kick_reason(payload))
        else:
            self.expire(conn, replaced=not payload)

    def _push_detached(self, conn: C2SConnection, env: Envelope) -> None:
        """XEP-0357: a message with a body held for a detached session; the router of the
        user's partition notifies the app servers that session's resource enabled."""
        if env.type == "error" or b"<body" not in env.payload:
            return
        try:
            if parse_fragment(env.payload, self.settings.max_stanza_bytes).find(
                    f"{{{ns.CLIENT}}}body") is None:
                return
        except Exception:
            return
        conn.pushes += 1
        notify = Envelope(Kind.MESSAGE, to=env.to, from_=env.from_, type=env.type,
                          id=str(conn.pushes), origin=PUSH_ORIGIN, payload=env.payload)
        self.bus.publish_soon(subjects.route_for(env.to_bare, self.settings.partitions),
                              notify.encode())

    def _not_here(self, env: Envelope) -> bool:
        """A delivery for a full JID with no session here that is moving (XEP-0198 take-over):
        held until this pod commits it, or forwarded to the pod it was handed to."""
        if self._arriving:
            held = self._arriving.get(env.to)
            if held is not None:
                held.append(env)
                return True
        if self.handed_over:
            to_cm = self.handed_over.get(env.to)
            if to_cm is not None:
                self.bus.publish_soon(subjects.connection_manager(to_cm),
                                      env.forwarded().encode())
                return True
        return False

    def _gone_from_service(self, env: Envelope, full: str) -> None:
        """A local service's FANOUT (a room's broadcast) named a session that is not here
        any more: the service learns it from an error as the session's server would bounce it
        (RFC 6121 §8.5.3.2.3 drops presence silently; a room needs to know), so the room
        removes the occupant and tells the others (XEP-0045 status 333).  Presence services'
        broadcasts to contacts need no such report: the session table is theirs."""
        family = self.service_domains.get(env.from_domain)
        if family is None or not env.from_:
            return
        metrics.UNDELIVERABLE.labels("fanout").inc()
        sender = env.from_
        payload = (f'<presence xmlns="jabber:client" from={quoteattr(full)} '
                   f'to={quoteattr(sender)} type="error"><error type="wait">'  # RFC 6120 §8.3.3.13
                   f'<recipient-unavailable xmlns="{ns.STANZAS_ERRORS}"/></error></presence>')
        report = Envelope(Kind.PRESENCE, to=sender, from_=full, type="error",
                          origin=self.cm_id, payload=payload.encode())
        where = ingress.Publish(ingress.Family(family), env.from_bare, sender)
        self.bus.publish_soon(where.subject(self.settings.partitions), report.encode())

    async def _undeliverable(self, env: Envelope) -> None:
        """The session left between routing and delivery (RFC 6121 §8.5.3.2)."""
        metrics.UNDELIVERABLE.labels(env.kind.value).inc()
        bare = env.to_bare
        if env.kind is Kind.MESSAGE and env.hops < MAX_HOPS:
            await self._publish(subjects.route_for(bare, self.settings.partitions),
                                env.forwarded(to=bare))
        elif env.kind is Kind.IQ and env.type in ("get", "set"):
            await self._bounce_via_bus(env, StanzaErrorCondition.SERVICE_UNAVAILABLE)

    async def _bounce_via_bus(self, env: Envelope, condition: StanzaErrorCondition) -> None:
        bounce = env.bounce(condition, origin=SERVICE, max_bytes=self.settings.max_stanza_bytes)
        if bounce is not None:
            await self._publish(subjects.route_for(env.from_bare, self.settings.partitions),
                                bounce)


# how long a pod forwards what still comes for a session it handed over (stale routes), and
# then unbinds it if the other pod never committed the take-over
HANDED_OVER_S: Final = 30.0
# A stopping pod stays up this long after its last hand-over, forwarding what routers that
# have not yet seen the new owner send here; then what its unbinds still publish goes out.
SHUTDOWN_FORWARD_S: Final = 2.0
FINAL_WRITES_S: Final = 5.0
# a queue handed over travels in one NATS message (max_payload: 1 MiB by default)
MAX_HANDOVER_BYTES: Final = 900 * 1024


@dataclass(frozen=True, slots=True)
class NotResumed:
    """Why a <resume/> failed (a `SM_RESUMPTIONS` label), and how many of the client's
    stanzas the session had handled when that is known (the 'h' of <failed/>, §5)."""

    reason: str
    h: int | None = None


@dataclass(frozen=True, slots=True)
class Handed:
    """A session taken over from another connection manager, committed in the table."""

    jid: JID
    queue: sm.Queue
    record: SessionRecord
    version: int


_KINDS: Final = {k.value: k for k in STANZA_KINDS}
_CARBONS_ENABLE: Final = f"{{{ns.CARBONS}}}enable"
_CARBONS_TAGS: Final = frozenset({_CARBONS_ENABLE, f"{{{ns.CARBONS}}}disable"})

MAX_SEEN: Final = 256  # sending sessions remembered per session for the replay check


def _replayed(conn: C2SConnection, env: Envelope) -> bool:
    """Whether ``env`` is a copy of a message already delivered to ``conn``: a take-over
    replays what the dead partition owner had not acked, in the order of each sender, so a
    copy is exactly a message from the same session (``origin``) that is not newer
    (``ts_us`` strictly increases per connection manager)."""
    if "/" not in env.origin:
        return False
    seen = conn.seen
    if seen is None:
        seen = conn.seen = {}
    last = seen.pop(env.origin, 0)
    if env.ts_us <= last:
        seen[env.origin] = last
        return True
    seen[env.origin] = env.ts_us
    if len(seen) > MAX_SEEN:
        del seen[next(iter(seen))]
    return False
# counted in tallies (shared/runtime/metrics.py), added to the metrics when /metrics is scraped
_DELIVERED: Final = {k: Tally(metrics.STANZAS_DELIVERED.labels(k.value)) for k in STANZA_KINDS}
_STANZAS_OUT: Final = Tally(metrics.STANZAS_OUT)
_DUPLICATES: Final = Tally(metrics.DUPLICATES_DROPPED)
_BIND_LATENCY: Final = HistogramTally(metrics.BIND_LATENCY)
_ROUTING_LATENCY: Final = HistogramTally(metrics.ROUTING_LATENCY)


def _child_ns(st: StanzaIn) -> str:
    """The namespace of an IQ's payload element."""
    if len(st.element) == 0:
        return ""
    tag = st.element[0].tag
    return tag[1:].partition("}")[0] if isinstance(tag, str) and tag.startswith("{") else ""


def _kick_reason(payload: bytes) -> tuple[StreamErrorCondition, str]:
    """The stream error a KICK closes its session with: an empty payload means a newer
    session took the full JID (RFC 6120 §7.7.2.2 <conflict/>); otherwise the payload names the
    condition (the admin API sends ``policy-violation``)."""
    if not payload:
        return StreamErrorCondition.CONFLICT, "replaced by a new session"
    try:
        condition = StreamErrorCondition(payload.decode())
    except (ValueError, UnicodeDecodeError):
        condition = StreamErrorCondition.POLICY_VIOLATION
    return condition, _KICK_TEXT.get(condition, "closed by the server administrator")


# what the account's other sessions are told after an in-band change (XEP-0077, account.py)
_KICK_TEXT: Final = {StreamErrorCondition.RESET: "password changed",
                     StreamErrorCondition.NOT_AUTHORIZED: "account removed"}

