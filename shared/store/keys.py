"""Every Redis key of the cluster is built here and nowhere else.

Keys of one bare JID share the hash tag ``{bare}`` so that a Lua script may touch all of them
under Redis Cluster.  Cross-tag keys (the per-connection-manager index) are only ever updated
by separate commands, never inside one script.  Every Lua script and ``MULTI`` transaction
names keys of one hash tag (tests/shared/store/test_redis_cluster.py runs them on a Redis
Cluster); a key without a tag (a partition's lease, the set of connection managers) is only
ever used alone.
"""

from __future__ import annotations

from typing import Final

CMS: Final = "cms"  # set of every connection manager id that has registered


def account(bare_jid: str) -> str:
    """Hash of the account's salted SCRAM keys (shared/xmpp/credentials.py)."""
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


def sm_facts(bare_jid: str, sm_id: str) -> str:
    """XEP-0198 resumption facts of one resumable session (`shared.store.sm_facts`)."""
    return f"sm:{{{bare_jid}}}:{sm_id}"


def cm_sessions(cm_id: str) -> str:
    """Set of the full JIDs bound on one connection manager."""
    return f"cm:{{{cm_id}}}:sessions"


def cm_addresses(cm_id: str) -> str:
    """Hash full JID -> client address ("ip:port") of the sessions of one connection manager
    (the address behind a PROXY protocol header when there is one)."""
    return f"cm:{{{cm_id}}}:addresses"


def cm_alive(cm_id: str) -> str:
    """Heartbeat of a connection manager; expires when it dies."""
    return f"cm:{{{cm_id}}}:alive"


def cm_drain(cm_id: str) -> str:
    """Lease of the connection manager draining a dead one's deliveries (durable delivery):
    the drainer's id, with a TTL it renews."""
    return f"cm:{{{cm_id}}}:drain"


def cm_load(cm_id: str) -> str:
    """The load a connection manager publishes with its heartbeat (shared/cluster/
    placement.py); expires with it."""
    return f"cm:{{{cm_id}}}:load"


def members(role: str) -> str:
    """Sorted set of the live processes of a partitioned role: id -> expiry (ms since epoch)."""
    return f"members:{role}"


def partition_lease(role: str, partition: int) -> str:
    """Which process of a role (router, presence, roster) consumes a partition."""
    return f"lease:{role}:{partition}"


def handover(role: str, partition: int) -> str:
    """Set by a member that is handing a partition over: the previous owner's id."""
    return f"handover:{role}:{partition}"


def reaper_lock() -> str:
    """Held by the one presence process that cleans up after dead connection managers (its
    reaper, services/presence/service.py), for one round."""
    return "lock:reaper"


def roster(bare_jid: str) -> str:
    """Hash contact bare JID -> roster item (JSON, shared/store/roster.py)."""
    return f"roster:{{{bare_jid}}}"


def roster_version(bare_jid: str) -> str:
    """Counter bumped on every roster change (RFC 6121 §2.6 roster versioning)."""
    return f"rosterver:{{{bare_jid}}}"


def roster_tombstones(bare_jid: str) -> str:
    """Hash contact -> roster version at which the item was removed (for §2.6.3 diffs)."""
    return f"rostertomb:{{{bare_jid}}}"


def presence(bare_jid: str) -> str:
    """Hash resource -> last available presence stanza of that resource (answers probes)."""
    return f"pres:{{{bare_jid}}}"


def directed_presence(full_jid: str) -> str:
    """Set of the JIDs a resource sent directed presence to (RFC 6121 §4.6)."""
    return f"dirpres:{{{full_jid.partition('/')[0]}}}:{full_jid.partition('/')[2]}"


def offline(bare_jid: str) -> str:
    """List of stored messages for an account with no available resource (XEP-0160)."""
    return f"offline:{{{bare_jid}}}"


def vcard(bare_jid: str) -> str:
    """The account's vCard-temp element (XEP-0054), serialised."""
    return f"vcard:{{{bare_jid}}}"


def private_storage(bare_jid: str) -> str:
    """Hash namespace -> stored element (XEP-0049 private XML storage)."""
    return f"private:{{{bare_jid}}}"


def blocklist(bare_jid: str) -> str:
    """Set of the JIDs (bare, full or domain) the account blocks (XEP-0191)."""
    return f"block:{{{bare_jid}}}"
