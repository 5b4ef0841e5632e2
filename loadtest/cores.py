"""The core budget of a run: every server process on one CPU, the load generator on the
others, so that stanzad (all its processes, NATS, Redis and PostgreSQL together) and the
one-process servers it is compared with get the same budget, as an independent load tool
would give them (taskset per server).

Affinity is inherited: the coordinator pins itself to the server CPU while it starts the
servers (their threads and forked children, PostgreSQL's backends and Erlang's schedulers
included, are born there), and to the load CPUs otherwise (the workers and the sampler).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

ALL = frozenset(os.sched_getaffinity(0))  # before any pinning of ours


@dataclass(frozen=True, slots=True)
class Cores:
    server: frozenset[int]
    load: frozenset[int]

    def as_dict(self) -> dict[str, list[int]]:
        return {"server_cpus": sorted(self.server), "load_cpus": sorted(self.load)}


def split() -> Cores | None:
    """The lowest CPU this process may use for the servers, the rest for the load; None
    with a single CPU (nothing to split)."""
    cpus = sorted(ALL)
    if len(cpus) < 2:
        return None
    return Cores(frozenset(cpus[:1]), frozenset(cpus[1:]))


@contextlib.contextmanager
def starting_servers(cores: Cores | None) -> Iterator[None]:
    """Processes started in this block run on ``cores.server``; afterwards this process
    (and what it starts next: the load workers) on ``cores.load``."""
    if cores is None:
        yield
        return
    os.sched_setaffinity(0, cores.server)
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores.load)


def unpinned() -> None:
    """Back to every CPU this process started with."""
    os.sched_setaffinity(0, ALL)
