"""Bounds of a run and the loopback-only rule.

Every run is bounded in connections, messages and seconds; every address the tool connects
to or binds is a loopback address.  Checked before anything starts, with errors that name
the option.
"""

from __future__ import annotations

import ipaddress
import resource
from dataclasses import dataclass
from typing import Final

MAX_CONNECTIONS: Final = 100_000
MAX_MESSAGES: Final = 2_000_000
MAX_SECONDS: Final = 1_800.0
MAX_RATE_PER_S: Final = 200_000.0
MAX_WORKERS: Final = 16
MAX_CMS: Final = 8  # connection managers: 100,000 at under 20,000 descriptors each
MAX_SOURCES: Final = 64
MAX_CONTACTS: Final = 5_000
MAX_RAMP_STEPS: Final = 40
FD_RESERVE: Final = 64  # descriptors a worker keeps for pipes, logs and imports


class BoundsError(ValueError):
    """An option is outside the bounds of a run; the message names the option."""


class NotLoopback(BoundsError):
    """An address is not a loopback address: the tool never targets anything else."""


def require_loopback(option: str, host: str) -> str:
    """`host` as an IP literal if it is a loopback address ("localhost" is 127.0.0.1)."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise NotLoopback(f"{option}: {host!r} is not an IP address (loopback only)") from None
    if not addr.is_loopback:
        raise NotLoopback(f"{option}: {host} is not a loopback address")
    return str(addr)


def source_addresses(count: int) -> list[str]:
    """`count` distinct loopback source addresses: 127.0.0.2, 127.0.0.3, …"""
    check_range("--sources", count, 1, MAX_SOURCES)
    return [f"127.0.0.{2 + i}" for i in range(count)]


def check_range(option: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise BoundsError(f"{option} must be in [{low:g}, {high:g}], not {value:g}")


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return int(hard if soft == resource.RLIM_INFINITY else soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(hard)


def connections_per_worker(nofile: int) -> int:
    """How many client connections one process may hold under a descriptor limit."""
    return max(0, nofile - FD_RESERVE)


@dataclass(frozen=True, slots=True)
class Plan:
    """How the connections of a run are spread over worker processes."""

    connections: int
    workers: int
    per_worker_cap: int

    def shares(self) -> list[int]:
        """Connections for each worker, as even as possible."""
        base, extra = divmod(self.connections, self.workers)
        return [base + (1 if i < extra else 0) for i in range(self.workers)]


def plan(connections: int, workers: int, nofile: int | None = None) -> Plan:
    """Spread `connections` over at least `workers` processes within the descriptor limit.

    More workers are used when one would exceed its share of descriptors; refused when even
    MAX_WORKERS would not do."""
    check_range("--connections", connections, 1, MAX_CONNECTIONS)
    check_range("--workers", workers, 1, MAX_WORKERS)
    cap = connections_per_worker(raise_nofile() if nofile is None else nofile)
    if cap <= 0:
        raise BoundsError("RLIMIT_NOFILE leaves no descriptors for connections")
    needed = -(-connections // cap)
    if needed > MAX_WORKERS:
        raise BoundsError(
            f"--connections {connections} needs {needed} workers at {cap} descriptors each "
            f"(RLIMIT_NOFILE); at most {MAX_WORKERS}"
        )
    return Plan(connections, max(workers, needed), cap)
