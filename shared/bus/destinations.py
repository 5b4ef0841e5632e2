"""Which subject a stanza for a JID is published on: the one map of the cluster's domains.

The cluster serves its account domains, the main one and its virtual hosts (local accounts:
the router partition of the bare JID; the set changes at run time, shared/cluster/vhosts.py),
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


@dataclass(slots=True)
class Destinations:
    domain: str  # the main domain: local accounts
    partitions: int
    services: Mapping[str, str] = field(default_factory=dict)  # service domain -> family
    # every account domain (the main one and the virtual hosts); replaced, never mutated,
    # by `set_accounts` so that a holder of the old set keeps a consistent one
    accounts: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.services.values()) - FAMILIES.keys() - BY_DOMAIN.keys()
        if unknown:
            raise ValueError(f"unknown service families: {sorted(unknown)}")
        self.accounts = frozenset({self.domain, *self.accounts})

    def set_accounts(self, domains: frozenset[str] | set[str]) -> None:
        """The account domains now served (the main domain always is)."""
        self.accounts = frozenset({self.domain, *domains})

    def is_account(self, domain: str) -> bool:
        """Accounts of this domain live here (the main domain or a virtual host)."""
        return domain in self.accounts

    def service(self, domain: str) -> str | None:
        """The service family of a local service domain, or None."""
        return self.services.get(domain)

    def is_local(self, domain: str) -> bool:
        """The domain is served by this cluster (accounts or a service)."""
        return domain in self.accounts or domain in self.services

    def subject(self, bare: str) -> str:
        """The subject of a stanza whose recipient has the bare JID ``bare``."""
        domain = bare.rpartition("@")[2]
        if domain in self.accounts:
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
