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

Simplifications (documented): requests are taken in arrival order and must carry the next
``rid`` or one within the window of ``requests`` (2) ahead (a repeated ``rid`` gets the last
answer again, XEP-0124 §14.3); ``hold`` is 1; no ``key`` sequences (§15), no ``polling``
sessions, no ``ack`` reports (§9).
"""

from __future__ import annotations

import asyncio
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
REQUESTS: Final = 2  # XEP-0124 §7.1: hold + 1
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


class BoshSession(C2SConnection):
    """The I/O shell of one BOSH session."""

    __slots__ = ("_answered", "_framing", "_idle", "_last_answer", "_out", "_rid", "_waiting",
                 "pending_bytes", "sid", "wait_s")
    PROXY_HEADER: ClassVar[bool] = False

    def __init__(self, cm: ConnectionManager, peer: str, secure: bool, rid: int,
                 wait_s: int) -> None:
        super().__init__(cm, "bosh")
        self.stream.config = cm.ws_stream_config  # no STARTTLS inside BOSH either
        self.stream.tls = secure
        self.peer = peer
        self.sid = secrets.token_urlsafe(18)
        self.wait_s = wait_s
        self._rid = rid  # the highest rid taken
        self._waiting: deque[tuple[HttpEdge, asyncio.TimerHandle]] = deque()
        self._out: list[bytes] = []  # elements to answer with
        self.pending_bytes = 0
        self._framing = Framing()
        self._idle: asyncio.TimerHandle | None = None
        self._last_answer = b""
        self._answered = False  # the stream is over and its last answer went

    # ---- requests in -----------------------------------------------------------------------

    def take(self, edge: HttpEdge, body: bosh.Body, rid: int) -> None:
        """A request of this session: its payload to the stream; held until there is
        something to answer or `wait_s` passed."""
        if rid == self._rid and self._last_answer:  # §14.3: a retransmission
            edge.answer(200, self._last_answer, extra=self.cm.bosh.cors_for(edge))
            return
        if not self._rid < rid <= self._rid + REQUESTS:
            edge.answer(200, bosh.terminate("item-not-found"), extra=self.cm.bosh.cors_for(edge))
            self.close()
            return
        self._rid = rid
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.wait_s, self._waited, edge)
        self._waiting.append((edge, timer))
        while len(self._waiting) > HOLD:  # §11: the oldest goes back, so that one is held
            self._answer_oldest()
        data = body.payload
        if body.get("xmpp:restart") == "true":  # XEP-0206 §5: after SASL success
            data = self.cm.bosh.header(body.get("to", self.cm.domain)) + data
        if body.get("type") == "terminate":
            data += b"</stream:stream>"
        if data:
            connection._BYTES_IN.n += len(data)
            now = self._last_rx = loop.time()
            if self._bytes is not None:
                wait = self._bytes.take(len(data), now)
                if wait > 0:
                    self._throttle_for(wait, "bytes")
            if self._hibernating:
                self._woken()
            self.stream.receive_data(data)
            self._pump()
        if self._out:
            self.schedule_answer()

    def start(self, edge: HttpEdge, body: bosh.Body) -> None:
        """XEP-0206 §3: the session creation request opens the stream."""
        self.connection_made(_Requests(self))
        loop = asyncio.get_running_loop()
        self._waiting.append((edge, loop.call_later(self.wait_s, self._waited, edge)))
        self.stream.receive_data(self.cm.bosh.header(body.get("to", "")))
        self._pump()

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

    def _answer_oldest(self, body: bytes | None = None) -> None:
        edge, timer = self._waiting.popleft()
        timer.cancel()
        if body is None:
            out, self._out, self.pending_bytes = self._out, [], 0
            body = bosh.response(out, self._session_attrs())
            self._last_answer = body
        edge.answer(200, body, extra=self.cm.bosh.cors_for(edge))
        if not self._waiting and not self._closing:
            self._idle = asyncio.get_running_loop().call_later(
                self.cm.settings.bosh_inactivity_s, self._inactive)

    def _session_attrs(self) -> dict[str, str]:
        """The creation response's attributes (XEP-0124 §7.1, XEP-0206 §3); later answers
        carry none."""
        if self._answered:
            return {}
        self._answered = True
        s = self.cm.settings
        return {"sid": self.sid, "wait": str(self.wait_s), "inactivity":
                str(s.bosh_inactivity_s), "polling": "2", "requests": str(REQUESTS),
                "hold": str(HOLD), "ver": bosh.VERSION, "from": self.stream.config.domain,
                "authid": self.stream.stream_id, "xmpp:version": "1.0",
                "xmpp:restartlogic": "true", "maxpause": "0"}

    def _waited(self, edge: HttpEdge) -> None:
        for i, (held, _timer) in enumerate(self._waiting):
            if held is edge:
                del self._waiting[i]
                edge.answer(200, bosh.response([], self._session_attrs()),
                            extra=self.cm.bosh.cors_for(edge))
                break
        if not self._waiting and not self._closing and self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(
                self.cm.settings.bosh_inactivity_s, self._inactive)

    def _inactive(self) -> None:
        """XEP-0124 §7.1 'inactivity': no request for that long: the connection is lost
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
            edge, timer = self._waiting.popleft()
            timer.cancel()
            edge.answer(200, body, extra=self.cm.bosh.cors_for(edge))
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
        wait = body.get("wait")
        wait_s = min(int(wait), self.cm.settings.bosh_wait_s) if wait.isdigit() else \
            self.cm.settings.bosh_wait_s
        session = BoshSession(self.cm, request.client, request.secure, rid, max(1, wait_s))
        self.sessions[session.sid] = session
        session.start(edge, body)

    def forget(self, session: BoshSession) -> None:
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
