"""`stanzad run`: the whole cluster on one machine, in the foreground, Ctrl-C to stop.

Starts nats-server, redis-server (AOF on) and PostgreSQL (database `stanzad`), data under
var/, then the routers, presence, roster and muc members, connection managers (one of each by
default; ``Scale``), an s2s gateway and the admin API, each as its own process with prefixed
log lines.  The i-th connection manager (from 0) listens on the c2s port + 10·i, its
direct TLS port (XEP-0368) and its HTTP port (WebSocket, BOSH, host-meta) + 10·i likewise
(5223 and 5280 for the first).

NATS accepts only the identity of each role, with that role's permissions
(shared/bus/permissions.py), and only over TLS; the passwords are generated on the first run
into var/nats/ and the services get theirs in STANZAD_NATS_USER and STANZAD_NATS_PASSWORD;
its certificate is signed by a development CA made on the first run in var/ca/, which the
services trust (STANZAD_NATS_TLS_CA).  Redis runs with its
`default` user off: each service logs in as its role's ACL user (shared/store/acl.py: its
keys and commands only) with a password generated on the first run into var/redis/
(STANZAD_REDIS_URL carries it); the user `stanzad` there may do anything, for a person at
redis-cli.  PostgreSQL has an owner role (the services migrate at start as it) and an
application role (what they run as: rows only, no DDL; shared/store/pg/roles.py).
Servers of your own: with STANZAD_REDIS_URL, STANZAD_NATS_URL or STANZAD_DATABASE_URL set
(``External``), `stanzad run` starts no redis-server, nats-server or PostgreSQL of its own
and every service gets that URL instead (a ``redis+cluster://`` or ``redis+sentinel://``
one too, shared/store/redis.py); its credentials are the services' (one identity for every
role: the URL's, or STANZAD_NATS_USER/STANZAD_NATS_PASSWORD), and
STANZAD_DATABASE_OWNER_URL, when set, is the one the services migrate as.
In-band registration is on in this
local profile.  The admin API listens on 127.0.0.1:9190 with the token of
STANZAD_ADMIN_TOKEN, or a fresh one printed at start.

Supervision: a child that exits (killed, crashed) is started again after a backoff
(RESTART_BACKOFF_S, doubling) while the rest keeps running; one that keeps dying soon after
its start (MAX_QUICK_RESTARTS in a row, each within STABLE_AFTER_S) stops the cluster.

Stopping: SIGTERM or Ctrl-C stops the services at once (in parallel), then the servers,
each step bounded, stragglers killed; a second Ctrl-C kills at once.  On Linux every child
also dies with the supervisor (PR_SET_PDEATHSIG), so a ``kill -9`` of it leaves no process
holding the ports.  A port still held at start is reported with the pid and command line of
its holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from devtools import localservers
from shared.store.pg import roles

NATS_PORT = 14222
REDIS_PORT = 16379
PG_PORT = 15432
ADMIN_PORT = 9190
S2S_PORT = 5269
COMPONENT_PORT = 5347  # XEP-0114, on the s2s gateway
UPLOAD_PORT = 5281  # XEP-0363 PUT and GET
METRICS_PORT = 9101  # the first of Scale.services() consecutive ones (seven by default)
CM_PORT_STEP: Final = 10  # the i-th connection manager listens on the c2s port + 10·i
COLORS = {"nats": 36, "redis": 31, "postgres": 34, "cm": 32, "router": 35, "presence": 33,
          "roster": 34, "muc": 36, "pubsub": 35, "s2s": 37, "admin": 37, "upload": 33}
# Stop bounds (seconds): the services get SERVICES_STOP_S to stop cleanly (they need NATS
# and Redis for it, so those go after), the servers SERVERS_STOP_S; then SIGKILL, after
# which KILLED_WAIT_S only guards against a process stuck in the kernel.
SERVICES_STOP_S: Final = 3.0
SERVERS_STOP_S: Final = 1.0
CM_DRAIN_S: Final = "2"  # STANZAD_DRAIN_TIMEOUT_S of the local cm: closing streams fits above
KILLED_WAIT_S: Final = 2.0
RESTART_BACKOFF_S: Final = 0.5  # the first wait before a restart; doubled up to the cap
RESTART_BACKOFF_MAX_S: Final = 8.0
STABLE_AFTER_S: Final = 30.0  # a child that ran this long is healthy: its backoff resets
MAX_QUICK_RESTARTS: Final = 5
DATABASE: Final = "stanzad"
LOCAL_COMPONENTS: Final = "bot.localhost=secret"  # the local profile's example component
PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class Scale:
    """How many processes of each scalable role `stanzad run` starts."""

    connection_managers: int = 1
    routers: int = 1
    presence: int = 1
    roster: int = 1
    muc: int = 1
    pubsub: int = 1

    def services(self) -> int:
        """The processes with a metrics side port: these, one s2s gateway, one upload
        service, the admin API."""
        return (self.connection_managers + self.routers + self.presence + self.roster
                + self.muc + self.pubsub + 3)


@dataclass(frozen=True)
class External:
    """The servers `stanzad run` uses instead of starting its own (empty: its own)."""

    redis: str = ""
    nats: str = ""
    database: str = ""
    database_owner: str = ""  # only with ``database``

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> External:
        env = os.environ if env is None else env
        return cls(env.get("STANZAD_REDIS_URL", ""), env.get("STANZAD_NATS_URL", ""),
                   env.get("STANZAD_DATABASE_URL", ""),
                   env.get("STANZAD_DATABASE_OWNER_URL", ""))

    def servers(self) -> set[str]:
        """The names of the local servers not started (their children's names)."""
        return ({"redis"} if self.redis else set()) | ({"nats"} if self.nats else set()) | (
            {"postgres"} if self.database else set())

    def describe(self) -> list[str]:
        from shared.store.redis import redacted

        found = [("Redis", self.redis), ("NATS", self.nats), ("PostgreSQL", self.database)]
        return [f"using the {what} at {redacted(url)} (not starting one)"
                for what, url in found if url]


@dataclass(frozen=True)
class Ports:
    """The listeners of the local cluster; ``metrics`` 0 lets each service pick its own."""

    c2s: int = 5222
    c2s_tls: int = 0  # direct TLS (XEP-0368); 0: the c2s port + 1 (5223)
    http: int = 0  # WebSocket, BOSH, host-meta; 0: the c2s port + 58 (5280)
    s2s: int = S2S_PORT
    nats: int = NATS_PORT
    redis: int = REDIS_PORT
    postgres: int = PG_PORT
    admin: int = ADMIN_PORT
    metrics: int = METRICS_PORT
    component: int = COMPONENT_PORT
    upload: int = UPLOAD_PORT

    def metrics_port(self, index: int) -> int:
        return self.metrics + index if self.metrics else 0

    def c2s_of(self, index: int) -> int:
        """The c2s port of the ``index``-th connection manager (from 0)."""
        return self.c2s + CM_PORT_STEP * index

    def tls_of(self, index: int) -> int:
        """The direct TLS port of the ``index``-th connection manager."""
        return (self.c2s_tls or self.c2s + 1) + CM_PORT_STEP * index

    def http_of(self, index: int) -> int:
        """The HTTP port (WebSocket, BOSH, host-meta) of the ``index``-th connection manager."""
        return (self.http or self.c2s + 58) + CM_PORT_STEP * index

    def listeners(self, scale: Scale = Scale(),
                  external: External = External()) -> list[tuple[int, str]]:
        named = [(port, what) for port, what, name in (
            (self.nats, "NATS", "nats"), (self.redis, "Redis", "redis"),
            (self.postgres, "PostgreSQL", "postgres")) if name not in external.servers()]
        for i in range(scale.connection_managers):
            named += [(self.c2s_of(i), f"c2s of connection manager {i}"),
                      (self.tls_of(i), f"direct TLS c2s of connection manager {i}"),
                      (self.http_of(i), f"WebSocket/BOSH of connection manager {i}")]
        named += [(self.s2s, "s2s"), (self.component, "components (XEP-0114)"),
                  (self.upload, "HTTP upload (XEP-0363)"), (self.admin, "the admin API")]
        if self.metrics:
            named += [(self.metrics_port(i), "a metrics side port")
                      for i in range(scale.services())]
        return named


@dataclass
class Child:
    name: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # what the child gets when the supervisor dies: the servers stop cleanly on SIGTERM
    # (Redis syncs its AOF); a service's clean stop needs those servers, so it is killed
    death_signal: signal.Signals = signal.SIGKILL
    run_as: dict[str, int] = field(default_factory=dict)  # user/group (PostgreSQL as root)
    proc: asyncio.subprocess.Process | None = None
    port: int | None = None  # the listener that shows it is up

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


def _die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive ``sig`` when this process dies (Linux
    prctl(2) PR_SET_PDEATHSIG; kept across exec), None elsewhere.  If we died between fork
    and prctl the child's parent is already another process: it exits at once."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child
    parent = os.getpid()

    def preexec() -> None:
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            os._exit(127)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


async def _pipe(child: Child) -> None:
    assert child.proc is not None and child.proc.stdout is not None
    color = COLORS.get(child.name.split("-")[0], 37)
    tty = sys.stdout.isatty()
    prefix = f"\033[{color}m{child.name:>8}\033[0m | " if tty else f"{child.name:>8} | "
    async for line in child.proc.stdout:
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


async def _start(child: Child) -> asyncio.Task[None]:
    env = {**os.environ, **child.env, "PYTHONUNBUFFERED": "1"}
    child.proc = await asyncio.create_subprocess_exec(
        *child.cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
        preexec_fn=_die_with_parent(child.death_signal),  # runs after the user switch
        cwd="/" if child.run_as else None,  # the server's own user may not reach ours
        **child.run_as,
    )
    return asyncio.create_task(_pipe(child))


async def _wait_port(port: int, child: Child, timeout_s: float = 20,
                     stop: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline and not (stop is not None and stop.is_set()):
        if localservers.port_open("127.0.0.1", port):
            return
        if child.proc is not None and child.proc.returncode is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}")
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{child.name} is not listening on {port}")


# the partitioned roles `stanzad run` starts (shared/cluster/partitions.py): "up" waits
# until each holds every partition, so a first stanza never waits for a lease
PARTITIONED_ROLES: Final = ("route", "presence", "roster", "s2s", "muc", "pubsub", "upload")


async def _wait_partitions(redis_url: str, timeout_s: float = 60,
                           stop: asyncio.Event | None = None) -> None:
    """Until every partition of every partitioned role has a lease holder."""
    from shared.cluster.partitions import PartitionManager
    from shared.store.redis import connect as redis_connect

    partitions = int(os.environ.get("STANZAD_PARTITIONS", "64"))
    redis = redis_connect(redis_url)

    async def noop(*_: object) -> None:
        return None

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        for role in PARTITIONED_ROLES:
            probe = PartitionManager(redis, role, "probe", partitions, 1.0, noop, noop)
            while None in (await probe.owners()).values():
                if loop.time() > deadline:
                    raise TimeoutError(f"the {role} partitions are not all held")
                if stop is not None and stop.is_set():
                    return
                await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


async def stop_children(children: list[Child], grace_s: float, hurry: asyncio.Event) -> None:
    """SIGTERM to every running child at once; SIGKILL to those still running after
    ``grace_s`` or as soon as ``hurry`` is set."""
    running = [c for c in children if c.running]
    if not running:
        return
    for child in running:
        assert child.proc is not None
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)
    exited = asyncio.ensure_future(asyncio.gather(*(c.proc.wait() for c in running if c.proc)))
    hurried = asyncio.ensure_future(hurry.wait())
    await asyncio.wait([exited, hurried], timeout=grace_s, return_when=asyncio.FIRST_COMPLETED)
    hurried.cancel()
    for child in running:
        if child.running:
            assert child.proc is not None
            print(f"{child.name} did not stop in time: killed", file=sys.stderr, flush=True)
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(exited), KILLED_WAIT_S)


