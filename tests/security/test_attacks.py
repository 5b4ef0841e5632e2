"""Every known attack class against the c2s edge, over a real socket to a running connection
manager, with the exact RFC reaction; afterwards the same connection manager still logs in a
normal slixmpp client (RFC 6120 §11 restricted XML, §13 security considerations).

Unit tests of the same classes are in tests/shared/xmpp/test_parser.py and test_c2s.py; these
prove that the assembled server reacts the same way on the wire.  Inputs that fail
authentication come from their own loopback addresses so that the per-address failure
counters (XEP-0205) of one test never touch another.
"""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from scramp import ScramClient

from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.xmpp import Client, RawClient, new_source, raw_login

HOST = "127.0.0.1"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


async def _still_serves(port: int, users: Users) -> None:
    """A normal slixmpp client logs in on the same connection manager."""
    jid, pw = await users.create()
    client = Client(jid + "/after", pw, source=new_source())
    await client.login(HOST, port)
    await client.logout()


def _laughs() -> bytes:
    ents = ['<!ENTITY l0 "lol">'] + [
        f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10)
    ]
    return ("<?xml version='1.0'?><!DOCTYPE lolz [" + "".join(ents) + "]>").encode()


# (id, bytes before the stream header, bytes after it, stream error condition)
PRE_AUTH = [
    ("rfc6120_11_1_billion_laughs", _laughs(), b"<message>&l9;</message>", "restricted-xml"),
    ("rfc6120_11_1_external_entity_in_prolog",
     b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>", b"",
     "restricted-xml"),
    ("rfc6120_11_1_external_entity_reference", b"", b"<message><body>&e;</body></message>",
     "restricted-xml"),
    ("rfc6120_11_1_doctype_inside_the_stream", b"", b"<!DOCTYPE stream SYSTEM 'http://x/'>",
     "restricted-xml"),
    ("rfc6120_11_1_comment", b"", b"<!-- hello -->", "restricted-xml"),
    ("rfc6120_11_1_processing_instruction", b"", b"<?php evil() ?>", "restricted-xml"),
    ("rfc6120_11_6_invalid_utf8", b"", b"<message><body>\xc3\x28\xff</body></message>",
     "not-well-formed"),
    ("rfc6120_11_6_nul_byte", b"", b"<message><body>a\x00b</body></message>",
     "not-well-formed"),
    ("rfc6120_11_6_restricted_character", b"", b"<message><body>a\x01b</body></message>",
     "not-well-formed"),
    ("rfc6120_11_6_restricted_character_reference", b"",
     b"<message><body>&#1;</body></message>", "not-well-formed"),
    ("rfc6120_13_12_deep_nesting", b"", b"<message>" + b"<a>" * 200, "policy-violation"),
    ("rfc6120_13_12_thousands_of_attributes", b"",
     b"<message" + b"".join(b" a%d='x'" % i for i in range(3000)) + b"/>", "policy-violation"),
    ("rfc6120_13_12_stanza_that_grows_forever", b"", b"<message><body>" + b"a" * 20_000,
     "policy-violation"),
    ("rfc6120_4_3_3_second_stream_header", b"",
     b"<stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
     b"xmlns:stream='http://etherx.jabber.org/streams'>", "unsupported-stanza-type"),
    ("rfc6120_6_4_stanza_before_auth", b"",
     b"<message to='someone@localhost'><body>hi</body></message>", "not-authorized"),
    ("xep0138_compression_request_not_offered", b"",
     b"<compress xmlns='http://jabber.org/protocol/compress'><method>zlib</method></compress>",
     "unsupported-stanza-type"),
]


@pytest.mark.parametrize(("prolog", "payload", "condition"),
                         [case[1:] for case in PRE_AUTH], ids=[case[0] for case in PRE_AUTH])
