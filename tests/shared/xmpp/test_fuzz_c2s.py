"""Property-based fuzzing of the parser and the c2s state machine together (RFC 6120 §13).

Hypothesis builds byte streams from fragments of real client traffic, hostile markup and raw
noise, splits them at random points and feeds them to a `C2SStream` whose I/O answers are
given at once, as the connection manager gives them.  Whatever comes in:

* nothing but the machine's own events comes out (no exception escapes `receive_data` or
  `next_event`: every peer mistake is a stream error);
* stanzas come out only for a bound session, stamped with its full JID;
* once the stream ended, no event and no byte comes out any more, and the closing tag was
  the last thing written, exactly once.

Bounded for CI: a fixed number of examples and a deadline per example.
"""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.xmpp.c2s import (
    BindRequested,
    C2SStream,
    CredentialsNeeded,
    RegisterRequested,
    StanzaIn,
    StartTLS,
    StreamConfig,
    StreamEnded,
)
from shared.xmpp.credentials import derive_credentials
from shared.xmpp.jid import JID

DOMAIN = "example.com"
CREDS = derive_credentials("pencil", 4096)
CONFIG = StreamConfig(domain=DOMAIN, allow_registration=True)
HEADER = (
    b"<?xml version='1.0'?><stream:stream to='example.com' version='1.0' "
    b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


def _plain(user: str, password: str, authzid: str = "") -> bytes:
    token = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
    return f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>".encode()


FRAGMENTS = [
    HEADER,
    b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    _plain("juliet", "pencil"),
    _plain("juliet", "wrong"),
    _plain("juliet", "pencil", "romeo@example.com"),
    f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>biwsbj1qdWxpZXQscj1hYmNkZWZnaA==</auth>"
    .encode(),
    f"<response xmlns='{SASL}'>Yz1iaXdzLHI9eCxwPXk=</response>".encode(),
    f"<abort xmlns='{SASL}'/>".encode(),
    b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
    b"<resource>balcony</resource></bind></iq>",
    b"<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
    b"<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>n</username>"
    b"<password>p</password></query></iq>",
    b"<message to='romeo@example.com' type='chat'><body>hi &amp; &#x263A;</body></message>",
    b"<message from='romeo@example.com'><body>spoof</body></message>",
    b"<message to='@@bad'/>",
    b"<c:message xmlns:c='jabber:client' to='romeo@example.com'><c:body>x</c:body></c:message>",
    b"<presence><priority>5</priority></presence>",
    b"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
    b"<iq type='get'/>",
    b"<compress xmlns='http://jabber.org/protocol/compress'><method>zlib</method></compress>",
    b"<!DOCTYPE x [<!ENTITY e 'e'>]>",
    b"<!-- c -->",
    b"<?pi?>",
    b"&e;",
    b"<a>" * 40,
    b"</a>",
    b"<![CDATA[</message>]]>",
    b" \n\t",
    b"\x00",
    b"\xff\xfe",
    b"</stream:stream>",
]

# A valid login cut after any of its steps, so that the noise also hits the later states.
LOGIN = [
    HEADER,
    FRAGMENTS[1],
    HEADER,
    FRAGMENTS[2],
    HEADER,
    FRAGMENTS[8],
]
_prefix = st.integers(min_value=0, max_value=len(LOGIN)).map(lambda n: b"".join(LOGIN[:n]))
_chunks = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=16)), min_size=1, max_size=14
)


def _answer(stream: C2SStream, event: object) -> None:
    """Answer the machine's I/O requests the way the connection manager does."""
    if isinstance(event, StartTLS):
        stream.tls_established()
    elif isinstance(event, CredentialsNeeded):
        stream.credentials_loaded(CREDS if event.username == "juliet" else None)
    elif isinstance(event, BindRequested):
        stream.bind_succeeded(JID("juliet", DOMAIN, event.resource or "generated"))
    elif isinstance(event, RegisterRequested):
        stream.register_done(None)


@settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=_prefix,
    chunks=_chunks,
    cuts=st.lists(st.integers(min_value=1, max_value=64), max_size=8),
)
def test_rfc6120_13_parser_and_stream_machine_survive_any_input(
    prefix: bytes, chunks: list[bytes], cuts: list[int]
) -> None:
    data = prefix + b"".join(chunks)
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(data[pos : pos + cut])
        pos += cut
    pieces.append(data[pos:])
    stream = C2SStream(CONFIG)
    out = b""
    ended = False
    for piece in pieces:
        stream.receive_data(piece)
        while (event := stream.next_event()) is not None:
            assert not ended, f"{event!r} after the end of the stream"
            if isinstance(event, StanzaIn):
                assert stream.jid is not None
                assert event.element.get("from") == str(stream.jid)
            elif isinstance(event, StreamEnded):
                ended = True
            _answer(stream, event)
        out += stream.data_to_send()
        if ended or stream.closed:
            assert stream.closed
            stream.receive_data(b"<message/>" + piece)
            assert stream.next_event() is None
            assert stream.data_to_send() == b""
            assert out.count(b"</stream:stream>") == 1
            assert out.endswith(b"</stream:stream>")
            break
