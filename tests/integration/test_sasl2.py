"""Modern logins through a connection manager, as raw streams: SCRAM-*-PLUS with each channel
binding type (RFC 5802 §6, RFC 5929, RFC 9266) advertised with XEP-0440 and covered by the
XEP-0474 hash, SASL2 (XEP-0388) with Bind2 (XEP-0386) in one round trip, and FAST
(XEP-0484) reconnects without the password.

The client's binding data: tls-exporter from `shared.tls.binding.exporter` on the client's own
TLS object (checked against pyOpenSSL's in tests/shared/tls/test_binding.py), tls-unique
from CPython's ``ssl``, tls-server-end-point hashed here from the certificate the client got.
"""

from __future__ import annotations

import base64
import hashlib
import re
import ssl
import uuid
from typing import Any

import aiohttp
import pytest

from shared.store import keys
from shared.store.fast_tokens import FastTokenStore
from shared.tls.binding import exporter
from shared.xmpp import fast
from shared.xmpp.sasl import ssdp_hash
from tests.conftest import ADMIN_TOKEN, Users
from tests.support.cluster import Cluster
from tests.support.scram import ManualClient
from tests.support.xmpp import RawClient, insecure_context

SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
SASL2 = "urn:xmpp:sasl:2"


def _context(tls12: bool) -> ssl.SSLContext:
    ctx = insecure_context()
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _binding(client: RawClient, kind: str) -> bytes:
    assert client.writer is not None
    tls = client.writer.get_extra_info("ssl_object")
    assert isinstance(tls, ssl.SSLObject)
    if kind == "tls-exporter":
        data = exporter(tls)
    elif kind == "tls-unique":
        data = tls.get_channel_binding("tls-unique")
    else:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        data = hashlib.sha256(der).digest()  # the test certificate is ECDSA with SHA-256
    assert data
    return data


def _with_from(header: bytes, jid: str) -> bytes:
    return header.replace(b"<stream:stream ", f"<stream:stream from='{jid}' ".encode())


async def _open(cluster: Cluster, tls12: bool = False, local: str = "") -> tuple[RawClient, bytes]:
    """STARTTLS, then the features of the protected stream."""
    client = RawClient("127.0.0.1", cluster.c2s_port)
    await client.open()
    await client.starttls(_context(tls12))
    header = client.header()
    if local:  # XEP-0388 §2.1: the JID the client authenticates for
        header = _with_from(header, f"{local}@localhost")
    await client.send(header)
    return client, await client.read_until(b"</stream:features>")


def _list(features: bytes, pattern: str) -> tuple[str, ...]:
    return tuple(m.decode() for m in re.findall(pattern.encode(), features))


def _sasl1_mechanisms(features: bytes) -> tuple[str, ...]:
    block = features.split(b"<mechanisms", 1)[1].split(b"</mechanisms>", 1)[0]
    return _list(block, r"<mechanism>([^<]+)</mechanism>")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _element_text(data: bytes, name: str) -> bytes:
    found = re.search(f"<{name}[^>]*>([^<]*)</{name}>".encode(), data)
    assert found, data
    return found.group(1)


@pytest.mark.parametrize(("kind", "tls12"), [("tls-exporter", False),
                                             ("tls-server-end-point", False),
                                             ("tls-exporter", True), ("tls-unique", True)])
async def test_scram_plus_login_with_each_binding_type(cluster: Cluster, users: Users,
                                                       kind: str, tls12: bool) -> None:
    jid, password = await users.create("plus")
    local = jid.partition("@")[0]
    client, features = await _open(cluster, tls12)
    try:
        types = _list(features, r'<channel-binding type="([^"]+)"/>')  # XEP-0440
        assert kind in types
        assert ("tls-unique" in types) is tls12  # RFC 9266 §1: never on TLS 1.3
        mechanisms = _sasl1_mechanisms(features)
        assert mechanisms[:2] == ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS")
        scram = ManualClient("SCRAM-SHA-256-PLUS", local, password, f"p={kind},,",
                             binding_data=_binding(client, kind))
        await client.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256-PLUS'>"
                          f"{_b64(scram.first())}</auth>".encode())
        challenge = base64.b64decode(_element_text(await client.read_until(b"</challenge>"),
                                                   "challenge"))
        await client.send(f"<response xmlns='{SASL}'>{_b64(scram.final(challenge))}"
                          "</response>".encode())
        answer = await client.read_until(b"</success>")
        scram.check_final(base64.b64decode(_element_text(answer, "success")))
        # XEP-0474 §5.1: the hash of what was advertised, signed by the exchange
        assert scram.server_first["h"] == ssdp_hash(mechanisms, types, "sha256")
    finally:
        await client.close()


