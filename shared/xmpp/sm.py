"""XEP-0198 Stream Management, the part server-to-server streams use: acks, no resumption.

The sending side counts the stanzas it writes from the moment it asks for stream management
(§4: 'h' starts at zero when SM "is enabled or requested to be enabled"); the receiving side
counts the stanzas it handled and answers each <r/> with <a h='…'/>.  Counts wrap at 2^32
(§4).  The stream machines (`shared.xmpp.s2s`, `shared.xmpp.s2s_out`) own these counters;
what was written and not yet acked is kept by the caller, who knows what to do with it when
the stream breaks (re-send or bounce).  Resumption (§5) is not offered on s2s, as in
Prosody: a broken stream is replaced by a new one.
"""

from __future__ import annotations

from typing import Final

from lxml import etree

from shared.xmpp import ns
from shared.xmpp.errors import StreamError, StreamErrorCondition

MOD: Final = 2**32
ENABLE: Final = f"{{{ns.SM}}}enable"
ENABLED: Final = f"{{{ns.SM}}}enabled"
FAILED: Final = f"{{{ns.SM}}}failed"
REQUEST: Final = f"{{{ns.SM}}}r"
ACK: Final = f"{{{ns.SM}}}a"
FEATURE: Final = f'<sm xmlns="{ns.SM}"/>'.encode()


def enable() -> bytes:
    return f'<enable xmlns="{ns.SM}"/>'.encode()


def enabled() -> bytes:
    return f'<enabled xmlns="{ns.SM}"/>'.encode()  # no 'resume': none on s2s


def failed(condition: str) -> bytes:
    return f'<failed xmlns="{ns.SM}"><{condition} xmlns="{ns.STANZAS_ERRORS}"/></failed>'.encode()


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
            if (self.acked - h) % MOD <= self.acked:  # an old, smaller h: stale, harmless
                return 0
            raise StreamError(
                StreamErrorCondition.UNDEFINED_CONDITION,
                f"handled-count-too-high: h={h}, sent {self.sent % MOD}",
            )
        self.acked += new
        return new
