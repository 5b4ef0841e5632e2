"""The RFC 6121 presence subscription state machine: pure and table-driven.

A roster item's subscription state, as seen from the user's server, is one of the nine states
of RFC 6121 Appendix A.1 ("None", "None + Pending Out", ..., "Both"), plus the pre-approval
flag of RFC 6121 §3.4.  `apply` moves it on one subscription stanza:

* `Direction.OUTBOUND`: the user's client sent the stanza; the tables are Appendix A.2
  ("client-generated outbound"), the prose is §3.1.2, §3.1.5, §3.2.2, §3.3.2 and §3.4.2.
* `Direction.INBOUND`: the user's server received the stanza from the contact; the tables
  are Appendix A.3 ("server-processed inbound"), the prose is §3.1.3, §3.1.6, §3.2.3, §3.3.3.

Each Appendix A table is written out below row by row, as (existing state, route/deliver?,
new state), so it can be checked against the RFC by eye.  The pre-approval flag and the
auto-reply of §3.1.3 are laid over the tables in `apply`, because Appendix A leaves them out
or only footnotes them.

This module decides; it does not act.  The caller (the roster service) stores `Outcome.state`,
sends a roster push when `Outcome.changed`, routes or delivers the stanza when
`Outcome.route`, and sends `Outcome.auto_reply` back to the contact.  Presence broadcasts
that go with these changes (current presence after an approval, §3.1.5; "unavailable" after
a subscription is cancelled or withdrawn, §3.2.2 and §3.3.3) are the caller's business too.

No I/O and no imports beyond the standard library: a test walks the imports of
shared/xmpp/ and forbids asyncio, redis, nats and friends.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

__all__ = [
    "A1_STATE_NAMES",
    "EVENT_TYPES",
    "SUBSCRIPTION_TYPES",
    "Direction",
    "Outcome",
    "State",
    "Subscription",
    "apply",
    "on_roster_remove",
]


class Subscription(enum.StrEnum):
    """The roster item's 'subscription' attribute (RFC 6121 §2.1.2.5)."""

    NONE = "none"
    TO = "to"  # the user receives the contact's presence
    FROM = "from"  # the contact receives the user's presence
    BOTH = "both"


class Direction(enum.Enum):
    """Which way the subscription stanza travels, seen from the user's server."""

    OUTBOUND = "outbound"  # the user sends it (Appendix A.2)
    INBOUND = "inbound"  # the user's server receives it from the contact (Appendix A.3)


#: The four presence types that manage subscriptions (RFC 6121 §3).
EVENT_TYPES: Final[tuple[str, ...]] = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")
SUBSCRIPTION_TYPES: Final = frozenset(EVENT_TYPES)

_FROM_SIDE: Final = frozenset({Subscription.FROM, Subscription.BOTH})
_TO_SIDE: Final = frozenset({Subscription.TO, Subscription.BOTH})

# RFC 6121 Appendix A.1: the nine defined states, as (subscription, pending_out, pending_in).
# RFC 3921 spelled the fourth one "None + Pending Out/In"; RFC 6121 spells it "Out+In".
_A1: Final[Mapping[str, tuple[Subscription, bool, bool]]] = {
    "None": (Subscription.NONE, False, False),
    "None + Pending Out": (Subscription.NONE, True, False),
    "None + Pending In": (Subscription.NONE, False, True),
    "None + Pending Out+In": (Subscription.NONE, True, True),
    "To": (Subscription.TO, False, False),
    "To + Pending In": (Subscription.TO, False, True),
    "From": (Subscription.FROM, False, False),
    "From + Pending Out": (Subscription.FROM, True, False),
    "Both": (Subscription.BOTH, False, False),
}
_A1_BY_KEY: Final[Mapping[tuple[Subscription, bool, bool], str]] = {v: k for k, v in _A1.items()}
_A1_ALIASES: Final[Mapping[str, str]] = {"None + Pending Out/In": "None + Pending Out+In"}

#: The Appendix A.1 state names, in the RFC's order.
A1_STATE_NAMES: Final[tuple[str, ...]] = tuple(_A1)