def auth_failures_source(source: str) -> str:
    """Failed SASL attempts from one source address in the current minute (XEP-0205)."""
    return f"authfail:{{src:{source}}}"


def auth_block_source(source: str) -> str:
    """Set while a source address is blocked for failing too fast; expires by itself."""
    return f"authlock:{{src:{source}}}"


def auth_failures_account(bare_jid: str) -> str:
    """Failed SASL attempts against one account, from anywhere (XEP-0205)."""
    return f"authfail:acct:{{{bare_jid}}}"


def auth_lock_account(bare_jid: str) -> str:
    """Set while attempts against the account wait out a delay; expires by itself."""
    return f"authlock:acct:{{{bare_jid}}}"


def auth_failures_pair(bare_jid: str, source: str) -> str:
    """Failed SASL attempts against one account from one source address."""
    return f"authfail:pair:{{{bare_jid}}}:{source}"


def auth_lock_pair(bare_jid: str, source: str) -> str:
    """Set while attempts against the account from that address wait out a delay."""
    return f"authlock:pair:{{{bare_jid}}}:{source}"


def fast_token_secret() -> str:
    """The key the cluster derives FAST tokens under (XEP-0484, shared/xmpp/fast.py) when
    none is configured; losing it ends every token (clients log in with their password)."""
    return "c2s:fast-secret"


def dialback_secret() -> str:
    """The cluster's Server Dialback secret (XEP-0185), shared by every s2s gateway process
    so that any of them can answer a <db:verify/> for a key another one sent."""
    return "s2s:dialback-secret"


def muc_occupants(room: str) -> str:
    """Hash nick -> occupant (JSON: real JID, connection manager, role, presence) of a room of
    the multi-user chat service (XEP-0045): soft state, rebuilt when occupants rejoin."""
    return f"muc:{{{room}}}:occ"


def muc_history(room: str) -> str:
    """List of a room's last groupchat messages (JSON: time, stanza), for discussion history
    on join (XEP-0045 §7.2.14); capped."""
    return f"muc:{{{room}}}:hist"


def caps_features(ver: str) -> str:
    """The disco#info features of an XEP-0115 ``ver`` (one a line), verified and resolved
    once for the whole cluster by the pubsub service (services/pubsub/caps.py).  The three
    caps keys of one ``ver`` share its hash tag: the pubsub service changes them together in
    one transaction."""
    return f"caps:{{{ver}}}"


def caps_pending(ver: str) -> str:
    """Set while one pubsub process asks a resource for the features of ``ver``."""
    return f"caps:pending:{{{ver}}}"


def caps_waiting(ver: str) -> str:
    """Set of the full JIDs whose last published items wait for ``ver`` to be resolved."""
    return f"caps:waiting:{{{ver}}}"


def pep_resources(bare_jid: str) -> str:
    """Hash resource -> XEP-0115 ver ("" without caps) of the account's available resources,
    as the pubsub service last saw them (a changed ver sends the last published items)."""
    return f"pepres:{{{bare_jid}}}"


def pep_remote(bare_jid: str) -> str:
    """Hash remote full JID -> XEP-0115 ver of the available resources of the account's
    remote contacts, from the presence they send it (bounded, with a time to live): whom
    its personal eventing service notifies on other servers (XEP-0163 §4.3)."""
    return f"pepremote:{{{bare_jid}}}"


def registrations_source(source: str) -> str:
    """In-band registrations (XEP-0077) from one source address in the current hour."""
    return f"reg:{{src:{source}}}"


def component_holder(domain: str) -> str:
    """The claim (gateway member id and connection id) of the stream that serves an external
    component's domain (XEP-0114), with a TTL refreshed while it lasts; a new stream for the
    domain reads the previous claim as it writes its own."""
    return f"component:{{{domain}}}"


def upload_secret() -> str:
    """The HMAC key of the HTTP upload service's signed URLs when none is configured."""
    return "upload:secret"


def avatar_hash(bare_jid: str) -> str:
    """The account's avatar hash for the presence it sends (XEP-0398 §4; "" no avatar),
    written by the pubsub and roster services on each conversion."""
    return f"avatar:{{{bare_jid}}}"
