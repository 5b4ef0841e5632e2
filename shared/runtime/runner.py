"""The service runner: uvloop, signals, and the side port with /metrics, /healthz, /readyz.

It also raises the soft file-descriptor limit to the hard one (every client connection is a
descriptor; container runtimes often start processes at a soft limit of 1024) and watches
Redis for ``stanzad_store_connected``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.runtime import gc_tuning, logs
from shared.runtime.metrics import flush_tallies
from shared.runtime.settings import CommonSettings
from shared.store.redis import watch as watch_redis

log = logging.getLogger(__name__)


class Service(Protocol):
    """What the runner needs of a service."""

    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def healthy(self) -> bool: ...
    def ready(self) -> bool: ...


async def _side_app(service: Service, host: str, port: int) -> web.AppRunner:
    async def metrics(_: web.Request) -> web.Response:
        flush_tallies()
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = service.healthy()
        return web.Response(text="ok\n" if ok else "unhealthy\n", status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        ok = service.ready()
        return web.Response(text="ready\n" if ok else "not ready\n", status=200 if ok else 503)

    app = web.Application()
    app.add_routes(
        [web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)]
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
    bound = sockets[0].getsockname()[1] if sockets else port
    log.info("%s side port on http://%s:%s (/metrics /healthz /readyz)", service.name, host, bound)
    return runner


async def serve(service: Service, settings: CommonSettings) -> None:
    """Run a service until SIGTERM or SIGINT, then stop it cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    side = await _side_app(service, settings.http_host, settings.http_port)
    redis_watch = asyncio.create_task(
        watch_redis(settings.redis_url, service.name, ca=settings.redis_tls_ca))
    try:
        await service.start()
        gc_tuning.freeze_startup()  # what start() built lives as long as the process
        log.info("%s started", service.name)
        await stop.wait()
        log.info("%s stopping", service.name)
    finally:
        await service.stop()
        redis_watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await redis_watch
        await side.cleanup()
        log.info("%s stopped", service.name)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. hard = unlimited on some kernels
            log.warning("could not raise the file descriptor limit from %d: %s", soft, exc)
    return soft


def run(service: Service, settings: CommonSettings) -> None:
    """Entry point of a service process."""
    logs.setup(settings.log_level, settings.log_format)
    log.info("file descriptor limit: %d", raise_fd_limit())
    gc_tuning.apply_thresholds(settings.gc_threshold_values)
    gc_tuning.observe_pauses(service.name)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(service, settings))
    else:
        uvloop.run(serve(service, settings))
