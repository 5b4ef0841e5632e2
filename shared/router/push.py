"""XEP-0357 notifications, sent by the router of the user's partition (§7).

A message with a body that is stored offline (no available session) or that reaches a
detached XEP-0198 session (the connection manager tells the router, `PUSH_ORIGIN`) makes
the router publish the summary notification to each of the account's app servers (for a
detached session: the registrations its resource enabled), as a pubsub IQ from the user's
bare JID, routed like any stanza (a local JID, or the s2s gateway).  The app server's
answer comes back to the user's bare JID, so to this router: a result ends it; an error
disables the registration (§7: the app server refuses to take them), except a 'wait' error,
which is retried like a missing answer, at most ``push_max_attempts`` times in all.

What is in flight lives in this router's memory: when the partition moves, answers to it
reach the new owner, which does not know them (they are dropped; a missing answer there is
not retried).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final

from shared.bus import subjects
from shared.bus.client import Bus
from shared.bus.envelope import Envelope, Kind
from shared.store.push import PushRegistration, PushStore
from shared.xmpp import push
from shared.xmpp.jid import bare_of
from shared.xmpp.parser import parse_fragment

from . import metrics

log = logging.getLogger(__name__)

MAX_PENDING: Final = 10_000  # notifications in flight per router
MAX_MESSAGE_BYTES: Final = 256 * 1024


@dataclass(slots=True)
class _Pending:
    owner: str
    reg: PushRegistration
    payload_args: tuple[int, str, str | None]  # count, sender, body
    attempt: int
    timer: asyncio.TimerHandle | None = None


class PushNotifier:
    def __init__(self, store: PushStore, bus: Bus, partitions: int, origin: str,
                 timeout_s: float, max_attempts: int) -> None:
        self._store = store
        self._bus = bus
        self._partitions = partitions
        self._origin = origin
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._pending: dict[str, _Pending] = {}
        metrics.PUSH_PENDING.set_function(lambda: len(self._pending))

    async def message(self, owner: str, sender: str, message: bytes, count: int,
                      resource: str | None = None) -> None:
        """A message with a body for ``owner`` that no session will see now: notify its app
        servers (those enabled by ``resource``, when it names a detached session)."""
        try:
            regs = await self._store.registrations(owner)
        except Exception as exc:
            log.warning("push registrations lookup failed: %s", exc)
            return
        if resource is not None:
            regs = [r for r in regs if r.resource == resource]
        if not regs:
            return
        body: str | None = None
        if any(r.include_body for r in regs):
            try:
                body = push.body_of(parse_fragment(message, MAX_MESSAGE_BYTES))
            except Exception:
                body = None
        for reg in regs:
            self._send(_Pending(owner, reg, (count, sender, body if reg.include_body else None),
                                attempt=1))

    def _send(self, pending: _Pending) -> None:
        if len(self._pending) >= MAX_PENDING:
            metrics.PUSH_NOTIFICATIONS.labels("dropped").inc()
            return
        iq_id = push.new_id()
        count, sender, body = pending.payload_args
        reg = pending.reg
        payload = push.notification(iq_id, pending.owner, reg.service, reg.node, count, sender,
                                    body, reg.options)
        env = Envelope(Kind.IQ, to=reg.service, from_=pending.owner, type="set", id=iq_id,
                       origin=self._origin, payload=payload)
        self._bus.publish_soon(subjects.route_for(bare_of(reg.service), self._partitions),
                               env.encode())
        metrics.PUSH_NOTIFICATIONS.labels("sent").inc()
        pending.timer = asyncio.get_running_loop().call_later(
            self._timeout_s, self._unanswered, iq_id)
        self._pending[iq_id] = pending

    def _unanswered(self, iq_id: str) -> None:
        pending = self._pending.pop(iq_id, None)
        if pending is not None:
            self._again(pending)

    def _again(self, pending: _Pending) -> None:
        if pending.attempt >= self._max_attempts:
            metrics.PUSH_NOTIFICATIONS.labels("timeout").inc()
            log.info("push notification to %s unanswered after %d attempts",
                     pending.reg.service, pending.attempt)
            return
        metrics.PUSH_NOTIFICATIONS.labels("retried").inc()
        pending.attempt += 1
        self._send(pending)

    def is_answer(self, env: Envelope) -> bool:
        """An IQ result or error to a bare JID with one of our notification ids."""
        return (env.kind is Kind.IQ and env.type in ("result", "error")
                and env.id.startswith(push.ID_PREFIX) and "/" not in env.to)

    async def answered(self, env: Envelope) -> None:
        """The app server's answer (from the JID it was sent to, else it is not one)."""
        pending = self._pending.get(env.id)
        if pending is None or pending.owner != env.to or env.from_ != pending.reg.service:
            return
        del self._pending[env.id]
        if pending.timer is not None:
            pending.timer.cancel()
        if env.type == "result":
            metrics.PUSH_NOTIFICATIONS.labels("ok").inc()
            return
        try:
            kind = push.error_type(parse_fragment(env.payload, MAX_MESSAGE_BYTES))
        except Exception:
            kind = ""
        if kind == "wait":
            self._again(pending)
            return
        metrics.PUSH_NOTIFICATIONS.labels("error").inc()
        log.info("app server %s refused a push notification: registration disabled",
                 pending.reg.service)
        try:
            await self._store.disable(pending.owner, pending.reg.service, pending.reg.node)
        except Exception as exc:
            log.warning("could not disable a push registration: %s", exc)

    def close(self) -> None:
        for pending in self._pending.values():
            if pending.timer is not None:
                pending.timer.cancel()
        self._pending.clear()
