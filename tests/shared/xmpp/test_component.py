"""The external component stream (XEP-0114), sans-I/O (shared/xmpp/component.py)."""

from __future__ import annotations

import re

from shared.xmpp.component import (
    Authenticated,
    AuthFailed,
    ComponentConfig,
    ComponentStream,
    handshake_digest,
)
from shared.xmpp.s2s import StanzaIn
from shared.xmpp.stream_io import StreamEnded

CONFIG = ComponentConfig({"bot.example.com": "s3cret"}, max_stanza_bytes=4096)
HEADER = ("<stream:stream xmlns='jabber:component:accept' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='{}'>")


def _events(stream: ComponentStream) -> list[object]:
    out = []
    while (event := stream.next_event()) is not None:
        out.append(event)
    return out


def _open(domain: str = "bot.example.com") -> tuple[ComponentStream, bytes]:
    stream = ComponentStream(CONFIG)
    stream.receive_data(HEADER.format(domain).encode())
    assert _events(stream) == []
    return stream, stream.data_to_send()


def _authenticated() -> ComponentStream:
    stream, header = _open()
    sid = re.search(rb" id='([^']+)'", header) or re.search(rb' id="([^"]+)"', header)
    assert sid is not None
    digest = handshake_digest(sid.group(1).decode(), "s3cret")
    stream.receive_data(f"<handshake>{digest}</handshake>".encode())
    assert _events(stream) == [Authenticated("bot.example.com")]
    assert stream.data_to_send().endswith(b"/>") and stream.authenticated
    return stream


def test_xep0114_3_header_names_the_domain_and_the_right_handshake_is_accepted() -> None:
    _, header = _open()
    assert b"jabber:component:accept" in header and b"bot.example.com" in header
    assert b"<stream:features" not in header  # XEP-0114: no features
    _authenticated()


def test_xep0114_3_1_wrong_secret_is_not_authorized() -> None:
    stream, _ = _open()
    stream.receive_data(b"<handshake>" + handshake_digest("x", "wrong").encode() + b"</handshake>")
    events = _events(stream)
    assert events[0] == AuthFailed("bot.example.com", "bad-handshake")
    assert isinstance(events[1], StreamEnded) and events[1].error is not None
    assert events[1].error.value == "not-authorized"
    assert b"<not-authorized" in stream.data_to_send()


def test_unknown_domain_is_host_unknown() -> None:
    stream = ComponentStream(CONFIG)
    stream.receive_data(HEADER.format("nobody.example.com").encode())
    events = _events(stream)
    assert events[0] == AuthFailed("nobody.example.com", "unknown-domain")
    assert isinstance(events[1], StreamEnded) and events[1].error is not None
    assert events[1].error.value == "host-unknown"
    assert b"<host-unknown" in stream.data_to_send()


def test_stanza_before_handshake_is_not_authorized() -> None:
    stream, _ = _open()
    stream.receive_data(b"<message from='bot.example.com' to='a@example.com'/>")
    [ended] = _events(stream)
    assert isinstance(ended, StreamEnded) and ended.error is not None
    assert ended.error.value == "not-authorized"


def test_stanzas_become_jabber_client_and_from_must_be_the_domain() -> None:
    stream = _authenticated()
    stream.receive_data(b"<message from='weather@bot.example.com/x' to='juliet@example.com' "
                        b"type='chat' id='m1'><body>sunny</body></message>")
    [st] = _events(stream)
    assert isinstance(st, StanzaIn) and st.kind == "message" and st.type == "chat"
    assert str(st.to) == "juliet@example.com" and str(st.from_) == "weather@bot.example.com/x"
    assert b'xmlns="jabber:client"' in st.payload and b"<body>sunny</body>" in st.payload
    stream.receive_data(b"<message from='x@other.example.com' to='juliet@example.com'/>")
    [ended] = _events(stream)
    assert isinstance(ended, StreamEnded) and ended.error is not None
    assert ended.error.value == "invalid-from"


def test_missing_to_is_improper_addressing() -> None:
    stream = _authenticated()
    stream.receive_data(b"<iq from='bot.example.com' type='get' id='1'/>")
    [ended] = _events(stream)
    assert isinstance(ended, StreamEnded) and ended.error is not None
    assert ended.error.value == "improper-addressing"


def test_send_writes_in_the_component_namespace() -> None:
    stream = _authenticated()
    stream.send(b'<message xmlns="jabber:client" to="bot.example.com" from="a@example.com">'
                b"<body>hi</body></message>", 4096)
    out = stream.data_to_send()
    assert b'xmlns="jabber:component:accept"' in out and b"jabber:client" not in out


def test_stanza_size_limit_after_handshake() -> None:
    stream = _authenticated()
    stream.receive_data(b"<message from='bot.example.com' to='a@example.com'><body>"
                        + b"x" * 5000 + b"</body></message>")
    [ended] = _events(stream)
    assert isinstance(ended, StreamEnded) and ended.error is not None
    assert ended.error.value == "policy-violation"
