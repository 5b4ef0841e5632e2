"""Versioned schema migrations, applied at start and by `stanzad db migrate`.

They run as the role that owns the tables (shared/store/pg/roles.py): a service migrates at
start with STANZAD_DATABASE_OWNER_URL when it is set (on a connection of its own, closed
after), else with STANZAD_DATABASE_URL (one role for everything).  A service whose run-time
role may not change the schema starts on an up-to-date database without trying (`migrate`
looks at the version first) and otherwise stays not ready, saying to migrate as the owner.

Each migration has an ``up`` and a ``down`` script; `migrate` applies the missing ones in
order, each in its own transaction, and records it in ``schema_migrations``.  Many processes
starting at once take the same session advisory lock first (`LOCK_KEY`), so exactly one
applies a migration and the others find it done: running it again is a no-op.  A database
at a version newer than this code knows is left alone (an older pod during a rolling update)
and reported by `status`.

Durable data only: what may be lost lives in Redis (shared/store/keys.py).  JIDs are stored
in their canonical string form (shared/xmpp/jid.py), bare unless said otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import asyncpg

from shared.store.pg.database import Database, DatabaseUnavailable

log = logging.getLogger(__name__)

LOCK_KEY: Final = 0x7374_616E_7A61  # "stanza": pg_advisory_lock's bigint key


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    up: str
    down: str


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "accounts",
        # RFC 5802 §3: a salt, an iteration count, StoredKey and ServerKey per hash; never a
        # password (shared/xmpp/credentials.py)
        """
        CREATE TABLE accounts (
            jid text PRIMARY KEY,
            domain text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            sha1_salt bytea NOT NULL,
            sha1_iterations integer NOT NULL,
            sha1_stored_key bytea NOT NULL,
            sha1_server_key bytea NOT NULL,
            sha256_salt bytea NOT NULL,
            sha256_iterations integer NOT NULL,
            sha256_stored_key bytea NOT NULL,
            sha256_server_key bytea NOT NULL
        );
        CREATE INDEX accounts_by_domain ON accounts (domain, jid);
        """,
        "DROP TABLE accounts;",
    ),
    Migration(
        2,
        "rosters",
        # RFC 6121 §2 items, §2.6 versions (a removed item leaves a tombstone so that a
        # client's old version gets the removals as pushes, §2.6.3), Appendix A states:
        # pending_in/pending_out are the pending subscription requests, approved a
        # pre-approval (§3.4), hidden an item that exists only for a pending inbound request
        """
        CREATE TABLE roster_versions (
            owner text PRIMARY KEY,
            version bigint NOT NULL
        );
        CREATE TABLE roster_items (
            owner text NOT NULL,
            contact text NOT NULL,
            name text,
            groups text[] NOT NULL DEFAULT '{}',
            subscription text NOT NULL,
            pending_out boolean NOT NULL DEFAULT false,
            pending_in boolean NOT NULL DEFAULT false,
            approved boolean NOT NULL DEFAULT false,
            hidden boolean NOT NULL DEFAULT false,
            version bigint NOT NULL,
            PRIMARY KEY (owner, contact)
        );
        CREATE TABLE roster_tombstones (
            owner text NOT NULL,
            contact text NOT NULL,
            version bigint NOT NULL,
            PRIMARY KEY (owner, contact)
        );
        """,
        "DROP TABLE roster_tombstones; DROP TABLE roster_items; DROP TABLE roster_versions;",
    ),
    Migration(
        3,
        "offline messages, vCards, private storage, block lists",
        # XEP-0160 offline messages (oldest first by id), XEP-0054 vCard-temp, XEP-0049
        # private XML storage (one element per namespace), XEP-0191 block lists
        """
        CREATE TABLE offline_messages (
            id bigserial PRIMARY KEY,
            owner text NOT NULL,
            stored_at timestamptz NOT NULL DEFAULT now(),
            stanza bytea NOT NULL
        );
        CREATE INDEX offline_messages_by_owner ON offline_messages (owner, id);
        CREATE TABLE vcards (
            owner text PRIMARY KEY,
            vcard bytea NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE private_storage (
            owner text NOT NULL,
            namespace text NOT NULL,
            element bytea NOT NULL,
            PRIMARY KEY (owner, namespace)
        );
        CREATE TABLE blocklist (
            owner text NOT NULL,
            jid text NOT NULL,
            PRIMARY KEY (owner, jid)
        );
        """,
        "DROP TABLE blocklist; DROP TABLE private_storage; DROP TABLE vcards; "
        "DROP TABLE offline_messages;",
    ),
    Migration(
        4,
        "what `stanzad db import-redis` moved",
        # one row per (kind, owner) imported from a Redis-only deployment's keys, written in
        # the transaction that imports them: a second run skips them (shared/store/pg/
        # import_redis.py), so offline messages delivered since are not stored again
        """
        CREATE TABLE redis_imports (
            kind text NOT NULL,
            owner text NOT NULL,
            imported_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (kind, owner)
        );
        """,
        "DROP TABLE redis_imports;",
    ),
    Migration(
        5,
        "message archive (XEP-0313) and its preferences (XEP-0441)",
        # one row per archived message and owner (the sender's and the recipient's rows
        # share the XEP-0359 id); partitioned by time (one partition a day, created ahead and
        # dropped past the retention by shared/store/archive.py `maintain`), the default
        # partition catching rows no daily partition covers yet; ids sort by time and
        # compare bytewise (COLLATE "C"), pages go by (owner, ts, id)
        """
        CREATE TABLE mam_messages (
            owner text NOT NULL,
            ts timestamptz NOT NULL,
            id text COLLATE "C" NOT NULL,
            peer text NOT NULL,
            peer_bare text NOT NULL,
            outgoing boolean NOT NULL,
            stanza bytea NOT NULL,
            PRIMARY KEY (owner, ts, id)
        ) PARTITION BY RANGE (ts);
        CREATE INDEX mam_messages_by_peer ON mam_messages (owner, peer_bare, ts, id);
        CREATE TABLE mam_messages_default PARTITION OF mam_messages DEFAULT;
        CREATE TABLE mam_prefs (
            owner text PRIMARY KEY,
            default_mode text NOT NULL,
            always text[] NOT NULL DEFAULT '{}',
            never text[] NOT NULL DEFAULT '{}'
        );
        """,
        "DROP TABLE mam_prefs; DROP TABLE mam_messages;",
    ),
    Migration(
        6,
        "multi-user chat rooms",
        # XEP-0045: a room's configuration (muc#roomconfig fields as JSON), subject, the
        # secret its occupant ids are derived from (XEP-0421) and whether it still awaits
        # its owner's configuration (§10.1.1 locked); affiliations (§5.2) with a reserved
        # nick and reason.  Temporary rooms are here too while they exist (so a room
        # survives its pod); live occupants and history are soft state in Redis.
        """
        CREATE TABLE muc_rooms (
            jid text PRIMARY KEY,
            config jsonb NOT NULL,
            subject text NOT NULL DEFAULT '',
            subject_from text NOT NULL DEFAULT '',
            secret bytea NOT NULL,
            locked boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE muc_affiliations (
            room text NOT NULL REFERENCES muc_rooms (jid) ON DELETE CASCADE,
            jid text NOT NULL,
            affiliation text NOT NULL,
            nick text NOT NULL DEFAULT '',
            reason text NOT NULL DEFAULT '',
            PRIMARY KEY (room, jid)
        );
        CREATE INDEX muc_affiliations_by_jid ON muc_affiliations (jid, affiliation);
        """,
        "DROP TABLE muc_affiliations; DROP TABLE muc_rooms;",
    ),
    Migration(
        7,
        "publish-subscribe nodes, items, affiliations, subscriptions",
        # XEP-0060 nodes of a pubsub service: ``service`` is the bare JID of a user's
        # personal eventing service (XEP-0163) or the domain of a generic service; the node
        # configuration (pubsub#node_config fields) as JSON; items ordered by ``seq`` (a
        # republished id moves to the end, §7.1.2); affiliations (§4.1) and one subscription
        # per node and JID (§4.2, no multiple subscriptions), with their options (§6.3).
        """
        CREATE TABLE pubsub_nodes (
            service text NOT NULL,
            node text NOT NULL,
            creator text NOT NULL,
            config jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (service, node)
        );
        CREATE SEQUENCE pubsub_item_seq;
        CREATE TABLE pubsub_items (
            service text NOT NULL,
            node text NOT NULL,
            item_id text NOT NULL,
            seq bigint NOT NULL DEFAULT nextval('pubsub_item_seq'),
            publisher text NOT NULL,
            payload bytea NOT NULL,
            published_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (service, node, item_id),
            FOREIGN KEY (service, node) REFERENCES pubsub_nodes ON DELETE CASCADE
        );
        CREATE INDEX pubsub_items_by_seq ON pubsub_items (service, node, seq);
        CREATE TABLE pubsub_affiliations (
            service text NOT NULL,
            node text NOT NULL,
            jid text NOT NULL,
            affiliation text NOT NULL,
            PRIMARY KEY (service, node, jid),
            FOREIGN KEY (service, node) REFERENCES pubsub_nodes ON DELETE CASCADE
        );
        CREATE TABLE pubsub_subscriptions (
            service text NOT NULL,
            node text NOT NULL,
            jid text NOT NULL,
            subid text NOT NULL,
            state text NOT NULL,
            options jsonb NOT NULL DEFAULT '{}',
            PRIMARY KEY (service, node, jid),
            FOREIGN KEY (service, node) REFERENCES pubsub_nodes ON DELETE CASCADE
        );
        CREATE INDEX pubsub_subscriptions_by_jid ON pubsub_subscriptions (jid);
        """,
        "DROP TABLE pubsub_subscriptions; DROP TABLE pubsub_affiliations; "
        "DROP TABLE pubsub_items; DROP SEQUENCE pubsub_item_seq; DROP TABLE pubsub_nodes;",
    ),
    Migration(
        8,
        "push registrations, last activity",
        # XEP-0357 §5: one row per (app server JID, node) an account enabled, with the
        # resource that enabled it (notifications for its detached session), the
        # publish-options form to send along (serialised, our include-body field taken out)
        # and whether the user allowed the message body in notifications.  XEP-0012 §4: when
        # the account's last available resource went unavailable, and its status then.
        """
        CREATE TABLE push_registrations (
            owner text NOT NULL,
            service text NOT NULL,
            node text NOT NULL,
            resource text NOT NULL DEFAULT '',
            options bytea,
            include_body boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (owner, service, node)
        );
        CREATE TABLE last_activity (
            owner text PRIMARY KEY,
            seen_at timestamptz NOT NULL,
            status text NOT NULL DEFAULT ''
        );
        """,
        "DROP TABLE last_activity; DROP TABLE push_registrations;",
    ),
    Migration(
        9,
        "upload files",
        # XEP-0363: one row per slot handed out (services/upload): its owner (quota per
        # account), the file's name, declared size and type, until when its PUT URL is valid,
        # when the file expires (then it is deleted), and whether the bytes arrived.
        """
        CREATE TABLE upload_files (
            id text PRIMARY KEY,
            owner text NOT NULL,
            filename text NOT NULL,
            size bigint NOT NULL,
            content_type text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            put_expires_at timestamptz NOT NULL,
            expires_at timestamptz NOT NULL,
            uploaded boolean NOT NULL DEFAULT false
        );
        CREATE INDEX upload_files_by_owner ON upload_files (owner);
        CREATE INDEX upload_files_by_expiry ON upload_files (expires_at);
        """,
        "DROP TABLE upload_files;",
    ),
    Migration(
        10,
        "virtual hosts",
        # the account domains added at run time (admin API, CLI), each with its settings
        # (shared/store/domains.py); the main domain and a domains file are configuration
        """
        CREATE TABLE domains (
            name text PRIMARY KEY,
            settings jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        """,
        "DROP TABLE domains;",
    ),
    Migration(
        11,
        "fast tokens",
        # XEP-0484 FAST: per (account, client: the SASL2 user-agent id) two slots, "current"
        # and "new" (§8.1); a token's random id and its SHA-256, never the token itself
        # (shared/xmpp/fast.py derives it from the id under the cluster's secret)
        """
        CREATE TABLE fast_tokens (
            owner text NOT NULL,
            client_id text NOT NULL,
            slot text NOT NULL CHECK (slot IN ('current', 'new')),
            mechanism text NOT NULL,
            token_id bytea NOT NULL,
            token_hash bytea NOT NULL,
            user_agent text NOT NULL DEFAULT '',
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            PRIMARY KEY (owner, client_id, slot)
        );
        CREATE INDEX fast_tokens_by_expiry ON fast_tokens (expires_at);
        """,
        "DROP TABLE fast_tokens;",
    ),
)

LATEST: Final = MIGRATIONS[-1].version

_BOOKKEEPING: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """The database is at a version this code cannot move from."""


async def current(db: Database) -> int:
    """The schema version of the database (0: none applied yet)."""
    async with db.connection("migrate") as conn:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not exists:
            return 0
        return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


async def migrate(db: Database, target: int = LATEST) -> list[int]:
    """Apply the migrations up to ``target`` that are missing; the versions applied (empty:
    already there).  Safe to run from many processes at once."""
    return await _move(db, target, up=True)


async def downgrade(db: Database, target: int) -> list[int]:
    """Undo the migrations above ``target``, newest first; the versions undone.  For tests
    and for an operator rolling a release back (`stanzad db downgrade`)."""
    return await _move(db, target, up=False)


async def _move(db: Database, target: int, *, up: bool) -> list[int]:
    if not 0 <= target <= LATEST:
        raise MigrationError(f"no migration {target} (this code knows 0..{LATEST})")
    if up and (have := await current(db)) >= target:
        # nothing to do, and nothing tried that needs the owner's rights: a service running
        # as the application role (shared/store/pg/roles.py) starts on a migrated database
        if have > LATEST:
            log.warning("database schema %d is newer than this code's %d: left alone",
                        have, LATEST)
        return []
    try:
        return await _apply(db, target, up=up)
    except DatabaseUnavailable as exc:  # what Database makes of a refused statement
        if not isinstance(exc.__cause__, asyncpg.InsufficientPrivilegeError):
            raise
        raise MigrationError(
            f"this role may not change the schema ({exc}): the database is at version "
            f"{await current(db)}, this code needs {target}; migrate as the owner role "
            "(STANZAD_DATABASE_OWNER_URL, or `stanzad db migrate` with it)") from None


async def _apply(db: Database, target: int, *, up: bool) -> list[int]:
    done: list[int] = []
    async with db.connection("migrate") as conn:
        # the lock is the session's and waits without a statement timeout: another pod may
        # be migrating for longer than one statement may take
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY, timeout=None)
        try:
            await conn.execute(_BOOKKEEPING)
            have = {int(r["version"]) for r in
                    await conn.fetch("SELECT version FROM schema_migrations")}
            newest = max(have, default=0)
            if newest > LATEST:
                if up:
                    log.warning("database schema %d is newer than this code's %d: left alone",
                                newest, LATEST)
                    return done
                raise MigrationError(f"database schema {newest} is newer than {LATEST}")
            steps = ([m for m in MIGRATIONS if m.version <= target and m.version not in have]
                     if up else
                     [m for m in reversed(MIGRATIONS) if m.version > target and m.version in have])
            for m in steps:
                async with conn.transaction():
                    if up:
                        await conn.execute(m.up, timeout=None)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                            m.version, m.name)
                    else:
                        await conn.execute(m.down, timeout=None)
                        await conn.execute("DELETE FROM schema_migrations WHERE version = $1",
                                           m.version)
                log.info("migration %d (%s) %s", m.version, m.name, "applied" if up else "undone")
                done.append(m.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    return done
