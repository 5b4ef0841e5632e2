"""The sans-I/O XML stream parser: bytes in, events out (RFC 6120 §4 and §11)."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from shared.xmpp import ns
from shared.xmpp.errors import StreamError, StreamErrorCondition
from shared.xmpp.parser import (
    POST_AUTH_LIMITS,
    PRE_AUTH_LIMITS,
    Event,
    ParserLimits,
    StanzaReceived,
    StreamClosed,
    StreamOpened,
    StreamParser,
    parse_fragment,
    serialize,
)

HEADER = (
    b"<?xml version='1.0'?>"
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    b"to='example.com' version='1.0' xml:lang='en'>"
)
BARE_HEADER = HEADER[len(b"<?xml version='1.0'?>") :]
MESSAGE = (
    b"<message to='juliet@example.com/balcony' id='m1' type='chat'>"
    b"<body>Wherefore art thou &amp; &lt;Romeo&gt;? \xc3\xa9\xf0\x9f\x98\x80"
    b"<![CDATA[<b>bold</b>]]></body></message>"
)
IQ = b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>"
PRESENCE = b"<presence/>"
STREAM = HEADER + MESSAGE + b" \n\t " + IQ + b"\r\n" + PRESENCE + b"</stream:stream>"

NOT_WELL_FORMED = StreamErrorCondition.NOT_WELL_FORMED
RESTRICTED_XML = StreamErrorCondition.RESTRICTED_XML
POLICY_VIOLATION = StreamErrorCondition.POLICY_VIOLATION
BAD_FORMAT = StreamErrorCondition.BAD_FORMAT
UNSUPPORTED_ENCODING = StreamErrorCondition.UNSUPPORTED_ENCODING


def feed_all(parser: StreamParser, *chunks: bytes) -> list[Event]:
    out: list[Event] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


def fails(data: bytes | list[bytes], limits: ParserLimits = PRE_AUTH_LIMITS) -> StreamError:
    """Feed `data` (one chunk or several) and return the StreamError it must raise."""
    parser = StreamParser(limits)
    chunks = [data] if isinstance(data, bytes) else data
    with pytest.raises(StreamError) as info:
        feed_all(parser, *chunks)
    # ... and the parser stays dead.
    with pytest.raises(StreamError) as again:
        parser.feed(b"<presence/>")
    assert again.value.condition is info.value.condition
    return info.value


def summary(events: list[Event]) -> list[object]:
    """Events as comparable values (elements by their serialisation)."""
    return [serialize(e.element) if isinstance(e, StanzaReceived) else e for e in events]


def same_tree(a: etree._Element, b: etree._Element) -> bool:
    return (
        a.tag == b.tag
        and dict(a.attrib) == dict(b.attrib)
        and (a.text or "") == (b.text or "")
        and (a.tail or "") == (b.tail or "")
        and len(a) == len(b)
        and all(same_tree(x, y) for x, y in zip(a, b, strict=True))
    )


# ---- the normal stream ----------------------------------------------------------------------


def test_rfc6120_4_normal_stream_gives_header_stanzas_and_close() -> None:
    events = StreamParser().feed(STREAM)
    assert [type(e) for e in events] == [
        StreamOpened,
        StanzaReceived,
        StanzaReceived,
        StanzaReceived,
        StreamClosed,
    ]
    header = events[0]
    assert header == StreamOpened(
        attrs={"to": "example.com", "version": "1.0", "xml:lang": "en"},
        default_ns=ns.CLIENT,
        stream_ns=ns.STREAM,
        local_name="stream",
        prefix="stream",
    )
    message, iq, presence = (e.element for e in events[1:4])  # type: ignore[union-attr]
    assert message.tag == f"{{{ns.CLIENT}}}message"
    assert message.get("to") == "juliet@example.com/balcony"
    assert message.findtext(f"{{{ns.CLIENT}}}body") == (
        "Wherefore art thou & <Romeo>? \u00e9\U0001f600<b>bold</b>"
    )
    assert iq[0].tag == f"{{{ns.PING}}}ping"
    assert presence.tag == f"{{{ns.CLIENT}}}presence"


def test_stanzas_are_detached_from_the_stream_root() -> None:
    events = StreamParser().feed(HEADER + MESSAGE + IQ)
    for event in events[1:]:
        assert isinstance(event, StanzaReceived)
        assert event.element.getparent() is None
        assert event.element.tail is None


def test_header_without_xml_declaration_and_other_prefix() -> None:
    header = (
        b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:server' "
        b"from='a.example' id='x'>"
    )
    [opened] = StreamParser().feed(header)
    assert opened == StreamOpened(
        attrs={"from": "a.example", "id": "x"},
        default_ns=ns.SERVER,
        stream_ns=ns.STREAM,
        local_name="stream",
        prefix="s",
    )


def test_header_without_default_namespace_reports_none() -> None:
    [opened] = StreamParser().feed(
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    assert isinstance(opened, StreamOpened)
    assert opened.default_ns is None
    assert opened.stream_ns == ns.STREAM


def test_unprefixed_header_reports_its_default_namespace() -> None:
    [opened] = StreamParser().feed(b"<stream xmlns='http://etherx.jabber.org/streams'>")
    assert isinstance(opened, StreamOpened)
    assert opened.default_ns == ns.STREAM
    assert opened.prefix is None


def test_whole_stream_fed_byte_by_byte_gives_the_same_events() -> None:
    whole = summary(StreamParser().feed(STREAM))
    parser = StreamParser()
    split = summary(feed_all(parser, *(STREAM[i : i + 1] for i in range(len(STREAM)))))
    assert split == whole


def test_bytearray_and_memoryview_input_are_accepted() -> None:
    parser = StreamParser()
    events = parser.feed(bytearray(HEADER)) + parser.feed(memoryview(PRESENCE))  # type: ignore[arg-type]
    assert [type(e) for e in events] == [StreamOpened, StanzaReceived]


def test_stream_fed_in_uneven_chunks_gives_the_same_events() -> None:
    whole = summary(StreamParser().feed(STREAM))
    for size in (2, 3, 7, 64, 100):
        parser = StreamParser()
        chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
        assert summary(feed_all(parser, *chunks)) == whole


def test_rfc6120_4_4_stream_close_and_data_after_it_is_ignored() -> None:
    parser = StreamParser()
    events = parser.feed(HEADER + PRESENCE + b"</stream:stream><message>garbage & junk")
    assert isinstance(events[-1], StreamClosed)
    assert parser.closed
    assert parser.feed(b"<!DOCTYPE x><more/>") == []


def test_stream_close_split_from_the_last_stanza() -> None:
    parser = StreamParser()
    feed_all(parser, HEADER, PRESENCE)
    assert parser.feed(b"</stream:str") == []
    assert parser.feed(b"eam>") == [StreamClosed()]


def test_rfc6120_4_6_1_whitespace_keepalives_are_ignored_and_do_not_pile_up() -> None:
    parser = StreamParser()  # pre-auth: 8 KiB per stanza, keepalives must not count
    feed_all(parser, HEADER, PRESENCE)
    for _ in range(5000):
        assert parser.feed(b" \n") == []
    root = parser._root
    assert root is not None
    assert len(root.text or "") <= 512
    assert len(root) <= 1
    [stanza] = parser.feed(MESSAGE)
    assert isinstance(stanza, StanzaReceived)
    assert len(root) <= 1  # delivered stanzas do not accumulate under the root


def test_many_stanzas_do_not_accumulate_under_the_root() -> None:
    parser = StreamParser()
    parser.feed(HEADER)
    for _ in range(1000):
        assert len(parser.feed(b" " + PRESENCE + b" " + IQ)) == 2
    root = parser._root
    assert root is not None
    assert len(root) <= 2
    assert not (root.text or "").strip()


def test_limits_can_be_raised_after_authentication() -> None:
    big = b"<message><body>" + b"x" * 20_000 + b"</body></message>"
    assert fails([HEADER, big]).condition is POLICY_VIOLATION
    parser = StreamParser()
    parser.feed(HEADER)
    parser.limits = POST_AUTH_LIMITS
    [stanza] = parser.feed(big)
    assert isinstance(stanza, StanzaReceived)


def test_stanza_just_under_the_limit_is_accepted_in_any_chunking() -> None:
    limit = PRE_AUTH_LIMITS.max_stanza_bytes
    stanza = b"<message><body>"
    stanza += b"y" * (limit - len(stanza) - len(b"</body></message>")) + b"</body></message>"
    assert len(stanza) == limit
    data = HEADER + b"  " + stanza + b" " + stanza + b"\n" + stanza
    for size in (1, 100, 1000, 4096, len(data)):
        parser = StreamParser()
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        events = feed_all(parser, *chunks)
        assert sum(isinstance(e, StanzaReceived) for e in events) == 3


# ---- serialisation ---------------------------------------------------------------------------


def test_serialize_declares_jabber_client_and_not_the_stream_namespace() -> None:
    [_, stanza] = StreamParser().feed(HEADER + MESSAGE)
    assert isinstance(stanza, StanzaReceived)
    stanza.element.set("from", "romeo@example.net/orchard")
    wire = serialize(stanza.element)
    assert wire.startswith(b'<message xmlns="jabber:client" to="juliet@example.com/balcony"')
    assert b"xmlns:stream" not in wire
    assert b"ns0" not in wire
    assert b'from="romeo@example.net/orchard"' in wire
    assert "\u00e9\U0001f600".encode() in wire  # raw UTF-8, not character references
    assert wire.endswith(b"</body></message>")


def test_rfc6120_11_2_prefixed_stanza_serialises_alone_with_its_own_prefix() -> None:
    data = (
        HEADER
        + b"<foo:message xmlns:foo='jabber:client' to='a@b'><foo:body>hi</foo:body>"
        + b"</foo:message>  <presence type='unavailable'/>"
    )
    [_, first, second] = StreamParser().feed(data)
    assert isinstance(first, StanzaReceived)
    assert isinstance(second, StanzaReceived)
    assert first.element.tag == f"{{{ns.CLIENT}}}message"
    assert serialize(first.element) == (
        b'<foo:message xmlns:foo="jabber:client" to="a@b"><foo:body>hi</foo:body></foo:message>'
    )
    assert serialize(second.element) == b'<presence xmlns="jabber:client" type="unavailable"/>'


def test_stream_prefix_used_by_a_stanza_is_declared_by_it() -> None:
    [_, stanza] = StreamParser().feed(HEADER + b"<stream:error><conflict/></stream:error>")
    assert isinstance(stanza, StanzaReceived)
    wire = serialize(stanza.element)
    # libxml2's copy declares every namespace in use on the top element.
    assert wire == (
        b'<stream:error xmlns:stream="http://etherx.jabber.org/streams" '
        b'xmlns="jabber:client"><conflict/></stream:error>'
    )


def test_serialize_of_an_attached_element_drops_inherited_declarations() -> None:
    root = etree.fromstring(
        b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client' "
        b"xmlns:unused='urn:x'><message><body>b</body></message>tail</s:stream>"
    )
    assert serialize(root[0]) == b'<message xmlns="jabber:client"><body>b</body></message>'


def test_serialize_output_reparses_to_an_equal_tree() -> None:
    events = StreamParser().feed(STREAM)
    for event in events:
        if isinstance(event, StanzaReceived):
            wire = serialize(event.element)
            again = parse_fragment(wire, 10_000)
            assert same_tree(again, event.element)
            assert serialize(again) == wire


def test_serialize_escapes_what_must_be_escaped() -> None:
    data = HEADER + b"<message a='&quot;&apos;&lt;&#9;&#10;'><body>&#13;&lt;&amp;]]&gt;</body>"
    data += b"</message>"
    [_, stanza] = StreamParser().feed(data)
    assert isinstance(stanza, StanzaReceived)
    again = parse_fragment(serialize(stanza.element), 10_000)
    assert again.get("a") == "\"'<\t\n"
    assert again.findtext(f"{{{ns.CLIENT}}}body") == "\r<&]]>"


# ---- parse_fragment ----------------------------------------------------------------------------


def test_parse_fragment_returns_a_standalone_element() -> None:
    element = parse_fragment(
        b'<iq xmlns="jabber:client" type="get"><ping xmlns="urn:xmpp:ping"/></iq>'
    )
    assert element.tag == f"{{{ns.CLIENT}}}iq"
    assert element.getparent() is None
    assert element[0].tag == f"{{{ns.PING}}}ping"


def test_parse_fragment_is_size_bounded() -> None:
    with pytest.raises(StreamError) as info:
        parse_fragment(b"<message>" + b"x" * 100 + b"</message>", 50)
    assert info.value.condition is POLICY_VIOLATION


@pytest.mark.parametrize(
    ("data", "condition"),
    [
        (b"<!DOCTYPE m [<!ENTITY a 'aaaa'>]><m>&a;</m>", RESTRICTED_XML),
        (b"<m>&foo;</m>", RESTRICTED_XML),
        (b"<m><!-- c --></m>", RESTRICTED_XML),
        (b"<m/><?pi x?>", RESTRICTED_XML),
        (b"<m>", NOT_WELL_FORMED),
        (b"<m/><n/>", NOT_WELL_FORMED),
        (b"", NOT_WELL_FORMED),
        (b"<p:m/>", NOT_WELL_FORMED),
        (b"<m>" * 40 + b"</m>" * 40, POLICY_VIOLATION),
    ],
)
def test_parse_fragment_applies_the_stream_rules(
    data: bytes, condition: StreamErrorCondition
) -> None:
    with pytest.raises(StreamError) as info:
        parse_fragment(data, 10_000)
    assert info.value.condition is condition


# ---- RFC 6120 §11.1 restricted XML: one regression test per attack ----------------------------


def test_rfc6120_11_1_billion_laughs_is_restricted_xml_before_any_expansion() -> None:
    entities = b"<!ENTITY lol0 'lol'>" + b"".join(
        b"<!ENTITY lol%d '%s'>" % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10)
    )
    data = b"<?xml version='1.0'?><!DOCTYPE stream [" + entities + b"]>" + BARE_HEADER
    data += b"<message><body>&lol9;</body></message>"
    error = fails(data)  # an expansion would take minutes and gigabytes before failing
    assert error.condition is RESTRICTED_XML


def test_rfc6120_11_1_billion_laughs_split_is_refused_at_the_doctype() -> None:
    parser = StreamParser()
    assert parser.feed(b"<?xml version='1.0'?><") == []
    with pytest.raises(StreamError) as info:
        parser.feed(b"!DOCTYPE stream [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;'>")
    assert info.value.condition is RESTRICTED_XML


def test_rfc6120_11_1_external_entity_never_reads_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-MARKER")
    data = (
        b"<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY xxe SYSTEM '"
        + secret.as_uri().encode()
        + b"'>]>"
        + BARE_HEADER
        + b"<message><body>&xxe;</body></message></stream:stream>"
    )
    parser = StreamParser()
    with pytest.raises(StreamError) as info:
        parser.feed(data)
    assert info.value.condition is RESTRICTED_XML
    assert "TOP-SECRET" not in str(info.value)
    # Nor does it work once the stream is open, as an entity the stream could not declare.
    error = fails([HEADER, b"<message><body>&xxe;</body></message>"])
    assert error.condition is RESTRICTED_XML
    assert "TOP-SECRET" not in str(error)


def test_rfc6120_11_1_external_dtd_subset_is_restricted_xml() -> None:
    data = b"<!DOCTYPE stream SYSTEM 'file:///etc/passwd'>" + BARE_HEADER
    assert fails(data).condition is RESTRICTED_XML


def test_rfc6120_11_1_doctype_is_restricted_xml() -> None:
    assert fails(b"<!DOCTYPE stream>" + BARE_HEADER).condition is RESTRICTED_XML


def test_rfc6120_11_1_doctype_inside_the_stream_is_restricted_xml() -> None:
    data = HEADER + b"<presence/><!DOCTYPE x [<!ENTITY a 'b'>]>"
    assert fails(data).condition is RESTRICTED_XML


def test_rfc6120_11_1_doctype_after_a_swallowed_entity_error_never_reaches_libxml2() -> None:
    # lxml swallows undeclared-entity errors and restarts its document: the next chunk
    # would be parsed as a new prolog.  The parser must die at the entity already.
    parser = StreamParser()
    parser.feed(HEADER)
    with pytest.raises(StreamError) as info:
        parser.feed(b"&foo;")
    assert info.value.condition is RESTRICTED_XML
    with pytest.raises(StreamError):
        parser.feed(b"<!DOCTYPE x [<!ENTITY a 'b'>]><stream:stream><x>&a;</x>")


def test_rfc6120_11_1_comment_is_restricted_xml() -> None:
    assert fails(HEADER + b"<!-- hello -->").condition is RESTRICTED_XML


def test_rfc6120_11_1_comment_inside_a_stanza_is_restricted_xml() -> None:
    assert fails(HEADER + b"<message><!-- x --></message>").condition is RESTRICTED_XML


def test_rfc6120_11_1_comment_before_the_header_is_restricted_xml() -> None:
    assert fails(b"<!-- hi -->" + BARE_HEADER).condition is RESTRICTED_XML


def test_rfc6120_11_1_processing_instruction_is_restricted_xml() -> None:
    assert fails(HEADER + b"<?php echo 1; ?>").condition is RESTRICTED_XML
    assert fails(b"<?xml-stylesheet href='a'?>" + BARE_HEADER).condition is RESTRICTED_XML
    assert fails(b"<?xml version='1.0'?><?pi?>" + BARE_HEADER).condition is RESTRICTED_XML


def test_rfc6120_11_5_xml_declaration_only_at_the_very_start() -> None:
    assert fails(b" <?xml version='1.0'?>" + BARE_HEADER).condition is RESTRICTED_XML
    assert fails(HEADER + b"<?xml version='1.0'?>").condition is NOT_WELL_FORMED


def test_rfc6120_11_1_undeclared_entity_is_restricted_xml() -> None:
    assert fails(HEADER + b"<message><body>&foo;</body></message>").condition is RESTRICTED_XML


def test_rfc6120_11_1_undeclared_entity_in_an_attribute_is_restricted_xml() -> None:
    assert fails(HEADER + b"<message to='&foo;'/>").condition is RESTRICTED_XML


def test_rfc6120_11_1_undeclared_entity_in_the_header_is_restricted_xml() -> None:
    header = BARE_HEADER.replace(b"to='example.com'", b"to='&host;'")
    assert fails(header).condition is RESTRICTED_XML


def test_rfc6120_11_1_undeclared_entity_split_across_chunks_is_restricted_xml() -> None:
    chunks = [HEADER, b"<message a='&fo", b"o;' b='", b"x'", b"/>", PRESENCE]
    assert fails(chunks).condition is RESTRICTED_XML


def test_rfc6120_11_1_predefined_entities_and_character_references_are_fine() -> None:
    data = HEADER + b"<message a='&quot;&apos;&#x41;'><body>&amp;&lt;&gt;&#233;&#x1F600;</body>"
    [_, stanza] = StreamParser().feed(data + b"</message>")
    assert isinstance(stanza, StanzaReceived)
    assert stanza.element.get("a") == "\"'A"
    assert stanza.element[0].text == "&<>\u00e9\U0001f600"


def test_rfc6120_11_6_invalid_utf8_is_not_well_formed() -> None:
    for body in (b"\xff\xfe", b"\xc3(", b"\xed\xa0\x80", b"\xc0\xaf"):
        error = fails(HEADER + b"<message><body>" + body + b"</body></message>")
        assert error.condition is NOT_WELL_FORMED


def test_rfc6120_11_6_other_encodings_are_unsupported() -> None:
    latin1 = b"<?xml version='1.0' encoding='ISO-8859-1'?>" + BARE_HEADER
    assert fails(latin1).condition is UNSUPPORTED_ENCODING
    utf16 = ("<?xml version='1.0'?>" + BARE_HEADER.decode()).encode("utf-16")
    assert fails(utf16).condition is UNSUPPORTED_ENCODING
    assert fails(BARE_HEADER.decode().encode("utf-16-be")).condition is UNSUPPORTED_ENCODING


def test_rfc6120_11_6_utf8_declaration_and_bom_are_accepted() -> None:
    data = b"\xef\xbb\xbf<?xml version='1.0' encoding='UTF-8'?>" + BARE_HEADER + PRESENCE
    assert [type(e) for e in StreamParser().feed(data)] == [StreamOpened, StanzaReceived]


def test_nul_byte_is_not_well_formed() -> None:
    error = fails(HEADER + b"<message><body>a\x00b</body></message>")
    assert error.condition is NOT_WELL_FORMED


@pytest.mark.parametrize("char", [b"\x01", b"\x08", b"\x0b", b"\x1f", b"&#1;", b"&#x0;"])
def test_restricted_control_characters_are_not_well_formed(char: bytes) -> None:
    data = HEADER + b"<message><body>a" + char + b"b</body></message>"
    assert fails(data).condition is NOT_WELL_FORMED


def test_rfc6120_11_3_undeclared_prefix_is_not_well_formed() -> None:
    assert fails(HEADER + b"<foo:message/>").condition is NOT_WELL_FORMED
    assert fails(HEADER + b"<message foo:to='a'/>").condition is NOT_WELL_FORMED


def test_rfc6120_11_3_undeclared_prefix_on_the_stream_header_is_not_well_formed() -> None:
    header = b"<stream:stream xmlns='jabber:client' to='example.com' version='1.0'>"
    assert fails(header).condition is NOT_WELL_FORMED  # was a ValueError out of feed()
    assert fails(b"<?xml version='1.0'?>" + header + PRESENCE).condition is NOT_WELL_FORMED


def test_rfc6120_11_3_duplicate_expanded_attribute_is_not_well_formed() -> None:
    data = HEADER + b"<message xmlns:p='urn:u' xmlns:q='urn:u' p:a='1' q:a='2'/>"
    assert fails(data).condition is NOT_WELL_FORMED
    assert fails(HEADER + b"<message to='a' to='b'/>").condition is NOT_WELL_FORMED


def test_mismatched_tags_are_not_well_formed() -> None:
    assert fails(HEADER + b"<message><body></message>").condition is NOT_WELL_FORMED
    assert fails(HEADER + b"</stream:streamx>").condition is NOT_WELL_FORMED


def test_rfc6120_11_7_text_between_stanzas_is_bad_format() -> None:
    assert fails(HEADER + b"hello<presence/>").condition is BAD_FORMAT
    assert fails(HEADER + b"<presence/>hello<presence/>").condition is BAD_FORMAT
    assert fails([HEADER, PRESENCE, b"hello", PRESENCE]).condition is BAD_FORMAT
    assert fails(HEADER + b"<presence/><![CDATA[x]]><presence/>").condition is BAD_FORMAT


def test_text_before_the_header_is_not_well_formed() -> None:
    assert fails(b"hello" + BARE_HEADER).condition is NOT_WELL_FORMED


# ---- limits (RFC 6120 §13.12) --------------------------------------------------------------------


def test_deep_nesting_is_a_policy_violation() -> None:
    error = fails(HEADER + b"<message>" + b"<a>" * 40)
    assert error.condition is POLICY_VIOLATION
    assert error.text == "stanza nested too deeply"


def test_deeper_than_libxml2_allows_in_one_chunk_is_still_a_policy_violation() -> None:
    error = fails(HEADER + b"<a>" * 5000, POST_AUTH_LIMITS)
    assert error.condition is POLICY_VIOLATION


def test_nesting_at_the_depth_limit_is_accepted() -> None:
    depth = PRE_AUTH_LIMITS.max_depth
    data = HEADER + b"<a>" * depth + b"</a>" * depth
    assert [type(e) for e in StreamParser().feed(data)] == [StreamOpened, StanzaReceived]


def test_thousands_of_attributes_are_a_policy_violation() -> None:
    attrs = b"".join(b" a%d=''" % i for i in range(5000))
    error = fails(HEADER + b"<message" + attrs + b"/>", POST_AUTH_LIMITS)
    assert error.condition is POLICY_VIOLATION
    assert error.text == "too many attributes"


def test_attributes_dripped_in_small_chunks_are_still_counted() -> None:
    chunks = [HEADER, b"<message"] + [b" a%d='x'" % i for i in range(100)] + [b"/>"]
    error = fails(chunks, POST_AUTH_LIMITS)
    assert error.condition is POLICY_VIOLATION
    assert error.text == "too many attributes"


def test_namespace_declarations_count_as_attributes() -> None:
    decls = b"".join(b" xmlns:p%d='urn:%d'" % (i, i) for i in range(100))
    error = fails(HEADER + b"<message" + decls + b"/>", POST_AUTH_LIMITS)
    assert error.text == "too many attributes"


def test_attributes_at_the_limit_are_accepted() -> None:
    attrs = b"".join(b" a%d='x'" % i for i in range(PRE_AUTH_LIMITS.max_attributes))
    events = StreamParser().feed(HEADER + b"<message" + attrs + b"/>")
    assert isinstance(events[-1], StanzaReceived)
    assert len(events[-1].element.attrib) == PRE_AUTH_LIMITS.max_attributes


def test_stanza_too_large_in_one_chunk_is_a_policy_violation() -> None:
    big = b"<message><body>" + b"x" * (1024 * 1024) + b"</body></message>"
    error = fails(HEADER + big)
    assert error.condition is POLICY_VIOLATION
    assert error.text == "stanza too large"


def test_stanza_too_large_dripped_slowly_is_stopped_near_the_limit() -> None:
    parser = StreamParser()
    feed_all(parser, HEADER, b"<message><body>")
    fed = 0
    with pytest.raises(StreamError) as info:
        while fed < 10 * PRE_AUTH_LIMITS.max_stanza_bytes:
            parser.feed(b"x" * 100)
            fed += 100
    assert info.value.condition is POLICY_VIOLATION
    assert info.value.text == "stanza too large"
    assert fed <= PRE_AUTH_LIMITS.max_stanza_bytes


def test_endless_start_tag_is_stopped_by_the_size_limit() -> None:
    parser = StreamParser()
    feed_all(parser, HEADER, b"<message to='")
    with pytest.raises(StreamError) as info:
        for _ in range(1000):
            parser.feed(b"a" * 64)
    assert info.value.condition is POLICY_VIOLATION


def test_endless_whitespace_inside_a_start_tag_is_counted() -> None:
    # Whitespace between stanzas is free, whitespace inside a pending start tag is not.
    parser = StreamParser()
    feed_all(parser, HEADER, b"<message")
    with pytest.raises(StreamError) as info:
        for _ in range(1000):
            parser.feed(b" " * 64)
    assert info.value.condition is POLICY_VIOLATION


def test_endless_comment_between_stanzas_is_stopped() -> None:
    parser = StreamParser()
    feed_all(parser, HEADER, b"<!--")
    with pytest.raises(StreamError) as info:
        for _ in range(1000):
            parser.feed(b"a" * 64)
    assert info.value.condition in (POLICY_VIOLATION, RESTRICTED_XML)


def test_too_many_elements_pre_auth_is_a_policy_violation() -> None:
    data = HEADER + b"<iq type='set' id='1'><query>" + b"<x/>" * 40 + b"</query></iq>"
    error = fails(data)
    assert error.condition is POLICY_VIOLATION
    assert error.text == "too many elements in a stanza"
    events = StreamParser(POST_AUTH_LIMITS).feed(data)
    assert isinstance(events[-1], StanzaReceived)


def test_element_count_restarts_with_every_stanza() -> None:
    stanza = b"<iq><query>" + b"<x/>" * 20 + b"</query></iq>"
    events = StreamParser().feed(HEADER + stanza * 5)
    assert sum(isinstance(e, StanzaReceived) for e in events) == 5


def test_header_too_large_is_a_policy_violation() -> None:
    header = BARE_HEADER[:-1] + b" x='" + b"a" * 5000 + b"'>"
    assert fails(header).condition is POLICY_VIOLATION
    chunks = [header[i : i + 10] for i in range(0, len(header), 10)]
    assert fails(chunks).condition is POLICY_VIOLATION


def test_endless_whitespace_before_the_header_is_a_policy_violation() -> None:
    parser = StreamParser()
    with pytest.raises(StreamError) as info:
        for _ in range(1000):
            parser.feed(b" " * 64)
    assert info.value.condition is POLICY_VIOLATION


def test_header_at_the_limit_is_accepted() -> None:
    limit = PRE_AUTH_LIMITS.max_header_bytes
    header = BARE_HEADER[:-1] + b" x='"
    header += b"a" * (limit - len(header) - 2) + b"'>"
    assert len(header) == limit
    assert [type(e) for e in StreamParser().feed(header)] == [StreamOpened]


# ---- robustness ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 700), max_size=8))
def test_random_bytes_never_raise_anything_but_stream_error(junk: bytes, cuts: list[int]) -> None:
    for data in (junk, HEADER + junk, HEADER + MESSAGE + junk):
        points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
        parser = StreamParser()
        try:
            for start, end in itertools.pairwise(points):
                for event in parser.feed(data[start:end]):
                    if isinstance(event, StanzaReceived):
                        serialize(event.element)
        except StreamError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=20))
def test_random_splits_of_a_valid_stream_give_the_same_events(cuts: list[int]) -> None:
    expected = summary(StreamParser().feed(STREAM))
    points = sorted({0, len(STREAM), *cuts})
    parser = StreamParser()
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert summary(feed_all(parser, *chunks)) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"<!DOCTYPE x>",
                b"<!--c-->",
                b"<?pi?>",
                b"&foo;",
                b"&amp;",
                b"<![CDATA[&x;<!DOCTYPE>]]>",
                b"<a>",
                b"</a>",
                b"<p:a/>",
                b"<a xmlns:p='urn:p' p:b='1'/>",
                b"x",
                b" ",
                b"\x00",
                b"\xff",
                PRESENCE,
                MESSAGE,
                b"</stream:stream>",
            ]
        ),
        max_size=12,
    ),
    st.integers(1, 40),
)
def test_random_token_soup_never_raises_anything_but_stream_error(
    tokens: list[bytes], size: int
) -> None:
    data = HEADER + b"".join(tokens)
    parser = StreamParser()
    try:
        for i in range(0, len(data), size):
            for event in parser.feed(data[i : i + size]):
                if isinstance(event, StanzaReceived):
                    assert event.element.getparent() is None
                    serialize(event.element)
    except StreamError:
        pass


# ---- attribute values and a second header (issue 4) -------------------------------------------


def test_rfc6120_13_12_long_attribute_value_is_a_policy_violation() -> None:
    value = b"x" * (POST_AUTH_LIMITS.max_attribute_chars + 1)
    error = fails(HEADER + b"<message id='" + value + b"'/>", POST_AUTH_LIMITS)
    assert error.condition is POLICY_VIOLATION
    assert error.text == "attribute value too long"


def test_rfc6120_13_12_long_attribute_value_dripped_is_still_refused() -> None:
    value = b"y" * (POST_AUTH_LIMITS.max_attribute_chars + 10)
    chunks = [HEADER, b"<message><body/></message><message to='"]
    chunks += [value[i : i + 100] for i in range(0, len(value), 100)] + [b"'/>"]
    error = fails(chunks, POST_AUTH_LIMITS)
    assert error.text == "attribute value too long"


def test_attribute_value_at_the_limit_is_accepted_in_any_chunking() -> None:
    value = b"z" * POST_AUTH_LIMITS.max_attribute_chars
    stanza = b"<message id='" + value + b"'><body>hi</body></message>"
    for size in (1, 7, 100, 5000, len(stanza)):
        parser = StreamParser(POST_AUTH_LIMITS)
        events = parser.feed(HEADER)
        for i in range(0, len(stanza), size):
            events += parser.feed(stanza[i : i + size])
        assert isinstance(events[-1], StanzaReceived)
        assert events[-1].element.get("id") == value.decode()


def test_parse_fragment_refuses_a_long_attribute_value() -> None:
    value = b"v" * (POST_AUTH_LIMITS.max_attribute_chars + 1)
    with pytest.raises(StreamError) as info:
        parse_fragment(b"<message xmlns='jabber:client' id='" + value + b"'/>")
    assert info.value.text == "attribute value too long"


@pytest.mark.parametrize("size", [1, 13, 10_000])
def test_rfc6120_4_3_3_second_stream_header_is_refused_at_its_start_tag(size: int) -> None:
    data = HEADER + MESSAGE + BARE_HEADER + MESSAGE
    error = fails([data[i : i + size] for i in range(0, len(data), size)])
    assert error.condition is StreamErrorCondition.UNSUPPORTED_STANZA_TYPE


def test_rfc6120_13_12_too_many_distinct_names_is_policy_violation() -> None:
    """libxml2 interns every name forever: a stream may not invent names without bound."""
    parser = StreamParser(ParserLimits(max_distinct_names=50))
    parser.feed(STREAM_HEADER_FOR_NAMES)
    with pytest.raises(StreamError) as caught:
        for i in range(60):
            parser.feed(f"<message><x{i} xmlns='urn:e'/></message>".encode())
    assert caught.value.condition is StreamErrorCondition.POLICY_VIOLATION


def test_repeated_names_do_not_count_again() -> None:
    parser = StreamParser(ParserLimits(max_distinct_names=10))
    parser.feed(STREAM_HEADER_FOR_NAMES)
    for _ in range(100):  # past the limit of 10 if repeated names counted again
        events = parser.feed(b"<message to='a@b' type='chat'><body>hi</body></message>")
        assert len(events) == 1 and isinstance(events[0], StanzaReceived)


STREAM_HEADER_FOR_NAMES = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    b"to='example.com' version='1.0'>"
)


# ---- hibernation: an idle stream holds no libxml2 parser -----------------------------------


def test_hibernating_between_stanzas_then_the_stream_goes_on_unchanged() -> None:
    parser = StreamParser(POST_AUTH_LIMITS)
    awake = summary(feed_all(StreamParser(POST_AUTH_LIMITS), STREAM))
    events = feed_all(parser, HEADER, MESSAGE, b" \n")
    assert parser.hibernate()
    assert parser._xml is None  # the point of it
    events += feed_all(parser, b"\t " + IQ)
    assert parser.hibernate() and not parser.hibernate()  # already: nothing more to free
    events += feed_all(parser, b"\r\n" + PRESENCE + b"</stream:stream>")
    assert summary(events) == awake
    assert parser.closed


def test_hibernation_keeps_the_peers_prefix_and_default_namespace() -> None:
    parser = StreamParser(POST_AUTH_LIMITS)
    parser.feed(
        b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:server' "
        b"xmlns:db='jabber:server:dialback' from='a.example'>"
    )
    assert parser.hibernate()
    out = parser.feed(b"<message to='b@b.example'/><db:result to='b'/></s:stream>")
    message, result, closed = out
    assert isinstance(message, StanzaReceived) and message.element.tag == f"{{{ns.SERVER}}}message"
    assert isinstance(result, StanzaReceived)
    assert result.element.tag == "{jabber:server:dialback}result"
    assert closed == StreamClosed()


def test_no_hibernation_inside_a_stanza_or_before_the_header() -> None:
    parser = StreamParser(POST_AUTH_LIMITS)
    assert not parser.hibernate()  # no header yet
    parser.feed(HEADER + MESSAGE[:30])
    assert not parser.hibernate()  # half a stanza: libxml2 holds it
    [stanza] = parser.feed(MESSAGE[30:])
    assert isinstance(stanza, StanzaReceived)
    parser.feed(b"<presence")  # a start tag not yet complete: no event, but not idle
    assert not parser.hibernate()


def test_errors_after_waking_are_still_errors() -> None:
    parser = StreamParser(POST_AUTH_LIMITS)
    parser.feed(HEADER)
    assert parser.hibernate()
    with pytest.raises(StreamError) as info:
        parser.feed(b"<foo:message/>")  # undeclared prefix: RFC 6120 §11.3
    assert info.value.condition is NOT_WELL_FORMED
    parser = StreamParser(POST_AUTH_LIMITS)
    parser.feed(HEADER)
    assert parser.hibernate()
    with pytest.raises(StreamError) as info:
        parser.feed(b"<stream:stream>")  # a second header is still refused
    assert info.value.condition is StreamErrorCondition.UNSUPPORTED_STANZA_TYPE


def test_hibernation_keeps_the_distinct_name_count() -> None:
    limits = ParserLimits(max_distinct_names=40)
    parser = StreamParser(limits)
    parser.feed(HEADER)
    for i in range(3):
        parser.feed(b"".join(f"<n{i}x{j}/>".encode() for j in range(10)))
        assert parser.hibernate()
    with pytest.raises(StreamError) as info:
        parser.feed(b"".join(f"<m{j}/>".encode() for j in range(10)))
    assert info.value.condition is POLICY_VIOLATION


# ---- letting go of a parser: reference counting frees it, not the garbage collector --------


def _garbage_after(make: Callable[[], None]) -> int:
    """Objects only the cyclic collector could free, left by `make` (collector paused)."""
    gc.collect()
    gc.disable()
    try:
        make()
        return gc.collect()
    finally:
        gc.enable()


def test_a_released_parser_leaves_no_cycle_for_the_collector() -> None:
    def dropped(release: bool) -> Callable[[], None]:
        def make() -> None:
            parser = StreamParser(POST_AUTH_LIMITS)
            feed_all(parser, HEADER, MESSAGE, IQ)
            if release:
                parser.release()
        return make

    assert _garbage_after(dropped(False)) > 0  # lxml's parser and document hold each other
    assert _garbage_after(dropped(True)) == 0


def test_a_parser_whose_stream_was_closed_by_the_peer_is_released_without_a_cycle() -> None:
    def make() -> None:
        parser = StreamParser(POST_AUTH_LIMITS)
        feed_all(parser, STREAM)
        assert parser.closed
        parser.release()

    assert _garbage_after(make) == 0


def test_hibernation_leaves_no_cycle_and_a_prefixed_root_is_ended_by_its_own_name() -> None:
    def make() -> None:
        parser = StreamParser(POST_AUTH_LIMITS)
        parser.feed(b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:server'>"
                    b"<message to='b@b.example'/>")
        assert parser.hibernate()
        out = parser.feed(b"<iq type='get' id='1'/>")  # awake again, as before
        assert [type(e) for e in out] == [StanzaReceived]
        parser.release()

    assert _garbage_after(make) == 0


def test_a_parser_released_mid_stanza_or_after_an_error_ignores_what_comes_next() -> None:
    parser = StreamParser(POST_AUTH_LIMITS)
    parser.feed(HEADER + MESSAGE[:30])
    parser.release()  # the end tag cannot end the document here: the collector frees it
    assert parser.feed(MESSAGE[30:] + IQ) == []
    assert not parser.hibernate()
    failed = StreamParser(POST_AUTH_LIMITS)
    with pytest.raises(StreamError):
        failed.feed(HEADER + b"<a></b>")
    failed.release()  # no second error out of release



# ---- markup still arriving (RFC 6120 §13.12): refused as soon as it cannot be legal ---------


def _fed_until_refused(parser: StreamParser, head: bytes, chunk: bytes, total: int) -> int:
    """Feed ``head`` then ``chunk`` repeatedly; the bytes fed when the parser refused."""
    parser.feed(BARE_HEADER + head)
    fed = 0
    with pytest.raises(StreamError) as err:
        while fed < total:
            parser.feed(chunk)
            fed += len(chunk)
    assert err.value.condition is StreamErrorCondition.POLICY_VIOLATION
    return fed


def test_rfc6120_13_12_an_attribute_value_still_arriving_is_refused_at_its_limit() -> None:
    limits = POST_AUTH_LIMITS
    fed = _fed_until_refused(StreamParser(limits), b"<message to='", b"a" * 1000, 1 << 20)
    # the stanza allowance is 256 KiB; no value of 4096 characters takes more than 40 KiB
    assert fed <= limits.max_attribute_chars * 10 + 1000 < limits.max_stanza_bytes // 4


def test_rfc6120_13_12_a_start_tag_with_too_many_attributes_is_refused_while_arriving() -> None:
    fed = _fed_until_refused(
        StreamParser(POST_AUTH_LIMITS), b"<message",
        b"".join(b" a%d='x'" % i for i in range(100)), 1 << 20,
    )
    assert fed < 2000


def test_open_tag_tracking_lets_legal_markup_through() -> None:
    """Values with '>' and escapes near their limit, '<' and quotes inside CDATA, markup
    split at every byte: nothing is refused that libxml2 accepts."""
    value = "&amp;" * 4000  # 4000 characters in 20000 bytes
    stanza = (
        f"<message to='a@b' id=\"x'>y\" type='chat' xml:lang='en'><body v='{value}'>"
        "<![CDATA[ a<b x='unclosed ]]> and > text <![CDATA[<c y=\"]]></body></message>"
    ).encode()
    assert [type(e) for e in StreamParser(POST_AUTH_LIMITS).feed(BARE_HEADER + stanza)] == [
        StreamOpened, StanzaReceived
    ]
    parser = StreamParser(POST_AUTH_LIMITS)
    events: list[Event] = parser.feed(BARE_HEADER)
    for i in range(len(stanza)):
        events += parser.feed(stanza[i : i + 1])
    assert [type(e) for e in events] == [StreamOpened, StanzaReceived]
    long_body = b"<message><body>" + b"<![CDATA[<a b='" + b"t" * 100_000 + b"]]></body></message>"
    events = StreamParser(POST_AUTH_LIMITS).feed(BARE_HEADER + long_body)
    assert [type(e) for e in events] == [StreamOpened, StanzaReceived]
