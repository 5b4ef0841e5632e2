"""The admin service: the admin API on its own listener, off the public ports.

The side port (/metrics, /healthz, /readyz) is the runner's, as for every service; the API
listens on ``STANZAD_ADMIN_HOST:STANZAD_ADMIN_PORT`` and wants ``Authorization: Bearer
<STANZAD_ADMIN_TOKEN>``.  An empty token is refused unless the API is bound to loopback.
"""

from __future__ import annotations

import ipaddress
import logging

from aiohttp import web

from shared.bus.client import Bus
from shared.cluster.admin import ClusterAdmin
from shared.runtime.settings import AdminSettings, ConfigError
from shared.store.pg.database import Database
from shared.store.redis import connect as redis_connect

from .api import build_app

log = logging.getLogger(__name__)

SERVICE = "admin"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_settings(settings: AdminSettings) -> None:
    """Raise ConfigError when the API would be reachable from the network without a token."""
    if not settings.admin_token.get_secret_value() and not is_loopback(settings.admin_host):
        raise ConfigError(
            f"STANZAD_ADMIN_TOKEN: must be set when STANZAD_ADMIN_HOST ({settings.admin_host}) "
            "is not a loopback address"
        )


class AdminService:
    name = SERVICE

    def __init__(self, settings: AdminSettings) -> None:
        check_settings(settings)
        self.settings = settings
        self._redis = redis_connect(settings.redis_url, settings.redis_tls_ca)
        self.bus = Bus(settings.nats_url, SERVICE, **settings.nats_options())
        self.db = Database(settings.database_url, SERVICE, size=settings.db_pool_size,
                           timeout_s=settings.db_timeout_s,
                           owner_url=settings.database_owner_url)  # opened by start()
        self.admin = ClusterAdmin(
            self._redis, self.db, settings.domain, settings.partitions, SERVICE, self.bus,
            settings.scram_iterations, settings.scram_min_iterations, settings.domains_file,
        )
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        self.db.start()  # not ready until it is open
        await self.bus.connect()
        token = self.settings.admin_token.get_secret_value()
        if not token:
            log.warning("admin API without a token on %s: anyone on this machine can use it",
                        self.settings.admin_host)
        app = build_app(self.admin, token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.admin_host, self.settings.admin_port)
        await site.start()
        server = site._server
        sockets = server.sockets if server is not None else []  # type: ignore[attr-defined]
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.admin_port
        log.info("admin API on http://%s:%d/api/v1/", self.settings.admin_host, self.port)

    def healthy(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._runner is not None and self.bus.connected and self.db.up

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.bus.close()
        await self._redis.aclose()
        await self.db.close()
