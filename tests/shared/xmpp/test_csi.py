"""XEP-0352: which stanzas an inactive client waits for, and the stream's part."""

from __future__ import annotations

from shared.xmpp import csi
from shared.xmpp.c2s import ClientState
from tests.shared.xmpp.test_c2s import CREDS, HEADER, after_tls, authenticated, bound, events, plain


def test_presence_waits_keyed_by_sender_full_jid() -> None:
    one = csi.hold_key(b'<presence xmlns="jabber:client" from="b@x/1"><status>a</status>'
                       b"</presence>")
    two = csi.hold_key(b'<presence xmlns="jabber:client" from="b@x/1" type="unavailable"/>')
    other = csi.hold_key(b'<presence xmlns="jabber:client" from="b@x/2"/>')
    assert one is not None and one == two and one != other


def test_subscription_presence_and_errors_are_urgent() -> None:
    for type_ in ("subscribe", "subscribed", "unsubscribe", "unsubscribed", "error"):
        stanza = f'<presence xmlns="jabber:client" from="b@x" type="{type_}"/>'.encode()
        assert csi.hold_key(stanza) is None, type_


def test_messages_with_a_body_are_urgent_chat_states_wait() -> None:
    assert csi.hold_key(b'<message xmlns="jabber:client" from="b@x/1" type="chat">'
                        b"<body>hi</body></message>") is None
    state = (b'<message xmlns="jabber:client" from="b@x/1" type="chat">'
             b'<composing xmlns="http://jabber.org/protocol/chatstates"/></message>')
    first, second = csi.hold_key(state), csi.hold_key(state)
    assert first is not None and second is not None and first != second  # both kept
    forwarded = (b'<message xmlns="jabber:client" from="a@x"><received xmlns="urn:xmpp:carbons:2">'
                 b'<forwarded xmlns="urn:xmpp:forward:0"><message xmlns="jabber:client" '
                 b'from="b@x/1"><body>hi</body></message></forwarded></received></message>')
    assert csi.hold_key(forwarded) is None
    assert csi.hold_key(b'<message xmlns="jabber:client" type="error"/>') is None


def test_iqs_are_urgent() -> None:
    assert csi.hold_key(b'<iq xmlns="jabber:client" type="get" id="1"/>') is None


def test_xep0352_states_of_a_bound_session_are_events_not_stanzas() -> None:
    stream = bound()
    stream.receive_data(b"<enable xmlns='urn:xmpp:sm:3'/>")
    events(stream)
    stream.data_to_send()
    assert events(stream, b"<inactive xmlns='urn:xmpp:csi:0'/>") == [ClientState(False)]
    assert events(stream, b"<active xmlns='urn:xmpp:csi:0'/>") == [ClientState(True)]
    assert stream.sm is not None and stream.sm.handled == 0  # XEP-0198 counts stanzas only


def test_xep0352_3_csi_offered_after_authentication() -> None:
    assert csi.FEATURE.encode() not in after_tls().data_to_send()
    stream = after_tls()
    stream.receive_data(plain("juliet", "pencil"))
    events(stream)
    stream.credentials_loaded(CREDS)
    events(stream)
    stream.data_to_send()
    stream.receive_data(HEADER)
    events(stream)
    assert csi.FEATURE.encode() in stream.data_to_send()


def test_xep0352_state_before_binding_is_refused() -> None:
    stream = authenticated()
    stream.receive_data(b"<inactive xmlns='urn:xmpp:csi:0'/>")
    assert not any(isinstance(e, ClientState) for e in events(stream))
    assert b"not-authorized" in stream.data_to_send()
