"""A rolling restart of a cluster's connection managers under chat load from XEP-0198
clients, counting every message: the integration test and loadtest/rolling_restart.py share
it.

Each client is a slixmpp client with stream management (resumption on); client i starts on
connection manager i mod n and sends numbered messages to client i+1.  When its connection
closes (SIGTERM of its pod closes it without </stream:stream>, XEP-0198 §5) it reconnects to
the next connection manager and resumes there; slixmpp re-sends what the server had not
acknowledged (`<resumed h/>`), the server what the client had not.  The connection managers
get SIGTERM one after the other, each started again (same port) before the next goes, the
k-th of n once k/(n+1) of the messages were sent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from slixmpp import Iq, Message, Presence

from tests.support.cluster import Cluster
from tests.support.xmpp import Client

STALLED_S = 30.0  # the end waits this long for messages that stopped arriving


class SMChatter(Client):
    """A client with XEP-0198 resumption that follows the cluster's connection managers:
    on a lost connection it connects to the next port of ``ports`` and resumes."""

    def __init__(self, jid: str, password: str, ports: list[int], index: int) -> None:
        super().__init__(f"{jid}/rolling", password)
        self.register_plugin("xep_0198")
        self.ports = ports
        self.at = index % len(ports)
        self.online = asyncio.Event()  # between <enabled/> or <resumed/> and a lost connection
        self.received: dict[str, list[int]] = defaultdict(list)  # bare sender → numbers
        self.resumptions = 0
        self.failed: list[str] = []
        self.add_event_handler("sm_enabled", lambda *_: self.online.set())
        self.add_event_handler("session_resumed", self._resumed)
        self.add_event_handler("sm_failed", lambda st: self.failed.append(str(st)))
        self.add_event_handler("disconnected", self._lost)
        self.add_event_handler("message", self._record)
        # XEP-0198 §5 on the client's side: slixmpp 1.17 hands a stanza from its send queue
        # to the wire in a later loop iteration than `send`; when the connection was lost in
        # between, its SM plugin is off (the stanza is not kept for re-sending) and the write
        # raises NotConnectedError: the message is gone.  This filter, after the plugin's,
        # keeps such a stanza in the plugin's unacknowledged queue instead, as if written
        # into the broken connection: <resumed h/> then re-sends it, in order.
        self.kept: list[int] = []  # our numbered messages saved that way
        self.add_filter("out_sync", self._keep_unsent)
        self.closing = False

    def _keep_unsent(self, stanza: Any) -> Any:
        plugin = self.plugin["xep_0198"]
        if (self.transport is not None or plugin.enabled_out or not plugin.sm_id
                or not isinstance(stanza, Message | Presence | Iq)):
            return stanza
        plugin.seq = (plugin.seq + 1) % 2**32
        plugin.unacked_queue.append((plugin.seq, stanza))
        if isinstance(stanza, Message) and str(stanza["body"]).isdigit():
            self.kept.append(int(str(stanza["body"])))
        return None  # not written now: after <resumed/>

    def _record(self, msg: Any) -> None:
        body = str(msg["body"])
        if body.isdigit():
            self.received[str(msg["from"].bare)].append(int(body))

    def _resumed(self, *_: Any) -> None:
        self.resumptions += 1
        self.online.set()

    def _lost(self, *_: Any) -> None:
        self.online.clear()
        if self.closing:
            return
        self.at = (self.at + 1) % len(self.ports)
        # after a short pause: the pod being stopped may still be closing its listener
        asyncio.get_running_loop().call_later(0.2, self._reconnect)

    def _reconnect(self) -> None:
        if not self.closing:
            self.connect("127.0.0.1", self.ports[self.at])

    async def start(self, timeout_s: float = 30) -> None:
        await self.login("127.0.0.1", self.ports[self.at], timeout=timeout_s)
        await asyncio.wait_for(self.online.wait(), timeout_s)

    async def close(self) -> None:
        self.closing = True
        await self.logout()


@dataclass
class Counts:
    sent: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0  # senders whose messages did not arrive in order
    resumptions: int = 0
    sm_failed: int = 0
    restarts: list[tuple[str, float]] = field(default_factory=list)  # (cm, seconds to exit)
    missing: list[tuple[str, int]] = field(default_factory=list)  # (sender, number)
    doubled: list[tuple[str, int, int]] = field(default_factory=list)  # (sender, number, times)
    # (sender, number) whose turn in the sender's send queue came after its connection was
    # lost: kept for re-sending after <resumed/> (`SMChatter._keep_unsent`)
    kept: list[tuple[str, int]] = field(default_factory=list)

    def line(self) -> str:
        return (f"sent {self.sent}, received {self.received}, lost {self.lost}, "
                f"duplicated {self.duplicated}, out of order {self.out_of_order}, "
                f"resumptions {self.resumptions}, sm failed {self.sm_failed}")

    def details(self) -> list[str]:
        """One line per message lost or duplicated, naming it (sender, number)."""
        kept = set(self.kept)
        lines = [f"lost: {sender} #{n}"
                 + (" (kept by its client after its connection was lost)"
                    if (sender, n) in kept else "")
                 for sender, n in self.missing]
        lines += [f"duplicated: {sender} #{n} arrived {times} times"
                  for sender, n, times in self.doubled]
        return lines


def count(sent: dict[str, int], clients: list[SMChatter], senders: dict[str, str]) -> Counts:
    """``sent``: sender bare JID → how many it sent (numbered from 0); ``senders``: receiver
    bare JID → its sender's bare JID."""
    counts = Counts(sent=sum(sent.values()))
    for client in clients:
        me = client.boundjid.bare
        counts.kept += [(me, n) for n in client.kept]
        sender = senders[me]
        got = client.received.get(sender, [])
        counts.received += len(got)
        unique = set(got)
        counts.duplicated += len(got) - len(unique)
        missing = sorted(set(range(sent[sender])) - unique)
        counts.lost += len(missing)
        counts.missing += [(sender, n) for n in missing]
        counts.doubled += [(sender, n, times) for n, times in sorted(Counter(got).items())
                           if times > 1]
        counts.out_of_order += got != sorted(got)
        counts.resumptions += client.resumptions
        counts.sm_failed += len(client.failed)
    return counts


