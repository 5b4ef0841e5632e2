"""The input/output plumbing every sans-I/O stream machine shares (c2s, s2s both ways).

Bytes go in with `receive_data` (parse errors are queued as items, so they surface in order),
events come out of `next_event` one at a time, bytes to write are taken with `data_to_send`.
A subclass provides `_handle` (one parsed item → an event or None), `_fail` (a stream error →
the final event), and says when input is closed or paused (waiting for its caller).
`ServingStream` adds what the two answering machines (c2s, inbound s2s) share: their states,
our stream header before anything else, and the ways a stream ends.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from typing import Any

from shared.xmpp import ns
from shared.xmpp.errors import StreamError, StreamErrorCondition
from shared.xmpp.parser import ParserLimits, StreamParser

STREAM_CLOSE: bytes = b"</stream:stream>"
TLS_FAILURE: bytes = f'<failure xmlns="{ns.TLS}"/>'.encode()


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The stream is over; write what is left and close the transport."""

    error: StreamErrorCondition | None


class StreamIO:
    __slots__ = ()  # subclasses with many instances (c2s) declare theirs
    _parser: StreamParser
    # lists, not deques: a few items at a time, and an empty deque costs 624 bytes against a
    # list's 56, per connection
    _pending: list[object]
    _ready: list[Any]
    _out: list[bytes]

    def _input_closed(self) -> bool:
        raise NotImplementedError

    def _input_paused(self) -> bool:
        """True while the machine waits for its caller (or is closed)."""
        raise NotImplementedError

    def _handle(self, item: object) -> Any:
        raise NotImplementedError

    def _fail(self, exc: StreamError) -> Any:
        raise NotImplementedError

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the socket.  Parse errors become a stream-ending event."""
        if self._input_closed():
            return
        try:
            self._pending.extend(self._parser.feed(data))
        except StreamError as exc:
            self._pending.append(exc)

    @property
    def input_failed(self) -> bool:
        """The input already holds a stream error (queued behind what came before it)."""
        return bool(self._pending) and isinstance(self._pending[-1], StreamError)

    def next_event(self) -> Any:
        """The next event, or None when more data (or an answer from the caller) is needed."""
        if self._ready:
            return self._ready.pop(0)
        while self._pending and not self._input_paused():
            item = self._pending.pop(0)
            try:
                event = self._handle(item)
            except StreamError as exc:
                return self._fail(exc)
            if event is not None:
                return event
        return self._ready.pop(0) if self._ready else None

    def hibernate(self) -> bool:
        """Free the parser of an idle stream (`StreamParser.hibernate`); False when busy."""
        return not self._pending and not self._ready and self._parser.hibernate()

    def release(self) -> None:
        """The connection is gone: free the parser now (`StreamParser.release`)."""
        self._parser.release()

    def _new_parser(self, limits: ParserLimits) -> None:
        """RFC 6120 §4.3.3: a restarted stream gets a fresh parser; the old one is released."""
        self._parser.release()
        self._parser = StreamParser(limits)

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out


class State(enum.Enum):
    """Where an answering stream (c2s, inbound s2s) is."""

    HEADER = "header"  # waiting for the (next) stream header
    OPEN = "open"  # header received, features sent
    WAITING = "waiting"  # the caller owes us an answer
    CLOSED = "closed"


class ServingStream(StreamIO):
    """A stream that answers its peer's header: c2s and inbound s2s.

    A subclass sets `state`, `stream_id` and `_header_sent` in its constructor and provides
    `_header` (our stream header, given the peer's address if known).
    """

    __slots__ = ()
    state: State
    stream_id: str
    _header_sent: bool
    _STREAM_ID_BYTES = 16

    def _header(self, peer: str | None) -> bytes:
        raise NotImplementedError

    def _input_closed(self) -> bool:
        return self.state is State.CLOSED

    def _input_paused(self) -> bool:
        return self.state in (State.WAITING, State.CLOSED)

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def close(
        self,
        condition: StreamErrorCondition | None = None,
        text: str | None = None,
        content: str = "",
    ) -> None:
        """Close the stream from our side, with a stream error or cleanly."""
        if self.state is State.CLOSED:
            return
        if condition is not None:
            self._fail(StreamError(condition, text, content))
        else:
            self._end_stream()

    def _restart_with(self, limits: ParserLimits) -> None:
        """RFC 6120 §4.3.3: a new stream on the same connection, with a fresh parser."""
        self._new_parser(limits)
        self._pending.clear()
        self._header_sent = False
        self.state = State.HEADER

    def _ensure_header(self, peer: str | None = None) -> None:
        """RFC 6120 §4.9.1.3: even an error is preceded by our stream header."""
        if self._header_sent:
            return
        self._header_sent = True
        self.stream_id = secrets.token_urlsafe(self._STREAM_ID_BYTES)
        self._out.append(self._header(peer))

    def _end_stream(self) -> StreamEnded:
        """Close our side cleanly (RFC 6120 §4.4), the header first if none was sent."""
        self._ensure_header()
        self._out.append(STREAM_CLOSE)
        self.state = State.CLOSED
        return StreamEnded(None)

    def _refuse_starttls(self) -> StreamEnded:
        """RFC 6120 §5.4.2.2: a <failure/>, then the stream is closed."""
        self._out.append(TLS_FAILURE + STREAM_CLOSE)
        self.state = State.CLOSED
        return StreamEnded(StreamErrorCondition.POLICY_VIOLATION)

    def _fail(self, exc: StreamError) -> StreamEnded:
        """RFC 6120 §4.9.1.1: a stream error, then the closing tag."""
        self._ensure_header()
        self._out.append(exc.to_xml())
        self._out.append(STREAM_CLOSE)
        self.state = State.CLOSED
        self._pending.clear()
        return StreamEnded(exc.condition)
