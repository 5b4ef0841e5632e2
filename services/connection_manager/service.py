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
import contextlib
import dataclasses
import datetime
import hmac
import logging
import os
import secrets
import signal
import ssl
import time
from collections.abc import Callable, Iterable
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
from shared.cluster import placement
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
from shared.store.sm_facts import SmFacts, SmFactsStore
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
        self._host_configs: dict[tuple[str, bool, bool], tuple[VirtualHost, StreamConfig]] = {}
        # what the server's own answers tell (XEP-0012 uptime, XEP-0157, XEP-0077 in band)
        self.server_info = server_iq.ServerInfo(
            time.time(), settings.contacts, in_band=True,
            external=extdisco.Config(extdisco.parse_services(settings.external_services),
                                     settings.turn_secret.get_secret_value().encode(),
                                     settings.turn_credential_ttl_s),
        )
        self._delegated_info = dataclasses.replace(self.server_info, in_band=False)
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
        # load-aware placement (shared/cluster/placement.py): full from the high-water mark;
        # then the new streams of the shared c2s port may be sent elsewhere (see-other-host),
        # never those of the direct port, of direct TLS or of the HTTP port
        self.fullness = placement.Fullness(settings.max_connections,
                                           settings.placement_high_water,
                                           settings.low_water)
        self.placed_stream_config = dataclasses.replace(self.stream_config,
                                                        placement=self._placement)
        self.public_address = ""  # the direct port as clients reach it, once listening
        self.direct_port = 0
        self._beat_s = max(1.0, settings.session_ttl_s / 3)
        # where new streams may go, from the load records the last heartbeat read
        self.targets = placement.Targets((), self.cm_id, placement.stale_after(self._beat_s),
                                         0.0)
        self._cpu_mark = (time.monotonic(), time.process_time())
        metrics.CONNECTION_CAPACITY.set(settings.max_connections)
        metrics.FULL.set_function(lambda: float(self.full()))
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
        log_age = max(settings.sm_resume_timeout_s, settings.sm_max_resume_timeout_s)
        self.bus = Bus(settings.nats_url, SERVICE, self._on_bus_batch,
                       fail_while_disconnected=True, durable=settings.durable,
                       limits=streams.limits_of(settings, log_age + LOG_SLACK_S),
                       **settings.nats_options())
        # durable deliveries (docs/architecture.md "Durable delivery"): our subject is a
        # JetStream consumer, resumable sessions are logged, dead peers' subjects drained
        self.own_subject = subjects.connection_manager(self.cm_id)
        self.logging = self.bus.stored(self.own_subject)
        # dead connection managers whose drain lease we hold -> when we took it; those whose
        # deliveries we consume -> their subject; their session logs: full JID -> subject
        self._dead: dict[str, float] = {}
        self._draining: dict[str, str] = {}
        self._logs_of: dict[str, dict[str, str]] = {}
        self._log_due: set[C2SConnection] = set()  # detached sessions with entries to log
        # the logs a previous run with our id left (its sessions are gone): swept at once
        self._previous_logs: set[str] = set()
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
        own = self.own_subject
        if self.logging:
            # a previous run's logs (swept at once) are known before its deliveries come:
            # what it left in our subject for those sessions goes into them (`_left`)
            try:
                self._previous_logs = set(await self.bus.subject_counts(
                    "smlog", subjects.sm_logs_of(self.cm_id)))
            except Exception as exc:  # found again at the next start
                log.warning("could not list the session logs of a previous run: %s", exc)
            if self._previous_logs:
                self._logs_of[self.cm_id] = _logs_by_jid(self._previous_logs)
            # from the oldest unacked: what a previous run left comes first
            await self.bus.consume(own)
            # our logs are found by this mark if we die
            self.bus.publish_soon(subjects.sm_log_marker(self.cm_id), b"")
        else:
            await self.bus.subscribe(own)
            await self.bus.flush()
            self.bus.offer_local(own)  # this pod alone consumes its subject
        try:
            await self.store.heartbeat(self.cm_id, s.session_ttl_s)
        except Exception as exc:  # Redis not there yet: the heartbeat loop keeps trying
            log.warning("first heartbeat failed: %s", exc)
        self._heartbeat = asyncio.create_task(self._beat())
        if self.logging:
            self._watchers.append(asyncio.create_task(self._janitor()))
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: C2SConnection(self, config=self.placed_stream_config), s.c2s_host,
            s.c2s_port, backlog=1024, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.c2s_address = f"{s.c2s_host}:{self.port}"
        log.info("%s listening for c2s on %s:%d (domain %s)", self.cm_id, s.c2s_host, self.port,
                 s.domain)
        if s.c2s_direct_port >= 0:  # where other connection managers send clients
            server = await loop.create_server(
                lambda: C2SConnection(self), s.c2s_host, s.c2s_direct_port, backlog=1024,
                reuse_address=True,
            )
            self._servers.append(server)
            self.direct_port = server.sockets[0].getsockname()[1]
            self.public_address = placement.with_port(s.c2s_public_address, self.direct_port)
            log.info("%s listening for redirected c2s on %s:%d (clients reach it as %s)",
                     self.cm_id, s.c2s_host, self.direct_port, self.public_address or "-")
        await self._heartbeat_now()  # `stanzad status` shows where it listens
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
        """Ready for new connections: not while full (placement), so that a Service sends
        them to the other pods meanwhile; the connections it has stay."""
        router_ready = self.router is None or self.router.ready()
        return (self._server is not None and self.bus.connected and not self._stopping
                and router_ready and self.db.up and not self.full())

    def full(self) -> bool:
        """At or over the placement high-water mark (and not yet below the low-water one)."""
        return self.fullness.update(len(self.connections))

    def _placement(self) -> str:
        """`StreamConfig.placement` of the shared c2s port: where a new stream goes instead
        (RFC 6120 §4.9.3.19), or "" to serve it here: full without this one (counted)."""
        if not self.fullness.update(len(self.connections) - 1):
            return ""
        if not self.settings.direct_addressing:
            metrics.FULL_ACCEPTED.labels("no_direct_addressing").inc()
            return ""
        target = self.targets.draw(time.monotonic())
        if target is None:
            metrics.FULL_ACCEPTED.labels("no_target").inc()
            return ""
        metrics.REDIRECTS.labels("load").inc()
        return target.load.address

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
        # peers stop sending clients here at their next heartbeat (this record says full)
        try:
            await asyncio.wait_for(self._heartbeat_now(), STOPPING_LOAD_S)
        except TimeoutError:
            log.warning("could not publish the stopping load in time")
        redirect = self.settings.shutdown_redirect
        for conn in list(self.connections):
            if self._resumable_session(conn):
                conn.hang_up()  # detached by connection_closed: another pod may take it
            elif redirect or (conn.kind == "websocket" and self.settings.websocket_redirect_uri):
                # RFC 6120 §4.9.3.19: reconnect there (WebSocket: RFC 7395 §3.6.1's URI)
                metrics.REDIRECTS.labels("shutdown").inc()
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
        if self.logging:
            for cm_id in list(self._dead):
                await self._stop_draining(cm_id)
            await self.bus.stop_consuming(self.own_subject)
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
        """The heartbeat every ``_beat_s``; between two, every ALIVE_CHECK_S, whether Redis
        still has it.  When it does not (Redis restarted empty, or the heartbeat expired
        and the presence service's reaper may have removed our sessions), the heartbeat is
        written again at once and so is every session bound here: without it the routers
        find no session for clients that stay connected, store their messages offline and,
        once the offline store is full, bounce them to senders they cannot find either."""
        loop = asyncio.get_running_loop()
        beat_at = loop.time() + self._beat_s
        while True:
            await asyncio.sleep(min(ALIVE_CHECK_S, self._beat_s))
            if loop.time() >= beat_at:
                beat_at = loop.time() + self._beat_s
                await self._heartbeat_now()
                continue
            try:
                alive = await self.store.alive(self.cm_id)
            except Exception:  # Redis away: the heartbeat's warning says so
                continue
            if not alive:
                beat_at = loop.time() + self._beat_s
                await self._heartbeat_now()
                await self._register_again()

    async def _register_again(self) -> None:
        """Write every session bound here back into the session table where its resource
        has no record (a newer bind elsewhere wins), tell the routers (session events: their
        cached "no session" goes), and the XEP-0198 resumption facts.  Priority is written
        as 0 until the client's next presence (the presence service parses it)."""
        bound = [(full, conn) for full, conn in self.sessions.items()
                 if conn.record is not None and not conn.replaced]
        restored = 0
        for i in range(0, len(bound), RESTORE_CHUNK):
            chunk = bound[i:i + RESTORE_CHUNK]
            results = await asyncio.gather(*(
                self.store.restore(full, dataclasses.replace(
                    conn.record, cm_id=self.cm_id, priority=0, available=conn.available),
                    conn.peer)
                for full, conn in chunk), return_exceptions=True)
            for (full, conn), version in zip(chunk, results, strict=True):
                if isinstance(version, BaseException):
                    log.warning("could not write the session of %s again: %s", full, version)
                    continue
                if version:
                    restored += 1
                    self._session_event(bare_of(full), version)
                    self._spawn(self._write_facts(conn, detached=conn.detached is not None))
        log.warning("%s: Redis had lost this pod's heartbeat; %d of %d sessions written "
                    "again", self.cm_id, restored, len(bound))

    def load(self) -> placement.Load:
        """What this process publishes with its heartbeat; the CPU share is that of the time
        since the previous call."""
        s = self.settings
        now, cpu = time.monotonic(), time.process_time()
        then, cpu_then = self._cpu_mark
        self._cpu_mark = (now, cpu)
        return placement.Load(
            address=self.public_address if s.direct_addressing else "",
            connections=len(self.connections), capacity=s.max_connections,
            high_water=s.placement_high_water,
            cpu=(cpu - cpu_then) / (now - then) if now > then else 0.0,
            full=self._stopping or self.full(), ttl_s=s.session_ttl_s,
        )

    async def _heartbeat_now(self) -> None:
        """The heartbeat with the load and, with direct addressing, the peers' loads read in
        the same round trip and one more: no Redis command per connection."""
        direct = self.settings.direct_addressing
        try:
            found = await self.store.heartbeat(
                self.cm_id, self.settings.session_ttl_s, self.c2s_address,
                self.load().encode(), peers=direct and not self._stopping)
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc)
            return
        if direct:
            peers = [p for p in (placement.seen(*f) for f in found) if p is not None]
            self.targets = placement.Targets(peers, self.cm_id,
                                             placement.stale_after(self._beat_s),
                                             time.monotonic())
            metrics.PLACEMENT_PEERS.set(len(peers))
            metrics.PLACEMENT_TARGETS.set(len(self.targets))

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
        key = (domain, base.tls_available, base.placement is not None)
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

    def delegated(self, domain: str) -> bool:
        """Whether the accounts of ``domain`` are the platform's (a token or HTTP backend):
        no in-band registration, password change or removal there (account.py)."""
        host = self.vhosts.get(domain)
        return host is not None and host.backend != "internal"

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
        ended_log = ""
        queue = conn.stream.sm
        if queue is not None:
            metrics.SM_SESSIONS.dec()
            conn.stream.sm = None
            if self.resumable.get(queue.id) is conn:
                del self.resumable[queue.id]
                if conn.logged is None:
                    self._spawn(self._forget_facts(full, queue.id))
                else:  # once what it returns is stored: its log, then its facts
                    ended_log = queue.id
            conn.logged = None
            unacked = list(queue.queue)
            queue.queue.clear()
        if self.sessions.get(full) is conn:
            del self.sessions[full]
            metrics.SESSIONS.set(len(self.sessions))
        if replaced:
            if unacked:
                self._return_unacked(full, unacked)
            if ended_log:
                self._end_log(full, ended_log)
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
        self._spawn(self._unbind(full, conn.record, unacked, ended_log))

    async def _unbind(self, full: str, record: SessionRecord, unacked: list[bytes],
                      ended_log: str = "") -> None:
        try:
            version = await self.store.unbind(full, record)
        except Exception as exc:
            log.warning("unbind failed (the reaper will clean up): %s", exc)
            version = 0
        if version:
            self._session_event(bare_of(full), version)
        if unacked:
            self._return_unacked(full, unacked)
        if ended_log:
            self._end_log(full, ended_log)

    def _end_log(self, full: str, sm_id: str) -> None:
        """A logged session ended here: once what it returned to the router is stored, its
        log is purged, then its facts deleted (in that order: a log left by a death in
        between, whose facts are still there, is handed to offline storage by the sweep,
        never one whose queue was already returned)."""
        self.bus.after_stored(lambda: self._spawn(self._forget_facts(full, sm_id, True)))

    def _return_unacked(self, full: str, unacked: list[bytes],
                        on_fail: Callable[[], None] | None = None) -> None:
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
            self.bus.publish_soon(route, env.encode(), on_fail)

    # ---- XEP-0198 -------------------------------------------------------------------------

    def sm_enabled(self, conn: C2SConnection, event: SMEnabled) -> None:
        metrics.SM_SESSIONS.inc()
        if event.id:
            self.resumable[event.id] = conn
            self._spawn(self._write_facts(conn))
            queue, jid = conn.stream.sm, conn.stream.jid
            if self.logging and queue is not None and jid is not None:
                conn.logged, conn.stamps = queue.sent, {}
                self.bus.publish_soon(subjects.sm_log(self.cm_id, str(jid), queue.id),
                                      sm.log_entry(0, queue.handled, "", 0, b"", base=True,
                                                   acked=queue.acked))

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

    async def _forget_facts(self, full: str, sm_id: str, logged: bool = False) -> None:
        if logged:  # before the facts: a log left behind is then known to be ended
            await self._purge_log(subjects.sm_log(self.cm_id, full, sm_id))
        try:
            await self.sm_facts.forget(full, sm_id)
        except Exception as exc:  # they expire with their TTL
            log.warning("could not delete the resumption facts: %s", exc)

    async def _purge_log(self, subject: str) -> None:
        try:
            await self.bus.purge(subject)
        except Exception as exc:  # its entries expire with the stream's max_age
            log.warning("could not purge a session's log: %s", exc)

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
        conn.logged, conn.stamps = old.logged, old.stamps
        old.logged = None
        self.sessions[str(jid)] = conn
        self.resumable[queue.id] = conn
        self._spawn(self._write_facts(conn))  # attached again
        log.info("session resumed, %d stanzas written again", queue.unacked)

    # ---- XEP-0198 resumption on another connection manager ---------------------------------

    async def fetch_session(self, conn: C2SConnection, previd: str, h: int = 0
                            ) -> Handed | NotResumed:
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
        if (facts.expired(time.time()) or facts.cm_id == self.cm_id
                or facts.session_id == SWEPT):
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
                reply: Envelope | None = await asyncio.wait_for(
                    answer, self.settings.sm_takeover_timeout_s)
            except TimeoutError:  # dead or stuck; a late answer is returned (`_handed`)
                reply = None
            finally:
                self._takeovers.pop(token, None)
            if reply is None:
                if not self.logging or not await self._owner_dead(facts.cm_id):
                    return NotResumed("owner_silent", facts.handled)
                result = await self._resume_from_log(conn, facts, previd, h)
                committed = isinstance(result, Handed)
                return result
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

    async def _resume_from_log(self, conn: C2SConnection, facts: SmFacts, previd: str,
                               h: int) -> Handed | NotResumed:
        """The owner of the session died (its heartbeat expired): what its stream still
        held is drained (into the session's log, `_drained`), the session is claimed from
        the sweep that would hand its log to offline storage (`SmFactsStore.claim`: the
        first to change the facts' owner decides), the queue the client's 'h' refers to is
        rebuilt from the log, and the record is moved here (or written again when the
        reaper removed it).  What the drain appended in between is read again after the
        move; copies are dropped by (origin, ts_us)."""
        full = facts.jid
        dead = subjects.connection_manager(facts.cm_id)
        log_subject = subjects.sm_log(facts.cm_id, full, previd)
        try:
            await self._drain(facts.cm_id)
            await self._drained_out(dead, DRAIN_WAIT_S)
            read = await self.bus.read_subject(log_subject)
        except Exception as exc:
            log.warning("reading the log of a session of dead %s failed: %s", facts.cm_id, exc)
            return NotResumed("owner_silent", facts.handled)
        if not read:  # logged nowhere (durable deliveries off there)
            return NotResumed("owner_silent", facts.handled)
        owner = f"{facts.cm_id} {facts.session_id}"
        try:
            claimed = await self.sm_facts.claim(bare_of(full), previd, owner,
                                                f"{self.cm_id} {facts.session_id}")
        except Exception as exc:
            log.warning("claiming a session of dead %s failed: %s", facts.cm_id, exc)
            claimed = False
        if not claimed:  # swept to offline storage (after its timeout), or resumed elsewhere
            return NotResumed("not_found", facts.handled)
        restore = SessionRecord(self.cm_id, facts.session_id, 0, False)
        try:
            moved = await self.store.move(full, owner, self.cm_id, conn.peer, restore)
        except Exception as exc:
            log.warning("moving a resumed session failed: %s", exc)
            moved = None
        entries = _log_entries(read)
        if moved is None or moved.replaced is None or full in self.sessions:
            queue = sm.queue_from_log(previd, facts.max_s, entries, h, facts.handled)
            self._return_unacked(full, list(queue.queue))
            # ours to end: once that is stored, the dead one's log and the facts go
            self.bus.after_stored(lambda: self._spawn(self._end_dead_log(log_subject, full,
                                                                         previd)))
            return NotResumed("lost_race", queue.handled)
        try:  # what a drain decided before the move and appended after our read
            await self._drained_out(dead, DRAIN_WAIT_S)
            entries += _log_entries(await self.bus.read_subject(log_subject, read[-1][0]))
        except Exception as exc:
            log.warning("reading the rest of a session's log failed: %s", exc)
        queue = sm.queue_from_log(previd, facts.max_s, entries, h, facts.handled)
        seen: dict[str, int] = {}
        for entry in entries:
            if entry.ts_us and "/" in entry.origin:
                seen[entry.origin] = max(seen.get(entry.origin, 0), entry.ts_us)
        metrics.SM_FROM_LOG.inc()
        log.info("session of dead %s resumed from its log, %d stanzas to write again",
                 facts.cm_id, len(queue.queue))
        return Handed(JID.parse(full), queue, moved.replaced, moved.version, seen, log_subject)

    async def _end_dead_log(self, subject: str, full: str, sm_id: str) -> None:
        await self._purge_log(subject)
        try:
            await self.sm_facts.forget(full, sm_id)
        except Exception as exc:  # they expire with their TTL
            log.warning("could not delete the resumption facts: %s", exc)

    async def _owner_dead(self, cm_id: str) -> bool:
        """Whether the connection manager that did not answer a TAKEOVER is dead: its
        heartbeat expired, waited for up to its TTL."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.session_ttl_s + 1
        while True:
            try:
                alive = await self._redis.exists(keys.cm_alive(cm_id))
            except Exception as exc:
                log.warning("heartbeat lookup failed: %s", exc)
                return False
            if not alive:
                return True
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.5)

    # ---- durable deliveries: the session logs and the drain of a dead peer -------------------

    def log_queue(self, conn: C2SConnection) -> bool:
        """Append what was queued for a logged session since its last entry to its log
        (one stream message per session and tick: the bus packs them); True when some
        was.  The connection writes it only once stored (`C2SConnection._flush`)."""
        queue, jid = conn.stream.sm, conn.stream.jid
        if queue is None or jid is None or conn.logged is None:
            return False
        new = min(queue.sent - conn.logged, len(queue.queue))
        if new <= 0:
            return False
        subject = subjects.sm_log(self.cm_id, str(jid), queue.id)
        items = queue.queue
        n = len(items)
        stamps = conn.stamps
        publish = self.bus.publish_soon
        count = queue.sent - new
        handled, acked = queue.handled, queue.acked
        for i in range(n - new, n):
            count += 1
            stamp = stamps.pop(count, None) if stamps else None
            origin, ts_us = stamp if stamp is not None else ("", 0)
            publish(subject, sm.log_entry(count, handled, origin, ts_us, items[i],
                                          acked=acked))
        conn.logged = queue.sent
        return True

    def log_ack(self, conn: C2SConnection) -> None:
        """The client of a logged session acknowledged stanzas (<a/>): its log learns it
        (packed with the tick's other entries of the session), so that a session never
        resumed after a death hands to offline storage only what was not acknowledged."""
        queue, jid = conn.stream.sm, conn.stream.jid
        if queue is None or jid is None or conn.logged is None:
            return
        self.bus.publish_soon(subjects.sm_log(self.cm_id, str(jid), queue.id),
                              sm.ack_mark(queue.handled, queue.acked))

    def log_soon(self, conn: C2SConnection) -> None:
        """A session that writes nothing now (detached, closing) got stanzas: logged at the
        end of the tick."""
        if not self._log_due:
            asyncio.get_running_loop().call_soon(self._log_detached)
        self._log_due.add(conn)

    def _log_detached(self) -> None:
        due, self._log_due = self._log_due, set()
        for conn in due:
            self.log_queue(conn)

    def _base(self, conn: C2SConnection) -> None:
        """A session taken over from another connection manager: its whole queue, as
        counted here, starts a new base of its log."""
        queue, jid = conn.stream.sm, conn.stream.jid
        if not self.logging or queue is None or jid is None:
            return
        subject = subjects.sm_log(self.cm_id, str(jid), queue.id)
        count = queue.sent - len(queue.queue)
        self.bus.publish_soon(subject, sm.log_entry(0, queue.handled, "", 0, b"", base=True,
                                                    acked=count))
        for stanza in queue.queue:
            count += 1
            self.bus.publish_soon(subject, sm.log_entry(count, queue.handled, "", 0, stanza,
                                                        acked=queue.acked))
        conn.logged, conn.stamps = queue.sent, {}

    async def _janitor(self) -> None:
        """Every few seconds: a dead connection manager (its heartbeat expired) that left
        deliveries in its subject or session logs is taken care of by one live connection
        manager (a lease in Redis): its deliveries are drained, then the logs of the
        sessions whose client did not resume in time are handed to offline storage
        (`_sweep`); the lease is given up once nothing is left or the owner is back."""
        interval = max(1.0, self.settings.session_ttl_s / 3)
        loop = asyncio.get_running_loop()
        s = self.settings
        log_age = max(s.sm_resume_timeout_s, s.sm_max_resume_timeout_s) + LOG_SLACK_S
        mark_every = max(interval, min(LOG_SLACK_S / 2, log_age / 4))
        marked = loop.time()  # at start
        while True:
            await asyncio.sleep(interval)
            if loop.time() - marked >= mark_every:  # before the stream's max_age drops it
                self.bus.publish_soon(subjects.sm_log_marker(self.cm_id), b"")
                marked = loop.time()
            try:
                await self._janitor_round()
            except Exception as exc:
                log.warning("drain round failed: %s", exc)

    async def _janitor_round(self) -> None:
        counts = await self.bus.subject_counts("cm")
        marks = await self.bus.subject_counts("smlog", subjects.SM_LOG_MARKERS)
        peers = {s.rpartition(".")[2] for s in counts} | {s.split(".")[2] for s in marks}
        peers |= self._dead.keys()
        peers.discard(self.cm_id)
        if self._previous_logs and await self._sweep(self.cm_id, self._previous_logs):
            self._previous_logs = set()
            self._logs_of.pop(self.cm_id, None)
        if not peers:
            return
        order = sorted(peers)
        async with self._redis.pipeline(transaction=False) as pipe:
            for cm_id in order:
                pipe.exists(keys.cm_alive(cm_id))
            alive = await pipe.execute()
        for cm_id, up in zip(order, alive, strict=True):
            if up:
                if cm_id in self._dead:
                    await self._stop_draining(cm_id)
                continue
            if cm_id in self._dead:
                await self._redis.set(keys.cm_drain(cm_id), self.cm_id, ex=DRAIN_LEASE_S)
            elif not await self._lease(cm_id):
                continue
            subject = subjects.connection_manager(cm_id)
            if subject in counts:  # its deliveries first: some go into the logs
                if cm_id not in self._draining:
                    await self._consume_dead(cm_id)
                continue
            if cm_id in self._draining:
                del self._draining[cm_id]
                await self.bus.stop_consuming(subject)
            if await self._sweep(cm_id):
                mark = subjects.sm_log_marker(cm_id)
                if mark in marks:
                    await self._purge_log(mark)
                await self._stop_draining(cm_id)

    async def _lease(self, cm_id: str) -> bool:
        """Take the lease of dead ``cm_id`` if no one has it."""
        if cm_id in self._dead:
            return True
        if not await self._redis.set(keys.cm_drain(cm_id), self.cm_id, nx=True,
                                     ex=DRAIN_LEASE_S):
            return False
        self._dead[cm_id] = time.time()
        return True

    async def _drain(self, cm_id: str) -> None:
        """Consume a dead connection manager's subject here, if no one else does."""
        if cm_id in self._draining or cm_id == self.cm_id or not await self._lease(cm_id):
            return
        await self._consume_dead(cm_id)

    async def _consume_dead(self, cm_id: str) -> None:
        subject = subjects.connection_manager(cm_id)
        self._draining[cm_id] = subject
        try:
            await self.bus.consume(subject)
        except Exception:
            del self._draining[cm_id]
            raise
        metrics.DRAINS.inc()
        log.info("draining the deliveries of dead connection manager %s", cm_id)

    async def _stop_draining(self, cm_id: str) -> None:
        """Give up what we did for ``cm_id``: its subject, its lease."""
        subject = self._draining.pop(cm_id, None)
        if subject is not None:
            await self.bus.stop_consuming(subject)
        self._logs_of.pop(cm_id, None)
        if self._dead.pop(cm_id, None) is None:
            return
        with contextlib.suppress(Exception):
            if await self._redis.get(keys.cm_drain(cm_id)) == self.cm_id.encode():
                await self._redis.delete(keys.cm_drain(cm_id))
        log.info("stopped draining %s", cm_id)

    async def _logs(self, cm_id: str) -> dict[str, str]:
        """Full JID -> subject of the session logs dead ``cm_id`` left (read once)."""
        logs = self._logs_of.get(cm_id)
        if logs is None:
            logs = self._logs_of[cm_id] = _logs_by_jid(
                await self.bus.subject_counts("smlog", subjects.sm_logs_of(cm_id)))
        return logs

    async def _returned(self, full: str, stanzas: list[bytes]) -> bool:
        """`_return_unacked`, and whether every one of them was stored (PubAck'd)."""
        failures: list[bool] = []
        self._return_unacked(full, stanzas, lambda: failures.append(True))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def stored() -> None:
            if not done.done():
                done.set_result(None)
        self.bus.after_stored(stored)
        await done  # bounded: a PubAck not come in PUBACK_TIMEOUT_S counts as a failure
        return not failures

    async def _sweep(self, cm_id: str, only: set[str] | None = None) -> bool:
        """XEP-0198 §5 for the sessions of dead ``cm_id`` whose client did not resume within
        the resumption timeout (counted from when we found it dead, or the deadline of a
        session it had detached): what the client had not acknowledged (the log's last
        acknowledged count) goes to the router as undelivered (`SM_UNACKED_ORIGIN`:
        messages to offline storage), then the log is purged and the facts deleted.  The
        facts' owner is changed first (`SWEPT`): a resume that has not claimed the session
        by then gets <item-not-found/>, and one that has is left alone.  At most
        `SWEEP_BATCH` sessions a round; True when nothing is left to sweep.  ``only``: the
        logs a previous run with our own id left, due at once."""
        if only is not None:
            listed = dict.fromkeys(only, 0)
        else:
            listed = await self.bus.subject_counts("smlog", subjects.sm_logs_of(cm_id))
        now = time.time()
        since = self._dead.get(cm_id, now) if only is None else 0.0
        left = False
        swept = 0
        logs = self._logs_of.get(cm_id, {})
        for subject in sorted(listed):
            parts = subjects.sm_log_parts(subject)
            if parts is None:
                continue
            if swept >= SWEEP_BATCH:
                return False
            _, full, sm_id = parts
            bare = bare_of(full)
            facts = await self.sm_facts.get(bare, sm_id)
            if facts is not None and facts.cm_id != cm_id:
                continue  # resumed elsewhere: that connection manager purges this log
            if facts is None:  # expired (detached, its deadline passed) or Redis lost
                due = since + self.settings.sm_resume_timeout_s
            elif facts.deadline:
                due = facts.deadline
            else:
                due = since + facts.max_s
            if now < due:
                left = True
                continue
            if facts is not None and facts.session_id != SWEPT and not await self.sm_facts.claim(
                    bare, sm_id, f"{cm_id} {facts.session_id}", f"{cm_id} {SWEPT}"):
                left = True  # claimed by a resume meanwhile: looked at again
                continue
            if logs.get(full) == subject:
                del logs[full]  # what is drained for it from now on is undelivered
            queue = sm.unacked_from_log(_log_entries(await self.bus.read_subject(subject)))
            if not await self._returned(full, list(queue.queue)):
                left = True  # the router's stream refused some: all of it again next round
                continue
            await self._purge_log(subject)
            if facts is not None:
                await self.sm_facts.forget(full, sm_id)
            swept += 1
            metrics.SM_SWEPT.inc()
            log.info("session %s of dead %s not resumed: %d unacknowledged stanzas to the "
                     "router", sm_id, cm_id, len(queue.queue))
        return not left

    async def _drained_out(self, subject: str, timeout_s: float) -> None:
        """Wait until ``subject`` holds nothing (everything handled and acked), at most
        ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while subject in await self.bus.subject_counts("cm") and loop.time() < deadline:  # noqa: ASYNC110 (a count on the server, polled)
            await asyncio.sleep(0.1)

    async def _drained(self, batch: list[tuple[str, bytes]]) -> list[Envelope]:
        """Deliveries taken from a dead connection manager's subject: they were routed to
        a session of the dead one, and are older than anything routed to where its full JID
        is bound now (one router per recipient partition, RFC 6120 §10.1), so they never
        go to a newer session of that full JID, where the replay check would drop them as
        not newer than what it already delivered.  For a session resumed here from the dead
        one's log, or handed over from here, they take the usual path (returned); for a
        full JID with a log of the dead one (its resume reads it after the drain, or the
        sweep hands it to offline storage) they are appended to it, uncounted; everything
        else is that session's unacknowledged stanzas (XEP-0198 §5): messages to offline
        storage (`SM_UNACKED_ORIGIN`), IQ requests bounced."""
        local: list[Envelope] = []
        units: list[tuple[str, Envelope]] = []  # (dead connection manager, delivery)
        for subject, data in batch:
            dead = subject.rpartition(".")[2]
            for env in decoded([(subject, data)]):
                if env.kind is Kind.FANOUT:
                    units.extend((dead, env._replace(to=full, payload=with_to(env.payload,
                                                                              full)))
                                 for full in env.to.split(FANOUT_SEPARATOR))
                elif env.kind in STANZA_KINDS or env.kind is Kind.BATCH:
                    units.append((dead, env))
        for dead, env in units:
            conn = self.sessions.get(env.to)
            if ((conn is not None and conn.resumed_from == dead)
                    or (conn is None and env.to in self.handed_over)):
                local.append(env)
            elif not self._to_log(await self._logs(dead), env):
                if env.kind is Kind.FANOUT and self.service_domains.get(env.from_domain):
                    self._gone_from_service(env, env.to)
                else:
                    stanzas = (split_stanzas(env.payload) if env.kind is Kind.BATCH
                               else [env.payload])
                    metrics.DRAINED.labels("undelivered").inc(len(stanzas))
                    self._return_unacked(env.to, stanzas)
        return local

    def _to_log(self, logs: dict[str, str] | None, env: Envelope) -> bool:
        """Append ``env`` (a delivery to a session of a dead connection manager), uncounted,
        to its full JID's log in ``logs``, if there is one."""
        subject = logs.get(env.to) if logs else None
        if subject is None:
            return False
        stanzas = split_stanzas(env.payload) if env.kind is Kind.BATCH else [env.payload]
        for stanza in stanzas:
            self.bus.publish_soon(subject, sm.log_entry(0, 0, env.origin, env.ts_us, stanza))
        metrics.DRAINED.labels("log").inc(len(stanzas))
        return True

    async def _left(self, gone: list[Envelope]) -> None:
        """Deliveries on our own subject for a full JID with no session here (not moving
        either).  Routed to a session a previous run of ours had, that has a log: appended
        to it (`_to_log`: swept to offline storage with what the client had not
        acknowledged, without a copy).  A message whose full JID is bound on another
        connection manager now was routed here before that bind, so it is older than what
        goes there directly: rerouted, it would come after those and the replay check would
        drop it (RFC 6120 §10.1 order, no loss), so it is returned as the unacknowledged
        stanza of the session that ended (XEP-0198 §5: offline storage).  The rest as
        before (`_undeliverable`: the session left between routing and delivery)."""
        logs = self._logs_of.get(self.cm_id)
        messages: list[Envelope] = []
        for env in gone:
            if self._to_log(logs, env):
                continue
            if self.bus.durable and env.kind is Kind.MESSAGE and env.ts_us:
                messages.append(env)
            else:
                await self._undeliverable(env)
        if not messages:
            return
        bares = sorted({env.to_bare for env in messages})
        try:  # one round trip for the batch: this path is the exception
            records = dict(zip(bares, await self.store.get_many(bares), strict=True))
        except Exception as exc:
            log.warning("session lookup for undeliverable messages failed: %s", exc)
            records = {}
        for env in messages:
            record = records.get(env.to_bare, {}).get(env.to.partition("/")[2])
            if record is not None and record.cm_id != self.cm_id:
                metrics.UNDELIVERABLE.labels(env.kind.value).inc()
                self._return_unacked(env.to, [env.payload])
            else:
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
        self._base(conn)
        if handed.old_log:  # once our base is stored, the dead one's copy goes
            old_log = handed.old_log
            self.bus.after_stored(lambda: self._spawn(self._purge_log(old_log)))
        if handed.seen:
            conn.seen = dict(handed.seen)
        if handed.old_log:  # what is drained for it from now on takes the usual path
            parts = subjects.sm_log_parts(handed.old_log)
            conn.resumed_from = parts[0] if parts is not None else ""
        for env in self._arriving.pop(full, []):
            if (self.bus.durable and env.kind is Kind.MESSAGE and env.ts_us
                    and _replayed(conn, env)):
                _DUPLICATES.n += 1
                continue
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
            HANDED_OVER_S, self._handed_over_done, full, env.from_, old.record, old.available,
            queue.id if old.logged is not None else "",
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
                          available: bool, logged: str = "") -> None:
        if self.handed_over.get(full) == to_cm:
            del self.handed_over[full]
        self._spawn(self._unbind_stale(full, record, available))
        if logged:  # the other pod logs it under its own id now
            self._spawn(self._purge_log(subjects.sm_log(self.cm_id, full, logged)))

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
            # XEP-0077 in band is not offered to the accounts of a delegated domain
            info = self._delegated_info if self.delegated(jid.domain) else self.server_info
            reply = server_iq.answer(st.element, st.type, info, time.time(),
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
            if conn.record is not None:  # as `_register_again` writes it after a Redis loss
                conn.record = dataclasses.replace(conn.record, carbons=enabled)
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
        gone: list[Envelope] = []  # for a full JID with no session here (`_left`)
        dedup = self.bus.durable
        envs: Iterable[Envelope]
        if self._draining and any(subject != self.own_subject for subject, _ in batch):
            envs = [*decoded([m for m in batch if m[0] == self.own_subject]),
                    *await self._drained([m for m in batch if m[0] != self.own_subject])]
        else:
            envs = decoded(batch)
        for env in envs:
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
                stamps = conn.stamps
                if stamps is not None and env.ts_us:  # logged: copies known by this stamp
                    queue = conn.stream.sm
                    before = queue.sent if queue is not None else -1
                    if conn.deliver(env.payload):
                        touched.append(conn)
                    if queue is not None and queue.sent == before + 1:
                        stamps[queue.sent] = (env.origin, env.ts_us)
                elif conn.deliver(env.payload):
                    touched.append(conn)
                if conn.detached is not None and env.kind is Kind.MESSAGE:
                    self._push_detached(conn, env)
                if env.ts_us:
                    observe(max(0, now_us - env.ts_us) / 1e6)
            elif not self._not_here(env):
                gone.append(env)
        for conn in touched:
            conn.flush()
        _STANZAS_OUT.n += written
        if gone:
            await self._left(gone)

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
ALIVE_CHECK_S: Final = 0.5  # how often Redis is asked whether it still has our heartbeat
RESTORE_CHUNK: Final = 1000  # sessions written again per batch of round trips
# A stopping pod stays up this long after its last hand-over, forwarding what routers that
# have not yet seen the new owner send here; then what its unbinds still publish goes out.
SHUTDOWN_FORWARD_S: Final = 2.0
FINAL_WRITES_S: Final = 5.0
STOPPING_LOAD_S: Final = 1.0  # the "full" record of a stopping pod: at most this long
# a queue handed over travels in one NATS message (max_payload: 1 MiB by default)
MAX_HANDOVER_BYTES: Final = 900 * 1024
# durable deliveries: a session log keeps its entries this much longer than the longest
# resumption timeout; a drain lease lives this long unless renewed; a resume from a log
# waits at most this long for the dead connection manager's subject to be drained
LOG_SLACK_S: Final = 600
DRAIN_LEASE_S: Final = 30
DRAIN_WAIT_S: Final = 10.0
SWEEP_BATCH: Final = 200  # sessions of a dead connection manager swept per janitor round
SWEPT: Final = "swept"  # the session id in the facts of a session being swept


def _logs_by_jid(found: Iterable[str]) -> dict[str, str]:
    """Full JID -> subject of the session logs among ``found`` subjects."""
    logs = {}
    for subject in sorted(found):
        parts = subjects.sm_log_parts(subject)
        if parts is not None:
            logs[parts[1]] = subject
    return logs


def _log_entries(read: list[tuple[int, bytes]]) -> list[sm.LogEntry]:
    """The entries of a session log's stream messages (packed or single), in order."""
    out = []
    for _seq, data in read:
        parts = streams.unpack(data) if data.startswith(streams.MULTI_PREFIX) else [data]
        for part in parts:
            try:
                out.append(sm.LogEntry(part))
            except ValueError:
                log.warning("a malformed session log entry skipped")
    return out


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
    seen: dict[str, int] | None = None  # from a log: the last ts_us per sending session
    old_log: str = ""  # from a log: its subject, purged once this pod's base is stored


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

