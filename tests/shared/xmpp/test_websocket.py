"""RFC 6455 frames and RFC 7395 framing, without sockets."""

from __future__ import annotations

import os

import pytest
from lxml import etree

from shared.xmpp import bosh
from shared.xmpp.websocket import (
    CLOSE,
    PING,
    PROTOCOL_ERROR,
    TEXT,
    TOO_BIG,
    FrameDecoder,
    Framing,
    WebSocketError,
    accept_key,
    client_open,
    encode_frame,
    is_client_close,
)


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    length = bytes((0x80 | n,)) if n < 126 else bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    return bytes(((0x80 if fin else 0) | opcode,)) + length + mask + body


def test_accept_key_is_rfc6455_section_1_3_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert accept_key("not base64!") is None
    assert accept_key("c2hvcnQ=") is None  # not 16 bytes


def test_frames_split_anywhere_and_fragments_join() -> None:
    data = (masked(TEXT, b"<open/>") + masked(TEXT, b"<mess", fin=False)
            + masked(0, b"age/>") + masked(PING, b"hi"))
    for cut in range(len(data)):
        decoder = FrameDecoder(1024)
        out = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert out == [(TEXT, b"<open/>"), (TEXT, b"<message/>"), (PING, b"hi")]


@pytest.mark.parametrize(("frame", "code"), [
    (encode_frame(TEXT, b"x"), PROTOCOL_ERROR),  # unmasked (§5.1)
    (bytes((0xC1,)) + masked(TEXT, b"x")[1:], PROTOCOL_ERROR),  # RSV1 without an extension
    (masked(CLOSE, b"x", fin=False), PROTOCOL_ERROR),  # a fragmented control frame (§5.5)
    (masked(0, b"x"), PROTOCOL_ERROR),  # a continuation of nothing
    (masked(TEXT, b"x" * 300), TOO_BIG),
], ids=["unmasked", "rsv1", "fragmented-control", "orphan-continuation", "too-big"])
def test_violations_name_their_close_code(frame: bytes, code: int) -> None:
    with pytest.raises(WebSocketError) as exc:
        FrameDecoder(200).feed(frame)
    assert exc.value.code == code


def test_open_and_close_become_the_stream_header_and_end() -> None:
    header = client_open(b'<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" '
                         b'to="example.org" version="1.0" xml:lang="en"/>')
    assert header is not None and header.startswith(b"<stream:stream ")
    assert b'to="example.org"' in header and b'xml:lang="en"' in header
    assert client_open(b"<open/>") is None  # not the framing namespace
    assert client_open(b"<message/>") is None
    assert is_client_close(b'<close xmlns="urn:ietf:params:xml:ns:xmpp-framing"/>')
    assert not is_client_close(b"<close/>")


def test_server_output_is_one_standalone_document_per_message() -> None:
    framing = Framing()
    out = framing.messages(
        b"<?xml version='1.0'?><stream:stream xmlns=\"jabber:client\" xmlns:stream=\"http://"
        b"etherx.jabber.org/streams\" id=\"s1\" from=\"example.org\" version=\"1.0\">"
        b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
        b"<iq type=\"result\" id=\"a&gt;b\"/><message xmlns=\"jabber:client\"><body>1 &lt; 2"
        b"</body></message><iq type=\"error\" id=\"x\"><error type=\"cancel\"/></iq>")
    out += framing.messages(b"</stream:stream>")
    docs = [etree.fromstring(m) for m in out]
    assert [d.tag for d in docs] == [
        "{urn:ietf:params:xml:ns:xmpp-framing}open",
        "{http://etherx.jabber.org/streams}features",
        "{jabber:client}iq", "{jabber:client}message", "{jabber:client}iq",
        "{urn:ietf:params:xml:ns:xmpp-framing}close"]
    assert docs[0].get("id") == "s1" and docs[2].get("id") == "a>b"
    framing.see_other_uri = "wss://b.example/ws"
    assert etree.fromstring(framing.messages(b"</stream:stream>")[0]).get(
        "see-other-uri") == "wss://b.example/ws"


def test_framing_splits_tags_whose_attributes_hold_slashes_and_brackets() -> None:
    """'/' and '>' inside quoted attribute values, a space before '/>', an element split
    across writes: each message still one whole element (RFC 7395 §3.3.3)."""
    framing = Framing()
    out = framing.messages(
        b"<message to='a@b/c/d' id='x/>y'><body>a/b</body><x xmlns=\"u:v\" href=\"http://h/p\""
        b" /></message><iq id='1' type='result' /><presence from='a@b/r'><x/></pres")
    out += framing.messages(b"ence>")
    docs = [etree.fromstring(m) for m in out]
    assert [d.tag for d in docs] == ["{jabber:client}message", "{jabber:client}iq",
                                     "{jabber:client}presence"]
    assert docs[0].get("id") == "x/>y" and docs[0].findtext("{jabber:client}body") == "a/b"
    assert docs[0].find("{u:v}x").get("href") == "http://h/p"


def test_bosh_body_attributes_and_payload() -> None:
    body = bosh.parse_request(
        b"<body rid='42' sid='s' xmpp:restart='true' xmlns='http://jabber.org/protocol/"
        b"httpbind' xmlns:xmpp='urn:xmpp:xbosh'><message to='a@b'/></body>")
    assert body.rid == 42 and body.get("xmpp:restart") == "true"
    assert body.payload == b"<message to='a@b'/>"
    assert bosh.parse_request(b"<body rid='1' xmlns='http://jabber.org/protocol/httpbind'/>"
                              ).payload == b""
    for bad in (b"<notbody/>", b"<body rid='1'/>", b"<body xmlns='http://jabber.org/protocol/"
                b"httpbind'><message/>"):
        with pytest.raises(bosh.BadBody):
            bosh.parse_request(bad)
