"""The `stanzad` command: run the local cluster and manage accounts and sessions.

    stanzad run
    stanzad user add alice@localhost [--password PW]     (prompts when --password is absent)
    stanzad user passwd alice@localhost [--password PW]
    stanzad user delete alice@localhost
    stanzad user list [--domain localhost]
    stanzad sessions
    stanzad status

It talks to the Redis of `STANZAD_REDIS_URL` (default: the local cluster's).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from pathlib import Path

from shared.credentials import derive_credentials
from shared.jid import JID, JIDError
from shared.settings import AdminSettings, load_or_exit
from shared.store.accounts import AccountExists, AccountStore
from shared.store.redis import connect as redis_connect
from shared.store.sessions import SessionStore

SERVICE = "cli"
ROLES = ("route", "presence", "roster")


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("the passwords differ")
    return first


def _bare(text: str) -> JID:
    try:
        jid = JID.parse(text)
    except JIDError as exc:
        raise SystemExit(f"not a JID: {exc}") from None
    if jid.local is None or jid.resource is not None:
        raise SystemExit(f"{text}: give a bare JID like alice@localhost")
    return jid


async def _user(args: argparse.Namespace, settings: AdminSettings) -> int:
    redis = redis_connect(settings.redis_url)
    accounts = AccountStore(redis, SERVICE)
    try:
        if args.action == "list":
            for jid in await accounts.list(args.domain or settings.domain):
                print(jid)
            return 0
        jid = _bare(args.jid)
        if args.action in ("add", "passwd"):
            try:
                creds = derive_credentials(_password(args), args.iterations)
            except ValueError as exc:
                raise SystemExit(f"unusable password: {exc}") from None
            if args.action == "add":
                try:
                    await accounts.create(jid.bare_str, creds)
                except AccountExists:
                    print(f"{jid} already exists", file=sys.stderr)
                    return 1
                print(f"created {jid}")
            else:
                if not await accounts.set_credentials(jid.bare_str, creds):
                    print(f"{jid} does not exist", file=sys.stderr)
                    return 1
                print(f"changed the password of {jid}")
            return 0
        if args.action == "delete":
            if not await accounts.delete(jid.bare_str):
                print(f"{jid} does not exist", file=sys.stderr)
                return 1
            print(f"deleted {jid}")
            return 0
    finally:
        await redis.aclose()
    return 2


async def _sessions(settings: AdminSettings) -> int:
    redis = redis_connect(settings.redis_url)
    store = SessionStore(redis, SERVICE)
    try:
        cms = await store.connection_managers()
        if not cms:
            print("no connection managers")
        for cm_id, alive in cms.items():
            fulls = await store.cm_sessions(cm_id)
            print(f"{cm_id} ({'alive' if alive else 'DEAD'}): {len(fulls)} session(s)")
            for full in fulls:
                bare = full.partition("/")[0]
                record = (await store.get(bare)).get(full.partition("/")[2])
                if record is None:
                    state = "stale"
                else:
                    avail = "available" if record.available else "not available"
                    state = f"priority {record.priority}, {avail}"
                print(f"  {full}  ({state})")
    finally:
        await redis.aclose()
    return 0


async def _status(settings: AdminSettings) -> int:
    from shared.partitions import PartitionManager

    redis = redis_connect(settings.redis_url)
    try:
        async def noop(_: int) -> None:
            return None

        for role in ROLES:
            pm = PartitionManager(redis, role, "status", settings.partitions, 1.0, noop, noop)
            members = await pm.live_members()
            owners = await pm.owners()
            print(f"{role}: {', '.join(members) or 'none'}")
            counts: dict[str, int] = {}
            for owner in owners.values():
                counts[owner or "(unowned)"] = counts.get(owner or "(unowned)", 0) + 1
            for owner, n in sorted(counts.items()):
                print(f"  {owner}: {n} partition(s)")
        cms = await SessionStore(redis, SERVICE).connection_managers()
        listed = ", ".join(f"{c} ({'alive' if a else 'DEAD'})" for c, a in cms.items())
        print(f"connection managers: {listed or 'none'}")
    finally:
        await redis.aclose()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stanzad", description="Manage a stanzad cluster.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole cluster locally in the foreground")
    run.add_argument("--var", default="var", help="data folder (default: var)")
    run.add_argument("--c2s-port", type=int, default=5222)
    user = sub.add_parser("user", help="manage accounts")
    actions = user.add_subparsers(dest="action", required=True)
    for name, help_ in (("add", "create an account"), ("passwd", "change a password")):
        p = actions.add_parser(name, help=help_)
        p.add_argument("jid")
        p.add_argument("--password", help="non-interactive; else prompted (or read from stdin)")
        p.add_argument("--iterations", type=int, default=10_000, help="SCRAM iterations")
    p = actions.add_parser("delete", help="delete an account")
    p.add_argument("jid")
    p = actions.add_parser("list", help="list the accounts of a domain")
    p.add_argument("--domain", default=None)
    sub.add_parser("sessions", help="who is online, on which connection manager")
    sub.add_parser("status", help="routers, partitions and connection managers")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from .devcluster import run_cluster

        return asyncio.run(run_cluster(Path(args.var), args.c2s_port))
    settings = load_or_exit(AdminSettings)
    if args.command == "user":
        return asyncio.run(_user(args, settings))
    if args.command == "sessions":
        return asyncio.run(_sessions(settings))
    if args.command == "status":
        return asyncio.run(_status(settings))
    return 2


if __name__ == "__main__":
    sys.exit(main())
