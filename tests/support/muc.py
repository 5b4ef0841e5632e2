"""A raw client for multi-user chat tests: everything the server wrote is kept, and
`expect` waits for a stanza matching a regular expression, consuming the stream up to it."""

from __future__ import annotations

import asyncio
import re

from tests.support.xmpp import RawClient, raw_login


class Occupant:
    def __init__(self, port: int, jid: str, password: str, resource: str = "r") -> None:
        self.client = RawClient("127.0.0.1", port, jid.partition("@")[2])
        self.jid, self.password, self.resource = jid, password, resource
        self.full = f"{jid}/{resource}"
        self.buf = b""
        self.pos = 0

    async def login(self, presence: bool = True) -> Occupant:
        """Log in and, as clients do before they join rooms, send initial presence (its end
        is what makes the presence service tell the rooms when the session ends)."""
        reply = await raw_login(self.client, self.jid, self.password, self.resource)
        assert b"<jid>" in reply, reply
        if presence:
            await self.send("<presence/>")
        return self

    async def send(self, data: str) -> None:
        await self.client.send(data.encode())

    async def _read(self, timeout: float) -> None:
        assert self.client.reader is not None
        chunk = await asyncio.wait_for(self.client.reader.read(65536), timeout)
        if not chunk:
            raise ConnectionError("stream closed")
        self.buf += chunk

    async def expect(self, pattern: str, timeout: float = 15) -> re.Match[bytes]:
        """The first match of ``pattern`` (a regex over the raw XML, DOTALL) after what the
        previous `expect` consumed."""
        rx = re.compile(pattern.encode(), re.DOTALL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = rx.search(self.buf, self.pos)
            if found is not None:
                self.pos = found.end()
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{pattern!r} not seen; after the cursor: "
                                   f"{self.buf[self.pos:][-1500:]!r}")
            try:
                await self._read(remaining)
            except TimeoutError:
                continue

    def seen(self, pattern: str) -> bool:
        """Whether ``pattern`` occurs anywhere in what was read so far (no waiting)."""
        return re.search(pattern.encode(), self.buf, re.DOTALL) is not None

    async def settle(self, seconds: float = 0.5) -> None:
        """Read what arrives for ``seconds`` (to assert that something did not)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            try:
                await self._read(remaining)
            except TimeoutError:
                return

    async def join(self, room: str, nick: str, extra: str = "", expect: bool = True) -> None:
        await self.send(f"<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'>"
                        f"{extra}</x></presence>")
        if expect:
            await self.expect(r"<presence[^>]*from=\"" + re.escape(f"{room}/{nick}")
                              + r"\".*?<status code=\"110\"/>.*?</presence>")
            await self.expect(r"<subject")

    async def create(self, room: str, nick: str) -> None:
        """Create a room and accept the default configuration (XEP-0045 §10.1.2)."""
        await self.send(f"<presence to='{room}/{nick}'>"
                        "<x xmlns='http://jabber.org/protocol/muc'/></presence>")
        await self.expect(r"<status code=\"201\"/>")
        await self.send(f"<iq type='set' to='{room}' id='create-{nick}'>"
                        "<query xmlns='http://jabber.org/protocol/muc#owner'>"
                        "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
        await self.expect(r"<iq[^>]*id=\"create-" + re.escape(nick) + r"\"[^>]*type=\"result\""
                          r"|<iq[^>]*type=\"result\"[^>]*id=\"create-" + re.escape(nick) + "\"")

    async def close(self) -> None:
        await self.client.close()
