"""XEP-0198 Stream Management: the counters, the elements, and the c2s unacknowledged queue.

The sending side counts the stanzas it writes from the moment it asks for stream management
(§4: 'h' starts at zero when SM "is enabled or requested to be enabled"); the receiving side
counts the stanzas it handled and answers each <r/> with <a h='…'/>.  Counts wrap at 2^32
(§4).  The stream machines (`shared.xmpp.s2s`, `shared.xmpp.s2s_out`) own these counters;
what was written and not yet acked is kept by the caller, who knows what to do with it when
the stream breaks (re-send or bounce).  Resumption (§5) is not offered on s2s, as in
Prosody: a broken stream is replaced by a new one.

Client streams (`shared.xmpp.c2s`) add the resumable part (§5): `Queue` keeps the stanzas
written and not yet acknowledged, in order, so that they can be written again after a
<resume/> or handed to offline storage when the session ends.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import Final
from xml.sax.saxutils import quoteattr

from lxml import etree

from shared.xmpp import ns
from shared.xmpp.errors import StreamError, StreamErrorCondition

MOD: Final = 2**32
HALF: Final = 2**31  # an 'h' at most this far ahead of the last one is ahead, else behind
ENABLE: Final = f"{{{ns.SM}}}enable"
ENABLED: Final = f"{{{ns.SM}}}enabled"
FAILED: Final = f"{{{ns.SM}}}failed"
REQUEST: Final = f"{{{ns.SM}}}r"
ACK: Final = f"{{{ns.SM}}}a"
RESUME: Final = f"{{{ns.SM}}}resume"
PREFIX: Final = f"{{{ns.SM}}}"
FEATURE: Final = f'<sm xmlns="{ns.SM}"/>'.encode()


def enable() -> bytes:
    return f'<enable xmlns="{ns.SM}"/>'.encode()


def enabled() -> bytes:
    return f'<enabled xmlns="{ns.SM}"/>'.encode()  # no 'resume': none on s2s


def enabled_resumable(sm_id: str, max_s: int, location: str = "") -> bytes:
    """§3: <enabled/> of a resumable session, with its id and the timeout the server keeps;
    `location` (§5: "domainpart:port" as in RFC 6120 §4.9.3.19) where it prefers the
    <resume/>, when set."""
    where = f" location={quoteattr(location)}" if location else ""
    return (
        f'<enabled xmlns="{ns.SM}" id={quoteattr(sm_id)} resume="true" max="{max_s}"{where}/>'
    ).encode()


def check_location(value: str) -> str:
    """A <enabled location/> (§5): a host name or IP address, optionally ':port', an IPv6
    address in brackets (RFC 6120 §4.9.3.19, RFC 5952); ValueError if it is not one."""
    if not value:
        return value
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        ipaddress.IPv6Address(host)  # ValueError when not one
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected [IPv6]:port, got {value!r}")
        port = rest[1:] if rest else None
    else:
        host, colon, port_text = value.rpartition(":")
        host, port = (host, port_text) if colon else (value, None)
        if not host or not all(c.isalnum() or c in ".-_" for c in host):
            raise ValueError(f"not a host name or IPv4 address: {host!r}")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"not a port: {port!r}")
    return value


def failed(condition: str, h: int | None = None) -> bytes:
    """<failed/> with a stanza error condition; 'h' when the server knows it (§4, §5)."""
    h_attr = f' h="{h % MOD}"' if h is not None else ""
    return (
        f'<failed xmlns="{ns.SM}"{h_attr}><{condition} xmlns="{ns.STANZAS_ERRORS}"/></failed>'
    ).encode()


def resumed(previd: str, handled: int) -> bytes:
    """§5: the session is back; 'h' is how many of the client's stanzas the server handled."""
    return f'<resumed xmlns="{ns.SM}" previd={quoteattr(previd)} h="{handled % MOD}"/>'.encode()


def request() -> bytes:
    return f'<r xmlns="{ns.SM}"/>'.encode()


def answer(handled: int) -> bytes:
    return f'<a xmlns="{ns.SM}" h="{handled % MOD}"/>'.encode()


