"""Every NATS subject of the cluster is built here and nowhere else.

Partitioning (RFC 6120 §10.1 ordering): a stanza for a local user is published to
``route.<p>`` where ``p = partition(bare JID of the recipient)``.  Each partition is consumed
by exactly one router at a time (see shared/cluster/partitions.py), so all stanzas for one
recipient, from any sender, pass through one ordered consumer.
"""

from __future__ import annotations

import zlib
from typing import Final

from shared.xmpp.jid import jid_to_token, token_to_jid

PREFIX: Final = "stanzad"


def partition(bare_jid: str, partitions: int) -> int:
    """The routing partition of a bare JID (stable across processes and restarts)."""
    return zlib.crc32(bare_jid.encode()) % partitions


def route(p: int) -> str:
    """Stanzas whose recipient is a local account in partition ``p`` (router input)."""
    return f"{PREFIX}.route.{p}"


def route_for(bare_jid: str, partitions: int) -> str:
    """``route(partition(bare_jid))``: where a stanza for that local account goes."""
    return route(partition(bare_jid, partitions))


def connection_manager(cm_id: str) -> str:
    """Deliveries and control messages for the sessions held by one connection manager."""
    return f"{PREFIX}.cm.{cm_id}"


def sm_log(cm_id: str, full_jid: str, sm_id: str) -> str:
    """The XEP-0198 log kept by connection manager ``cm_id`` of the resumable session
    ``sm_id`` of a full JID (durable delivery, shared/bus/streams.py): what it queued for
    the session, in order, with each stanza's count.  The connection manager's id comes
    first so that the logs a dead one left are found by one subject filter
    (``sm_logs_of``), and the session's id last so that its resumption facts are found
    from the subject alone (`sm_log_parts`)."""
    return f"{PREFIX}.smlog.{cm_id}.{jid_to_token(full_jid)}.{sm_id}"


def sm_logs_of(cm_id: str) -> str:
    """The wildcard of every session log kept by ``cm_id``."""
    return f"{PREFIX}.smlog.{cm_id}.*.*"


def sm_log_marker(cm_id: str) -> str:
    """The subject a connection manager that keeps session logs writes a mark to (again
    before the log stream's ``max_age`` drops it): the connection managers that may have
    left logs are the subjects of ``SM_LOG_MARKERS``, read in one request.  Its last token
    never names a session (a full JID's token has a ``_``: its ``@`` and ``/`` escaped)."""
    return f"{PREFIX}.smlog.{cm_id}.logs"


SM_LOG_MARKERS: Final = f"{PREFIX}.smlog.*.logs"


def sm_log_parts(subject: str) -> tuple[str, str, str] | None:
    """(cm_id, full JID, sm_id) of a ``sm_log`` subject; None for any other subject."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != PREFIX or parts[1] != "smlog":
        return None
    try:
        return parts[2], token_to_jid(parts[3]), parts[4]
    except ValueError:
        return None


def session_events(p: int) -> str:
    """Session table changes (bind, unbind, presence) for bare JIDs of partition ``p``."""
    return f"{PREFIX}.sess.{p}"


def presence(p: int) -> str:
    """Presence of the users of partition ``p`` (presence service input, RFC 6121 §4)."""
    return f"{PREFIX}.presence.{p}"


def roster(p: int) -> str:
    """Roster requests and subscription presence of the users of partition ``p`` (RFC 6121 §2,
    §3), consumed by the roster service."""
    return f"{PREFIX}.roster.{p}"


def s2s(p: int) -> str:
    """Stanzas for remote domains, ``p = partition(remote domain)``: consumed by the s2s
    gateway that owns the partition, so one process holds a remote domain's connection and
    the order per sender → recipient is kept (RFC 6120 §10.1)."""
    return f"{PREFIX}.s2s.{p}"


def muc(p: int) -> str:
    """Stanzas for the rooms of partition ``p`` of the multi-user chat service (XEP-0045),
    ``p = partition(room bare JID)``: one owner per room orders its traffic."""
    return f"{PREFIX}.muc.{p}"


def pubsub(p: int) -> str:
    """Stanzas for the publish-subscribe service (XEP-0060) and the personal eventing
    service of user accounts (XEP-0163), ``p = partition(bare JID of the service)``."""
    return f"{PREFIX}.pubsub.{p}"


def upload(p: int) -> str:
    """Slot requests to the HTTP upload service (XEP-0363), ``p = partition(bare JID of the
    service)``: the upload domain's one partition."""
    return f"{PREFIX}.upload.{p}"


def component(domain: str) -> str:
    """Stanzas for an external component (XEP-0114), keyed by its domain, not partitioned:
    the one gateway process holding the component's stream subscribes to it, so one consumer
    orders everything sent to the component (RFC 6120 §10.1)."""
    return f"{PREFIX}.component.{jid_to_token(domain)}"


def domains() -> str:
    """Notices that the cluster's virtual hosts changed (shared/cluster/vhosts.py): every
    service reloads them; the payload is empty (the database says what changed)."""
    return f"{PREFIX}.domains"


def every(subject: str) -> str:
    """The wildcard matching every subject of the family of ``subject`` (its last token, the
    partition or id, as ``*``): ``every(route(0)) == "stanzad.route.*"``."""
    head, _, _ = subject.rpartition(".")
    return f"{head}.*"
