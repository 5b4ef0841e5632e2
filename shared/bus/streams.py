"""The JetStream streams and consumers of durable delivery (docs/architecture.md, "Durable
delivery on NATS JetStream").

One stream per partitioned subject family (``stanzad.route.*``, ``stanzad.presence.*``, ...),
work-queue retention, so a message leaves the stream once the owner of its partition acks it;
one durable pull consumer per partition, named ``<family>-<p>``.  A family added to
subjects.py and listed in ``FAMILIES`` becomes durable for every publisher and every
partitioned service without their changing.

With ``StreamLimits.deliveries`` (STANZAD_DURABLE_DELIVERIES) two more: ``STANZAD_CM`` on
``stanzad.cm.*``, the connection managers' deliveries (work queue, one durable consumer per
connection manager, drained by another one when it dies), and ``STANZAD_SMLOG`` on
``stanzad.smlog.>``, the XEP-0198 log of each resumable session (limits retention: kept for
``log_max_age_s``, read back when the session is resumed after its connection manager died,
or handed to offline storage when it is not: subjects.sm_log).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shared.bus import subjects
from shared.runtime.settings import CommonSettings

# the partitioned families whose stanzas are kept until their owner handled them
FAMILIES: Final = tuple(
    subjects.every(make(0)) for make in (
        subjects.route, subjects.presence, subjects.roster, subjects.s2s, subjects.muc,
        subjects.pubsub, subjects.upload,
    )
)
# connection-manager deliveries and the XEP-0198 session logs (StreamLimits.deliveries)
DELIVERIES: Final = subjects.every(subjects.connection_manager("0"))
SM_LOG: Final = f"{subjects.PREFIX}.smlog.>"  # stanzad.smlog.<cm>.<full JID>.<sm id>
_PREFIXES: Final = {f[:-1]: f.split(".")[1]  # "stanzad.route." -> "route"
                    for f in (*FAMILIES, DELIVERIES)}
_LOG_PREFIX: Final = SM_LOG[:-1]
PULL_BATCH: Final = 256  # messages asked for at once per partition; topped up at half
MAX_ACK_PENDING: Final = 4096  # per partition: delivered and not yet acked
ACK_WAIT_S: Final = 300.0  # take-overs recreate the consumer; this is only a last resort
PULL_EXPIRES_S: Final = 10.0  # a pull request waits this long for messages, then renewed
# Several stanzas for one partition published in one event-loop tick travel as one stream
# message (``pack``): one store, one PubAck, one pulled delivery and one ack for all of
# them, which is where JetStream's cost per message goes (loadtest/RESULTS.md).
MULTI_PREFIX: Final = b"\x00multi\x00"  # NUL first: never an envelope or a local marker
MULTI_MAX_BYTES: Final = 64 * 1024  # a pack is closed at this size (NATS max_payload: 1 MiB)
MULTI_MAX_COUNT: Final = 128


def family(subject: str) -> str | None:
    """``route`` for ``stanzad.route.7``; None when the subject is not of a stream (whether
    ``cm`` and ``smlog`` are is the bus's to say: ``StreamLimits.deliveries``)."""
    head, _, _ = subject.rpartition(".")
    fam = _PREFIXES.get(head + ".")
    if fam is None and subject.startswith(_LOG_PREFIX):
        return "smlog"
    return fam


def family_names(limits: StreamLimits) -> tuple[str, ...]:
    """The families whose publishes are stored (PubAck'd) by a bus with ``limits``."""
    names = tuple(f.split(".")[1] for f in FAMILIES)
    return (*names, "cm", "smlog") if limits.deliveries else names


def pack(parts: list[bytes]) -> bytes:
    """Several messages of one subject, in order, as one payload: ``MULTI_PREFIX`` then each
    part as its length in decimal, a newline, and its bytes."""
    out = [MULTI_PREFIX]
    for part in parts:
        out.append(b"%d\n" % len(part))
        out.append(part)
    return b"".join(out)


def unpack(data: bytes) -> list[bytes]:
    """The parts of a ``pack``, in order; ValueError when it is cut short."""
    parts = []
    pos = len(MULTI_PREFIX)
    end = len(data)
    while pos < end:
        nl = data.index(b"\n", pos)
        stop = nl + 1 + int(data[pos:nl])
        if stop > end:
            raise ValueError("a packed message cut short")
        parts.append(data[nl + 1:stop])
        pos = stop
    return parts


def stream_name(fam: str) -> str:
    """``STANZAD_ROUTE`` for the family ``route``."""
    return f"{subjects.PREFIX.upper()}_{fam.upper()}"


def consumer_name(subject: str) -> str:
    """``route-7`` for ``stanzad.route.7``: the durable consumer of one partition."""
    fam = family(subject)
    assert fam is not None, subject
    return f"{fam}-{subject.rpartition('.')[2]}"


@dataclass(frozen=True)
class StreamLimits:
    """How the streams are stored (settings STANZAD_STREAM_*)."""

    replicas: int = 1
    max_bytes: int = 1024**3
    memory: bool = False  # memory storage (tests, or who prefers speed to restarts)
    deliveries: bool = False  # STANZAD_CM and STANZAD_SMLOG too (STANZAD_DURABLE_DELIVERIES)
    # how long an XEP-0198 log keeps an entry; the connection managers alone create that
    # stream (0: this bus does not)
    log_max_age_s: int = 0


def limits_of(settings: CommonSettings, log_max_age_s: int = 0) -> StreamLimits:
    return StreamLimits(settings.stream_replicas, settings.stream_max_bytes,
                        settings.stream_memory, settings.durable and settings.durable_deliveries,
                        log_max_age_s)


CM_MAX_AGE_S: Final = 86400  # what no connection manager drained (none left) goes after this


def stream_config(fam: str, limits: StreamLimits) -> dict[str, object]:
    """The JetStream stream configuration of one family (the JSON of STREAM.CREATE).

    ``smlog`` keeps what it is given for ``log_max_age_s`` (limits retention: an entry is
    read again at a resume, never consumed), dropping the oldest when full: those are the
    entries the clients acknowledged long ago.  ``cm`` is a work queue like the partitions,
    with a day's ``max_age`` for a subject no live connection manager drains any more."""
    log = fam == "smlog"
    return {
        "name": stream_name(fam),
        "subjects": [SM_LOG if log else f"{subjects.PREFIX}.{fam}.*"],
        "retention": "limits" if log else "workqueue",
        "storage": "memory" if limits.memory else "file",
        "num_replicas": limits.replicas,
        "max_bytes": limits.max_bytes,
        "discard": "old" if log else "new",
        "max_msgs": -1,
        "max_age": int((limits.log_max_age_s if log else CM_MAX_AGE_S if fam == "cm" else 0)
                       * 1e9),
        "max_msg_size": -1,
        # a session's log is read back in batches (DIRECT.GET, Bus.read_subject)
        "allow_direct": log,
    }


def consumer_config(subject: str) -> dict[str, object]:
    """The durable pull consumer of one partition: every message still in the stream (the
    oldest unacknowledged first), explicit acks."""
    name = consumer_name(subject)
    return {
        "durable_name": name,
        "name": name,
        "filter_subject": subject,
        "deliver_policy": "all",
        "ack_policy": "explicit",
        "ack_wait": int(ACK_WAIT_S * 1e9),
        "max_ack_pending": MAX_ACK_PENDING,
        "max_deliver": -1,
        "replay_policy": "instant",
        # The consumer's state (delivered, ack floor) is kept in memory, not written to a
        # file after every ack (a tenth of nats-server's CPU with file state, loadtest/
        # RESULTS.md): the stream itself holds every unacked message (work queue), and
        # whoever owns the partition recreates its consumer from them, at a take-over as
        # after a nats-server restart (Bus._recreate_lost); replicated like file state.
        "mem_storage": True,
    }
