"""Edge limits of the connection manager that need no I/O: token buckets, per-address counts.

RFC 6120 §13.12 (denial of service) asks servers to limit what one peer may cost them.  The
token buckets here drive backpressure: when a bucket is in debt the connection stops reading
its socket (`transport.pause_reading()`) until the debt is paid, so the kernel's receive
window, not our memory, absorbs a fast sender.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Final

IPV6_PREFIX: Final = 64  # one IPv6 subscriber usually owns a whole /64


class TokenBucket:
    """A token bucket that may go into debt by the size of the last take.

    `take(n, now)` always succeeds (the bytes were already read) and returns how many seconds
    the caller should wait before taking again; 0 while the bucket is not in debt.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def take(self, n: float, now: float) -> float:
        elapsed = now - self._last
        self._last = now
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._tokens -= n
        return -self._tokens / self.rate if self._tokens < 0 else 0.0


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
    """Open connections per source (`source_key`) on this connection manager."""

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
