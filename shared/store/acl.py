"""Which Redis keys and commands each service role may use: one ACL user per role.

Pure data, like shared/bus/permissions.py for NATS, built from the key names of
shared/store/keys.py (a key function called with ``*`` gives its pattern; ``{`` and ``}`` are
plain characters in Redis's patterns).  devtools renders it as ``user`` lines of a
redis-server configuration for the local and test clusters; `arguments` gives the same rules
as redis-server command-line arguments for docker-compose and Kubernetes
(docs/operations.md, "Redis ACL users").

What each role touches:

- the session directory (``SESSIONS``: each bare JID's sessions and their version, each
  connection manager's index, heartbeat and load, the set of connection managers) is written by
  the connection managers, read by the router and the roster service, and cleaned up by the
  presence service's reaper after a dead connection manager;
- a partitioned role (router, presence, roster, s2s gateway, muc, pubsub) keeps its own membership,
  leases and hand-over marks (shared/cluster/partitions.py), named after its partition role;
- the connection manager alone keeps XEP-0198 resumption facts and the drain leases of dead
  connection managers' deliveries, the login throttle's and
  in-band registration's counters, and removes an account's soft state when the account is
  removed in band; the presence service alone the last presence of each resource, directed
  presence and the reaper's lock; the s2s gateway alone the dialback secret; the muc service
  its rooms' occupants and history; the pubsub service the XEP-0115 caps it resolves, and
  it reads sessions and presence; the pubsub and roster services the account's avatar
  hash (XEP-0398), which the presence service reads;
- the admin API and the CLI (``admin``, ``cli``) act as the operator: every key (`stanzad
  status` reads them all, `stanzad db import-redis` reads the keys of older releases).

Commands: reading and writing data, Lua scripts, MULTI/EXEC, the connection's own commands,
and never a ``@dangerous`` one (FLUSHALL, KEYS, CONFIG, DEBUG, CLIENT, ACL, ...) but
``CLUSTER SLOTS``: a Redis Cluster client learns from it which node serves which hash slot
(it comes after ``-@dangerous``, which would take it away again).  No role
uses Redis pub/sub: no channel is allowed.
"""

from __future__ import annotations

from typing import Final

from shared.store import keys

ANY: Final = "*"

COMMANDS: Final = ("-@all", "+@read", "+@write", "+@scripting", "+@transaction",
                   "+@connection", "+select", "-@dangerous", "+cluster|slots")


def _partitioned(role: str) -> tuple[str, ...]:
    """The keys of a partitioned role's membership, leases and hand-overs."""
    return (keys.members(role), keys.partition_lease(role, 0).rpartition(":")[0] + ":*",
            keys.handover(role, 0).rpartition(":")[0] + ":*")


SESSIONS: Final = (keys.sessions(ANY), keys.sessions_version(ANY), keys.cm_sessions(ANY),
                   keys.cm_addresses(ANY), keys.cm_alive(ANY), keys.cm_load(ANY), keys.CMS)
LOGIN_THROTTLE: Final = ("authfail:*", "authlock:*")  # keys.auth_failures_*, auth_lock_*
# XEP-0198 facts, and the lease on draining a dead connection manager's deliveries
RESUMPTION: Final = (keys.sm_facts(ANY, ANY), keys.cm_drain(ANY))
PRESENCE: Final = (keys.presence(ANY), keys.directed_presence(f"{ANY}/{ANY}"),
                   keys.reaper_lock())

# an account removed in band (XEP-0077 §3.2) loses its soft state and the keys of the older
# Redis-only layout where the connection manager that took the request runs
# (SessionStore.forget_account)
REMOVED_ACCOUNT: Final = (keys.presence(ANY), keys.directed_presence(f"{ANY}/{ANY}"),
                          keys.account(ANY), keys.roster(ANY), keys.roster_version(ANY),
                          keys.roster_tombstones(ANY), keys.offline(ANY), keys.vcard(ANY),
                          keys.private_storage(ANY), keys.blocklist(ANY), keys.avatar_hash(ANY))
REGISTRATIONS: Final = (keys.registrations_source(ANY),)  # XEP-0077 per-address rate
CAPS: Final = (keys.caps_features(ANY), keys.caps_pending(ANY), keys.caps_waiting(ANY),
               keys.pep_resources(ANY), keys.pep_remote(ANY))

CONNECTION_MANAGER: Final = (SESSIONS + RESUMPTION + LOGIN_THROTTLE + REGISTRATIONS
                             + REMOVED_ACCOUNT + (keys.fast_token_secret(),))
ROUTER: Final = SESSIONS + _partitioned("route")

ROLES: Final[dict[str, tuple[str, ...]]] = {
    "connection_manager": CONNECTION_MANAGER,
    # a connection manager with STANZAD_EMBEDDED_ROUTER: one Redis client for both
    "connection_manager_router": tuple(dict.fromkeys(CONNECTION_MANAGER + ROUTER)),
    "router": ROUTER,
    # the avatar hash its presence carries (XEP-0398 §4), read
    "presence": SESSIONS + PRESENCE + (keys.avatar_hash(ANY),) + _partitioned("presence"),
    # XEP-0012: whether the account is online (its presence), read; the avatar hash of a
    # vCard (XEP-0398)
    "roster": (*SESSIONS, keys.presence(ANY), keys.avatar_hash(ANY), *_partitioned("roster")),
    # the dialback secret; the claims of the external components' streams (XEP-0114)
    "s2s_gateway": (keys.dialback_secret(), keys.component_holder(ANY), *_partitioned("s2s")),
    # rooms' live occupants and history (their configuration is in PostgreSQL)
    "muc": (keys.muc_occupants(ANY), keys.muc_history(ANY), *_partitioned("muc")),
    # PEP recipients: sessions and presence (read), XEP-0115 caps resolved for the cluster,
    # the avatar hash of a PEP avatar (XEP-0398)
    "pubsub": (*SESSIONS, keys.presence(ANY), *CAPS, keys.avatar_hash(ANY),
               *_partitioned("pubsub")),
    # the HMAC key of its signed URLs when none is configured (XEP-0363)
    "upload": (keys.upload_secret(), *_partitioned("upload")),
    "admin": (ANY,),
    "cli": (ANY,),
}


def rules(role: str) -> list[str]:
    """The ACL rules of ``role``'s user after ``on`` and its password: its key patterns, no
    channel, its commands."""
    return [f"~{pattern}" for pattern in ROLES[role]] + ["resetchannels", *COMMANDS]


def user_line(role: str, password: str) -> str:
    """The redis-server configuration line of ``role``'s user (``user NAME on >PASSWORD
    ...``; the password must not hold a space)."""
    if not password or any(c.isspace() for c in password):
        raise ValueError(f"a Redis password of {role} without white space is needed")
    return " ".join(["user", role, "on", f">{password}", *rules(role)])


def arguments(passwords: dict[str, str]) -> list[str]:
    """redis-server command-line arguments that define one user per role of ``passwords``
    (role -> password, or a reference such as ``$(REDIS_PASSWORD_ROUTER)`` that the
    platform expands) and turn the ``default`` user off."""
    args = ["--user", "default", "off"]
    for role, password in passwords.items():
        args += ["--user", role, "reset", "on", f">{password}", *rules(role)]
    return args
