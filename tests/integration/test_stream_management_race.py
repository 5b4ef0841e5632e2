"""XEP-0198 §5 resumption racing a new bind of the same resource (issue 16): a `<resume/>` and
a bind of the session's full JID sent at the same moment, on two connection managers, end
with exactly one session owning the full JID.

This server's policy for a bind of a resource in use is RFC 6120 §7.7.2.2 (1): the new
session wins and the active one is terminated with a `<conflict/>` stream error.  So the bind
always gets its JID, and the resume either fails with `<failed><item-not-found/></failed>`
(the bind reached the session table first) or succeeds and is then closed with `<conflict/>`
(the resume committed first).  Never both alive: a resume that succeeds after the bind would
be a second writer for the full JID."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from shared.store import keys
from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.xmpp import Client, RawClient, eventually, raw_auth, raw_sm_login

SM_NS = "urn:xmpp:sm:3"
CONFLICT = b'<stream:error><conflict xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>'
OTHER = "cm-sm-race"
ROUNDS = 3  # per placement; the order of the two varies with the moment each one lands


@pytest.fixture(scope="module")
def race_port(cluster: Cluster) -> int:
    return cluster.start_cm(OTHER)


def cut(raw: RawClient) -> None:
    assert raw.writer is not None
    raw.writer.transport.abort()


async def staggered(first: Awaitable[None], second: Awaitable[None], delay_s: float) -> None:
    """`first`, and `second` `delay_s` later (0: both in the same event-loop turn)."""

    async def later() -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        await second

    await asyncio.gather(first, later())


@pytest.mark.parametrize(
    ("resume_at", "bind_at"),
    [("other", "owner"), ("owner", "other"), ("other", "other")],
    ids=["resume-elsewhere-bind-at-owner", "resume-at-owner-bind-elsewhere",
         "resume-and-bind-on-the-same-other-cm"],
)
async def test_xep0198_5_resume_racing_a_new_bind_of_the_resource_one_winner(
    cluster: Cluster, users: Users, race_port: int, resume_at: str, bind_at: str
) -> None:
    ports = {"owner": cluster.c2s_port, "other": race_port}
    cms = {"owner": "cm-1", "other": OTHER}
    outcomes = []
    for n, delay_s in enumerate([0.0, 0.02, -0.02][:ROUNDS]):
        jid, pw = await users.create("race")
        full = f"{jid}/contested"
        owner = RawClient("127.0.0.1", ports["owner"])
        resumer = RawClient("127.0.0.1", ports[resume_at])
        binder = RawClient("127.0.0.1", ports[bind_at])
        prober = Client(f"{jid}/prober", pw)
        try:
            sm_id = await raw_sm_login(owner, jid, pw, "contested")
            cut(owner)

            async def detached(sm_id: str = sm_id, jid: str = jid) -> bool:
                facts = await users.redis.hgetall(keys.sm_facts(jid, sm_id))
                return facts.get(b"deadline", b"0") != b"0"

            await eventually(detached, timeout=15, what="the detached session's facts")
            await asyncio.gather(raw_auth(resumer, jid, pw), raw_auth(binder, jid, pw))
            resume = resumer.send(
                f"<resume xmlns='{SM_NS}' previd='{sm_id}' h='0'/>".encode()
            )
            bind = binder.send(
                b"<iq type='set' id='race'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                b"<resource>contested</resource></bind></iq>"
            )
            if delay_s >= 0:
                await staggered(resume, bind, delay_s)
            else:
                await staggered(bind, resume, -delay_s)
            # RFC 6120 §7.7.2.2 (1): the new bind always gets the resource
            assert f"<jid>{full}</jid>".encode() in await binder.read_until(b"</iq>", 15)
            answer = await resumer.read_until(SM_NS.encode(), 15)
            if b"<failed" in answer:
                if b"</failed>" not in answer:
                    answer += await resumer.read_until(b"</failed>", 15)
                assert b"<item-not-found" in answer, answer
                outcomes.append("failed")
            else:
                assert b"<resumed" in answer, answer
                if b"</stream:stream>" not in answer:
                    answer += await resumer.read_all(timeout=15)
                assert CONFLICT in answer, answer[-600:]  # the active session terminated
                outcomes.append("resumed, then conflict")

            async def one_owner(jid: str = jid) -> bool:  # the session table names the bind
                record = (await users.redis.hgetall(keys.sessions(jid))).get(b"contested", b"")
                return record.startswith(f"{cms[bind_at]} ".encode())

            await eventually(one_owner, timeout=15, what="the bind's record")
            # one writer: what is sent to the full JID reaches the new session, and the
            # resumed stream (if any) is closed; the losing resume's stream has no session
            await prober.login("127.0.0.1", ports["owner"])
            prober.send_message(mto=full, mbody=f"probe {n}", mtype="chat")
            assert f"probe {n}".encode() in await binder.read_until(f"probe {n}".encode(), 15)
        finally:
            await asyncio.gather(prober.logout(), owner.close(), resumer.close(),
                                 binder.close(), return_exceptions=True)
    print(resume_at, bind_at, outcomes)
