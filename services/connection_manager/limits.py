"""Edge limits of the connection manager that need no I/O: token buckets, per-address counts.

RFC 6120 §13.12 (denial of service) asks servers to limit what one peer may cost them.  The
token buckets here drive backpressure: when a bucket is in debt the connection stops reading
its socket (`transport.pause_reading()`) until the debt is paid, so the kernel's receive
window, not our memory, absorbs a fast sender.
"""

from __future__ import annotations

from shared.cluster.source_limits import ConnectionsPerSource, source_key

# ConnectionsPerSource and source_key live in shared/ (the s2s gateway counts sources too)
__all__ = ["ConnectionsPerSource", "TokenBucket", "source_key"]


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
