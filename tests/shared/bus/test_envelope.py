"""The bus envelope and subjects: routing facts readable without XML."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.bus import subjects
from shared.bus.envelope import Envelope, EnvelopeError, Kind
from shared.xmpp.errors import StanzaErrorCondition

no_nul = st.text(alphabet=st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=40)


def test_envelope_round_trip_keeps_every_fact() -> None:
    env = Envelope(Kind.IQ, "a@b/c", "d@e/f", "get", "id\n1", "cm-1/s1", 2, b"<iq/>\x01")
    assert Envelope.decode(env.encode()) == env


@settings(max_examples=200, deadline=None)
@given(to=no_nul, from_=no_nul, type_=no_nul, id_=no_nul, payload=st.binary(max_size=200))
def test_envelope_round_trip_property(
    to: str, from_: str, type_: str, id_: str, payload: bytes
) -> None:
    env = Envelope(Kind.MESSAGE, to, from_, type_, id_, "o", 0, payload)
    assert Envelope.decode(env.encode()) == env


def test_payload_may_contain_the_separator() -> None:
    env = Envelope(Kind.MESSAGE, "a@b", "c@d", payload=b"x\x00y\x00z")
    assert Envelope.decode(env.encode()).payload == b"x\x00y\x00z"


@pytest.mark.parametrize(
    "data", [b"", b"2\x00message", b"1\x00nonsense\x00a\x00b\x00\x00\x00\x00\x000\x00", b"junk"]
)
def test_bad_envelopes_are_rejected(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.decode(data)


def test_forwarded_counts_hops_and_readdresses() -> None:
    env = Envelope(Kind.MESSAGE, "a@b", "c@d/r", hops=1)
    fwd = env.forwarded(to="a@b/x")
    assert (fwd.to, fwd.hops, fwd.from_) == ("a@b/x", 2, "c@d/r")


def test_partition_is_stable_and_in_range() -> None:
    values = {subjects.partition(f"user{i}@example.com", 16) for i in range(500)}
    assert values == set(range(16))
    assert subjects.partition("juliet@example.com", 64) == subjects.partition(
        "juliet@example.com", 64
    )


def test_subjects_are_built_in_one_place() -> None:
    assert subjects.route(3) == "stanzad.route.3"
    assert subjects.connection_manager("cm-1") == "stanzad.cm.cm-1"
    assert subjects.session_events(7) == "stanzad.sess.7"


def test_a_session_event_names_one_bare_jid_and_an_accounts_event_several() -> None:
    from shared.bus.envelope import accounts_event, session_event, session_event_jids

    one = Envelope.decode(session_event("a@b", 3).encode())
    assert session_event_jids(one) == ["a@b"]
    many = Envelope.decode(accounts_event(["a@b", "c@b", "d@b"]).encode())
    assert many.kind is Kind.SESSION
    assert session_event_jids(many) == ["a@b", "c@b", "d@b"]


def test_bare_and_domain_properties() -> None:
    env = Envelope(Kind.MESSAGE, "romeo@example.net/orchard", "example.com")
    assert (env.to_bare, env.to_domain) == ("romeo@example.net", "example.net")
    assert (env.from_bare, env.from_domain) == ("example.com", "example.com")


CHAT = b'<message xmlns="jabber:client" id="m1" type="chat"><body>hi</body></message>'


def test_bounce_goes_back_to_the_sender_as_an_error() -> None:
    # RFC 6120 §8.3: same kind and id, 'to' and 'from' swapped, the original children kept
    env = Envelope(Kind.MESSAGE, "romeo@example.net", "juliet@example.com/balcony", "chat",
                   "m1", "cm-1/s1", 1, CHAT, ts_us=7)
    bounce = env.bounce(StanzaErrorCondition.SERVICE_UNAVAILABLE, origin="router",
                        max_bytes=4096, text="gone")
    assert bounce is not None
    assert (bounce.kind, bounce.to, bounce.from_, bounce.type, bounce.id) == (
        Kind.MESSAGE, "juliet@example.com/balcony", "romeo@example.net", "error", "m1")
    assert (bounce.origin, bounce.hops, bounce.ts_us) == ("router", 2, 7)
    assert b">hi</body>" in bounce.payload
    assert b"<service-unavailable" in bounce.payload and b"gone" in bounce.payload


@pytest.mark.parametrize(
    ("type_", "from_", "hops", "payload"),
    [
        ("error", "juliet@example.com", 0, CHAT),  # §8.3.1: never an error for an error
        ("result", "juliet@example.com", 0, CHAT),
        ("chat", "", 0, CHAT),  # nobody to answer
        ("chat", "juliet@example.com", 4, CHAT),  # has crossed too many services
        ("chat", "juliet@example.com", 0, b"<message"),  # does not parse
        ("chat", "juliet@example.com", 0, CHAT + b" " * 5000),  # larger than max_bytes
    ],
)
def test_no_bounce(type_: str, from_: str, hops: int, payload: bytes) -> None:
    env = Envelope(Kind.MESSAGE, "romeo@example.net", from_, type_, "m1", "x", hops, payload)
    assert env.bounce(StanzaErrorCondition.SERVICE_UNAVAILABLE, origin="r", max_bytes=4096) is None


def test_forwarded_and_with_payload_are_replace_built_faster() -> None:
    env = Envelope(Kind.MESSAGE, to="a@x/r", from_="b@x/s", type="chat", id="1",
                   origin="cm-1/s1", hops=2, payload=b"<message/>", ts_us=42)
    assert env.forwarded() == env._replace(hops=3)
    assert env.forwarded("c@x/t") == env._replace(to="c@x/t", hops=3)
    assert env.with_payload(b"<m/>") == env._replace(payload=b"<m/>")
    for made in (env.forwarded(), env.with_payload(b""), Envelope.decode(env.encode())):
        assert type(made) is Envelope
    assert Envelope.decode(env.encode()) == env
