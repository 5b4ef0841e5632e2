"""`stanzad run` stops its whole local cluster: on SIGTERM or Ctrl-C (SIGINT) every child is
gone and the last member of each partitioned role did not wait for a new owner; a kill -9 of
the supervisor takes its children with it (PR_SET_PDEATHSIG), so the next start on the same
ports works; a port held at start is reported with its holder's pid.

Each cluster runs on free loopback ports with its data in the test's temporary folder, never
on the ports of a developer's `make run`.  Times are printed, not asserted (hang guards only).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from devtools.localservers import free_port, port_open
from services.cli.devcluster import local_redis_url

ROOT = Path(__file__).resolve().parents[3]
START_GUARD_S = 120  # eight processes on a shared two-core machine
HANG_GUARD_S = 30
CHILDREN = 12  # nats, redis, postgres, router, presence, roster, muc, pubsub, cm, s2s,
# upload, admin

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="PR_SET_PDEATHSIG and /proc are Linux's")


Proc = tuple[int, str]  # pid and start time: a pid reused by another process is not ours


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rpartition(")")[2].split()


def children_of(pid: int) -> list[Proc]:
    found = []
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
            found.append((int(entry.name), fields[19]))  # stat field 22: start time
    return sorted(found)


def alive(proc: Proc) -> bool:
    """Running; a zombie (dead, not yet reaped by its new parent) holds nothing."""
    fields = _stat(proc[0])
    return fields is not None and fields[0] != "Z" and fields[19] == proc[1]


def wait_gone(procs: list[Proc], guard_s: float = HANG_GUARD_S) -> list[Proc]:
    """The processes still alive once all are gone or the guard expired."""
    deadline = time.monotonic() + guard_s
    while (left := [p for p in procs if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


class Run:
    """One `stanzad run` subprocess, its output collected by a thread."""

    def __init__(self, var: Path, ports: dict[str, int], extra: tuple[str, ...] = ()) -> None:
        self.ports = ports
        args = [sys.executable, "-m", "services.cli.main", "run", "--var", str(var),
                "--metrics-port", "0", *extra]
        for name, port in ports.items():
            args += [f"--{name}-port", str(port)]
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT,
                                     env={**os.environ, "STANZAD_ADMIN_TOKEN": "test-token"})
        self.lines: list[str] = []
        self.children: list[Proc] = []
        self._up = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if line.startswith("stanzad is up"):
                self._up.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_up(self, expected: int = CHILDREN) -> list[Proc]:
        assert self._up.wait(START_GUARD_S), self.output
        self.children = children_of(self.proc.pid)
        assert len(self.children) == expected, (self.children, self.output)
        return self.children

    def signal_and_wait(self, sig: signal.Signals) -> float:
        started = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(HANG_GUARD_S)
        return time.monotonic() - started

    def cleanup(self) -> None:
        """After a failed test: nothing of ours keeps running (only the pids we saw)."""
        if self.proc.poll() is None:
            self.proc.kill()
        for child in self.children:
            if alive(child):
                os.kill(child[0], signal.SIGKILL)
        self.proc.wait(HANG_GUARD_S)


def _free_ports(cms: int = 1) -> dict[str, int]:
    """Distinct free ports; the c2s one such that the other connection managers' (c2s + 10·i)
    are free too."""
    ports: dict[str, int] = {}
    names = ("c2s", "s2s", "nats", "redis", "postgres", "admin", "component", "upload")
    taken: set[int] = set()
    while len(ports) < len(names):
        port = free_port()
        mine = [port + 10 * i for i in range(cms)] if not ports else [port]
        if taken.isdisjoint(mine) and not any(port_open("127.0.0.1", p) for p in mine):
            ports[names[len(ports)]] = port
            taken.update(mine)
    return ports


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.cleanup()


def _start(runs: list[Run], var: Path, ports: dict[str, int] | None = None,
           extra: tuple[str, ...] = ()) -> Run:
    run = Run(var, ports or _free_ports(), extra)
    runs.append(run)
    return run


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_signal_stops_every_child_cleanly(
    sig: signal.Signals, runs: list[Run], tmp_path: Path
) -> None:
    run = _start(runs, tmp_path / "var")
    children = run.wait_up()
    took = run.signal_and_wait(sig)
    print(f"{sig.name}: `stanzad run` exited {took:.2f} s after the signal")
    assert run.proc.returncode == 0, run.output
    assert wait_gone(children) == [], run.output
    assert "stanzad stopped" in run.output
    # the one member of each partitioned role waited for no hand-over that cannot come
    for role in ("route", "presence", "roster", "pubsub", "s2s"):
        assert f"is the last {role} member" in run.output, run.output
    assert "no new owner came" not in run.output, run.output
    killed = [line for line in run.lines if "did not stop in time" in line]
    print("killed after the grace time:", killed or "none")  # a slow machine, not asserted
    for port in run.ports.values():
        assert not port_open("127.0.0.1", port), port


def test_kill_9_of_the_supervisor_takes_the_children_and_a_new_start_works(
    runs: list[Run], tmp_path: Path
) -> None:
    first = _start(runs, tmp_path / "var")
    children = first.wait_up()
    started = time.monotonic()
    first.proc.kill()
    first.proc.wait(HANG_GUARD_S)
    assert wait_gone(children) == [], first.output
    print(f"kill -9: the children were gone {time.monotonic() - started:.2f} s after it")
    second = _start(runs, tmp_path / "var", first.ports)  # same ports, same data folder
    second.wait_up()
    assert "already in use" not in second.output, second.output
    # its Redis takes only the `stanzad` user with the password of the first start
    plain = f"redis://127.0.0.1:{first.ports['redis']}/0"
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(plain).ping()
    assert redis.Redis.from_url(local_redis_url(tmp_path / "var", plain)).ping() is True
    second.signal_and_wait(signal.SIGTERM)
    assert second.proc.returncode == 0, second.output
    assert wait_gone(second.children) == [], second.output


def test_a_held_port_names_its_holder(runs: list[Run], tmp_path: Path) -> None:
    ports = _free_ports()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import socket,sys;s=socket.socket();s.bind(('127.0.0.1',{ports['nats']}));"
         "s.listen();print('listening',flush=True);sys.stdin.read()",
         "stale-holder-marker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"listening\n"
        run = _start(runs, tmp_path / "var", ports)
        run.proc.wait(HANG_GUARD_S)
        assert run.proc.returncode == 1, run.output
        print(run.output)
        assert f"port {ports['nats']} for NATS is already in use by pid {holder.pid} (" \
            in run.output
        assert "stale-holder-marker" in run.output  # its command line
    finally:
        holder.kill()
        holder.wait(HANG_GUARD_S)


def _env_of(proc: Proc) -> dict[str, str]:
    raw = Path(f"/proc/{proc[0]}/environ").read_bytes()
    return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)


def _wait(check: Callable[[], bool], guard_s: float = START_GUARD_S) -> bool:
    deadline = time.monotonic() + guard_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.1)
    return check()


def test_several_connection_managers_and_a_killed_one_is_restarted(
    runs: list[Run], tmp_path: Path
) -> None:
    """`--connection-managers 2 --routers 2`: the second connection manager listens on the c2s
    port + 10 (both printed at start); kill -9 of it leaves the rest running, is reported and
    the process is started again, listening on the same port; SIGTERM still stops all."""
    ports = _free_ports(cms=2)
    run = _start(runs, tmp_path / "var", ports,
                 ("--connection-managers", "2", "--routers", "2"))
    children = run.wait_up(CHILDREN + 2)
    second = ports["c2s"] + 10
    up = next(line for line in run.lines if line.startswith("stanzad is up"))
    assert f"127.0.0.1:{ports['c2s']} (cm-local)" in up, up
    assert f"127.0.0.1:{second} (cm-local-1)" in up, up
    assert port_open("127.0.0.1", second)
    victim = next(c for c in children if _env_of(c).get("STANZAD_CM_ID") == "cm-local-1")
    # `stanzad status` (with the cluster's Redis and database as a cm has them, logged in to
    # Redis as the operator's ACL user `cli`: a cm's user may not read every key) names
    # each connection manager's c2s address
    env = {**os.environ, **_env_of(victim)}
    env["STANZAD_REDIS_URL"] = local_redis_url(
        tmp_path / "var", re.sub(r"//[^@/]*@", "//", env["STANZAD_REDIS_URL"]))
    status = subprocess.run([sys.executable, "-m", "services.cli.main", "status"], cwd=ROOT,
                            env=env, capture_output=True, timeout=HANG_GUARD_S, check=False)
    shown = status.stdout.decode()
    assert status.returncode == 0, (shown, status.stderr)
    assert f"cm-local (alive, c2s 127.0.0.1:{ports['c2s']}, " in shown, shown
    assert f"cm-local-1 (alive, c2s 127.0.0.1:{second}, " in shown, shown
    others = [c for c in children if c != victim]
    os.kill(victim[0], signal.SIGKILL)
    assert _wait(lambda: "cm-1 restarted" in run.output), run.output
    assert "cm-1 exited with -9; the rest of the cluster keeps running" in run.output
    assert run.proc.poll() is None, run.output
    assert all(alive(c) for c in others), run.output  # nothing else was touched
    now = children_of(run.proc.pid)
    assert len(now) == CHILDREN + 2, (now, run.output)
    reborn = [c for c in now if c not in children]
    assert len(reborn) == 1 and _env_of(reborn[0])["STANZAD_CM_ID"] == "cm-local-1"
    assert port_open("127.0.0.1", second) and port_open("127.0.0.1", ports["c2s"])
    run.children = now
    run.signal_and_wait(signal.SIGTERM)
    assert run.proc.returncode == 0, run.output
    assert wait_gone(now) == [], run.output
    for port in (*run.ports.values(), second):
        assert not port_open("127.0.0.1", port), port
