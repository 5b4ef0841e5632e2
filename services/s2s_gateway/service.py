"""The s2s gateway: every server-to-server connection of the cluster (RFC 6120, XEP-0220).

Outbound: stanzas for a remote domain arrive on ``stanzad.s2s.<p>`` (p = partition of the
remote domain).  The gateway is a partitioned service of role "s2s": one process at a time
owns a partition, hence a remote domain's connections, and the order per sender → recipient
is kept.  With durable delivery a stream message is acked only once every stanza it carried
is settled on its link (outbound.py, `Bus.hold`), and a link whose queue is full stops the
pulling of its partition (`queue_full`) instead of bouncing.

Each pair (local domain, remote domain) has one `Link` (outbound.py): the cluster
serves several domains (the main one and its service domains, shared/bus/destinations.py),
and a stream is authenticated for one pair (RFC 6120 §13.7), so a room's stanzas to a remote
domain go on a stream from ``conference.<domain>``, its users' on one from ``<domain>``.

Inbound: peers connect to our port (5269, STARTTLS) or to the optional direct TLS port
(XEP-0368, usually 5270), addressed to any domain we serve, and authenticate with SASL
EXTERNAL when their certificate is valid
for their domain (XEP-0178: the system trust store, or STANZAD_S2S_TRUSTED_CERTS), else with
dialback; accepted stanzas go onto the bus exactly as a connection manager publishes a
client's, with origin "s2s" (no '/': the roster service treats such subscription presence
as inbound for the local user).
Any gateway process may take any inbound connection and answer any <db:verify/>: the
dialback secret is the cluster's, not the process's.

Certificates per domain (STANZAD_TLS_CERTS_DIR, shared/tls/certs.py): inbound, the handshake
presents the certificate of the local domain the peer names in SNI (RFC 6066 §3), or, on a
STARTTLS stream without SNI, the one its header addressed; outbound, a stream presents the
certificate of the local domain it speaks for, which the peer checks against that domain
before it accepts SASL EXTERNAL (XEP-0178 §2).  A domain without its own certificate (and a
service subdomain without one, which gets its parent's) uses STANZAD_TLS_CERT.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import signal
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL

from shared.bus import subjects
from shared.bus.client import NO_HOLD
from shared.bus.envelope import STANZA_KINDS, Envelope, EnvelopeError, Kind
from shared.cluster.partitioned import PartitionedService
from shared.cluster.source_limits import ConnectionRate, ConnectionsPerSource, Networks
from shared.router import ingress
from shared.runtime.metrics import TLS_CERT_EXPIRY, TLS_DOMAIN_CERT_EXPIRY
from shared.runtime.settings import ConfigError, S2SSettings
from shared.store import keys
from shared.tls import memory as tls_memory
from shared.tls.certs import DomainCertificates
from shared.tls.context import certificate_expiry, ensure_self_signed
from shared.tls.peer_cert import CertificateTrust
from shared.xmpp import archive, ns, pubsub, server_iq
from shared.xmpp.errors import StanzaError, StanzaErrorCondition, StreamErrorCondition
from shared.xmpp.parser import parse_fragment, serialize
from shared.xmpp.s2s import DialbackRequested, S2SConfig, StanzaIn
from shared.xmpp.s2s_out import VerifyRequest
from shared.xmpp.stanza import error_reply, iq_result

from . import metrics
from .component import ORIGIN as COMPONENT_ORIGIN
from .component import ComponentConnection, ComponentHub
from .connection import InboundConnection
from .outbound import Link, verify_key
from .resolver import Resolver

log = logging.getLogger(__name__)

SERVICE = "s2s_gateway"
ORIGIN = "s2s"  # envelope origin of stanzas from remote servers (no '/': not a local session)
UNVERIFIABLE_TTL_S = 3600.0
COMPONENT_SUBJECTS = subjects.component("x").rpartition(".")[0] + "."


def client_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS for our outbound streams.  The peer's certificate is not required to validate:
    dialback (XEP-0220) authenticates the peer when it does not.  Ours is presented for the
    peer's own checks."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["xmpp-server"])  # XEP-0368 §3 (harmless after STARTTLS)
    return ctx


def verifying_context(cert: str, key: str, cafile: str | None) -> ssl.SSLContext:
    """TLS for an outbound stream whose peer certificate must be valid for the domain: the
    system's trust store, or only ``cafile`` (a self-signed certificate trusted for one
    domain, STANZAD_S2S_TRUSTED_CERTS).  A valid certificate allows SASL EXTERNAL."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["xmpp-server"])
    return ctx