@pytest.mark.parametrize("kind", ["tls-exporter", "tls-server-end-point"])
async def test_scram_plus_with_another_connections_binding_is_refused(
        cluster: Cluster, users: Users, kind: str) -> None:
    """A man in the middle relays the exchange over its own TLS connection to us: the
    binding the client computed is of another channel (RFC 5802 §6)."""
    jid, password = await users.create("mitm")
    local = jid.partition("@")[0]
    client, _ = await _open(cluster)
    other, _ = await _open(cluster)
    try:
        data = _binding(other, kind)
        if kind == "tls-server-end-point":
            data = hashlib.sha256(b"the certificate the man in the middle showed").digest()
        scram = ManualClient("SCRAM-SHA-1-PLUS", local, password, f"p={kind},,",
                             binding_data=data)
        await client.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1-PLUS'>"
                          f"{_b64(scram.first())}</auth>".encode())
        challenge = base64.b64decode(_element_text(await client.read_until(b"</challenge>"),
                                                   "challenge"))
        await client.send(f"<response xmlns='{SASL}'>{_b64(scram.final(challenge))}"
                          "</response>".encode())
        answer = await client.read_until(b"</failure>", timeout=20)
        assert b"<not-authorized/>" in answer and b"<success" not in answer
    finally:
        await client.close()
        await other.close()


def _authenticate(mechanism: str, initial: bytes, agent: str, *, extra: str = "",
                  bind: bool = True) -> bytes:
    bind_xml = ("<bind xmlns='urn:xmpp:bind:0'><tag>Tester</tag>"
                "<enable xmlns='urn:xmpp:carbons:2'/><inactive xmlns='urn:xmpp:csi:0'/>"
                "<enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>") if bind else ""
    return (f"<authenticate xmlns='{SASL2}' mechanism='{mechanism}'>"
            f"<initial-response>{_b64(initial)}</initial-response>"
            f"<user-agent id='{agent}'><software>stanzad tests</software></user-agent>"
            f"{bind_xml}{extra}</authenticate>").encode()


def _bound_jid(answer: bytes) -> str:
    return _element_text(answer, "authorization-identifier").decode()


async def test_sasl2_bind2_login_in_one_round_trip(cluster: Cluster, users: Users) -> None:
    """XEP-0388 + XEP-0386: the stream header and <authenticate/> with a bind request go in
    one write; one answer brings the bound session (SM on inline, carbons on), with no
    restart; the same user-agent id gets the same resource next time."""
    jid, password = await users.create("sasl2")
    local = jid.partition("@")[0]
    agent = str(uuid.uuid4())
    resources = []
    for _ in range(2):
        client = RawClient("127.0.0.1", cluster.c2s_port)
        await client.open()
        await client.starttls()
        header = _with_from(client.header(), jid)
        await client.send(header + _authenticate("PLAIN", f"\0{local}\0{password}".encode(),
                                                 agent))  # the only write before the answer
        try:
            answer = await client.read_until(b"</success>")
            features, _, rest = answer.partition(b"</stream:features>")
            assert b'<authentication xmlns="urn:xmpp:sasl:2">' in features
            assert b'<bind xmlns="urn:xmpp:bind:0">' in features
            full = _bound_jid(rest)
            bare, _, resource = full.partition("/")
            assert bare == jid and resource.startswith("Tester/")
            assert agent not in resource  # XEP-0386 §3.3: never the user-agent id itself
            assert b'<bound xmlns="urn:xmpp:bind:0"><enabled xmlns="urn:xmpp:sm:3"' in rest
            assert b'resume="true"' in rest
            after = rest.partition(b"</success>")[2]
            if b"</stream:features>" not in after:
                after += await client.read_until(b"</stream:features>")
            assert b"<stream:features>" in after  # no restart; nothing left to bind
            assert b"xmpp-bind" not in after and b"<stream:stream" not in after
            record = await users.redis.hget(keys.sessions(jid), resource)
            assert record is not None and record.endswith(b" 1")  # carbons on, inline
            await client.send(b"<iq type='get' id='ping1'><ping xmlns='urn:xmpp:ping'/></iq>")
            assert b'id="ping1"' in await client.read_until(b'id="ping1"')
            resources.append(resource)
        finally:
            await client.close()
    assert resources[0] == resources[1]  # a stable resource for the same client


async def test_sasl2_with_scram_plus(cluster: Cluster, users: Users) -> None:
    jid, password = await users.create("sasl2plus")
    local = jid.partition("@")[0]
    client, features = await _open(cluster, local=local)
    try:
        block = features.split(b"<authentication", 1)[1].split(b"</authentication>", 1)[0]
        mechanisms = _list(block.split(b"<inline>")[0], r"<mechanism>([^<]+)</mechanism>")
        types = _list(features, r'<channel-binding type="([^"]+)"/>')
        scram = ManualClient("SCRAM-SHA-256-PLUS", local, password, "p=tls-exporter,,",
                             binding_data=_binding(client, "tls-exporter"))
        await client.send(_authenticate("SCRAM-SHA-256-PLUS", scram.first(), str(uuid.uuid4())))
        challenge = await client.read_until(b"</challenge>")
        assert f'<challenge xmlns="{SASL2}">'.encode() in challenge
        data = base64.b64decode(_element_text(challenge, "challenge"))
        await client.send(f"<response xmlns='{SASL2}'>{_b64(scram.final(data))}"
                          "</response>".encode())
        answer = await client.read_until(b"</success>")
        scram.check_final(base64.b64decode(_element_text(answer, "additional-data")))
        assert scram.server_first["h"] == ssdp_hash(mechanisms, types, "sha256")
        assert _bound_jid(answer).startswith(jid + "/Tester/")
    finally:
        await client.close()


