"""Micro-benchmark of the c2s stream machine: microseconds per stanza, with and without
XEP-0198 (no sockets, no event loop).

Each round feeds a bound stream 1,000 <message/> stanzas in one chunk and takes the events
(the client-to-server path), and counts 1,000 deliveries (the server-to-client path: with
stream management each is pushed on the unacknowledged queue, and an <a/> acknowledges
them every 10).  Prints the best of several rounds, per stanza:

    python -m loadtest.c2s_micro [--rounds 20]
"""

from __future__ import annotations

import argparse
import base64
import time
from collections.abc import Callable

from shared.xmpp.c2s import C2SStream, StreamConfig
from shared.xmpp.credentials import derive_credentials
from shared.xmpp.jid import JID

HEADER = (
    b"<?xml version='1.0'?><stream:stream to='example.com' version='1.0' "
    b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)
N = 1000
CONFIG = StreamConfig(domain="example.com", tls_required=False)


def _drain(stream: C2SStream) -> int:
    n = 0
    while stream.next_event() is not None:
        n += 1
    return n


def bound_stream(sm: bool) -> C2SStream:
    stream = C2SStream(CONFIG)
    stream.receive_data(HEADER)
    _drain(stream)
    token = base64.b64encode(b"\0juliet\0pencil").decode()
    stream.receive_data(
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        .encode()
    )
    stream.next_event()
    stream.credentials_loaded(derive_credentials("pencil", 4096))
    _drain(stream)
    stream.receive_data(HEADER)
    stream.receive_data(
        b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        b"<resource>r</resource></bind></iq>"
    )
    stream.next_event()
    stream.bind_succeeded(JID("juliet", "example.com", "r"))
    if sm:
        stream.receive_data(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        _drain(stream)
    stream.data_to_send()
    return stream


def best(rounds: int, sm: bool, fn: Callable[[C2SStream], None]) -> float:
    """The fastest round, per stanza, in µs (the stream is set up outside the clock)."""
    times = []
    for _ in range(rounds):
        stream = bound_stream(sm)
        started = time.perf_counter()
        fn(stream)
        times.append(time.perf_counter() - started)
    return min(times) / N * 1e6


def inbound() -> Callable[[C2SStream], None]:
    chunk = b"".join(
        f"<message to='romeo@example.com' id='m{i}' type='chat'><body>hello {i}</body>"
        "</message>".encode()
        for i in range(N)
    )

    def run(stream: C2SStream) -> None:
        stream.receive_data(chunk)
        assert _drain(stream) == N
        stream.data_to_send()

    return run


def outbound() -> Callable[[C2SStream], None]:
    payload = (
        b'<message xmlns="jabber:client" from="romeo@example.com/x" to="juliet@example.com/r" '
        b'type="chat" id="m1"><body>hello</body></message>'
    )
    acks = [f"<a xmlns='urn:xmpp:sm:3' h='{h}'/>".encode() for h in range(10, N + 1, 10)]

    def run(stream: C2SStream) -> None:
        queue = getattr(stream, "sm", None)
        wbuf: list[bytes] = []
        for i in range(N):
            # what C2SConnection.deliver does per stanza
            if queue is not None:
                queue.push(payload)
            wbuf.append(payload)
            if queue is not None and i % 10 == 9:
                stream.receive_data(acks[i // 10])
                _drain(stream)
        assert queue is None or not queue.queue

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    has_sm = hasattr(C2SStream, "sm")
    modes = [False, True] if has_sm else [False]
    for sm in modes:
        label = "sm" if sm else "plain"
        print(f"{label:5}  in: {best(args.rounds, sm, inbound()):6.2f} µs/stanza  "
              f"out: {best(args.rounds, sm, outbound()):6.2f} µs/stanza")


if __name__ == "__main__":
    main()
