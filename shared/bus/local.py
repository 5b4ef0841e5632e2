"""Hand-off between the buses of one process, around NATS.

A connection manager that embeds a router (``STANZAD_EMBEDDED_ROUTER``) has two buses, its
own and its router's.  A stanza between two of its own users would otherwise cross NATS
twice (cm -> router, router -> cm): four socket writes, each waking another process, which is
most of a paced message's CPU (loadtest/RESULTS.md, session 3).  Here a consuming bus
*offers* the subjects it alone consumes (a partition it owns and is past the hand-over fence
of, a connection manager's own subject), and a publishing bus of the same process hands
messages for an offered subject straight to that consumer's inbox.

Order (RFC 6120 §10.1) is kept per publisher and subject: before a publisher takes the
in-process path for a subject it sends a marker over NATS and holds what it publishes to the
subject meanwhile; NATS delivers one publisher's messages to a subscriber in order, so when
the marker reaches the consumer everything sent earlier over NATS is in the consumer's inbox,
and the held messages (then every later one) are appended behind it.  A consumer withdraws an
offer *before* it gives the subject up, synchronously: what it received in-process is then
already in its inbox, ahead of its hand-over FENCE, and publishers go back to NATS at once.
A marker that does not come back within ``HOLD_TIMEOUT_S`` (NATS down) releases the held
messages over NATS, and the publisher tries again after ``RETRY_AFTER_S``.

Only subjects with exactly one consumer by design may be offered: an in-process hand-off
reaches that consumer and nobody else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

MARKER_PREFIX: Final = b"\x00local\x00"
HOLD_TIMEOUT_S: Final = 2.0
RETRY_AFTER_S: Final = 5.0

Sink = Callable[[str, bytes], None]


class Publisher(Protocol):
    """What the exchange needs of a publishing bus."""

    local_id: str

    def local_ready(self, subject: str, epoch: int, sink: Sink) -> None: ...
    def local_withdrawn(self, subject: str) -> None: ...


class Exchange:
    """The offers and publishers of one process."""

    def __init__(self) -> None:
        self.offers: dict[str, Sink] = {}  # subject -> the consuming bus's inbox
        self._publishers: dict[str, Publisher] = {}

    def join(self, publisher: Publisher) -> None:
        """Register a publishing bus under its ``local_id`` (unique across processes: a
        marker can reach a subscriber in another process during a hand-over)."""
        self._publishers[publisher.local_id] = publisher

    def leave(self, local_id: str) -> None:
        self._publishers.pop(local_id, None)

    def offer(self, subject: str, sink: Sink) -> None:
        self.offers[subject] = sink

    def withdraw(self, subject: str) -> None:
        if self.offers.pop(subject, None) is None:
            return
        for publisher in list(self._publishers.values()):
            publisher.local_withdrawn(subject)

    def marker_seen(self, subject: str, data: bytes, sink: Sink) -> None:
        """A consumer received a marker: its publisher may switch if the offer still
        stands and is this consumer's."""
        local_id, _, epoch = data[len(MARKER_PREFIX):].decode().partition("\x00")
        publisher = self._publishers.get(local_id)
        if publisher is not None and self.offers.get(subject) == sink:  # bound methods
            publisher.local_ready(subject, int(epoch), sink)


def marker(local_id: str, epoch: int) -> bytes:
    return MARKER_PREFIX + f"{local_id}\x00{epoch}".encode()


# one per process: buses of one process meet here
EXCHANGE: Final = Exchange()
