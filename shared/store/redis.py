"""Redis connections and timing of round trips."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from shared.metrics import STORE_ERRORS, STORE_LATENCY


def connect(url: str) -> aioredis.Redis:
    """A client pool that reconnects by itself and retries once on a dropped connection."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,
        retry_on_timeout=True,
    )


@asynccontextmanager
async def timed(service: str, operation: str) -> AsyncIterator[None]:
    """Observe one Redis round trip; count it as an error if it raises."""
    start = time.perf_counter()
    try:
        yield
    except Exception:
        STORE_ERRORS.labels(service, operation).inc()
        raise
    finally:
        STORE_LATENCY.labels(service, operation).observe(time.perf_counter() - start)
