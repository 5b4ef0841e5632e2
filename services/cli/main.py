"""The `stanzad` command: run the local cluster and manage accounts and sessions.

    stanzad run [--connection-managers N] [--routers M] [--presence N] [--roster N] [--muc N]
                [--pubsub N]
    stanzad user add alice@localhost [--password PW]     (prompts when --password is absent)
    stanzad user passwd alice@localhost [--password PW]
    stanzad user delete alice@localhost                  (also kicks its open sessions)
    stanzad user list
    stanzad user import FILE                             (JSON; `-` reads stdin)
    stanzad roster import FILE                           (JSON; pushes to online sessions)
    stanzad sessions [list]
    stanzad sessions kick alice@localhost/phone
    stanzad status
    stanzad db migrate [--to N]                          (idempotent; services migrate at start)
    stanzad db status
    stanzad db downgrade N                               (undo the migrations above N)
    stanzad db import-redis --redis-url URL              (a Redis-only deployment's data)

It talks to the PostgreSQL of `STANZAD_DATABASE_URL`, the Redis of `STANZAD_REDIS_URL` and,
to kick sessions, to the NATS of `STANZAD_NATS_URL` (defaults: the local cluster's) as
`STANZAD_NATS_USER`/`STANZAD_NATS_PASSWORD`, else as the `cli` identity the local cluster
generated under var/nats/ (shared/bus/permissions.py).  The
admin API (services/admin) offers the same operations over HTTP; both are built on
shared/cluster/admin.py.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import redis.exceptions

from shared.bus.client import Bus, BusUnavailable
from shared.cluster.admin import (
    AdminError,
    ClusterAdmin,
    count_results,
    import_entries,
    roster_entries,
)
from shared.runtime.settings import AdminSettings, load_or_exit
from shared.store.accounts import AccountExists
from shared.store.domains import DomainError
from shared.store.pg import import_redis, migrations
from shared.store.pg.database import Database, DatabaseUnavailable
from shared.store.pg.database import connect as db_connect
from shared.store.redis import connect as redis_connect
from shared.store.redis import redacted
from shared.tls.context import client_context

from .devcluster import (
    ADMIN_PORT,
    COMPONENT_PORT,
    METRICS_PORT,
    NATS_PORT,
    PG_PORT,
    REDIS_PORT,
    S2S_PORT,
    UPLOAD_PORT,
    Ports,
    Scale,
    local_ca,
    local_nats_credentials,
    local_redis_url,
    run_cluster,
)

SERVICE = "cli"
LOCAL_VAR = "var"  # `stanzad run`'s default data folder
NATS_CONNECT_TIMEOUT_S = 5.0


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("the passwords differ")
    return first


def _nats_identity(settings: AdminSettings) -> tuple[str, str]:
    """The NATS user and password of the CLI: the settings', else the local cluster's."""
    if settings.nats_user or "@" in settings.nats_url:
        return settings.nats_user, settings.nats_password.get_secret_value()
    return local_nats_credentials(Path(LOCAL_VAR)) or ("", "")


def _redis_url(settings: AdminSettings) -> str:
    """The settings' Redis URL, with the local cluster's credentials when it has none."""
    return local_redis_url(Path(LOCAL_VAR), settings.redis_url)


async def _connect_bus(settings: AdminSettings) -> Bus | None:
    url = settings.nats_url
    user, password = _nats_identity(settings)
    options = settings.nats_options()
    if options["tls"] is None and (ca := local_ca(Path(LOCAL_VAR))) is not None:
        options["tls"] = client_context(str(ca))  # the local cluster's NATS requires TLS
    options.update(user=user, password=password)
    bus = Bus(url, SERVICE, **options)
    try:
        await asyncio.wait_for(bus.connect(), NATS_CONNECT_TIMEOUT_S)
    except TimeoutError:
        print(f"NATS at {url} is not reachable", file=sys.stderr)
        return None
    return bus


async def _with_admin(args: argparse.Namespace, settings: AdminSettings, need_bus: bool) -> int:
    redis = redis_connect(_redis_url(settings))
    try:
        db = await db_connect(settings.database_url, SERVICE, size=2,
                              timeout_s=settings.db_timeout_s)
    except DatabaseUnavailable as exc:
        await redis.aclose()
        print(str(exc), file=sys.stderr)
        return 1
    bus = await _connect_bus(settings) if need_bus else None
    iterations = getattr(args, "iterations", None) or settings.scram_iterations
    admin = ClusterAdmin(redis, db, settings.domain, settings.partitions, SERVICE, bus,
                         iterations, settings.scram_min_iterations, settings.domains_file)
    try:
        return await _COMMANDS[(args.command, args.action)](admin, args)
    except (AdminError, DomainError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except BusUnavailable as exc:
        print(f"NATS unavailable: {exc}", file=sys.stderr)
        return 1
    finally:
        if bus is not None:
            await bus.close()
        await redis.aclose()
        await db.close()


async def _user_add(admin: ClusterAdmin, args: argparse.Namespace) -> int:
    try:
        jid = await admin.create_user(args.jid, _password(args))
    except AccountExists:
        print(f"{args.jid} already exists", file=sys.stderr)
        return 1
    print(f"created {jid}")
    return 0


async def _user_passwd(admin: ClusterAdmin, args: argparse.Namespace) -> int:
    if not await admin.set_password(args.jid, _password(args)):
        print(f"{args.jid} does not exist", file=sys.stderr)
        return 1
    print(f"changed the password of {args.jid}")
    return 0


async def _user_delete(admin: ClusterAdmin, args: argparse.Namespace) -> int:
    deleted, kicked = await admin.delete_user(args.jid)
    for full in kicked:
        print(f"kicked {full}")
    if not deleted:
        print(f"{args.jid} does not exist", file=sys.stderr)
        return 1
    print(f"deleted {args.jid}")
    return 0


async def _tokens_list(admin: ClusterAdmin, args: argparse.Namespace) -> int:
    tokens = await admin.tokens(args.jid)
    for t in tokens:
        print(f"{t.client_id}\t{t.slot}\t{t.mechanism}\texpires {t.expires_at}\t{t.user_agent}")
    if not tokens:
        print(f"{args.jid} has no FAST tokens")
    return 0


async def _tokens_revoke(admin: ClusterAdmin, args: argparse.Namespace) -> int:
    revoked = await admin.revoke_tokens(args.jid, args.client)
    print(f"revoked {revoked} FAST token(s) of {args.jid}")
    return 0


async def _user_list(admin: ClusterAdmin, args: argparse.Namespace) -> int:
    for jid in await admin.list_users(args.domain):
        print(jid)
    return 0


def _read_import(path: str, entries: Callable[[object], list[object]] = import_entries
                 ) -> list[object]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminError(f"cannot read {path}: {exc}") from None
    try:
        return entries(json.loads(text))
    except json.JSONDecodeError as exc:
        raise AdminError(f"{path} is not JSON: {exc}") from None


async def _user_import(admin: ClusterAdmin, args: argparse.Namespace) -> int:
    """Every entry not created is named on stderr; exit status 1 when there is one."""
    results = await admin.import_accounts(_read_import(args.file))
    for r in results:
        if r.result != "created":
            print(f"{r.jid or '(no jid)'}: {r.result}" + (f": {r.reason}" if r.reason else ""),
                  file=sys.stderr)
    counts = count_results(results)
    print(f"created {counts['created']}, already existed {counts['exists']}, "
          f"invalid {counts['invalid']} (of {len(results)})")
    return 0 if counts["created"] == len(results) else 1


async def _roster_import(admin: ClusterAdmin, args: argparse.Namespace) -> int:
    """Every invalid roster is named on stderr with its reason; exit status 1 when any."""
    results = await admin.import_rosters(_read_import(args.file, roster_entries))
    bad = [r for r in results if r.result != "imported"]
    for r in bad:
        print(f"{r.jid or '(no jid)'}: {r.result}: {r.reason}", file=sys.stderr)
    print(f"imported {len(results) - len(bad)} roster(s) with "
          f"{sum(r.items for r in results)} item(s), {sum(r.pushed for r in results)} "
          f"push(es) to online sessions; invalid {len(bad)} (of {len(results)})")
    return 1 if bad else 0


async def _sessions_list(admin: ClusterAdmin, _: argparse.Namespace) -> int:
    status = await admin.status()
    if not status.connection_managers:
        print("no connection managers")
    by_cm: dict[str, list[str]] = {}
    for s in await admin.sessions():
        avail = "available" if s.available else "not available"
        where = f", from {s.address}" if s.address else ""
        by_cm.setdefault(s.cm_id, []).append(
            f"  {s.jid}  (priority {s.priority}, {avail}{where})"
        )
    for cm in status.connection_managers:
        lines = by_cm.get(cm.id, [])
        print(f"{cm.id} ({'alive' if cm.alive else 'DEAD'}): {len(lines)} session(s)")
        for line in lines:
            print(line)
    return 0


async def _sessions_kick(admin: ClusterAdmin, args: argparse.Namespace) -> int:
    info = await admin.kick(args.jid)
    if info is None:
        print(f"{args.jid} has no session", file=sys.stderr)
        return 1
    note = "" if info.cm_alive else " (its connection manager is dead: the reaper removes it)"
    print(f"kicked {info.jid} on {info.cm_id}{note}")
    return 0


async def _status(admin: ClusterAdmin, _: argparse.Namespace) -> int:
    st = await admin.status()
    names = {"route": "routers", "presence": "presence", "roster": "roster", "muc": "muc",
             "pubsub": "pubsub"}
    for role, members in st.roles.items():
        live = [m for m in members if m]
        print(f"{names.get(role, role)}: {', '.join(live) or 'none'}")
        for member in live:
            print(f"  {member}: {members[member]} partition(s)")
        if members.get(""):
            print(f"  (unowned): {members['']} partition(s)")
    listed = ", ".join(
        f"{c.id} ({'alive' if c.alive else 'DEAD'}{f', c2s {c.c2s}' if c.c2s else ''}, "
        f"{c.sessions} session(s))"
        for c in st.connection_managers
    )
    print(f"connection managers: {listed or 'none'}")
    print(f"sessions: {st.sessions}")
    return 0


async def _db(args: argparse.Namespace, settings: AdminSettings) -> int:
    """`stanzad db ...`: the schema migrations (shared/store/pg/migrations.py), as the role
    that owns the tables when STANZAD_DATABASE_OWNER_URL is set (shared/store/pg/roles.py)."""
    db = await db_connect(settings.database_owner_url or settings.database_url, SERVICE, size=1,
                          timeout_s=settings.db_timeout_s, migrate=False)
    try:
        if args.action == "migrate":
            applied = await migrations.migrate(db, args.to)
            print(f"applied {', '.join(map(str, applied))}" if applied else "nothing to apply")
        elif args.action == "downgrade":
            undone = await migrations.downgrade(db, args.version)
            print(f"undid {', '.join(map(str, undone))}" if undone else "nothing to undo")
        elif args.action == "import-redis":
            return await _import_redis(db, args.redis_url)
        version = await migrations.current(db)
        print(f"schema version {version} (this release knows up to {migrations.LATEST})")
        return 0
    except migrations.MigrationError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    finally:
        await db.close()


async def _import_redis(db: Database, redis_url: str) -> int:
    """`stanzad db import-redis`: a Redis-only deployment's durable data into PostgreSQL
    (shared/store/pg/import_redis.py); migrates first, idempotent."""
    await migrations.migrate(db)
    r = redis_connect(redis_url)
    try:
        imported, skipped = await import_redis.import_redis(r, db)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        print(f"cannot reach Redis at {redacted(redis_url)} ({exc})", file=sys.stderr)
        return 1
    except import_redis.BadKey as exc:
        print(f"stopped at a key not in the old format: {exc}; what came before is "
              "imported, a second run goes on after it once it is fixed", file=sys.stderr)
        return 1
    finally:
        await r.aclose()
    for kind in import_redis.KINDS:
        print(f"{kind}: {imported[kind]} imported, {skipped[kind]} already imported before")
    return 0


async def _domain_list(admin: ClusterAdmin, _: argparse.Namespace) -> int:
    for d in await admin.list_domains():
        print(f"{d['name']}\t{d['source']}\t{d['backend']}\t{d['users']} users\t"
              f"{json.dumps(d['settings'])}")
    return 0


def _settings_arg(text: str | None) -> object:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise AdminError(f"--settings is not JSON: {exc}") from None


async def _domain_add(admin: ClusterAdmin, args: argparse.Namespace) -> int:
    host = await admin.add_domain(args.name, _settings_arg(args.settings))
    print(f"serving {host.name} (every service within STANZAD_DOMAINS_RELOAD_S, at once "
          "when NATS is reachable)")
    return 0


async def _domain_set(admin: ClusterAdmin, args: argparse.Namespace) -> int:
    if await admin.update_domain(args.name, _settings_arg(args.settings)) is None:
        print(f"no such domain added at run time: {args.name}", file=sys.stderr)
        return 1
    return 0


async def _domain_remove(admin: ClusterAdmin, args: argparse.Namespace) -> int:
    if not await admin.remove_domain(args.name):
        print(f"no such domain added at run time: {args.name}", file=sys.stderr)
        return 1
    print(f"no longer serving {args.name} (its accounts are kept)")
    return 0


_COMMANDS = {
    ("domain", "list"): _domain_list,
    ("domain", "add"): _domain_add,
    ("domain", "set"): _domain_set,
    ("domain", "remove"): _domain_remove,
    ("user", "add"): _user_add,
    ("user", "passwd"): _user_passwd,
    ("user", "delete"): _user_delete,
    ("user", "list"): _user_list,
    ("tokens", "list"): _tokens_list,
    ("tokens", "revoke"): _tokens_revoke,
    ("user", "import"): _user_import,
    ("roster", "import"): _roster_import,
    ("sessions", "list"): _sessions_list,
    ("sessions", "kick"): _sessions_kick,
    ("status", None): _status,
}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stanzad", description="Manage a stanzad cluster.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole cluster locally in the foreground")
    run.add_argument("--var", default=LOCAL_VAR, help=f"data folder (default: {LOCAL_VAR})")
    run.add_argument("--c2s-port", type=int, default=5222)
    run.add_argument("--c2s-tls-port", type=int, default=0,
                     help="direct TLS (XEP-0368); default: the c2s port + 1 (5223)")
    run.add_argument("--http-port", type=int, default=0,
                     help="WebSocket, BOSH and host-meta; default: the c2s port + 58 (5280)")
    run.add_argument("--s2s-port", type=int, default=None,
                     help="default: STANZAD_S2S_PORT, else 5269")
    run.add_argument("--nats-port", type=int, default=NATS_PORT)
    run.add_argument("--redis-port", type=int, default=REDIS_PORT)
    run.add_argument("--postgres-port", type=int, default=PG_PORT)
    run.add_argument("--admin-port", type=int, default=ADMIN_PORT)
    run.add_argument("--component-port", type=int, default=COMPONENT_PORT,
                     help="external components (XEP-0114), on the s2s gateway")
    run.add_argument("--upload-port", type=int, default=UPLOAD_PORT,
                     help="HTTP file upload (XEP-0363) PUT and GET")
    run.add_argument("--metrics-port", type=int, default=METRICS_PORT,
                     help="the first of consecutive side ports, one per service (seven with "
                          "one of each); 0: each picks a free one")
    for flag, what in (("connection-managers", "connection managers; the i-th (from 0) "
                        "listens on the c2s port + 10*i"), ("routers", "routers"),
                       ("presence", "presence members"), ("roster", "roster members"),
                       ("muc", "multi-user chat members"), ("pubsub", "pubsub members")):
        run.add_argument(f"--{flag}", type=_positive, default=1, metavar="N",
                         help=f"how many {what} (default: 1)")
    user = sub.add_parser("user", help="manage accounts")
    actions = user.add_subparsers(dest="action", required=True)
    for name, help_ in (("add", "create an account"), ("passwd", "change a password")):
        p = actions.add_parser(name, help=help_)
        p.add_argument("jid")
        p.add_argument("--password", help="non-interactive; else prompted (or read from stdin)")
        p.add_argument("--iterations", type=int, default=10_000, help="SCRAM iterations")
    p = actions.add_parser("delete", help="delete an account and kick its sessions")
    p.add_argument("jid")
    p = actions.add_parser("list", help="list the accounts of a domain")
    p.add_argument("--domain", default=None, help="default: STANZAD_DOMAIN")
    p = actions.add_parser("import", help="create accounts from a JSON file (docs/operations.md)")
    p.add_argument("file", help='{"accounts": [{"jid", "password" or "scram"}, ...]}; - for stdin')
    p.add_argument("--iterations", type=int, default=None,
                   help="SCRAM iterations for entries given a password "
                        "(default: STANZAD_SCRAM_ITERATIONS)")
    tokens = sub.add_parser("tokens", help="FAST login tokens (XEP-0484)")
    token_actions = tokens.add_subparsers(dest="action", required=True)
    p = token_actions.add_parser("list", help="an account's tokens: client, slot, expiry")
    p.add_argument("jid")
    p = token_actions.add_parser("revoke", help="revoke an account's tokens (its clients then "
                                 "log in with the password)")
    p.add_argument("jid")
    p.add_argument("--client", default=None, help="only this client's (its user-agent id)")
    roster = sub.add_parser("roster", help="rosters")
    roster_actions = roster.add_subparsers(dest="action", required=True)
    p = roster_actions.add_parser(
        "import", help="store rosters from a JSON file, replacing items already there, and "
        "push them to online sessions (docs/operations.md, \"Importing rosters\")")
    p.add_argument("file", help='{"rosters": [{"jid", "items": [...]}, ...]}; - for stdin')
    sessions = sub.add_parser("sessions", help="who is online; kick a session")
    session_actions = sessions.add_subparsers(dest="action")
    session_actions.add_parser("list", help="who is online, on which connection manager")
    p = session_actions.add_parser("kick", help="close a session with <policy-violation/>")
    p.add_argument("jid", help="full JID, e.g. alice@localhost/phone")
    status = sub.add_parser("status", help="routers, partitions and connection managers")
    status.set_defaults(action=None)
    domain = sub.add_parser("domain", help="virtual hosts: the account domains served")
    domain_actions = domain.add_subparsers(dest="action", required=True)
    domain_actions.add_parser("list", help="every domain, its settings and its user count")
    for name, help_ in (("add", "serve one more domain"),
                        ("set", "replace the settings of a domain added at run time")):
        p = domain_actions.add_parser(name, help=help_)
        p.add_argument("name", help="the domain, e.g. chat.example.org")
        p.add_argument("--settings", required=name == "set",
                       help='JSON, e.g. \'{"allow_registration": true, "auth": {"backend": '
                            '"http", "url": "https://id.example/xmpp-auth"}}\'')
    p = domain_actions.add_parser("remove", help="stop serving a domain (accounts are kept)")
    p.add_argument("name")
    db = sub.add_parser("db", help="the PostgreSQL schema (STANZAD_DATABASE_URL)")
    db_actions = db.add_subparsers(dest="action", required=True)
    p = db_actions.add_parser("migrate", help="apply the missing migrations (idempotent)")
    p.add_argument("--to", type=int, default=migrations.LATEST,
                   help=f"target version (default: the latest, {migrations.LATEST})")
    db_actions.add_parser("status", help="the schema version of the database")
    p = db_actions.add_parser("downgrade", help="undo the migrations above VERSION")
    p.add_argument("version", type=int)
    p = db_actions.add_parser(
        "import-redis", help="move accounts, rosters, offline messages, vCards, private data "
        "and block lists from a Redis-only deployment's keys (idempotent; Redis is only read)")
    p.add_argument("--redis-url", required=True, help="the old deployment's Redis, e.g. "
                   "redis://127.0.0.1:6379/0")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        s2s = args.s2s_port or int(os.environ.get("STANZAD_S2S_PORT", S2S_PORT))
        ports = Ports(c2s=args.c2s_port, c2s_tls=args.c2s_tls_port, http=args.http_port,
                      s2s=s2s, nats=args.nats_port, redis=args.redis_port,
                      postgres=args.postgres_port, admin=args.admin_port,
                      metrics=args.metrics_port, component=args.component_port,
                      upload=args.upload_port)
        scale = Scale(connection_managers=args.connection_managers, routers=args.routers,
                      presence=args.presence, roster=args.roster, muc=args.muc,
                      pubsub=args.pubsub)
        return asyncio.run(run_cluster(Path(args.var), ports, scale))
    if args.command == "sessions" and args.action is None:
        args.action = "list"  # plain `stanzad sessions`
    settings = load_or_exit(AdminSettings)
    if args.command == "db":
        try:
            return asyncio.run(_db(args, settings))
        except DatabaseUnavailable as exc:
            print(str(exc), file=sys.stderr)
            return 1
    # kicking; telling the routers at once about deleted or imported accounts; roster pushes
    need_bus = (args.command, args.action) in (
        ("sessions", "kick"), ("user", "delete"), ("user", "import"), ("roster", "import"),
        ("domain", "add"), ("domain", "set"), ("domain", "remove"))
    try:
        return asyncio.run(_with_admin(args, settings, need_bus))
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        print(
            f"cannot reach Redis at {redacted(settings.redis_url)} ({exc}): is the cluster running "
            "(`make run`), or is STANZAD_REDIS_URL right?",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
