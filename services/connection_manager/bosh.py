"""BOSH sessions (XEP-0124, XEP-0206) of this connection manager.

A BOSH session is a `C2SConnection` whose transport is a series of HTTP requests: the same
stream machine, SASL, binding, XEP-0198, limits and keepalive as a TCP stream.  Its
`_Requests` transport takes what the stream writes and answers the held request with it;
each request's payload goes to the stream parser as it is.

Where sessions live: in the memory of the pod that created them, like a TCP stream.  A
request for a ``sid`` this pod does not hold is answered ``<body type="terminate"
condition="item-not-found"/>`` (XEP-0124 §17.2), so the ingress must send a session's
requests to one pod: cookie affinity (docs/operations.md, "Ingress").  Why not hand requests
over the bus to the pod holding the session: every request would cost two more bus hops and
a reply subject for a legacy transport, and a client that loses its pod (restart, affinity
cookie gone) can resume its XEP-0198 session on another one like any TCP client.

What a session keeps to: ``hold`` 1 (``requests`` 2), or a polling session (§12: the client
asked for ``hold`` or ``wait`` 0; ``hold`` 0, ``requests`` 1, every request answered at the
end of its tick, a longer ``inactivity``); empty requests no closer than ``polling`` seconds
where §11 and §12 say so (else ``policy-violation``); pauses up to ``maxpause`` (§10); and the
client's key sequence when it starts one (§15: each ``key`` must hash with SHA-1 to the
previous request's ``newkey`` or ``key``, else ``item-not-found`` and the session ends).

Simplifications (documented): requests are taken in arrival order and must carry the next
``rid`` or one within the window of ``requests`` ahead (a repeated ``rid`` gets the last
answer again, XEP-0124 §14.3; a request overtaken by a later one ends the session with
``item-not-found`` instead of being reordered); no ``ack`` reports (§9).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar, Final
from xml.sax.saxutils import quoteattr

from shared.xmpp import bosh, ns
from shared.xmpp.websocket import Framing

from . import connection, metrics
from .connection import C2SConnection

if TYPE_CHECKING:
    from .http import HttpEdge, Request
    from .service import ConnectionManager

log = logging.getLogger(__name__)

HOLD: Final = 1
REQUESTS: Final = 2  # XEP-0124 §7.2: hold + 1
_KEY_CHARS: Final = frozenset("0123456789abcdefABCDEF")
_FRAMING_OPEN: Final = b"<open "
_FRAMING_CLOSE: Final = b"<close "


class _Requests(asyncio.Transport):
    """What a `BoshSession` writes through: the answers to its held requests."""

    def __init__(self, session: BoshSession) -> None:
        super().__init__()
        self._session = session
        self._closing = False

    def write(self, data: Any) -> None:
        if not self._closing:
            self._session.queue_out(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self._session.pending_bytes

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            asyncio.get_running_loop().call_soon(self._session.ended)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        pass  # requests already read wait in the stream; at most REQUESTS of them

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _is_key(text: str) -> bool:
    """A key of XEP-0124 §15.3: hex of a SHA-1 digest (160 bits)."""
    return len(text) == 40 and _KEY_CHARS.issuperset(text)


def next_key_ok(expected: str, key: str) -> bool:
    """XEP-0124 §15.4: ``key`` follows ``expected`` when hex(SHA-1(key)) is ``expected``
    (hex compared without regard to case; SHA-1 from hashlib)."""
    if not _is_key(key) or not _is_key(expected):
        return False
    digest = hashlib.sha1(key.lower().encode("ascii")).hexdigest()
    return hmac.compare_digest(digest, expected.lower())


def _same_key(key: str, original: str) -> bool:
    """A retransmission carries the original's key (or none, as the original did)."""
    return hmac.compare_digest(key.encode(), original.encode())