def _ports_in_use(ports: Ports, scale: Scale = Scale(),
                  external: External = External()) -> str | None:
    """The error for the first listener port already held, naming its holder."""
    for port, what in ports.listeners(scale, external):
        if localservers.port_open("127.0.0.1", port):
            return (f"port {port} for {what} is already in use by "
                    f"{localservers.describe_holders(port)}: a `stanzad run` left over, or "
                    "another program? Stop it, or pick other ports (`stanzad run --help`).")
    return None


def nats_auth(var: Path) -> localservers.NatsAuth:
    """The NATS identities of the local cluster under ``var``/nats (generated once), with
    TLS by the development CA under ``var``/ca."""
    return localservers.nats_auth(var / "nats", localservers.service_tls(var / "ca"))


def local_ca(var: Path) -> Path | None:
    """The development CA of the local cluster under ``var``, when that cluster has run
    here (the CLI trusts it for NATS when STANZAD_NATS_TLS_CA is not set)."""
    path = var / "ca" / localservers.CA_CERT
    return path if path.exists() else None


def local_nats_credentials(var: Path) -> tuple[str, str] | None:
    """(user, password) of the CLI's role in the local cluster under ``var``, when that
    cluster has run here; the CLI falls back to them."""
    path = var / "nats" / localservers.NATS_PASSWORDS
    try:
        password = json.loads(path.read_text())["cli"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return "cli", str(password)


def redis_auth(var: Path) -> localservers.RedisAuth:
    """The Redis ACL of the local cluster under ``var``/redis (its passwords generated
    once)."""
    return localservers.redis_auth(var / "redis")


def local_redis_url(var: Path, url: str) -> str:
    """``url`` with the credentials of the local cluster under ``var`` when it carries none,
    points at this machine and that cluster has run here; else ``url`` unchanged.  The CLI
    falls back to them (its own ACL user, `cli`), as it does for NATS."""
    parts = urlsplit(url)
    if parts.username or parts.password or parts.hostname not in ("127.0.0.1", "localhost"):
        return url
    try:
        password = json.loads((var / "redis" / localservers.REDIS_PASSWORDS).read_text())["cli"]
    except (OSError, ValueError, KeyError, TypeError):
        return url
    if not password:
        return url
    netloc = f"cli:{password}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def _children(
    var: Path, ports: Ports, admin_token: str, postgres: localservers.LocalPostgres,
    auth: localservers.NatsAuth, redis_acl: localservers.RedisAuth, scale: Scale = Scale(),
    external: External = External(),
) -> list[Child]:
    """The processes of the cluster in start order, each with the port that shows it is up
    (``Child.port``); each service runs as its own NATS identity (shared/bus/permissions.py)
    and logs in to Redis as its role's ACL user (shared/store/acl.py).  The first of each
    role keeps the plain name (``cm``, ``cm-local``); the i-th after it gets ``-i`` (``cm-1``,
    ``cm-local-1``)."""
    common = {
        # XEP-0114: every service routes the components' domains; the gateway checks secrets
        "STANZAD_COMPONENTS": os.environ.get("STANZAD_COMPONENTS", LOCAL_COMPONENTS),
        "STANZAD_NATS_URL": external.nats or f"nats://127.0.0.1:{ports.nats}",
        # run time as the application role, migrations at start as the owner role
        "STANZAD_DATABASE_URL": external.database or postgres.role_url(roles.APP_ROLE,
                                                                       DATABASE),
        "STANZAD_DATABASE_OWNER_URL": (external.database_owner if external.database
                                       else postgres.role_url(roles.OWNER_ROLE, DATABASE)),
        "STANZAD_DOMAIN": os.environ.get("STANZAD_DOMAIN", "localhost"),
    }
    tls = {"STANZAD_TLS_CERT": str(var / "tls" / "cert.pem"),
           "STANZAD_TLS_KEY": str(var / "tls" / "key.pem")}
    python = sys.executable
    metrics_index = 0

    def service(name: str, module: str, role: str, env: dict[str, str],
                port: int | None = None) -> Child:
        nonlocal metrics_index
        child = Child(name, [python, "-m", module],
                      {**common, "STANZAD_HTTP_PORT": str(ports.metrics_port(metrics_index)),
                       "STANZAD_REDIS_URL": external.redis or redis_acl.url_of(role, ports.redis),
                       **({} if external.nats else auth.env(role)), **env}, port=port)
        metrics_index += 1
        return child

    def suffix(i: int) -> str:
        return f"-{i}" if i else ""

    nats = Child("nats", localservers.nats_command(ports.nats, var / "nats", auth.config),
                 death_signal=signal.SIGTERM, port=ports.nats)
    redis = Child("redis", localservers.redis_command(ports.redis, var / "redis", aof=True,
                                                      config=redis_acl.config),
                  death_signal=signal.SIGTERM, port=ports.redis)
    # SIGINT is PostgreSQL's fast shutdown (its clients are gone by then, or dead with us)
    pg = Child("postgres", postgres.command(), death_signal=signal.SIGINT,
               run_as=postgres.run_as(), port=ports.postgres)
    cms = [service(f"cm{suffix(i)}", "services.connection_manager", "connection_manager", {
        "STANZAD_C2S_PORT": str(ports.c2s_of(i)), "STANZAD_CM_ID": f"cm-local{suffix(i)}",
        "STANZAD_C2S_TLS_PORT": str(ports.tls_of(i)),
        "STANZAD_C2S_HTTP_PORT": str(ports.http_of(i)),
        "STANZAD_ALLOW_REGISTRATION": os.environ.get("STANZAD_ALLOW_REGISTRATION", "true"),
        "STANZAD_DRAIN_TIMEOUT_S": os.environ.get("STANZAD_DRAIN_TIMEOUT_S", CM_DRAIN_S),
        **tls,
    }, ports.c2s_of(i)) for i in range(scale.connection_managers)]
    routers = [service(f"router{suffix(i)}", "services.router", "router",
                       {"STANZAD_ROUTER_ID": f"router-local{suffix(i)}"})
               for i in range(scale.routers)]
    presence = [service(f"presence{suffix(i)}", "services.presence", "presence",
                        {"STANZAD_PRESENCE_ID": f"presence-local{suffix(i)}"})
                for i in range(scale.presence)]
    roster = [service(f"roster{suffix(i)}", "services.roster", "roster",
                      {"STANZAD_ROSTER_ID": f"roster-local{suffix(i)}"})
              for i in range(scale.roster)]
    muc = [service(f"muc{suffix(i)}", "services.muc", "muc",
                   {"STANZAD_MUC_ID": f"muc-local{suffix(i)}"})
           for i in range(scale.muc)]
    pubsub = [service(f"pubsub{suffix(i)}", "services.pubsub", "pubsub",
                      {"STANZAD_PUBSUB_ID": f"pubsub-local{suffix(i)}"})
              for i in range(scale.pubsub)]
    s2s = service("s2s", "services.s2s_gateway", "s2s_gateway", {
        "STANZAD_S2S_ID": "s2s-local", "STANZAD_S2S_PORT": str(ports.s2s), **tls,
        "STANZAD_COMPONENT_PORT": str(ports.component),
    }, ports.s2s)
    upload = service("upload", "services.upload", "upload", {
        "STANZAD_UPLOAD_ID": "upload-local", "STANZAD_UPLOAD_HTTP_PORT": str(ports.upload),
        "STANZAD_UPLOAD_DIR": os.environ.get("STANZAD_UPLOAD_DIR", str(var / "upload")),
    }, ports.upload)
    admin = service("admin", "services.admin", "admin", {
        "STANZAD_ADMIN_HOST": "127.0.0.1", "STANZAD_ADMIN_PORT": str(ports.admin),
        "STANZAD_ADMIN_TOKEN": admin_token,
    }, ports.admin)
    servers = [c for c in (nats, redis, pg) if c.name not in external.servers()]
    return [*servers, *routers, *presence, *roster, *muc, *pubsub, *cms, s2s, upload, admin]


