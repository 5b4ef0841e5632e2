"""Login throttling without lockout (XEP-0205 §3), counted in Redis for every pod.

Many users share one address (carrier-grade NAT, offices, a load balancer that hides client
addresses), so an address's failures must not refuse its other users.  The policy
(README "Security and limits", docs/operations.md "Login throttling"):

* **Per (account, address) pair** and **per account**: the first ``free`` failures cost
  nothing; each further failure locks the key for a delay that doubles with every failure
  (``base_s``, 2 ``base_s``, 4 ``base_s``, ... up to ``max_s``).  While a lock is set,
  attempts on that key are refused with temporary-auth-failure (RFC 6120 §6.5.12) before any
  password is checked and are not counted, so the delays grow only with real guesses.  The
  account-wide lock can be set by anyone who knows the account's name, so it starts later
  and stays shorter than the pair's.  The counters are forgotten ``reset_s`` after the last
  failure; a successful login from the address forgets the pair's.
* **Per address**: failures are counted per minute.  They make the failure answers slower
  (the connection manager delays them, and caps concurrent SASL exchanges per address), but
  refuse nothing, except at a rate no human or NAT of humans reaches
  (``block_per_min`` failures in a minute): then the address is blocked for ``block_s``, with
  a metric and a log line naming it.

Each counter and its lock share a Redis hash tag, so one small script per key updates both
atomically (`failed`: one round trip for all of them).  `lookup` is what a login uses: the
locks and the address's count in one Redis round trip (a pipeline, not a script: the keys
are in several hash slots, going out with the other commands of its event-loop tick,
`shared.store.tick`), and at the same time the account's stored keys (one PostgreSQL query
shared by the tick's logins, `AccountStore.credentials`).  When either store cannot be
reached nothing can be checked: the client gets temporary-auth-failure, and a failure that
cannot be counted is logged, not raised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, Literal

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from shared.store import keys, tick
from shared.store.accounts import AccountStore
from shared.store.redis import timed
from shared.xmpp.credentials import StoredCredentials

log = logging.getLogger(__name__)

Scope = Literal["ip", "account", "pair"]

SOURCE_WINDOW_S: Final = 60  # the per-address failure rate is counted per minute

# KEYS: counter, lock.  ARGV: free failures, first delay (ms), longest delay (ms), reset (s).
# Returns the count and the delay (ms) now set on the lock (0: none).
_FAIL_PROGRESSIVE: Final = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local free = tonumber(ARGV[1])
if n <= free then
  return {n, 0}
end
local ms = math.min(tonumber(ARGV[2]) * 2 ^ math.min(n - free - 1, 40), tonumber(ARGV[3]))
ms = math.floor(ms)
if ms > 0 then
  redis.call('SET', KEYS[2], n, 'PX', ms)
end
return {n, ms}
"""

# KEYS: the address's counter of this minute, its block.  ARGV: failures a minute that block
# (0: never), block (s), window (s).  Returns the count and 1 when this failure set the block.
_FAIL_SOURCE: Final = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
local limit = tonumber(ARGV[1])
if limit > 0 and n >= limit and redis.call('SET', KEYS[2], n, 'EX', ARGV[2], 'NX') then
  return {n, 1}
