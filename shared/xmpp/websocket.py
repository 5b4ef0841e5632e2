"""XMPP over WebSocket (RFC 7395) on RFC 6455 frames, sans-I/O.

Two pieces, both without I/O:

* `FrameDecoder` / `encode_frame` / `accept_key`: the server side of RFC 6455 (the opening
  handshake's accept value, frames in and out).  Only what a server must do: client frames
  are masked (§5.1), no extension is negotiated so RSV bits are 0 (§5.2), control frames are
  short and not fragmented (§5.5), messages are bounded (``max_message``; past it close code
  1009, §7.4.1).  Violations raise `WebSocketError` with the close code to send.
* `Framing`: RFC 7395 §3.3 between one WebSocket message per element and the byte stream the
  c2s machine (`shared.xmpp.c2s`) speaks.  Inbound, ``<open/>`` becomes a stream header and
  ``<close/>`` the closing tag; other messages go to the stream parser as they are, so the
  same parser limits and restricted-XML rules apply.  Outbound, what the machine and the
  deliveries write (whole elements, canonical stanzas) is split into top-level elements, one
  message each; our stream header becomes ``<open/>``, the closing tag ``<close/>`` (with
  ``see-other-uri`` when the server redirects, §3.6.1), and each element declares the
  namespaces it used from the stream header (§3.3.3: every message is a standalone
  document).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Final
from xml.sax.saxutils import quoteattr

from shared.xmpp import ns
from shared.xmpp.parser import parse_fragment

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
SUBPROTOCOL: Final = "xmpp"  # RFC 7395 §3.1
FRAMING_NS: Final = "urn:ietf:params:xml:ns:xmpp-framing"

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

# close codes (RFC 6455 §7.4.1)
NORMAL: Final = 1000
GOING_AWAY: Final = 1001
PROTOCOL_ERROR: Final = 1002
UNSUPPORTED_DATA: Final = 1003
TOO_BIG: Final = 1009


class WebSocketError(Exception):
    """The peer broke RFC 6455: close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def accept_key(key: str) -> str | None:
    """The Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (RFC 6455 §4.2.2), or None
    when the key is not the base64 of 16 bytes (§4.2.1: then the handshake fails)."""
    try:
        if len(base64.b64decode(key.strip(), validate=True)) != 16:
            return None
    except ValueError:
        return None
    digest = hashlib.sha1(key.strip().encode() + GUID).digest()  # RFC 6455, not a secret
    return base64.b64encode(digest).decode()


def encode_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One unmasked, final frame (a server never masks, RFC 6455 §5.1)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return encode_frame(CLOSE, code.to_bytes(2, "big") + reason.encode()[:120])


