"""Who may publish and subscribe to what on NATS: one identity per service role.

Pure data, read from the code of each role (the subjects come from shared/bus/subjects.py);
devtools renders it as the ``authorization`` block of a nats-server configuration and
docs/operations.md ("NATS authentication") says how production gets the same.

What each role does on the bus:

- every partitioned service (router, presence, roster, s2s gateway, pubsub) publishes a hand-over
  FENCE on the subjects it subscribes to (shared/cluster/partitioned.py), so it may publish
  to its own input families;
- the in-process hand-off markers (shared/bus/local.py) travel on the subject of the
  messages they precede (``route.*`` from a connection manager, ``cm.*`` from an embedded
  router): they need no permission of their own;
- durable delivery (shared/bus/streams.py): a role that publishes to a partitioned family
  creates the streams (``JS_STREAMS``) and gets its PubAcks on an inbox (``_INBOX.>``); a
  partitioned service also recreates, pulls and acks its partitions' consumers
  (``JS_CONSUMERS``).  Only the STANZAD_* streams are named; no role may delete a stream;
- durable deliveries (``STANZAD_DURABLE_DELIVERIES``): every durable bus creates the
  ``STANZAD_CM`` stream too; a connection manager pulls and acks its consumer (and a dead
  one's, to drain it), reads its stream's subject counts, and appends to, lists, reads
  (in batches: direct get) and purges the XEP-0198 session logs (``smlog.>``,
  ``STANZAD_SMLOG``);
- the admin API and the CLI use no request/reply and may not subscribe to ``_INBOX.>``;
- a connection manager publishes to ``cm.*`` (the kick of a session it replaces on another
  connection manager, RFC 6120 §7.7.2.2 conflict) and subscribes to ``cm.*``: NATS
  user/password permissions cannot name the subscriber's own id, so one connection manager
  identity could read another's deliveries (per-pod identities would need NATS accounts
  with JWT templates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shared.bus import streams, subjects

ROUTE: Final = subjects.every(subjects.route(0))
SESSIONS: Final = subjects.every(subjects.session_events(0))
PRESENCE: Final = subjects.every(subjects.presence(0))
ROSTER: Final = subjects.every(subjects.roster(0))
S2S: Final = subjects.every(subjects.s2s(0))
CM: Final = subjects.every(subjects.connection_manager("0"))
MUC: Final = subjects.every(subjects.muc(0))
PUBSUB: Final = subjects.every(subjects.pubsub(0))
UPLOAD: Final = subjects.every(subjects.upload(0))
COMPONENT: Final = subjects.every(subjects.component("x"))
# local service domains and external components (shared/bus/destinations.py)
SERVICES: Final = (MUC, PUBSUB, UPLOAD, COMPONENT)
INBOX: Final = "_INBOX.>"  # PubAcks, JetStream API answers, pulled messages
# NATS wildcards are whole tokens: each stream is named (shared/bus/streams.py)
_STREAMS: Final = tuple(streams.stream_name(f.split(".")[1]) for f in streams.FAMILIES)
DELIVERIES_STREAM: Final = streams.stream_name("cm")
LOG_STREAM: Final = streams.stream_name("smlog")
# every durable bus creates the partitions' streams and the deliveries' (STANZAD_CM)
JS_STREAMS: Final = tuple(
    f"$JS.API.STREAM.{op}.{name}" for name in (*_STREAMS, DELIVERIES_STREAM)
    for op in ("CREATE", "UPDATE")
)
SM_LOG: Final = streams.SM_LOG
# a connection manager consumes its deliveries (and drains a dead one's), keeps the session
# logs: creates, reads and purges them
JS_DELIVERIES: Final = (
    f"$JS.API.CONSUMER.CREATE.{DELIVERIES_STREAM}.*",
    f"$JS.API.CONSUMER.DELETE.{DELIVERIES_STREAM}.*",
    f"$JS.API.CONSUMER.MSG.NEXT.{DELIVERIES_STREAM}.*",
    f"$JS.ACK.{DELIVERIES_STREAM}.>",
    f"$JS.API.STREAM.INFO.{DELIVERIES_STREAM}",
    f"$JS.API.STREAM.CREATE.{LOG_STREAM}",
    f"$JS.API.STREAM.UPDATE.{LOG_STREAM}",
    f"$JS.API.STREAM.MSG.GET.{LOG_STREAM}",
    f"$JS.API.DIRECT.GET.{LOG_STREAM}",
    f"$JS.API.STREAM.PURGE.{LOG_STREAM}",
    f"$JS.API.STREAM.INFO.{LOG_STREAM}",
)
JS_CONSUMERS: Final = tuple(
    subject for name in _STREAMS for subject in (
        f"$JS.API.CONSUMER.CREATE.{name}.*",
        f"$JS.API.CONSUMER.DELETE.{name}.*",
        f"$JS.API.CONSUMER.MSG.NEXT.{name}.*",
        f"$JS.ACK.{name}.>",
    )
)
DOMAINS: Final = subjects.domains()  # virtual hosts changed: every service reloads them


@dataclass(frozen=True)
class Permissions:
    """The subjects (NATS wildcards allowed) a role may publish to and subscribe to;
    anything else is refused by the server (an empty ``subscribe``: nothing at all)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...] = ()

    def __or__(self, other: Permissions) -> Permissions:
        return Permissions(
            tuple(dict.fromkeys(self.publish + other.publish)),
            tuple(dict.fromkeys(self.subscribe + other.subscribe)),
        )


