"""Redis connections and timing of round trips.

`connect` is the one factory of Redis clients; ``STANZAD_REDIS_URL`` selects the kind:

- ``redis://`` / ``rediss://`` (TLS): one server (or a managed endpoint that fails over
  behind one address);
- ``redis+cluster://USER:PASSWORD@HOST:PORT[,HOST:PORT...]`` (``rediss+cluster://`` with
  TLS): a Redis Cluster, through redis-py's cluster client; the nodes listed are only where
  discovery starts (``CLUSTER SLOTS``), database 0 only;
- ``redis+sentinel://USER:PASSWORD@HOST:PORT[,HOST:PORT...]/SERVICE`` (``rediss+sentinel://``
  with TLS to the data nodes): the primary that the Sentinels name for ``SERVICE``,
  followed across a failover; ``?db=N`` picks the database, ``?sentinel_username=`` and
  ``?sentinel_password=`` authenticate to the Sentinels themselves when they require it.

Every key of one bare JID (and of one connection manager, one room, ...) carries the same
hash tag (shared/store/keys.py), so the scripts and transactions of the stores each stay in
one hash slot, as Redis Cluster requires; pipelines without ``MULTI`` may mix slots (the
cluster client splits them by node).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any, Final, cast
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.runtime.metrics import STORE_CONNECTED, STORE_ERRORS, STORE_LATENCY, HistogramTally

log = logging.getLogger(__name__)


MAX_CONNECTIONS = 64  # per process: past it, a command waits for a free connection
POOL_TIMEOUT_S = 5.0  # ... for this long, then fails like any other Redis error


CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES: Final = ("redis+sentinel", "rediss+sentinel")
TLS_SCHEMES: Final = ("rediss", "rediss+cluster", "rediss+sentinel")
_CONNECTION: Final[dict[str, Any]] = {  # every kind of client
    "decode_responses": False, "socket_connect_timeout": 2, "socket_timeout": 5,
    "health_check_interval": 15,
}


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs (also a cluster's or the
    Sentinels' list of hosts)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def mode(url: str) -> str:
    """"cluster", "sentinel" or "single": the kind of Redis ``url`` names."""
    scheme = url.partition("://")[0].lower()
    if scheme in CLUSTER_SCHEMES:
        return "cluster"
    if scheme in SENTINEL_SCHEMES:
        return "sentinel"
    return "single"


def hosts_of(url: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a URL's comma-separated host list (IPv6 in brackets;
    port 6379, or 26379 for Sentinels, when absent)."""
    default = 26379 if mode(url) == "sentinel" else 6379
    found = []
    for item in urlsplit(url).netloc.rpartition("@")[2].split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest.lstrip(":")
        else:
            host, _, port = item.partition(":")
        found.append((host, int(port) if port else default))
    if not found:
        raise ValueError(f"no host in the Redis URL {redacted(url)}")
    return found


def connect(url: str, ca: str = "") -> aioredis.Redis:
    """A client that reconnects by itself and retries once on a dropped connection, of the
    kind the URL's scheme names (the module's docstring).  ``ca``: with TLS, the PEM file of
    the CA that signed Redis's certificate (empty: the system's trust store); the
    certificate and its name are verified.

    A blocking pool: redis-py's default pool raises "Too many connections" at 100 commands in
    flight (found by the load tool logging 200 clients in at once); this one makes the
    surplus wait for a connection instead (a cluster client: for a free one of at most
    MAX_CONNECTIONS commands in flight, `_Cluster`).

    A cluster client is returned as a `redis.asyncio.Redis`: it has the same commands for
    keys of one hash slot, which is all the stores use in one command, script or
    transaction."""
    kind = mode(url)
    tls = _tls(ca) if url.partition("://")[0].lower() in TLS_SCHEMES else {}
    if kind == "cluster":
        return cast(aioredis.Redis, _cluster(url, tls))
    if kind == "sentinel":
        return _sentinel(url, tls)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=POOL_TIMEOUT_S, retry_on_timeout=True,
        **_CONNECTION, **tls)
    return aioredis.Redis.from_pool(pool)  # closing the client closes the pool


def _credentials(url: str) -> dict[str, str | None]:
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return {"username": user, "password": password}


class _ClusterPipeline(ClusterPipeline):
    """A cluster pipeline that waits for its client's gate, like a command."""

    async def execute(self, raise_on_error: bool = True,
                      allow_redirections: bool = True) -> list[Any]:
        client = cast(_Cluster, self.cluster_client)
        async with client.gate():
            return await super().execute(raise_on_error, allow_redirections)


class _Gate:
    """At most MAX_CONNECTIONS commands and pipelines of a cluster client in flight; the
    others wait up to POOL_TIMEOUT_S, then fail as a blocking pool's do."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore

    async def __aenter__(self) -> None:
        try:
            await asyncio.wait_for(self._semaphore.acquire(), POOL_TIMEOUT_S)
        except TimeoutError:
            raise RedisConnectionError("No connection available.") from None

    async def __aexit__(self, *exc: object) -> None:
        self._semaphore.release()


class _Cluster(RedisCluster):
    """redis-py's cluster client, whose nodes' pools raise MaxConnectionsError when full:
    this one lets at most MAX_CONNECTIONS commands (and pipelines) be in flight, so no
    node's pool of MAX_CONNECTIONS is ever exceeded, and the surplus waits."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._in_flight = asyncio.Semaphore(MAX_CONNECTIONS)

    def gate(self) -> _Gate:
        return _Gate(self._in_flight)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.gate():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None,
                 shard_hint: Any | None = None) -> ClusterPipeline:
        """Transactions (``MULTI``) too: redis-py runs them when every key is of one slot
        and refuses them otherwise."""
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refused by redis-py
        return _ClusterPipeline(self, transaction)


def _cluster(url: str, tls: dict[str, Any]) -> RedisCluster:
    parts = urlsplit(url)
    db = parse_qs(parts.query).get("db", [parts.path.strip("/") or "0"])[0]
    if db not in ("", "0"):
        raise ValueError(f"Redis Cluster has database 0 only, not {db}: {redacted(url)}")
    nodes = [ClusterNode(host, port) for host, port in hosts_of(url)]
    return _Cluster(startup_nodes=nodes, max_connections=MAX_CONNECTIONS,
                    **_credentials(url), **_CONNECTION, **({"ssl": True, **tls} if tls else {}))


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The Sentinel pool (connections to the current primary) with the blocking pool's
    waiting for a free connection."""


def _sentinel(url: str, tls: dict[str, Any]) -> aioredis.Redis:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    service = unquote(parts.path.strip("/"))
    if not service or "/" in service:
        raise ValueError(f"a Sentinel URL names its primary's service: {redacted(url)}")
    sentinel_auth = {"username": query.get("sentinel_username"),
                     "password": query.get("sentinel_password")}
    sentinel = Sentinel(
        hosts_of(url),
        sentinel_kwargs={k: v for k, v in {**_CONNECTION, **sentinel_auth}.items()
                         if v is not None and k != "health_check_interval"},
        **_CONNECTION, **_credentials(url), db=int(query.get("db", "0")), **tls)
    return cast(aioredis.Redis, sentinel.master_for(
        service, connection_pool_class=_BlockingSentinelPool, max_connections=MAX_CONNECTIONS,
        timeout=POOL_TIMEOUT_S, retry_on_timeout=True, **({"ssl": True} if tls else {})))


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
