"""Sans-I/O incremental parser for an XMPP XML stream (RFC 6120 §4 and §11).

Bytes go in with `StreamParser.feed`, events come out: `StreamOpened` for the stream header
(RFC 6120 §4.7), `StanzaReceived` for every complete first-level child of the stream
(RFC 6120 §4.1, "XML stanza" or stream-level element) and `StreamClosed` for
`</stream:stream>` (RFC 6120 §4.4).  Any violation raises `StreamError`; after that the
parser is dead and keeps raising the same error.  A new parser is made for every stream
restart (RFC 6120 §4.3.3): nothing is shared between instances.

The security model (restricted XML, entities, namespaces, encoding) and how each limit of
`ParserLimits` is enforced while bytes arrive are in docs/parser.md.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Final, TypeAlias
from xml.sax.saxutils import quoteattr

from lxml import etree

from shared.xmpp import ns
from shared.xmpp.errors import StreamError, StreamErrorCondition

__all__ = [
    "POST_AUTH_LIMITS",
    "PRE_AUTH_LIMITS",
    "Event",
    "ParserLimits",
    "StanzaReceived",
    "StreamClosed",
    "StreamOpened",
    "StreamParser",
    "parse_fragment",
    "serialize",
]


@dataclass(frozen=True, slots=True)
class ParserLimits:
    """Resource limits of one stream (RFC 6120 §13.12); violations are POLICY_VIOLATION."""

    max_stanza_bytes: int = 256 * 1024  # per first-level child of the stream, while parsing
    max_stanza_elements: int = 10_000  # elements inside one stanza, the stanza included
    max_depth: int = 32  # nesting depth inside a stanza, the stanza element is depth 1
    max_attributes: int = 64  # per element, namespace declarations included
    max_attribute_chars: int = 4096  # characters of one attribute value (a JID is < 3072 B)
    max_header_bytes: int = 4096  # everything before the root start tag completes
    # distinct element and attribute names in one stream: libxml2 interns every name in a
    # per-thread dictionary that never shrinks, so a peer inventing names grows memory
    max_distinct_names: int = 2000


PRE_AUTH_LIMITS: Final = ParserLimits(max_stanza_bytes=8 * 1024, max_stanza_elements=32)
POST_AUTH_LIMITS: Final = ParserLimits()


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The stream header, ``<stream:stream ...>`` (RFC 6120 §4.7)."""

    attrs: dict[str, str]  # unqualified attributes; {xml ns}lang comes as 'xml:lang'
    default_ns: str | None  # default namespace declared on the header (jabber:client)
    stream_ns: str | None  # namespace of the root element (http://etherx.jabber.org/streams)
    local_name: str  # 'stream' expected
    prefix: str | None  # prefix of the root element ('stream' expected)


@dataclass(frozen=True, slots=True)
class StanzaReceived:
    """A complete first-level child of the stream, detached into a document of its own."""

    element: etree._Element


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """``</stream:stream>`` (RFC 6120 §4.4); whatever follows it is ignored."""


Event: TypeAlias = StreamOpened | StanzaReceived | StreamClosed

_WS: Final = b" \t\r\n"
_BOM: Final = b"\xef\xbb\xbf"
_XML_LANG: Final = f"{{{ns.XML}}}lang"
_STREAM_TAG: Final = f"{{{ns.STREAM}}}stream"
_ENCODING_RE: Final = re.compile(rb"""\sencoding\s*=\s*(["'])([^"']*)\1""")
# Markup declarations can only come from a DTD: inside the root they are syntax errors for
# libxml2, which we report as restricted XML (RFC 6120 §11.1).
_MARKUP_DECL_RE: Final = re.compile(rb"<!(?:DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)")
_UNDECLARED_ENTITY: Final = frozenset(
    {etree.ErrorTypes.ERR_UNDECLARED_ENTITY, etree.ErrorTypes.WAR_UNDECLARED_ENTITY}
)

