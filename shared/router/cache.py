"""The router's session cache, kept exact by session events.

Entries are filled in batches (one Redis pipeline for every miss of a batch) and dropped when
a session event for the bare JID arrives.  A fetch that was in flight while an event arrived
is not cached (its answer may predate the change).  Account creation and deletion publish the
same event (`shared.bus.envelope.session_event`, from the admin API, the CLI and in-band
registration); entries also expire after a TTL, a bound on what a lost event can cost.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from shared.store.sessions import SessionRecord


@dataclass(frozen=True, slots=True)
class Entry:
    exists: bool
    sessions: dict[str, SessionRecord]
    expires: float
    blocked: frozenset[str] = frozenset()  # XEP-0191 blocklist of the account


class SessionCache:
    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl_s
        self._inflight: dict[str, bool] = {}  # bare JID -> invalidated while fetching
        self.hits = 0
        self.misses = 0

    def get(self, bare: str, now: float | None = None) -> Entry | None:
        entry = self._entries.get(bare)
        if entry is None or entry.expires < (time.monotonic() if now is None else now):
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def invalidate(self, bare: str) -> None:
        self._entries.pop(bare, None)
        if bare in self._inflight:
            self._inflight[bare] = True

    def fetching(self, bares: list[str]) -> None:
        for bare in bares:
            self._inflight[bare] = False

    def fetched(
        self,
        bare: str,
        exists: bool,
        sessions: dict[str, SessionRecord],
        blocked: frozenset[str] = frozenset(),
    ) -> Entry:
        """Record a fetch result; cache it unless an event arrived meanwhile."""
        entry = Entry(exists, sessions, time.monotonic() + self._ttl, blocked)
        if not self._inflight.pop(bare, True) and self._max > 0:
            self._entries[bare] = entry
            if len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
