"""The runner's operational duties: the fd limit and the Redis watch."""

from __future__ import annotations

import asyncio
import contextlib
import resource

from prometheus_client import REGISTRY

from devtools import localservers
from shared.runtime.runner import raise_fd_limit
from shared.store.redis import watch
from tests.support.cluster import Cluster


def test_soft_fd_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        assert raise_fd_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _watched(url: str, service: str) -> float | None:
    task = asyncio.create_task(watch(url, service, interval_s=0.05))
    try:
        for _ in range(100):
            value = REGISTRY.get_sample_value("stanzad_store_connected", {"service": service})
            if value is not None:
                return value
            await asyncio.sleep(0.02)
        return None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_redis_watch_reports_reachability(cluster: Cluster) -> None:
    assert await _watched(cluster.redis_url, "watch-up") == 1.0
    closed = f"redis://127.0.0.1:{localservers.free_port()}/0"
    assert await _watched(closed, "watch-down") == 0.0
