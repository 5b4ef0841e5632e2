"""Bytes written to an inactive client in a presence-heavy scenario, with and without
XEP-0352 Client State Indication.

Starts a local cluster (nats-server, redis-server, PostgreSQL, router, presence, roster, one
connection manager) on free loopback ports.  A watcher account has CONTACTS contacts (a
'both' subscription each); it logs in, sends initial presence and, in the CSI run, says
<inactive/>.  Each contact then logs in and changes its presence UPDATES times.  Once the
connection manager has handled every one of those presences for the watcher, the watcher
says <active/> and pings; the script prints the plaintext bytes (and presence stanzas) the
watcher received while it was inactive and after it became active, for both runs.

    .venv/bin/python -m loadtest.csi_presence --contacts 20 --updates 10

Bounded: at most 200 contacts x 100 updates, each wait at most --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.store.accounts import AccountStore  # noqa: E402
from shared.store.pg.database import connect as db_connect  # noqa: E402
from shared.store.roster import RosterItem, RosterStore  # noqa: E402
from shared.xmpp.credentials import derive_credentials  # noqa: E402
from shared.xmpp.subscription import State, Subscription  # noqa: E402
from tests.support.cluster import Cluster, metric_value, new_cluster  # noqa: E402
from tests.support.xmpp import RawClient, raw_login  # noqa: E402

MAX_CONTACTS = 200
MAX_UPDATES = 100


class Counter:
    """Reads a stream to the end, counting bytes and presence stanzas, marking a point."""

    def __init__(self, raw: RawClient) -> None:
        self.raw = raw
        self.data = b""
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.raw.reader is not None
        while chunk := await self.raw.reader.read(65536):
            self.data += chunk

    async def until(self, needle: bytes, start: int, seconds: float) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        while needle not in self.data[start:]:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{needle!r} not received")
            await asyncio.sleep(0.02)


async def accounts(cluster: Cluster, contacts: int, tag: str) -> tuple[str, list[str]]:
    db = await db_connect(cluster.database_url, "loadtest", size=1)
    store, rosters = AccountStore(db, "loadtest"), RosterStore(db, "loadtest")
    creds = derive_credentials("pw", 4096)
    watcher = f"watcher-{tag}@localhost"
    await store.create(watcher, creds)
    others = []
    for i in range(contacts):
        jid = f"contact{i}-{tag}@localhost"
        await store.create(jid, creds)
        both = State(Subscription.BOTH)
        await rosters.put(watcher, RosterItem(jid, state=both))
        await rosters.put(jid, RosterItem(watcher, state=both))
        others.append(jid)
    await db.close()
    return watcher, others


async def run(cluster: Cluster, csi: bool, contacts: int, updates: int, seconds: float
              ) -> tuple[int, int, int, int]:
    """(bytes while inactive, presences then, bytes after <active/>, presences then)."""
    watcher, others = await accounts(cluster, contacts, "csi" if csi else "off")
    port = cluster.c2s_port
    raw = RawClient("127.0.0.1", port)
    await raw_login(raw, watcher, "pw", "phone")
    await raw.send(b"<presence/>")
    await raw.read_until(b"<presence")
    if csi:
        await raw.send(b"<inactive xmlns='urn:xmpp:csi:0'/>")
    counter = Counter(raw)
    replaced0 = metric_value(cluster.metrics("cm-1"), "stanzad_cm_csi_replaced_total")
    peers = []
    try:
        for jid in others:
            peer = RawClient("127.0.0.1", port)
            await raw_login(peer, jid, "pw", "r")
            peers.append(peer)
        for n in range(updates + 1):  # initial presence, then the updates
            for peer in peers:
                await peer.send(f"<presence><status>update {n} of {updates}</status>"
                                "</presence>".encode())
        last = f"<status>update {updates} of {updates}</status>".encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:  # every presence handled for the watcher (held, replaced or written)
            if csi:
                replaced = metric_value(cluster.metrics("cm-1"), "stanzad_cm_csi_replaced_total")
                if replaced - replaced0 >= contacts * updates:
                    break
            elif counter.data.count(last) >= contacts:
                break
            if loop.time() > deadline:
                raise TimeoutError("the presences did not all arrive")
            await asyncio.sleep(0.05)
        inactive_bytes, inactive_presences = len(counter.data), counter.data.count(b"<presence")
        mark = len(counter.data)
        await raw.send(b"<active xmlns='urn:xmpp:csi:0'/>"
                       b"<iq type='get' id='end'><ping xmlns='urn:xmpp:ping'/></iq>")
        await counter.until(b'id="end"', mark, seconds)
        after = counter.data[mark:]
        return inactive_bytes, inactive_presences, len(after), after.count(b"<presence")
    finally:
        for peer in peers:
            await peer.close()
        counter.task.cancel()
        await raw.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=20)
    parser.add_argument("--updates", type=int, default=10, help="presence changes per contact")
    parser.add_argument("--seconds", type=float, default=120, help="longest wait, each step")
    args = parser.parse_args()
    if not (1 <= args.contacts <= MAX_CONTACTS and 1 <= args.updates <= MAX_UPDATES):
        raise SystemExit(f"bounded runs only: 1..{MAX_CONTACTS} contacts, "
                         f"1..{MAX_UPDATES} updates")
    cluster = new_cluster()
    started = time.monotonic()
    try:
        cluster.start_servers()
        cluster.start_core()
        cluster.start_cm()
        results = {mode: asyncio.run(run(cluster, mode, args.contacts, args.updates,
                                         args.seconds))
                   for mode in (False, True)}
    finally:
        cluster.stop()
    print(f"contacts={args.contacts} updates/contact={args.updates} "
          f"({args.contacts * (args.updates + 1)} presences to the watcher) "
          f"in {time.monotonic() - started:.1f} s")
    for csi, (b_in, p_in, b_out, p_out) in results.items():
        print(f"{'csi' if csi else 'off'}: while inactive {b_in} bytes ({p_in} presences); "
              f"after <active/> {b_out} bytes ({p_out} presences); total {b_in + b_out} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