async def _supervise(child: Child, stop: asyncio.Event, pipes: list[asyncio.Task[None]],
                     gave_up: asyncio.Event) -> None:
    """Start ``child`` again whenever it exits until ``stop`` is set; the backoff doubles
    while it dies soon after each start, and ``gave_up`` is set after MAX_QUICK_RESTARTS
    such deaths in a row."""
    loop = asyncio.get_running_loop()
    backoff = RESTART_BACKOFF_S
    quick = 0
    started_at = loop.time()
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while True:
            assert child.proc is not None
            exited = asyncio.ensure_future(child.proc.wait())
            await asyncio.wait([exited, stopped], return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                exited.cancel()
                return
            if loop.time() - started_at >= STABLE_AFTER_S:
                backoff, quick = RESTART_BACKOFF_S, 0
            quick += 1
            if quick > MAX_QUICK_RESTARTS:
                print(f"{child.name} exited with {child.proc.returncode} {quick} times in a "
                      "row soon after its start: giving up, stopping the cluster",
                      file=sys.stderr, flush=True)
                gave_up.set()
                return
            print(f"{child.name} exited with {child.proc.returncode}; the rest of the cluster "
                  f"keeps running; restarting it in {backoff:g} s", file=sys.stderr, flush=True)
            await asyncio.wait([stopped], timeout=backoff)
            if stop.is_set():
                return
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
            started_at = loop.time()
            pipes.append(await _start(child))
            try:
                if child.port is not None:
                    await _wait_port(child.port, child, stop=stop)
            except (RuntimeError, TimeoutError) as exc:
                print(f"{child.name} did not come back: {exc}", file=sys.stderr, flush=True)
                continue  # its exit (or a kill below) is the next round
            if not stop.is_set():
                where = f", listening on {child.port}" if child.port is not None else ""
                print(f"{child.name} restarted (pid {child.proc.pid}{where})", flush=True)
    finally:
        stopped.cancel()


async def run_cluster(var: Path, ports: Ports | None = None, scale: Scale = Scale()) -> int:
    ports = ports or Ports(s2s=int(os.environ.get("STANZAD_S2S_PORT", S2S_PORT)))
    external = External.from_env()
    if (in_use := _ports_in_use(ports, scale, external)) is not None:
        print(in_use, file=sys.stderr)
        return 1
    redis_acl = redis_auth(var)  # makes var/redis
    auth = nats_auth(var)  # makes var/nats and var/ca
    admin_token = os.environ.get("STANZAD_ADMIN_TOKEN") or secrets.token_urlsafe(18)
    postgres = localservers.LocalPostgres(var / "postgres", ports.postgres)
    try:
        if not external.database:
            await asyncio.to_thread(postgres.init)  # initdb once, on the first run
    except Exception as exc:
        print(f"PostgreSQL could not be set up in {var / 'postgres'}: {exc}", file=sys.stderr)
        return 1
    for line in external.describe():
        print(line, flush=True)
    children = _children(var, ports, admin_token, postgres, auth, redis_acl, scale, external)
    started: list[Child] = []
    pipes: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    hurry = asyncio.Event()  # a second Ctrl-C while stopping: kill what is left now
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (hurry if stop.is_set() else stop).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    async def start_all() -> None:
        for child in children:
            pipes.append(await _start(child))
            started.append(child)
            if child.port is not None:
                await _wait_port(child.port, child)
            if child.name == "postgres":  # accepting, then our database
                await asyncio.to_thread(postgres.wait_ready)
                await asyncio.to_thread(postgres.ensure_database, DATABASE)
                await asyncio.to_thread(postgres.setup_roles, DATABASE)
        await _wait_partitions(external.redis or redis_acl.url(ports.redis), stop=stop)

    status = 0
    stopper = asyncio.create_task(stop.wait())
    try:
        starter = asyncio.create_task(start_all())
        await asyncio.wait([starter, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not starter.done():  # stopped while starting
            starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starter
            return status
        starter.result()  # a start failure raises here
        last = ports.metrics_port(scale.services() - 1)
        metrics = (f"metrics on :{ports.metrics}-{last}" if ports.metrics
                   else "metrics on ports of the services' choosing (see their logs)")
        c2s = ", ".join(f"127.0.0.1:{c.port} ({c.env['STANZAD_CM_ID']})"
                        for c in started if c.name.startswith("cm") and c.port is not None)
        ways = "; ".join(
            f"direct TLS on 127.0.0.1:{ports.tls_of(i)}, WebSocket on "
            f"ws://127.0.0.1:{ports.http_of(i)}/xmpp-websocket (BOSH /http-bind, host-meta "
            "/.well-known/host-meta)" for i in range(scale.connection_managers))
        print(f"stanzad is up: c2s on {c2s} (STARTTLS); {ways}; domain "
              f"{os.environ.get('STANZAD_DOMAIN', 'localhost')}; s2s on :{ports.s2s}; "
              f"components (XEP-0114) on 127.0.0.1:{ports.component} "
              f"({os.environ.get('STANZAD_COMPONENTS', LOCAL_COMPONENTS).split('=')[0]}...); "
              f"HTTP upload (XEP-0363) on http://127.0.0.1:{ports.upload}; "
              f"{metrics}.\nadmin API: http://127.0.0.1:{ports.admin}/api/v1/ with "
              f"'Authorization: Bearer {admin_token}'. Ctrl-C stops it.", flush=True)
        gave_up = asyncio.Event()
        supervisors = [asyncio.create_task(_supervise(c, stop, pipes, gave_up))
                       for c in started]
        given_up = asyncio.create_task(gave_up.wait())
        done, _ = await asyncio.wait([stopper, given_up], return_when=asyncio.FIRST_COMPLETED)
        given_up.cancel()
        if stopper not in done:
            status = 1
        stop.set()  # the supervisors return; from here a signal means hurry
        with contextlib.suppress(TimeoutError):  # bounded: a restart's port wait sees stop
            await asyncio.wait_for(asyncio.gather(*supervisors, return_exceptions=True),
                                   SERVICES_STOP_S)
    except (RuntimeError, TimeoutError, OSError, subprocess.CalledProcessError) as exc:
        print(f"start failed: {exc}", file=sys.stderr)
        status = 1
    finally:
        stopper.cancel()
        stop.set()  # from here a signal means hurry
        servers = {"nats", "redis", "postgres"}
        await stop_children([c for c in started if c.name not in servers], SERVICES_STOP_S,
                            hurry)
        await stop_children([c for c in started if c.name in servers], SERVERS_STOP_S, hurry)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*pipes, return_exceptions=True), 0.5)
        print("stanzad stopped", flush=True)
    return status
