"""The outbound link of one remote domain, with a stand-in gateway: the bounded queue while
connecting, bounces when setting up fails (RFC 6120 §8.3.3.16-17), and what happens to
unacked stanzas when a stream with XEP-0198 acks breaks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from services.s2s_gateway.outbound import Link, Pending
from shared.bus.envelope import Envelope, Kind
from shared.xmpp.errors import StanzaErrorCondition


class _Hanging:
    """A resolver whose lookups never end (a DNS server that does not answer)."""

    async def resolve(self, domain: str) -> list[Any]:
        await asyncio.Event().wait()
        return []


@dataclass
class _Settings:
    s2s_max_queue: int = 2
    s2s_connect_timeout_s: float = 0.2
    s2s_sm_max_unacked: int = 100


@dataclass
class _Gateway:
    s2s_settings: _Settings = field(default_factory=_Settings)
    resolver: _Hanging = field(default_factory=_Hanging)
    domain: str = "a.example"
    links: dict[tuple[str, str], Link] = field(default_factory=dict)
    bounced: list[tuple[str, StanzaErrorCondition]] = field(default_factory=list)

    def bounce(self, env: Envelope, condition: StanzaErrorCondition) -> None:
        self.bounced.append((env.id, condition))

    def should_verify(self, domain: str) -> bool:
        return False


def _env(i: str, kind: Kind = Kind.MESSAGE, type_: str = "chat") -> Envelope:
    return Envelope(kind, to="bob@b.example", from_="alice@a.example/r", type=type_, id=i)


async def test_rfc6120_8_3_3_17_queue_is_bounded_and_bounced_when_setup_times_out() -> None:
    gw = _Gateway()
    link = Link(gw, "b.example")  # type: ignore[arg-type]
    for i in ("1", "2", "3"):
        link.send(_env(i))
    assert gw.bounced == [("3", StanzaErrorCondition.RESOURCE_CONSTRAINT)]  # queue of 2
    await asyncio.wait_for(link.task, 5)
    assert link.done
    assert gw.bounced[1:] == [("1", StanzaErrorCondition.REMOTE_SERVER_TIMEOUT),
                              ("2", StanzaErrorCondition.REMOTE_SERVER_TIMEOUT)]


async def test_xep0198_broken_stream_unacked_go_first_on_a_new_link_once() -> None:
    """Unacked stanzas of a broken stream are carried to a new link before what was queued;
    an IQ set is bounced instead, and so is a stanza that was already resent once."""
    gw = _Gateway(_Settings(s2s_connect_timeout_s=30))
    link = gw.links[("a.example", "b.example")] = Link(gw, "b.example")  # type: ignore[arg-type]
    link.unacked.extend([
        Pending(_env("m1")),
        Pending(_env("q1", Kind.IQ, "set")),
        Pending(_env("g1", Kind.IQ, "get")),
        Pending(_env("m0"), resent=True),
    ])
    link.queue.append(Pending(_env("m2")))
    link.task.cancel()
    link.done = True
    link._broken()
    assert gw.bounced == [("q1", StanzaErrorCondition.REMOTE_SERVER_TIMEOUT),
                          ("m0", StanzaErrorCondition.REMOTE_SERVER_TIMEOUT)]
    new = gw.links[("a.example", "b.example")]
    assert new is not link
    assert [(p.env.id, p.resent) for p in new.queue] == [
        ("m1", True), ("g1", True), ("m2", False)
    ]
    new.close()
    assert [c for i, c in gw.bounced if i in ("m1", "g1", "m2")] == (
        [StanzaErrorCondition.REMOTE_SERVER_TIMEOUT] * 3  # closed before it connected
    )


async def test_xep0198_acks_free_the_window_and_release_waiting_stanzas() -> None:
    gw = _Gateway(_Settings(s2s_connect_timeout_s=30, s2s_sm_max_unacked=2))
    link = Link(gw, "b.example")  # type: ignore[arg-type]
    link.task.cancel()
    written: list[str] = []

    class Conn:
        sm = True
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        class stream:  # the attribute the link looks at
            ready = True

        def send(self, payload: bytes) -> None:
            written.append(payload.decode())

        def close(self) -> None:
            written.append("</stream:stream>")

    conn = link.conn = Conn()  # type: ignore[assignment]
    for i in range(4):
        link.send(_env(str(i))._replace(payload=str(i).encode()))
    assert written == ["0", "1"] and len(link.unacked) == 2 and len(link.queue) == 2
    link._acked(1)
    assert written == ["0", "1", "2"] and [p.env.id for p in link.unacked] == ["1", "2"]
    conn.sm = False  # the peer refused acks (<failed/>): the stream machine says so ...
    link._sm_failed()  # ... and what was written counts as sent
    assert written == ["0", "1", "2", "3"] and not link.unacked and not link.queue
    link.close()
    assert gw.bounced == [] and written[-1] == "</stream:stream>"
