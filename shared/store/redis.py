"""Redis connections and timing of round trips."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis

from shared.runtime.metrics import STORE_CONNECTED, STORE_ERRORS, STORE_LATENCY, HistogramTally

log = logging.getLogger(__name__)


MAX_CONNECTIONS = 64  # per process: past it, a command waits for a free connection
POOL_TIMEOUT_S = 5.0  # ... for this long, then fails like any other Redis error


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def connect(url: str, ca: str = "") -> aioredis.Redis:
    """A client pool that reconnects by itself and retries once on a dropped connection.
    ``ca``: for a ``rediss://`` URL, the PEM file of the CA that signed Redis's certificate
    (empty: the system's trust store); the certificate and its name are verified.

    A blocking pool: redis-py's default pool raises "Too many connections" at 100 commands in
    flight (found by the load tool logging 200 clients in at once); this one makes the
    surplus wait for a connection instead."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_TIMEOUT_S,
        decode_responses=False,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,
        retry_on_timeout=True,
        **(_tls(ca) if url.startswith("rediss://") else {}),
    )
    return aioredis.Redis.from_pool(pool)  # closing the client closes the pool


def _tls(ca: str) -> dict[str, object]:
    """redis-py's TLS options: TLS 1.2 or newer, the certificate verified against ``ca``
    (the system's trust store when empty) and its name checked."""
    return {"ssl_min_version": ssl.TLSVersion.TLSv1_2, "ssl_cert_reqs": "required",
            "ssl_check_hostname": True, **({"ssl_ca_certs": ca} if ca else {})}


class timed:  # lower case: used like the function it replaced, `async with timed(...)`
    """Observe one Redis round trip; count it as an error if it raises.

    A small class rather than an `asynccontextmanager` generator, observing into a local
    `HistogramTally` per (service, operation) (added to the histogram when /metrics is
    scraped): it wraps every store call of a login."""

    __slots__ = ("_key", "_start")

    def __init__(self, service: str, operation: str) -> None:
        self._key = (service, operation)
        self._start = 0.0

    async def __aenter__(self) -> None:
        self._start = time.perf_counter()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: object,
                        tb: object) -> None:
        child = _LATENCY.get(self._key)
        if child is None:
            child = _LATENCY[self._key] = HistogramTally(STORE_LATENCY.labels(*self._key))
        child.observe(time.perf_counter() - self._start)
        if exc_type is not None and issubclass(exc_type, Exception):
            STORE_ERRORS.labels(*self._key).inc()


_LATENCY: dict[tuple[str, str], HistogramTally] = {}  # (service, operation) -> its tally


async def watch(url: str, service: str, interval_s: float = 5.0, ca: str = "") -> None:
    """PING Redis forever on a connection of its own: ``stanzad_store_connected`` and the
    ``ping`` round trip of ``stanzad_store_command_duration_seconds``, even when idle."""
    client = connect(url, ca)
    connected = STORE_CONNECTED.labels(service)
    up = True
    try:
        while True:
            try:
                async with timed(service, "ping"):
                    await asyncio.wait_for(client.ping(), timeout=max(1.0, interval_s))
                if not up:
                    log.info("Redis reachable again")
                up = True
            except Exception as exc:
                if up:  # log the transition, not every failed round
                    log.warning("Redis not reachable: %s", exc)
                up = False
            connected.set(1 if up else 0)
            await asyncio.sleep(interval_s)
    finally:
        await client.aclose()