VALUE_BYTES_PER_CHAR: Final = 10  # the longest byte form of one character: ``&#x10FFFF;``
_CDATA_OPEN: Final = b"<![CDATA["
_CDATA_CLOSE: Final = b"]]>"
_ERROR_LEVEL: Final = etree.ErrorLevels.ERROR
_ELEMENT_EVENT: Final = 1
_BOUNDARY: Final = 2
_NOT_WELL_FORMED: Final = StreamErrorCondition.NOT_WELL_FORMED
_RESTRICTED_XML: Final = StreamErrorCondition.RESTRICTED_XML
_POLICY_VIOLATION: Final = StreamErrorCondition.POLICY_VIOLATION


def _new_lxml_parser() -> etree.XMLPullParser:
    """The only way this module builds an lxml parser: nothing resolved, loaded or fetched."""
    return etree.XMLPullParser(
        events=("start", "end", "start-ns", "comment", "pi"),
        encoding="utf-8",  # RFC 6120 §11.6; never trust a declaration or a BOM
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        attribute_defaults=False,
        huge_tree=False,
        recover=False,
        remove_blank_text=False,
        remove_comments=False,  # we want to see them, to refuse them
        remove_pis=False,
        collect_ids=False,  # no xml:id hash table growing with the stream
    )


def _violation(text: str) -> StreamError:
    return StreamError(_POLICY_VIOLATION, text)


def _syntax_error(exc: etree.XMLSyntaxError, recent: bytes) -> StreamError:
    """Map an lxml syntax error; `recent` is the slice that failed plus a few bytes before."""
    if _MARKUP_DECL_RE.search(recent):
        return StreamError(_RESTRICTED_XML, "DTDs are not allowed")
    message = (exc.msg or "").splitlines()[0] if exc.msg else ""
    return StreamError(_NOT_WELL_FORMED, message[:200] or None)


def _logged_error(error: etree._LogEntry) -> StreamError:
    """The stream error for an error lxml logged without raising it (module docstring)."""
    if error.type in _UNDECLARED_ENTITY:
        return StreamError(_RESTRICTED_XML, "entity references are not allowed")
    message = (error.message or "").strip()
    return StreamError(_NOT_WELL_FORMED, message[:200] or None)


def _check_error_log(xml: etree.XMLPullParser) -> None:
    error = xml.feed_error_log.last_error
    if error is not None and error.level >= _ERROR_LEVEL:
        raise _logged_error(error)


class _Prolog:
    """Checks the bytes before the root element's start tag, before libxml2 sees them.

    Allowed: an optional UTF-8 BOM, an optional XML declaration naming no encoding but UTF-8,
    whitespace.  Anything else starting with ``<!`` or ``<?`` is restricted XML; other text
    is not well-formed.  `scan` is fed the whole prolog seen so far each time (it is bounded
    by `ParserLimits.max_header_bytes`) and resumes where it stopped.
    """

    __slots__ = ("done", "pos")

    def __init__(self) -> None:
        self.pos = 0
        self.done = False

    def scan(self, buf: bytes) -> None:
        pos = self.pos
        n = len(buf)
        if pos == 0:
            if n < 3 and _BOM.startswith(buf):
                return  # maybe a BOM, wait for more
            if buf.startswith(_BOM):
                pos = 3
            elif buf[:2] in (b"\xfe\xff", b"\xff\xfe") or b"\x00" in buf[:2]:
                raise StreamError(StreamErrorCondition.UNSUPPORTED_ENCODING, "UTF-8 required")
            # The XML declaration is only allowed here, at the very start.
            head = buf[pos : pos + 6]
            if b"<?xml"[: len(head)] == head[:5]:
                if len(head) < 6:
                    return  # could still be '<?xml ' or a PI: wait
                if head[5:6] in (b" ", b"\t", b"\r", b"\n"):
                    end = buf.find(b"?>", pos)
                    if end < 0:
                        if b"<" in buf[pos + 1 :]:
                            raise StreamError(_NOT_WELL_FORMED, "bad XML declaration")
                        return  # wait for the end of the declaration
                    if b"<" in buf[pos + 1 : end]:
                        raise StreamError(_NOT_WELL_FORMED, "bad XML declaration")
                    _check_declaration(buf[pos : end + 2])
                    pos = end + 2
        while pos < n:
            byte = buf[pos]
            if byte in _WS:
                pos += 1
                continue
            if byte != 0x3C:  # '<'
                raise StreamError(_NOT_WELL_FORMED, "text before the stream header")
            if pos + 1 >= n:
                break  # wait for the byte after '<'
            nxt = buf[pos + 1]
            if nxt == 0x21:  # '!'
                what = "comments" if buf[pos + 2 : pos + 3] == b"-" else "DTDs"
                raise StreamError(_RESTRICTED_XML, f"{what} are not allowed")
            if nxt == 0x3F:  # '?'
                raise StreamError(_RESTRICTED_XML, "processing instructions are not allowed")
            self.done = True  # the root start tag: libxml2 takes it from here
            break
        self.pos = pos