CONNECTION_MANAGER: Final = Permissions(
    # client stanzas (shared/router/ingress.py), unavailable presence at unbind, session
    # events, kicks of replaced sessions
    publish=(ROUTE, ROSTER, PRESENCE, SESSIONS, CM, SM_LOG, *SERVICES, *JS_STREAMS,
             *JS_DELIVERIES),
    subscribe=(CM, INBOX, DOMAINS),
)
ROUTER: Final = Permissions(
    # deliveries, bounces to the sender's partition, federation, roster pushes, fences
    publish=(CM, ROUTE, SESSIONS, ROSTER, S2S, *SERVICES, *JS_STREAMS, *JS_CONSUMERS),
    subscribe=(ROUTE, SESSIONS, INBOX, DOMAINS),
)
PRESENCE_SERVICE: Final = Permissions(
    publish=(PRESENCE, CM, ROUTE, S2S, SESSIONS, *SERVICES, *JS_STREAMS, *JS_CONSUMERS),
    subscribe=(PRESENCE, INBOX, DOMAINS),
)
ROSTER_SERVICE: Final = Permissions(
    publish=(ROSTER, CM, ROUTE, S2S, PRESENCE, SESSIONS, *SERVICES, *JS_STREAMS,
             *JS_CONSUMERS),
    subscribe=(ROSTER, INBOX, DOMAINS),
)
S2S_GATEWAY: Final = Permissions(
    # stanzas from peers and components (ingress), bounces, fences, component claims
    publish=(ROUTE, ROSTER, PRESENCE, S2S, *SERVICES, *JS_STREAMS, *JS_CONSUMERS),
    subscribe=(S2S, COMPONENT, INBOX, DOMAINS),
)
MUC_SERVICE: Final = Permissions(
    # fences on its own family, FANOUT deliveries to connection managers, answers and
    # invitations through the routers, remote occupants through the s2s gateway
    publish=(MUC, CM, ROUTE, S2S, *SERVICES, *JS_STREAMS, *JS_CONSUMERS),
    subscribe=(MUC, INBOX, DOMAINS),
)
PUBSUB_SERVICE: Final = Permissions(
    # answers and notifications to sessions (FANOUT, BATCH), routed notifications and
    # answers (local bare JIDs, remote JIDs, other service domains), fences
    publish=(PUBSUB, CM, ROUTE, S2S, *SERVICES, *JS_STREAMS, *JS_CONSUMERS),
    subscribe=(PUBSUB, INBOX, DOMAINS),
)
UPLOAD_SERVICE: Final = Permissions(
    # answers to slot requests through the routers (or the s2s gateway), fences
    publish=(UPLOAD, ROUTE, S2S, *SERVICES, *JS_STREAMS, *JS_CONSUMERS),
    subscribe=(UPLOAD, INBOX, DOMAINS),
)
# session events, kicks, domain notices (cluster/admin.py)
ADMIN: Final = Permissions(publish=(SESSIONS, CM, DOMAINS))

ROLES: Final[dict[str, Permissions]] = {
    "connection_manager": CONNECTION_MANAGER,
    # a connection manager with STANZAD_EMBEDDED_ROUTER: both buses of the process use the
    # same identity
    "connection_manager_router": CONNECTION_MANAGER | ROUTER,
    "router": ROUTER,
    "presence": PRESENCE_SERVICE,
    "roster": ROSTER_SERVICE,
    "s2s_gateway": S2S_GATEWAY,
    "muc": MUC_SERVICE,
    "pubsub": PUBSUB_SERVICE,
    "upload": UPLOAD_SERVICE,
    "admin": ADMIN,
    "cli": ADMIN,  # `stanzad user delete`, `stanzad sessions kick`
}


def authorization(passwords: dict[str, str]) -> dict[str, object]:
    """The nats-server ``authorization`` block: one user per role of ``passwords`` (role ->
    password), named after the role, with the role's permissions."""
    users = []
    for role, password in passwords.items():
        perms = ROLES[role]
        users.append({
            "user": role,
            "password": password,
            "permissions": {
                "publish": {"allow": list(perms.publish)},
                # an empty allow list would allow everything: deny all instead
                "subscribe": ({"allow": list(perms.subscribe)} if perms.subscribe
                              else {"deny": [">"]}),
            },
        })
    return {"users": users}
