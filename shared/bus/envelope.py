"""The envelope a stanza crosses NATS in.

Routing facts (kind, type, to, from, id, origin, hops, and the time the connection manager
accepted the stanza) are readable without parsing XML: they
travel as a compact prefix of the payload, fields joined by NUL bytes, followed by the
canonical XML.  NUL cannot occur in prepared JIDs (PRECIS forbids controls), in XML attribute
values or in XML text (XML 1.0 §2.2), so the encoding is unambiguous.  Headers would carry the
same facts but cost 4.4x per publish (docs/architecture.md, "Building-block costs").
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Final, NamedTuple

from shared.xmpp.errors import StanzaError, StanzaErrorCondition, StreamError
from shared.xmpp.jid import bare_of, domain_of
from shared.xmpp.parser import parse_fragment
from shared.xmpp.stanza import error_reply, must_not_bounce

log = logging.getLogger(__name__)

VERSION: Final = b"1"
_SEP: Final = b"\x00"
_FIELDS: Final = 10  # version + 8 facts + payload
# A bounce is never bounced, and an envelope that has already crossed this many services is
# not answered: two misconfigured services can then not ping-pong errors forever.
BOUNCE_MAX_HOPS: Final = 4


class Kind(enum.StrEnum):
    """What an envelope carries."""

    MESSAGE = "message"
    PRESENCE = "presence"
    IQ = "iq"
    KICK = "kick"  # control: close a session (payload: stream error condition)
    SESSION = "session"  # control: the session table of a bare JID changed
    BATCH = "batch"  # several stanzas for one session (``to``), written as they are
    FANOUT = "fanout"  # one stanza without 'to' for several sessions (``to``: JIDs, one a line)
    FENCE = "fence"  # control: a partition's previous owner handled everything before this
    # control, XEP-0198 resumption on another connection manager (docs/architecture.md):
    TAKEOVER = "takeover"  # hand me session ``id`` of ``to``; answer on ``from_``'s subject
    HANDOVER = "handover"  # the answer: its queue and counters (``type`` "ok") or "gone"
    # a message a local user sent to another local account, for the router of the *sender's*
    # partition: XEP-0280 sent carbons and the sender's XEP-0313 archive row
    # (docs/architecture.md "Carbons and the archive"); same facts as the message
    SENT = "sent"


STANZA_KINDS: Final = frozenset({Kind.MESSAGE, Kind.PRESENCE, Kind.IQ})
FENCE_PREFIX: Final = b"1\x00fence\x00"  # recognised without decoding
# origin of the stanzas a connection manager hands back when an XEP-0198 session ends with
# them unacknowledged: messages are stored offline, not delivered to the other resources
SM_UNACKED_ORIGIN: Final = "sm-unacked"
# origin of a message a connection manager delivered to a detached XEP-0198 session, sent on
# to the router of the user's partition for XEP-0357 notifications (`to`: the session's full
# JID; `id`: how many such messages the session got since it was detached)
PUSH_ORIGIN: Final = "push"
FANOUT_SEPARATOR: Final = "\n"  # cannot occur in a prepared JID (PRECIS forbids controls)


_KINDS: Final = {k.value.encode(): k for k in Kind}
_KIND_BYTES: Final = {k: k.value.encode() for k in Kind}  # an enum's .value is a property
_new = tuple.__new__  # a NamedTuple built positionally: no keyword matching per stanza


class EnvelopeError(ValueError):
    """Bytes that are not an envelope of a known version."""


class Envelope(NamedTuple):
    """A stanza (or control message) with its routing facts.

    A NamedTuple rather than a frozen dataclass: it is immutable too, and decoding one per
    stanza costs a third of the time.
    """

    kind: Kind
    to: str
    from_: str
    type: str = ""
    id: str = ""
    origin: str = ""  # "<cm_id>/<session_id>" of the sending session, or a service name
    hops: int = 0
    payload: bytes = b""
    ts_us: int = 0  # when the stanza entered the cluster (µs since the epoch), for latency

    def encode(self) -> bytes:
        return _SEP.join(
            (
                VERSION,
                _KIND_BYTES[self.kind],
                self.to.encode(),
                self.from_.encode(),
                self.type.encode(),
                self.id.encode(),
                self.origin.encode(),
                str(self.hops).encode(),
                str(self.ts_us).encode(),
                self.payload,
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        parts = data.split(_SEP, _FIELDS - 1)
        if len(parts) != _FIELDS or parts[0] != VERSION:
            raise EnvelopeError("not a stanzad envelope of version 1")
        kind = _KINDS.get(parts[1])
        if kind is None:
            raise EnvelopeError(f"unknown envelope kind {parts[1]!r}")
        try:  # in field order: kind, to, from_, type, id, origin, hops, payload, ts_us
            return _new(cls, (kind, parts[2].decode(), parts[3].decode(), parts[4].decode(),
                              parts[5].decode(), parts[6].decode(), int(parts[7]), parts[9],
                              int(parts[8])))
        except (ValueError, UnicodeDecodeError) as exc:
            raise EnvelopeError(f"bad envelope field: {exc}") from None

    @property
    def to_bare(self) -> str:
        return bare_of(self.to)

    @property
    def from_bare(self) -> str:
        return bare_of(self.from_)

    @property
    def to_domain(self) -> str:
        return domain_of(self.to)

    @property
    def from_domain(self) -> str:
        return domain_of(self.from_)

    def forwarded(self, to: str | None = None) -> Envelope:
        """The same envelope one hop further, optionally re-addressed (built positionally:
        ``_replace`` costs several times more, once per delivery in the router)."""
        return _new(Envelope, (self.kind, self.to if to is None else to, self.from_,
                               self.type, self.id, self.origin, self.hops + 1, self.payload,
                               self.ts_us))

    def with_payload(self, payload: bytes) -> Envelope:
        """The same envelope carrying ``payload`` (``_replace(payload=...)``, built
        positionally: once per message at ingress and in the router)."""
        return _new(Envelope, (self.kind, self.to, self.from_, self.type, self.id, self.origin,
                               self.hops, payload, self.ts_us))

    def bounce(
        self,
        condition: StanzaErrorCondition,
        *,
        origin: str,
        max_bytes: int,
        text: str | None = None,
        extra: str = "",
    ) -> Envelope | None:
        """The stanza sent back to its sender as an error (RFC 6120 §8.3), addressed to the
        sender (publish it on the route subject of `from_bare`'s partition).

        None when it must not be answered: an error or a result (§8.3.1), no sender, too many
        hops, or a payload that does not parse within `max_bytes`.
        """
        if must_not_bounce(self.type) or self.hops >= BOUNCE_MAX_HOPS or not self.from_:
            return None
        try:
            element = parse_fragment(self.payload, max_bytes)
        except StreamError:
            return None
        payload = error_reply(
            element, StanzaError(condition, text, extra=extra), to=self.from_, from_=self.to
        )
        return Envelope(
            self.kind, to=self.from_, from_=self.to, type="error", id=self.id, origin=origin,
            hops=self.hops + 1, payload=payload, ts_us=self.ts_us,
        )


def decoded(batch: Iterable[tuple[str, bytes]]) -> Iterator[Envelope]:
    """The envelopes of a batch of bus messages, in order; one that does not decode is logged
    and skipped (a bad publisher must not stop a partition's consumer)."""
    for _subject, data in batch:
        try:
            yield Envelope.decode(data)
        except EnvelopeError as exc:
            log.warning("dropped a bad envelope: %s", exc)


def session_event(bare: str, version: int = 0) -> Envelope:
    """The bare JID's sessions or account changed: routers drop what they cached for it.

    Published on `subjects.session_events` of the bare JID's partition by whoever changed
    it: bind/unbind (with the session table's version), account creation and deletion (0).
    """
    return Envelope(Kind.SESSION, to=bare, from_="", payload=str(version).encode())


def accounts_event(bares: Sequence[str]) -> Envelope:
    """Several accounts of one partition were created at once (a bulk import): one session
    event whose ``to`` lists their bare JIDs, one a line (`FANOUT_SEPARATOR`, which cannot
    occur in a prepared JID).  Routers drop what they cached for each (`session_event_jids`).
    """
    return Envelope(Kind.SESSION, to=FANOUT_SEPARATOR.join(bares), from_="", payload=b"0")


def session_event_jids(env: Envelope) -> list[str]:
    """The bare JIDs a session event is about: one (`session_event`) or several
    (`accounts_event`)."""
    return env.to.split(FANOUT_SEPARATOR)
