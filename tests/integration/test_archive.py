"""XEP-0280 carbons, XEP-0359 stanza ids and XEP-0313 archives (with XEP-0059 paging and
XEP-0441 preferences) through a real cluster, over raw streams."""

from __future__ import annotations

import re
import secrets
import time

from shared.store.archive import ArchiveWriter
from shared.xmpp import archive
from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.xmpp import RawClient, ask_iq, eventually, raw_login

RESULT = re.compile(rb'<result xmlns="urn:xmpp:mam:2"(?: queryid="[^"]*")? id="([0-9a-f]+)"')
LAST = re.compile(rb"<last>([0-9a-f]+)</last>")
COUNT = re.compile(rb"<count>(\d+)</count>")


async def _online(cluster: Cluster, jid: str, pw: str, resource: str,
                  carbons: bool = False) -> RawClient:
    c = RawClient("127.0.0.1", cluster.c2s_port)
    await raw_login(c, jid, pw, resource=resource)
    if carbons:
        got = await ask_iq(c, b"<iq type='set' id='cb'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
                           b"cb")
        assert b'type="result"' in got, got
    await c.send(b"<presence/>")
    await c.read_until(b"<presence")  # our own presence comes back: the router knows us
    return c


async def _query(c: RawClient, form: str = "", rsm: str = "", extra: str = "",
                 qid: str = "q") -> bytes:
    iq_id = "mam" + secrets.token_hex(3)
    x = (f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
         f"<value>urn:xmpp:mam:2</value></field>{form}</x>") if form else ""
    rsm_xml = f"<set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set>" if rsm else ""
    return await ask_iq(
        c, f"<iq type='set' id='{iq_id}'><query xmlns='urn:xmpp:mam:2' queryid='{qid}'>"
           f"{x}{rsm_xml}{extra}</query></iq>", iq_id)


async def _read_message(c: RawClient, text: bytes) -> bytes:
    """Everything read up to the end of the message that contains ``text``."""
    got = await c.read_until(text)
    if b"</message>" not in got[got.index(text):]:
        got += await c.read_until(b"</message>")
    return got


async def _archived_ids(c: RawClient, form: str = "") -> list[bytes]:
    return RESULT.findall(await _query(c, form))