async def rolling_restart(cluster: Cluster, cms: list[str], accounts: list[tuple[str, str]],
                          messages: int, interval_s: float = 0.02, settle_s: float = 1.0,
                          deadline_s: float = 240) -> Counts:
    """Log the accounts in as SMChatters spread over ``cms``, have each send ``messages``
    numbered messages to the next, restart every cm in turn (SIGTERM) while they chat, and
    count what arrived once everything sent arrived or ``deadline_s`` passed (a hang
    guard)."""
    ports = [int(cluster.cm_env[name]["STANZAD_C2S_PORT"]) for name in cms]
    clients = [SMChatter(jid, pw, ports, i) for i, (jid, pw) in enumerate(accounts)]
    bare = [jid for jid, _ in accounts]
    target = {bare[i]: bare[(i + 1) % len(bare)] for i in range(len(bare))}
    senders = {to: frm for frm, to in target.items()}
    sent = dict.fromkeys(bare, 0)
    give_up = time.monotonic() + deadline_s
    restarts: list[tuple[str, float]] = []
    try:
        await asyncio.gather(*(c.start() for c in clients))

        async def chat(client: SMChatter) -> None:
            me = client.boundjid.bare
            for n in range(messages):
                with contextlib.suppress(TimeoutError):  # bounded by the deadline
                    await asyncio.wait_for(client.online.wait(), give_up - time.monotonic())
                if time.monotonic() > give_up:
                    return
                client.send_message(mto=f"{target[me]}/rolling", mbody=str(n), mtype="chat")
                sent[me] = n + 1
                await asyncio.sleep(interval_s)

        total = messages * len(clients)

        async def restart_all() -> None:
            """The k-th cm goes once k+1 (n+1)ths of the messages were sent: each SIGTERM
            comes while the clients are chatting."""
            for k, name in enumerate(cms):
                mark = total * (k + 1) // (len(cms) + 1)
                while sum(sent.values()) < mark and time.monotonic() < give_up:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                took = await asyncio.to_thread(cluster.restart_cm, name)
                restarts.append((name, took))

        await asyncio.gather(restart_all(), *(chat(c) for c in clients))

        def done() -> bool:
            return all(len(set(c.received.get(senders[c.boundjid.bare], []))) >= sent[
                senders[c.boundjid.bare]] for c in clients)

        arrived, quiet = -1, 0.0
        for _ in range(max(0, int((give_up - time.monotonic()) / 0.1))):  # polls, bounded
            if done():
                break
            now = sum(len(got) for c in clients for got in c.received.values())
            quiet = quiet + 0.1 if now == arrived else 0.0
            if quiet > STALLED_S:  # what is missing by now will not come
                break
            arrived = now
            await asyncio.sleep(0.1)
        await asyncio.sleep(settle_s)  # anything arriving twice would come now
        for client in clients:  # acknowledge: nothing left to re-send at logout
            with contextlib.suppress(Exception):
                client.plugin["xep_0198"].send_ack()
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    counts = count(sent, clients, senders)
    counts.restarts = restarts
    return counts
