"""Where a remote domain's XMPP server listens (RFC 6120 §3.2, XEP-0368).

SRV records ``_xmpps-server._tcp`` (direct TLS) and ``_xmpp-server._tcp`` (STARTTLS) are
looked up with dnspython and tried by priority (at equal priority direct TLS first, then by
weight); a single target "." means the domain offers no service (RFC 2782).  Without SRV
records the domain itself is tried on port 5269.  Host names are turned into addresses by
the system resolver at connect time, or, when ``STANZAD_S2S_DNS_SERVERS`` names the DNS
servers to ask, by dnspython (A and AAAA) from those servers too.  A static override
(``STANZAD_S2S_OVERRIDES``) replaces DNS for the domains it lists: private federations.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass, replace
from typing import Final

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 5269


class ServiceUnavailable(LookupError):
    """The domain says it offers no XMPP server (SRV target '.')."""


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    direct_tls: bool = False


@dataclass(frozen=True, slots=True)
class _Srv:
    priority: int
    weight: int
    target: Target


def order(records: list[_Srv]) -> list[Target]:
    """By priority, direct TLS before STARTTLS at equal priority (XEP-0368 §3), then by
    weight (a deterministic simplification of RFC 2782's weighted choice)."""
    ranked = sorted(records, key=lambda r: (r.priority, not r.target.direct_tls, -r.weight))
    seen: set[Target] = set()
    out = []
    for r in ranked:
        if r.target not in seen:
            seen.add(r.target)
            out.append(r.target)
    return out


class Resolver:
    def __init__(
        self, overrides: dict[str, tuple[str, int]], timeout_s: float = 5.0,
        nameservers: list[tuple[str, int]] | None = None,
    ) -> None:
        self.overrides = overrides
        self.timeout_s = timeout_s
        self.own_servers = bool(nameservers)
        if nameservers:
            self._dns = dns.asyncresolver.Resolver(configure=False)
            self._dns.nameservers = [
                dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers
            ]
        else:
            self._dns = dns.asyncresolver.get_default_resolver()

    async def resolve(self, domain: str) -> list[Target]:
        if domain in self.overrides:
            host, port = self.overrides[domain]
            return [Target(host, port)]
        records: list[_Srv] = []
        refused = 0
        for service, direct in (("_xmpps-server._tcp", True), ("_xmpp-server._tcp", False)):
            found = await self._srv(f"{service}.{domain}", direct)
            if found is None:
                refused += 1
            else:
                records.extend(found)
        if records:
            targets = order(records)
        elif refused == 2:
            raise ServiceUnavailable(domain)
        else:
            targets = [Target(domain, DEFAULT_PORT)]
        if not self.own_servers:
            return targets  # the system resolver finds the addresses when connecting
        return [t for target in targets for t in await self._addresses(target)]

    async def _addresses(self, target: Target) -> list[Target]:
        """The target once per A/AAAA address, from our own DNS servers."""
        try:
            ipaddress.ip_address(target.host)
        except ValueError:
            pass
        else:
            return [target]
        found = await asyncio.gather(
            *(self._query(target.host, rtype) for rtype in ("AAAA", "A"))
        )
        return [replace(target, host=addr) for addrs in found for addr in addrs]

    async def _query(self, name: str, rtype: str) -> list[str]:
        try:
            answer = await self._dns.resolve(name, rtype, lifetime=self.timeout_s)
        except dns.exception.DNSException as exc:
            log.debug("%s lookup of %s failed: %s", rtype, name, exc)
            return []
        return [rr.to_text() for rr in answer]

    async def _srv(self, name: str, direct: bool) -> list[_Srv] | None:
        """The records of one SRV name; None when the only target is '.'."""
        try:
            answer = await self._dns.resolve(name, "SRV", lifetime=self.timeout_s)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return []
        except dns.exception.DNSException as exc:
            log.info("SRV lookup of %s failed: %s", name, exc)
            return []
        out = []
        for rr in answer:
            target = rr.target.to_text(omit_final_dot=True)
            if target in ("", "."):
                if len(answer) == 1:
                    return None
                continue
            out.append(_Srv(rr.priority, rr.weight, Target(target, rr.port, direct)))
        return out
