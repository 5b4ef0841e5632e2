"""The load client's receive path: time stamps found across reads, pings answered, own
presence ignored (no sockets: bytes in, calls out)."""

from __future__ import annotations

from typing import Any

from loadtest.client import XmppConnection


class FakeTransport:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_write_buffer_size(self) -> int:
        return 0


def live_connection() -> tuple[XmppConnection, list[int], FakeTransport]:
    stamps: list[int] = []
    conn = XmppConnection(lambda stamp, _now: stamps.append(stamp))
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.live = True
    return conn, stamps, transport


def test_stamps_in_bodies_and_statuses_are_seen_once() -> None:
    conn, stamps, _ = live_connection()
    conn.data_received(b"<message from='a@localhost/r' to='b@localhost/r' type='chat'>"
                       b"<body>123</body></message><presence from='c@localhost/r'>"
                       b"<status>456</status></presence>")
    conn.data_received(b"<message><body>789</body></message>")
    assert stamps == [123, 456, 789]


def test_a_stamp_split_across_reads_is_seen_once() -> None:
    message = b"<message type='chat'><body>1234567890123</body></message>"
    for cut in range(1, len(message)):
        conn, stamps, _ = live_connection()
        conn.data_received(b"<message><body>1</body></message>" + message[:cut])
        conn.data_received(message[cut:] + b"<message><body>2</body></message>")
        assert stamps == [1, 1234567890123, 2], cut


def test_text_that_is_not_a_stamp_is_ignored() -> None:
    conn, stamps, _ = live_connection()
    conn.data_received(b"<message><body>hello</body></message><presence><status>away 5"
                       b"</status></presence>")
    assert stamps == []


def test_own_presence_is_not_counted_as_a_delivery() -> None:
    conn, stamps, _ = live_connection()
    conn.own_stamps.add(b"42")
    conn.data_received(b"<presence from='me@localhost/r'><status>42</status></presence>"
                       b"<presence from='you@localhost/r'><status>43</status></presence>")
    assert stamps == [43]


def test_server_pings_are_answered() -> None:
    """XEP-0199: the server pings idle sessions; an unanswered ping closes them."""
    conn, _, transport = live_connection()
    conn.data_received(b'<iq type="get" id="p1" from="localhost" to="a@localhost/r">'
                       b'<ping xmlns="urn:xmpp:ping"/></iq>')
    assert transport.out == [b"<iq type='result' id='p1'/>"]


def test_login_bytes_are_buffered_until_asked_for() -> None:
    conn = XmppConnection()
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    conn.data_received(b"<stream:features><x/></stream:fea")
    conn.data_received(b"tures><more/>")
    import asyncio

    got: Any = asyncio.run(conn.until(b"</stream:features>", timeout=1))
    assert got == b"<stream:features><x/></stream:features>"
    assert conn._buf == b"<more/>"


def sm_connection() -> tuple[XmppConnection, FakeTransport]:
    conn, _, transport = live_connection()
    conn.handled = 0  # XEP-0198 enabled at login (`client.login(sm=True)`)
    return conn, transport


def test_xep0198_4_r_is_answered_with_the_stanzas_handled() -> None:
    conn, transport = sm_connection()
    conn.data_received(b"<message type='chat'><body>1</body></message><presence/>"
                       b"<iq type='get' id='p' from='localhost'><ping xmlns='urn:xmpp:ping'/>"
                       b"</iq><r xmlns=\"urn:xmpp:sm:3\"/>")
    assert transport.out == [b"<iq type='result' id='p'/>",
                             b"<a xmlns='urn:xmpp:sm:3' h='3'/>"]
    conn.data_received(b"<message><body>2</body></message>")
    conn.data_received(b"<r xmlns='urn:xmpp:sm:3'/>")
    assert transport.out[-1] == b"<a xmlns='urn:xmpp:sm:3' h='4'/>"


def test_xep0198_4_counts_and_requests_split_across_reads_are_seen_once() -> None:
    data = (b"<message type='chat'><body>1</body></message><r xmlns='urn:xmpp:sm:3'/>"
            b"<presence from='a@localhost/r'/><r xmlns='urn:xmpp:sm:3'/>")
    for cut in range(1, len(data)):
        conn, transport = sm_connection()
        conn.data_received(data[:cut])
        conn.data_received(data[cut:])
        assert conn.handled == 2, cut
        assert transport.out == [b"<a xmlns='urn:xmpp:sm:3' h='1'/>",
                                 b"<a xmlns='urn:xmpp:sm:3' h='2'/>"], cut


def test_without_sm_nothing_is_counted_nor_acked() -> None:
    conn, _, transport = live_connection()
    conn.data_received(b"<message><body>1</body></message><r xmlns='urn:xmpp:sm:3'/>")
    assert conn.handled is None and transport.out == []
