"""The HTTP port of the connection manager: WebSocket, BOSH and host-meta on one listener.

`HttpEdge` is a small HTTP/1.1 server protocol (one request at a time per connection,
keep-alive, ``Content-Length`` bodies only): the upgrade to a WebSocket stream hands the
transport to a `WebSocketConnection` (RFC 7395); ``/.well-known/host-meta`` and ``.json``
answer XEP-0156; POSTs to the BOSH path go to `bosh.BoshSessions` (XEP-0124/XEP-0206).
Why not aiohttp's server: an idle aiohttp WebSocket costs several times the memory of this
shell (loadtest/RESULTS.md, "WebSocket: idle memory per connection"), and one layer keeps
the TCP stream's limits for every transport.

Edge limits: an HTTP connection counts as an unauthenticated connection of its client's
address until it upgrades (the per-address cap of the TCP port, oldest evicted) and against
``max_connections``; a request head must arrive within `HEAD_TIMEOUT_S` and fit in
`MAX_HEAD_BYTES`, a body in ``http_max_request_bytes``; an idle keep-alive connection is
closed after `IDLE_TIMEOUT_S` (plus the BOSH wait).  The client's address is the socket's
peer or, from a proxy in ``http_trusted_proxies``, the last X-Forwarded-For entry that is
not itself a trusted proxy; such a request counts as TLS-protected when the proxy says
``X-Forwarded-Proto: https``.  Loopback clients count as protected too (the bytes never
leave the host), so ``make run`` serves ws://127.0.0.1:5280 to local browsers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, cast

from shared.cluster.source_limits import Networks, source_key
from shared.xmpp import hostmeta
from shared.xmpp.errors import StreamErrorCondition
from shared.xmpp.websocket import SUBPROTOCOL, accept_key

from . import metrics
from .websocket import WebSocketConnection

if TYPE_CHECKING:
    from .service import ConnectionManager

log = logging.getLogger(__name__)

MAX_HEAD_BYTES: Final = 8 * 1024
HEAD_TIMEOUT_S: Final = 10.0
IDLE_TIMEOUT_S: Final = 30.0
_REASONS: Final = {200: "OK", 204: "No Content", 400: "Bad Request", 403: "Forbidden",
                   404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
                   411: "Length Required", 413: "Content Too Large", 426: "Upgrade Required",
                   503: "Service Unavailable"}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""
    client: str = ""  # "ip:port" of the client (X-Forwarded-For from a trusted proxy)
    secure: bool = False  # TLS-protected up to us (or loopback)
    origin_ok: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for t in self.headers.get(name, "").split(",") if t.strip()}


class BadRequest(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def parse_head(head: bytes) -> Request:
    """Request line and headers (RFC 9112 §2-§5); raises `BadRequest`."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise BadRequest(400, "undecodable head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(400, "bad header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    path = parts[1].partition("?")[0]
    return Request(parts[0], path, parts[2], headers)


def forwarded_client(peer_ip: str, header: str, proxies: Networks) -> str:
    """The client named by X-Forwarded-For: the last entry that is not a trusted proxy."""
    client = peer_ip
    for entry in reversed([e.strip() for e in header.split(",") if e.strip()]):
        try:
            ipaddress.ip_address(entry)
        except ValueError:
            break  # garbage: keep what we know
        client = entry
        if entry not in proxies:
            break
    return client


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class HttpEdge(asyncio.Protocol):
    """One HTTP connection of the HTTP port (until it upgrades to a WebSocket stream)."""

    __slots__ = ("_buf", "_busy", "_closing", "_peer_ip", "_timer", "_unauthenticated",
                 "cm", "cors", "peer", "source", "transport")

    def __init__(self, cm: ConnectionManager) -> None:
        self.cm = cm
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._busy = False  # a request is being answered (BOSH holds it)
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._unauthenticated = False
        self.peer = ""
        self._peer_ip = ""
        self.source = ""
        self.cors: dict[str, str] = {}  # CORS headers of the BOSH request being answered

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        self._peer_ip = str(peer[0]) if peer else "?"
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        cm = self.cm
        cm.http_edges.add(self)
        s = cm.settings
        if s.max_connections and len(cm.connections) + len(cm.http_edges) > s.max_connections:
            metrics.CONNECTIONS_REFUSED.labels("total").inc()
            self._respond(503, b"server full\n", close=True)
            return
        if self._peer_ip not in cm.http_proxies:  # a proxy's clients are counted per request
            self._count(source_key(self._peer_ip))
        self._arm(HEAD_TIMEOUT_S)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buf += data
        if self._busy:
            if len(self._buf) > self.cm.settings.http_max_request_bytes:
                self._respond(413, b"", close=True)
            return
        self._next_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        self._uncount()
        self.cm.http_edges.discard(self)

    # ---- the per-address cap (shared with the c2s port) -------------------------------------

    def _count(self, source: str) -> None:
        self.source = source
        self._unauthenticated = True
        evicted = self.cm.unauthenticated.admit(source, self)  # type: ignore[arg-type]
        if evicted is not None:
            evicted._unauthenticated = False
            metrics.CONNECTIONS_REFUSED.labels("per_ip").inc()
            evicted.close(StreamErrorCondition.POLICY_VIOLATION,
                          "too many unauthenticated connections from your address")

    def _uncount(self) -> None:
        if self._unauthenticated:
            self._unauthenticated = False
            self.cm.unauthenticated.release(self.source, self)  # type: ignore[arg-type]

    def close(self, condition: object = None, text: str | None = None,
              content: str = "") -> None:
        """Evicted (per-address cap) or the server stops: the connection goes."""
        if not self._closing and self.transport is not None:
            self._closing = True
            self.transport.close()

    # ---- requests --------------------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._timeout)

    def _timeout(self) -> None:
        self._timer = None
        if self._busy or self._closing:
            return
        if self._buf:
            self._respond(408, b"", close=True)
        else:
            self.close()

    def _next_request(self) -> None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                self._respond(400, b"request head too large\n", close=True)
            return
        if end > MAX_HEAD_BYTES:
            self._respond(400, b"request head too large\n", close=True)
            return
        try:
            request = parse_head(self._buf[:end])
        except BadRequest as exc:
            self._respond(exc.status, f"{exc}\n".encode(), close=True)
            return
        length_text = request.headers.get("content-length", "0")
        if "transfer-encoding" in request.headers:
            self._respond(411, b"Content-Length bodies only\n", close=True)
            return
        if not length_text.isdigit():
            self._respond(400, b"bad Content-Length\n", close=True)
            return
        length = int(length_text)
        if end + 4 + length > self.cm.settings.http_max_request_bytes:
            self._respond(413, b"", close=True)
            return
        if len(self._buf) < end + 4 + length:
            return  # the body is still coming
        request.body = self._buf[end + 4 : end + 4 + length]
        self._buf = self._buf[end + 4 + length :]
        self._identify(request)
        self._dispatch(request)

    def _identify(self, request: Request) -> None:
        """Who the client is and whether its bytes were protected up to us."""
        s = self.cm.settings
        client_ip = self._peer_ip
        secure = s.c2s_http_tls or _is_loopback(client_ip)
        if client_ip in self.cm.http_proxies:
            client_ip = forwarded_client(client_ip, request.headers.get("x-forwarded-for", ""),
                                         self.cm.http_proxies)
            proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
            secure = s.c2s_http_tls or proto in ("https", "wss")
        request.client = f"{client_ip}:0" if client_ip != self._peer_ip else self.peer
        request.secure = secure
        origin = request.headers.get("origin")
        request.origin_ok = origin is None or self.cm.origin_allowed(origin)

    def _dispatch(self, request: Request) -> None:
        s = self.cm.settings
        path = request.path
        if path == s.websocket_path:
            self._websocket(request)
        elif path in ("/.well-known/host-meta", "/.well-known/host-meta.json"):
            self._host_meta(request)
        elif path == s.bosh_path:
            self._bosh(request)
        else:
            metrics.HTTP_REQUESTS.labels("other", "404").inc()
            self._respond(404, b"not found\n")

    def _host_meta(self, request: Request) -> None:
        """XEP-0156 §3: the endpoints, readable cross-origin (CORS *)."""
        if request.method not in ("GET", "HEAD"):
            metrics.HTTP_REQUESTS.labels("host-meta", "405").inc()
            self._respond(405, b"", extra={"Allow": "GET, HEAD"})
            return
        ws, bosh = self.cm.public_urls()
        as_json = request.path.endswith(".json")
        body = hostmeta.jrd(ws, bosh) if as_json else hostmeta.xrd(ws, bosh)
        metrics.HTTP_REQUESTS.labels("host-meta", "200").inc()
        self._respond(200, body, content_type="application/json" if as_json
                      else "application/xrd+xml", extra={"Access-Control-Allow-Origin": "*"},
                      head_only=request.method == "HEAD")

    def _websocket(self, request: Request) -> None:
        """RFC 6455 §4.2 opening handshake with RFC 7395 §3.1's subprotocol; then the
        transport belongs to a `WebSocketConnection`."""

        def refuse(status: int, why: str, extra: dict[str, str] | None = None) -> None:
            metrics.HTTP_REQUESTS.labels("websocket", str(status)).inc()
            log.info("refused a WebSocket from %s: %s", request.client, why)
            self._respond(status, f"{why}\n".encode(), extra=extra, close=True)

        if request.method != "GET" or "websocket" not in request.tokens("upgrade") \
                or "upgrade" not in request.tokens("connection"):
            refuse(426, "WebSocket only", {"Upgrade": "websocket"})
            return
        if request.headers.get("sec-websocket-version") != "13":
            refuse(426, "WebSocket version 13 only", {"Sec-WebSocket-Version": "13"})
            return
        accept = accept_key(request.headers.get("sec-websocket-key", ""))
        if accept is None:
            refuse(400, "bad Sec-WebSocket-Key")
            return
        if SUBPROTOCOL not in request.tokens("sec-websocket-protocol"):
            refuse(400, "the xmpp subprotocol is required (RFC 7395)")
            return
        if not request.origin_ok:
            refuse(403, "origin not allowed")
            return
        if self._buf:  # a client may not send frames before our answer (RFC 6455 §4.1)
            refuse(400, "data before the handshake completed")
            return
        transport = self.transport
        assert transport is not None
        metrics.HTTP_REQUESTS.labels("websocket", "101").inc()
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept.encode() + b"\r\n"
            b"Sec-WebSocket-Protocol: " + SUBPROTOCOL.encode() + b"\r\n\r\n"
        )
        # the stream counts itself (per address, as on the c2s port) from here on
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._uncount()
        self._closing = True
        self.cm.http_edges.discard(self)
        conn = WebSocketConnection(self.cm, request.client, request.secure)
        transport.set_protocol(conn)
        conn.connection_made(transport)

    def _bosh(self, request: Request) -> None:
        if request.method == "OPTIONS":  # CORS preflight (XEP-0124 §3: browsers)
            metrics.HTTP_REQUESTS.labels("bosh", "204").inc()
            self._respond(204, b"", extra=self.cm.bosh.cors(request, preflight=True))
            return
        if request.method != "POST":
            metrics.HTTP_REQUESTS.labels("bosh", "405").inc()
            self._respond(405, b"BOSH: POST only\n", extra={"Allow": "POST, OPTIONS"})
            return
        if not request.origin_ok:
            metrics.HTTP_REQUESTS.labels("bosh", "403").inc()
            self._respond(403, b"origin not allowed\n")
            return
        self._busy = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.cm.bosh.handle(request, self)

    # ---- answers ---------------------------------------------------------------------------

    def answer(self, status: int, body: bytes, *, content_type: str = "text/xml; charset=utf-8",
               extra: dict[str, str] | None = None) -> None:
        """The answer to a request that was held (BOSH): then the next request."""
        if self._closing:
            return
        self._busy = False
        self._respond(status, body, content_type=content_type, extra=extra)
        if not self._closing and self._buf:
            self._next_request()

    def _respond(self, status: int, body: bytes, *, content_type: str = "text/plain",
                 extra: dict[str, str] | None = None, close: bool = False,
                 head_only: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
                 f"Content-Length: {len(body)}", "Cache-Control: no-store"]
        if body:
            lines.append(f"Content-Type: {content_type}")
        for name, value in (extra or {}).items():
            lines.append(f"{name}: {value}")
        if close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        transport.write(head if head_only else head + body)
        if close:
            self._closing = True
            transport.close()
        else:
            self._arm(IDLE_TIMEOUT_S)
