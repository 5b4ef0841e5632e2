"""Where a remote domain's XMPP server listens (RFC 6120 §3.2, XEP-0368).

SRV records ``_xmpps-server._tcp`` (direct TLS) and ``_xmpp-server._tcp`` (STARTTLS) are
looked up with dnspython and tried by priority (at equal priority direct TLS first, then by
weight); a single target "." means the domain offers no service (RFC 2782).  Without SRV
records the domain itself is tried on port 5269 (its A/AAAA records, through the system
resolver at connect time).  A static override (``STANZAD_S2S_OVERRIDES``) replaces DNS for
the domains it lists: tests and private federations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import dns.asyncresolver
import dns.exception
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
    def __init__(self, overrides: dict[str, tuple[str, int]], timeout_s: float = 5.0) -> None:
        self.overrides = overrides
        self.timeout_s = timeout_s

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
            return order(records)
        if refused == 2:
            raise ServiceUnavailable(domain)
        return [Target(domain, DEFAULT_PORT)]

    async def _srv(self, name: str, direct: bool) -> list[_Srv] | None:
        """The records of one SRV name; None when the only target is '.'."""
        try:
            answer = await dns.asyncresolver.resolve(name, "SRV", lifetime=self.timeout_s)
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
