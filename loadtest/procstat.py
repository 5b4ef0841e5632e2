"""CPU seconds and RSS of the server processes, read from /proc while a run goes on."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0.0 once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# Servers whose work is done by forked children: PostgreSQL's backends.  Their CPU is the
# parent's own, plus that of its reaped children (cutime, cstime), plus that of the children
# still running.
TREES = frozenset({"postgres"})


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its children, live or exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK
    for child in _children(pid):
        total += cpu_seconds(child)
    return total


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        found: list[int] = []
        for task in tasks:
            found += [int(c) for c in (task / "children").read_text().split()]
        return found
    except OSError:
        return []


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return 0
    return int(raw.split()[1]) * PAGE


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # time.monotonic()
    cpu_s: dict[str, float]
    rss: dict[str, int]


@dataclass
class ProcSampler:
    """Samples every named process every `interval_s` in a thread, until stopped."""

    pids: dict[str, int]
    interval_s: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> Sample:
        s = Sample(
            time.monotonic(),
            {name: (tree_cpu_seconds if name in TREES else cpu_seconds)(pid)
             for name, pid in self.pids.items()},
            {name: rss_bytes(pid) for name, pid in self.pids.items()},
        )
        self.samples.append(s)
        return s

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="procstat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sample()


@dataclass(frozen=True, slots=True)
class Cost:
    """What the server processes spent between two samples."""

    seconds: float
    cpu_s: dict[str, float]
    rss_before: dict[str, int]
    rss_after: dict[str, int]

    @property
    def total_cpu_s(self) -> float:
        return sum(self.cpu_s.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "seconds": self.seconds,
            "cpu_s": self.cpu_s,
            "total_cpu_s": self.total_cpu_s,
            "rss_before": self.rss_before,
            "rss_after": self.rss_after,
        }


def cost(before: Sample, after: Sample) -> Cost:
    return Cost(
        seconds=after.t - before.t,
        cpu_s={k: after.cpu_s[k] - before.cpu_s.get(k, 0.0) for k in after.cpu_s},
        rss_before=dict(before.rss),
        rss_after=dict(after.rss),
    )
