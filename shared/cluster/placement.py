"""Load-aware placement of new client streams across connection managers, with no I/O.

Each connection manager publishes its `Load` with its heartbeat (``cm:{id}:load`` in Redis,
written in the heartbeat's own round trip, `SessionStore.heartbeat`) and, when it is set up
for direct addressing, reads the others' every heartbeat too.  A connection manager is
*full* from ``high_water`` times its capacity (``STANZAD_MAX_CONNECTIONS``) on, and stays full
until it is below ``low_water`` times its capacity again (`Fullness`: no flapping at the line).

While full it answers a new stream (once TLS protects it: RFC 6120 §4.9.3.19 (a)) with
``<see-other-host/>`` naming another connection manager's *direct* address (`choose`), or,
with no direct addressing or no such peer, serves it and only turns its readiness probe red,
so that a Service stops sending it new connections (existing ones stay).

A peer is a target only if its record is fresh (`Seen.age_s` within the staleness limit:
measured from the record's remaining TTL in Redis, so no two clocks are compared), it is not
itself, it has a direct address and it is not full by its own account nor by its figures.

No redirect loop is possible: a redirect names only a peer's direct listener
(``STANZAD_C2S_DIRECT_PORT``), and a stream on a direct listener is never redirected, so a
client is redirected at most once per attempt, whatever the loads do meanwhile.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

# the load record's fields (short: one record per connection manager, read by every other)
_FIELDS: Final = ("address", "connections", "capacity", "high_water", "cpu", "full", "ttl_s")


@dataclass(frozen=True, slots=True)
class Load:
    """What one connection manager publishes about itself with each heartbeat."""

    address: str  # "host:port" of its direct listener as clients reach it; "" none
    connections: int  # client connections open now
    capacity: int  # STANZAD_MAX_CONNECTIONS (0: unlimited)
    high_water: float  # the fraction of capacity at which it is full
    cpu: float  # CPU seconds per second over the last heartbeat period (cores used)
    full: bool  # its own judgement, with hysteresis (`Fullness`)
    ttl_s: int  # the record's lifetime in Redis, for `Seen.age_s`

    def encode(self) -> bytes:
        return json.dumps(
            [self.address, self.connections, self.capacity, round(self.high_water, 4),
             round(self.cpu, 3), self.full, self.ttl_s],
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Load | None:
        """The record, or None when it is not one (a newer or broken writer)."""
        try:
            values = json.loads(raw)
            if not isinstance(values, list) or len(values) < len(_FIELDS):
                return None
            address, conns, cap, high, cpu, full, ttl = values[: len(_FIELDS)]
            return cls(str(address), int(conns), int(cap), float(high), float(cpu),
                       bool(full), int(ttl))
        except (ValueError, TypeError):
            return None

    @property
    def headroom(self) -> int:
        """Connections it may still take before it is full (a large number if unlimited)."""
        if self.capacity <= 0:
            return 1 << 30
        return full_at(self.capacity, self.high_water) - self.connections


@dataclass(frozen=True, slots=True)
class Seen:
    """A peer's record as read, with how old it was then (its TTL minus what was left)."""

    cm_id: str
    load: Load
    age_s: float


def seen(cm_id: str, raw: bytes | None, pttl_ms: int) -> Seen | None:
    """A record read from Redis with its remaining time to live (PTTL); None if absent,
    not a record, or without an expiry (never written by a heartbeat)."""
    if raw is None or pttl_ms < 0:
        return None
    load = Load.decode(raw)
    if load is None:
        return None
    return Seen(cm_id, load, max(0.0, load.ttl_s - pttl_ms / 1000))


def full_at(capacity: int, high_water: float) -> int:
    """The connection count at which a connection manager is full (at least 1)."""
    return max(1, math.ceil(capacity * high_water))


class Fullness:
    """Full from ``high_water`` times capacity on, until below ``low_water`` times capacity."""

    __slots__ = ("_high", "_low", "full")

    def __init__(self, capacity: int, high_water: float, low_water: float) -> None:
        self._high = full_at(capacity, high_water) if capacity > 0 else 0
        self._low = min(self._high, math.ceil(capacity * low_water)) if capacity > 0 else 0
        self.full = False

    def update(self, connections: int) -> bool:
        """Whether it is full with ``connections`` open (0 capacity: never)."""
        if not self._high:
            return False
        if connections >= self._high:
            self.full = True
        elif connections < self._low:
            self.full = False
        return self.full


def stale_after(beat_s: float) -> float:
    """A record older than this is stale: two heartbeats missed (and a second's slack)."""
    return 2 * beat_s + 1.0


def targets(peers: Iterable[Seen], own_id: str, stale_s: float,
            waited_s: float = 0.0) -> list[Seen]:
    """The peers a new stream may be sent to: fresh (read ``waited_s`` ago, so their age
    now is that much more), not ourselves, with a direct address, not full."""
    return [p for p in peers
            if p.cm_id != own_id and p.load.address and not p.load.full
            and p.age_s + waited_s <= stale_s and p.load.headroom > 0]


class Targets:
    """The targets of one reading of the peers' records (`targets`), ready to draw from at
    each new stream in O(log n): only the drawn one's age is checked again then, and only if
    it went stale meanwhile are the others filtered again."""

    __slots__ = ("_candidates", "_cumulative", "_read_at", "_stale_s")

    def __init__(self, peers: Iterable[Seen], own_id: str, stale_s: float,
                 read_at: float) -> None:
        self._stale_s = stale_s
        self._read_at = read_at
        self._candidates = targets(peers, own_id, stale_s)
        self._cumulative = list(itertools.accumulate(
            min(c.load.headroom, 1 << 30) for c in self._candidates))

    def __len__(self) -> int:
        return len(self._candidates)

    def draw(self, now: float, rng: random.Random | None = None) -> Seen | None:
        """A target for a new stream at ``now`` (the clock of ``read_at``), or None."""
        if not self._candidates:
            return None
        waited = max(0.0, now - self._read_at)
        pick = (rng or random).choices(self._candidates, cum_weights=self._cumulative)[0]
        if pick.age_s + waited <= self._stale_s:
            return pick
        return choose(targets(self._candidates, "", self._stale_s, waited), rng)


def choose(candidates: list[Seen], rng: random.Random | None = None) -> Seen | None:
    """One of ``candidates``, drawn in proportion to its headroom, so that the full
    connection managers do not all send their clients to the same least loaded one."""
    if not candidates:
        return None
    weights = [min(c.load.headroom, 1 << 30) for c in candidates]
    return (rng or random).choices(candidates, weights=weights)[0]


def with_port(address: str, port: int) -> str:
    """``address`` as "host:port": a bare host (or "[v6]") gets ``port``."""
    address = address.strip()
    if not address:
        return ""
    if address.endswith("]") or ":" not in address:
        return f"{address}:{port}"
    return address
