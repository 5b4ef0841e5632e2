"""CPython's cyclic garbage collector, set for a server that holds many long-lived objects.

What the defaults cost (loadtest/RESULTS.md, "session 5 — the garbage collector"): with
CPython's thresholds (700, 10, 10) a connection manager logging in 6,000 clients spent about
12 % of its CPU in the collector, most of it in full collections, which walk every live
connection's objects: pauses of 120-180 ms at a few thousand connections, growing with the
connection count.  Two settings take most of that away:

* `freeze_startup`: what exists once the service has started (imported modules, settings,
  clients; ~80,000 objects in a connection manager) goes to the permanent generation, which
  no collection walks again.  It lives as long as the process anyway.
* `apply_thresholds` (``STANZAD_GC_THRESHOLDS``, default 20000,20,100): a first generation
  of 20,000 objects instead of 700, so that short-lived objects (a stanza's, a login step's)
  are freed by reference counting before a collection has to look at them, and the few that
  survive are walked once per 20,000 allocations instead of once per 700; fewer of them
  reach the old generations, so full collections (which CPython starts only when the
  long-lived objects grew by a quarter) come far less often.

Measured (the RESULTS section, with the stream parser's lxml cycles gone too): collector CPU
per 6,000 logins 1.38 s → 0.20 s, the longest pause ~180 ms → 59 ms.  `observe_pauses` puts
every collection's pause into ``stanzad_process_gc_pause_seconds``, by generation: the figure
that tells whether a latency spike was the collector.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

from shared.runtime.metrics import PREFIX

GC_PAUSE = Histogram(
    f"{PREFIX}_process_gc_pause_seconds",
    "Pauses of CPython's cyclic garbage collector, by generation collected.",
    ["service", "generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


def apply_thresholds(thresholds: tuple[int, int, int]) -> None:
    gc.set_threshold(*thresholds)


def freeze_startup() -> None:
    """Collect what startup left behind, then keep every object alive now out of all later
    collections (`gc.freeze`)."""
    gc.collect()
    gc.freeze()


class _PauseObserver:
    """A `gc.callbacks` entry timing each collection."""

    __slots__ = ("_hist", "_started")

    def __init__(self, service: str) -> None:
        self._started = 0.0
        self._hist = [GC_PAUSE.labels(service, str(g)) for g in range(3)]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._hist[info["generation"]].observe(time.perf_counter() - self._started)


def observe_pauses(service: str) -> None:
    """Time every collection of this process into ``stanzad_process_gc_pause_seconds``."""
    if not any(isinstance(cb, _PauseObserver) for cb in gc.callbacks):
        gc.callbacks.append(_PauseObserver(service))
