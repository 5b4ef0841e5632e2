"""The RFC 6121 presence subscription state machine (Appendix A, §3)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.xmpp.subscription import (
    A1_STATE_NAMES,
    EVENT_TYPES,
    Direction,
    Outcome,
    State,
    Subscription,
    apply,
    on_roster_remove,
)

OUT = Direction.OUTBOUND
IN = Direction.INBOUND

# The nine Appendix A.1 states, built by hand (not via State.from_name) so the tables below
# also check the names.
NONE = State()
NONE_PO = State(pending_out=True)
NONE_PI = State(pending_in=True)
NONE_POI = State(pending_out=True, pending_in=True)
TO = State(Subscription.TO)
TO_PI = State(Subscription.TO, pending_in=True)
FROM = State(Subscription.FROM)
FROM_PO = State(Subscription.FROM, pending_out=True)
BOTH = State(Subscription.BOTH)
ALL_STATES = (NONE, NONE_PO, NONE_PI, NONE_POI, TO, TO_PI, FROM, FROM_PO, BOTH)
A1_NAMES = {
    NONE: "None",
    NONE_PO: "None + Pending Out",
    NONE_PI: "None + Pending In",
    NONE_POI: "None + Pending Out+In",
    TO: "To",
    TO_PI: "To + Pending In",
    FROM: "From",
    FROM_PO: "From + Pending Out",
    BOTH: "Both",
}

Row = tuple[State, State, bool, str | None]  # (start, expected, route, auto_reply)


def _rows(*rows: Row) -> list[object]:
    assert [r[0] for r in rows] == list(ALL_STATES), "one row per A.1 state, in RFC order"
    return [pytest.param(*r, id=A1_NAMES[r[0]]) for r in rows]


def _visible(s: State) -> tuple[Subscription, bool, bool]:
    return (s.subscription, s.pending_out, s.approved)


def _check(
    direction: Direction,
    type_: str,
    start: State,
    expected: State,
    route: bool,
    auto_reply: str | None,
) -> None:
    outcome = apply(start, direction, type_)
    assert outcome == Outcome(
        state=expected,
        changed=_visible(expected) != _visible(start),
        route=route,
        auto_reply=auto_reply,
    )


# --- Appendix A.1 ------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ALL_STATES, ids=A1_NAMES.get)
def test_rfc6121_a_1_state_names(state: State) -> None:
    assert state.name == A1_NAMES[state]
    assert State.from_name(state.name) == state
    assert state.is_valid
    assert state.normalized() is state
    assert state.ask == ("subscribe" if state.pending_out else None)


def test_rfc6121_a_1_exactly_nine_states_in_rfc_order() -> None:
    assert tuple(A1_NAMES.values()) == A1_STATE_NAMES


def test_from_name_accepts_rfc3921_spelling_and_rejects_unknown() -> None:
    assert State.from_name("None + Pending Out/In") == NONE_POI
    assert State.from_name("To", approved=True) == State(Subscription.TO, approved=True)
    with pytest.raises(ValueError):
        State.from_name("Both + Pending In")


# --- Appendix A.2: client-generated outbound ---------------------------------------------------


@pytest.mark.parametrize(
    ("start", "expected", "route", "auto_reply"),
    _rows(
        # §3.1.2: the user's server routes every outbound subscribe, even without a change.
        (NONE, NONE_PO, True, None),
        (NONE_PO, NONE_PO, True, None),
        (NONE_PI, NONE_POI, True, None),
        (NONE_POI, NONE_POI, True, None),
        (TO, TO, True, None),
        (TO_PI, TO_PI, True, None),
        (FROM, FROM_PO, True, None),
        (FROM_PO, FROM_PO, True, None),
        (BOTH, BOTH, True, None),
    ),
)
def test_rfc6121_a_2_1_outbound_subscribe(
    start: State, expected: State, route: bool, auto_reply: str | None
) -> None:
    _check(OUT, "subscribe", start, expected, route, auto_reply)


@pytest.mark.parametrize(
    ("start", "expected", "route", "auto_reply"),
    _rows(
        # §3.3.2: routed in every state.
        (NONE, NONE, True, None),
        (NONE_PO, NONE, True, None),
        (NONE_PI, NONE_PI, True, None),
        (NONE_POI, NONE_PI, True, None),
        (TO, NONE, True, None),
        (TO_PI, NONE_PI, True, None),
        (FROM, FROM, True, None),
        (FROM_PO, FROM, True, None),
        (BOTH, FROM, True, None),
    ),
)
def test_rfc6121_a_2_2_outbound_unsubscribe(
    start: State, expected: State, route: bool, auto_reply: str | None
) -> None:
    _check(OUT, "unsubscribe", start, expected, route, auto_reply)


@pytest.mark.parametrize(
    ("start", "expected", "route", "auto_reply"),
    _rows(
        # "pre-approval" rows (§3.4.2 step 3): recorded, pushed, not routed.
        (NONE, State(approved=True), False, None),
        (NONE_PO, State(pending_out=True, approved=True), False, None),
        # normal approval (§3.1.5, §3.4.2 step 2)
        (NONE_PI, FROM, True, None),
        (NONE_POI, FROM_PO, True, None),
        (TO, State(Subscription.TO, approved=True), False, None),
        (TO_PI, BOTH, True, None),
        # silently ignored (§3.4.2 step 1)
        (FROM, FROM, False, None),
        (FROM_PO, FROM_PO, False, None),
        (BOTH, BOTH, False, None),
    ),
)
def test_rfc6121_a_2_3_outbound_subscribed(
    start: State, expected: State, route: bool, auto_reply: str | None
) -> None:
    _check(OUT, "subscribed", start, expected, route, auto_reply)


@pytest.mark.parametrize(
    ("start", "expected", "route", "auto_reply"),
    _rows(
        (NONE, NONE, False, None),
        (NONE_PO, NONE_PO, False, None),
        (NONE_PI, NONE, True, None),
        (NONE_POI, NONE_PO, True, None),
        (TO, TO, False, None),
        (TO_PI, TO, True, None),
        (FROM, NONE, True, None),
        (FROM_PO, NONE_PO, True, None),
        (BOTH, TO, True, None),
    ),
)
def test_rfc6121_a_2_4_outbound_unsubscribed(
    start: State, expected: State, route: bool, auto_reply: str | None
) -> None:
    _check(OUT, "unsubscribed", start, expected, route, auto_reply)


# --- Appendix A.3: server-processed inbound ----------------------------------------------------


@pytest.mark.parametrize(
    ("start", "expected", "route", "auto_reply"),
    _rows(
        (NONE, NONE_PI, True, None),
        (NONE_PO, NONE_POI, True, None),
        # a request is already pending: no duplicate delivery
        (NONE_PI, NONE_PI, False, None),
        (NONE_POI, NONE_POI, False, None),
        (TO, TO_PI, True, None),
        (TO_PI, TO_PI, False, None),
        # already subscribed: the server auto-replies (§3.1.3 step 2)
        (FROM, FROM, False, "subscribed"),
        (FROM_PO, FROM_PO, False, "subscribed"),
        (BOTH, BOTH, False, "subscribed"),
    ),
)
def test_rfc6121_a_3_1_inbound_subscribe(
    start: State, expected: State, route: bool, auto_reply: str | None
) -> None:
    _check(IN, "subscribe", start, expected, route, auto_reply)


@pytest.mark.parametrize(
    ("start", "expected", "route", "auto_reply"),
    _rows(
        (NONE, NONE, False, None),
        (NONE_PO, NONE_PO, False, None),
        (NONE_PI, NONE, True, None),
        (NONE_POI, NONE_PO, True, None),
        (TO, TO, False, None),
        (TO_PI, TO, True, None),
        (FROM, NONE, True, None),
        (FROM_PO, NONE_PO, True, None),
        (BOTH, TO, True, None),
    ),
)
def test_rfc6121_a_3_2_inbound_unsubscribe(
    start: State, expected: State, route: bool, auto_reply: str | None
) -> None:
    _check(IN, "unsubscribe", start, expected, route, auto_reply)


@pytest.mark.parametrize(
    ("start", "expected", "route", "auto_reply"),
    _rows(
        # §3.1.6: ignored unless the user has a request pending out
        (NONE, NONE, False, None),
        (NONE_PO, TO, True, None),
        (NONE_PI, NONE_PI, False, None),
        (NONE_POI, TO_PI, True, None),
        (TO, TO, False, None),
        (TO_PI, TO_PI, False, None),
        (FROM, FROM, False, None),
        (FROM_PO, BOTH, True, None),
        (BOTH, BOTH, False, None),
    ),
)
def test_rfc6121_a_3_3_inbound_subscribed(
    start: State, expected: State, route: bool, auto_reply: str | None
) -> None:
    _check(IN, "subscribed", start, expected, route, auto_reply)


@pytest.mark.parametrize(
    ("start", "expected", "route", "auto_reply"),
    _rows(
        (NONE, NONE, False, None),
        (NONE_PO, NONE, True, None),
        (NONE_PI, NONE_PI, False, None),
        (NONE_POI, NONE_PI, True, None),
        (TO, NONE, True, None),
        (TO_PI, NONE_PI, True, None),
        (FROM, FROM, False, None),
        (FROM_PO, FROM, True, None),
        (BOTH, FROM, True, None),
    ),
)
def test_rfc6121_a_3_4_inbound_unsubscribed(
    start: State, expected: State, route: bool, auto_reply: str | None
) -> None:
    _check(IN, "unsubscribed", start, expected, route, auto_reply)


def test_pending_in_alone_is_not_a_roster_change() -> None:
    """§3.1.3: a pending inbound request is not shown in the roster item, so not pushed."""
    outcome = apply(NONE, IN, "subscribe")
    assert outcome.state == NONE_PI and outcome.route and not outcome.changed
    outcome = apply(NONE_PI, OUT, "unsubscribed")
    assert outcome.state == NONE and outcome.route and not outcome.changed


# --- §3.4 pre-approval -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        pytest.param(NONE, FROM, id="None"),
        pytest.param(NONE_PO, FROM_PO, id="None + Pending Out"),
        pytest.param(TO, BOTH, id="To"),
    ],
)
def test_rfc6121_3_4_preapproved_inbound_subscribe_is_auto_approved(
    start: State, expected: State
) -> None:
    preapproved = apply(start, OUT, "subscribed")
    assert preapproved == Outcome(
        state=State(start.subscription, start.pending_out, approved=True),
        changed=True,
        route=False,
        auto_reply=None,
    )
    outcome = apply(preapproved.state, IN, "subscribe")
    assert outcome == Outcome(state=expected, changed=True, route=False, auto_reply="subscribed")
    assert not outcome.state.approved


@pytest.mark.parametrize("start", [NONE, NONE_PO, TO], ids=A1_NAMES.get)
def test_rfc6121_3_4_repeated_preapproval_is_not_a_change(start: State) -> None:
    approved = State(start.subscription, start.pending_out, approved=True)
    assert apply(approved, OUT, "subscribed") == Outcome(
        state=approved, changed=False, route=False, auto_reply=None
    )


@pytest.mark.parametrize("start", [NONE, NONE_PO, TO], ids=A1_NAMES.get)
def test_rfc6121_3_2_2_outbound_unsubscribed_cancels_preapproval(start: State) -> None:
    approved = State(start.subscription, start.pending_out, approved=True)
    assert apply(approved, OUT, "unsubscribed") == Outcome(
        state=start, changed=True, route=False, auto_reply=None
    )


def test_rfc6121_3_4_preapproval_survives_unrelated_events() -> None:
    approved = State(approved=True)
    state = apply(approved, OUT, "subscribe").state
    assert state == State(pending_out=True, approved=True)
    state = apply(state, IN, "subscribed").state
    assert state == State(Subscription.TO, approved=True)
    state = apply(state, OUT, "unsubscribe").state
    assert state == approved
    # the contact's later request is approved on the user's behalf
    outcome = apply(state, IN, "subscribe")
    assert outcome.state == FROM and outcome.auto_reply == "subscribed" and not outcome.route


def test_rfc6121_3_4_2_preapproval_then_pending_request_is_normal_approval() -> None:
    outcome = apply(NONE_PI, OUT, "subscribed")
    assert outcome.state == FROM and outcome.route and not outcome.state.approved


# --- §2.5.2 roster remove ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        pytest.param(NONE, (), id="None"),
        pytest.param(NONE_PO, ("unsubscribe",), id="None + Pending Out"),
        pytest.param(NONE_PI, ("unsubscribed",), id="None + Pending In"),
        pytest.param(NONE_POI, ("unsubscribe", "unsubscribed"), id="None + Pending Out+In"),
        pytest.param(TO, ("unsubscribe",), id="To"),
        pytest.param(TO_PI, ("unsubscribe", "unsubscribed"), id="To + Pending In"),
        pytest.param(FROM, ("unsubscribed",), id="From"),
        pytest.param(FROM_PO, ("unsubscribe", "unsubscribed"), id="From + Pending Out"),
        pytest.param(BOTH, ("unsubscribe", "unsubscribed"), id="Both"),
        pytest.param(State(approved=True), (), id="None, pre-approved"),
        pytest.param(
            State(Subscription.TO, approved=True), ("unsubscribe",), id="To, pre-approved"
        ),
    ],
)
def test_rfc6121_2_5_2_roster_remove(state: State, expected: tuple[str, ...]) -> None:
    assert on_roster_remove(state) == expected


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("type_", ["", "probe", "available", "unavailable", "error", "Subscribe"])
@pytest.mark.parametrize("direction", [OUT, IN])
def test_non_subscription_types_are_rejected(direction: Direction, type_: str) -> None:
    with pytest.raises(ValueError):
        apply(NONE, direction, type_)


def test_bad_direction_is_rejected() -> None:
    with pytest.raises(ValueError):
        apply(NONE, "inbound", "subscribe")  # type: ignore[arg-type]


def test_inconsistent_stored_state_is_normalized_and_pushed() -> None:
    """An item with ask='subscribe' and subscription='both' cannot be: fix it, push it."""
    broken = State(Subscription.BOTH, pending_out=True, pending_in=True, approved=True)
    assert not broken.is_valid
    assert broken.normalized() == BOTH
    assert broken.name == "Both"
    outcome = apply(broken, IN, "subscribed")
    assert outcome == Outcome(state=BOTH, changed=True, route=False, auto_reply=None)


# --- properties --------------------------------------------------------------------------------

events = st.tuples(st.sampled_from(list(Direction)), st.sampled_from(EVENT_TYPES))
any_state = st.builds(
    State,
    st.sampled_from(list(Subscription)),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


def _assert_invariants(s: State) -> None:
    assert not (s.pending_in and s.subscription in (Subscription.FROM, Subscription.BOTH))
    assert not (s.pending_out and s.subscription in (Subscription.TO, Subscription.BOTH))
    # a pre-approval is only held where §3.4.2 step 3 records it
    assert not s.approved or s.name in ("None", "None + Pending Out", "To")
    assert s.is_valid
    assert s.name in A1_STATE_NAMES


@given(st.lists(events, max_size=40))
def test_reachable_states_keep_invariants(sequence: list[tuple[Direction, str]]) -> None:
    state = State()
    for direction, type_ in sequence:
        outcome = apply(state, direction, type_)
        _assert_invariants(outcome.state)
        assert outcome.changed == (_visible(outcome.state) != _visible(state))
        if outcome.auto_reply is not None:
            assert (direction, type_, outcome.auto_reply) == (IN, "subscribe", "subscribed")
            assert not outcome.route
        state = outcome.state


@given(any_state, events)
def test_any_stored_state_gives_a_valid_result(state: State, event: tuple[Direction, str]) -> None:
    assert state.is_valid == (state.normalized() == state)
    outcome = apply(state, *event)
    _assert_invariants(outcome.state)
    assert outcome.changed == (_visible(outcome.state) != _visible(state))


@dataclass
class _Pair:
    """Two servers, each holding one side of a user<->contact relationship."""

    states: list[State]

    def send(self, sender: int, type_: str) -> None:
        """`sender`'s client sends `type_`; every resulting stanza is delivered at once."""
        receiver = 1 - sender
        out = apply(self.states[sender], OUT, type_)
        self.states[sender] = out.state
        if not out.route:
            return
        inbound = apply(self.states[receiver], IN, type_)
        self.states[receiver] = inbound.state
        if inbound.auto_reply is not None:
            # the receiver's server answers on its user's behalf; that stanza only arrives
            reply = apply(self.states[sender], IN, inbound.auto_reply)
            self.states[sender] = reply.state


@given(st.lists(st.tuples(st.sampled_from([0, 1]), st.sampled_from(EVENT_TYPES)), max_size=40))
def test_two_servers_stay_in_agreement(sequence: list[tuple[int, str]]) -> None:
    """With lossless delivery, one side's 'to'/Pending Out mirrors the other's 'from'/Pending In."""
    pair = _Pair([State(), State()])
    for sender, type_ in sequence:
        pair.send(sender, type_)
        for me, peer in (pair.states, pair.states[::-1]):
            assert (me.subscription in (Subscription.TO, Subscription.BOTH)) == (
                peer.subscription in (Subscription.FROM, Subscription.BOTH)
            )
            assert me.pending_out == peer.pending_in


def test_two_servers_preapproval_handshake() -> None:
    """§3.4: the contact pre-approves, the user subscribes, and it completes in one round trip."""
    pair = _Pair([State(), State()])
    pair.send(1, "subscribed")  # the contact pre-approves the user
    assert pair.states == [State(), State(approved=True)]
    pair.send(0, "subscribe")
    assert pair.states == [TO, FROM]
