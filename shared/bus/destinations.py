"""Which subject a stanza for a JID is published on: the one map of the cluster's domains.

The cluster serves its main domain (local accounts: the router partition of the bare JID),
its local service domains (multi-user chat, publish-subscribe, HTTP upload: the service's
partition of the bare JID, so one owner orders the traffic of one room or node), the domains
of its external components (XEP-0114: the subject of the domain, which the one gateway
process holding the component's stream consumes), and hands everything else to the s2s
gateway that owns the remote domain (federation).  The connection manager,
the s2s gateway, the router and the partitioned services all ask this map, so a stanza to
``conference.<domain>`` reaches the muc service whoever sends it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from shared.bus import subjects

if TYPE_CHECKING:
    from shared.runtime.settings import CommonSettings

FAMILIES: Final[dict[str, Callable[[int], str]]] = {
    "muc": subjects.muc,
    "pubsub": subjects.pubsub,
    "upload": subjects.upload,
}
# families keyed by the domain itself, not by a partition of the bare JID
BY_DOMAIN: Final[dict[str, Callable[[str], str]]] = {"component": subjects.component}


@dataclass(frozen=True, slots=True)
class Destinations:
    domain: str  # the main domain: local accounts
    partitions: int
    services: Mapping[str, str] = field(default_factory=dict)  # service domain -> family

    def __post_init__(self) -> None:
        unknown = set(self.services.values()) - FAMILIES.keys() - BY_DOMAIN.keys()
        if unknown:
            raise ValueError(f"unknown service families: {sorted(unknown)}")

    def service(self, domain: str) -> str | None:
        """The service family of a local service domain, or None."""
        return self.services.get(domain)

    def is_local(self, domain: str) -> bool:
        """The domain is served by this cluster (accounts or a service)."""
        return domain == self.domain or domain in self.services

    def subject(self, bare: str) -> str:
        """The subject of a stanza whose recipient has the bare JID ``bare``."""
        domain = bare.rpartition("@")[2]
        if domain == self.domain:
            return subjects.route(subjects.partition(bare, self.partitions))
        family = self.services.get(domain)
        if family is not None:
            if family in BY_DOMAIN:
                return BY_DOMAIN[family](domain)
            return FAMILIES[family](subjects.partition(bare, self.partitions))
        return subjects.s2s(subjects.partition(domain, self.partitions))


def of(settings: CommonSettings) -> Destinations:
    """The map of a service's settings (domain, partitions, service domains)."""
    return Destinations(settings.domain, settings.partitions, settings.service_domains)