end
return {n, 0}
"""


@dataclass(frozen=True, slots=True)
class Progressive:
    """Free failures, then locks of ``base_s``, doubling, up to ``max_s``."""

    free: int  # 0: no lock at all
    base_s: float
    max_s: float

    def delay_after(self, failures: int) -> float:
        """The lock (seconds) set by the ``failures``-th failure."""
        if not self.free or failures <= self.free:
            return 0.0
        return min(self.base_s * 2 ** min(failures - self.free - 1, 40), self.max_s)


@dataclass(frozen=True, slots=True)
class LoginCheck:
    """What a SASL attempt may do, from `AuthThrottleStore.lookup`."""

    refused: Scope | None  # the lock the attempt waits for; None: go ahead
    retry_after_s: float  # when refused: how long the lock still holds
    credentials: StoredCredentials | None  # None: no such account (or refused)
    source_failures: int  # failures from the address in the current minute
    pair_failures: bool  # the pair has failures on record (a success forgets them)


class AuthThrottleStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        accounts: AccountStore,
        service: str,
        *,
        pair: Progressive,
        account: Progressive,
        reset_s: int,
        block_per_min: int,
        block_s: int,
    ) -> None:
        self._r = redis
        self._tick = tick.of(redis)  # with the other logins' commands of the same tick
        self._accounts = accounts
        self._service = service
        self.pair = pair
        self.account = account
        self.reset_s = reset_s
        self.block_per_min = block_per_min  # 0: never
        self.block_s = block_s
        self._progressive = redis.register_script(_FAIL_PROGRESSIVE)
        self._source = redis.register_script(_FAIL_SOURCE)

    async def lookup(self, source: str, bare_jid: str) -> LoginCheck:
        """The locks an attempt is under, the address's failures and the account's keys
        (None: no such account), in one round trip to each store, both at once.  Store
        failures propagate (the caller answers temporary-auth-failure, RFC 6120 §6.5.12)."""
        creds = self._accounts.credentials(bare_jid)
        try:
            async with timed(self._service, "login_lookup"):
                block, acct_lock, pair_lock, src, pair = await self._tick.execute((
                    ("PTTL", keys.auth_block_source(source)),
                    ("PTTL", keys.auth_lock_account(bare_jid)),
                    ("PTTL", keys.auth_lock_pair(bare_jid, source)),
                    ("GET", keys.auth_failures_source(source)),
                    ("EXISTS", keys.auth_failures_pair(bare_jid, source)),
                ))
        except BaseException:
            creds.cancel()
            raise
        failures = int(src) if src else 0
        for scope, ttl in (("ip", block), ("pair", pair_lock), ("account", acct_lock)):
            if ttl is not None and int(ttl) > 0:
                creds.cancel()
                return LoginCheck(scope, int(ttl) / 1000, None, failures, bool(pair))  # type: ignore[arg-type]
        return LoginCheck(None, 0.0, await creds, failures, bool(pair))

    async def failed(self, source: str, bare_jid: str | None, *, block_per_min: int | None = None
                     ) -> bool:
        """Count one failed attempt (against ``bare_jid`` when it named an account); True
        when this failure blocked the address.  ``block_per_min`` overrides the blocking
        rate (trusted networks have their own)."""
        limit = self.block_per_min if block_per_min is None else block_per_min
        commands = [("EVALSHA", self._source.sha, 2, keys.auth_failures_source(source),
                     keys.auth_block_source(source), limit, self.block_s, SOURCE_WINDOW_S)]
        if bare_jid:
            for policy, counter, lock in (
                (self.pair, keys.auth_failures_pair(bare_jid, source),
                 keys.auth_lock_pair(bare_jid, source)),
                (self.account, keys.auth_failures_account(bare_jid),
                 keys.auth_lock_account(bare_jid)),
            ):
                commands.append((
                    "EVALSHA", self._progressive.sha, 2, counter, lock, policy.free,
                    int(policy.base_s * 1000), int(policy.max_s * 1000), self.reset_s,
                ))
        try:
            async with timed(self._service, "auth_throttle_incr"):
                try:
                    replies = await self._tick.execute(commands)
                except NoScriptError:
                    await self._r.script_load(_FAIL_SOURCE)
                    await self._r.script_load(_FAIL_PROGRESSIVE)
                    replies = await self._tick.execute(commands)
        except Exception as exc:
            log.warning("could not count an auth failure: %s", exc)
            return False
        return bool(replies[0][1])

    async def succeeded(self, source: str, bare_jid: str) -> None:
        """A login from the address: forget the pair's failures (the account's stay)."""
        try:
            await self._tick.execute((("DEL", keys.auth_failures_pair(bare_jid, source)),))
        except Exception as exc:
            log.warning("could not reset auth failures: %s", exc)
