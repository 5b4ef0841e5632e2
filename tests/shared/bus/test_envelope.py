"""The bus envelope and subjects: routing facts readable without XML."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.bus import subjects
from shared.bus.envelope import Envelope, EnvelopeError, Kind

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
