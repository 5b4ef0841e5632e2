"""Limits per source address, shared by the edges (connection manager, s2s gateway).

RFC 6120 §13.12 asks servers to limit what one peer may cost them.  Here, with no I/O:

* `TokenBucket`, the one token bucket of the project: byte and stanza rates of a connection
  (taken in debt: the caller pauses reading for the time returned) and rates of events per
  source (taken only when a token is there).
* `ConnectionsPerSource`: open connections per source, refused past the limit (s2s).
* `UnauthenticatedPerSource`: connections per source that have not authenticated yet; past
  the limit the *oldest* one is evicted, so that an address flooding us with idle
  connections evicts its own and a real client behind the same address still gets in.
* `ConnectionRate`: new connections per source per minute.
* `SlotsPerSource`: at most so many of something (SASL exchanges) per source at a time;
  the others wait in line, oldest first.
* `Networks`: CIDR lists (trusted proxies, trusted networks with their own limits).

A source is an IPv4 address or an IPv6 /64 (`source_key`).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable
from typing import Final, Generic, TypeVar

IPV6_PREFIX: Final = 64  # one IPv6 subscriber usually owns a whole /64
MAX_TRACKED: Final = 10_000  # sources remembered by ConnectionRate before pruning

T = TypeVar("T")


@functools.lru_cache(maxsize=4096)  # ~15 µs of ipaddress parsing per connection otherwise
def source_key(address: str) -> str:
    """The unit a per-source limit counts: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        mapped = ip.ipv4_mapped  # type: ignore[union-attr]
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


