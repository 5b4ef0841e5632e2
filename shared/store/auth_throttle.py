"""Failed SASL attempts counted per source address and per account (XEP-0205 §3).

The counters live in Redis so that every connection manager sees the same numbers: an
attacker gains nothing by spreading guesses over pods.  Each counter is a fixed window: the
first failure creates the key with a TTL of `window_s`, later failures increment it (INCR
keeps the TTL).  While a counter is at its limit, new attempts from that source or against
that account are refused before any password is checked.

A per-account limit lets anyone lock an account out for one window by guessing wrong on
purpose; the per-account limit is therefore higher than the per-source one, and the lockout
ends by itself.  When Redis cannot be reached, no attempt can be checked at all (the keys are
in Redis too): the client gets temporary-auth-failure (RFC 6120 §6.5.12), and a failure that
cannot be counted is logged, not raised (an outage of the counters locks nobody out).

`lookup` is what a login uses: the two counters (one Redis round trip, a pipeline, not a
script: the source counter is in another hash slot, going out with the other commands of its
event-loop tick, `shared.store.tick`) and the account's stored keys (one PostgreSQL query
shared by the tick's logins, `AccountStore.credentials`), both at once.  A successful login
writes nothing here: counters are only written by `failed`.
"""

from __future__ import annotations

import logging
from typing import Literal

import redis.asyncio as aioredis

from shared.store import keys, tick
from shared.store.accounts import AccountStore
from shared.store.redis import timed
from shared.xmpp.credentials import StoredCredentials

log = logging.getLogger(__name__)

Scope = Literal["ip", "account"]

class AuthThrottleStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        accounts: AccountStore,
        service: str,
        *,
        per_source: int,
        per_account: int,
        window_s: int,
    ) -> None:
        self._r = redis
        self._tick = tick.of(redis)  # with the other logins' commands of the same tick
        self._accounts = accounts
        self._service = service
        self.per_source = per_source  # 0: unlimited
        self.per_account = per_account  # 0: unlimited
        self.window_s = window_s

    async def lookup(
        self, source: str, bare_jid: str
    ) -> tuple[Scope | None, StoredCredentials | None]:
        """The limit an attempt is over, if any, and the account's stored keys (None:
        no such account), in one round trip to each store.  Store failures propagate (the
        caller answers temporary-auth-failure, RFC 6120 §6.5.12): without the keys nothing
        can be checked, so failing open on the counters alone does not arise here."""
        creds = self._accounts.credentials(bare_jid)
        try:
            async with timed(self._service, "login_lookup"):
                src, acct = await self._tick.execute((
                    ("GET", keys.auth_failures_source(source)),
                    ("GET", keys.auth_failures_account(bare_jid)),
                ))
        except BaseException:
            creds.cancel()
            raise
        scope = self._over(src, acct)
        stored = await creds
        return scope, (None if scope is not None else stored)

    def _over(self, src: bytes | None, acct: bytes | None) -> Scope | None:
        if self.per_source and src is not None and int(src) >= self.per_source:
            return "ip"
        if self.per_account and acct is not None and int(acct) >= self.per_account:
            return "account"
        return None

    async def failed(self, source: str, bare_jid: str | None) -> None:
        """Count one failed attempt."""
        names = [keys.auth_failures_source(source)]
        if bare_jid:
            names.append(keys.auth_failures_account(bare_jid))
        try:
            async with (
                timed(self._service, "auth_throttle_incr"),
                self._r.pipeline(transaction=False) as pipe,
            ):
                for name in names:
                    pipe.set(name, 0, ex=self.window_s, nx=True)
                    pipe.incr(name)
                await pipe.execute()
        except Exception as exc:
            log.warning("could not count an auth failure: %s", exc)