def offered(features: etree._Element) -> bool:
    return features.find(f"{{{ns.SM}}}sm") is not None


def parse_h(element: etree._Element) -> int:
    """The 'h' of an <a/> (§4): an unsigned 32-bit integer."""
    text = element.get("h", "")
    if not text.isdigit() or int(text) >= MOD:
        raise StreamError(StreamErrorCondition.INVALID_XML, "bad 'h' in <a/>")
    return int(text)


class Sent:
    """Stanzas written on a stream with SM requested, and how many the peer acked."""

    __slots__ = ("acked", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0

    @property
    def unacked(self) -> int:
        return self.sent - self.acked

    def count(self) -> None:
        self.sent += 1

    def ack(self, h: int) -> int:
        """How many more stanzas <a h='h'/> acknowledges.  An 'h' beyond what was sent is a
        stream error (§4, handled-count-too-high); one below what was acked acks nothing."""
        new = (h - self.acked) % MOD
        if new > self.unacked:
            if new >= HALF:  # behind what was acked (modulo 2^32): an old h, harmless
                return 0
            raise too_high(h, self.sent)
        self.acked += new
        return new


def too_high(h: int, sent: int) -> StreamError:
    """§4: an 'h' acknowledging more than was sent is an <undefined-condition/> stream error
    with the application-specific <handled-count-too-high/>."""
    return StreamError(
        StreamErrorCondition.UNDEFINED_CONDITION,
        f"handled-count-too-high: h={h}, sent {sent % MOD}",
        extra=f'<handled-count-too-high xmlns="{ns.SM}" h="{h}" send-count="{sent % MOD}"/>',
    )


class Queue(Sent):
    """XEP-0198 on one client session (§3 to §5): the stanzas it handled from the client,
    and those written to it and not yet acknowledged, in the order they were written.

    `queue` holds every stanza counted in `sent` beyond `acked`; an <a/> or a <resume/>
    drops the ones it acknowledges from the front.  Stanzas held while the session is
    detached are counted and queued the same way: they are written on <resume/>.
    """

    __slots__ = ("handled", "id", "max_s", "queue")

    def __init__(self, sm_id: str = "", max_s: int = 0) -> None:
        super().__init__()
        self.id = sm_id  # "" when not resumable
        self.max_s = max_s  # the resumption timeout announced in <enabled max/>
        self.handled = 0  # stanzas received from the client (§4 'h' of our <a/>)
        self.queue: deque[bytes] = deque()

    @property
    def resumable(self) -> bool:
        return bool(self.id)

    def push(self, stanza: bytes) -> int:
        """Count a stanza written (or held) for the client; the queue's new length."""
        self.sent += 1
        queue = self.queue
        queue.append(stanza)
        return len(queue)

    def ack(self, h: int) -> int:
        n = super().ack(h)
        popleft = self.queue.popleft
        for _ in range(n):
            popleft()
        return n

    def check(self, h: int) -> StreamError | None:
        """What `ack(h)` would raise, without acknowledging anything."""
        new = (h - self.acked) % MOD
        if HALF > new > self.unacked:
            return too_high(h, self.sent)
        return None


# ---- a session's state between connection managers (resumption on another pod) -----------

_SEP: Final = b"\x00"  # cannot occur in XML 1.0 (§2.2), so never inside a stanza


def export_queue(queue: Queue) -> bytes:
    """The counters and unacknowledged stanzas of `queue`, in order, as bytes: what the
    owner of a session hands to the connection manager that takes it over."""
    head = f"{queue.handled % MOD} {queue.sent % MOD} {queue.acked % MOD}".encode()
    return _SEP.join((head, *queue.queue))


def import_queue(sm_id: str, max_s: int, data: bytes) -> Queue:
    """`export_queue` read back; ValueError when `data` is not one."""
    head, *stanzas = data.split(_SEP)
    handled, sent, acked = (int(n) for n in head.decode().split(" "))
    queue = Queue(sm_id, max_s)
    queue.handled, queue.sent, queue.acked = handled, sent, acked
    if (sent - acked) % MOD != len(stanzas):
        raise ValueError("the queue does not match its counters")
    queue.sent = acked + len(stanzas)  # the same modulo 2^32, without a wrap in between
    queue.queue.extend(stanzas)
    return queue


# ---- a session's log (durable delivery: resumption after its connection manager died) -----
#
# What a connection manager puts in a resumable session's queue is appended to the session's
# log before it is written to the socket, each stanza with its count (`Queue.sent` once it
# is pushed), so that another connection manager can rebuild the queue the client's 'h'
# refers to.  Deliveries drained from a dead connection manager's stream for the session
# are appended "loose" (count 0): they come after every counted one.  A "base" entry starts
# a complete copy of the queue (written by a connection manager that took the session
# over): what came before it is superseded.  Every entry carries the client's acknowledged
# count as the connection manager knew it (`Queue.acked`); an entry without a stanza and
# count 0 only marks an <a/> (`ack_mark`), so that a session that is never resumed hands
# to offline storage exactly what its client had not acknowledged (`unacked_from_log`).
# One entry: a header line ``<count> <handled> <origin or -> <ts_us> <base: 0|1> <acked>``
# then the stanza.


def log_entry(count: int, handled: int, origin: str, ts_us: int, stanza: bytes,
              base: bool = False, acked: int = 0) -> bytes:
    head = b"%d %d %s %d %d %d\n" % (count, handled % MOD, (origin or "-").encode(), ts_us,
                                     base, acked % MOD)
    return head + stanza


def ack_mark(handled: int, acked: int) -> bytes:
    """A log entry saying only that the client acknowledged ``acked`` stanzas."""
    return log_entry(0, handled, "", 0, b"", acked=acked)


class LogEntry:
    __slots__ = ("acked", "base", "count", "handled", "origin", "stanza", "ts_us")

    def __init__(self, data: bytes) -> None:
        """ValueError when ``data`` is not a `log_entry` (one without ``acked``, written
        before it was logged, reads as 0)."""
        head, _, self.stanza = data.partition(b"\n")
        count, handled, origin, ts_us, base, *acked = head.decode().split(" ")
        if len(acked) > 1:
            raise ValueError("not a log entry")
        self.count, self.handled, self.ts_us = int(count), int(handled), int(ts_us)
        self.acked = int(acked[0]) if acked else 0
        self.origin = "" if origin == "-" else origin
        self.base = base == "1"


def queue_from_log(sm_id: str, max_s: int, entries: list[LogEntry], h: int,
                   handled: int | None = None) -> Queue:
    """The queue of a session rebuilt from its log for a client whose <resume/> says it
    received ``h`` stanzas: the counted entries beyond ``h`` in order, then the loose ones
    that are not copies of a counted entry (same origin and ts_us: the dead connection
    manager had logged it but not acked its delivery).  ``handled``: the count of the
    client's stanzas when better known than the log's."""
    counted: dict[int, LogEntry] = {}
    loose: list[LogEntry] = []
    best = handled or 0
    for entry in entries:
        if entry.base:
            counted.clear()
            loose.clear()
        if entry.count:
            counted[entry.count] = entry
        elif entry.stanza:
            loose.append(entry)
        if (entry.handled - best) % MOD < HALF:
            best = entry.handled
    stamps = {(e.origin, e.ts_us) for e in counted.values() if e.ts_us}
    queue = Queue(sm_id, max_s)
    queue.handled = best
    queue.acked = queue.sent = h
    for count in sorted(counted):
        if 0 < (count - h) % MOD < HALF:
            queue.push(counted[count].stanza)
    for entry in loose:
        if not entry.ts_us or (entry.origin, entry.ts_us) not in stamps:
            stamps.add((entry.origin, entry.ts_us))
            queue.push(entry.stanza)
    return queue


def unacked_from_log(entries: list[LogEntry]) -> Queue:
    """What a session that will not be resumed had not had acknowledged by its client, from
    its log alone (its connection manager died and the client did not come back in time):
    the queue for the last acknowledged count the log knows of (`queue_from_log`)."""
    acked = 0
    for entry in entries:
        if entry.base or (entry.acked - acked) % MOD < HALF:
            acked = entry.acked
    return queue_from_log("", 0, entries, acked)