@dataclass(frozen=True, slots=True)
class State:
    """One roster item's subscription state (RFC 6121 Appendix A.1, plus §3.4 pre-approval)."""

    subscription: Subscription = Subscription.NONE
    pending_out: bool = False  # ask="subscribe" in the roster item (§2.1.2.2)
    pending_in: bool = False  # a request from the contact awaits the user's answer (§3.1.3)
    approved: bool = False  # pre-approved (§3.4): a later inbound subscribe is auto-approved

    @classmethod
    def from_name(cls, name: str, *, approved: bool = False) -> State:
        """The state Appendix A.1 calls `name` (RFC 3921's "Out/In" spelling is accepted)."""
        try:
            subscription, pending_out, pending_in = _A1[_A1_ALIASES.get(name, name)]
        except KeyError:
            raise ValueError(f"not an RFC 6121 Appendix A.1 state: {name!r}") from None
        return cls(subscription, pending_out, pending_in, approved)

    @property
    def is_valid(self) -> bool:
        """True for the nine Appendix A.1 states, with `approved` only where §3.4.2 allows it.

        "Pending In" cannot go with 'from'/'both' (the request was answered), "Pending Out"
        cannot go with 'to'/'both' (it was answered); a pre-approval is only recorded for
        "None", "None + Pending Out" and "To" (§3.4.2 step 3).
        """
        if (self.subscription, self.pending_out, self.pending_in) not in _A1_BY_KEY:
            return False
        return not self.approved or (self.subscription not in _FROM_SIDE and not self.pending_in)

    def normalized(self) -> State:
        """The nearest valid state (`is_valid`): drop flags that the subscription has made moot.

        Stored roster items can be inconsistent (older data, manual edits); `apply` works on
        the normalized state, so its results are always valid.  A pre-approval next to a
        pending inbound request is dropped rather than acted on: the user still sees the
        request and answers it, and nothing is granted without an explicit stanza.
        """
        pending_out = self.pending_out and self.subscription not in _TO_SIDE
        pending_in = self.pending_in and self.subscription not in _FROM_SIDE
        approved = self.approved and self.subscription not in _FROM_SIDE and not pending_in
        if (pending_out, pending_in, approved) == (
            self.pending_out,
            self.pending_in,
            self.approved,
        ):
            return self
        return State(self.subscription, pending_out, pending_in, approved)

    @property
    def name(self) -> str:
        """The Appendix A.1 name ("None + Pending Out", ...) of the normalized state."""
        s = self.normalized()
        return _A1_BY_KEY[(s.subscription, s.pending_out, s.pending_in)]

    @property
    def ask(self) -> str | None:
        """The roster item's 'ask' attribute (RFC 6121 §2.1.2.2)."""
        return "subscribe" if self.pending_out else None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the user's server does with one subscription stanza."""

    state: State  # the new state
    # subscription, pending_out or approved differs, i.e. the roster item the client sees
    # changed: send a roster push.  "Pending In" alone is not in the roster item (§3.1.3).
    changed: bool
    # OUTBOUND: route the stanza to the contact; INBOUND: deliver it to the user's available
    # resources (or, for a subscribe, hold it until one is available, §3.1.3 step 4).
    route: bool
    # A stanza type the user's server sends to the contact on the user's behalf, or None.
    auto_reply: str | None


# ---------------------------------------------------------------------------------------------
# Appendix A tables.  Row: (existing state, route or deliver?, new state or None for
# "no state change").  Every table has one row for each of the nine A.1 states.
# The tables look alike on purpose (a copy-finder pairs them): each mirrors one table of the
# RFC row for row, so that it can be checked against the text by eye.

_Row = tuple[str, bool, str | None]
_Table = Mapping[str, tuple[bool, str | None]]


def _table(*rows: _Row) -> _Table:
    table = {existing: (route, new) for existing, route, new in rows}
    if len(rows) != len(_A1) or set(table) != set(_A1):
        raise RuntimeError("an Appendix A table must list each A.1 state exactly once")
    return table


# A.2.1 Subscribe (client-generated outbound).  RFC 6121 routes it in every state, unlike the
# RFC 3921 practice of dropping it for "To"/"Both": the contact's server may have lost state,
# and it auto-replies "subscribed" if the subscription already exists (§3.1.2, §3.1.3).
_A_2_1_OUTBOUND_SUBSCRIBE: Final = _table(
    ("None", True, "None + Pending Out"),
    ("None + Pending Out", True, None),
    ("None + Pending In", True, "None + Pending Out+In"),
    ("None + Pending Out+In", True, None),
    ("To", True, None),
    ("To + Pending In", True, None),
    ("From", True, "From + Pending Out"),
    ("From + Pending Out", True, None),
    ("Both", True, None),
)

# A.2.2 Unsubscribe (client-generated outbound); routed in every state (§3.3.2).
_A_2_2_OUTBOUND_UNSUBSCRIBE: Final = _table(
    ("None", True, None),
    ("None + Pending Out", True, "None"),
    ("None + Pending In", True, None),
    ("None + Pending Out+In", True, "None + Pending In"),
    ("To", True, "None"),
    ("To + Pending In", True, "None + Pending In"),
    ("From", True, None),
    ("From + Pending Out", True, "From"),
    ("Both", True, "From"),
)

