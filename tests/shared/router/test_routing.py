"""RFC 6121 §8.5 delivery rules, as the router's pure decision function."""

from __future__ import annotations

from shared.bus.envelope import Kind
from shared.router.routing import Account, Bounce, Deliver, Ignore, Store, decide
from shared.store.sessions import SessionRecord
from shared.xmpp.errors import StanzaErrorCondition

UNAVAILABLE = Bounce(StanzaErrorCondition.SERVICE_UNAVAILABLE)


def rec(cm: str, priority: int = 0, available: bool = True) -> SessionRecord:
    return SessionRecord(cm, "s", priority, available)


def test_rfc6121_8_5_1_missing_account() -> None:
    assert decide(Kind.MESSAGE, "chat", "x@d", False, {}) == UNAVAILABLE
    assert decide(Kind.IQ, "get", "x@d/r", False, {}) == UNAVAILABLE
    assert isinstance(decide(Kind.PRESENCE, "", "x@d", False, {}), Ignore)
    assert isinstance(decide(Kind.MESSAGE, "error", "x@d", False, {}), Ignore)


def test_rfc6121_8_5_2_1_1_chat_to_bare_goes_to_highest_priority() -> None:
    sessions = {"a": rec("cm1", 1), "b": rec("cm2", 5), "c": rec("cm3", 5)}
    decision = decide(Kind.MESSAGE, "chat", "u@d", True, sessions)
    assert decision == Deliver((("u@d/b", "cm2"), ("u@d/c", "cm3")))


def test_rfc6121_8_5_2_1_1_negative_priority_never_gets_bare_messages() -> None:
    sessions = {"a": rec("cm1", -1)}
    assert decide(Kind.MESSAGE, "normal", "u@d", True, sessions) == Store()


def test_rfc6121_8_5_2_1_1_headline_to_every_available_resource() -> None:
    sessions = {"a": rec("cm1", 1), "b": rec("cm2", 0), "c": rec("cm3", 0, available=False)}
    decision = decide(Kind.MESSAGE, "headline", "u@d", True, sessions)
    assert decision == Deliver((("u@d/a", "cm1"), ("u@d/b", "cm2")))


def test_rfc6121_8_5_2_2_1_no_available_resource() -> None:
    sessions = {"a": rec("cm1", 0, available=False)}
    assert decide(Kind.MESSAGE, "chat", "u@d", True, sessions) == Store()
    assert isinstance(decide(Kind.MESSAGE, "headline", "u@d", True, sessions), Ignore)
    assert decide(Kind.MESSAGE, "groupchat", "u@d", True, {}) == UNAVAILABLE


def test_rfc6121_8_5_3_1_full_jid_is_delivered_even_if_not_available() -> None:
    sessions = {"a": rec("cm1", -5, available=False)}
    assert decide(Kind.IQ, "get", "u@d/a", True, sessions) == Deliver((("u@d/a", "cm1"),))


def test_rfc6121_8_5_3_2_1_message_to_missing_resource_falls_back_to_bare() -> None:
    sessions = {"a": rec("cm1", 0)}
    assert decide(Kind.MESSAGE, "chat", "u@d/gone", True, sessions) == Deliver(
        (("u@d/a", "cm1"),)
    )


def test_rfc6121_8_5_3_2_iq_and_presence_to_missing_resource() -> None:
    assert decide(Kind.IQ, "set", "u@d/gone", True, {}) == UNAVAILABLE
    assert isinstance(decide(Kind.IQ, "result", "u@d/gone", True, {}), Ignore)
    assert isinstance(decide(Kind.PRESENCE, "", "u@d/gone", True, {}), Ignore)


def test_rfc6121_8_5_2_1_3_iq_to_bare_jid_is_answered_for_the_account() -> None:
    assert decide(Kind.IQ, "get", "u@d", True, {"a": rec("cm1")}) == Account()
    assert decide(Kind.IQ, "set", "u@d", True, {}) == Account()


def test_the_router_reads_the_namespace_of_an_account_iq() -> None:
    # what picks the roster or the pubsub partition for an Account decision
    from shared.router.service import _child_ns

    pubsub = (b'<iq xmlns="jabber:client" type="get" id="1">'
              b'<pubsub xmlns="http://jabber.org/protocol/pubsub"><items node="n"/></pubsub></iq>')
    assert _child_ns(pubsub) == "http://jabber.org/protocol/pubsub"
    assert _child_ns(b'<iq xmlns="jabber:client" type="get" id="1"/>') == ""
    assert _child_ns(b"<iq") == ""