@dataclass(slots=True)
class DomainTLS:
    """The contexts of one certificate and key, both ways: inbound STARTTLS and direct TLS
    (pyOpenSSL, shared/tls/memory.py), outbound without and with verification of the peer
    (one per trust store: the system's, keyed '', or a file of STANZAD_S2S_TRUSTED_CERTS)."""

    cert: str
    key: str
    server: SSL.Context
    direct: SSL.Context
    client: ssl.SSLContext
    verifying: dict[str, ssl.SSLContext] = field(default_factory=dict)

    @classmethod
    def load(cls, cert: str, key: str) -> DomainTLS:
        """Raises CertificateProblem (or OSError, ssl.SSLError) when the pair does not load."""
        return cls(
            cert, key,
            server=tls_memory.server_context(cert, key),
            direct=tls_memory.server_context(cert, key, alpn=[b"xmpp-server"]),  # XEP-0368 §3
            client=client_context(cert, key),
        )

    def verifying_for(self, cafile: str | None) -> ssl.SSLContext:
        ctx = self.verifying.get(cafile or "")
        if ctx is None:
            ctx = self.verifying[cafile or ""] = verifying_context(self.cert, self.key, cafile)
        return ctx


class S2SGateway(PartitionedService):
    name = SERVICE
    role = "s2s"
    uses_database = True  # the virtual hosts (shared/cluster/vhosts.py)

    def __init__(self, settings: S2SSettings) -> None:
        super().__init__(
            settings,
            settings.s2s_id or f"s2s-{secrets.token_hex(4)}",
            lambda p: [subjects.s2s(p)],
            metrics.PARTITIONS.set,
        )
        self.s2s_settings = settings
        self.server_info = server_iq.ServerInfo(time.time(), settings.contacts)
        self.domain = settings.domain
        # every domain this gateway speaks for: the account domains (the main one and the
        # virtual hosts, kept current by `vhosts`) and the service domains
        self.local_domains = frozenset({*self.destinations.accounts,
                                        *settings.service_domains})
        self.vhosts.listeners.append(self._hosts_changed)
        self.resolver = Resolver(settings.override_map(), settings.s2s_connect_timeout_s,
                                 settings.dns_servers())
        self.links: dict[tuple[str, str], Link] = {}  # (local, remote) -> its stream
        self.inbound: set[InboundConnection] = set()
        self.stream_config = S2SConfig(domain=settings.domain, secret=b"",
                                       other_domains=self.local_domains - {settings.domain})
        self.port = 0
        self.direct_tls_port = 0
        self._server: asyncio.Server | None = None
        self._direct_server: asyncio.Server | None = None
        self.default_tls: DomainTLS | None = None  # STANZAD_TLS_CERT's, loaded by start()
        # certificates per domain (shared/tls/certs.py): picked by SNI inbound, by the local
        # domain a stream speaks for outbound
        self.domain_certs = DomainCertificates(
            settings.tls_certs_dir, DomainTLS.load,
            lambda domain, expiry: TLS_DOMAIN_CERT_EXPIRY.labels(SERVICE, domain).set(expiry))
        self._cert_stamp: tuple[float, float] | None = None
        self._unverifiable: dict[str, float] = {}  # domain -> until when not to try again
        self.per_source = ConnectionsPerSource(settings.s2s_max_connections_per_ip)
        self.connection_rate = ConnectionRate(settings.s2s_connections_per_ip_per_min)
        # load balancers whose connections start with a PROXY protocol header
        self.proxies = Networks(settings.s2s_proxy_protocol_networks)
        # external components (XEP-0114): the domains with a secret, and those held here
        self.component_secrets = {d: s for d, s in settings.component_secrets.items() if s}
        self.components = ComponentHub(self)
        self.component_port = 0
        self._component_server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._full: dict[int, set[Link]] = {}  # partition -> its links with a full queue

    def _hosts_changed(self, hosts: object) -> None:
        """The account domains changed: new streams serve the new set, and the open streams
        of a domain removed end (inbound: RFC 6120 §4.9.3.5 host-gone; outbound: closed,
        what waited bounced)."""
        self.local_domains = frozenset({*self.destinations.accounts,
                                        *self.settings.service_domains})
        self.stream_config = dataclasses.replace(
            self.stream_config, other_domains=self.local_domains - {self.domain})
        for conn in list(self.inbound):
            local = conn.stream.local
            if local and local not in self.local_domains:
                conn.close(StreamErrorCondition.HOST_GONE, "this domain is no longer served")
        for pair, link in list(self.links.items()):
            if pair[0] not in self.local_domains:
                link.close()
                del self.links[pair]

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.s2s_settings
        others = sorted(self.local_domains - {s.domain})
        if ensure_self_signed(s.tls_cert, s.tls_key, s.domain, others):
            log.info("wrote a self-signed certificate for %s (and %s) to %s", s.domain,
                     ", ".join(others) or "no other domain", s.tls_cert)
        try:
            self.trust = CertificateTrust.load(s.trusted_certs())
        except ValueError as exc:
            raise ConfigError(f"STANZAD_S2S_TRUSTED_CERTS: {exc}") from None
        self.domain_certs.load()  # a missing or expired one stops the start, named
        self._load_tls()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_tls)
        self.spawn_task(self._watch_certificates())
        self.stream_config = S2SConfig(
            domain=s.domain,
            secret=await self._secret(),
            other_domains=self.local_domains - {s.domain},
            tls_available=True,
            tls_required=s.s2s_tls_required,
            max_stanza_bytes=s.s2s_max_stanza_bytes,
            stream_management=s.s2s_stream_management,
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: InboundConnection(self), s.s2s_host, s.s2s_port, backlog=256,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("%s listening for s2s on %s:%d (domains %s)", self.member_id, s.s2s_host,
                 self.port, ", ".join(sorted(self.local_domains)))
        if s.s2s_direct_tls_port:
            self._direct_server = await loop.create_server(
                lambda: InboundConnection(self, direct_tls=True), s.s2s_host,
                s.s2s_direct_tls_port, backlog=256, reuse_address=True,
            )
            self.direct_tls_port = self._direct_server.sockets[0].getsockname()[1]
            log.info("%s listening for direct TLS s2s (XEP-0368) on %s:%d", self.member_id,
                     s.s2s_host, self.direct_tls_port)
        unsecret = set(s.component_secrets) - set(self.component_secrets)
        if unsecret:
            log.warning("components without a secret are refused: %s", sorted(unsecret))
        if self.component_secrets:
            self._component_server = await loop.create_server(
                lambda: ComponentConnection(self), s.component_host, s.component_port,
                backlog=256, reuse_address=True,
            )
            self.component_port = self._component_server.sockets[0].getsockname()[1]
            self.components.start()
            log.info("%s listening for components (XEP-0114) on %s:%d: %s", self.member_id,
                     s.component_host, self.component_port,
                     ", ".join(sorted(self.component_secrets)))
        await super().start()

    def _load_tls(self) -> None:
        """The default certificate and key (STANZAD_TLS_CERT), for every context: inbound
        (STARTTLS, direct TLS; their SNI callbacks switch to a domain's certificate) and
        outbound (plain and verifying).  Raises when the files do not load."""
        s = self.s2s_settings
        self._cert_stamp = self._stamp()
        default = DomainTLS.load(s.tls_cert, s.tls_key)
        tls_memory.choose_by_sni(default.server, lambda name: self._server_context(name, False))
        tls_memory.choose_by_sni(default.direct, lambda name: self._server_context(name, True))
        default.verifying_for(None)  # loads the system trust store now, not mid-stream
        self.default_tls = default
        TLS_CERT_EXPIRY.labels(SERVICE).set(certificate_expiry(s.tls_cert))

    def _server_context(self, name: str, direct: bool) -> SSL.Context | None:
        """The SNI callback's choice: the context of a domain with its own certificate."""
        tls = self.domain_certs.context_for(name)
        if tls is None:
            return None
        return tls.direct if direct else tls.server

    def _stamp(self) -> tuple[float, float] | None:
        s = self.s2s_settings
        try:
            return (os.stat(s.tls_cert).st_mtime, os.stat(s.tls_key).st_mtime)
        except OSError:
            return None

    async def _watch_certificates(self) -> None:
        """Certificates replaced on disk (cert-manager renewing a Secret) serve new handshakes,
        both ways, without a restart or a SIGHUP."""
        while True:
            await asyncio.sleep(self.s2s_settings.tls_reload_s)
            self.domain_certs.refresh()
            if self._stamp() != self._cert_stamp:
                self.reload_tls()

    def reload_tls(self) -> None:
        """SIGHUP: load the certificates and keys again; new handshakes, both ways, use them
        (streams already up keep theirs)."""
        try:
            self.domain_certs.refresh()
            self._load_tls()
        except Exception as exc:
            log.error("TLS reload failed, keeping the old certificate: %s", exc)
            return
        log.info("reloaded the TLS certificate from %s", self.s2s_settings.tls_cert)

    def tls_of(self, local: str) -> DomainTLS:
        """The contexts of the certificate a stream for our domain ``local`` presents."""
        found = self.domain_certs.context_for(local)
        if found is not None:
            return found
        assert self.default_tls is not None, "start() loads the certificate"
        return self.default_tls

    def server_tls(self, direct: bool) -> SSL.Context:
        """The context an inbound handshake starts with: the default one, whose SNI callback
        moves it to the certificate of the domain the peer names (or, with no SNI, the one
        the connection names: `tls_memory.ServerTLS`)."""
        assert self.default_tls is not None, "start() loads the certificate"
        return self.default_tls.direct if direct else self.default_tls.server

    # ---- TLS for outbound streams ----------------------------------------------------------

    def should_verify(self, domain: str) -> bool:
        """Try a verifying handshake (and so SASL EXTERNAL) unless this domain's certificate
        failed verification in the last hour."""
        until = self._unverifiable.get(domain)
        return until is None or until < time.monotonic()

    def unverifiable(self, domain: str) -> None:
        self._unverifiable[domain] = time.monotonic() + UNVERIFIABLE_TTL_S

    def tls_context_for(self, domain: str, verify: bool, local: str = "") -> ssl.SSLContext:
        """The client context of an outbound stream to ``domain`` from our domain ``local``
        (the main one by default): it presents ``local``'s certificate (XEP-0178 §2: the
        peer checks it against the stream's 'from'), and with ``verify`` checks the peer's
        against the system's trust store or the file trusted for ``domain``."""
        tls = self.tls_of(local or self.domain)
        if not verify:
            return tls.client
        return tls.verifying_for(self.s2s_settings.trusted_certs().get(domain))

    async def _secret(self) -> bytes:
        """The configured secret, or the cluster's random one (created once, in Redis)."""
        configured = self.s2s_settings.s2s_dialback_secret.get_secret_value()
        if configured:
            return configured.encode()
        await self.redis.set(keys.dialback_secret(), secrets.token_hex(32), nx=True)
        stored = await self.redis.get(keys.dialback_secret())
        return bytes(stored)

    def admit(self, source: str) -> str:
        """RFC 6120 §13.12: a new inbound connection from ``source``; '' when admitted, else
        why not ("per_ip", "rate")."""
        if not self.connection_rate.admit(source, time.monotonic()):
            return "rate"
        if not self.per_source.admit(source):
            return "per_ip"
        return ""

    def ready(self) -> bool:
        return self._server is not None and super().ready()

    def spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for server in (self._server, self._direct_server, self._component_server):
            if server is not None:
                server.close()
        await self.components.stop()
        if not self.durable:  # durable: closed as their partitions are released (below), so
            for link in list(self.links.values()):  # what they hold settles or is left
                link.close()                        # unacked for the next owner
        for conn in list(self.inbound):
            conn.close()
        await asyncio.sleep(0.05)  # let the closing stream tags go out
        await super().stop()
        for link in list(self.links.values()):  # any a failed release left
            link.close(bounce=False)

    async def _release(self, p: int) -> None:
        """A partition moved to another gateway: so do its domains' connections.  Durable:
        the release waited (`Bus.stop_consuming`) for what the links held to settle; what
        still waits in a queue is left unacked, so the next owner sends it."""
        await super()._release(p)
        for pair, link in list(self.links.items()):
            if subjects.partition(pair[1], self.settings.partitions) == p:
                link.close(bounce=not self.durable)
                del self.links[pair]

    def queue_full(self, link: Link, full: bool) -> None:
        """Flow control with durable delivery: while a link's queue is full, its domain's
        partition is not pulled (`Bus.pause`); what was pulled waits on the link with its
        stream message unacked, instead of being bounced.  Bounced is only what cannot go:
        the link could not be set up in STANZAD_S2S_CONNECT_TIMEOUT_S."""
        p = subjects.partition(link.domain, self.settings.partitions)
        links = self._full.get(p)
        if full:
            if links is None:
                links = self._full[p] = set()
                self.bus.pause(subjects.s2s(p))
                metrics.PAUSED.inc()
                log.info("s2s partition %d paused: the queue for %s is full", p, link.domain)
            links.add(link)
        elif links is not None and link in links:
            links.discard(link)
            if not links:
                del self._full[p]
                self.bus.resume(subjects.s2s(p))
                metrics.PAUSED.dec()

    # ---- outbound --------------------------------------------------------------------------

    async def handle_batch(self, batch: list[tuple[str, bytes]]) -> None:
        for i, (subject, data) in enumerate(batch):
            component = subject.startswith(COMPONENT_SUBJECTS)
            try:
                env = Envelope.decode(data)
            except EnvelopeError as exc:
                if not component:
                    log.warning("dropped a bad envelope: %s", exc)
                continue
            if component:
                self.components.deliver(env)
            elif env.kind in STANZA_KINDS:
                self.send_remote(env, i)

    def send_remote(self, env: Envelope, item: int = -1) -> None:
        """``item``: its index in the batch being handled, whose stream message's ack then
        waits until the link settled the stanza (`Bus.hold`)."""
        domain = env.to_domain
        if not domain or self.destinations.is_local(domain):  # not for us: to its service
            self.bus.publish_soon(self.destinations.subject(env.to_bare),
                                  env.forwarded().encode())
            return
        local = env.from_domain
        if local not in self.local_domains:  # RFC 6120 §8.1.2.1: the peer would refuse it
            log.warning("dropped a stanza for %s from a domain we do not serve: %s", domain,
                        local)
            metrics.BOUNCES.labels("invalid-from").inc()
            return
        pair = (local, domain)
        link = self.links.get(pair)
        if link is None or link.done:
            link = self.links[pair] = Link(self, domain, local=local)
        link.send(env, self.bus.hold(item) if item >= 0 else NO_HOLD)

    def bounce(self, env: Envelope, condition: StanzaErrorCondition) -> None:
        """Tell a local sender its stanza could not go out (RFC 6120 §8.3)."""
        if env.from_domain not in self.local_domains:
            return
        bounce = env.bounce(
            condition, origin=SERVICE, max_bytes=self.s2s_settings.s2s_max_stanza_bytes
        )
        if bounce is None:
            return
        metrics.BOUNCES.labels(condition.value).inc()
        # to the sender's service: a local user's router, or the room that sent it
        self.bus.publish_soon(self.destinations.subject(env.from_bare), bounce.encode())

    # ---- inbound ---------------------------------------------------------------------------

    async def verify_dialback(self, request: DialbackRequested) -> bool | None:
        return await verify_key(
            self,
            VerifyRequest(request.receiving, request.originating, request.stream_id,
                          request.key),
        )

    def stanza_from_component(self, conn: ComponentConnection, st: StanzaIn) -> None:
        """A component's stanza enters the cluster as a peer server's does; one for a remote
        domain is refused, since our s2s streams speak for our own domain only."""
        if not self.destinations.is_local(st.to.domain):
            env = Envelope(Kind(st.kind), to=str(st.to), from_=str(st.from_), type=st.type,
                           id=st.id, origin=COMPONENT_ORIGIN, payload=st.payload)
            condition = StanzaErrorCondition.REMOTE_SERVER_NOT_FOUND
            bounce = env.bounce(condition, origin=SERVICE,
                                max_bytes=self.s2s_settings.component_max_stanza_bytes,
                                text="components reach local addresses only")
            if bounce is not None:
                metrics.COMPONENT_BOUNCES.labels(condition.value).inc()
                conn.send(bounce)
            return
        self.stanza_from_peer(st, COMPONENT_ORIGIN)

    def stanza_from_peer(self, st: StanzaIn, origin: str = ORIGIN) -> None:
        """Publish an accepted stanza as a connection manager would publish a client's
        (services/connection_manager/service.py `stanza_from_client`)."""
        to, from_ = st.to, st.from_
        env = Envelope(Kind(st.kind), to=str(to), from_=str(from_), type=st.type, id=st.id,
                       origin=origin, payload=st.payload, ts_us=time.time_ns() // 1000)
        services = self.settings.service_domains
        node = ""
        if st.kind == "iq" and services.get(to.domain) == ingress.Family.PUBSUB.value:
            node = self._request_node(st)
        where = ingress.from_peer(st.kind, st.type, to, services, node)
        if isinstance(where, ingress.ToServer):
            self._to_server(st)
        elif isinstance(where, ingress.Publish):
            if st.kind == "message" and where.family is ingress.Family.ROUTE:
                env = env._replace(payload=self._message_ingress(st, env.ts_us))
            self.bus.publish_soon(where.subject(self.settings.partitions),
                                  env._replace(to=where.to).encode())
        pep = ingress.peer_presence_to_pep(st.kind, st.type, to, services)
        if pep is not None and ns.MUC_USER.encode() not in st.payload:  # not a room's
            self.bus.publish_soon(pep.subject(self.settings.partitions),
                                  env._replace(to=pep.to).encode())

    def _request_node(self, st: StanzaIn) -> str:
        """The node a remote entity's IQ to the pubsub domain names (its partition); the
        stanza is parsed again here, federation traffic being small next to c2s."""
        try:
            element = parse_fragment(st.payload, self.s2s_settings.s2s_max_stanza_bytes)
        except Exception:
            return ""
        return pubsub.request_node(element)

    def _message_ingress(self, st: StanzaIn, ts_us: int) -> bytes:
        """A remote sender's message enters the cluster here, as a client's does at its
        connection manager: stanza-ids in our name removed (XEP-0359 §4), and one to archive
        gets its id, for the local recipient's archive."""
        try:
            element = parse_fragment(st.payload, self.s2s_settings.s2s_max_stanza_bytes)
        except Exception:
            return st.payload
        domain = st.to.domain  # the recipient's: ids in its name are forged (XEP-0359 §4)
        payload = serialize(element) if archive.strip_forged(element, domain) else st.payload
        if self.settings.mam_enabled and archive.facts(element).archive:
            payload = archive.with_stanza_id(payload, st.to.bare_str, archive.new_id(ts_us))
        return payload

    def _to_server(self, st: StanzaIn) -> None:
        """RFC 6120 §10.3: stanzas to our domain itself; IQs answered (disco, ping, version),
        the answer goes back over our own outbound stream to the peer."""
        if st.kind != "iq" or st.type not in ("get", "set"):
            return
        try:
            element = parse_fragment(st.payload, self.s2s_settings.s2s_max_stanza_bytes)
        except Exception:
            return
        reply = server_iq.answer(element, st.type, self.server_info, time.time(),
                                 self.settings.service_domains)
        if isinstance(reply, StanzaError):
            payload = error_reply(element, reply, to=str(st.from_), from_=str(st.to))
            type_ = "error"
        else:
            payload = iq_result(st.id, str(st.from_), str(st.to), reply or "")
            type_ = "result"
        env = Envelope(Kind.IQ, to=str(st.from_), from_=str(st.to), type=type_, id=st.id,
                       origin=SERVICE, payload=payload)
        # back over our own s2s stream to a peer, or to the component that asked
        self.bus.publish_soon(self.destinations.subject(st.from_.bare_str), env.encode())

