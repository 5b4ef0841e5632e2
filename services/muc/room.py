"""One multi-user chat room (XEP-0045) as a state machine without I/O.

`Room.handle` takes one stanza addressed to the room (or to an occupant's room JID) with its
sender's real JID, changes the room and returns what to send: `Send` (one stanza for one
JID) and `Broadcast` (one stanza without 'to' for several occupants, which the service turns
into one FANOUT envelope per connection manager).  Occupant presence differs per receiver
(status 110 for the occupant itself, real JIDs for moderators of a semi-anonymous room), so a
presence change is at most three broadcasts whatever the room's size (`_presence_out`).
What changed is recorded in `dirty` for the service to persist.

Besides the room's own traffic it forwards IQs between occupants (XEP-0045 §16.3: the real
JIDs stay hidden; the id it writes carries, encrypted, who asked and whom), relays voice
requests to the moderators (§7.13, §8.6), registers nicknames (§7.10, §7.12), and checks that
remote occupants are still there (`sweep`): a remote server whose stream died without
bouncing anything never tells the room that its users are gone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final
from xml.sax.saxutils import escape, quoteattr

import precis_i18n
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from lxml import etree

from shared.xmpp import archive, ns
from shared.xmpp.errors import StanzaError, StanzaErrorCondition, StanzaErrorType
from shared.xmpp.jid import JIDError, bare_of, parse_jid
from shared.xmpp.stanza import error_reply, iq_result, with_delay, with_to

from . import forms

MUC: Final = "http://jabber.org/protocol/muc"
MUC_USER: Final = "http://jabber.org/protocol/muc#user"
MUC_ADMIN: Final = "http://jabber.org/protocol/muc#admin"
MUC_OWNER: Final = "http://jabber.org/protocol/muc#owner"
OCCUPANT_ID: Final = "urn:xmpp:occupant-id:0"  # XEP-0421
REGISTER: Final = "jabber:iq:register"  # XEP-0077, as XEP-0045 §7.10 uses it
ROOMUSER_NODE: Final = "x-roomuser-item"  # §7.12
IQ_ID_PREFIX: Final = "muc1-"  # an IQ the room forwarded between occupants (§16.3)
PROBE_PREFIX: Final = "muc-probe-"  # the room asking a remote occupant whether it is there
PING: Final = ns.PING
C: Final = ns.CLIENT

AFFILIATION_RANK: Final = {"outcast": -1, "none": 0, "member": 1, "admin": 2, "owner": 3}
ROLE_RANK: Final = {"none": 0, "visitor": 1, "participant": 2, "moderator": 3}
# RFC 8266: the nickname profile; enforcement keeps case, comparison maps it
_NICK: Final = precis_i18n.get_profile("NicknameCasePreserved")
_NICK_FOLD: Final = precis_i18n.get_profile("NicknameCaseMapped")
_STANZA_ID: Final = f"{{{ns.SID}}}stanza-id"
MAX_NICK_BYTES: Final = 1023  # a resourcepart's limit (RFC 7622 §3.4)

E = StanzaErrorCondition


def enforce_nick(nick: str) -> str:
    """The nickname enforced by RFC 8266 §2.3; jid-malformed when it is not one (XEP-0045
    §7.2.? leaves the rules to the service: RFC 8266 is what it names)."""
    try:
        out = _NICK.enforce(nick)
    except UnicodeError:
        raise StanzaError(E.JID_MALFORMED, "not a valid nickname (RFC 8266)") from None
    if not out or len(out.encode()) > MAX_NICK_BYTES:
        raise StanzaError(E.JID_MALFORMED, "not a valid nickname (RFC 8266)")
    return out


def fold_nick(nick: str) -> str:
    """The form two nicknames are compared in (RFC 8266 §2.4)."""
    try:
        return str(_NICK_FOLD.enforce(nick))
    except UnicodeError:
        return nick


@dataclass(slots=True)
class Occupant:
    nick: str
    jid: str  # real full JID
    role: str
    cm: str = ""  # connection manager of a local session; "" for a remote occupant
    presence: str = ""  # children of its last presence (show, status, ...), serialised
    tokens: float = -1.0  # message rate bucket (memory only; full after a move)
    last: float = 0.0
    seen: float = 0.0  # last stanza from it (memory only; 0: not since the room was loaded)
    probed: float = 0.0  # when the room asked it whether it is there, unanswered so far

    def to_json(self) -> dict[str, str]:
        return {"jid": self.jid, "role": self.role, "cm": self.cm, "presence": self.presence}

    @classmethod
    def from_json(cls, nick: str, data: dict[str, str]) -> Occupant:
        return cls(nick, data["jid"], data["role"], data.get("cm", ""),
                   data.get("presence", ""))


@dataclass(frozen=True, slots=True)
class Send:
    """One stanza for one JID; ``payload`` carries its 'to'.  ``cm``: the connection manager
    holding the session when the room knows it (else it goes through the router)."""

    kind: str
    to: str
    payload: bytes
    type: str = ""
    cm: str = ""


@dataclass(frozen=True, slots=True)
class Broadcast:
    """One stanza without 'to' for every occupant of ``recipients``."""

    kind: str
    payload: bytes
    recipients: tuple[Occupant, ...]
    type: str = ""


Out = Send | Broadcast


@dataclass(frozen=True, slots=True)
class Limits:
    max_occupants: int = 1000
    max_history: int = 50
    message_rate: float = 10.0
    message_burst: int = 30
    archive: bool = False  # the service keeps XEP-0313 archives (rooms that enable them)


@dataclass(slots=True)
class Dirty:
    """What `Room.handle` changed, for the service to write."""

    room: bool = False  # config, subject, locked
    affiliations: set[str] = field(default_factory=set)  # bare JIDs
    occupants: set[str] = field(default_factory=set)  # nicks (absent now: removed)
    history: list[tuple[float, bytes]] = field(default_factory=list)
    # XEP-0313 rows: (archive id, the sender's room JID, the message as archived)
    archive: list[tuple[str, str, bytes]] = field(default_factory=list)
    destroyed: bool = False

    def clear(self) -> None:
        self.room = False
        self.affiliations.clear()
        self.occupants.clear()
        self.history.clear()
        self.archive.clear()
        self.destroyed = False


def _q(value: str) -> str:
    return quoteattr(value)


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# errors bounced from an occupant that say it cannot be reached (RFC 6120 §8.3.3), rather
# than that its client refused one stanza: the occupant is removed (a connection manager
# reports a session gone with recipient-unavailable, an s2s gateway a remote server it cannot
# reach with remote-server-*)
UNREACHABLE: Final = frozenset({
    "gone", "item-not-found", "recipient-unavailable", "redirect", "remote-server-not-found",
    "remote-server-timeout", "service-unavailable",
})


def _unreachable(el: etree._Element) -> bool:
    error = el.find(f"{{{C}}}error")
    if error is None:
        return False
    return any(isinstance(c.tag, str) and c.tag == f"{{{ns.STANZAS_ERRORS}}}{name}"
               for c in error for name in UNREACHABLE)


def _children(el: etree._Element, skip: tuple[str, ...]) -> str:
    return "".join(
        etree.tostring(c, with_tail=False).decode()
        for c in el if isinstance(c.tag, str) and etree.QName(c).namespace not in skip
    )


class Room:
    def __init__(self, jid: str, config: forms.Config, secret: bytes, *, subject: str = "",
                 subject_from: str = "", locked: bool = False,
                 affiliations: dict[str, str] | None = None,
                 occupants: dict[str, Occupant] | None = None,
                 history: list[tuple[float, bytes]] | None = None,
                 nicks: dict[str, str] | None = None,
                 limits: Limits = Limits()) -> None:
        self.jid = jid
        self.config = config
        self.secret = secret
        self.subject = subject
        self.subject_from = subject_from  # the room JID of who set it
        self.locked = locked
        self.affiliations = affiliations or {}  # bare JID -> owner|admin|member|outcast
        self.occupants = occupants or {}  # nick -> occupant
        self.history = history or []
        self.limits = limits
        self.dirty = Dirty()
        self._by_jid = {o.jid: o for o in self.occupants.values()}
        self.nicks: dict[str, str] = {}  # bare JID -> its registered nickname (§7.10)
        self._reserved: dict[str, str] = {}  # the same, folded nickname -> bare JID
        for bare, reserved in (nicks or {}).items():
            self.reserve(bare, reserved)
        self._aead: AESGCM | None = None

    # ---- facts -----------------------------------------------------------------------------

    def affiliation(self, real: str) -> str:
        return self.affiliations.get(bare_of(real), "none")

    def occupant_of(self, real: str) -> Occupant | None:
        return self._by_jid.get(real)

    def occupant_id(self, real: str) -> str:
        """XEP-0421 §3: stable per room and real bare JID, and not revealing it."""
        mac = hmac.new(self.secret, bare_of(real).encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:18]).decode()

    def nick_taken(self, nick: str, by: str) -> bool:
        """Another real bare JID uses or has reserved the nickname (compared per RFC 8266;
        §7.12: a nickname registered by someone else is a conflict)."""
        folded = fold_nick(nick)
        owner = self._reserved.get(folded)
        if owner is not None and owner != bare_of(by):
            return True
        return any(fold_nick(o.nick) == folded and bare_of(o.jid) != bare_of(by)
                   for o in self.occupants.values())

    def reserve(self, bare: str, nick: str | None) -> None:
        """Register (or with None forget) the nickname of a bare JID (§7.10)."""
        old = self.nicks.pop(bare, None)
        if old is not None:
            self._reserved.pop(fold_nick(old), None)
        if nick:
            self.nicks[bare] = nick
            self._reserved[fold_nick(nick)] = bare

    def moderators(self) -> list[Occupant]:
        return [o for o in self.occupants.values() if o.role == "moderator"]

    def owners(self) -> list[str]:
        return sorted(j for j, a in self.affiliations.items() if a == "owner")

    def default_role(self, affiliation: str) -> str:
        if affiliation in ("owner", "admin"):
            return "moderator"
        if affiliation == "member" or not self.config.moderated:
            return "participant"
        return "visitor"

    def room_jid(self, nick: str) -> str:
        return f"{self.jid}/{nick}"

    @property
    def archiving(self) -> bool:
        """XEP-0313 §5: the room keeps an archive (the service's and the room's setting)."""
        return self.limits.archive and self.config.archive

    def may_read_archive(self, real: str) -> bool:
        """Who may query the room's archive: its members (and admins, owners), and in a room
        that is not members-only its occupants too; never an outcast."""
        rank = AFFILIATION_RANK[self.affiliation(real)]
        if rank < 0:
            return False
        return rank >= 1 or (not self.config.members_only
                             and self.occupant_of(real) is not None)

    # ---- entry -----------------------------------------------------------------------------

    def handle(self, kind: str, type_: str, real: str, nick: str | None,
               el: etree._Element, *, cm: str = "", created: bool = False,
               now: float | None = None) -> list[Out]:
        """One stanza from ``real`` to the room (``nick`` None) or to ``room/nick``."""
        now = time.time() if now is None else now
        occ = self.occupant_of(real)
        if occ is not None and cm and occ.cm != cm:  # the session moved (XEP-0198 resumption)
            occ.cm = cm
            self.dirty.occupants.add(occ.nick)
        if type_ == "error" and kind != "iq" and occ is not None and _unreachable(el):
            return self._drop_unreachable(occ)
        if occ is not None:  # it is there: whatever the room asked it is answered
            occ.seen, occ.probed = now, 0.0
        try:
            if kind == "presence":
                return self._presence(type_, real, nick, el, cm, created, now)
            if kind == "message":
                return self._message(type_, real, nick, el, now)
            if kind == "iq":
                return self._iq(type_, real, nick, el)
        except StanzaError as err:
            if type_ == "error" or (kind == "iq" and type_ in ("result", "error")):
                return []
            to = self.room_jid(nick) if nick else self.jid
            return [Send(kind, real, error_reply(el, err, to=real, from_=to), "error")]
        return []

    # ---- presence (§7.2 join, §7.6 nick change, §7.7 status, §7.14 exit) ------------------

    def _presence(self, type_: str, real: str, nick: str | None, el: etree._Element, cm: str,
                  created: bool, now: float) -> list[Out]:
        occ = self.occupant_of(real)
        if type_ == "unavailable":
            return self._leave(occ, el) if occ is not None else []
        if type_ not in ("",):
            return []  # errors, probes, subscriptions: not for a room
        if nick is None:  # §7.2.1: joining needs a nickname
            raise StanzaError(E.JID_MALFORMED, "join with room@service/nick",
                              StanzaErrorType.MODIFY)
        wanted = enforce_nick(nick)
        if occ is None:
            return self._join(real, nick, wanted, el, cm, created, now)
        if wanted != occ.nick:
            return self._change_nick(occ, wanted, el)
        occ.presence = _children(el, (MUC, MUC_USER, OCCUPANT_ID))
        self.dirty.occupants.add(occ.nick)
        if el.find(f"{{{MUC}}}x") is not None:
            return self._rejoin(occ, el, now)
        return self._presence_out(occ, "", [])

    def _rejoin(self, occ: Occupant, el: etree._Element, now: float) -> list[Out]:
        """A join from a session the room counts in already (§7.2 with the MUC <x/>): its
        client lost the room's state (its server restarted, its stream was resumed without
        the room's stanzas, ...), so it gets the join's answer again: the others' presence,
        its own with 110, history and subject.  The others see a presence update."""
        jid = self._sees_jids(occ)
        out: list[Out] = [self._presence_to(o, occ, "", [], jid=jid)
                          for o in self.occupants.values() if o is not occ]
        out.extend(self._presence_out(occ, "", []))
        out.extend(self._history(occ, el.find(f"{{{MUC}}}x"), now))
        out.append(self._subject_to(occ))
        return out

    def _subject_to(self, occ: Occupant) -> Send:
        subject = (f"<subject>{escape(self.subject)}</subject>" if self.subject
                   else "<subject/>")  # §7.2.15: always, empty when there is none
        frm = self.subject_from or self.jid
        return Send("message", occ.jid, (f'<message xmlns="{C}" type="groupchat" from={_q(frm)} '
                                         f"to={_q(occ.jid)}>{subject}</message>").encode(),
                    "groupchat", occ.cm)

    def _join(self, real: str, asked: str, nick: str, el: etree._Element, cm: str,
              created: bool, now: float) -> list[Out]:
        aff = self.affiliation(real)
        x = el.find(f"{{{MUC}}}x")
        if self.locked and aff != "owner":  # §10.1.1: a room awaiting configuration
            raise StanzaError(E.ITEM_NOT_FOUND, "the room is locked until configured")
        if aff == "outcast":  # §7.2.7
            raise StanzaError(E.FORBIDDEN, "you are banned from this room")
        if self.config.members_only and AFFILIATION_RANK[aff] < 1:  # §7.2.6
            raise StanzaError(E.REGISTRATION_REQUIRED, "members only")
        if self.config.password and aff != "owner":  # §7.2.5
            given = x.findtext(f"{{{MUC}}}password") if x is not None else None
            if given != self.config.password:
                raise StanzaError(E.NOT_AUTHORIZED, "a password is required")
        if self.nick_taken(nick, real):  # §7.2.8
            raise StanzaError(E.CONFLICT, "that nickname is in use")
        if any(fold_nick(o.nick) == fold_nick(nick) for o in self.occupants.values()):
            raise StanzaError(E.CONFLICT, "that nickname is in use by another of your sessions")
        cap = min(self.config.max_users or self.limits.max_occupants, self.limits.max_occupants)
        if len(self.occupants) >= cap and AFFILIATION_RANK[aff] < 2:  # §7.2.9
            raise StanzaError(E.SERVICE_UNAVAILABLE, "the room is full", StanzaErrorType.WAIT)
        occ = Occupant(nick, real, self.default_role(aff), cm,
                       _children(el, (MUC, MUC_USER, OCCUPANT_ID)), seen=now)
        out: list[Out] = []
        sees_jids = self._sees_jids(occ)
        for other in self.occupants.values():  # §7.2.3: everyone already there, first
            out.append(self._presence_to(other, occ, "", [], jid=sees_jids))
        self.occupants[nick] = occ
        self._by_jid[real] = occ
        self.dirty.occupants.add(nick)
        codes = []
        if self.config.non_anonymous:
            codes.append("100")  # §7.2.4
        if created:
            codes.append("201")  # §10.1.1
        if nick != asked:
            codes.append("210")  # §7.2.? the service changed the nickname (RFC 8266)
        out.extend(self._presence_out(occ, "", [], self_codes=codes))
        if self.locked and created:
            pass  # the owner configures the room next (§10.1.2, §10.1.3)
        out.extend(self._history(occ, x, now))
        out.append(self._subject_to(occ))
        return out

    def _sees_jids(self, viewer: Occupant) -> bool:
        return self.config.non_anonymous or viewer.role == "moderator"

    def _item(self, occ: Occupant, *, jid: bool, nick: str | None = None, actor: str = "",
              reason: str = "", role: str | None = None, affiliation: str | None = None) -> str:
        attrs = (f' affiliation="{affiliation or self.affiliation(occ.jid)}"'
                 f' role="{role or occ.role}"')
        if jid:
            attrs += f" jid={_q(occ.jid)}"
        if nick:
            attrs += f" nick={_q(nick)}"
        inner = (f"<actor nick={_q(actor)}/>" if actor else "") + (
            f"<reason>{escape(reason)}</reason>" if reason else "")
        return f"<item{attrs}>{inner}</item>" if inner else f"<item{attrs}/>"

    def _presence_stanza(self, occ: Occupant, type_: str, codes: list[str], *, jid: bool,
                         to: str = "", extra: str = "", **item: str) -> bytes:
        type_attr = f' type="{type_}"' if type_ else ""
        to_attr = f" to={_q(to)}" if to else ""
        body = occ.presence if type_ == "" else ""
        status = "".join(f'<status code="{c}"/>' for c in codes)
        return (f'<presence xmlns="{C}"{to_attr} from={_q(self.room_jid(occ.nick))}{type_attr}>'
                f'{body}<x xmlns="{MUC_USER}">{self._item(occ, jid=jid, **item)}{extra}{status}'
                f'</x><occupant-id xmlns="{OCCUPANT_ID}" id="{self.occupant_id(occ.jid)}"/>'
                f"</presence>").encode()

    def _presence_to(self, occ: Occupant, viewer: Occupant, type_: str, codes: list[str], *,
                     jid: bool) -> Send:
        payload = self._presence_stanza(occ, type_, codes, jid=jid, to=viewer.jid)
        return Send("presence", viewer.jid, payload, type_, viewer.cm)

    def _presence_out(self, occ: Occupant, type_: str, codes: list[str], *,
                      self_codes: list[str] | None = None, extra: str = "",
                      **item: str) -> list[Out]:
        """The occupant's presence to everyone: at most three variants, whatever the size
        (with real JIDs for those who may see them, without for the others, and the
        occupant's own with status 110, §7.2.3)."""
        others = [o for o in self.occupants.values() if o is not occ]
        out: list[Out] = []
        with_jid = [o for o in others if self._sees_jids(o)]
        without = [o for o in others if not self._sees_jids(o)]
        for group, jid in ((with_jid, True), (without, False)):
            if group:
                out.append(Broadcast("presence", self._presence_stanza(
                    occ, type_, codes, jid=jid, extra=extra, **item), tuple(group), type_))
        mine = ["110", *codes, *(self_codes or [])]
        out.append(Send("presence", occ.jid, self._presence_stanza(
            occ, type_, mine, jid=True, to=occ.jid, extra=extra, **item), type_, occ.cm))
        return out

    def _remove(self, occ: Occupant) -> None:
        self.occupants.pop(occ.nick, None)
        self._by_jid.pop(occ.jid, None)
        self.dirty.occupants.add(occ.nick)
        if not self.occupants and not self.config.persistent:
            self.dirty.destroyed = True  # §10.1.? a temporary room ends with its last occupant

    def _drop_unreachable(self, occ: Occupant) -> list[Out]:
        """An error bounced from the occupant's own address says it cannot be reached (its
        session is gone, its server too): it leaves, and the others are told it was removed
        for a technical reason (status 307 with 333, XEP-0045 §7.2.? / status code registry)."""
        out = [o for o in self._presence_out(occ, "unavailable", ["307", "333"], role="none")
               if not (isinstance(o, Send) and o.to == occ.jid)]  # not to where it bounced
        self._remove(occ)
        return out

    def _leave(self, occ: Occupant, el: etree._Element) -> list[Out]:
        occ.presence = _children(el, (MUC, MUC_USER, OCCUPANT_ID))
        out = self._presence_out(occ, "unavailable", [], role="none")
        self._remove(occ)
        return out

    def _change_nick(self, occ: Occupant, nick: str, el: etree._Element) -> list[Out]:
        """§7.6: unavailable with 303 and the new nick, then available as the new nick."""
        if self.nick_taken(nick, occ.jid):
            raise StanzaError(E.CONFLICT, "that nickname is in use")
        out = self._presence_out(occ, "unavailable", ["303"], nick=nick)
        del self.occupants[occ.nick]
        self.dirty.occupants.add(occ.nick)
        occ.nick = nick
        occ.presence = _children(el, (MUC, MUC_USER, OCCUPANT_ID))
        self.occupants[nick] = occ
        self.dirty.occupants.add(nick)
        out.extend(self._presence_out(occ, "", []))
        return out

    def _history(self, occ: Occupant, x: etree._Element | None, now: float) -> list[Out]:
        """§7.2.14: maxchars, maxstanzas, seconds, since; the room's own cap first."""
        items = self.history[-self.config.history:] if self.config.history else []
        h = x.find(f"{{{MUC}}}history") if x is not None else None
        if h is not None:
            try:
                if h.get("maxstanzas") is not None:
                    n = max(0, int(h.get("maxstanzas", "0")))
                    items = items[len(items) - n:] if n else []
                if h.get("seconds") is not None:
                    cut = now - max(0, int(h.get("seconds", "0")))
                    items = [i for i in items if i[0] >= cut]
                if h.get("since") is not None:
                    since = datetime.fromisoformat(h.get("since", "").replace("Z", "+00:00"))
                    items = [i for i in items if i[0] >= since.timestamp()]
            except ValueError:
                items = []
        out = [with_delay(with_to(p, occ.jid), _stamp(ts), self.jid) for ts, p in items]
        if h is not None and h.get("maxchars") is not None:
            try:
                budget = max(0, int(h.get("maxchars", "0")))
            except ValueError:
                budget = 0
            kept: list[bytes] = []
            for stanza in reversed(out):  # the newest that fit
                budget -= len(stanza.decode())
                if budget < 0:
                    break
                kept.append(stanza)
            out = kept[::-1]
        return [Send("message", occ.jid, p, "groupchat", occ.cm) for p in out]

    # ---- messages (§7.4 groupchat, §7.5 private, §7.8 invitations, §8.1 subject) ----------

    def _message(self, type_: str, real: str, nick: str | None, el: etree._Element,
                 now: float) -> list[Out]:
        occ = self.occupant_of(real)
        if type_ == "error":
            return []
        if nick is not None:
            if type_ == "groupchat":  # §7.5: private messages are not groupchat
                raise StanzaError(E.BAD_REQUEST, "groupchat goes to the room",
                                  StanzaErrorType.MODIFY)
            return self._private(occ, nick, el, now)
        if type_ == "groupchat":
            return self._groupchat(occ, el, now)
        x = el.find(f"{{{MUC_USER}}}x")
        if x is not None and (x.find(f"{{{MUC_USER}}}invite") is not None
                              or x.find(f"{{{MUC_USER}}}decline") is not None):
            return self._invite(real, occ, x)
        form = el.find(f"{{{forms.DATA}}}x")
        if form is not None and forms.form_type(form) == forms.REQUEST:
            return self._voice(real, occ, form, now)
        raise StanzaError(E.BAD_REQUEST, "a room takes groupchat messages",
                          StanzaErrorType.MODIFY)

    def _rate(self, occ: Occupant, now: float) -> None:
        burst = self.limits.message_burst
        if occ.tokens < 0:
            occ.tokens, occ.last = float(burst), now
        occ.tokens = min(burst, occ.tokens + (now - occ.last) * self.limits.message_rate)
        occ.last = now
        if occ.tokens < 1:
            raise StanzaError(E.RESOURCE_CONSTRAINT, "too many messages; slow down",
                              StanzaErrorType.WAIT)
        occ.tokens -= 1

    def _rewritten(self, occ: Occupant, el: etree._Element, *, mark: bool = False) -> bytes:
        """The sender's message as the room sends it: from its room JID, no 'to', its
        occupant id (XEP-0421 §4: any the sender put in is removed) and no stanza-id in the
        room's name."""
        msg = etree.Element(f"{{{C}}}message", nsmap={None: C})
        for k, v in el.attrib.items():
            if k not in ("to", "from"):
                msg.set(k, v)
        msg.set("from", self.room_jid(occ.nick))
        for child in el:
            if not isinstance(child.tag, str) or etree.QName(child).namespace == OCCUPANT_ID:
                continue
            if child.tag == _STANZA_ID and child.get("by") == self.jid:
                continue  # XEP-0359 §4: only the room gives ids in its own name
            msg.append(etree.fromstring(etree.tostring(child, with_tail=False)))
        if mark:
            etree.SubElement(msg, f"{{{MUC_USER}}}x", nsmap={None: MUC_USER})
        oid = etree.SubElement(msg, f"{{{OCCUPANT_ID}}}occupant-id", nsmap={None: OCCUPANT_ID})
        oid.set("id", self.occupant_id(occ.jid))
        return etree.tostring(msg)

    def _groupchat(self, occ: Occupant | None, el: etree._Element, now: float) -> list[Out]:
        if occ is None:  # §7.4
            raise StanzaError(E.NOT_ACCEPTABLE, "only occupants may send to the room")
        if occ.role == "visitor":  # §7.4, moderated room
            raise StanzaError(E.FORBIDDEN, "you have no voice in this room")
        self._rate(occ, now)
        subject = el.find(f"{{{C}}}subject")
        has_body = el.find(f"{{{C}}}body") is not None
        if subject is not None and not has_body:  # §8.1
            if occ.role != "moderator" and not self.config.change_subject:
                raise StanzaError(E.FORBIDDEN, "you may not change the subject")
            self.subject = subject.text or ""
            self.subject_from = self.room_jid(occ.nick)
            self.dirty.room = True
        payload = self._rewritten(occ, el)
        if has_body and self.archiving:  # XEP-0313 §5, XEP-0359: archived, with its id
            sid = archive.new_id(int(now * 1_000_000))
            self.dirty.archive.append((sid, self.room_jid(occ.nick), payload))
            payload = archive.with_stanza_id(payload, self.jid, sid)
        if has_body and self.limits.max_history:
            self.history.append((now, payload))
            del self.history[:-self.limits.max_history]
            self.dirty.history.append((now, payload))
        return [Broadcast("message", payload, tuple(self.occupants.values()), "groupchat")]

    def _private(self, occ: Occupant | None, nick: str, el: etree._Element,
                 now: float) -> list[Out]:
        if occ is None:
            raise StanzaError(E.NOT_ACCEPTABLE, "only occupants may send private messages")
        target = self.occupants.get(nick)
        if target is None:  # §7.5
            raise StanzaError(E.ITEM_NOT_FOUND, "no occupant with that nickname")
        self._may_private(occ)
        self._rate(occ, now)
        payload = with_to(self._rewritten(occ, el, mark=True), target.jid)
        return [Send("message", target.jid, payload, el.get("type", ""), target.cm)]

    def _voice(self, real: str, occ: Occupant | None, form: etree._Element,
               now: float) -> list[Out]:
        """§7.13: a visitor asks for voice, and the moderators get the request as a form
        (§8.6); a moderator's form submitted back with muc#request_allow grants it (§8.3)."""
        if occ is None:
            raise StanzaError(E.NOT_ACCEPTABLE, "only occupants may ask for voice")
        fields = forms.submitted(form)
        if "muc#request_allow" in fields:  # §8.6: a moderator's decision
            if form.get("type") != "submit":
                return []  # cancelled: the request is skipped
            if occ.role != "moderator":
                raise StanzaError(E.FORBIDDEN, "moderators only")
            try:
                allow = forms.as_bool(fields["muc#request_allow"])
            except forms.FormError:
                raise StanzaError(E.BAD_REQUEST, "muc#request_allow: true or false",
                                  StanzaErrorType.MODIFY) from None
            target = self.occupants.get((fields.get("muc#roomnick") or [""])[0])
            asked_by = (fields.get("muc#jid") or [""])[0]
            if (not allow or target is None or target.role != "visitor"
                    or (asked_by and asked_by != target.jid)):
                return []  # denied, or about someone who left or has voice already
            return self._set_role(target.nick, "participant", self.affiliation(real),
                                  occ.role, occ.nick, "")
        if (fields.get("muc#role") or ["participant"])[0] != "participant":
            raise StanzaError(E.BAD_REQUEST, "a visitor may ask for the participant role",
                              StanzaErrorType.MODIFY)
        if occ.role != "visitor":
            return []  # it has voice already
        self._rate(occ, now)  # the moderators are not flooded with requests
        moderators = self.moderators()
        if not moderators:
            return []
        payload = (f'<message xmlns="{C}" from={_q(self.jid)}>'
                   f"{forms.voice_request_form(occ.jid, occ.nick)}</message>").encode()
        return [Broadcast("message", payload, tuple(moderators))]

    def _may_private(self, occ: Occupant) -> None:
        """muc#roomconfig_allowpm: who may send private messages (and IQs) to occupants."""
        allow = self.config.allow_pm
        if (allow == "none" or (allow == "moderators" and occ.role != "moderator")
                or (allow == "participants" and occ.role == "visitor")):
            raise StanzaError(E.FORBIDDEN, "private messages are not allowed here")

    def _invite(self, real: str, occ: Occupant | None, x: etree._Element) -> list[Out]:
        """§7.8.2 mediated invitations and §7.8.? declines."""
        out: list[Out] = []
        decline = x.find(f"{{{MUC_USER}}}decline")
        if decline is not None:
            to = decline.get("to", "")
            reason = decline.findtext(f"{{{MUC_USER}}}reason") or ""
            if to:
                r = f"<reason>{escape(reason)}</reason>" if reason else ""
                out.append(Send("message", to, (
                    f'<message xmlns="{C}" from={_q(self.jid)} to={_q(to)}>'
                    f'<x xmlns="{MUC_USER}"><decline from={_q(bare_of(real))}>{r}</decline>'
                    f"</x></message>").encode()))
            return out
        if occ is None:
            raise StanzaError(E.NOT_ACCEPTABLE, "only occupants may invite")
        aff = self.affiliation(real)
        if self.config.members_only and AFFILIATION_RANK[aff] < 2 and not (
                self.config.allow_invites and aff == "member"):
            raise StanzaError(E.FORBIDDEN, "you may not invite to this room")
        for inv in x.iterfind(f"{{{MUC_USER}}}invite"):
            try:
                to = str(parse_jid(inv.get("to", "")))
            except JIDError:
                raise StanzaError(E.JID_MALFORMED, "invite whom?",
                                  StanzaErrorType.MODIFY) from None
            if self.config.members_only and AFFILIATION_RANK[self.affiliation(to)] < 1:
                self.affiliations[bare_of(to)] = "member"  # §9.3: the invitee becomes a member
                self.dirty.affiliations.add(bare_of(to))
            reason = inv.findtext(f"{{{MUC_USER}}}reason") or ""
            r = f"<reason>{escape(reason)}</reason>" if reason else ""
            pw = (f"<password>{escape(self.config.password)}</password>"
                  if self.config.password else "")
            out.append(Send("message", to, (
                f'<message xmlns="{C}" from={_q(self.jid)} to={_q(to)}>'
                f'<x xmlns="{MUC_USER}"><invite from={_q(real)}>{r}</invite>{pw}</x>'
                f"</message>").encode()))
        return out

    # ---- IQs (§6.4 disco, §8 moderator, §9 admin, §10 owner; XEP-0410 self-ping) -------

    def _iq(self, type_: str, real: str, nick: str | None, el: etree._Element) -> list[Out]:
        occ = self.occupant_of(real)
        if type_ in ("result", "error"):
            if nick is not None:
                return self._iq_answer(real, nick, el)
            if (type_ == "error" and occ is not None and not occ.cm
                    and el.get("id", "").startswith(PROBE_PREFIX)):
                return self._drop_unreachable(occ)  # `sweep`: its client is not there
            return []
        if type_ not in ("get", "set") or len(el) != 1:
            return []
        child = el[0]
        tag = child.tag if isinstance(child.tag, str) else ""
        frm = self.room_jid(nick) if nick else self.jid
        if nick is not None:
            if occ is None:  # §7.5 as for private messages; XEP-0410 §3: "not joined"
                raise StanzaError(E.NOT_ACCEPTABLE, "only occupants may send to occupants")
            if tag == f"{{{PING}}}ping" and type_ == "get" and nick == occ.nick:
                return [Send("iq", real, iq_result(el.get("id", ""), real, frm), "result",
                             occ.cm)]  # XEP-0410 §3: the room answers a self-ping
            return self._iq_forward(occ, nick, el, tag)
        result: str | None = None
        if tag == f"{{{ns.DISCO_INFO}}}query" and type_ == "get" and not child.get("node"):
            result = self.disco_info()
        elif (tag == f"{{{ns.DISCO_INFO}}}query" and type_ == "get"
              and child.get("node") == ROOMUSER_NODE):  # §7.12: the reserved nickname
            mine = self.nicks.get(bare_of(real))
            identity = (f'<identity category="conference" type="text" name={_q(mine)}/>'
                        if mine else "")
            result = f'<query xmlns="{ns.DISCO_INFO}" node="{ROOMUSER_NODE}">{identity}</query>'
        elif tag == f"{{{REGISTER}}}query":
            return self._register(type_, real, child, el)
        elif tag == f"{{{ns.DISCO_ITEMS}}}query" and type_ == "get":
            result = f'<query xmlns="{ns.DISCO_ITEMS}"/>'
        elif tag == f"{{{PING}}}ping" and type_ == "get":
            result = ""
        elif tag == f"{{{MUC_OWNER}}}query":
            return self._owner(type_, real, child, el)
        elif tag == f"{{{MUC_ADMIN}}}query":
            return self._admin(type_, real, child, el)
        if result is None:
            raise StanzaError(E.SERVICE_UNAVAILABLE)
        return [Send("iq", real, iq_result(el.get("id", ""), real, frm, result), "result",
                     occ.cm if occ else "")]

    # ---- IQs between occupants (§16.3) ----------------------------------------------------

    def _key(self) -> AESGCM:
        if self._aead is None:
            key = hmac.new(self.secret, b"stanzad muc iq ids", hashlib.sha256).digest()
            self._aead = AESGCM(key)
        return self._aead

    def _seal(self, *parts: str) -> str:
        """An IQ id that names the asker, the asked and the asker's own id without showing
        them (§16.3: neither learns the other's real JID), readable only by this room (the
        key comes from its secret, so also by the next process that loads the room)."""
        nonce = os.urandom(12)
        box = self._key().encrypt(nonce, "\0".join(parts).encode(), self.jid.encode())
        return IQ_ID_PREFIX + base64.urlsafe_b64encode(nonce + box).decode().rstrip("=")

    def _open(self, sealed: str) -> list[str] | None:
        if not sealed.startswith(IQ_ID_PREFIX):
            return None
        raw = sealed[len(IQ_ID_PREFIX):]
        try:
            data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
            plain = self._key().decrypt(data[:12], data[12:], self.jid.encode())
        except (ValueError, InvalidTag):
            return None
        return plain.decode().split("\0")

    def _iq_forward(self, occ: Occupant, nick: str, el: etree._Element, tag: str) -> list[Out]:
        """An IQ to room/nick goes to that occupant's real JID from the asker's room JID
        (§16.3, item 2), a vCard request to its bare JID (its server answers for the
        account, XEP-0054 §3.2); the room's private-message rule (muc#roomconfig_allowpm)
        applies to IQs as to messages."""
        target = self.occupants.get(nick)
        if target is None:  # §7.5: no such occupant
            raise StanzaError(E.ITEM_NOT_FOUND, "no occupant with that nickname")
        self._may_private(occ)
        to, cm = target.jid, target.cm
        if tag == f"{{{ns.VCARD}}}vCard" and el.get("type") == "get":
            to, cm = bare_of(target.jid), ""
        iq = etree.fromstring(etree.tostring(el, with_tail=False))
        iq.set("from", self.room_jid(occ.nick))
        iq.set("to", to)
        iq.set("id", self._seal(occ.jid, target.jid, el.get("id", "")))
        return [Send("iq", to, etree.tostring(iq), el.get("type", ""), cm)]

    def _iq_answer(self, real: str, nick: str, el: etree._Element) -> list[Out]:
        """The answer to a forwarded IQ, from the occupant asked to the asker's room JID:
        back to the asker with its own id, from the answerer's room JID.  Anything else
        (a forged or stale id, an answer from someone else, an asker gone) is dropped."""
        opened = self._open(el.get("id", ""))
        if opened is None or len(opened) != 3:
            return []
        asker_jid, asked_jid, orig_id = opened
        asker, asked = self.occupant_of(asker_jid), self.occupant_of(asked_jid)
        if asker is None or asked is None or real not in (asked_jid, bare_of(asked_jid)):
            return []
        iq = etree.fromstring(etree.tostring(el, with_tail=False))
        iq.set("from", self.room_jid(asked.nick))
        iq.set("to", asker.jid)
        iq.set("id", orig_id)
        return [Send("iq", asker.jid, etree.tostring(iq), el.get("type", ""), asker.cm)]

    def disco_info(self) -> str:
        feats = [*forms.features(self.config), OCCUPANT_ID, PING, ns.DISCO_INFO, REGISTER,
                 "http://jabber.org/protocol/muc#request",
                 "http://jabber.org/protocol/muc#stable_id"]
        if self.archiving:  # XEP-0313 §5, §6.1 (and its ids, XEP-0359 §6)
            feats += [ns.MAM, ns.SID]
        name = f" name={_q(self.config.name)}" if self.config.name else ""
        return (f'<query xmlns="{ns.DISCO_INFO}"><identity category="conference" type="text"'
                f'{name}/>{"".join(f"<feature var={_q(f)}/>" for f in feats)}'
                f"{forms.info_form(self.config, len(self.occupants), self.subject)}</query>")

    def _result(self, real: str, el: etree._Element, payload: str = "") -> Send:
        occ = self.occupant_of(real)
        return Send("iq", real, iq_result(el.get("id", ""), real, self.jid, payload), "result",
                    occ.cm if occ else "")

    def _register(self, type_: str, real: str, q: etree._Element,
                  el: etree._Element) -> list[Out]:
        """§7.10: registering with the room reserves a nickname (§7.12) and makes an
        unaffiliated user a member.  In a members-only room only its members may register
        (membership is what the room is closed by: admins grant it, §9.3); outcasts never.
        XEP-0077 §3.2 <remove/> cancels the registration (and the membership it gave)."""
        bare = bare_of(real)
        aff = self.affiliation(real)
        if aff == "outcast":
            raise StanzaError(E.FORBIDDEN, "you are banned from this room")
        if self.config.members_only and AFFILIATION_RANK[aff] < 1:
            raise StanzaError(E.NOT_ALLOWED, "members only: ask an admin for membership")
        mine = self.nicks.get(bare, "")
        if type_ == "get":
            registered = (f"<registered/><username>{escape(mine)}</username>" if mine else "")
            return [self._result(real, el, f'<query xmlns="{REGISTER}">{registered}'
                                           f"{forms.register_form(mine)}</query>")]
        if q.find(f"{{{REGISTER}}}remove") is not None:
            self.reserve(bare, None)
            self.dirty.affiliations.add(bare)
            out: list[Out] = [self._result(real, el)]
            if aff == "member":
                out[:0] = self._affiliation_changed(bare, "none", aff, "", "")
            return out
        x = q.find(f"{{{forms.DATA}}}x")
        if x is None or x.get("type") != "submit" or forms.form_type(x) != forms.REGISTER:
            raise StanzaError(E.BAD_REQUEST, "a submitted muc#register form",
                              StanzaErrorType.MODIFY)
        try:
            nick = enforce_nick((forms.submitted(x).get("muc#register_roomnick") or [""])[0])
        except StanzaError:
            raise StanzaError(E.BAD_REQUEST, "muc#register_roomnick: a nickname (RFC 8266)",
                              StanzaErrorType.MODIFY) from None
        if self.nick_taken(nick, real):
            raise StanzaError(E.CONFLICT, "that nickname is reserved or in use")
        self.reserve(bare, nick)
        self.dirty.affiliations.add(bare)
        out = [self._result(real, el)]
        if AFFILIATION_RANK[aff] < 1:
            out[:0] = self._affiliation_changed(bare, "member", aff, "", "")
        return out

    def _owner(self, type_: str, real: str, q: etree._Element, el: etree._Element) -> list[Out]:
        if self.affiliation(real) != "owner":  # §10.1.2, §10.2
            raise StanzaError(E.FORBIDDEN, "only owners may configure the room")
        if type_ == "get":
            admins = sorted(j for j, a in self.affiliations.items() if a == "admin")
            form = forms.config_form(self.config, self.owners(), admins)
            return [self._result(real, el, f'<query xmlns="{MUC_OWNER}">{form}</query>')]
        destroy = q.find(f"{{{MUC_OWNER}}}destroy")
        if destroy is not None:
            return [*self.destroy(destroy.get("jid", ""),
                                  destroy.findtext(f"{{{MUC_OWNER}}}reason") or "",
                                  destroy.findtext(f"{{{MUC_OWNER}}}password") or ""),
                    self._result(real, el)]
        x = q.find(f"{{{forms.DATA}}}x")
        if x is None:
            raise StanzaError(E.BAD_REQUEST, "a form or a destroy", StanzaErrorType.MODIFY)
        if x.get("type") == "cancel":  # §10.1.3: cancelling a new room's form destroys it
            if self.locked:
                return [*self.destroy("", "", ""), self._result(real, el)]
            return [self._result(real, el)]
        if x.get("type") != "submit":
            raise StanzaError(E.BAD_REQUEST, "submit or cancel", StanzaErrorType.MODIFY)
        fields = forms.submitted(x)
        try:
            new = forms.apply_form(self.config, fields, self.limits.max_history)
        except forms.FormError as exc:
            raise StanzaError(E.NOT_ACCEPTABLE, str(exc)) from None
        out: list[Out] = [self._result(real, el)]
        for var, aff in (("muc#roomconfig_roomowners", "owner"),
                         ("muc#roomconfig_roomadmins", "admin")):
            if var in fields:
                for j in fields[var]:
                    try:
                        bare = parse_jid(j.strip()).bare_str
                    except JIDError:
                        raise StanzaError(E.JID_MALFORMED, j, StanzaErrorType.MODIFY) from None
                    self.affiliations[bare] = aff
                    self.dirty.affiliations.add(bare)
        old = self.config
        self.config = new
        self.dirty.room = True
        was_locked, self.locked = self.locked, False
        if was_locked:
            return out
        codes = ["104"]  # §10.2.1: a change that is not about privacy
        if new.non_anonymous != old.non_anonymous:
            codes.append("172" if new.non_anonymous else "173")
        status = "".join(f'<status code="{c}"/>' for c in codes)
        if self.occupants:
            out.append(Broadcast("message", (
                f'<message xmlns="{C}" type="groupchat" from={_q(self.jid)}>'
                f'<x xmlns="{MUC_USER}">{status}</x></message>').encode(),
                tuple(self.occupants.values()), "groupchat"))
        if new.members_only and not old.members_only:  # §9.? 322: no longer allowed in
            for o in list(self.occupants.values()):
                if AFFILIATION_RANK[self.affiliation(o.jid)] < 1:
                    out.extend(self._presence_out(o, "unavailable", ["322"], role="none"))
                    self._remove(o)
        return out

    def destroy(self, alternate: str, reason: str, password: str) -> list[Out]:
        """§10.9: every occupant gets unavailable presence with <destroy/>."""
        alt = f" jid={_q(alternate)}" if alternate else ""
        inner = (f"<reason>{escape(reason)}</reason>" if reason else "") + (
            f"<password>{escape(password)}</password>" if password else "")
        extra = f"<destroy{alt}>{inner}</destroy>" if inner else f"<destroy{alt}/>"
        out: list[Out] = []
        for o in list(self.occupants.values()):
            out.extend(self._presence_out(o, "unavailable", [], extra=extra, role="none",
                                          affiliation="none"))
            self.occupants.pop(o.nick)
            self._by_jid.pop(o.jid, None)
            self.dirty.occupants.add(o.nick)
        self.dirty.destroyed = True
        return out

    def _admin(self, type_: str, real: str, q: etree._Element, el: etree._Element) -> list[Out]:
        actor_aff = self.affiliation(real)
        actor = self.occupant_of(real)
        actor_role = actor.role if actor is not None else "none"
        items = list(q.iterfind(f"{{{MUC_ADMIN}}}item"))
        if not items:
            raise StanzaError(E.BAD_REQUEST, "no item", StanzaErrorType.MODIFY)
        if type_ == "get":
            return [self._result(real, el, self._admin_list(items[0], actor_aff, actor_role))]
        out: list[Out] = []
        for item in items:  # checked as it goes: stanzas of the earlier items already stand
            out.extend(self._admin_item(item, real, actor_aff, actor_role, actor))
        out.append(self._result(real, el))
        return out

    def _admin_list(self, item: etree._Element, actor_aff: str, actor_role: str) -> str:
        """§9.5 member list, §9.2 ban list, §10.5 owners, §10.8 admins, §8.5 voice list."""
        aff, role = item.get("affiliation"), item.get("role")
        rows: list[str] = []
        if aff is not None:
            if aff not in AFFILIATION_RANK or aff == "none":
                raise StanzaError(E.BAD_REQUEST, "which affiliation?", StanzaErrorType.MODIFY)
            if AFFILIATION_RANK[actor_aff] < 2 and not (
                    aff == "member" and self.config.members_only and actor_aff == "member"):
                raise StanzaError(E.FORBIDDEN, "admins and owners only")
            rows = [f'<item affiliation="{a}" jid={_q(j)}'
                    + (f" nick={_q(self.nicks[j])}/>" if j in self.nicks else "/>")
                    for j, a in sorted(self.affiliations.items()) if a == aff]
        elif role is not None:
            if role not in ROLE_RANK or role == "none":
                raise StanzaError(E.BAD_REQUEST, "which role?", StanzaErrorType.MODIFY)
            if actor_role != "moderator":
                raise StanzaError(E.FORBIDDEN, "moderators only")
            rows = [self._item(o, jid=True, nick=o.nick) for o in self.occupants.values()
                    if o.role == role]
        else:
            raise StanzaError(E.BAD_REQUEST, "an affiliation or a role", StanzaErrorType.MODIFY)
        return f'<query xmlns="{MUC_ADMIN}">{"".join(rows)}</query>'

    def _admin_item(self, item: etree._Element, real: str, actor_aff: str, actor_role: str,
                    actor: Occupant | None) -> list[Out]:
        reason = item.findtext(f"{{{MUC_ADMIN}}}reason") or ""
        actor_nick = actor.nick if actor is not None else ""
        role, aff = item.get("role"), item.get("affiliation")
        if role is not None:
            return self._set_role(item.get("nick", ""), role, actor_aff, actor_role,
                                  actor_nick, reason)
        if aff is not None:
            target = item.get("jid")
            if not target and item.get("nick"):
                occ = self.occupants.get(item.get("nick", ""))
                if occ is None:
                    raise StanzaError(E.ITEM_NOT_FOUND, "no such occupant")
                target = occ.jid
            try:
                bare = parse_jid(target or "").bare_str
            except JIDError:
                raise StanzaError(E.JID_MALFORMED, "which JID?", StanzaErrorType.MODIFY) from None
            return self._set_affiliation(bare, aff, real, actor_aff, actor_nick, reason)
        raise StanzaError(E.BAD_REQUEST, "a role or an affiliation", StanzaErrorType.MODIFY)

    def _set_role(self, nick: str, role: str, actor_aff: str, actor_role: str,
                  actor_nick: str, reason: str) -> list[Out]:
        """§8.2 kick (none, status 307), §8.3/§8.4 voice, §9.6/§9.7 moderator."""
        if role not in ROLE_RANK:
            raise StanzaError(E.BAD_REQUEST, "which role?", StanzaErrorType.MODIFY)
        occ = self.occupants.get(nick)
        if occ is None:
            raise StanzaError(E.ITEM_NOT_FOUND, "no occupant with that nickname")
        if actor_role != "moderator":
            raise StanzaError(E.FORBIDDEN, "moderators only")
        target_aff = self.affiliation(occ.jid)
        changes_moderator = role == "moderator" or (occ.role == "moderator" and role != "none")
        if changes_moderator and AFFILIATION_RANK[actor_aff] < 2:  # §9.6, §9.7
            raise StanzaError(E.FORBIDDEN, "admins and owners only")
        if AFFILIATION_RANK[target_aff] >= 2 and (
                role != "moderator" or AFFILIATION_RANK[target_aff] > AFFILIATION_RANK[actor_aff]):
            raise StanzaError(E.NOT_ALLOWED, "not for an admin or owner")  # §8.2, §8.4
        if role == "none":
            out = self._presence_out(occ, "unavailable", ["307"], role="none",
                                     actor=actor_nick, reason=reason)
            self._remove(occ)
            return out
        occ.role = role
        self.dirty.occupants.add(nick)
        return self._presence_out(occ, "", [], actor=actor_nick, reason=reason)

    def _set_affiliation(self, bare: str, aff: str, real: str, actor_aff: str,
                         actor_nick: str, reason: str) -> list[Out]:
        """§9.1 ban (301), §9.3/§9.4 members, §10.3-§10.7 owners and admins."""
        if aff not in AFFILIATION_RANK:
            raise StanzaError(E.BAD_REQUEST, "which affiliation?", StanzaErrorType.MODIFY)
        current = self.affiliations.get(bare, "none")
        if AFFILIATION_RANK[actor_aff] < 2:
            raise StanzaError(E.FORBIDDEN, "admins and owners only")
        if actor_aff != "owner" and (AFFILIATION_RANK[current] >= 2 or
                                     AFFILIATION_RANK[aff] >= 2):
            raise StanzaError(E.NOT_ALLOWED, "only owners change admins and owners")
        if current == "owner" and aff != "owner" and self.owners() == [bare]:
            raise StanzaError(E.CONFLICT, "the last owner stays")  # §10.6
        return self._affiliation_changed(bare, aff, current, actor_nick, reason)

    def _affiliation_changed(self, bare: str, aff: str, current: str, actor_nick: str,
                             reason: str) -> list[Out]:
        """The affiliation of ``bare`` becomes ``aff``, and its occupants are told (or
        removed: 301 banned, 321 no longer a member of a members-only room)."""
        if aff == "none":
            self.affiliations.pop(bare, None)
        else:
            self.affiliations[bare] = aff
        if aff in ("none", "outcast"):
            self.reserve(bare, None)  # §9.1: an outcast's nickname is no longer reserved
        self.dirty.affiliations.add(bare)
        out: list[Out] = []
        for occ in [o for o in self.occupants.values() if bare_of(o.jid) == bare]:
            if aff == "outcast":
                out.extend(self._presence_out(occ, "unavailable", ["301"], role="none",
                                              actor=actor_nick, reason=reason))
                self._remove(occ)
            elif self.config.members_only and aff == "none":
                out.extend(self._presence_out(occ, "unavailable", ["321"], role="none",
                                              actor=actor_nick, reason=reason))
                self._remove(occ)
            else:
                occ.role = self.default_role(aff) if (
                    aff in ("owner", "admin") or occ.role != "moderator"
                    or current in ("owner", "admin")) else occ.role
                self.dirty.occupants.add(occ.nick)
                out.extend(self._presence_out(occ, "", [], actor=actor_nick, reason=reason))
        return out

    # ---- remote occupants that went away silently ----------------------------------------

    def sweep(self, now: float, idle: float, timeout: float) -> list[Out]:
        """Ask each remote occupant silent for ``idle`` seconds whether it is still there
        (a disco#info get from the room: every client answers one, XEP-0030), and remove
        those that have not answered for ``timeout`` seconds, as those whose address bounced
        an error (307 and 333, as `_drop_unreachable`).  Local occupants need none of this:
        the presence service and the connection managers tell the room when their sessions
        end.  A remote server that restarts or whose stream dies tells nobody, and an idle
        room sends nothing that could bounce; an answer, or any stanza, keeps the occupant."""
        out: list[Out] = []
        for occ in [o for o in self.occupants.values() if not o.cm]:
            if not occ.seen:  # loaded since (a room move): count from now
                occ.seen = now
            elif occ.probed and now - occ.probed >= timeout:
                out.extend(self._drop_unreachable(occ))
            elif not occ.probed and now - occ.seen >= idle:
                occ.probed = now
                probe = (f'<iq xmlns="{C}" type="get" id="{PROBE_PREFIX}{os.urandom(6).hex()}" '
                         f"from={_q(self.jid)} to={_q(occ.jid)}>"
                         f'<query xmlns="{ns.DISCO_INFO}"/></iq>').encode()
                out.append(Send("iq", occ.jid, probe, "get"))
        return out
