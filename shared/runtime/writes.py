"""One socket write per event-loop tick: the write batching both socket shells share.

A stream answers in several pieces (a result, a push, an <r/>); queued with `write` during
one tick they leave in one `transport.write` (one TLS record, one syscall) when the loop
runs `_flush` at the end of the tick.  The c2s and s2s connections mix this in; they keep
their own ``__slots__`` for the three attributes below (one per connection: no dict).
"""

from __future__ import annotations

import asyncio


class BatchedWrites:
    __slots__ = ()
    transport: asyncio.Transport | None
    _wbuf: list[bytes]  # queued since the last flush
    _flush_scheduled: bool
    _closing: bool  # once set, nothing more is queued

    def write(self, data: bytes) -> None:
        """Queue bytes for the socket; they go out at the end of this event-loop tick."""
        if not data or self._closing:
            return
        self._wbuf.append(data)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _before_flush(self) -> None:
        """Subclasses: last words of this batch (an XEP-0198 <r/>) go into ``_wbuf``."""

    def _write_out(self, transport: asyncio.Transport, data: bytes) -> None:
        """Subclasses with their own TLS layer or accounting: put ``data`` on the wire."""
        transport.write(data)

    def _flush(self) -> None:
        """Write what is queued now, in one write."""
        self._flush_scheduled = False
        self._before_flush()
        transport = self.transport
        if not self._wbuf or transport is None or transport.is_closing():
            self._wbuf.clear()
            return
        data = b"".join(self._wbuf) if len(self._wbuf) > 1 else self._wbuf[0]
        self._wbuf.clear()
        self._write_out(transport, data)
