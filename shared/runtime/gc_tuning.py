"""CPython's cyclic garbage collector, set for a server that holds many long-lived objects.

`freeze_startup` moves what exists once a service has started to the permanent generation;
`apply_thresholds` (``STANZAD_GC_THRESHOLDS``) makes the first generation large enough that
a stanza's or a login's short-lived objects are freed by reference counting before any
collection looks at them; `observe_pauses` feeds ``stanzad_process_gc_pause_seconds``.  Why
and what it saves: docs/architecture.md ("The garbage collector") and loadtest/RESULTS.md
("session 5 — the garbage collector").
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
