"""Room configuration (XEP-0045 §10.2 muc#roomconfig), room information (§15.5.4
muc#roominfo, carried in disco#info as XEP-0128 extended information), voice requests (§7.13,
§8.6 muc#request) and registration with a room (§7.10 muc#register): XEP-0004 data forms read
and written."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

DATA: Final = "jabber:x:data"
ROOMCONFIG: Final = "http://jabber.org/protocol/muc#roomconfig"
ROOMINFO: Final = "http://jabber.org/protocol/muc#roominfo"
REQUEST: Final = "http://jabber.org/protocol/muc#request"
REGISTER: Final = "http://jabber.org/protocol/muc#register"
WHOIS: Final = ("moderators", "anyone")
ALLOW_PM: Final = ("anyone", "participants", "moderators", "none")


@dataclass(slots=True)
class Config:
    """A room's configuration; the defaults are what an instant room gets (§10.1.2)."""

    name: str = ""
    description: str = ""
    persistent: bool = False
    public: bool = True
    members_only: bool = False
    moderated: bool = False
    password: str = ""  # password-protected when not empty
    whois: str = "moderators"  # semi-anonymous; "anyone": non-anonymous
    change_subject: bool = False  # participants may change the subject
    allow_invites: bool = False  # members may invite (and so add members)
    allow_pm: str = "anyone"
    max_users: int = 0  # 0: the service's limit
    history: int = 20  # muc#maxhistoryfetch
    archive: bool = True  # muc#roomconfig_enablearchiving (XEP-0313 §5)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def non_anonymous(self) -> bool:
        return self.whois == "anyone"


class FormError(ValueError):
    """A submitted form that cannot be applied (answered with not-acceptable/bad-request)."""


def _field(var: str, type_: str, label: str, values: list[str],
           options: tuple[str, ...] = ()) -> str:
    opts = "".join(f'<option label={quoteattr(o)}><value>{escape(o)}</value></option>'
                   for o in options)
    vals = "".join(f"<value>{escape(v)}</value>" for v in values)
    return (f'<field var={quoteattr(var)} type="{type_}" label={quoteattr(label)}>'
            f"{vals}{opts}</field>")


def _hidden(form_type: str) -> str:
    return f'<field var="FORM_TYPE" type="hidden"><value>{form_type}</value></field>'


def _bool(value: bool) -> list[str]:
    return ["1" if value else "0"]


def config_form(config: Config, owners: list[str], admins: list[str]) -> str:
    """The owner's configuration form (§10.2), with the room's current values."""
    fields = [
        f'<field var="FORM_TYPE" type="hidden"><value>{ROOMCONFIG}</value></field>',
        _field("muc#roomconfig_roomname", "text-single", "Room name", [config.name]),
        _field("muc#roomconfig_roomdesc", "text-single", "Description", [config.description]),
        _field("muc#roomconfig_persistentroom", "boolean", "Persistent",
               _bool(config.persistent)),
        _field("muc#roomconfig_publicroom", "boolean", "Listed in the directory",
               _bool(config.public)),
        _field("muc#roomconfig_membersonly", "boolean", "Members only",
               _bool(config.members_only)),
        _field("muc#roomconfig_moderatedroom", "boolean", "Moderated", _bool(config.moderated)),
        _field("muc#roomconfig_passwordprotectedroom", "boolean", "Password required",
               _bool(bool(config.password))),
        _field("muc#roomconfig_roomsecret", "text-private", "Password", [config.password]),
        _field("muc#roomconfig_whois", "list-single", "Who may see real JIDs",
               [config.whois], WHOIS),
        _field("muc#roomconfig_changesubject", "boolean", "Participants may change the subject",
               _bool(config.change_subject)),
        _field("muc#roomconfig_allowinvites", "boolean", "Members may invite",
               _bool(config.allow_invites)),
        _field("muc#roomconfig_allowpm", "list-single", "Who may send private messages",
               [config.allow_pm], ALLOW_PM),
        _field("muc#roomconfig_maxusers", "text-single", "Maximum occupants (0: no limit)",
               [str(config.max_users)]),
        _field("muc#maxhistoryfetch", "text-single", "Messages of history on join",
               [str(config.history)]),
        _field("muc#roomconfig_enablearchiving", "boolean", "Archive messages (XEP-0313)",
               _bool(config.archive)),
        _field("muc#roomconfig_roomowners", "jid-multi", "Owners", owners),
        _field("muc#roomconfig_roomadmins", "jid-multi", "Admins", admins),
    ]
    return (f'<x xmlns="{DATA}" type="form"><title>Room configuration</title>'
            f'{"".join(fields)}</x>')


def form_type(x: etree._Element) -> str:
    """The FORM_TYPE of a form ("" without one)."""
    for f in x.iterfind(f"{{{DATA}}}field"):
        if f.get("var") == "FORM_TYPE":
            return (f.findtext(f"{{{DATA}}}value") or "").strip()
    return ""


def submitted(x: etree._Element) -> dict[str, list[str]]:
    """var -> values of a submitted form."""
    out: dict[str, list[str]] = {}
    for f in x.iterfind(f"{{{DATA}}}field"):
        var = f.get("var")
        if var:
            out[var] = [(v.text or "") for v in f.iterfind(f"{{{DATA}}}value")]
    return out


def _as_bool(values: list[str]) -> bool:
    if not values or values[0].strip() not in ("0", "1", "true", "false"):
        raise FormError("a boolean field needs 0, 1, true or false")
    return values[0].strip() in ("1", "true")


def _as_int(values: list[str], lo: int, hi: int) -> int:
    try:
        n = int(values[0].strip()) if values and values[0].strip() else 0
    except ValueError:
        raise FormError("a number field needs a number") from None
    return max(lo, min(hi, n))


