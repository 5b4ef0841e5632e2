"""A client stream over WebSocket (RFC 7395): the TCP stream's shell with other framing.

`WebSocketConnection` is a `C2SConnection`: the same stream machine, SASL, binding, XEP-0198,
XEP-0352, rate limits, per-address caps, keepalive and hibernation.  Only the bytes differ:
frames in (`shared.xmpp.websocket.FrameDecoder`), one message per element out
(`shared.xmpp.websocket.Framing`).  The HTTP port's `HttpEdge` did the opening handshake and
hands the transport over with the client's address (X-Forwarded-For from a trusted proxy)
and whether the connection counts as TLS-protected.

STARTTLS is never offered over WebSocket (RFC 7395 §3.7: TLS is the WebSocket layer's):
a stream on ``ws://`` that is not known to be protected gets no SASL mechanisms while
``tls_required`` is on.  On SIGTERM a stream that would get ``<see-other-host/>`` gets
``<close see-other-uri/>`` (§3.6.1) when ``STANZAD_WEBSOCKET_REDIRECT_URI`` is set.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, ClassVar

from shared.xmpp.errors import StreamError, StreamErrorCondition
from shared.xmpp.websocket import (
    BINARY,
    CLOSE,
    NORMAL,
    PING,
    PONG,
    STREAM_CLOSE,
    TEXT,
    UNSUPPORTED_DATA,
    FrameDecoder,
    Framing,
    WebSocketError,
    client_open,
    close_frame,
    encode_frame,
    is_client_close,
)

from . import connection
from .connection import C2SConnection

if TYPE_CHECKING:
    from .service import ConnectionManager

log = logging.getLogger(__name__)


class WebSocketConnection(C2SConnection):
    """The I/O shell of one RFC 7395 stream."""

    __slots__ = ("_frames", "_framing", "_ws_closed")
    PROXY_HEADER: ClassVar[bool] = False

    def __init__(self, cm: ConnectionManager, peer: str, secure: bool) -> None:
        super().__init__(cm, "websocket")
        self.stream.config = cm.ws_stream_config
        self.stream.tls = secure  # TLS by the pod, by a trusted ingress, or loopback
        self.peer = peer
        # pre-auth and post-auth stanzas fit in one message; the parser bounds them again
        self._frames = FrameDecoder(cm.settings.max_stanza_bytes + 1024)
        self._framing = Framing()
        self._ws_closed = False

    def data_received(self, data: bytes) -> None:
        connection._BYTES_IN.n += len(data)
        now = self._last_rx = asyncio.get_running_loop().time()
        if self._bytes is not None:
            wait = self._bytes.take(len(data), now)
            if wait > 0:
                self._throttle_for(wait, "bytes")
        if self._closing:
            return
        try:
            frames = self._frames.feed(data)
        except WebSocketError as exc:
            log.info("WebSocket protocol error from %s: %s", self.peer, exc)
            self._ws_fail(exc.code, str(exc))
            return
        fed: list[bytes] = []
        for opcode, payload in frames:
            if opcode == TEXT:
                try:
                    header = client_open(payload)
                except StreamError as exc:
                    self.close(exc.condition, exc.text)
                    return
                if header is not None:
                    fed.append(header)
                elif is_client_close(payload):
                    fed.append(STREAM_CLOSE)
                else:
                    fed.append(payload)
            elif opcode == PING:
                if self.transport is not None:
                    self.transport.write(encode_frame(PONG, payload))
            elif opcode == CLOSE:
                self._peer_closed()
                break
            elif opcode == BINARY:  # RFC 7395 §3.2: XMPP travels in text messages
                self._ws_fail(UNSUPPORTED_DATA, "text messages only")
                return
            # PONG: an answer to nothing we asked; ignored (RFC 6455 §5.5.3)
        if not fed:
            return
        if self._hibernating:
            self._woken()
        self.stream.receive_data(b"".join(fed))
        if self._throttle is not None and self.stream.input_failed:
            self._throttle.cancel()
            self._throttle = None
        self._pump()

    def _write_out(self, transport: asyncio.Transport, data: bytes) -> None:
        if self._ws_closed:
            return
        messages = self._framing.messages(data)
        if messages:
            super()._write_out(transport, b"".join(encode_frame(TEXT, m) for m in messages))

    def close(
        self,
        condition: StreamErrorCondition | None = None,
        text: str | None = None,
        content: str = "",
    ) -> None:
        """As for TCP, but a redirect is RFC 7395 §3.6.1's ``<close see-other-uri/>``."""
        if condition is StreamErrorCondition.SEE_OTHER_HOST:
            uri = self.cm.settings.websocket_redirect_uri
            if not uri:
                condition, content = StreamErrorCondition.SYSTEM_SHUTDOWN, ""
            elif not self._closing:
                self._framing.see_other_uri = uri
                self.stream.close()  # our closing tag, which becomes <close see-other-uri/>
                self.write(self.stream.data_to_send())
                self._finish()
                return
        super().close(condition, text, content)

    def _finish(self) -> None:
        """After our ``<close/>``, the WebSocket closing handshake (RFC 6455 §5.5.1)."""
        if self._closing:
            return
        self._flush()
        transport = self.transport
        if transport is not None and not transport.is_closing() and not self._ws_closed:
            transport.write(close_frame(NORMAL))
            self._ws_closed = True
        super()._finish()

    def _peer_closed(self) -> None:
        """The client's Close frame: answer it and close.  Without a ``<close/>`` before it
        the stream broke (a resumable XEP-0198 session is detached, as for TCP)."""
        transport = self.transport
        if transport is None or self._ws_closed:
            return
        transport.write(close_frame(NORMAL))
        self._ws_closed = True
        self.hang_up()

    def _ws_fail(self, code: int, reason: str) -> None:
        """RFC 6455 §7.1.7: fail the connection with a Close frame."""
        transport = self.transport
        if transport is None or self._ws_closed:
            return
        self._flush()
        transport.write(close_frame(code, reason))
        self._ws_closed = True
        self._closing = True
        transport.close()