def _header_copy(root: etree._Element) -> bytes:
    """A start tag equivalent to the stream header for a new parser: same qualified name, same
    namespace declarations (attributes are not needed: stanzas are detached copies)."""
    local = etree.QName(root).localname
    name = f"{root.prefix}:{local}" if root.prefix else local
    decls = "".join(
        f" xmlns:{prefix}={quoteattr(uri)}" if prefix else f" xmlns={quoteattr(uri)}"
        for prefix, uri in root.nsmap.items()
    )
    return f"<{name}{decls}>".encode()


def _retire(xml: etree.XMLPullParser, root: etree._Element | None) -> None:
    """Let go of a parser whose stream is over or asleep, so that reference counting frees it.

    An lxml parser and the document it is building point at each other until the document
    ends: dropped half-way, the pair (17 objects with its context, error log and event queue)
    waits for the cyclic garbage collector, three times per login (loadtest/RESULTS.md,
    "session 5 — the garbage collector").  Ending the document with the root's own end tag
    and closing the parser breaks that cycle.  Where it cannot end cleanly (mid-stanza, or
    already failed), the collector still frees the pair later."""
    try:
        if root is not None:
            prefix = root.prefix
            name = etree.QName(root).localname
            xml.feed((f"</{prefix}:{name}>" if prefix else f"</{name}>").encode())
        # read to the end: lxml keeps the events already read (the root's among them) in its
        # queue until it finds the queue empty
        for _ in xml.read_events():
            pass
        xml.close()
    except etree.XMLSyntaxError:
        pass


def _check_values(el: etree._Element, limit: int) -> None:
    for value in el.values():
        if len(value) > limit:
            raise _violation("attribute value too long")


class _OpenTag:
    """Where the markup arriving stands: in text, in a tag, in an attribute value, or in a
    CDATA section; for an open tag, its ``=`` so far and the bytes of its open value.

    `scan` follows one slice.  Only the markup after the last ``<`` outside CDATA matters
    (``<`` may appear in no tag and no attribute value), so a slice costs one ``rfind`` and a
    few ``find`` calls, not a look at every byte."""

    __slots__ = ("cdata", "eq", "state", "value")

    def __init__(self) -> None:
        self.state = -1  # -1: text; 0: in a tag, between values; else the quote of a value
        self.eq = 0  # '=' outside values in the open tag
        self.value = 0  # bytes of the open value
        self.cdata = False

    def scan(self, piece: bytes) -> None:
        state = self.state
        pos = 0
        n = len(piece)
        while pos < n:
            if self.cdata:
                end = piece.find(_CDATA_CLOSE, pos)
                if end < 0:
                    return
                self.cdata = False
                pos = end + 3
                continue
            if state < 0:
                lt = piece.rfind(b"<", pos)
                if lt < 0:
                    break
                cd = piece.rfind(_CDATA_OPEN, pos, lt + len(_CDATA_OPEN))
                if cd >= 0:  # the last '<' may be inside a CDATA section
                    end = piece.find(_CDATA_CLOSE, cd)
                    if end < 0:
                        self.cdata = True
                        break
                    if lt < end + 3:
                        pos = end + 3
                        continue
                state, self.eq, pos = 0, 0, lt + 1
                continue
            if state == 0:
                gt = piece.find(b">", pos)
                q1 = piece.find(b'"', pos)
                q2 = piece.find(b"'", pos)
                q = q1 if q2 < 0 or 0 <= q1 < q2 else q2
                if gt >= 0 and (q < 0 or gt < q):
                    state, pos = -1, gt + 1
                    continue
                stop = n if q < 0 else q
                self.eq += piece.count(b"=", pos, stop)
                if q < 0:
                    break
                state, self.value, pos = piece[q], 0, q + 1
                continue
            end = piece.find(b"'" if state == 0x27 else b'"', pos)
            if end < 0:
                self.value += n - pos
                break
            state, pos = 0, end + 1
        self.state = state

    def check(self, limits: ParserLimits) -> None:
        if self.state > 0 and self.value > limits.max_attribute_chars * VALUE_BYTES_PER_CHAR:
            raise _violation("attribute value too long")
        if self.state >= 0 and self.eq > limits.max_attributes:
            raise _violation("too many attributes")