# A.2.3 Subscribed (client-generated outbound).  The three "pre-approval" rows of the RFC
# table are "None", "None + Pending Out" and "To": not routed (§3.4.2 step 3 "MUST NOT
# route"), and `apply` sets the approved flag.  "From"/"From + Pending Out"/"Both" are
# silently ignored (§3.4.2 step 1); the Pending In rows are a normal approval (§3.1.5).
_A_2_3_OUTBOUND_SUBSCRIBED: Final = _table(
    ("None", False, None),  # pre-approval
    ("None + Pending Out", False, None),  # pre-approval
    ("None + Pending In", True, "From"),
    ("None + Pending Out+In", True, "From + Pending Out"),
    ("To", False, None),  # pre-approval
    ("To + Pending In", True, "Both"),
    ("From", False, None),
    ("From + Pending Out", False, None),
    ("Both", False, None),
)

# A.2.4 Unsubscribed (client-generated outbound).  Footnote to the unrouted rows: "this event
# can result in cancellation of a subscription pre-approval" (§3.2.2 step 2), which `apply`
# does by clearing the approved flag.
_A_2_4_OUTBOUND_UNSUBSCRIBED: Final = _table(
    ("None", False, None),
    ("None + Pending Out", False, None),
    ("None + Pending In", True, "None"),
    ("None + Pending Out+In", True, "None + Pending Out"),
    ("To", False, None),
    ("To + Pending In", True, "To"),
    ("From", True, "None"),
    ("From + Pending Out", True, "None + Pending Out"),
    ("Both", True, "To"),
)

# A.3.1 Subscribe (server-processed inbound).  A repeated request while one is already pending
# is not delivered again (§3.1.3: the server keeps one request per contact).  The footnoted
# rows ("From", "From + Pending Out", "Both") auto-reply "subscribed" (§3.1.3 step 2); so do
# pre-approved items (§3.4), which `apply` moves to "From"/"From + Pending Out"/"Both".
_A_3_1_INBOUND_SUBSCRIBE: Final = _table(
    ("None", True, "None + Pending In"),
    ("None + Pending Out", True, "None + Pending Out+In"),
    ("None + Pending In", False, None),
    ("None + Pending Out+In", False, None),
    ("To", True, "To + Pending In"),
    ("To + Pending In", False, None),
    ("From", False, None),  # auto-reply "subscribed"
    ("From + Pending Out", False, None),  # auto-reply "subscribed"
    ("Both", False, None),  # auto-reply "subscribed"
)

# A.3.2 Unsubscribe (server-processed inbound), §3.3.3.  A withdrawn request that was still
# pending ("... + Pending In") is delivered too, so the user's client can drop it.
_A_3_2_INBOUND_UNSUBSCRIBE: Final = _table(
    ("None", False, None),
    ("None + Pending Out", False, None),
    ("None + Pending In", True, "None"),
    ("None + Pending Out+In", True, "None + Pending Out"),
    ("To", False, None),
    ("To + Pending In", True, "To"),
    ("From", True, "None"),
    ("From + Pending Out", True, "None + Pending Out"),
    ("Both", True, "To"),
)

# A.3.3 Subscribed (server-processed inbound): only an answer to a pending request counts;
# anything else is ignored, not delivered (§3.1.6).
_A_3_3_INBOUND_SUBSCRIBED: Final = _table(
    ("None", False, None),
    ("None + Pending Out", True, "To"),
    ("None + Pending In", False, None),
    ("None + Pending Out+In", True, "To + Pending In"),
    ("To", False, None),
    ("To + Pending In", False, None),
    ("From", False, None),
    ("From + Pending Out", True, "Both"),
    ("Both", False, None),
)

# A.3.4 Unsubscribed (server-processed inbound), §3.2.3: delivered only when it cancels the
# user's subscription or denies the user's pending request.
_A_3_4_INBOUND_UNSUBSCRIBED: Final = _table(
    ("None", False, None),
    ("None + Pending Out", True, "None"),
    ("None + Pending In", False, None),
    ("None + Pending Out+In", True, "None + Pending In"),
    ("To", True, "None"),
    ("To + Pending In", True, "None + Pending In"),
    ("From", False, None),
    ("From + Pending Out", True, "From"),
    ("Both", True, "From"),
)

