"""`stanzad run`: the whole cluster on one machine, in the foreground, Ctrl-C to stop.

Starts nats-server, redis-server (AOF on) and PostgreSQL (database `stanzad`, its log in
var/postgres.log), data under var/, then one router, presence, roster, connection manager,
s2s gateway and the admin API, each as its own process with prefixed log lines.  In-band
registration is on in this local profile.  The admin API listens on 127.0.0.1:9190 with the
token of STANZAD_ADMIN_TOKEN, or a fresh one printed at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from devtools import localservers

NATS_PORT = 14222
REDIS_PORT = 16379
PG_PORT = 15432
ADMIN_PORT = 9190
S2S_PORT = 5269
COLORS = {"nats": 36, "redis": 31, "cm": 32, "router": 35, "presence": 33, "roster": 34,
          "s2s": 37, "admin": 37}


@dataclass
class Child:
    name: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None


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
    )
    return asyncio.create_task(_pipe(child))


async def _wait_port(port: int, child: Child, timeout_s: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if localservers.port_open("127.0.0.1", port):
            return
        if child.proc is not None and child.proc.returncode is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}")
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{child.name} is not listening on {port}")


async def run_cluster(var: Path, c2s_port: int = 5222) -> int:
    s2s_port = int(os.environ.get("STANZAD_S2S_PORT", S2S_PORT))
    for port, what in ((NATS_PORT, "NATS"), (REDIS_PORT, "Redis"), (c2s_port, "c2s"),
                       (s2s_port, "s2s"), (ADMIN_PORT, "the admin API")):
        if localservers.port_open("127.0.0.1", port):
            print(f"port {port} for {what} is already in use: is another `make run` going?",
                  file=sys.stderr)
            return 1
    if localservers.port_open("127.0.0.1", PG_PORT):
        print(f"port {PG_PORT} for PostgreSQL is already in use: is another `make run` going?",
              file=sys.stderr)
        return 1
    postgres = localservers.LocalPostgres(var / "postgres", PG_PORT)
    try:
        await asyncio.to_thread(postgres.start, var / "postgres.log")
        database_url = await asyncio.to_thread(postgres.ensure_database, "stanzad")
    except Exception as exc:
        print(f"PostgreSQL did not start (see {var / 'postgres.log'}): {exc}", file=sys.stderr)
        await asyncio.to_thread(postgres.stop)
        return 1
    try:
        return await _run_children(var, c2s_port, s2s_port, database_url)
    finally:
        await asyncio.to_thread(postgres.stop)


async def _run_children(var: Path, c2s_port: int, s2s_port: int, database_url: str) -> int:
    (var / "redis").mkdir(parents=True, exist_ok=True)
    (var / "nats").mkdir(parents=True, exist_ok=True)
    common = {
        "STANZAD_NATS_URL": f"nats://127.0.0.1:{NATS_PORT}",
        "STANZAD_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
        "STANZAD_DATABASE_URL": database_url,
        "STANZAD_DOMAIN": os.environ.get("STANZAD_DOMAIN", "localhost"),
    }
    python = sys.executable
    nats = Child("nats", localservers.nats_command(NATS_PORT, var / "nats"))
    redis = Child("redis", localservers.redis_command(REDIS_PORT, var / "redis", aof=True))
    cm = Child(
        "cm",
        [python, "-m", "services.connection_manager"],
        {
            **common,
            "STANZAD_C2S_PORT": str(c2s_port),
            "STANZAD_HTTP_PORT": "9101",
            "STANZAD_ALLOW_REGISTRATION": os.environ.get("STANZAD_ALLOW_REGISTRATION", "true"),
            "STANZAD_TLS_CERT": str(var / "tls" / "cert.pem"),
            "STANZAD_TLS_KEY": str(var / "tls" / "key.pem"),
            "STANZAD_CM_ID": "cm-local",
        },
    )
    router = Child("router", [python, "-m", "services.router"],
                   {**common, "STANZAD_HTTP_PORT": "9102", "STANZAD_ROUTER_ID": "router-local"})
    presence = Child(
        "presence", [python, "-m", "services.presence"],
        {**common, "STANZAD_HTTP_PORT": "9103", "STANZAD_PRESENCE_ID": "presence-local"},
    )
    roster = Child("roster", [python, "-m", "services.roster"],
                   {**common, "STANZAD_HTTP_PORT": "9104", "STANZAD_ROSTER_ID": "roster-local"})
    s2s = Child(
        "s2s", [python, "-m", "services.s2s_gateway"],
        {**common, "STANZAD_HTTP_PORT": "9105", "STANZAD_S2S_ID": "s2s-local",
         "STANZAD_S2S_PORT": str(s2s_port),
         "STANZAD_TLS_CERT": str(var / "tls" / "cert.pem"),
         "STANZAD_TLS_KEY": str(var / "tls" / "key.pem")},
    )
    admin_token = os.environ.get("STANZAD_ADMIN_TOKEN") or secrets.token_urlsafe(18)
    admin = Child("admin", [python, "-m", "services.admin"], {
        **common, "STANZAD_HTTP_PORT": "9106", "STANZAD_ADMIN_HOST": "127.0.0.1",
        "STANZAD_ADMIN_PORT": str(ADMIN_PORT), "STANZAD_ADMIN_TOKEN": admin_token,
    })
    started: list[Child] = []
    pipes: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    status = 0
    try:
        for child, port in ((nats, NATS_PORT), (redis, REDIS_PORT), (router, None),
                            (presence, None), (roster, None), (cm, c2s_port),
                            (s2s, s2s_port), (admin, ADMIN_PORT)):
            pipes.append(await _start(child))
            started.append(child)
            if port is not None:
                await _wait_port(port, child)
        print(f"stanzad is up: c2s on 127.0.0.1:{c2s_port} (STARTTLS), domain "
              f"{common['STANZAD_DOMAIN']}; s2s on :{s2s_port}; metrics on :9101-9106.\n"
              f"admin API: http://127.0.0.1:{ADMIN_PORT}/api/v1/ with "
              f"'Authorization: Bearer {admin_token}'. Ctrl-C stops it.", flush=True)
        waiters = [asyncio.create_task(c.proc.wait()) for c in started if c.proc]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*waiters, stopper], return_when=asyncio.FIRST_COMPLETED)
        if stopper not in done:
            print("a process exited; stopping the cluster", file=sys.stderr)
            status = 1
        stopper.cancel()
    except (RuntimeError, TimeoutError) as exc:
        print(f"start failed: {exc}", file=sys.stderr)
        status = 1
    finally:
        for child in reversed(started):  # services first, then Redis and NATS
            if child.proc is not None and child.proc.returncode is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(child.proc.wait(), 15)
                except TimeoutError:
                    child.proc.kill()
                    await child.proc.wait()
        for pipe in pipes:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pipe, 2)
        print("stanzad stopped", flush=True)
    return status
