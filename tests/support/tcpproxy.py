"""A TCP proxy on loopback that a test can break: connections through it can be made to
swallow what they carry (a path that silently stopped delivering) or be cut (both sides
reset), as networks do to long-lived s2s streams, and new ones can be left hanging after
the TCP handshake (a peer that accepts and then says nothing).  TLS passes through
untouched."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Pipe:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    swallow: bool = False  # drop what comes from the client (the initiating side)
    swallow_back: bool = False  # drop what comes back from upstream
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class TCPProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = 0
        self.pipes: list[_Pipe] = []
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._open = asyncio.Event()  # cleared: new connections wait (`stall`)
        self._open.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        self.accepted += 1
        await self._open.wait()  # stalled: accepted, nothing forwarded either way yet
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.close()
            return
        pipe = _Pipe(writer, up_writer)
        self.pipes.append(pipe)
        pipe.tasks = [
            asyncio.create_task(self._copy(pipe, reader, up_writer, from_client=True)),
            asyncio.create_task(self._copy(pipe, up_reader, writer, from_client=False)),
        ]

    async def _copy(self, pipe: _Pipe, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, from_client: bool) -> None:
        try:
            while data := await reader.read(65536):
                if pipe.swallow if from_client else pipe.swallow_back:
                    continue
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._cut(pipe)

    def stall(self) -> None:
        """Connections made from now on are accepted and then left hanging: nothing reaches
        the target or comes back until `resume` (what was sent meanwhile is then passed)."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def swallow_open(self) -> None:
        """What the initiating side sends on the connections open now is never delivered
        (new connections are not affected); nobody is told."""
        for pipe in self.pipes:
            pipe.swallow = True

    def swallow_answers(self) -> None:
        """What comes back on the connections open now is never delivered: the initiating
        side's stanzas arrive, the answers (acks) do not."""
        for pipe in self.pipes:
            pipe.swallow_back = True

    def cut_all(self) -> None:
        """Reset every open connection, both sides (RST, as a failing path does)."""
        for pipe in list(self.pipes):
            self._cut(pipe)

    def _cut(self, pipe: _Pipe) -> None:
        if pipe not in self.pipes:
            return
        self.pipes.remove(pipe)
        for w in (pipe.client, pipe.upstream):
            sock = w.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0: close() sends RST
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            w.transport.abort()
        for task in pipe.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    def stop(self) -> None:
        self.cut_all()
        if self._server is not None:
            self._server.close()