async def test_pre_auth_attack_gets_the_rfc_stream_error(
    cluster: Cluster, users: Users, prolog: bytes, payload: bytes, condition: str
) -> None:
    raw = RawClient(HOST, cluster.c2s_port, source=new_source())
    try:
        await raw.open()
        header = raw.header()
        if prolog:
            header = prolog + header.removeprefix(b"<?xml version='1.0'?>")
        await raw.send(header + payload)
        data = await raw.expect_stream_error(condition)
        assert b"compression" not in data  # XEP-0138 is never offered
    finally:
        await raw.close()
    await _still_serves(cluster.c2s_port, users)


async def test_rfc6120_5_4_2_2_starttls_twice_is_failure_and_close(
    cluster: Cluster, users: Users
) -> None:
    raw = RawClient(HOST, cluster.c2s_port, source=new_source())
    try:
        await raw.open()
        await raw.starttls()
        await raw.send(raw.header())
        features = await raw.read_until(b"</stream:features>")
        assert b"starttls" not in features
        await raw.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        data = await raw.read_all()
        assert data.endswith(b'<failure xmlns="urn:ietf:params:xml:ns:xmpp-tls"/></stream:stream>')
    finally:
        await raw.close()
    await _still_serves(cluster.c2s_port, users)


async def test_rfc6120_7_1_stanza_before_bind_is_not_authorized(
    cluster: Cluster, users: Users
) -> None:
    jid, pw = await users.create()
    raw = RawClient(HOST, cluster.c2s_port, source=new_source())
    try:
        await raw.open()
        await raw.starttls()
        assert b"<success" in await raw.auth_plain(jid, pw)
        await raw.send(raw.header())
        await raw.read_until(b"</stream:features>")
        await raw.send(f"<message to='{jid}'><body>early</body></message>".encode())
        await raw.expect_stream_error("not-authorized")
    finally:
        await raw.close()
    await _still_serves(cluster.c2s_port, users)


async def _scram_challenge(raw: RawClient, first: str) -> bytes:
    await raw.open()
    await raw.starttls()
    await raw.send(raw.header())
    await raw.read_until(b"</stream:features>")
    token = base64.b64encode(first.encode()).decode()
    await raw.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{token}</auth>".encode())
    reply = await raw.read_until_any((b"</challenge>", b"</failure>"))
    return reply


def _challenge_data(reply: bytes) -> str:
    return base64.b64decode(reply.split(b">", 1)[1].split(b"<", 1)[0]).decode()


async def test_rfc6120_6_4_6_scram_with_a_forged_authzid_is_invalid_authzid(
    cluster: Cluster, users: Users
) -> None:
    jid, _pw = await users.create()
    victim, _ = await users.create()
    local = jid.partition("@")[0]
    raw = RawClient(HOST, cluster.c2s_port, source=new_source())
    try:
        reply = await _scram_challenge(raw, f"n,a={victim},n={local},r=abcdefghijklmnop")
        assert b"<invalid-authzid/>" in reply and b"<success" not in reply
    finally:
        await raw.close()
    await _still_serves(cluster.c2s_port, users)


@pytest.mark.parametrize("tamper", ["nonce", "proof"])
async def test_rfc5802_scram_with_a_wrong_nonce_or_proof_is_not_authorized(
    cluster: Cluster, users: Users, tamper: str
) -> None:
    jid, pw = await users.create()
    client = ScramClient(["SCRAM-SHA-256"], jid.partition("@")[0], pw)
    raw = RawClient(HOST, cluster.c2s_port, source=new_source())
    try:
        server_first = _challenge_data(await _scram_challenge(raw, client.get_client_first()))
        client.set_server_first(server_first)
        final = client.get_client_final()
        fields = dict(part.split("=", 1) for part in final.split(","))
        if tamper == "nonce":
            fields["r"] = fields["r"][:-1] + ("A" if fields["r"][-1] != "A" else "B")
        else:
            proof = bytearray(base64.b64decode(fields["p"]))
            proof[0] ^= 0x01
            fields["p"] = base64.b64encode(bytes(proof)).decode()
        forged = ",".join(f"{k}={v}" for k, v in fields.items())
        token = base64.b64encode(forged.encode()).decode()
        await raw.send(f"<response xmlns='{SASL}'>{token}</response>".encode())
        reply = await raw.read_until(b"</failure>")
        assert f'<failure xmlns="{SASL}"><not-authorized/></failure>'.encode() in reply
        assert b"<success" not in reply
    finally:
        await raw.close()
    await _still_serves(cluster.c2s_port, users)


