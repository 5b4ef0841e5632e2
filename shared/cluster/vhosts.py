"""The virtual hosts a service serves, kept current while it runs.

Every service holds one `VirtualHosts`: the main domain and the domains file
(configuration) plus the rows of the ``domains`` table (shared/store/domains.py).  It
reloads them when a notice arrives on ``stanzad.domains`` (the admin API and the CLI publish
one after each change) and every ``STANZAD_DOMAINS_RELOAD_S`` besides (a notice lost while
NATS was away), and updates the service's `Destinations` (shared/bus/destinations.py) in
place, so routing, stream 'to' checks and s2s see a new domain within moments.  While
PostgreSQL is away the last known set stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from shared.bus import subjects
from shared.bus.client import Bus
from shared.bus.destinations import Destinations
from shared.runtime.settings import CommonSettings
from shared.store.domains import DomainStore, VirtualHost, load_file
from shared.store.pg.database import Database

log = logging.getLogger(__name__)

RETRY_S = 2.0  # the first load failed (PostgreSQL not up yet): try again this soon


class VirtualHosts:
    def __init__(self, settings: CommonSettings, db: Database | None,
                 destinations: Destinations) -> None:
        self._settings = settings
        self._store = DomainStore(db) if db is not None else None
        self.destinations = destinations
        main = VirtualHost(settings.domain, None, {}, "config")
        self.static: dict[str, VirtualHost] = {main.name: main}
        if settings.domains_file:
            for name, host in load_file(settings.domains_file).items():
                self.static.setdefault(name, host)  # the main domain's settings are the env's
        self.hosts: dict[str, VirtualHost] = dict(self.static)
        self.loaded = self._store is None
        self.listeners: list[Callable[[dict[str, VirtualHost]], None]] = []
        self._wake = asyncio.Event()
        self._apply(self.hosts)

    @property
    def main(self) -> str:
        return self._settings.domain

    def get(self, name: str) -> VirtualHost | None:
        return self.hosts.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.hosts

    def _apply(self, hosts: dict[str, VirtualHost]) -> None:
        added = hosts.keys() - self.hosts.keys()
        removed = self.hosts.keys() - hosts.keys()
        self.hosts = hosts
        self.destinations.set_accounts(set(hosts))
        if added or removed:
            log.info("virtual hosts: %s (added %s, removed %s)", ", ".join(sorted(hosts)),
                     sorted(added) or "none", sorted(removed) or "none")
        for listener in self.listeners:
            listener(hosts)

    async def reload(self) -> None:
        """Read the database now (raises while it is away: the last set stays)."""
        if self._store is None:
            return
        rows = await self._store.all()
        hosts = dict(rows)
        hosts.update(self.static)  # configuration wins over a row of the same name
        self.loaded = True
        self._apply(hosts)

    def notice(self, _data: bytes = b"") -> None:
        """A notice on the bus: reload soon."""
        self._wake.set()

    async def run(self, bus: Bus | None = None) -> None:
        """Reload on notices and every ``domains_reload_s``, until cancelled."""
        if bus is not None:
            while True:
                try:
                    await bus.listen(subjects.domains(), self.notice)
                    break
                except Exception as exc:  # not connected yet
                    log.debug("domain notices not yet subscribed: %s", exc)
                    await asyncio.sleep(RETRY_S)
        while True:
            try:
                await self.reload()
            except Exception as exc:
                log.warning("reloading the virtual hosts failed (the last set stays): %s", exc)
            period = self._settings.domains_reload_s if self.loaded else RETRY_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), period)
            self._wake.clear()


async def announce(bus: Bus) -> None:
    """Tell every service the virtual hosts changed."""
    await bus.publish(subjects.domains(), b"")
