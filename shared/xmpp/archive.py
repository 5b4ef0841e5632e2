"""Message archiving rules, sans-I/O: XEP-0359 stanza ids, XEP-0334 hints, XEP-0280 carbon
copies and XEP-0313 (MAM, urn:xmpp:mam:2) queries, results and preferences.

Stanza ids are assigned once where a message enters the cluster (the connection manager for
a local sender, the s2s gateway for a remote one) and travel as the message's *last* child,
``<stanza-id xmlns="urn:xmpp:sid:0" by=... id=.../>`` appended to the canonical bytes
(`with_stanza_id`), so that routers find, strip and rewrite it without parsing (`split_tail`).
An id is 14 hex digits of the time it was assigned (µs since the epoch), then 10 of this
process's tag and a counter: ids sort by time, and the archive time of a message is read
from its id (`time_of`), so a lookup by id is a lookup by (time, id).
"""

from __future__ import annotations

import datetime
import functools
import itertools
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from shared.xmpp import ns
from shared.xmpp.errors import StanzaError, StanzaErrorCondition
from shared.xmpp.jid import JID, JIDError, domain_of

# ---- XEP-0359 stanza ids ------------------------------------------------------------------

_TAG: Final = secrets.token_hex(2)  # this process's, so that two processes never collide
_COUNTER = itertools.count()
_ID_RE: Final = re.compile(r"[0-9a-f]{24}")
_ID_BYTES_RE: Final = re.compile(rb"[0-9a-f]{24}")
ID_LEN: Final = 24
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def new_id(ts_us: int) -> str:
    """A new archive id for a message that entered the cluster at ``ts_us``."""
    return f"{ts_us:014x}{_TAG}{next(_COUNTER) & 0xFFFFFF:06x}"


def is_id(value: str) -> bool:
    """``value`` has the form of one of our ids (`new_id`)."""
    return len(value) == ID_LEN and _ID_RE.fullmatch(value) is not None


def time_of(archive_id: str) -> datetime.datetime | None:
    """The time an id was assigned (exact to the µs, as PostgreSQL computes it from the id
    in `shared.store.archive`); None for a string that is not one of our ids."""
    if not is_id(archive_id):
        return None
    try:
        return _EPOCH + datetime.timedelta(microseconds=int(archive_id[:14], 16))
    except OverflowError:
        return None


_TAIL_START: Final = f'<stanza-id xmlns="{ns.SID}" by='.encode()
_ID_ATTR: Final = b' id="'
_TAIL_END: Final = b'"/>'


@functools.lru_cache(maxsize=8192)
def _head(by: str) -> bytes:
    """The tail up to its id for ``by``: `split_tail` compares it, not searches for it."""
    return _TAIL_START + quoteattr(by).encode() + _ID_ATTR


def stanza_id_xml(by: str, archive_id: str) -> bytes:
    return _head(by) + archive_id.encode() + _TAIL_END


def with_stanza_id(payload: bytes, by: str, archive_id: str) -> bytes:
    """The canonical <message/> with our stanza-id appended as its last child."""
    tail = stanza_id_xml(by, archive_id)
    if payload.endswith(b"/>"):
        name_end = payload.index(b" ") if b" " in payload[:10] else len(payload) - 2
        name = payload[1:name_end]
        return payload[:-2] + b">" + tail + b"</" + name + b">"
    close = payload.rindex(b"</")
    return payload[:close] + tail + payload[close:]


def split_tail(payload: bytes, by: str) -> tuple[bytes, str]:
    """(the message without the stanza-id `with_stanza_id` appended for ``by``, that id);
    the payload and "" when it carries none.  Only ingress appends one with a 'by' of ours
    (it removes those a sender put in, `strip_forged`), so one found here is genuine.  The
    message keeps an element form (``<message ...></message>`` even with no other child).
    The tail has a fixed form, so it is compared in place rather than searched for."""
    close = payload.rfind(b"</")
    id_end = close - len(_TAIL_END)
    id_start = id_end - ID_LEN
    head = _head(by)
    start = id_start - len(head)
    if (start < 0 or payload[id_end:close] != _TAIL_END
            or payload[start:id_start] != head
            or _ID_BYTES_RE.fullmatch(payload, id_start, id_end) is None):
        return payload, ""
    return payload[:start] + payload[close:], payload[id_start:id_end].decode()


