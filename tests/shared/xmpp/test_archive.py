"""shared.xmpp.archive: stanza ids (XEP-0359), what is archived and copied (XEP-0313 §8,
XEP-0334, XEP-0280 §6), and query parsing (XEP-0313 §4, XEP-0059)."""

from __future__ import annotations

import pytest

from shared.xmpp import archive
from shared.xmpp.errors import StanzaError
from shared.xmpp.parser import parse_fragment, serialize

BOB = "bob@localhost"


def _facts(xml: str) -> archive.Facts:
    return archive.facts(parse_fragment(xml.encode()))


def test_ids_sort_by_time_and_carry_it() -> None:
    a, b = archive.new_id(1_700_000_000_000_000), archive.new_id(1_700_000_000_000_001)
    assert a < b and len(a) == archive.ID_LEN
    assert archive.time_of(a).timestamp() == 1_700_000_000  # type: ignore[union-attr]
    assert archive.time_of("nonsense") is None and archive.time_of("g" * 24) is None


def test_the_tail_is_found_only_for_its_owner_and_removed() -> None:
    sid = archive.new_id(1)
    msg = b'<message xmlns="jabber:client" type="chat"><body>x</body></message>'
    tagged = archive.with_stanza_id(msg, BOB, sid)
    assert archive.split_tail(tagged, BOB) == (msg, sid)
    assert archive.split_tail(tagged, "eve@localhost") == (tagged, "")
    assert archive.split_tail(msg, BOB) == (msg, "")
    empty = b'<message xmlns="jabber:client" type="chat"/>'
    assert archive.split_tail(archive.with_stanza_id(empty, BOB, sid), BOB)[1] == sid


def test_both_parties_tails_split_into_the_stored_message_and_one_id() -> None:
    sid, alice = archive.new_id(1), "alice@localhost"
    msg = b'<message xmlns="jabber:client" type="chat"><body>x</body></message>'
    both = archive.with_stanza_id(archive.with_stanza_id(msg, alice, sid), BOB, sid)
    assert archive.split_pair(both, BOB, alice) == (msg, sid, True)
    only_bob = archive.with_stanza_id(msg, BOB, sid)  # from a remote sender, or to oneself
    assert archive.split_pair(only_bob, BOB, alice) == (msg, sid, False)
    assert archive.split_pair(only_bob, BOB, BOB) == (msg, sid, False)
    assert archive.split_pair(msg, BOB, alice) == (msg, "", False)
    other = archive.with_stanza_id(archive.with_stanza_id(msg, alice, archive.new_id(2)),
                                   BOB, sid)  # two different ids are not a pair
    assert archive.split_pair(other, BOB, alice) == (archive.split_tail(other, BOB)[0], sid,
                                                     False)


def test_stanza_ids_in_our_name_are_stripped_others_kept() -> None:
    """XEP-0359 §4."""
    el = parse_fragment(
        b'<message xmlns="jabber:client"><stanza-id xmlns="urn:xmpp:sid:0" by="bob@localhost" '
        b'id="f"/><stanza-id xmlns="urn:xmpp:sid:0" by="localhost" id="g"/>'
        b'<stanza-id xmlns="urn:xmpp:sid:0" by="muc.example.org" id="h"/></message>')
    assert archive.strip_forged(el, "localhost")
    assert [c.get("id") for c in el] == ["h"]
    assert not archive.strip_forged(el, "localhost")


def test_the_serialised_stanza_tells_when_there_is_nothing_to_strip() -> None:
    """The namespace is in the canonical bytes of any stanza with such a child, prefixed
    or not; without it the tree is not searched."""
    for xml in (b'<message xmlns="jabber:client"><stanza-id xmlns="urn:xmpp:sid:0" '
                b'by="localhost" id="g"/></message>',
                b'<message xmlns="jabber:client" xmlns:s="urn:xmpp:sid:0"><s:stanza-id '
                b'by="localhost" id="g"/></message>'):
        el = parse_fragment(xml)
        assert archive.strip_forged(el, "localhost", serialize(el))
        assert len(el) == 0
    plain = parse_fragment(b'<message xmlns="jabber:client"><body>x</body></message>')
    assert not archive.strip_forged(plain, "localhost", serialize(plain))


