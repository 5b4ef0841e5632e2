"""Percentiles and per-second series of latency samples (pure functions, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

PERCENTILES = (50.0, 95.0, 99.0)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile `q` (0..100) of already sorted values; NaN when empty.

    Nearest rank: the smallest value with at least q% of the values at or below it."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], not {q}")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * n))
    return float(sorted_values[rank - 1])


@dataclass(frozen=True, slots=True)
class Summary:
    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(values: Iterable[float]) -> Summary:
    ordered = sorted(values)
    if not ordered:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    return Summary(
        count=len(ordered),
        mean=math.fsum(ordered) / len(ordered),
        p50=percentile(ordered, 50),
        p95=percentile(ordered, 95),
        p99=percentile(ordered, 99),
        max=ordered[-1],
    )


@dataclass(frozen=True, slots=True)
class Bucket:
    """One interval of a run: deliveries and their latency percentiles."""

    t_s: float
    delivered: int
    p50: float
    p95: float
    p99: float


def series(samples: Iterable[tuple[float, float]], start: float, width_s: float = 1.0
           ) -> list[Bucket]:
    """Per-interval buckets of (arrival time, latency) samples, from `start`, gaps included."""
    if width_s <= 0:
        raise ValueError("width_s must be positive")
    bins: dict[int, list[float]] = {}
    for at, latency in samples:
        bins.setdefault(max(0, int((at - start) // width_s)), []).append(latency)
    if not bins:
        return []
    out = []
    for i in range(max(bins) + 1):
        values = sorted(bins.get(i, []))
        out.append(Bucket(
            t_s=(i + 1) * width_s,
            delivered=len(values),
            p50=percentile(values, 50),
            p95=percentile(values, 95),
            p99=percentile(values, 99),
        ))
    return out


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def per(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is zero (JSON writes null)."""
    return numerator / denominator if denominator else math.nan