def split_pair(payload: bytes, recipient: str, sender: str) -> tuple[bytes, str, bool]:
    """(the message without our stanza-ids, as archives store it; the id for
    ``recipient``, "" when it carries none; whether the sender's tail was there too).
    Ingress appends both parties' tails to a message between two local accounts, the
    sender's first (`with_stanza_id` twice), so that the recipient's router can write both
    rows; the recipient gets ``with_stanza_id(stored, recipient, id)``, its own id only."""
    rest, archive_id = split_tail(payload, recipient)
    if not archive_id or recipient == sender:
        return rest, archive_id, False
    stored, sender_id = split_tail(rest, sender)
    if sender_id != archive_id:
        return rest, archive_id, False
    return stored, archive_id, True


_SID_BYTES: Final = ns.SID.encode()


def strip_forged(element: etree._Element, domain: str, payload: bytes | None = None) -> bool:
    """XEP-0359 §4: remove every <stanza-id/> a sender put in whose 'by' is one of ours (the
    domain or an account of it: only this server assigns those).  True when one was removed
    (the caller re-serialises the stanza).  ``payload``: the element serialised; when it
    does not name the namespace, it has no such child and the tree is not searched (most
    messages: the search was 4 % of a connection manager's chat CPU)."""
    if payload is not None and _SID_BYTES not in payload:
        return False
    removed = False
    for child in element.findall(f"{{{ns.SID}}}stanza-id"):
        by = child.get("by") or ""
        if by == domain or domain_of(by) == domain:
            element.remove(child)
            removed = True
    return removed


# ---- which messages are archived and copied -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Facts:
    """What XEP-0313 §8, XEP-0334 and XEP-0280 §6 ask of one <message/>."""

    archive: bool  # stored in the archives of both parties (when their preferences agree)
    carbons: bool  # copied to the parties' other carbons-enabled resources


_NO_STORE: Final = frozenset({f"{{{ns.HINTS}}}no-store", f"{{{ns.HINTS}}}no-permanent-store"})
_NO_COPY: Final = frozenset({f"{{{ns.HINTS}}}no-copy", f"{{{ns.CARBONS}}}private"})
_BODY: Final = f"{{{ns.CLIENT}}}body"
_STORE: Final = f"{{{ns.HINTS}}}store"
_MUC_X: Final = f"{{{ns.MUC_USER}}}x"
_NOT_OURS: Final = frozenset({
    f"{{{ns.CARBONS}}}sent", f"{{{ns.CARBONS}}}received", f"{{{ns.MAM}}}result",
})


def facts(element: etree._Element) -> Facts:
    """XEP-0313 §8: chat and normal messages with a body are archived (not errors, headlines
    or groupchat: a MUC keeps its own archive); XEP-0334 §4: <no-store/> and
    <no-permanent-store/> keep one out, <store/> keeps one without a body.  XEP-0280 §6.1:
    chat messages and normal ones with a body are copied, unless <private/> (§7) or
    <no-copy/> says not; MUC private messages are not (§6: the other resources are not in
    the room).  Carbon copies and MAM results themselves are never archived nor copied."""
    type_ = element.get("type") or "normal"
    if type_ not in ("chat", "normal"):
        return Facts(False, False)
    tags = {c.tag for c in element if isinstance(c.tag, str)}
    if tags & _NOT_OURS:
        return Facts(False, False)
    body = _BODY in tags
    archive = not (tags & _NO_STORE) and (body or _STORE in tags)
    carbons = (type_ == "chat" or body) and not (tags & _NO_COPY) and _MUC_X not in tags
    return Facts(archive, carbons)


def payload_facts(payload: bytes) -> Facts:
    """`facts` of a canonical message (routers parse only when they need these)."""
    from shared.xmpp.parser import parse_fragment

    return facts(parse_fragment(payload))


# ---- XEP-0280 copies ----------------------------------------------------------------------


def carbon(direction: str, owner: str, message: bytes) -> bytes:
    """The copy (``direction`` "sent" or "received", §5, §6) of ``message`` for the other
    resources of ``owner``, without 'to' (each connection manager inserts it per resource):
    from the user's bare JID (§11: clients check that), the original in a XEP-0297
    <forwarded/>."""
    return (
        f'<message xmlns="{ns.CLIENT}" from={quoteattr(owner)} type="chat">'
        f'<{direction} xmlns="{ns.CARBONS}"><forwarded xmlns="{ns.FORWARD}">'
    ).encode() + message + f"</forwarded></{direction}></message>".encode()


