"""XEP-0357 Push Notifications through the running cluster, with a second local account
acting as the app server: it receives the pubsub publish and answers it."""

from __future__ import annotations

import re

from lxml import etree

from shared.store import keys
from shared.store.push import PushStore
from shared.xmpp import ns
from tests.conftest import Users
from tests.support.cluster import Cluster, metric_value
from tests.support.xmpp import Client, RawClient, ask_iq, eventually, raw_login, raw_sm_login

PUSH_FORM = (
    "<x xmlns='jabber:x:data' type='submit'>"
    "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value>"
    "</field><field var='secret'><value>s3cr3t</value></field>{extra}</x>"
)


def enable(app: str, node: str, include_body: bool = False) -> str:
    extra = ("<field var='include-body'><value>true</value></field>" if include_body else "")
    return (f"<iq type='set' id='en1'><enable xmlns='urn:xmpp:push:0' jid='{app}' "
            f"node='{node}'>{PUSH_FORM.format(extra=extra)}</enable></iq>")


async def next_publish(app: RawClient) -> etree._Element:
    """The next pubsub publish the app server receives, parsed."""
    data = await app.read_until(b"</pubsub></iq>", timeout=20)
    start = data.rindex(b"<iq")
    return etree.fromstring(data[start:data.index(b"</pubsub></iq>", start) + 14])


def summary(iq: etree._Element) -> dict[str, str]:
    form = iq.find(f".//{{{ns.PUSH}}}notification/{{{ns.DATA}}}x")
    assert form is not None
    return {f.get("var"): f.findtext(f"{{{ns.DATA}}}value") or "" for f in form}


def cut(raw: RawClient) -> None:
    assert raw.writer is not None
    raw.writer.transport.abort()


async def detached(users: Users, jid: str, sm_id: str) -> None:
    async def done() -> bool:
        facts = await users.redis.hgetall(keys.sm_facts(jid, sm_id))
        return facts.get(b"deadline", b"0") != b"0"

    await eventually(done, 15, "the session detached")


async def test_xep0357_a_message_for_a_detached_session_reaches_the_app_server(
    cluster: Cluster, users: Users
) -> None:
    user, pw = await users.create("phone")
    app_jid, app_pw = await users.create("appserver")
    friend, friend_pw = await users.create("friend")
    app = RawClient("127.0.0.1", cluster.c2s_port)
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    chatter = Client(f"{friend}/desk", friend_pw)
    try:
        await raw_login(app, app_jid, app_pw, "push")
        sm_id = await raw_sm_login(raw, user, pw, "phone")
        reply = await ask_iq(raw, enable(f"{app_jid}/push", "node-1", include_body=True), "en1")
        assert b'type="result"' in reply, reply
        await raw.send(b"<presence/>")
        await raw.read_until(b"<presence")
        cut(raw)
        await detached(users, user, sm_id)
        await chatter.login("127.0.0.1", cluster.c2s_port)
        chatter.send_message(mto=f"{user}/phone", mbody="are you there?", mtype="chat")
        iq = await next_publish(app)
        assert iq.get("from") == user and iq.get("to") == f"{app_jid}/push"
        publish = iq.find(f"{{{ns.PUBSUB}}}pubsub/{{{ns.PUBSUB}}}publish")
        assert publish is not None and publish.get("node") == "node-1"
        assert summary(iq) == {
            "FORM_TYPE": ns.PUSH_SUMMARY, "message-count": "1",
            "last-message-sender": f"{friend}/desk", "last-message-body": "are you there?",
        }
        options = iq.find(f".//{{{ns.PUBSUB}}}publish-options/{{{ns.DATA}}}x")
        assert options is not None
        sent = {f.get("var"): f.findtext(f"{{{ns.DATA}}}value") for f in options}
        assert sent == {"FORM_TYPE": ns.PUBSUB_PUBLISH_OPTIONS, "secret": "s3cr3t"}
        before = metric_value(cluster.metrics("router-1"),
                              "stanzad_router_push_notifications_total", result="ok")
        await app.send(f"<iq type='result' id='{iq.get('id')}' to='{user}'/>".encode())
        await eventually(lambda: metric_value(
            cluster.metrics("router-1"), "stanzad_router_push_notifications_total",
            result="ok") > before, 15, "the answer counted")
    finally:
        await chatter.logout()
        await raw.close()
        await app.close()


async def test_xep0357_offline_message_notifies_without_body_and_an_error_disables(
    cluster: Cluster, users: Users
) -> None:
    user, pw = await users.create("offline")
    app_jid, app_pw = await users.create("appserver")
    friend, friend_pw = await users.create("friend")
    app = RawClient("127.0.0.1", cluster.c2s_port)
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    chatter = Client(f"{friend}/desk", friend_pw)
    store = PushStore(users.db, "tests")
    try:
        await raw_login(app, app_jid, app_pw, "push")
        await raw_login(raw, user, pw, "phone")
        assert b'type="result"' in await ask_iq(raw, enable(f"{app_jid}/push", "n2"), "en1")
        await raw.send(b"</stream:stream>")
        await raw.read_all()
        await chatter.login("127.0.0.1", cluster.c2s_port)
        chatter.send_message(mto=user, mbody="secret words", mtype="chat")
        iq = await next_publish(app)
        fields = summary(iq)
        assert fields["message-count"] == "1" and "last-message-body" not in fields
        assert b"secret words" not in etree.tostring(iq)  # not allowed by the user
        assert len(await store.registrations(user)) == 1
        await app.send(
            f"<iq type='error' id='{iq.get('id')}' to='{user}'><error type='cancel'>"
            "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            .encode())

        async def disabled() -> bool:
            return await store.registrations(user) == []

        await eventually(disabled, 15, "the registration disabled after the error")
    finally:
        await chatter.logout()
        await raw.close()
        await app.close()


async def test_xep0357_6_disable_and_disco_advertises_push(
    cluster: Cluster, users: Users
) -> None:
    user, pw = await users.create("user")
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    store = PushStore(users.db, "tests")
    try:
        await raw_login(raw, user, pw, "phone")
        info = await ask_iq(raw, f"<iq type='get' id='d1' to='{user}'><query "
                                 "xmlns='http://jabber.org/protocol/disco#info'/></iq>", "d1")
        assert b'var="urn:xmpp:push:0"' in info
        assert b'type="result"' in await ask_iq(raw, enable("push.example.net", "a"), "en1")
        second = enable("push.example.net", "b").replace("en1", "en2")
        assert b'type="result"' in await ask_iq(raw, second, "en2")
        assert {r.node for r in await store.registrations(user)} == {"a", "b"}
        one = await ask_iq(raw, "<iq type='set' id='x1'><disable xmlns='urn:xmpp:push:0' "
                                "jid='push.example.net' node='a'/></iq>", "x1")
        assert b'type="result"' in one
        assert {r.node for r in await store.registrations(user)} == {"b"}
        every = await ask_iq(raw, "<iq type='set' id='x2'><disable xmlns='urn:xmpp:push:0' "
                                  "jid='push.example.net'/></iq>", "x2")
        assert b'type="result"' in every
        assert await store.registrations(user) == []
        bad = await ask_iq(raw, "<iq type='set' id='x3'><enable xmlns='urn:xmpp:push:0' "
                                "jid='push.example.net'/></iq>", "x3")
        assert re.search(rb'type="error".*bad-request', bad, re.S), bad
    finally:
        await raw.close()