_TABLES: Final[Mapping[tuple[Direction, str], _Table]] = {
    (Direction.OUTBOUND, "subscribe"): _A_2_1_OUTBOUND_SUBSCRIBE,
    (Direction.OUTBOUND, "unsubscribe"): _A_2_2_OUTBOUND_UNSUBSCRIBE,
    (Direction.OUTBOUND, "subscribed"): _A_2_3_OUTBOUND_SUBSCRIBED,
    (Direction.OUTBOUND, "unsubscribed"): _A_2_4_OUTBOUND_UNSUBSCRIBED,
    (Direction.INBOUND, "subscribe"): _A_3_1_INBOUND_SUBSCRIBE,
    (Direction.INBOUND, "unsubscribe"): _A_3_2_INBOUND_UNSUBSCRIBE,
    (Direction.INBOUND, "subscribed"): _A_3_3_INBOUND_SUBSCRIBED,
    (Direction.INBOUND, "unsubscribed"): _A_3_4_INBOUND_UNSUBSCRIBED,
}

# Granting the contact a subscription to the user's presence: none -> from, to -> both.
_GRANT_FROM: Final[Mapping[Subscription, Subscription]] = {
    Subscription.NONE: Subscription.FROM,
    Subscription.TO: Subscription.BOTH,
}


def _visible(state: State) -> tuple[Subscription, bool, bool]:
    """The parts of a state a roster item shows (and a roster push carries)."""
    return (state.subscription, state.pending_out, state.approved)


def apply(state: State, direction: Direction, type_: str) -> Outcome:
    """Process one subscription stanza of `type_` travelling in `direction`.

    Raises ValueError unless `type_` is one of `EVENT_TYPES` and `direction` a `Direction`.
    An inconsistent `state` is normalized first (see `State.normalized`); if that alters the
    roster item, `changed` is True so the corrected item gets stored and pushed.
    """
    table = _TABLES.get((direction, type_)) if isinstance(direction, Direction) else None
    if table is None:
        raise ValueError(f"not a subscription stanza: direction={direction!r} type={type_!r}")
    current = state.normalized()
    route, target = table[current.name]
    new = current if target is None else State.from_name(target, approved=current.approved)
    auto_reply: str | None = None

    if direction is Direction.INBOUND and type_ == "subscribe":
        if current.subscription in _FROM_SIDE:
            # A.3.1 footnote, §3.1.3 step 2: the contact is already subscribed; the server
            # answers for the user and does not bother the user's clients.
            auto_reply = "subscribed"
        elif current.approved:
            # §3.4 / §3.1.3: the user pre-approved this contact, so the server approves on
            # the user's behalf: "None" -> "From", "None + Pending Out" -> "From + Pending
            # Out", "To" -> "Both".  The pre-approval is used up, the request not delivered.
            new = State(_GRANT_FROM[current.subscription], current.pending_out)
            route = False
            auto_reply = "subscribed"
    elif direction is Direction.OUTBOUND and type_ == "subscribed":
        # §3.4.2 step 2: with a request pending ("... + Pending In") this is a normal
        # approval (§3.1.5), as the table says.  Step 3: in "None", "None + Pending Out" and
        # "To" it is a pre-approval: record it and push the item, but do not route the
        # stanza (the table says route=False).  Step 1: "From"/"Both" ignore it.
        if not current.pending_in and current.subscription not in _FROM_SIDE:
            new = replace(current, approved=True)
    elif direction is Direction.OUTBOUND and type_ == "unsubscribed" and current.approved:
        # A.2.4 footnote, §3.2.2: an "unsubscribed" to a pre-approved contact cancels the
        # pre-approval (and is not routed in those rows).
        new = replace(new, approved=False)

    return Outcome(
        state=new,
        changed=_visible(new) != _visible(state),
        route=route,
        auto_reply=auto_reply,
    )


def on_roster_remove(state: State) -> tuple[str, ...]:
    """Presence types to send to the contact when the user removes the roster item.

    RFC 6121 §2.5.2: "unsubscribe" if the user is subscribed to the contact, "unsubscribed"
    if the contact is subscribed to the user, both if mutual.  Like Prosody's mod_roster we
    also cancel a pending outbound request ("unsubscribe") and deny a pending inbound one
    ("unsubscribed"), so neither side is left waiting for an answer from a deleted item.  A
    pre-approval needs nothing: it lives only in the item being deleted.
    """
    types: list[str] = []
    if state.subscription in _TO_SIDE or state.pending_out:
        types.append("unsubscribe")
    if state.subscription in _FROM_SIDE or state.pending_in:
        types.append("unsubscribed")
    return tuple(types)