# ---- XEP-0313 queries ---------------------------------------------------------------------

DEFAULT_PAGE: Final = 50
MAX_PAGE: Final = 250
FORM_FIELDS: Final = ("with", "start", "end", "before-id", "after-id", "ids")


def bad_request(text: str) -> StanzaError:
    return StanzaError(StanzaErrorCondition.BAD_REQUEST, text)


@dataclass(frozen=True, slots=True)
class Query:
    """One XEP-0313 §4 query: the form's filters and the XEP-0059 page asked for."""

    query_id: str = ""
    with_jid: str = ""
    with_full: bool = False  # 'with' named a full JID: that resource only (§4.1.1)
    start: datetime.datetime | None = None
    end: datetime.datetime | None = None
    after_id: str = ""
    before_id: str = ""
    ids: tuple[str, ...] = ()
    max: int = DEFAULT_PAGE
    after: str = ""  # RSM
    before: str | None = None  # RSM; "" asks for the last page
    flip: bool = False  # §4.1.2 flip-page
    count_only: bool = False  # RSM <max>0</max>: the count alone (XEP-0059 §2.7)
    index: int | None = None  # RSM <index/>: the page from this item on (XEP-0059 §2.6)

    @property
    def cursor_ids(self) -> tuple[str, ...]:
        """Every id the query names that must exist (item-not-found otherwise, §4.1.3)."""
        return tuple(i for i in (self.after_id, self.before_id, self.after, self.before or "")
                     if i)

    @property
    def backwards(self) -> bool:
        return self.before is not None


def parse_datetime(value: str) -> datetime.datetime:
    """XEP-0082 DateTime; naive values are refused (the profile requires a zone)."""
    try:
        parsed = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise bad_request(f"not a XEP-0082 date-time: {value}") from None
    if parsed.tzinfo is None:
        raise bad_request("a date-time needs a time zone")
    return parsed


def parse_query(query: etree._Element) -> Query:
    """The <query xmlns="urn:xmpp:mam:2"/> of an IQ set; StanzaError bad-request when the
    form or the RSM set is malformed or names a field we do not know (§4.1)."""
    values: dict[str, list[str]] = {}
    form = query.find(f"{{{ns.DATA}}}x")
    if form is not None:
        for f in form.findall(f"{{{ns.DATA}}}field"):
            var = f.get("var") or ""
            values[var] = [v.text or "" for v in f.findall(f"{{{ns.DATA}}}value")]
        form_type = values.pop("FORM_TYPE", [ns.MAM])
        if form_type != [ns.MAM]:
            raise bad_request("FORM_TYPE must be urn:xmpp:mam:2")
        unknown = set(values) - set(FORM_FIELDS)
        if unknown:
            raise bad_request(f"unsupported field {sorted(unknown)[0]}")
    args: dict[str, object] = {"query_id": query.get("queryid") or ""}
    one = {k: v[0] for k, v in values.items() if v and k != "ids"}
    if "with" in one:
        try:
            jid = JID.parse(one["with"])
        except JIDError:
            raise bad_request("'with' is not a JID") from None
        args["with_jid"] = str(jid)
        args["with_full"] = jid.resource is not None
    if "start" in one:
        args["start"] = parse_datetime(one["start"])
    if "end" in one:
        args["end"] = parse_datetime(one["end"])
    args["after_id"] = one.get("after-id", "")
    args["before_id"] = one.get("before-id", "")
    args["ids"] = tuple(values.get("ids", ()))
    rsm = query.find(f"{{{ns.RSM}}}set")
    if rsm is not None:
        max_el = rsm.find(f"{{{ns.RSM}}}max")
        if max_el is not None:
            try:
                asked = int((max_el.text or "").strip())
            except ValueError:
                raise bad_request("RSM max is not a number") from None
            if asked < 0:
                raise bad_request("RSM max is negative")
            args["max"] = min(asked, MAX_PAGE)
            args["count_only"] = asked == 0
        after = rsm.find(f"{{{ns.RSM}}}after")
        before = rsm.find(f"{{{ns.RSM}}}before")
        if after is not None and before is not None:
            raise bad_request("RSM after and before together")
        if after is not None:
            if not (after.text or "").strip():
                raise bad_request("empty RSM after")
            args["after"] = (after.text or "").strip()
        if before is not None:
            args["before"] = (before.text or "").strip()
        index = rsm.find(f"{{{ns.RSM}}}index")
        if index is not None:  # XEP-0059 §2.6: a page out of order, by its first item
            if after is not None or before is not None:
                raise bad_request("RSM index with after or before")
            try:
                args["index"] = int((index.text or "").strip())
            except ValueError:
                raise bad_request("RSM index is not a number") from None
            if args["index"] < 0:  # type: ignore[operator]
                raise bad_request("RSM index is negative")
    args["flip"] = query.find(f"{{{ns.MAM}}}flip-page") is not None
    return Query(**args)  # type: ignore[arg-type]