def apply_form(config: Config, fields: dict[str, list[str]], max_history: int) -> Config:
    """A new configuration: ``config`` with the submitted fields (others unchanged)."""
    form_type = fields.get("FORM_TYPE")
    if form_type is not None and form_type != [ROOMCONFIG]:
        raise FormError("not a muc#roomconfig form")
    new = dataclasses.replace(config)
    text = {"muc#roomconfig_roomname": "name", "muc#roomconfig_roomdesc": "description"}
    flags = {"muc#roomconfig_persistentroom": "persistent",
             "muc#roomconfig_publicroom": "public",
             "muc#roomconfig_membersonly": "members_only",
             "muc#roomconfig_moderatedroom": "moderated",
             "muc#roomconfig_changesubject": "change_subject",
             "muc#roomconfig_allowinvites": "allow_invites",
             "muc#roomconfig_enablearchiving": "archive"}
    for var, attr in text.items():
        if var in fields:
            setattr(new, attr, (fields[var] or [""])[0][:1024])
    for var, attr in flags.items():
        if var in fields:
            setattr(new, attr, _as_bool(fields[var]))
    protected = fields.get("muc#roomconfig_passwordprotectedroom")
    if "muc#roomconfig_roomsecret" in fields:
        new.password = (fields["muc#roomconfig_roomsecret"] or [""])[0][:256]
    if protected is not None and not _as_bool(protected):
        new.password = ""
    elif protected is not None and not new.password:
        raise FormError("a password-protected room needs a password")
    if "muc#roomconfig_whois" in fields:
        whois = (fields["muc#roomconfig_whois"] or [""])[0]
        if whois not in WHOIS:
            raise FormError("muc#roomconfig_whois: moderators or anyone")
        new.whois = whois
    if "muc#roomconfig_allowpm" in fields:
        allow = (fields["muc#roomconfig_allowpm"] or [""])[0]
        if allow not in ALLOW_PM:
            raise FormError("muc#roomconfig_allowpm: anyone, participants, moderators or none")
        new.allow_pm = allow
    if "muc#roomconfig_maxusers" in fields:
        new.max_users = _as_int(fields["muc#roomconfig_maxusers"], 0, 1_000_000)
    if "muc#maxhistoryfetch" in fields:
        new.history = _as_int(fields["muc#maxhistoryfetch"], 0, max_history)
    return new


def info_form(config: Config, occupants: int, subject: str) -> str:
    """The room information form of disco#info (§15.5.4, XEP-0128)."""
    fields = [
        f'<field var="FORM_TYPE" type="hidden"><value>{ROOMINFO}</value></field>',
        _field("muc#roominfo_description", "text-single", "Description",
               [config.description]),
        _field("muc#roominfo_occupants", "text-single", "Number of occupants",
               [str(occupants)]),
        _field("muc#roominfo_subject", "text-single", "Subject", [subject]),
        _field("muc#roomconfig_roomname", "text-single", "Room name", [config.name]),
        _field("muc#roomconfig_changesubject", "boolean", "Participants may change the subject",
               _bool(config.change_subject)),
        _field("muc#roomconfig_allowinvites", "boolean", "Members may invite",
               _bool(config.allow_invites)),
        _field("muc#roomconfig_allowpm", "list-single", "Who may send private messages",
               [config.allow_pm]),
        _field("muc#maxhistoryfetch", "text-single", "Messages of history on join",
               [str(config.history)]),
    ]
    return f'<x xmlns="{DATA}" type="result">{"".join(fields)}</x>'


def features(config: Config) -> list[str]:
    """The muc_* features of a room (§15.4, the disco#info of §6.4)."""
    return [
        "http://jabber.org/protocol/muc",
        "muc_persistent" if config.persistent else "muc_temporary",
        "muc_public" if config.public else "muc_hidden",
        "muc_membersonly" if config.members_only else "muc_open",
        "muc_moderated" if config.moderated else "muc_unmoderated",
        "muc_nonanonymous" if config.non_anonymous else "muc_semianonymous",
        "muc_passwordprotected" if config.password else "muc_unsecured",
    ]


def voice_request_form(jid: str, nick: str) -> str:
    """What the moderators get when a visitor asks for voice (§8.6): submitted back with
    muc#request_allow true, it grants the occupant voice."""
    return (f'<x xmlns="{DATA}" type="form"><title>Voice request</title>'
            "<instructions>To grant voice to this person, set muc#request_allow and submit the "
            "form; to skip the request, cancel it.</instructions>"
            f"{_hidden(REQUEST)}"
            f'{_field("muc#role", "list-single", "Requested role", ["participant"])}'
            f'{_field("muc#jid", "jid-single", "User ID", [jid])}'
            f'{_field("muc#roomnick", "text-single", "Room Nickname", [nick])}'
            f'{_field("muc#request_allow", "boolean", "Grant voice to this person?", ["0"])}'
            "</x>")


def register_form(nick: str) -> str:
    """The registration form of a room (§7.10): the nickname to reserve is all it asks."""
    return (f'<x xmlns="{DATA}" type="form"><title>Room registration</title>'
            "<instructions>Choose the nickname to reserve in this room.</instructions>"
            f"{_hidden(REGISTER)}"
            f'<field var="muc#register_roomnick" type="text-single" label="Desired Nickname">'
            f"{f'<value>{escape(nick)}</value>' if nick else ''}<required/></field></x>")


def as_bool(values: list[str]) -> bool:
    """A submitted boolean field (XEP-0004 §3.3: 0, 1, false, true)."""
    return _as_bool(values)
