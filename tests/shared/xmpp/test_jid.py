"""JIDs (RFC 7622): parsing, PRECIS/IDNA preparation, canonical form, NATS tokens."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.xmpp.jid import (
    JID,
    MAX_PART_OCTETS,
    JIDError,
    jid_to_token,
    parse_jid,
    token_to_jid,
)

TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
SIGMA = "\N{GREEK SMALL LETTER SIGMA}"  # escaped: ruff flags it as confusable with "o"


def fullwidth(ascii_text: str) -> str:
    """The FULLWIDTH forms (U+FF01..U+FF5E) of printable ASCII characters."""
    return "".join(chr(ord(c) + 0xFEE0) for c in ascii_text)


# --- RFC 7622 §3.5.1: valid JIDs ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "local", "domain", "resource"),
    [
        ("juliet@example.com", "juliet", "example.com", None),
        ("juliet@example.com/foo", "juliet", "example.com", "foo"),
        ("juliet@example.com/foo bar", "juliet", "example.com", "foo bar"),
        ("juliet@example.com/foo@bar", "juliet", "example.com", "foo@bar"),
        ("foo\\20bar@example.com", "foo\\20bar", "example.com", None),
        ("fussball@example.com", "fussball", "example.com", None),
        ("fußball@example.com", "fußball", "example.com", None),
        ("π@example.com", "π", "example.com", None),
        ("Σ@example.com/foo", SIGMA, "example.com", "foo"),
        (f"{SIGMA}@example.com/foo", SIGMA, "example.com", "foo"),
        ("ς@example.com/foo", "ς", "example.com", "foo"),
        ("king@example.com/♔", "king", "example.com", "♔"),
        ("example.com", None, "example.com", None),
        ("example.com/foobar", None, "example.com", "foobar"),
        ("a.example.com/b@example.net", None, "a.example.com", "b@example.net"),
    ],
)
def test_rfc7622_3_5_1_valid_examples(
    text: str, local: str | None, domain: str, resource: str | None
) -> None:
    jid = JID.parse(text)
    assert jid == JID(local, domain, resource)
    assert JID.parse(str(jid)) == jid  # the canonical form is a fixed point


def test_rfc7622_3_5_1_canonical_string() -> None:
    assert str(JID.parse("Σ@example.com/foo")) == f"{SIGMA}@example.com/foo"
    assert str(JID.parse("JULIET@EXAMPLE.COM")) == "juliet@example.com"
    assert str(JID.parse("example.com/foobar")) == "example.com/foobar"


# --- RFC 7622 §3.5.2 and others: invalid JIDs ----------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '"juliet"@example.com',  # §3.3.1: forbidden characters
        "foo bar@example.com",  # §3.3: spaces are not allowed in a localpart
        "henryⅣ@example.com",  # §3.3: compatibility character (ROMAN NUMERAL FOUR)
        "♚@example.com",  # §3.3: symbols are not allowed in a localpart
        "juliet@",  # §3.2: empty domainpart
        "/foobar",  # §3.2: empty domainpart
    ],
)
def test_rfc7622_3_5_2_invalid_examples(text: str) -> None:
    with pytest.raises(JIDError):
        JID.parse(text)


@pytest.mark.parametrize(
    "text",
    ["", "@example.com", "@example.com/", "juliet@example.com/", "example.com/", "juliet@/foo"],
)
def test_rfc7622_3_1_empty_parts_are_invalid(text: str) -> None:
    with pytest.raises(JIDError):
        parse_jid(text)


def test_rfc7622_3_1_error_is_jid_malformed() -> None:
    with pytest.raises(JIDError) as info:
        parse_jid("juliet@example.com/")
    err = info.value
    assert isinstance(err, ValueError)
    assert err.condition == "jid-malformed"
    assert "resourcepart" in str(err)


# --- RFC 7622 §3.1: splitting ---------------------------------------------------------------


def test_rfc7622_3_1_resource_is_everything_after_first_slash() -> None:
    jid = parse_jid("juliet@example.com/a/b@c/d")
    assert jid == JID("juliet", "example.com", "a/b@c/d")


def test_rfc7622_3_1_at_after_slash_belongs_to_resource() -> None:
    assert parse_jid("example.com/juliet@example.net") == JID(
        None, "example.com", "juliet@example.net"
    )


def test_rfc7622_3_1_second_at_lands_in_domainpart() -> None:
    with pytest.raises(JIDError, match="domainpart"):
        parse_jid("a@b@example.com")


# --- RFC 7622 §3.2: domainpart --------------------------------------------------------------


def test_rfc7622_3_2_domain_is_lowercased() -> None:
    assert parse_jid("juliet@EXAMPLE.Com").domain == "example.com"


def test_rfc7622_3_2_trailing_dot_is_stripped() -> None:
    assert parse_jid("juliet@example.com./foo") == JID("juliet", "example.com", "foo")
    assert parse_jid("example.com。").domain == "example.com"  # ideographic full stop
    with pytest.raises(JIDError):
        parse_jid("juliet@example.com..")
    with pytest.raises(JIDError):
        parse_jid(".")


def test_rfc7622_3_2_idn_becomes_u_labels() -> None:
    assert parse_jid("juliet@xn--bcher-kva.example").domain == "bücher.example"
    assert parse_jid("juliet@Bücher.Example").domain == "bücher.example"
    assert parse_jid(fullwidth("example") + ".com").domain == "example.com"  # UTS 46 width mapping
    assert parse_jid("faß.de").domain == "faß.de"  # IDNA2008, not transitional


def test_rfc7622_3_2_ip_literals() -> None:
    assert parse_jid("juliet@[::1]") == JID("juliet", "[::1]", None)
    assert parse_jid("juliet@[2001:db8::1]/r").domain == "[2001:db8::1]"
    assert parse_jid("juliet@127.0.0.1") == JID("juliet", "127.0.0.1", None)
    assert parse_jid("127.0.0.1.").domain == "127.0.0.1"


@pytest.mark.parametrize(
    "domain",
    ["[::1", "[]", "[1.2.3.4]", "[::g]", "[fe80::1%eth0]", "::1", "1.2.3", "256.1.1.1"],
)
def test_rfc7622_3_2_bad_ip_literals(domain: str) -> None:
    with pytest.raises(JIDError):
        parse_jid(f"juliet@{domain}")


@pytest.mark.parametrize(
    "domain",
    [
        "a" * 64 + ".example.com",  # label over 63 octets
        "-example.com",
        "example-.com",
        "ab--cd.example",  # hyphens in positions 3 and 4
        "xn--zz.example",  # not a valid A-label
        "exa_mple.com",
        "exa mple.com",
        fullwidth("ex/ample") + ".com",  # FULLWIDTH SOLIDUS maps to "/"
        ".".join(["a" * 63] * 4),  # 255 octets: over the DNS limit
    ],
)
def test_rfc7622_3_2_invalid_domains(domain: str) -> None:
    with pytest.raises(JIDError, match="domainpart"):
        parse_jid(f"juliet@{domain}")


def test_rfc7622_3_2_longest_label_is_accepted() -> None:
    domain = "a" * 63 + ".example.com"
    assert parse_jid(domain).domain == domain


# --- RFC 7622 §3.3: localpart ---------------------------------------------------------------


def test_rfc7622_3_3_localpart_is_case_mapped() -> None:
    assert parse_jid("JULIET@EXAMPLE.COM") == JID("juliet", "example.com", None)


@pytest.mark.parametrize("char", list("\"&':<>"))
def test_rfc7622_3_3_1_forbidden_characters(char: str) -> None:
    # ("/" and "@" cannot reach the localpart: §3.1 splits the string on them.)
    with pytest.raises(JIDError, match="forbidden"):
        parse_jid(f"jul{char}iet@example.com")


@pytest.mark.parametrize("char", list(fullwidth("\"&'/:<>@")))
def test_rfc7622_3_3_1_forbidden_characters_after_width_mapping(char: str) -> None:
    # Fullwidth forms (e.g. U+FF20 FULLWIDTH COMMERCIAL AT) become "\"&'/:<>@" under the
    # UsernameCaseMapped width mapping: the check applies to the prepared localpart.
    with pytest.raises(JIDError, match="forbidden"):
        parse_jid(f"jul{char}iet@example.com")


def test_rfc7622_3_3_1_localpart_length() -> None:
    assert parse_jid("a" * MAX_PART_OCTETS + "@example.com").local == "a" * MAX_PART_OCTETS
    with pytest.raises(JIDError, match="1024 octets"):
        parse_jid("a" * (MAX_PART_OCTETS + 1) + "@example.com")
    # octets, not characters: 512 two-octet characters are 1024 octets
    with pytest.raises(JIDError, match="octets"):
        parse_jid("é" * 512 + "@example.com")


# --- RFC 7622 §3.4: resourcepart ------------------------------------------------------------


def test_rfc7622_3_4_resource_case_and_spaces_preserved() -> None:
    assert parse_jid("juliet@example.com/Balcony Phone").resource == "Balcony Phone"


def test_rfc7622_3_4_resource_length() -> None:
    ok = "r" * MAX_PART_OCTETS
    assert parse_jid(f"juliet@example.com/{ok}").resource == ok
    with pytest.raises(JIDError, match="octets"):
        parse_jid(f"juliet@example.com/{ok}r")


@pytest.mark.parametrize("control", ["\x00", "\x07", "\x1b", "\x7f", "\u0085"])
def test_rfc7622_3_4_control_characters_in_resource(control: str) -> None:
    with pytest.raises(JIDError, match="resourcepart"):
        parse_jid(f"juliet@example.com/foo{control}bar")


def test_rfc7622_3_4_huge_input_rejected_cheaply() -> None:
    with pytest.raises(JIDError, match="too long"):
        parse_jid("juliet@example.com/" + "x" * 1_000_000)


# --- The JID API ----------------------------------------------------------------------------


def test_bare_and_full() -> None:
    full = parse_jid("juliet@example.com/balcony")
    assert not full.is_bare
    assert full.bare == JID("juliet", "example.com", None)
    assert full.bare.is_bare
    assert full.bare_str == "juliet@example.com" == str(full.bare)
    assert str(full) == "juliet@example.com/balcony"
    bare = parse_jid("example.com")
    assert bare.bare is bare
    assert bare.bare_str == "example.com"


def test_with_resource_prepares_the_resource() -> None:
    bare = parse_jid("juliet@example.com")
    assert bare.with_resource("Balcony") == JID("juliet", "example.com", "Balcony")
    # OpaqueString maps non-ASCII spaces to U+0020
    assert bare.with_resource("a\u00a0b").resource == "a b"
    with pytest.raises(JIDError):
        bare.with_resource("")
    with pytest.raises(JIDError):
        bare.with_resource("a\x00b")


def test_jids_are_hashable_and_immutable() -> None:
    jid = parse_jid("juliet@example.com/foo")
    assert {jid, parse_jid("JULIET@example.com/foo")} == {jid}
    with pytest.raises(AttributeError):
        jid.local = "romeo"  # type: ignore[misc]


def test_parse_is_cached() -> None:
    parse_jid.cache_clear()
    first = JID.parse("romeo@example.net/orchard")
    assert parse_jid("romeo@example.net/orchard") is first
    assert parse_jid.cache_info().hits == 1
    assert parse_jid.cache_info().maxsize == 65536


# --- NATS subject tokens --------------------------------------------------------------------


def test_token_keeps_ascii_letters_and_digits() -> None:
    assert jid_to_token("juliet@example.com") == "juliet_40example_2ecom"
    assert jid_to_token(parse_jid("Juliet2@Example.COM")) == "juliet2_40example_2ecom"
    assert jid_to_token("my-host") == "my-host"


def test_token_injective_on_tricky_pairs() -> None:
    texts = ["a_b", "a.b", "a_5fb", "a_2eb", "a-b", "a_2db", "a/b", "ab", "a__b", "A_b"]
    tokens = [jid_to_token(t) for t in texts]
    assert len(set(tokens)) == len(texts)
    assert jid_to_token("a_b") == "a_5fb"
    assert jid_to_token("a_5fb") == "a_5f5fb"


def test_token_non_ascii_jid() -> None:
    jid = parse_jid("fußball@bücher.example/♔")
    token = jid_to_token(jid)
    assert TOKEN.match(token)
    assert token == "fu_c3_9fball_40b_c3_bccher_2eexample_2f_e2_99_94"
    assert token_to_jid(token) == str(jid)
    assert parse_jid(token_to_jid(token)) == jid


@pytest.mark.parametrize(
    "text", ["juliet@example.com", "juliet@[::1]", f"{SIGMA}@example.com/foo bar", "_", "-", "\x00"]
)
def test_token_alphabet_and_round_trip(text: str) -> None:
    token = jid_to_token(text)
    assert TOKEN.match(token)
    assert token_to_jid(token) == text


@given(st.text(min_size=1))
def test_token_round_trip_property(text: str) -> None:
    token = jid_to_token(text)
    assert TOKEN.match(token)
    assert token_to_jid(token) == text


@given(st.text(min_size=1), st.text(min_size=1))
def test_token_injective_property(a: str, b: str) -> None:
    assert (jid_to_token(a) == jid_to_token(b)) == (a == b)


@pytest.mark.parametrize("token", ["", "a.b", "a_", "a_5", "a_5F", "a_61", "_ff", "_c3", "a b"])
def test_token_to_jid_rejects_non_tokens(token: str) -> None:
    with pytest.raises(ValueError):
        token_to_jid(token)


def test_token_of_empty_string_is_an_error() -> None:
    with pytest.raises(ValueError):
        jid_to_token("")
