"""The coordinator's side of the worker processes: start them, send one command to all,
gather the answers while printing a progress line."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from loadtest.bounds import Plan
from loadtest.worker import (
    BOUND,
    DROPPED,
    FAILED,
    NCOUNTERS,
    RECEIVED,
    SENT,
    Worker,
    WorkerConfig,
    worker_main,
)


class WorkerFailed(RuntimeError):
    """A worker answered with an error or died."""


@dataclass
class Fleet:
    plan: Plan
    host: str
    ports: tuple[int, ...]
    sources: tuple[str, ...]
    domain: str
    password: str
    mechanism: str
    quiet: bool = False
    sm: bool = False  # XEP-0198 on every client
    token_key: str = ""  # OAUTHBEARER: the private JWK the workers sign tokens with
    worker: type[Worker] = Worker  # a subclass with more commands (loadtest/pubsub_worker.py)
    procs: list[BaseProcess] = field(default_factory=list)
    pipes: list[Connection] = field(default_factory=list)
    counters: Any = None

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self.counters = ctx.Array("q", self.plan.workers * NCOUNTERS, lock=False)
        for i in range(self.plan.workers):
            ours, theirs = ctx.Pipe()
            cfg = WorkerConfig(i, self.host, self.ports, self.sources, self.domain,
                               self.password, self.mechanism, self.plan.per_worker_cap,
                               self.sm, self.token_key)
            proc = ctx.Process(target=worker_main, args=(cfg, theirs, self.counters, self.worker),
                               name=f"loadtest-worker-{i}", daemon=True)
            proc.start()
            self.procs.append(proc)
            self.pipes.append(ours)

    def totals(self) -> dict[str, int]:
        c = self.counters
        names = {"bound": BOUND, "failed": FAILED, "sent": SENT, "received": RECEIVED,
                 "dropped": DROPPED}
        return {name: sum(c[w * NCOUNTERS + slot] for w in range(self.plan.workers))
                for name, slot in names.items()}

    def progress(self, label: str, started: float) -> None:
        if self.quiet:
            return
        t = self.totals()
        sys.stderr.write(
            f"\r[{label}] {time.monotonic() - started:6.1f}s  bound {t['bound']:,}  "
            f"failed {t['failed']:,}  sent {t['sent']:,}  received {t['received']:,}  "
            f"dropped {t['dropped']:,}   "
        )
        sys.stderr.flush()

    def end_progress(self) -> None:
        if not self.quiet:
            sys.stderr.write("\n")

    def call(self, command: str, args: list[dict[str, Any]] | dict[str, Any], label: str,
             timeout_s: float) -> list[dict[str, Any]]:
        """Send `command` to every worker (`args` per worker or shared) and wait for all."""
        per = args if isinstance(args, list) else [args] * len(self.pipes)
        for pipe, a in zip(self.pipes, per, strict=True):
            pipe.send((command, a))
        replies: dict[int, dict[str, Any]] = {}
        started = time.monotonic()
        deadline = started + timeout_s
        while len(replies) < len(self.pipes):
            if time.monotonic() > deadline:
                raise WorkerFailed(f"{command}: no answer from every worker in {timeout_s:.0f}s")
            pending = [p for i, p in enumerate(self.pipes) if i not in replies]
            for ready in wait(pending, timeout=1.0):
                assert isinstance(ready, Connection)
                i = self.pipes.index(ready)
                try:
                    replies[i] = ready.recv()
                except EOFError:
                    raise WorkerFailed(f"worker {i} died during {command}") from None
            self.progress(label, started)
        self.end_progress()
        out = [replies[i] for i in range(len(self.pipes))]
        errors = [r["error"] for r in out if "error" in r]
        if errors:
            raise WorkerFailed(f"{command}: {errors[0]}")
        return out

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(BrokenPipeError, OSError):
                pipe.send(("close", {}))
        deadline = time.monotonic() + 10
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
        self.procs.clear()
        self.pipes.clear()
