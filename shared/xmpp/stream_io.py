"""The input/output plumbing every sans-I/O stream machine shares (c2s, s2s both ways).

Bytes go in with `receive_data` (parse errors are queued as items, so they surface in order),
events come out of `next_event` one at a time, bytes to write are taken with `data_to_send`.
A subclass provides `_handle` (one parsed item → an event or None), `_fail` (a stream error →
the final event), and says when input is closed or paused (waiting for its caller).
"""

from __future__ import annotations

from typing import Any

from shared.xmpp.errors import StreamError
from shared.xmpp.parser import ParserLimits, StreamParser


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
