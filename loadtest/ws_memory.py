"""Idle memory per WebSocket connection: stanzad's own layer against aiohttp's server, beside a
plain TCP connection (issue 22: which one the connection manager's HTTP port uses).

`python -m loadtest.ws_memory [-n 2000] [tcp ws-own ws-aiohttp]` starts, for each variant, a
server process (uvloop, as the services run) and opens N connections to it from this
process; each client does what an idle browser client has done (the opening handshake, one
``<open/>`` message) and then stays quiet.  The figure is the server's RSS growth divided by
N, read from /proc after the connections settled.  What each server keeps per connection:

* ``tcp`` — an `asyncio.Protocol` holding its transport: the floor of the c2s port's shell;
* ``ws-own`` — the same Protocol after the RFC 6455 handshake with the state of
  `shared.xmpp.websocket` (a `FrameDecoder`, a `Framing`): what `WebSocketConnection` adds
  to a `C2SConnection`;
* ``ws-aiohttp`` — aiohttp's web server with a ``WebSocketResponse`` per connection, its
  handler awaiting the next message (a request, a response, a reader, a task each).

The stream machine, parser and session objects are the same on every transport and not
counted (`loadtest.conn_memory` has them).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time

from shared.xmpp.websocket import SUBPROTOCOL, FrameDecoder, Framing, accept_key

OPEN = b'<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="localhost" version="1.0"/>'


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# ---- servers (run in a child process) -------------------------------------------------------


class _Tcp(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        pass


class _OwnWs(asyncio.Protocol):
    __slots__ = ("_buf", "decoder", "framing", "transport")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._buf: bytes | None = b""
        self.decoder = FrameDecoder(256 * 1024)
        self.framing = Framing()

    def data_received(self, data: bytes) -> None:
        if self._buf is None:
            self.decoder.feed(data)
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return
        key = b""
        for line in self._buf[:end].split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        self._buf = None
        accept = accept_key(key.decode()) or ""
        self.transport.write(  # type: ignore[attr-defined]
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept.encode() + b"\r\nSec-WebSocket-Protocol: "
            + SUBPROTOCOL.encode() + b"\r\n\r\n")


def _serve(variant: str, port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if variant == "ws-aiohttp":
            from aiohttp import web

            async def handler(request: web.Request) -> web.WebSocketResponse:
                ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), heartbeat=None)
                await ws.prepare(request)
                async for _msg in ws:
                    pass
                return ws

            app = web.Application()
            app.router.add_get("/xmpp-websocket", handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        else:
            factory = _Tcp if variant == "tcp" else _OwnWs
            await loop.create_server(factory, "127.0.0.1", port, backlog=4096)
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


# ---- clients (this process) -------------------------------------------------------------------


def _masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + body


async def _client(port: int, ws: bool) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if not ws:
        writer.write(OPEN)
        return writer
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET /xmpp-websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
                 + key + b"\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 101 " in head.split(b"\r\n", 1)[0], head
    writer.write(_masked_text(OPEN))
    return writer


async def measure(variant: str, n: int) -> float:
    from devtools.localservers import free_port

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.ws_memory", "--serve", variant, "--port", str(port),
        stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
        ws = variant != "tcp"
        warm = [await _client(port, ws) for _ in range(50)]
        await asyncio.sleep(1)
        before = _rss_kib(proc.pid)
        writers = []
        for i in range(0, n, 100):
            writers += await asyncio.gather(*(_client(port, ws) for _ in range(min(100, n - i))))
        await asyncio.sleep(2)  # settled: handshakes done, handler tasks parked
        after = _rss_kib(proc.pid)
        for w in writers + warm:
            w.close()
        return (after - before) / n
    finally:
        proc.kill()
        await proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="connections per variant (max 10,000)")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("variants", nargs="*", default=["tcp", "ws-own", "ws-aiohttp"])
    args = ap.parse_args()
    if args.serve:
        _serve(args.serve, args.port)
        return
    n = max(1, min(args.n, 10_000))
    print(f"| variant | KiB of server RSS per idle connection (n = {n:,}) |\n|---|---|")
    for variant in args.variants:
        started = time.monotonic()
        kib = asyncio.run(measure(variant, n))
        print(f"| {variant} | {kib:.2f} |  <!-- {time.monotonic() - started:.0f} s -->",
              flush=True)


if __name__ == "__main__":
    main()