class TokenBucket:
    """A token bucket of ``burst`` tokens refilled at ``rate`` tokens a second.

    `take(n, now)` always succeeds and may put the bucket into debt by the size of the take
    (the bytes were already read); it returns how many seconds the caller should wait before
    taking again (0 while not in debt).  `try_take(n, now)` takes only when ``n`` tokens are
    there.  `full(now)`: the bucket has refilled completely (its owner may forget it).
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def _refill(self, now: float) -> float:
        elapsed = now - self._last
        self._last = now
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        return self._tokens

    def take(self, n: float, now: float) -> float:
        self._tokens = self._refill(now) - n
        return -self._tokens / self.rate if self._tokens < 0 else 0.0

    def try_take(self, n: float, now: float) -> bool:
        if self._refill(now) < n:
            return False
        self._tokens -= n
        return True

    def full(self, now: float) -> bool:
        return self._tokens + max(0.0, now - self._last) * self.rate >= self.burst


class ConnectionsPerSource:
    """Open connections per source (`source_key`) on this process."""

    __slots__ = ("_counts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: unlimited
        self._counts: dict[str, int] = {}

    def admit(self, source: str) -> bool:
        """Count a new connection; False (and nothing counted) when the source is at the limit."""
        n = self._counts.get(source, 0)
        if self.limit and n >= self.limit:
            return False
        self._counts[source] = n + 1
        return True

    def release(self, source: str) -> None:
        n = self._counts.get(source, 0) - 1
        if n > 0:
            self._counts[source] = n
        else:
            self._counts.pop(source, None)

    def count(self, source: str) -> int:
        return self._counts.get(source, 0)


class UnauthenticatedPerSource(Generic[T]):
    """The connections of each source that have not authenticated yet, oldest first.

    `admit` never refuses: past the limit it returns the source's oldest connection, which
    the caller closes (and `release`s).  What counts is only what is suspicious: once a
    connection authenticates it is released here, and its session is bounded per account and
    per process instead.  ``limit_for(source)`` picks the limit of a source (trusted networks
    have their own)."""

    __slots__ = ("_open", "limit", "trusted", "trusted_limit")

    def __init__(self, limit: int, trusted: Networks | None = None, trusted_limit: int = 0
                 ) -> None:
        self.limit = limit  # 0: unlimited
        self.trusted = trusted
        self.trusted_limit = trusted_limit  # for sources in `trusted`; 0: unlimited
        self._open: dict[str, dict[T, None]] = {}  # source -> its connections, oldest first

    def limit_for(self, source: str) -> int:
        if self.trusted and source in self.trusted:
            return self.trusted_limit
        return self.limit

    def admit(self, source: str, conn: T) -> T | None:
        """Count ``conn``; the oldest connection of the source when it is now over its limit
        (the caller closes that one), else None."""
        conns = self._open.get(source)
        if conns is None:
            conns = self._open[source] = {}
        conns[conn] = None
        limit = self.limit_for(source)
        if limit and len(conns) > limit:
            oldest = next(iter(conns))
            del conns[oldest]
            return oldest
        return None

    def release(self, source: str, conn: T) -> None:
        """The connection authenticated or closed (nothing happens when it was not counted)."""
        conns = self._open.get(source)
        if conns is not None:
            conns.pop(conn, None)
            if not conns:
                del self._open[source]

    def count(self, source: str) -> int:
        return len(self._open.get(source, ()))


class SlotsPerSource(Generic[T]):
    """At most ``limit`` holders per source at a time; the others wait in line.

    `acquire` returns True when ``holder`` holds a slot now; otherwise ``wake`` is called
    when one is handed to it (by a `release`).  A holder `release`s its slot once; a waiter
    that gives up `cancel`s."""

    __slots__ = ("_held", "_waiting", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: unlimited
        self._held: dict[str, int] = {}
        self._waiting: dict[str, dict[T, Callable[[], None]]] = {}

    def acquire(self, source: str, holder: T, wake: Callable[[], None]) -> bool:
        n = self._held.get(source, 0)
        if not self.limit or n < self.limit:
            self._held[source] = n + 1
            return True
        self._waiting.setdefault(source, {})[holder] = wake
        return False

    def release(self, source: str) -> None:
        waiting = self._waiting.get(source)
        if waiting:  # the slot goes to the one waiting longest
            holder = next(iter(waiting))
            wake = waiting.pop(holder)
            if not waiting:
                del self._waiting[source]
            wake()
            return
        n = self._held.get(source, 0) - 1
        if n > 0:
            self._held[source] = n
        else:
            self._held.pop(source, None)

    def cancel(self, source: str, holder: T) -> None:
        waiting = self._waiting.get(source)
        if waiting is not None:
            waiting.pop(holder, None)
            if not waiting:
                del self._waiting[source]

    def held(self, source: str) -> int:
        return self._held.get(source, 0)

    def waiting(self, source: str) -> int:
        return len(self._waiting.get(source, ()))


class ConnectionRate:
    """New connections per source: a `TokenBucket` of ``per_min`` per source, refilled at
    ``per_min`` a minute.  Memory is bounded: past `MAX_TRACKED` sources, those whose
    bucket is full again are forgotten."""

    __slots__ = ("_buckets", "per_min")

    def __init__(self, per_min: int) -> None:
        self.per_min = per_min  # 0: unlimited
        self._buckets: dict[str, TokenBucket] = {}

    def admit(self, source: str, now: float) -> bool:
        """Take one token; False (and nothing taken) when the source has none left."""
        if not self.per_min:
            return True
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._prune(now)
            bucket = self._buckets[source] = TokenBucket(self.per_min / 60.0, self.per_min, now)
        return bucket.try_take(1, now)

    def _prune(self, now: float) -> None:
        for s in [s for s, b in self._buckets.items() if b.full(now)]:
            del self._buckets[s]
        if len(self._buckets) >= MAX_TRACKED:  # all busy: forget the oldest half
            by_age = sorted(self._buckets, key=lambda s: self._buckets[s]._last)
            for s in by_age[: MAX_TRACKED // 2]:
                del self._buckets[s]


class Networks:
    """A list of CIDR networks (``"10.0.0.0/8, 2001:db8::/32"``); ``address in networks``.
    An IPv4-mapped IPv6 address is looked up as the IPv4 address.  Bad entries raise
    ValueError (settings validate them at start)."""

    __slots__ = ("_cache", "_nets")

    def __init__(self, cidrs: str | Iterable[str] = "") -> None:
        items = cidrs.split(",") if isinstance(cidrs, str) else cidrs
        self._nets = tuple(
            ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip()
        )
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._nets)

    def __contains__(self, address: object) -> bool:
        if not self._nets or not isinstance(address, str):
            return False
        hit = self._cache.get(address)
        if hit is None:
            hit = self._match(address)
            if len(self._cache) >= MAX_TRACKED:
                self._cache.clear()
            self._cache[address] = hit
        return hit

    def _match(self, address: str) -> bool:
        try:
            if "/" in address:  # an IPv6 source key (a /64)
                net = ipaddress.ip_network(address, strict=False)
                return any(net.version == n.version and net.subnet_of(n)  # type: ignore[arg-type]
                           for n in self._nets)
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:  # type: ignore[union-attr]
            ip = ip.ipv4_mapped  # type: ignore[union-attr]
        return any(ip in n for n in self._nets)