def query_form() -> str:
    """§4.1.1: the fields a client may fill in (an IQ get of <query/>)."""
    fields = "".join(
        f'<field var="{var}" type="{"text-multi" if var == "ids" else "text-single"}"/>'
        for var in FORM_FIELDS
    )
    return (
        f'<query xmlns="{ns.MAM}"><x xmlns="{ns.DATA}" type="form">'
        f'<field var="FORM_TYPE" type="hidden"><value>{ns.MAM}</value></field>'
        f"{fields}</x></query>"
    )


@dataclass(frozen=True, slots=True)
class Row:
    """One archived message."""

    id: str
    ts: datetime.datetime
    stanza: bytes


def stamp(ts: datetime.datetime) -> str:
    """XEP-0082 DateTime in UTC with microseconds (XEP-0203 stamps)."""
    return ts.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def result_message(to: str, owner: str, query_id: str, row: Row) -> bytes:
    """§4.2: one archived message for the querying resource."""
    qid = f" queryid={quoteattr(query_id)}" if query_id else ""
    return (
        f'<message xmlns="{ns.CLIENT}" to={quoteattr(to)} from={quoteattr(owner)}>'
        f'<result xmlns="{ns.MAM}"{qid} id="{row.id}"><forwarded xmlns="{ns.FORWARD}">'
        f'<delay xmlns="{ns.DELAY}" stamp="{stamp(row.ts)}"/>'
    ).encode() + row.stanza + b"</forwarded></result></message>"


def fin(rows: Sequence[Row], *, complete: bool, count: int | None,
        index: int | None = None) -> str:
    """§4.3: the IQ result's <fin/> with the XEP-0059 §2.5 <set/> of the page (the first
    item's position in the result set when it is known, §2.6)."""
    parts = []
    if rows:
        at = f' index="{index}"' if index is not None else ""
        parts.append(f"<first{at}>{rows[0].id}</first><last>{rows[-1].id}</last>")
    if count is not None:
        parts.append(f"<count>{count}</count>")
    done = ' complete="true"' if complete else ""
    return f'<fin xmlns="{ns.MAM}"{done}><set xmlns="{ns.RSM}">{"".join(parts)}</set></fin>'


# ---- XEP-0441 preferences -----------------------------------------------------------------

DEFAULTS: Final = ("always", "never", "roster")


@dataclass(frozen=True, slots=True)
class Prefs:
    default: str = "always"
    always: tuple[str, ...] = field(default=())
    never: tuple[str, ...] = field(default=())

    def xml(self) -> str:
        def jids(items: tuple[str, ...]) -> str:
            return "".join(f"<jid>{escape(j)}</jid>" for j in items)

        return (
            f'<prefs xmlns="{ns.MAM}" default="{self.default}">'
            f"<always>{jids(self.always)}</always><never>{jids(self.never)}</never></prefs>"
        )


def parse_prefs(element: etree._Element) -> Prefs:
    """XEP-0441 §4: a <prefs/> set; bad-request for an unknown default or a bad JID."""
    default = element.get("default") or ""
    if default not in DEFAULTS:
        raise bad_request("default must be always, never or roster")

    def jids(name: str) -> tuple[str, ...]:
        box = element.find(f"{{{ns.MAM}}}{name}")
        out: list[str] = []
        for j in box.findall(f"{{{ns.MAM}}}jid") if box is not None else ():
            try:
                out.append(JID.parse((j.text or "").strip()).bare_str)
            except JIDError:
                raise bad_request("not a JID") from None
        return tuple(dict.fromkeys(out))

    always, never = jids("always"), jids("never")
    if set(always) & set(never):
        raise bad_request("a JID both in always and never")
    return Prefs(default, always, never)
