"""Limits per source address, shared by the edges (connection manager, s2s gateway).

RFC 6120 §13.12 asks servers to limit what one peer may cost them: how many connections one
address holds open (`ConnectionsPerSource`) and how fast it opens new ones
(`ConnectionRate`).  A source is an IPv4 address or an IPv6 /64 (`source_key`).  No I/O.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Final

IPV6_PREFIX: Final = 64  # one IPv6 subscriber usually owns a whole /64
MAX_TRACKED: Final = 10_000  # sources remembered by ConnectionRate before pruning


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


class ConnectionRate:
    """New connections per source: a bucket of ``per_min`` per source, refilled at
    ``per_min`` a minute.  Memory is bounded: past `MAX_TRACKED` sources, those whose
    bucket is full again are forgotten."""

    __slots__ = ("_buckets", "per_min")

    def __init__(self, per_min: int) -> None:
        self.per_min = per_min  # 0: unlimited
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, when)

    def _tokens(self, source: str, now: float) -> float:
        tokens, then = self._buckets.get(source, (float(self.per_min), now))
        return min(float(self.per_min), tokens + (now - then) * self.per_min / 60.0)

    def admit(self, source: str, now: float) -> bool:
        """Take one token; False (and nothing taken) when the source has none left."""
        if not self.per_min:
            return True
        tokens = self._tokens(source, now)
        if tokens < 1.0:
            return False
        if len(self._buckets) >= MAX_TRACKED:
            self._prune(now)
        self._buckets[source] = (tokens - 1.0, now)
        return True

    def _prune(self, now: float) -> None:
        full = [s for s in self._buckets if self._tokens(s, now) >= self.per_min]
        for s in full:
            del self._buckets[s]
        if len(self._buckets) >= MAX_TRACKED:  # all busy: forget the oldest half
            for s in sorted(self._buckets, key=lambda s: self._buckets[s][1])[: MAX_TRACKED // 2]:
                del self._buckets[s]
