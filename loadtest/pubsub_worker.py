"""A load worker whose connections subscribe to a publish-subscribe node and count its
notifications (XEP-0060), for loadtest/pubsub_fanout.py.

Two commands beside the fleet's (loadtest/worker.py): `subscribe` sends each connection's
subscribe request (XEP-0060 §6.1.1, its full JID) and waits for every answer; `notifications`
hands back, per publish, when each subscribed connection first had its notification.  A
publish is told by the publisher's time stamp in the item's payload (`<status>` of the
tool's clock in ns, as chat and presence carry it, loadtest/client.py), so arrival minus
stamp is the time from the publish to that subscriber.  Each connection counts a publish
once; a second copy is counted as a duplicate.
"""

from __future__ import annotations

import asyncio
from array import array
from functools import partial
from typing import Any, Final

from loadtest import client
from loadtest.worker import FAILED, MAX_ERRORS, RECEIVED, Worker

PUBSUB: Final = "http://jabber.org/protocol/pubsub"
SUBSCRIBE_ID: Final = "sub"
MAX_PUBLISHES: Final = 100  # distinct stamps a worker keeps


class PubsubWorker(Worker):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.subscribed: list[client.XmppConnection] = []
        self.marks: dict[int, bytearray] = {}  # per stamp: which subscribers had it
        self.times: dict[int, array[int]] = {}  # per stamp: first arrivals (ns)
        self.duplicates = 0
        self.foreign = 0  # stamps beyond MAX_PUBLISHES, not kept

    def notified(self, k: int, stamp: int, now: int) -> None:
        """Subscriber ``k`` received the notification of the publish stamped ``stamp``."""
        marks = self.marks.get(stamp)
        if marks is None:
            if len(self.marks) >= MAX_PUBLISHES:
                self.foreign += 1
                return
            marks = self.marks[stamp] = bytearray(len(self.subscribed))
            self.times[stamp] = array("q")
        if k >= len(marks):
            marks.extend(bytes(k + 1 - len(marks)))
        if marks[k]:
            self.duplicates += 1
            return
        marks[k] = 1
        self.times[stamp].append(now)
        self.count(RECEIVED)

    async def do_subscribe(self, service: str, node: str, concurrency: int, timeout_s: float
                           ) -> dict[str, Any]:
        """Subscribe every connection's full JID to ``node`` at ``service``, at most
        ``concurrency`` requests in flight; each waits for its answer (the subscription is
        stored then, XEP-0060 §6.1.2)."""
        gate = asyncio.Semaphore(max(1, concurrency))
        errors: list[str] = []
        done: list[client.XmppConnection] = []

        async def one(conn: client.XmppConnection) -> None:
            iq = (f"<iq type='set' id='{SUBSCRIBE_ID}' to='{service}'><pubsub xmlns='{PUBSUB}'>"
                  f"<subscribe node='{node}' jid='{conn.jid}'/></pubsub></iq>").encode()
            async with gate:
                try:
                    answer = await conn.request(iq, SUBSCRIBE_ID, timeout_s)
                except (TimeoutError, client.LoginFailed) as exc:
                    answer = f"{type(exc).__name__}: {exc}".encode()
            if b"type='result'" in answer or b'type="result"' in answer:
                done.append(conn)
                return
            self.count(FAILED)
            if len(errors) < MAX_ERRORS:
                errors.append(f"{conn.jid}: {answer[-300:]!r}")

        known = {id(c) for c in self.subscribed}
        live = [c for c in self.conns if not c.closed and id(c) not in known]
        await asyncio.gather(*(one(c) for c in live))
        for conn in done:
            conn.sink = partial(self.notified, len(self.subscribed))
            self.subscribed.append(conn)
        return {"subscribed": len(done), "failed": len(live) - len(done), "errors": errors}

    async def do_notifications(self) -> dict[str, Any]:
        """Per publish stamp: the first arrival of each subscriber that had it (ns, as
        bytes of an array('q')); duplicates; subscribers still connected."""
        return {
            "subscribers": len(self.subscribed),
            "live": sum(1 for c in self.subscribed if not c.closed),
            "arrivals": {stamp: times.tobytes() for stamp, times in self.times.items()},
            "duplicates": self.duplicates,
            "foreign": self.foreign,
        }