async def test_rfc6120_8_1_2_1_from_of_another_user_is_invalid_from(
    cluster: Cluster, users: Users
) -> None:
    jid, pw = await users.create()
    other, _ = await users.create()
    raw = RawClient(HOST, cluster.c2s_port, source=new_source())
    try:
        await raw_login(raw, jid, pw)
        await raw.send(
            f"<message from='{other}/x' to='{other}'><body>spoof</body></message>".encode()
        )
        await raw.expect_stream_error("invalid-from")
    finally:
        await raw.close()
    await _still_serves(cluster.c2s_port, users)


async def test_rfc6120_11_2_prefixed_stanza_cannot_smuggle_a_second_stanza(
    cluster: Cluster, users: Users
) -> None:
    """Parser differentials: the server re-serialises what it parsed, so markup hidden in
    text, CDATA or a prefixed element reaches the recipient as text of one stanza only."""
    (alice, alice_pw), (bob, bob_pw), (carol, carol_pw) = [await users.create() for _ in "abc"]
    sender = RawClient(HOST, cluster.c2s_port, source=new_source())
    recipient = RawClient(HOST, cluster.c2s_port, source=new_source())
    bystander = RawClient(HOST, cluster.c2s_port, source=new_source())
    try:
        await raw_login(sender, alice, alice_pw, resource="s")
        await raw_login(recipient, bob, bob_pw, resource="r")
        await raw_login(bystander, carol, carol_pw, resource="v")
        smuggled = f"</c:body></c:message><message to='{carol}/v' from='{bob}/r'>owned</message>"
        await sender.send(
            f"<c:message xmlns:c='jabber:client' to='{bob}/r' type='chat' id='s1'>"
            f"<c:body>&lt;/c:body&gt;<![CDATA[{smuggled}]]></c:body></c:message>".encode()
        )
        got = await recipient.read_until(b"</c:message>")
        assert got.count(b"<c:message") == 1 and got.count(b"<message") == 0
        assert f'from="{alice}/s"'.encode() in got
        assert b"&lt;/c:message&gt;&lt;message to=" in got  # the markup arrives as text
        with pytest.raises(TimeoutError):
            await bystander.read_until(b"owned", timeout=1.0)
    finally:
        for raw in (sender, recipient, bystander):
            await raw.close()
    await _still_serves(cluster.c2s_port, users)


async def test_rfc6120_13_12_slowloris_unclosed_tag_is_cut_at_the_auth_timeout(
    cluster: Cluster, tight_cm: int, users: Users
) -> None:
    raw = RawClient(HOST, tight_cm, source=new_source())
    try:
        await raw.open()
        await raw.send(raw.header())
        await raw.read_until(b"</stream:features>")
        started = time.monotonic()

        async def drip() -> None:
            for byte in b"<message to='x@localhost' id='" + b"a" * 100:
                await raw.send(bytes([byte]))
                await asyncio.sleep(0.2)

        dripping = asyncio.create_task(drip())
        try:
            await raw.expect_stream_error("connection-timeout", timeout=30)  # a hang guard
        finally:
            dripping.cancel()
        print(f"cut {time.monotonic() - started:.2f} s after the header "
              "(STANZAD_AUTH_TIMEOUT_S=2 on cm-tight)")
    finally:
        await raw.close()
    await _still_serves(tight_cm, users)


async def test_rfc6120_13_12_stanza_that_grows_forever_after_auth(
    cluster: Cluster, tight_cm: int, users: Users
) -> None:
    jid, pw = await users.create()
    raw = RawClient(HOST, tight_cm, source=new_source())
    try:
        await raw_login(raw, jid, pw)
        await raw.send(b"<message to='" + jid.encode() + b"'><body>" + b"g" * 6000)
        await raw.expect_stream_error("policy-violation")  # STANZAD_MAX_STANZA_BYTES=4096
    finally:
        await raw.close()
    await _still_serves(tight_cm, users)