def _unmask(mask: bytes, payload: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class FrameDecoder:
    """Client frames in, complete messages and control frames out: ``(opcode, payload)``
    with opcode TEXT, BINARY, CLOSE, PING or PONG (fragments are joined)."""

    __slots__ = ("_buf", "_op", "_parts", "_size", "max_message")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buf = b""
        self._op = 0  # opcode of the fragmented message under way; 0: none
        self._parts: list[bytes] | None = None
        self._size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                raise WebSocketError(PROTOCOL_ERROR, "reserved bits set")
            if not b1 & 0x80:
                raise WebSocketError(PROTOCOL_ERROR, "client frames must be masked")
            fin, opcode, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            control = opcode & 0x8
            if control and (not fin or length > 125):
                raise WebSocketError(PROTOCOL_ERROR, "bad control frame")
            if not control and self._size + length > self.max_message:
                raise WebSocketError(TOO_BIG, "message too big")
            if end - pos < head + 4 + length:
                break
            mask = buf[pos + head : pos + head + 4]
            start = pos + head + 4
            payload = _unmask(mask, buf[start : start + length])
            pos = start + length
            if control:
                if opcode not in (CLOSE, PING, PONG):
                    raise WebSocketError(PROTOCOL_ERROR, "unknown control opcode")
                out.append((opcode, payload))
                continue
            if opcode == CONTINUATION:
                if self._parts is None:
                    raise WebSocketError(PROTOCOL_ERROR, "continuation without a message")
                self._parts.append(payload)
                self._size += length
                if fin:
                    out.append((self._op, b"".join(self._parts)))
                    self._parts, self._op, self._size = None, 0, 0
                continue
            if opcode not in (TEXT, BINARY):
                raise WebSocketError(PROTOCOL_ERROR, "unknown opcode")
            if self._parts is not None:
                raise WebSocketError(PROTOCOL_ERROR, "a new message inside a fragmented one")
            if fin:
                out.append((opcode, payload))
            else:
                self._parts, self._op, self._size = [payload], opcode, length
        self._buf = buf[pos:] if pos < end else b""
        if len(self._buf) > self.max_message + 14:  # pragma: no cover - bounded above
            raise WebSocketError(TOO_BIG, "frame too big")
        return out


# ---- RFC 7395 framing -------------------------------------------------------------------------

_OPEN_TAG: Final = f"{{{FRAMING_NS}}}open"
_CLOSE_TAG: Final = f"{{{FRAMING_NS}}}close"
_XML_LANG: Final = "{http://www.w3.org/XML/1998/namespace}lang"
STREAM_CLOSE: Final = b"</stream:stream>"
_OPEN_MAX: Final = 2048
# A start, end or empty tag of the server's own output (attribute values are quoted; text
# never holds a raw '<'), or the XML declaration.  Runs of plain attribute text are taken
# whole and a '/' only where no '>' follows, so no lazy per-byte alternation: about half the
# time per outgoing stanza (loadtest/RESULTS.md, "WebSocket: CPU per message beside TCP").
_MARKUP: Final = re.compile(rb"""<(/?)([^\s/>]+)(?:[^>"'/]+|"[^"]*"|'[^']*'|/(?!>))*(/?)>""")
_ATTR: Final = re.compile(rb"""([\w:.-]+)\s*=\s*("[^"]*"|'[^']*')""")
_HAS_DEFAULT_NS: Final = re.compile(rb"""\sxmlns\s*=""")
_STREAM_DECL: Final = f' xmlns:stream="{ns.STREAM}"'.encode()
_CLIENT_DECL: Final = f' xmlns="{ns.CLIENT}"'.encode()


def client_open(message: bytes) -> bytes | None:
    """RFC 7395 §3.4: a client's ``<open/>`` as the stream header the c2s machine reads, or
    None when ``message`` is not one.  Raises the parser's `StreamError` when it does not
    parse."""
    head = message.lstrip()
    if not head.startswith(b"<open"):
        return None
    element = parse_fragment(head, _OPEN_MAX)
    if element.tag != _OPEN_TAG:
        return None
    attrs = "".join(
        f" {name}={quoteattr(element.get(key) or '')}"
        for name, key in (("to", "to"), ("from", "from"), ("version", "version"),
                          ("xml:lang", _XML_LANG))
        if element.get(key) is not None
    )
    return (f'<stream:stream xmlns="{ns.CLIENT}" xmlns:stream="{ns.STREAM}"{attrs}>').encode()


def is_client_close(message: bytes) -> bool:
    """RFC 7395 §3.6: ``<close xmlns="urn:ietf:params:xml:ns:xmpp-framing"/>``."""
    head = message.strip()
    if not head.startswith(b"<close") or len(head) > _OPEN_MAX:
        return False
    try:
        return parse_fragment(head, _OPEN_MAX).tag == _CLOSE_TAG
    except Exception:
        return False


def server_open(header: bytes) -> bytes:
    """Our ``<stream:stream ...>`` start tag as RFC 7395 §3.4's ``<open/>``."""
    keep = []
    for m in _ATTR.finditer(header):
        name = m.group(1)
        if name.startswith(b"xmlns"):
            continue
        keep.append(b" " + name + b"=" + m.group(2))
    return b'<open xmlns="' + FRAMING_NS.encode() + b'"' + b"".join(keep) + b"/>"


def server_close(see_other_uri: str = "") -> bytes:
    """RFC 7395 §3.6 ``<close/>``; with a URI, §3.6.1's redirect."""
    uri = f" see-other-uri={quoteattr(see_other_uri)}" if see_other_uri else ""
    return f'<close xmlns="{FRAMING_NS}"{uri}/>'.encode()


def _standalone(element: bytes, name: bytes) -> bytes:
    """§3.3.3: a top-level element declares what it used from the stream header."""
    end = len(name) + 1
    if name.startswith(b"stream:"):
        return element[:end] + _STREAM_DECL + element[end:]
    tag_end = element.index(b">")
    if _HAS_DEFAULT_NS.search(element, 0, tag_end) is None:
        return element[:end] + _CLIENT_DECL + element[end:]
    return element


class Framing:
    """Splits what the server writes on a c2s stream into RFC 7395 messages."""

    __slots__ = ("_rest", "see_other_uri")

    def __init__(self) -> None:
        self._rest = b""  # an element not yet complete (whole elements are written)
        self.see_other_uri = ""

    def messages(self, data: bytes) -> list[bytes]:
        if self._rest:
            data = self._rest + data
            self._rest = b""
        out: list[bytes] = []
        depth = 0
        start = 0
        name = b""
        for m in _MARKUP.finditer(data):
            closing, tag, empty = m.groups()
            if depth == 0:
                if tag.startswith(b"?"):
                    continue  # the XML declaration
                if tag == b"stream:stream":
                    out.append(server_close(self.see_other_uri) if closing
                               else server_open(m.group(0)))
                    continue
                if empty:
                    out.append(_standalone(m.group(0), tag))
                    continue
                start, name, depth = m.start(), tag, 1
                continue
            if closing:
                depth -= 1
                if depth == 0:
                    out.append(_standalone(data[start : m.end()], name))
            elif not empty:
                depth += 1
        if depth:
            self._rest = data[start:]
        return out
