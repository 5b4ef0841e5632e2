"""The outbound link of one remote domain, with a stand-in gateway: the bounded queue while
connecting, bounces when setting up fails (RFC 6120 §8.3.3.16-17), and what happens to
unacked stanzas when a stream with XEP-0198 acks breaks.  With durable delivery: when each
stanza's hold on its stream message is settled (acked by the peer, written to a peer without
XEP-0198, bounced) or abandoned (the partition given up), and a full queue pausing the
partition instead of bouncing."""

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
    durable: bool = False
    links: dict[tuple[str, str], Link] = field(default_factory=dict)
    bounced: list[tuple[str, StanzaErrorCondition]] = field(default_factory=list)
    full: list[bool] = field(default_factory=list)  # queue_full calls
    events: list[str] = field(default_factory=list)  # bounces and holds, in order

    def bounce(self, env: Envelope, condition: StanzaErrorCondition) -> None:
        self.bounced.append((env.id, condition))
        self.events.append(f"bounce {env.id}")

    def should_verify(self, domain: str) -> bool:
        return False

    def queue_full(self, link: Link, full: bool) -> None:
        self.full.append(full)


class _Hold:
    """Records what the link does with a stanza's hold (shared/bus/client.py `Hold`)."""

    def __init__(self, gw: _Gateway, name: str) -> None:
        self.gw, self.name = gw, name

    def settle(self) -> None:
        self.gw.events.append(f"settle {self.name}")

    def abandon(self) -> None:
        self.gw.events.append(f"abandon {self.name}")


class _Conn:
    """A ready outbound stream, XEP-0198 on or off; what it was given to write."""

    def __init__(self, sm: bool) -> None:
        self.sm = sm
        self.written: list[str] = []
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    class stream:  # the attribute the link looks at
        ready = True

    def send(self, payload: bytes) -> None:
        self.written.append(payload.decode())

    def close(self) -> None:
        self.written.append("</stream:stream>")


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


def _connected(gw: _Gateway, sm: bool) -> tuple[Link, _Conn]:
    link = gw.links[("a.example", "b.example")] = Link(gw, "b.example")  # type: ignore[arg-type]
    link.task.cancel()
    conn = _Conn(sm)
    link.conn = conn  # type: ignore[assignment]
    return link, conn


def _send(link: Link, gw: _Gateway, i: str) -> None:
    link.send(_env(i)._replace(payload=i.encode()), _Hold(gw, i))  # type: ignore[arg-type]


async def test_durable_a_stanza_is_settled_only_when_the_peer_acks_it_xep0198() -> None:
    gw = _Gateway(_Settings(s2s_connect_timeout_s=30, s2s_sm_max_unacked=2), durable=True)
    link, conn = _connected(gw, sm=True)
    for i in ("0", "1", "2"):
        _send(link, gw, i)
    assert conn.written == ["0", "1"] and gw.events == []  # written, not yet acked
    link._acked(1)
    assert gw.events == ["settle 0"] and conn.written == ["0", "1", "2"]
    link._acked(2)
    assert gw.events == ["settle 0", "settle 1", "settle 2"]


async def test_durable_a_peer_without_xep0198_settles_at_the_write() -> None:
    gw = _Gateway(_Settings(s2s_connect_timeout_s=30), durable=True)
    link, conn = _connected(gw, sm=False)
    _send(link, gw, "0")
    assert conn.written == ["0"] and gw.events == ["settle 0"]


async def test_durable_a_full_queue_pauses_instead_of_bouncing_and_resumes_at_half() -> None:
    """While connecting: nothing bounced beyond STANZAD_S2S_MAX_QUEUE, the partition paused;
    once the stream is up and the queue half empty, resumed."""
    gw = _Gateway(_Settings(s2s_max_queue=4, s2s_connect_timeout_s=30), durable=True)
    link = Link(gw, "b.example")  # type: ignore[arg-type]
    link.task.cancel()
    for i in range(6):
        _send(link, gw, str(i))
    assert gw.bounced == [] and len(link.queue) == 6 and gw.full == [True]
    conn = _Conn(sm=False)
    link.conn = conn  # type: ignore[assignment]
    link._drain()
    assert conn.written == [str(i) for i in range(6)] and gw.full == [True, False]
    assert gw.events == [f"settle {i}" for i in range(6)]


async def test_durable_setup_failure_bounces_then_settles_each_stanza() -> None:
    """RFC 6120 §8.3.3.17: the bounce is published before the hold is settled, so the stream
    message is acked only once the bounce is stored."""
    gw = _Gateway(_Settings(s2s_max_queue=1), durable=True)
    link = Link(gw, "b.example")  # type: ignore[arg-type]
    _send(link, gw, "0")
    _send(link, gw, "1")
    assert gw.bounced == [] and gw.full == [True]
    await asyncio.wait_for(link.task, 5)
    assert gw.events == ["bounce 0", "settle 0", "bounce 1", "settle 1"]
    assert gw.full == [True, False]


async def test_durable_close_at_hand_over_leaves_the_queue_unacked_for_the_next_owner() -> None:
    gw = _Gateway(_Settings(s2s_connect_timeout_s=30, s2s_sm_max_unacked=1), durable=True)
    link, conn = _connected(gw, sm=True)
    for i in ("0", "1"):
        _send(link, gw, i)
    link.close(bounce=False)
    # "0" was written before our </stream:stream>: sent; "1" never left: the next owner's
    assert gw.events == ["settle 0", "abandon 1"] and gw.bounced == []
    assert conn.written == ["0", "</stream:stream>"]


async def test_durable_broken_stream_carries_the_holds_to_the_new_link() -> None:
    gw = _Gateway(_Settings(s2s_connect_timeout_s=30), durable=True)
    link, _conn = _connected(gw, sm=True)
    _send(link, gw, "m1")
    link.send(_env("q1", Kind.IQ, "set"), _Hold(gw, "q1"))  # type: ignore[arg-type]
    link.done = True
    link._broken()
    assert gw.events == ["bounce q1", "settle q1"]  # an IQ set is not repeated
    new = gw.links[("a.example", "b.example")]
    assert [p.env.id for p in new.queue] == ["m1"]
    new.task.cancel()
    new.close(bounce=False)
    assert gw.events[-1] == "abandon m1"
