"""External components (XEP-0114): their listener, their streams, and who holds which domain.

Why here: a component is a trusted peer that speaks a server-like stream, and the gateway
already is the cluster's XML stream server for peers, with per-address admission, stanza
rates and the same ingress (shared/router/ingress.py `from_peer`).  Any gateway process may
hold any component: the component picks the pod by connecting (a k8s Service in front of the
gateways' component port), and the process that holds a domain's stream subscribes to the
subject of that domain (`subjects.component`, shared/bus/destinations.py), so every stanza
for the component passes one subject with one consumer and keeps its order (RFC 6120 §10.1).

A reconnect replaces the old stream (several components, one domain each): the new holder
writes its claim to Redis (`keys.component_holder`, reading the previous one), subscribes,
and publishes a KICK envelope carrying its claim on the domain's subject.  NATS delivers one
subject's messages to every subscriber in the same order, so that KICK splits the stream as
the partitions' FENCE does: the old holder hands everything before it to its stream, then
closes it with <conflict/> and unsubscribes; the new holder drops what comes before its own
KICK when there was a previous claim (the old holder had it), and takes the rest.  Of two
claims racing, the later KICK wins on every process.

Known gap: while no process holds a domain (the component is disconnected), what is sent to
it is lost, as on any core NATS subject nobody consumes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from nats.aio.subscription import Subscription

from shared.bus import subjects
from shared.bus.envelope import Envelope, Kind
from shared.cluster.source_limits import source_key
from shared.runtime import logs
from shared.store import keys
from shared.xmpp import component
from shared.xmpp.errors import StreamError, StreamErrorCondition
from shared.xmpp.s2s import StanzaIn
from shared.xmpp.stream_io import StreamEnded

from . import metrics
from .connection import HANDSHAKE_TIMEOUT_S, _Shell

if TYPE_CHECKING:
    from .service import S2SGateway

log = logging.getLogger(__name__)

ORIGIN = "component"  # envelope origin of a component's stanzas (no '/': not a session)
CLAIM_TTL_S = 30
# compare-and-delete, compare-and-expire: only the claim's own holder touches it
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end"
_REFRESH = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
            "return redis.call('EXPIRE', KEYS[1], ARGV[2]) end")


class ComponentConnection(_Shell):
    """One component's stream to our component port."""

    direction = "component"

    def __init__(self, gw: S2SGateway) -> None:
        super().__init__(gw)
        s = gw.s2s_settings
        self.stream = component.ComponentStream(component.ComponentConfig(
            gw.component_secrets, s.component_max_stanza_bytes))
        self._limit_rate(s.component_max_stanzas_per_s)
        self.source = ""
        self.domain = ""  # once authenticated
        self.claim = ""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = self.transport.get_extra_info("peername") if self.transport else None
        address = str(peer[0]) if peer else "?"
        source = source_key(address)
        refused = self.gw.admit(source)
        if refused:  # RFC 6120 §13.12
            metrics.COMPONENT_REFUSED.labels(refused).inc()
            self.close(StreamErrorCondition.POLICY_VIOLATION, "too many connections")
            return
        self.source = source
        self._timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT_S, self._timeout)

    def _timeout(self) -> None:
        if not self.stream.authenticated:
            self.close(StreamErrorCondition.CONNECTION_TIMEOUT)

    def idle(self) -> None:
        """Components may stay silent for long (no XEP-0199 duty): only a stream that never
        authenticated is closed for idling, by the handshake timer."""

    def lost(self) -> None:
        if self.source:
            self.gw.per_source.release(self.source)
        if self._timer is not None:
            self._timer.cancel()
        if self.domain:
            metrics.COMPONENT_CONNECTED.labels(self.domain).dec()
            self.gw.components.detach(self)
        self.stream.release()

    def data_received(self, data: bytes) -> None:
        self.touch()
        self.stream.receive_data(data)
        self._pump()

    def close(self, condition: StreamErrorCondition | None = None, text: str | None = None
              ) -> None:
        self.stream.close(condition, text)
        self.write(self.stream.data_to_send())
        self.finish()

    def send(self, env: Envelope) -> None:
        """A stanza of the cluster for the component."""
        if self._closing:
            return
        try:
            self.stream.send(env.payload, self.gw.s2s_settings.component_max_stanza_bytes)
        except StreamError:
            return  # not a stanza we could parse: never forward raw bytes
        metrics.COMPONENT_STANZAS.labels(self.domain, "out").inc()
        self.write(self.stream.data_to_send())

    def _pump(self) -> None:
        token = logs.connection_id.set(f"component-{self.conn_id}")
        try:
            while not self._closing and not self._throttled:
                event = self.stream.next_event()
                if event is None:
                    break
                self._on_event(event)
            self.write(self.stream.data_to_send())
            if self.stream.closed and not self._closing:
                self.finish()
        finally:
            logs.connection_id.reset(token)

    def _on_event(self, event: component.Event) -> None:
        if isinstance(event, StanzaIn):
            metrics.COMPONENT_STANZAS.labels(self.domain, "in").inc()
            self.gw.stanza_from_component(self, event)
            self._throttle()
        elif isinstance(event, component.Authenticated):
            self.domain = event.domain
            self.authenticated()
            metrics.COMPONENT_CONNECTED.labels(self.domain).inc()
            log.info("component %s connected", self.domain)
            self.write(self.stream.data_to_send())  # <handshake/> first
            self.spawn(self.gw.components.attach(self))
        elif isinstance(event, component.AuthFailed):
            metrics.COMPONENT_AUTH_FAILURES.labels(event.reason).inc()
            log.info("component handshake for %r refused: %s", event.domain, event.reason)
        elif isinstance(event, StreamEnded):
            if event.error is not None:
                metrics.STREAM_ERRORS.labels(event.error.value).inc()
            self.write(self.stream.data_to_send())
            self.finish()

    def replaced(self) -> None:
        """Another stream took the domain (XEP-0114 says nothing; RFC 6120 §4.9.3.3)."""
        metrics.COMPONENT_REPLACED.labels(self.domain).inc()
        log.info("component %s: replaced by a new stream", self.domain)
        self.close(StreamErrorCondition.CONFLICT, "replaced by a new connection")


