"""Where a stanza for a local account goes: RFC 6121 §8.5, as a pure function.

The router calls `decide` with the envelope's routing facts and the recipient's entry from
the session cache; it gets back the full JIDs (and their connection managers) to deliver to,
or the error to bounce, or nothing (silently ignored, as the RFC says for that case).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.bus.envelope import Kind
from shared.store.sessions import SessionRecord
from shared.xmpp.errors import StanzaErrorCondition


@dataclass(frozen=True, slots=True)
class Deliver:
    targets: tuple[tuple[str, str], ...]  # (full JID, connection manager id)


@dataclass(frozen=True, slots=True)
class Bounce:
    condition: StanzaErrorCondition


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str


@dataclass(frozen=True, slots=True)
class Account:
    """An IQ for the account itself: the roster service answers on its behalf (§8.5.2.1.3)."""


@dataclass(frozen=True, slots=True)
class Store:
    """Keep the message for the account's next login (XEP-0160, RFC 6121 §8.5.2.2.1)."""


Decision = Deliver | Bounce | Ignore | Store | Account

SERVICE_UNAVAILABLE = Bounce(StanzaErrorCondition.SERVICE_UNAVAILABLE)


def decide(
    kind: Kind,
    type_: str,
    to: str,
    exists: bool,
    sessions: dict[str, SessionRecord],
) -> Decision:
    bare, slash, resource = to.partition("/")
    if not exists:
        # §8.5.1: no such account.
        if kind is Kind.PRESENCE or type_ in ("error", "result"):
            return Ignore("no such account")
        return SERVICE_UNAVAILABLE
    if slash:
        record = sessions.get(resource)
        if record is not None:
            return Deliver(((to, record.cm_id),))  # §8.5.3.1
        return _full_jid_offline(kind, type_, bare, sessions)  # §8.5.3.2
    return _bare(kind, type_, bare, sessions)


def _full_jid_offline(
    kind: Kind, type_: str, bare: str, sessions: dict[str, SessionRecord]
) -> Decision:
    if kind is Kind.MESSAGE:
        if type_ == "groupchat":
            return SERVICE_UNAVAILABLE  # §8.5.3.2.1
        if type_ == "error":
            return Ignore("error to an offline resource")
        return _bare(kind, type_, bare, sessions)  # normal, chat, headline: as if bare
    if kind is Kind.IQ and type_ in ("get", "set"):
        return SERVICE_UNAVAILABLE  # §8.5.3.2.3
    return Ignore("no such resource")  # §8.5.3.2.2 presence; IQ result/error


def _bare(kind: Kind, type_: str, bare: str, sessions: dict[str, SessionRecord]) -> Decision:
    available = [(res, r) for res, r in sessions.items() if r.available and r.priority >= 0]
    if kind is Kind.MESSAGE:
        if type_ == "error":
            return Ignore("error to a bare JID")
        if type_ == "groupchat":
            return SERVICE_UNAVAILABLE  # §8.5.2.1.1
        if not available:
            if type_ == "headline":
                return Ignore("headline, no available resource")  # §8.5.2.2.1
            return Store()  # §8.5.2.2.1: normal and chat are stored offline
        if type_ == "headline":
            chosen = available  # §8.5.2.1.1: every available resource
        else:
            top = max(r.priority for _, r in available)
            chosen = [(res, r) for res, r in available if r.priority == top]
        return Deliver(tuple((f"{bare}/{res}", r.cm_id) for res, r in chosen))
    if kind is Kind.PRESENCE:
        # §8.5.2.1.2: every available resource (the presence and roster services will take
        # over subscription handling and probes).
        targets = [(res, r) for res, r in sessions.items() if r.available]
        if not targets:
            return Ignore("presence, no available resource")
        return Deliver(tuple((f"{bare}/{res}", r.cm_id) for res, r in targets))
    # §8.5.2.1.3: an IQ to the bare JID is handled by the server on the account's behalf
    if type_ in ("get", "set"):
        return Account()
    return Ignore("IQ result or error to a bare JID")
