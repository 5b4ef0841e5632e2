"""Every Redis key of the cluster is built here and nowhere else.

Keys of one bare JID share the hash tag ``{bare}`` so that a Lua script may touch all of them
under Redis Cluster.  Cross-tag keys (the per-connection-manager index) are only ever updated
by separate commands, never inside one script.
"""

from __future__ import annotations

from typing import Final

CMS: Final = "cms"  # set of every connection manager id that has registered
ROUTERS: Final = "routers"  # sorted set: router id -> lease expiry (ms since epoch)


def account(bare_jid: str) -> str:
    """Hash of the account's salted SCRAM keys (shared/credentials.py)."""
    return f"acct:{{{bare_jid}}}"


def accounts(domain: str) -> str:
    """Set of the localparts of a domain's accounts."""
    return f"accts:{domain}"


def sessions(bare_jid: str) -> str:
    """Hash resource -> session record (shared/store/sessions.py) of a bare JID."""
    return f"sess:{{{bare_jid}}}"


def sessions_version(bare_jid: str) -> str:
    """Counter bumped on every change of the bare JID's session hash."""
    return f"sessver:{{{bare_jid}}}"


def cm_sessions(cm_id: str) -> str:
    """Set of the full JIDs bound on one connection manager."""
    return f"cm:{{{cm_id}}}:sessions"


def cm_alive(cm_id: str) -> str:
    """Heartbeat of a connection manager; expires when it dies."""
    return f"cm:{{{cm_id}}}:alive"


def partition_lease(partition: int) -> str:
    """Which router consumes a routing partition."""
    return f"lease:route:{partition}"


def reaper_lock() -> str:
    """Held by the one router that cleans up after dead connection managers."""
    return "lock:reaper"


def auth_failures_source(source: str) -> str:
    """Counter of failed SASL attempts from one source address (XEP-0205), with a TTL."""
    return f"authfail:src:{source}"


def auth_failures_account(bare_jid: str) -> str:
    """Counter of failed SASL attempts against one account (XEP-0205), with a TTL."""
    return f"authfail:acct:{{{bare_jid}}}"
