"""One socket write per event-loop tick (shared/runtime/writes.py)."""

from __future__ import annotations

import asyncio

from shared.runtime.writes import BatchedWrites


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing


class Shell(BatchedWrites):
    __slots__ = ("_closing", "_flush_scheduled", "_wbuf", "transport")

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._wbuf = []
        self._flush_scheduled = False
        self._closing = False


async def test_writes_of_one_tick_leave_in_one_write() -> None:
    transport = FakeTransport()
    shell = Shell(transport)
    shell.write(b"<a/>")
    shell.write(b"")  # nothing to queue
    shell.write(b"<b/>")
    assert transport.writes == []  # not before the end of the tick
    await asyncio.sleep(0)
    assert transport.writes == [b"<a/><b/>"]
    shell.write(b"<c/>")
    await asyncio.sleep(0)
    assert transport.writes == [b"<a/><b/>", b"<c/>"]


async def test_nothing_is_queued_once_closing_or_written_to_a_closing_transport() -> None:
    transport = FakeTransport()
    shell = Shell(transport)
    shell.write(b"<a/>")
    transport.closing = True
    await asyncio.sleep(0)
    shell._closing = True
    shell.write(b"<b/>")
    await asyncio.sleep(0)
    assert transport.writes == [] and shell._wbuf == []
