"""Profanity (the Debian package, a terminal client on libstrophe) logs in over direct TLS
(XEP-0368: its ``tls.policy`` ``legacy``, TLS from the first byte) and its message reaches a
slixmpp client.

Profanity needs a terminal: it runs on a pseudo-terminal (`pty`), with a home of its own
whose accounts file names the server, the direct TLS port and the password, started with
``-a`` so it connects at once.  The cluster's certificate is self-signed, so profanity asks
about it; the test answers ``/tls allow`` (this run only).  Without profanity installed the
test skips with the reason."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import shutil
import struct
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Users
from tests.integration.test_chat import _wait_available
from tests.support.cluster import Cluster, metric_value
from tests.support.xmpp import Client

pytestmark = pytest.mark.skipif(shutil.which("profanity") is None,
                                reason="profanity (Debian package) is not installed")

# terminal control sequences (CSI, OSC, charset and keypad switches) between the words
_CONTROL = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>78])")
_TLS_PROMPT = re.compile(rb"/tls\s*allow")


class Profanity:
    """One profanity process on a pseudo-terminal; what it printed, control sequences
    removed (the last 256 KiB)."""

    def __init__(self, proc: asyncio.subprocess.Process, master: int) -> None:
        self.proc = proc
        self.master = master
        self.screen = b""
        self.changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the process is gone (EIO on Linux)
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
            return
        self.screen = (self.screen + _CONTROL.sub(b"", data))[-256 * 1024:]
        self.changed.set()

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    async def seen(self, pattern: re.Pattern[bytes], start: int = 0) -> bool:
        """Waits for the next output; whether ``pattern`` is on screen from ``start``."""
        self.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), 1)
        return pattern.search(self.screen, start) is not None

    @classmethod
    @contextlib.asynccontextmanager
    async def spawn(cls, home: Path, jid: str, password: str, port: int
                    ) -> AsyncIterator[Profanity]:
        data = home / "data" / "profanity"
        data.mkdir(parents=True)
        (home / "config" / "profanity").mkdir(parents=True)
        (data / "accounts").write_text(
            f"[{jid}]\nenabled=true\njid={jid}\nresource=profanity\nserver=127.0.0.1\n"
            f"port={port}\npassword={password}\ntls.policy=legacy\n")
        env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
               "XDG_DATA_HOME": str(home / "data"), "TERM": "xterm", "LANG": "C.UTF-8",
               "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
        os.set_blocking(master, False)
        proc = await asyncio.create_subprocess_exec(
            "profanity", "-a", jid, stdin=slave, stdout=slave, stderr=slave, env=env,
            cwd=home, start_new_session=True)
        os.close(slave)
        prof = cls(proc, master)
        try:
            yield prof
        finally:
            with contextlib.suppress(OSError):
                prof.type("/quit")
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            asyncio.get_running_loop().remove_reader(master)
            os.close(master)


async def test_profanity_logs_in_over_direct_tls_and_sends_a_message(
    cluster: Cluster, users: Users, tmp_path: Path
) -> None:
    alice_jid, alice_pw = await users.create("profanity")
    bob_jid, bob_pw = await users.create("profbob")
    bob = Client(bob_jid + "/tcp", bob_pw)
    await bob.login("127.0.0.1", cluster.c2s_port)
    before = metric_value(cluster.metrics("cm-1"), "stanzad_cm_transport_opened_total",
                          transport="tls")
    try:
        async with Profanity.spawn(tmp_path, alice_jid, alice_pw,
                                   cluster.tls_ports["cm-1"]) as prof:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60  # a hang guard: logging in takes a few seconds
            allowed = False
            while True:
                if not allowed and await prof.seen(_TLS_PROMPT):  # the self-signed cert
                    prof.type("/tls allow")
                    allowed = True
                try:
                    await _wait_available(users, [alice_jid], timeout=1)
                    break
                except TimeoutError:
                    pass
                assert prof.proc.returncode is None, prof.screen[-4000:]
                assert b"Login failed" not in prof.screen, prof.screen[-4000:]
                assert loop.time() < deadline, prof.screen[-4000:]
            assert allowed  # it asked about the certificate and took the answer
            await _wait_available(users, [bob_jid])
            prof.type(f"/msg {bob_jid}/tcp hello from profanity")
            msg = await asyncio.wait_for(bob.messages.get(), 20)
            assert msg["body"] == "hello from profanity"
            assert msg["from"].bare == alice_jid
    finally:
        await bob.logout()
    after = metric_value(cluster.metrics("cm-1"), "stanzad_cm_transport_opened_total",
                         transport="tls")
    assert after > before  # it came in on the direct TLS port
