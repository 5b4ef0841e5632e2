"""A real cluster for integration tests: nats-server, redis-server, a database of its own on
the test process's PostgreSQL (tests/support/postgres.py) and the services as subprocesses,
all on free loopback ports, torn down at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from devtools import localservers
from tests.support import postgres

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-token"


@dataclass
class Cluster:
    workdir: Path
    domain: str = "localhost"
    partitions: int = 16
    nats_port: int = 0
    redis_port: int = 0
    c2s_ports: list[int] = field(default_factory=list)
    s2s_port: int = 0
    side_ports: dict[str, int] = field(default_factory=dict)
    admin_ports: dict[str, int] = field(default_factory=dict)
    admin_tokens: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    aof: bool = False  # Redis append-only file (for restart tests)
    database_url: str = ""  # a fresh database on the shared test PostgreSQL by default

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def c2s_port(self) -> int:
        return self.c2s_ports[0]

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "STANZAD_NATS_URL": self.nats_url,
            "STANZAD_REDIS_URL": self.redis_url,
            "STANZAD_DATABASE_URL": self.database_url,
            "STANZAD_DOMAIN": self.domain,
            "STANZAD_PARTITIONS": str(self.partitions),
            "STANZAD_LOG_LEVEL": "INFO",
        }
        env.update(extra)
        return env

    def start_servers(self) -> None:
        self.nats_port = localservers.free_port()
        self.redis_port = localservers.free_port()
        self.start_nats()
        self.start_redis()
        if not self.database_url:
            self.database_url = postgres.new_database()

    def start_nats(self) -> None:
        """(Re)start nats-server on this cluster's port."""
        nats = localservers.start(
            localservers.nats_command(self.nats_port, self.workdir), self.workdir / "nats.log"
        )
        self.procs["nats"] = nats
        localservers.wait_port("127.0.0.1", self.nats_port, proc=nats)

    def start_redis(self) -> None:
        """(Re)start redis-server on this cluster's port and data directory."""
        redis = localservers.start(
            localservers.redis_command(self.redis_port, self.workdir, aof=self.aof),
            self.workdir / "redis.log",
        )
        self.procs["redis"] = redis
        localservers.wait_port("127.0.0.1", self.redis_port, proc=redis)

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout_s: float = 15) -> float:
        """Send `sig` to a process and wait for it to exit; returns the seconds it took."""
        proc = self.procs[name]
        started = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout_s)
        return time.monotonic() - started

    def ready(self, name: str) -> bool:
        """The service answers /readyz with 200."""
        url = f"http://127.0.0.1:{self.side_ports[name]}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def start_service(self, name: str, module: str, **env: str) -> subprocess.Popen[bytes]:
        side = localservers.free_port()
        self.side_ports[name] = side
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            env=self.env(STANZAD_HTTP_PORT=str(side), **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.procs[name] = proc
        return proc

    def start_router(self, name: str = "router-1", **env: str) -> None:
        env = {"STANZAD_ROUTER_ID": name, "STANZAD_LEASE_TTL_S": "3", **env}
        self.start_service(name, "services.router", **env)
        self.wait_ready(name)

    def start_presence(self, name: str = "presence-1", **env: str) -> None:
        env = {"STANZAD_PRESENCE_ID": name, "STANZAD_LEASE_TTL_S": "3",
               "STANZAD_SESSION_TTL_S": "6", **env}
        self.start_service(name, "services.presence", **env)
        self.wait_ready(name)

    def start_roster(self, name: str = "roster-1", **env: str) -> None:
        env = {"STANZAD_ROSTER_ID": name, "STANZAD_LEASE_TTL_S": "3", **env}
        self.start_service(name, "services.roster", **env)
        self.wait_ready(name)

    def spawn_core(self) -> None:
        """Router, presence and roster processes, without waiting for them: several
        clusters start all of theirs first, then wait for all (the machine has 2 cores)."""
        for role, module, extra in (
            ("router-1", "services.router", {"STANZAD_ROUTER_ID": "router-1"}),
            ("presence-1", "services.presence", {"STANZAD_PRESENCE_ID": "presence-1"}),
            ("roster-1", "services.roster", {"STANZAD_ROSTER_ID": "roster-1"}),
        ):
            self.start_service(role, module, STANZAD_LEASE_TTL_S="3", **extra)

    def start_core(self) -> None:
        """Router, presence and roster: everything but the connection managers."""
        self.start_router()
        self.start_presence()
        self.start_roster()

    def start_s2s(self, name: str = "s2s-1", port: int = 0, overrides: str = "",
                  wait: bool = True, **env: str) -> int:
        """An s2s gateway on ``port`` (a free one by default); ``overrides`` is
        STANZAD_S2S_OVERRIDES (domain=host:port,...), so no DNS is needed."""
        port = port or localservers.free_port()
        self.start_service(
            name,
            "services.s2s_gateway",
            STANZAD_S2S_ID=name,
            STANZAD_S2S_PORT=str(port),
            STANZAD_S2S_OVERRIDES=overrides,
            STANZAD_S2S_CONNECT_TIMEOUT_S="5",
            STANZAD_TLS_CERT=str(self.workdir / "tls" / "s2s-cert.pem"),
            STANZAD_TLS_KEY=str(self.workdir / "tls" / "s2s-key.pem"),
            STANZAD_LEASE_TTL_S="3",
            **env,
        )
        if wait:
            self.wait_ready(name)
        self.s2s_port = port
        return port

    def start_cm(self, name: str = "cm-1", **env: str) -> int:
        port = localservers.free_port()
        env = {
            "STANZAD_CM_ID": name,
            "STANZAD_C2S_PORT": str(port),
            "STANZAD_TLS_CERT": str(self.workdir / "tls" / "cert.pem"),
            "STANZAD_TLS_KEY": str(self.workdir / "tls" / "key.pem"),
            "STANZAD_SESSION_TTL_S": "6",
            **env,
        }
        self.start_service(name, "services.connection_manager", **env)
        self.wait_ready(name)
        self.c2s_ports.append(port)
        return port

    def start_admin(self, name: str = "admin-1", token: str = ADMIN_TOKEN, **env: str) -> int:
        """The admin API as a process; returns its API port (its side port is separate)."""
        port = localservers.free_port()
        self.start_service(name, "services.admin", STANZAD_ADMIN_HOST="127.0.0.1",
                           STANZAD_ADMIN_PORT=str(port), STANZAD_ADMIN_TOKEN=token,
                           STANZAD_SCRAM_ITERATIONS="4096", **env)
        self.wait_ready(name)
        self.admin_ports[name] = port
        self.admin_tokens[name] = token
        return port

    def admin(self, name: str = "admin-1", **env: str) -> tuple[str, str]:
        """(base URL, bearer token) of the admin API ``name``, started on first use (the
        test session and the load tool share one)."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None or name not in self.admin_ports:
            self.start_admin(name, **env)
        return f"http://127.0.0.1:{self.admin_ports[name]}", self.admin_tokens[name]

    def wait_ready(self, name: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.side_ports[name]}/readyz"
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{name} not ready:\n{self.log(name)}")

    def metrics(self, name: str) -> str:
        url = f"http://127.0.0.1:{self.side_ports[name]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            localservers.stop(self.procs[name])


def new_cluster(domain: str = "localhost") -> Cluster:
    return Cluster(workdir=Path(tempfile.mkdtemp(prefix="stanzad-test-")), domain=domain)


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    sample = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == sample or (labels and key.startswith(name + "{") and _same_labels(key, labels)):
            return float(value)
    return 0.0


def _same_labels(key: str, labels: dict[str, str]) -> bool:
    inner = key[key.index("{") + 1 : -1]
    found = dict(part.split("=", 1) for part in inner.split(",") if part)
    return {k: v.strip('"') for k, v in found.items()} == labels