class ComponentHub:
    """The component domains this gateway process holds, and their subjects."""

    def __init__(self, gw: S2SGateway) -> None:
        self.gw = gw
        self.held: dict[str, ComponentConnection] = {}
        self._subs: dict[str, Subscription] = {}
        self._own_seen: set[str] = set()  # our latest KICK came back on the subject
        self._waiting: set[str] = set()  # a previous holder had it: drop until our KICK
        self._refresher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        for conn in list(self.held.values()):
            conn.close(StreamErrorCondition.SYSTEM_SHUTDOWN)

    async def attach(self, conn: ComponentConnection) -> None:
        domain = conn.domain
        conn.claim = f"{self.gw.member_id}/{conn.conn_id}"
        old = self.held.get(domain)
        self.held[domain] = conn
        self._own_seen.discard(domain)
        if old is not None and old is not conn:
            old.replaced()
        previous = await self.gw.redis.set(keys.component_holder(domain), conn.claim,
                                           ex=CLAIM_TTL_S, get=True)
        if self.held.get(domain) is not conn:
            return  # gone or replaced meanwhile
        subject = subjects.component(domain)
        if domain not in self._subs:
            if previous is not None:
                self._waiting.add(domain)
            self._subs[domain] = await self.gw.bus.subscribe(subject)
            await self.gw.bus.flush()
        kick = Envelope(Kind.KICK, to=domain, from_=conn.claim, origin=ORIGIN,
                        payload=StreamErrorCondition.CONFLICT.value.encode())
        await self.gw.bus.publish(subject, kick.encode())

    def detach(self, conn: ComponentConnection) -> None:
        domain = conn.domain
        if self.held.get(domain) is not conn:
            return
        del self.held[domain]
        self._own_seen.discard(domain)
        self._waiting.discard(domain)
        sub = self._subs.pop(domain, None)
        self.gw.spawn_task(self._release(domain, conn.claim, sub))

    async def _release(self, domain: str, claim: str, sub: Subscription | None) -> None:
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.warning("unsubscribe of component %s failed: %s", domain, exc)
        try:
            await self.gw.redis.eval(_RELEASE, 1, keys.component_holder(domain), claim)
        except Exception as exc:
            log.warning("component %s: claim not released (it expires): %s", domain, exc)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(CLAIM_TTL_S / 3)
            for domain, conn in list(self.held.items()):
                try:
                    await self.gw.redis.eval(_REFRESH, 1, keys.component_holder(domain),
                                             conn.claim, CLAIM_TTL_S)
                except Exception as exc:
                    log.warning("component %s: claim not refreshed: %s", domain, exc)

    def deliver(self, env: Envelope) -> None:
        """An envelope from a component's subject."""
        if env.kind is Kind.KICK:
            self._claimed(env.to, env.from_)
            return
        domain = env.to_domain
        conn = self.held.get(domain)
        if conn is None or domain in self._waiting:
            if conn is None:
                metrics.COMPONENT_DROPPED.labels(domain).inc()
            return
        conn.send(env)

    def _claimed(self, domain: str, claim: str) -> None:
        conn = self.held.get(domain)
        if conn is None:
            return
        if claim == conn.claim:
            self._own_seen.add(domain)
            self._waiting.discard(domain)  # everything after is ours
        elif domain in self._own_seen:  # a later claim than ours: the domain moved
            conn.replaced()