class _Held:
    """A request held for its answer."""

    __slots__ = ("edge", "key", "rid", "timer")

    def __init__(self, edge: HttpEdge, rid: int, key: str, timer: asyncio.TimerHandle) -> None:
        self.edge, self.rid, self.key, self.timer = edge, rid, key, timer


class BoshSession(C2SConnection):
    """The I/O shell of one BOSH session."""

    __slots__ = ("_answered", "_answers", "_framing", "_idle", "_inactivity_s", "_key",
                 "_last_answer_empty", "_last_empty", "_last_request_at", "_out", "_rid",
                 "_waiting", "hold", "inactivity_s", "pending_bytes", "polling_s", "requests",
                 "sid", "wait_s")
    PROXY_HEADER: ClassVar[bool] = False

    def __init__(self, cm: ConnectionManager, peer: str, secure: bool, rid: int,
                 wait_s: int, *, hold: int = HOLD, newkey: str = "") -> None:
        super().__init__(cm, "bosh")
        self.stream.config = cm.ws_stream_config  # no STARTTLS inside BOSH either
        self.stream.tls = secure
        self.peer = peer
        self.sid = secrets.token_urlsafe(18)
        self.wait_s = wait_s
        s = cm.settings
        self.hold = hold  # 0: a polling session (XEP-0124 §12)
        self.requests = hold + 1  # §7.2: one more than hold (1 for a polling session)
        self.polling_s = s.bosh_polling_s
        # §12: a polling session gets a longer inactivity, by more than 'polling'
        self.inactivity_s = s.bosh_inactivity_s + (2 * self.polling_s if hold == 0 else 0)
        self._inactivity_s = self.inactivity_s  # this idle period's (a pause changes it, §10)
        self._rid = rid  # the highest rid taken
        self._key = newkey or None  # §15: what the next request's key must hash to
        self._last_request_at = asyncio.get_running_loop().time()
        self._last_empty = False  # the last request taken carried nothing (§11, §12)
        self._last_answer_empty = False  # the last answer carried no payload (§12)
        self._waiting: deque[_Held] = deque()
        # §14.3: the answers to the last `requests` requests by rid, with their keys (a
        # retransmission is an exact copy: same key)
        self._answers: dict[int, tuple[bytes, str]] = {}
        self._out: list[bytes] = []  # elements to answer with
        self.pending_bytes = 0
        self._framing = Framing()
        self._idle: asyncio.TimerHandle | None = None
        self._answered = False  # the stream is over and its last answer went

    # ---- requests in -----------------------------------------------------------------------

    def take(self, edge: HttpEdge, body: bosh.Body, rid: int) -> None:
        """A request of this session: its payload to the stream; held until there is
        something to answer or `wait_s` passed."""
        if rid <= self._rid:  # §14.3: a retransmission (its connection broke)
            self._again(edge, rid, body.get("key"))
            return
        if not self._rid < rid <= self._rid + self.requests:  # §14.2
            self._refuse(edge, "item-not-found")
            return
        key, newkey = body.get("key"), body.get("newkey")
        if newkey and not _is_key(newkey):
            self._refuse(edge, "bad-request")
            return
        if self._key is not None and not next_key_ok(self._key, key):
            # §15.4: a wrong or missing key: not processed, the session ends
            log.info("BOSH session %s: wrong key sequence", self.sid)
            self._refuse(edge, "item-not-found")
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        pause = self._pause_of(body)
        empty = not body.payload and pause is None and not body.get("type") and \
            body.get("xmpp:restart") != "true"
        if empty and self._too_frequent(now):
            log.info("BOSH session %s: empty requests too frequent", self.sid)
            self._refuse(edge, "policy-violation")
            return
        self._rid = rid
        self._key = newkey or key or None  # §15.5: a new sequence may start
        self._last_request_at, self._last_empty = now, empty
        self._inactivity_s = self.inactivity_s  # §10: a pause lasts until the next request
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        timer = loop.call_later(max(self.wait_s, 1), self._waited, edge)
        self._waiting.append(_Held(edge, rid, key, timer))
        while len(self._waiting) > max(self.hold, 1):  # §11: the oldest goes back
            self._answer_oldest()
        data = body.payload
        if body.get("xmpp:restart") == "true":  # XEP-0206 §5: after SASL success
            data = self.cm.bosh.header(body.get("to", self.cm.domain)) + data
        if body.get("type") == "terminate":
            data += b"</stream:stream>"
        if data:
            connection._BYTES_IN.n += len(data)
            self._last_rx = now
            if self._bytes is not None:
                wait = self._bytes.take(len(data), now)
                if wait > 0:
                    self._throttle_for(wait, "bytes")
            if self._hibernating:
                self._woken()
            self.stream.receive_data(data)
            self._pump()
        if pause is not None:
            self._pause(edge, pause)
        elif self.hold == 0:
            loop.call_soon(self._answer_all)  # §12: no request is held
        elif self._out:
            self.schedule_answer()

    def _pause_of(self, body: bosh.Body) -> int | None:
        """XEP-0124 §10: the pause a request asks for, if it may (not above 'maxpause';
        a longer one is not granted: the request is an ordinary one)."""
        text = body.get("pause")
        if not text.isdigit() or len(text) > 6:
            return None
        pause = int(text)
        return pause if 0 < pause <= self.cm.settings.bosh_maxpause_s else None

    def _pause(self, edge: HttpEdge, pause: int) -> None:
        """XEP-0124 §10: every held request is answered now, the pause request without
        payloads (what is queued waits for the next request), and the session may be idle
        for ``pause`` seconds this once."""
        for i, held in enumerate(self._waiting):
            if held.edge is edge:
                del self._waiting[i]
                held.timer.cancel()
                break
        while self._waiting:
            self._answer_oldest()
        edge.answer(200, bosh.response([], self._session_attrs()),
                    extra=self.cm.bosh.cors_for(edge))
        self._inactivity_s = pause
        self._idle_from_now()

    def _too_frequent(self, now: float) -> bool:
        """An empty request the session rules forbid (``polling`` seconds, XEP-0124):
        §12, in a polling session: two empty requests in a row closer than that, the
        first answered without payloads; §11, otherwise: the request that makes
        ``requests`` unanswered ones, closer than that to the one before."""
        if not self.polling_s or now - self._last_request_at >= self.polling_s:
            return False
        if self.hold == 0:
            return self._last_empty and self._last_answer_empty
        return len(self._waiting) >= self.requests - 1

    def _again(self, edge: HttpEdge, rid: int, key: str) -> None:
        """XEP-0124 §14.3: a request already taken comes again: its answer again, or, if it
        is still held, the new connection holds it instead (the old one gets an empty
        answer); a key other than the original's (§15.4) or an answer no longer kept:
        ``item-not-found``."""
        kept = self._answers.get(rid)
        if kept is not None:
            answer, original = kept
            if _same_key(key, original):
                edge.answer(200, answer, extra=self.cm.bosh.cors_for(edge))
                return
        for held in self._waiting:
            if held.rid == rid and _same_key(key, held.key):
                old, held.edge = held.edge, edge
                held.timer.cancel()
                held.timer = asyncio.get_running_loop().call_later(
                    max(self.wait_s, 1), self._waited, edge)
                old.answer(200, bosh.response([]), extra=self.cm.bosh.cors_for(old))
                return
        self._refuse(edge, "item-not-found")

    def _refuse(self, edge: HttpEdge, condition: str) -> None:
        """A terminal binding condition (XEP-0124 §17.2): the session ends."""
        edge.answer(200, bosh.terminate(condition), extra=self.cm.bosh.cors_for(edge))
        self.close()

    def start(self, edge: HttpEdge, body: bosh.Body) -> None:
        """XEP-0206 §3: the session creation request opens the stream."""
        self.connection_made(_Requests(self))
        loop = asyncio.get_running_loop()
        self._waiting.append(_Held(edge, self._rid, "",
                                   loop.call_later(max(self.wait_s, 1), self._waited, edge)))
        self.stream.receive_data(self.cm.bosh.header(body.get("to", "")))
        self._pump()
        if self.hold == 0:
            loop.call_soon(self._answer_all)

    # ---- answers out -----------------------------------------------------------------------

    def queue_out(self, data: bytes) -> None:
        for message in self._framing.messages(data):
            if message.startswith(_FRAMING_OPEN):
                continue  # the stream header: BOSH's session attributes carry it
            if message.startswith(_FRAMING_CLOSE):
                continue  # the stream's end: the transport closes right after
            self._out.append(message)
            self.pending_bytes += len(message)
        self.schedule_answer()

    def schedule_answer(self) -> None:
        if self._out and self._waiting:
            asyncio.get_running_loop().call_soon(self._answer_oldest_if_out)

    def _answer_oldest_if_out(self) -> None:
        if self._out and self._waiting:
            self._answer_oldest()

    def _answer_all(self) -> None:
        """A polling session's requests are answered at the end of their tick, payloads
        or not (XEP-0124 §12)."""
        while self._waiting:
            self._answer_oldest()

    def _answer_oldest(self, body: bytes | None = None) -> None:
        held = self._waiting.popleft()
        held.timer.cancel()
        if body is None:
            out, self._out, self.pending_bytes = self._out, [], 0
            self._last_answer_empty = not out
            body = bosh.response(out, self._session_attrs())
            self._keep(held, body)
        held.edge.answer(200, body, extra=self.cm.bosh.cors_for(held.edge))
        if not self._waiting and not self._closing:
            self._idle_from_now()

    def _keep(self, held: _Held, answer: bytes) -> None:
        """§14.3: the answers to the last `requests` requests, for retransmissions."""
        self._answers[held.rid] = (answer, held.key)
        while len(self._answers) > self.requests:
            del self._answers[next(iter(self._answers))]

    def _idle_from_now(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(self._inactivity_s, self._inactive)

    def _session_attrs(self) -> dict[str, str]:
        """The creation response's attributes (XEP-0124 §7.2, XEP-0206 §3); later answers
        carry none."""
        if self._answered:
            return {}
        self._answered = True
        s = self.cm.settings
        attrs = {"sid": self.sid, "wait": str(self.wait_s), "inactivity":
                 str(self.inactivity_s), "requests": str(self.requests),
                 "hold": str(self.hold), "ver": bosh.VERSION, "from": self.stream.config.domain,
                 "authid": self.stream.stream_id, "xmpp:version": "1.0",
                 "xmpp:restartlogic": "true"}
        if self.polling_s:
            attrs["polling"] = str(self.polling_s)  # §11, §12
        if s.bosh_maxpause_s:
            attrs["maxpause"] = str(s.bosh_maxpause_s)  # §10
        return attrs

    def _waited(self, edge: HttpEdge) -> None:
        for i, held in enumerate(self._waiting):
            if held.edge is edge:
                del self._waiting[i]
                self._last_answer_empty = True
                answer = bosh.response([], self._session_attrs())
                self._keep(held, answer)
                edge.answer(200, answer, extra=self.cm.bosh.cors_for(edge))
                break
        if not self._waiting and not self._closing and self._idle is None:
            self._idle_from_now()

    def _inactive(self) -> None:
        """XEP-0124 §10 'inactivity': no request for that long: the connection is lost
        (a resumable XEP-0198 session is detached, as for a broken TCP connection)."""
        self._idle = None
        if not self._waiting and not self._closing:
            log.info("BOSH session %s inactive", self.sid)
            self.hang_up()

    def ended(self) -> None:
        """The stream is over: what is left goes out with ``type="terminate"``."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        out, self._out, self.pending_bytes = self._out, [], 0
        condition = "remote-stream-error" if any(
            m.startswith(b"<stream:error") for m in out) else ""
        body = bosh.terminate(condition, out)
        while self._waiting:
            held = self._waiting.popleft()
            held.timer.cancel()
            held.edge.answer(200, body, extra=self.cm.bosh.cors_for(held.edge))
            body = bosh.terminate()
        self.cm.bosh.forget(self)
        self.connection_lost(None)


class BoshSessions:
    """The BOSH sessions of this pod by ``sid``."""

    def __init__(self, cm: ConnectionManager) -> None:
        self.cm = cm
        self.sessions: dict[str, BoshSession] = {}

    def header(self, to: str) -> bytes:
        """The stream header a BOSH stream implies (XEP-0206 §3, §5)."""
        return (f'<stream:stream xmlns="{ns.CLIENT}" xmlns:stream="{ns.STREAM}" '
                f'to={quoteattr(to)} version="1.0">').encode()

    def cors(self, request: Request, *, preflight: bool = False) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin is None or not request.origin_ok:
            return {}
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if preflight:
            headers.update({"Access-Control-Allow-Methods": "POST, OPTIONS",
                            "Access-Control-Allow-Headers": "Content-Type",
                            "Access-Control-Max-Age": "86400"})
        return headers

    def cors_for(self, edge: HttpEdge) -> dict[str, str]:
        return edge.cors

    def handle(self, request: Request, edge: HttpEdge) -> None:
        edge.cors = self.cors(request)
        try:
            body = bosh.parse_request(request.body)
        except bosh.BadBody as exc:
            metrics.HTTP_REQUESTS.labels("bosh", "400").inc()
            log.info("bad BOSH request from %s: %s", request.client, exc)
            edge.answer(400, bosh.terminate("bad-request"), extra=edge.cors)
            return
        rid = body.rid
        if rid is None:
            metrics.HTTP_REQUESTS.labels("bosh", "400").inc()
            edge.answer(400, bosh.terminate("bad-request"), extra=edge.cors)
            return
        metrics.HTTP_REQUESTS.labels("bosh", "200").inc()
        sid = body.get("sid")
        if not sid:
            self._create(request, edge, body, rid)
            return
        session = self.sessions.get(sid)
        if session is None or session._closing:
            edge.answer(200, bosh.terminate("item-not-found"), extra=edge.cors)
            return
        session.take(edge, body, rid)

    def _create(self, request: Request, edge: HttpEdge, body: bosh.Body, rid: int) -> None:
        """XEP-0124 §7.1, XEP-0206 §3: a new session (the stream header is implied)."""
        to = body.get("to")
        if to not in self.cm.vhosts:  # virtual hosts (shared/cluster/vhosts.py)
            edge.answer(200, bosh.terminate("host-unknown"), extra=edge.cors)
            return
        if self.cm.stopping:
            edge.answer(200, bosh.terminate("system-shutdown"), extra=edge.cors)
            return
        wait, hold, newkey = body.get("wait"), body.get("hold"), body.get("newkey")
        wait_s = min(int(wait), self.cm.settings.bosh_wait_s) if wait.isdigit() else \
            self.cm.settings.bosh_wait_s
        if newkey and not _is_key(newkey):
            edge.answer(200, bosh.terminate("bad-request"), extra=edge.cors)  # §15.3
            return
        # §12: 'wait' or 'hold' 0 asks for a polling session; 'hold' never above the
        # client's (§7.2)
        polling = wait_s == 0 or hold == "0"
        session = BoshSession(self.cm, request.client, request.secure, rid,
                              wait_s if polling else max(1, wait_s),
                              hold=0 if polling else HOLD, newkey=newkey)
        self.sessions[session.sid] = session
        session.start(edge, body)

    def forget(self, session: BoshSession) -> None:
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