async def test_a_message_from_the_phone_is_a_sent_carbon_on_the_laptop_and_in_both_archives_with_one_stanza_id(  # noqa: E501
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    phone = await _online(cluster, alice, pw_a, "phone")
    laptop = await _online(cluster, alice, pw_a, "laptop", carbons=True)
    b = await _online(cluster, bob, pw_b, "desk")
    try:
        # a forged stanza-id in bob's name is removed (XEP-0359 §4)
        await phone.send(
            f"<message to='{bob}' type='chat' id='m1'><body>hello bob</body>"
            f"<stanza-id xmlns='urn:xmpp:sid:0' by='{bob}' id='forged'/></message>".encode())
        got = await _read_message(b, b"hello bob")
        assert b"forged" not in got
        found = re.search(rb'<stanza-id xmlns="urn:xmpp:sid:0" by="([^"]+)" id="([0-9a-f]+)"/>',
                          got)
        assert found is not None and found.group(1).decode() == bob, got
        assert f'by="{alice}"'.encode() not in got, got  # alice's own id stays hers
        sid = found.group(2)
        carbon = await laptop.read_until(b"</sent>")
        assert b'<sent xmlns="urn:xmpp:carbons:2">' in carbon, carbon
        assert f'from="{alice}"'.encode() in carbon and b"hello bob" in carbon
        assert f'to="{alice}/laptop"'.encode() in carbon
        assert b'by="' + alice.encode() + b'" id="' + sid + b'"' in carbon

        async def in_archive(c: RawClient) -> bool:
            return sid in await _archived_ids(c)

        await eventually(lambda: in_archive(phone), 15, "alice's archive row")
        await eventually(lambda: in_archive(b), 15, "bob's archive row")
        page = await _query(b)
        assert b"hello bob" in page and b"<delay" in page and b"forged" not in page
        # the phone did not get a copy of its own message
        await phone.send(b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert b"<sent" not in await phone.read_until(b'id="p1"')
    finally:
        for c in (phone, laptop, b):
            await c.close()


async def test_received_carbons_go_to_the_other_enabled_resources_only(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    a = await _online(cluster, alice, pw_a, "a")
    one = await _online(cluster, bob, pw_b, "one", carbons=True)
    two = await _online(cluster, bob, pw_b, "two", carbons=True)
    three = await _online(cluster, bob, pw_b, "three")  # carbons off
    try:
        await a.send(f"<message to='{bob}/one' type='chat'><body>to one</body></message>"
                     .encode())
        assert b"to one" in await one.read_until(b"to one")
        copy = await two.read_until(b"</received>")
        assert b'<received xmlns="urn:xmpp:carbons:2"><forwarded xmlns="urn:xmpp:forward:0">' \
            in copy
        # <private/> (XEP-0280 §7) and chat states without a body in type normal: no copies
        await a.send(f"<message to='{bob}/one' type='chat'><body>secret</body>"
                     "<private xmlns='urn:xmpp:carbons:2'/><no-copy xmlns='urn:xmpp:hints'/>"
                     "</message>".encode())
        await one.read_until(b"secret")
        # disabling works: a later message reaches "one" only
        got = await ask_iq(two, b"<iq type='set' id='d1'><disable xmlns='urn:xmpp:carbons:2'/>"
                                b"</iq>", b"d1")
        assert b'type="result"' in got
        await a.send(f"<message to='{bob}/one' type='chat'><body>after</body></message>"
                     .encode())
        await one.read_until(b"after")
        await two.send(b"<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
        rest = await two.read_until(b'id="p2"')
        assert b"secret" not in rest and b"after" not in rest
        await three.send(b"<iq type='get' id='p3'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert b"<received" not in await three.read_until(b'id="p3"')
    finally:
        for c in (a, one, two, three):
            await c.close()


async def test_disco_advertises_carbons_on_the_server_and_mam_on_the_account(
    cluster: Cluster, users: Users
) -> None:
    alice, pw = await users.create("alice")
    c = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(c, alice, pw)
        server = await ask_iq(c, b"<iq type='get' id='d1' to='localhost'><query "
                                 b"xmlns='http://jabber.org/protocol/disco#info'/></iq>", b"d1")
        assert b'var="urn:xmpp:carbons:2"' in server
        account = await ask_iq(c, f"<iq type='get' id='d2' to='{alice}'><query "
                                  "xmlns='http://jabber.org/protocol/disco#info'/></iq>", "d2")
        for feature in (b"urn:xmpp:mam:2", b"urn:xmpp:mam:2#extended", b"urn:xmpp:sid:0"):
            assert b'var="' + feature + b'"' in account, account
        form = await ask_iq(c, b"<iq type='get' id='f1'><query xmlns='urn:xmpp:mam:2'/></iq>",
                            b"f1")
        assert b'var="before-id"' in form and b'var="ids"' in form
    finally:
        await c.close()


async def _fill(users: Users, owner: str, peer: str, n: int) -> list[str]:
    """``n`` archived messages straight through the store (one batch per 1,000 rows)."""
    writer = ArchiveWriter(users.db, "always", n + 1)
    base = time.time_ns() // 1000 - n * 1000
    ids = []
    for i in range(n):
        sid = archive.new_id(base + i * 1000)
        ids.append(sid)
        writer.add(owner, sid, peer, peer, i % 2 == 0,
                   f'<message xmlns="jabber:client" type="chat"><body>n{i}</body></message>'
                   .encode())
    await writer.flush(120)
    return ids


async def test_paging_through_10000_archived_messages_with_rsm_gets_each_exactly_once(
    cluster: Cluster, users: Users
) -> None:
    alice, pw = await users.create("alice")
    ids = await _fill(users, alice, "peer@example.org", 10_000)
    c = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(c, alice, pw)
        seen: list[bytes] = []
        after = ""
        for _ in range(60):  # bounded: 10,000 / 250 = 40 pages
            page = await _query(c, rsm=f"<max>250</max>{after}")
            got = RESULT.findall(page)
            seen += got
            assert COUNT.search(page).group(1) == b"10000"  # type: ignore[union-attr]
            if b'complete="true"' in page:
                break
            after = f"<after>{LAST.search(page).group(1).decode()}</after>"  # type: ignore[union-attr]
        assert [s.decode() for s in seen] == ids
        # backwards from the end (XEP-0059 §2.5: <before/> empty), flip-page (XEP-0313 §4.1.2)
        last = await _query(c, rsm="<max>3</max><before/>")
        assert [s.decode() for s in RESULT.findall(last)] == ids[-3:]
        flipped = await _query(c, rsm="<max>3</max><before/>", extra="<flip-page/>")
        assert [s.decode() for s in RESULT.findall(flipped)] == ids[-3:][::-1]
        before = await _query(c, rsm=f"<max>2</max><before>{ids[5]}</before>")
        assert [s.decode() for s in RESULT.findall(before)] == ids[3:5]
        # the #extended fields
        window = await _query(c, form=f"<field var='after-id'><value>{ids[10]}</value></field>"
                                      f"<field var='before-id'><value>{ids[14]}</value></field>")
        assert [s.decode() for s in RESULT.findall(window)] == ids[11:14]
        picked = await _query(c, form=f"<field var='ids'><value>{ids[7]}</value>"
                                      f"<value>{ids[2]}</value></field>")
        assert [s.decode() for s in RESULT.findall(picked)] == [ids[2], ids[7]]
        # an id the archive does not hold (§4.1.3)
        unknown = "0" * 24
        for q in (f"<field var='after-id'><value>{unknown}</value></field>",
                  "<field var='before-id'><value>nonsense</value></field>"):
            assert b"<item-not-found" in await _query(c, form=q)
        assert b"<item-not-found" in await _query(c, rsm=f"<after>{unknown}</after>")
        assert b"<bad-request" in await _query(
            c, form="<field var='unknown'><value>x</value></field>")
        # XEP-0059 §2.6: a page out of order, by the index of its first item
        jumped = await _query(c, rsm="<max>4</max><index>7370</index>")
        assert [s.decode() for s in RESULT.findall(jumped)] == ids[7370:7374]
        assert f'<first index="7370">{ids[7370]}</first>'.encode() in jumped
        count = await _query(c, rsm="<max>0</max>")
        assert COUNT.search(count).group(1) == b"10000" and not RESULT.findall(count)  # type: ignore[union-attr]
    finally:
        await c.close()


async def test_with_start_and_end_filter_the_archive(cluster: Cluster, users: Users) -> None:
    alice, pw = await users.create("alice")
    ids = await _fill(users, alice, "x@example.org", 6)
    await _fill(users, alice, "y@example.org", 4)
    c = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(c, alice, pw)
        got = await _query(c, form="<field var='with'><value>x@example.org</value></field>")
        assert [s.decode() for s in RESULT.findall(got)] == ids
        start = archive.stamp(archive.time_of(ids[2]))  # type: ignore[arg-type]
        end = archive.stamp(archive.time_of(ids[4]))  # type: ignore[arg-type]
        got = await _query(c, form="<field var='with'><value>x@example.org</value></field>"
                                   f"<field var='start'><value>{start}</value></field>"
                                   f"<field var='end'><value>{end}</value></field>")
        assert [s.decode() for s in RESULT.findall(got)] == ids[2:5]
    finally:
        await c.close()


async def test_preferences_and_hints_decide_what_is_archived(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    carol, pw_c = await users.create("carol")
    a = await _online(cluster, alice, pw_a, "a")
    b = await _online(cluster, bob, pw_b, "b")
    c = await _online(cluster, carol, pw_c, "c")
    try:
        prefs = await ask_iq(a, b"<iq type='get' id='pf1'><prefs xmlns='urn:xmpp:mam:2'/></iq>",
                             b"pf1")
        assert b'default="always"' in prefs
        # XEP-0441: alice never archives bob
        got = await ask_iq(a, f"<iq type='set' id='pf2'><prefs xmlns='urn:xmpp:mam:2' "
                              f"default='always'><always/><never><jid>{bob}</jid></never>"
                              "</prefs></iq>", "pf2")
        assert b'type="result"' in got and f"<jid>{bob}</jid>".encode() in got
        assert b"<bad-request" in await ask_iq(
            a, b"<iq type='set' id='pf3'><prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>"
               b"</iq>", b"pf3")
        await b.send(f"<message to='{alice}' type='chat'><body>from bob</body></message>"
                     .encode())
        await c.send(f"<message to='{alice}' type='chat'><body>no store</body>"
                     "<no-store xmlns='urn:xmpp:hints'/></message>".encode())
        await c.send(f"<message to='{alice}' type='headline'><body>headline</body></message>"
                     .encode())
        await c.send(f"<message to='{alice}' type='chat'><active "
                     "xmlns='http://jabber.org/protocol/chatstates'/><store "
                     "xmlns='urn:xmpp:hints'/></message>".encode())
        await c.send(f"<message to='{alice}' type='chat'><body>from carol</body></message>"
                     .encode())
        await a.read_until(b"from carol")

        async def carol_archived() -> bool:
            return b"from carol" in await _query(a)

        await eventually(carol_archived, 15, "carol's message in alice's archive")
        page = await _query(a)
        assert b"from bob" not in page and b"no store" not in page and b"headline" not in page
        assert b"chatstates" in page  # <store/> archives a message without a body
        assert len(RESULT.findall(page)) == 2
        # bob has no such preference: his sent message is in his own archive
        await eventually(lambda: _has(b, b"from bob"), 15, "bob's own row")
    finally:
        for x in (a, b, c):
            await x.close()


async def _has(c: RawClient, text: bytes) -> bool:
    return text in await _query(c)