@pytest.mark.parametrize(("xml", "archived", "copied"), [
    ('<message xmlns="jabber:client" type="chat"><body>x</body></message>', True, True),
    ('<message xmlns="jabber:client"><body>x</body></message>', True, True),
    ('<message xmlns="jabber:client" type="chat"/>', False, True),  # a chat state
    ('<message xmlns="jabber:client"/>', False, False),
    ('<message xmlns="jabber:client" type="headline"><body>x</body></message>', False, False),
    ('<message xmlns="jabber:client" type="groupchat"><body>x</body></message>', False, False),
    ('<message xmlns="jabber:client" type="error"><body>x</body></message>', False, False),
    ('<message xmlns="jabber:client" type="chat"><body>x</body>'
     '<no-store xmlns="urn:xmpp:hints"/></message>', False, True),
    ('<message xmlns="jabber:client" type="chat"><body>x</body>'
     '<no-permanent-store xmlns="urn:xmpp:hints"/></message>', False, True),
    ('<message xmlns="jabber:client" type="chat"><store xmlns="urn:xmpp:hints"/></message>',
     True, True),
    ('<message xmlns="jabber:client" type="chat"><body>x</body>'
     '<private xmlns="urn:xmpp:carbons:2"/></message>', True, False),
    ('<message xmlns="jabber:client" type="chat"><body>x</body>'
     '<no-copy xmlns="urn:xmpp:hints"/></message>', True, False),
    ('<message xmlns="jabber:client" type="chat"><body>x</body>'
     '<x xmlns="http://jabber.org/protocol/muc#user"/></message>', True, False),
])
def test_xep0313_section8_and_xep0334_and_xep0280_section6(
    xml: str, archived: bool, copied: bool
) -> None:
    assert _facts(xml) == archive.Facts(archived, copied)


def _query(inner: str) -> archive.Query:
    return archive.parse_query(parse_fragment(
        f'<query xmlns="urn:xmpp:mam:2" queryid="q1">{inner}</query>'.encode()))


def test_the_form_and_the_rsm_set_are_read() -> None:
    q = _query(
        '<x xmlns="jabber:x:data" type="submit"><field var="FORM_TYPE" type="hidden">'
        "<value>urn:xmpp:mam:2</value></field><field var='with'><value>a@b.org/r</value>"
        "</field><field var='start'><value>2024-01-01T00:00:00Z</value></field>"
        "<field var='ids'><value>1</value><value>2</value></field></x>"
        '<set xmlns="http://jabber.org/protocol/rsm"><max>999</max><before/></set><flip-page/>')
    assert q.query_id == "q1" and q.with_jid == "a@b.org/r" and q.with_full
    assert q.start is not None and q.start.year == 2024 and q.ids == ("1", "2")
    assert q.max == archive.MAX_PAGE and q.before == "" and q.backwards and q.flip


@pytest.mark.parametrize("inner", [
    '<x xmlns="jabber:x:data"><field var="FORM_TYPE"><value>urn:other</value></field></x>',
    '<x xmlns="jabber:x:data"><field var="nope"><value>1</value></field></x>',
    '<x xmlns="jabber:x:data"><field var="start"><value>yesterday</value></field></x>',
    '<x xmlns="jabber:x:data"><field var="start"><value>2024-01-01T00:00:00</value></field></x>',
    '<set xmlns="http://jabber.org/protocol/rsm"><max>-1</max></set>',
    '<set xmlns="http://jabber.org/protocol/rsm"><after>a</after><before>b</before></set>',
    '<set xmlns="http://jabber.org/protocol/rsm"><index>-2</index></set>',
    '<set xmlns="http://jabber.org/protocol/rsm"><index>two</index></set>',
    '<set xmlns="http://jabber.org/protocol/rsm"><after>a</after><index>2</index></set>',
])
def test_malformed_queries_are_bad_requests(inner: str) -> None:
    with pytest.raises(StanzaError) as err:
        _query(inner)
    assert err.value.condition.value == "bad-request"


def test_xep0059_2_6_a_page_out_of_order_by_index() -> None:
    q = _query('<set xmlns="http://jabber.org/protocol/rsm"><max>10</max><index>370</index>'
               "</set>")
    assert q.index == 370 and q.max == 10 and not q.backwards
    row = archive.Row(archive.new_id(1), archive.time_of(archive.new_id(1)), b"")  # type: ignore[arg-type]
    assert '<first index="370">' in archive.fin([row], complete=False, count=999, index=370)
    assert "<first>" in archive.fin([row], complete=False, count=999)


def test_prefs_round_trip_and_refuse_a_jid_in_both_lists() -> None:
    prefs = archive.parse_prefs(parse_fragment(
        b'<prefs xmlns="urn:xmpp:mam:2" default="roster"><always><jid>a@b.org/x</jid></always>'
        b"<never><jid>c@d.org</jid></never></prefs>"))
    assert prefs == archive.Prefs("roster", ("a@b.org",), ("c@d.org",))
    assert archive.parse_prefs(parse_fragment(prefs.xml().encode())) == prefs
    with pytest.raises(StanzaError):
        archive.parse_prefs(parse_fragment(
            b'<prefs xmlns="urn:xmpp:mam:2" default="always"><always><jid>a@b.org</jid>'
            b"</always><never><jid>a@b.org</jid></never></prefs>"))
