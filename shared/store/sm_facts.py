"""XEP-0198 resumption facts: what a <resume/> arriving at another connection manager needs.

``sm:{bare}:<id>`` (the bare JID's hash tag: the session table's slot; the account is part
of the key, so another account's id is simply not found) is a hash: ``owner``
"<cm_id> <session_id>", ``jid`` the full JID, ``max`` the resumption timeout and, once the
session is detached, ``handled``/``sent``/``acked`` and ``deadline`` (Unix time).  Written at
<enable resume='true'/> (TTL `ATTACHED_TTL_S`), at detach (TTL: the resumption timeout) and
by the connection manager that took the session over; deleted when the session ends.  Never
written per stanza: the queue itself stays with its owner, which hands it over on request
(docs/architecture.md, "Stream management").

When the owner died, whoever changes ``owner`` first (`claim`, a compare-and-set) decides
the session's fate: a connection manager resuming it from its log, or the one handing its
log to offline storage after the resumption timeout (durable deliveries).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis

from shared.store import keys, tick
from shared.store.redis import timed

# ARGV: the owner expected, the new one: 1 when the facts named the expected owner (now the
# new one), else 0
_CLAIM: Final = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
return 1
"""

# While a session is attached its owner knows it is alive; the facts outlive a pod that dies
# without a word by this much at most.  A session attached longer than this can still be
# resumed elsewhere once its owner noticed the break (detach writes the facts again).
ATTACHED_TTL_S: Final = 86400


@dataclass(frozen=True, slots=True)
class SmFacts:
    """Where a resumable session lives and, once detached, until when it waits."""

    cm_id: str
    session_id: str
    jid: str
    max_s: int
    deadline: float = 0.0  # 0: attached when the facts were written
    handled: int | None = None  # the client's stanzas handled, written at detach

    def expired(self, now: float) -> bool:
        return bool(self.deadline) and now > self.deadline


class SmFactsStore:
    """Reads and writes of the resumption facts; one instance per connection manager."""

    def __init__(self, redis: aioredis.Redis, service: str) -> None:
        self._r = redis
        self._tick = tick.of(redis)  # written with the login's other commands
        self._service = service
        self._claim = redis.register_script(_CLAIM)

    async def write(self, full_jid: str, sm_id: str, cm_id: str, session_id: str, max_s: int,
                    counters: tuple[int, int, int] | None = None) -> None:
        """The session `sm_id` of `full_jid` is `cm_id`'s; `counters` (handled, sent,
        acked) when it is detached: then it waits `max_s` seconds for a <resume/>."""
        key = keys.sm_facts(full_jid.partition("/")[0], sm_id)
        fields: list[str | int] = ["owner", f"{cm_id} {session_id}", "jid", full_jid,
                                   "max", max_s]
        ttl = ATTACHED_TTL_S
        if counters is not None:
            handled, sent, acked = counters
            fields += ["handled", handled, "sent", sent, "acked", acked,
                       "deadline", f"{time.time() + max_s:.3f}"]
            ttl = max_s
        else:
            fields += ["deadline", 0]
        async with timed(self._service, "sm_facts_write"):
            await self._tick.execute([("HSET", key, *fields), ("EXPIRE", key, max(1, ttl))])

    async def get(self, bare_jid: str, sm_id: str) -> SmFacts | None:
        async with timed(self._service, "sm_facts_get"):
            raw = await self._r.hgetall(keys.sm_facts(bare_jid, sm_id))
        if not raw:
            return None
        try:
            cm_id, session_id = raw[b"owner"].decode().split(" ")
            handled = raw.get(b"handled")
            return SmFacts(cm_id, session_id, raw[b"jid"].decode(), int(raw[b"max"]),
                           float(raw.get(b"deadline", b"0")),
                           int(handled) if handled is not None else None)
        except (KeyError, ValueError):
            return None

    async def claim(self, bare_jid: str, sm_id: str, owner: str, new_owner: str) -> bool:
        """The facts name ``new_owner`` ("<cm_id> <session_id>") if they named ``owner``
        exactly (their time to live unchanged); whether they did."""
        async with timed(self._service, "sm_facts_claim"):
            return bool(await self._claim(keys=[keys.sm_facts(bare_jid, sm_id)],
                                          args=[owner, new_owner]))

    async def forget(self, full_jid: str, sm_id: str) -> None:
        async with timed(self._service, "sm_facts_forget"):
            await self._tick.execute([("DEL", keys.sm_facts(full_jid.partition("/")[0], sm_id))])