async def _fast_login(cluster: Cluster, local: str, token: str, mechanism: str, agent: str,
                      *, extra: str = "", binding: str | None = "tls-exporter") -> bytes:
    """A FAST login in one round trip: the answer (<success/> or <failure/>)."""
    client, _ = await _open(cluster, local=local)
    try:
        cb = _binding(client, binding) if binding else b""
        await client.send(_authenticate(
            mechanism, fast.initiator_message(local, token, cb), agent,
            extra=f"<fast xmlns='urn:xmpp:fast:0'/>{extra}"))
        # </success> or </failure>; a failure's answer is delayed (XEP-0205, README)
        answer = b""
        while b"</success>" not in answer and b"</failure>" not in answer:
            answer += await client.read_until(b">", timeout=30)
        if b"<success" in answer:
            # XEP-0484 §4.4: HT's answer proves that the server knew the token
            data = base64.b64decode(_element_text(answer, "additional-data"))
            assert data == fast.responder_data(token, cb)
        return answer
    finally:
        await client.close()


async def _admin(method: str, cluster: Cluster, path: str) -> Any:
    url, token = cluster.admin()
    assert token == ADMIN_TOKEN
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        http.request(method, url + path, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_fast_reconnect_without_the_password(cluster: Cluster, users: Users) -> None:
    """XEP-0484: a password login asks for a token (HT-SHA-256-EXPR: bound to the TLS
    channel); the next logins use the token alone, one round trip each; it is tied to its
    mechanism and channel, rotates into "current" when used, and is revoked by the admin."""
    jid, password = await users.create("fast")
    local = jid.partition("@")[0]
    agent = str(uuid.uuid4())
    client, features = await _open(cluster, local=local)
    try:
        fast_block = features.split(b'<fast xmlns="urn:xmpp:fast:0">', 1)[1].split(b"</fast>")[0]
        assert _list(fast_block, r"<mechanism>([^<]+)</mechanism>") == (
            "HT-SHA-256-EXPR", "HT-SHA-256-ENDP", "HT-SHA-256-NONE")  # TLS 1.3: no -UNIQ
        await client.send(_authenticate(
            "PLAIN", f"\0{local}\0{password}".encode(), agent,
            extra="<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-EXPR'/>"))
        answer = await client.read_until(b"</success>")
        issued = re.search(rb'<token xmlns="urn:xmpp:fast:0" token="([^"]+)" expiry="([^"]+)"/>',
                           answer)
        assert issued, answer
        token = issued.group(1).decode()
    finally:
        await client.close()
    store = FastTokenStore(users.db)
    rows = await store.list(jid)
    assert [(r.client_id, r.slot, r.mechanism) for r in rows] == [(agent, "new",
                                                                   "HT-SHA-256-EXPR")]
    assert token.encode() not in rows[0].token_id + rows[0].token_hash  # stored hashed
    assert rows[0].token_hash == fast.token_hash(token)

    answer = await _fast_login(cluster, local, token, "HT-SHA-256-EXPR", agent)
    assert b"<success" in answer and _bound_jid(answer).startswith(jid + "/Tester/")
    assert [r.slot for r in await store.list(jid)] == ["current"]  # XEP-0484 §8.1
    again = await _fast_login(cluster, local, token, "HT-SHA-256-EXPR", agent)
    assert b"<success" in again

    # tied to its mechanism (§4.4), to the channel, to the client, to the account
    for attempt in (
        _fast_login(cluster, local, token, "HT-SHA-256-NONE", agent, binding=None),
        _fast_login(cluster, local, "not-the-token", "HT-SHA-256-EXPR", agent),
        _fast_login(cluster, local, token, "HT-SHA-256-EXPR", str(uuid.uuid4())),
    ):
        refused = await attempt
        assert b"<failure" in refused and b"<not-authorized" in refused, refused

    listed = await _admin("GET", cluster, f"/api/v1/users/{jid}/tokens")
    assert [(t["client_id"], t["slot"]) for t in listed["tokens"]] == [(agent, "current")]
    assert "token" not in listed["tokens"][0]
    assert (await _admin("DELETE", cluster, f"/api/v1/users/{jid}/tokens"))["revoked"] == 1
    revoked = await _fast_login(cluster, local, token, "HT-SHA-256-EXPR", agent)
    assert b"<failure" in revoked and b"<not-authorized" in revoked