def _check_declaration(decl: bytes) -> None:
    match = _ENCODING_RE.search(decl)
    if match is not None and match.group(2).lower() not in (b"utf-8", b"utf8"):
        raise StreamError(StreamErrorCondition.UNSUPPORTED_ENCODING, "UTF-8 required")


class StreamParser:
    """Incremental parser of one XML stream; see the module docstring for the rules.

    `limits` may be reassigned between two `feed` calls (the stream state machine raises
    them after authentication).
    """

    __slots__ = (  # one per connection: no instance dict
        "_attached",
        "_carry",
        "_closed",
        "_count",
        "_default_ns",
        "_depth",
        "_dirty",
        "_elements",
        "_eq",
        "_error",
        "_head",
        "_header_fed",
        "_limits",
        "_names",
        "_open_tag",
        "_pending_ns",
        "_prolog",
        "_root",
        "_slice",
        "_span",
        "_wake_header",
        "_xml",
    )

    def __init__(self, limits: ParserLimits = PRE_AUTH_LIMITS) -> None:
        self.limits = limits
        self._xml: etree.XMLPullParser | None = _new_lxml_parser()  # None: hibernating
        self._wake_header = b""  # a copy of the stream header to prime a new parser with
        self._prolog: _Prolog | None = _Prolog()
        self._head = b""  # prolog bytes seen so far, only until the root start tag
        self._header_fed = 0
        self._root: etree._Element | None = None
        self._default_ns: str | None = None
        self._depth = -1  # -1 before the root, 0 between stanzas, 1 in a stanza element
        self._elements = 0  # elements of the current stanza
        self._pending_ns = 0  # start-ns events not yet claimed by a start event
        # distinct element and attribute names of the stream (a tuple while hibernating)
        self._names: set[str] | tuple[str, ...] = set()
        self._count = 0  # bytes of the stanza being received (see the module docstring)
        self._dirty = False  # non-whitespace bytes fed since the last stanza ended
        self._eq = 0  # '=' fed since the last piece with an element event
        self._span = 0  # bytes fed since the last piece with an element event
        self._attached = 0  # delivered stanzas whose originals are still in the tree
        self._carry = b""  # end of the previous slice, to recognise split markup
        self._closed = False
        self._error: StreamError | None = None
        self._open_tag = _OpenTag()

    @property
    def limits(self) -> ParserLimits:
        """The limits in force; assignable between two `feed` calls."""
        return self._limits

    @limits.setter
    def limits(self, limits: ParserLimits) -> None:
        self._limits = limits
        self._slice = max(512, min(4096, limits.max_stanza_bytes // 8))

    @property
    def closed(self) -> bool:
        """True once </stream:stream> was seen."""
        return self._closed

    def hibernate(self) -> bool:
        """Free libxml2's parser while the stream sits idle between two stanzas.

        An idle connection then holds no parser (about 10 KiB with its buffers, error log and
        document); the next `feed` builds a new one and primes it with a copy of the stream
        header (the peer's own prefix and namespace declarations, so ``</stream:stream>``
        still matches and stanzas still inherit the default namespace).  Only possible at a
        stanza boundary with nothing but whitespace fed since.  True when a parser was freed
        now (False when busy, or already hibernating).  The distinct-name count is kept.
        """
        if self._xml is None:
            return False
        root = self._root
        if (
            root is None
            or self._depth != 0
            or self._dirty
            or self._closed
            or self._error is not None
        ):
            return False
        self._wake_header = _header_copy(root)
        _retire(self._xml, root)
        self._xml = None
        self._root = None
        self._attached = 0  # their originals go with the old document
        self._names = tuple(self._names)
        return True

    def release(self) -> None:
        """The stream is over (a restart replaces it, or the connection closed): free
        libxml2's parser at once (`_retire`).  What is fed after this is ignored."""
        xml, root = self._xml, self._root
        self._xml = None
        self._root = None
        self._wake_header = b""
        if xml is not None:
            _retire(xml, None if self._closed else root)  # a closed stream's document ended

    def _wake(self) -> None:
        xml = _new_lxml_parser()
        xml.feed(self._wake_header)
        root = None
        for kind, el in xml.read_events():
            if kind == "start":
                root = el
        assert root is not None, "a header copy always parses"
        self._xml = xml
        self._root = root
        self._wake_header = b""
        self._names = set(self._names)
        self._pending_ns = self._eq = self._span = self._count = 0
        self._carry = b""

    def feed(self, data: bytes) -> list[Event]:
        """Parse `data`; return the events it completes.  Raises `StreamError`."""
        if self._error is not None:
            raise StreamError(self._error.condition, self._error.text)
        if self._closed or not data:
            return []
        if self._xml is None:
            if not self._wake_header:
                return []  # released
            self._wake()
        if type(data) is not bytes:
            data = bytes(data)  # lxml takes nothing else; a bytearray from a socket is fine
        out: list[Event] = []
        try:
            if self._root is not None and len(data) <= self._slice:
                self._feed_piece(data, out)  # the common case: one read, one slice
            else:
                self._feed_slices(data, out)
        except StreamError as exc:
            self._error = exc
            self._root = None
            raise
        return out

    # ---- internals -------------------------------------------------------------------------

    def _feed_slices(self, data: bytes, out: list[Event]) -> None:
        pos = 0
        n = len(data)
        while pos < n and not self._closed:
            step = self._slice
            if self._root is None:
                room = self._limits.max_header_bytes - self._header_fed
                if room <= 0:
                    raise _violation("stream header too large")
                step = min(step, room)
                piece = data[pos : pos + step]
                self._feed_header(piece, out)
            else:
                piece = data[pos : pos + step]
                self._feed_piece(piece, out)
            pos += step

    def _feed_header(self, piece: bytes, out: list[Event]) -> None:
        """A slice fed before the root start tag completed (it may complete in this one)."""
        prolog = self._prolog
        if prolog is not None:
            self._head += piece
            prolog.scan(self._head)  # raises before libxml2 sees a DTD, comment or PI
            if prolog.done:
                self._prolog = None
                self._head = b""
        self._header_fed += len(piece)
        self._feed_piece(piece, out)
        if self._root is None and self._header_fed >= self._limits.max_header_bytes:
            raise _violation("stream header too large")

    def _feed_piece(self, piece: bytes, out: list[Event]) -> None:
        root = self._root
        if self._attached:
            self._drop_attached(root)
        # Attributes are only counted when the '=' signs fed since the last piece that
        # completed an element could add up to more than the limit: a start tag completing in
        # this piece began after the last element event, so its '=' are all in that window.
        eq = piece.count(b"=")
        count_attrs = self._eq + eq > self._limits.max_attributes
        check_values = self._span + len(piece) > self._limits.max_attribute_chars
        xml = self._xml
        assert xml is not None  # feed() wakes a hibernating parser first
        open_tag = self._open_tag
        lt = piece.rfind(b"<")
        if (  # inline, the common slice: it ends in text after a complete tag (</message>)
            open_tag.state >= 0 or open_tag.cdata or (lt >= 0 and (
                _CDATA_OPEN in piece or (gt := piece.find(b">", lt)) < 0
                or piece.find(b"'", lt, gt) >= 0 or piece.find(b'"', lt, gt) >= 0
            ))
        ):
            open_tag.scan(piece)
            if open_tag.state >= 0:
                open_tag.check(self._limits)  # before libxml2 takes the bytes
        try:
            xml.feed(piece)
        except etree.XMLSyntaxError as exc:
            # Events decoded before the error still count: a limit, a comment or the end of
            # the stream that came first takes precedence.
            self._drain(out, True, True)
            if self._closed:
                return
            raise _syntax_error(exc, self._carry + piece) from None
        seen = self._drain(out, count_attrs, check_values)
        # lxml does not raise namespace errors nor undeclared entities (module docstring).
        error = xml.feed_error_log.last_error
        if error is not None and error.level >= _ERROR_LEVEL:
            raise _logged_error(error)
        self._eq = eq if seen else self._eq + eq
        self._span = len(piece) if seen else self._span + len(piece)
        self._carry = piece[-16:]
        if self._closed:
            return
        if root is None:
            root = self._root
            if root is None:
                return
        text = root.text
        if text is not None:
            if text.strip(" \t\r\n"):
                raise StreamError(StreamErrorCondition.BAD_FORMAT, "text between stanzas")
            root.text = None  # whitespace keepalives must not pile up
        # Bytes of the stanza being received (module docstring).
        if seen & _BOUNDARY:
            tail = piece[piece.rfind(b">") + 1 :]
            if self._depth == 0:
                tail = tail.lstrip(_WS)
                self._dirty = bool(tail)
            else:
                self._dirty = True
            self._count = count = len(tail)
        elif self._dirty:
            self._count = count = self._count + len(piece)
        else:
            rest = piece.lstrip(_WS)
            if not rest:
                return  # a whitespace keepalive
            self._dirty = True
            self._count = count = len(rest)
        if count > self._limits.max_stanza_bytes:
            raise _violation("stanza too large")

    def _drop_attached(self, root: etree._Element | None) -> None:
        """Free the originals of the stanzas delivered by the previous piece.

        They stay attached until now because lxml's event queue holds proxies to them until
        it is exhausted, and removing an element that has proxies costs a namespace
        reconciliation of the whole subtree; without proxies lxml just frees it.
        """
        assert root is not None
        for _ in range(self._attached):
            tail = root[0].tail  # what came after the stanza since it ended
            if tail is not None and tail.strip(" \t\r\n"):
                raise StreamError(StreamErrorCondition.BAD_FORMAT, "text between stanzas")
            del root[0]
        self._attached = 0

    def _drain(self, out: list[Event], count_attrs: bool, check_values: bool) -> int:
        """Handle lxml's pending events; return a mask of _ELEMENT_EVENT and _BOUNDARY (a
        stanza ended or the root started)."""
        seen = 0
        limits = self._limits
        root = self._root
        depth = self._depth
        try:
            for kind, el in self._xml.read_events():
                if kind == "start":
                    seen |= _ELEMENT_EVENT
                    keys = el.keys()
                    if count_attrs and self._pending_ns + len(keys) > limits.max_attributes:
                        raise _violation("too many attributes")
                    names = self._names
                    if el.tag not in names or not names.issuperset(keys):
                        assert isinstance(names, set)
                        names.add(sys.intern(el.tag))
                        names.update(map(sys.intern, keys))
                        if len(names) > limits.max_distinct_names:
                            raise _violation("too many distinct names")
                    self._pending_ns = 0
                    if check_values:
                        _check_values(el, limits.max_attribute_chars)
                    if depth == 0:
                        if el.getparent() is not root:
                            # lxml swallowed an error and restarted its document
                            raise StreamError(_NOT_WELL_FORMED, "parser reset")
                        if el.tag == _STREAM_TAG:
                            raise StreamError(
                                StreamErrorCondition.UNSUPPORTED_STANZA_TYPE,
                                "a second stream header without a restart",
                            )
                        self._elements = 0
                    elif depth < 0:
                        root = self._open(el, out)
                        seen |= _BOUNDARY
                        depth = 0
                        continue
                    depth += 1
                    self._elements = elements = self._elements + 1
                    if depth > limits.max_depth:
                        raise _violation("stanza nested too deeply")
                    if elements > limits.max_stanza_elements:
                        raise _violation("too many elements in a stanza")
                elif kind == "end":
                    seen |= _ELEMENT_EVENT
                    depth -= 1
                    if depth == 0:
                        tail = el.tail
                        if tail is not None and tail.strip(" \t\r\n"):
                            raise StreamError(
                                StreamErrorCondition.BAD_FORMAT, "text between stanzas"
                            )
                        # A deep copy into a document of its own declares exactly the
                        # namespaces in use, under the peer's prefixes (module docstring).
                        stanza = el.__copy__()
                        if tail is not None:
                            stanza.tail = None
                        self._attached += 1
                        out.append(StanzaReceived(stanza))
                        seen |= _BOUNDARY
                    elif depth < 0:
                        out.append(StreamClosed())
                        self._closed = True
                        break
                elif kind == "start-ns":
                    self._pending_ns += 1
                    if depth < 0 and not el[0]:
                        self._default_ns = el[1]
                elif kind == "comment":
                    raise StreamError(_RESTRICTED_XML, "comments are not allowed")
                else:  # "pi"
                    raise StreamError(_RESTRICTED_XML, "processing instructions are not allowed")
        finally:
            self._depth = depth
        return seen

    def _open(self, root: etree._Element, out: list[Event]) -> etree._Element:
        attrs: dict[str, str] = {}
        for key, value in root.items():
            if key[0] != "{":
                attrs[key] = value
            elif key == _XML_LANG:
                attrs["xml:lang"] = value
        # Not etree.QName(root): it raises ValueError for a tag like 'stream:stream' (an
        # undeclared prefix), which the error log check after this drain reports instead.
        tag = root.tag
        namespace: str | None = None
        if tag[0] == "{":
            namespace, _, tag = tag[1:].partition("}")
        out.append(
            StreamOpened(
                attrs=attrs,
                default_ns=self._default_ns,
                stream_ns=namespace,
                local_name=tag,
                prefix=root.prefix,
            )
        )
        self._root = root
        self._depth = 0
        return root


def serialize(element: etree._Element) -> bytes:
    """The UTF-8 bytes of a stanza for the wire, without the stream's namespace declarations.

    A stanza from `StreamParser` or `parse_fragment` is the root of its own document and
    declares just the namespaces it uses, so ``{jabber:client}message`` comes out as
    ``<message xmlns="jabber:client" ...>``: the explicit default namespace is kept because
    the bytes also travel outside this stream (bus, storage, ``parse_fragment``) and inside
    a jabber:client stream the declaration is redundant but harmless.  An element still
    attached to a tree is copied first, which drops inherited declarations it does not use.
    The tail is never included.
    """
    if element.getparent() is not None:
        element = element.__copy__()
    return etree.tostring(element, encoding="utf-8", with_tail=False)


def parse_fragment(
    data: bytes, max_bytes: int = POST_AUTH_LIMITS.max_stanza_bytes
) -> etree._Element:
    """Parse one standalone element (such as `serialize` output) with the stream's rules.

    Same lxml settings and restricted-XML checks as `StreamParser`, `POST_AUTH_LIMITS` for
    depth, elements and attributes, and at most `max_bytes` bytes.  Raises `StreamError`.
    """
    if len(data) > max_bytes:
        raise _violation("stanza too large")
    prolog = _Prolog()
    prolog.scan(data)
    if not prolog.done:
        raise StreamError(_NOT_WELL_FORMED, "no element")
    limits = POST_AUTH_LIMITS
    xml = _new_lxml_parser()
    depth = 0
    elements = 0
    pending_ns = 0
    root: etree._Element | None = None
    try:
        xml.feed(data)
        _check_error_log(xml)
        root = xml.close()
    except etree.XMLSyntaxError as exc:
        raise _syntax_error(exc, data) from None
    _check_error_log(xml)
    for kind, el in xml.read_events():
        if kind == "start":
            depth += 1
            elements += 1
            if depth > limits.max_depth:
                raise _violation("stanza nested too deeply")
            if elements > limits.max_stanza_elements:
                raise _violation("too many elements in a stanza")
            if pending_ns + len(el.keys()) > limits.max_attributes:
                raise _violation("too many attributes")
            _check_values(el, limits.max_attribute_chars)
            pending_ns = 0
        elif kind == "end":
            depth -= 1
        elif kind == "start-ns":
            pending_ns += 1
        elif kind == "comment":
            raise StreamError(_RESTRICTED_XML, "comments are not allowed")
        else:
            raise StreamError(_RESTRICTED_XML, "processing instructions are not allowed")
    if root is None or not isinstance(root.tag, str):  # pragma: no cover - lxml guarantees
        raise StreamError(_NOT_WELL_FORMED, "no element")
    return root
