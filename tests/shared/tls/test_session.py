"""TLSSession: TLS over memory BIOs, two sessions talking to each other without sockets."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from shared.tls.context import ensure_self_signed, server_context
from shared.tls.keylog import KeyLog
from shared.tls.session import TLSClosed, TLSSession

_KEYLOGS: dict[int, KeyLog] = {}


@pytest.fixture(scope="module", params=["openssl", "lean"])
def contexts(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Every test below runs twice: records through OpenSSL, and (STANZAD_TLS_LEAN_SESSIONS)
    through `shared.tls.records` once the handshake is over; the client is OpenSSL both times."""
    d: Path = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    ensure_self_signed(cert, key, "example.org")
    client = ssl.create_default_context(cafile=cert)
    server = server_context(cert, key)
    if request.param == "lean":
        keylog = KeyLog()
        assert keylog.attach(server)
        _KEYLOGS[id(server)] = keylog
    return server, client


def _server(ctx: ssl.SSLContext) -> TLSSession:
    return TLSSession(ctx, keylog=_KEYLOGS.get(id(ctx)))


def _handshaken(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> tuple[TLSSession, TLSSession]:
    """A server (lean when its context has a key log) and a client, handshake done."""
    server_ctx, client_ctx = contexts
    server = _server(server_ctx)
    client = TLSSession(client_ctx, server_side=False, server_hostname="example.org")
    client.start()
    for _ in range(10):  # a TLS 1.3 handshake is done in two round trips
        server.receive(client.data_to_send())
        client.receive(server.data_to_send())
        if server.established and client.established:
            break
    return server, client


def _pair(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> tuple[TLSSession, TLSSession]:
    server, client = _handshaken(contexts)
    lean = id(contexts[0]) in _KEYLOGS
    assert server.lean_ready is lean and not server.lean
    # records under OpenSSL first, several per read and sliced ones too, so that the lean
    # record layer must start from the sequence numbers OpenSSL reached
    client.send(b"<a/>")
    client.send(b"q" * 20_000)
    assert server.receive(client.data_to_send()) == b"<a/>" + b"q" * 20_000
    server.send(b"<b/>")
    server.send(b"r" * 20_000)
    assert client.receive(server.data_to_send()) == b"<b/>" + b"r" * 20_000
    assert server.hibernate() is lean and server.lean is lean
    return server, client


def test_handshake_then_data_both_ways(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server, client = _pair(contexts)
    assert server.established and client.established
    client.send(b"<stream:stream>")
    assert server.receive(client.data_to_send()) == b"<stream:stream>"
    server.send(b"<message/>" * 3)
    assert client.receive(server.data_to_send()) == b"<message/>" * 3


def test_records_split_across_reads_and_several_in_one(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server, client = _pair(contexts)
    client.send(b"a" * 40_000)  # three records
    client.send(b"b")
    wire = client.data_to_send()
    got = [server.receive(wire[i : i + 1000]) for i in range(0, len(wire), 1000)]
    assert b"".join(got) == b"a" * 40_000 + b"b"
    assert got[0] == b""  # a partial record gives nothing yet


def test_data_before_handshake_end_is_not_plaintext(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, _ = contexts
    server = _server(server_ctx)
    with pytest.raises(ssl.SSLError):
        server.receive(b"<stream:stream xmlns='jabber:client'>" * 4)
    assert not server.established
    # refused at once, not after waiting for a "record" as long as the bytes' length field says
    with pytest.raises(ssl.SSLError):
        _server(server_ctx).receive(b"<?xml version='1.0'?>")


def test_close_notify_ends_the_session(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server, client = _pair(contexts)
    client.send(b"</stream:stream>")
    client.close()
    wire = client.data_to_send()
    assert server.receive(wire) == b"</stream:stream>"  # what came before close_notify
    with pytest.raises(TLSClosed):
        server.receive(b"")
    server.close()
    with pytest.raises(TLSClosed):
        client.receive(server.data_to_send())


@pytest.mark.parametrize("hand_over", [False, True], ids=["before-hand-over", "after"])
def test_no_write_after_our_close_notify(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], hand_over: bool
) -> None:
    """RFC 8446 §6.1: close_notify is our last record; a later write raises, on OpenSSL as
    in our record layer, and nothing follows the close_notify on the wire."""
    server, client = _pair(contexts) if hand_over else _handshaken(contexts)
    server.close()
    wire = server.data_to_send()
    with pytest.raises(ssl.SSLError, match="after our close_notify"):
        server.send(b"<late/>")
    assert server.data_to_send() == b""
    with pytest.raises(TLSClosed):
        client.receive(wire)


def test_large_writes_go_through_in_slices_and_keep_their_order(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server, client = _pair(contexts)
    big = bytes(range(256)) * 200  # 51,200 B: many slices, more than one record
    client.send(b"<a/>")
    client.send(big)
    client.send(b"<b/>")
    assert server.receive(client.data_to_send()) == b"<a/>" + big + b"<b/>"
    server.send(b"<c/>")
    server.send(big)
    server.send(b"<d/>")
    assert server.pending_bytes() > len(big)
    wire = server.data_to_send()
    assert server.pending_bytes() == 0 and server.data_to_send() == b""
    assert client.receive(wire) == b"<c/>" + big + b"<d/>"


def test_close_notify_after_a_large_write(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server, client = _pair(contexts)
    client.send(b"z" * 10_000)
    client.close()
    assert server.receive(client.data_to_send()) == b"z" * 10_000
    with pytest.raises(TLSClosed):
        server.receive(b"")


@pytest.mark.parametrize("tickets", [0, 2])
def test_session_tickets_after_the_handshake(tmp_path: Path, tickets: int) -> None:
    """RFC 8446 §4.6.1: NewSessionTicket follows the client's Finished; none by default."""
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    ensure_self_signed(cert, key, "example.org")
    ctx = server_context(cert, key) if not tickets else server_context(
        cert, key, session_tickets=tickets
    )
    server = TLSSession(ctx)
    client = TLSSession(
        ssl.create_default_context(cafile=cert), server_side=False, server_hostname="example.org"
    )
    client.start()
    server.receive(client.data_to_send())  # ClientHello
    client.receive(server.data_to_send())  # ServerHello .. Finished
    server.receive(client.data_to_send())  # the client's Finished
    assert server.established
    after = server.data_to_send()
    assert bool(after) is bool(tickets)
    client.receive(after)
    assert client.established


def test_first_stanza_sent_with_the_finished(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """The client's Finished and its first records in one read (RFC 8446 §4.4.4: a client
    may send application data right after its Finished): the plaintext comes out at once, on
    a lean session from the record layer that takes over mid-read."""
    server_ctx, client_ctx = contexts
    server = _server(server_ctx)
    client = TLSSession(client_ctx, server_side=False, server_hostname="example.org")
    client.start()
    server.receive(client.data_to_send())  # ClientHello
    client.receive(server.data_to_send())  # ServerHello .. Finished
    assert client.established and not server.established
    client.send(b"<stream:stream>")
    client.send(b"x" * 20_000)
    wire = client.data_to_send()  # [CCS] Finished, then three application records
    assert server.receive(wire) == b"<stream:stream>" + b"x" * 20_000
    assert server.established and server.lean_ready is (id(server_ctx) in _KEYLOGS)
    server.send(b"<features/>")
    assert client.receive(server.data_to_send()) == b"<features/>"
    assert server.hibernate() is (id(server_ctx) in _KEYLOGS)
    client.send(b"<after/>")
    assert server.receive(client.data_to_send()) == b"<after/>"
    server.send(b"<ok/>")
    assert client.receive(server.data_to_send()) == b"<ok/>"


def test_handshake_bytes_one_at_a_time(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """Records split at every byte: the lean framing waits for whole records."""
    server_ctx, client_ctx = contexts
    server = _server(server_ctx)
    client = TLSSession(client_ctx, server_side=False, server_hostname="example.org")
    client.start()
    for _ in range(3):
        wire = client.data_to_send()
        got = b"".join(server.receive(wire[i : i + 1]) for i in range(len(wire)))
        client.receive(server.data_to_send())
        if server.established:
            break
        assert got == b""
    assert server.established and client.established
    client.send(b"<a/>")
    wire = client.data_to_send()
    assert b"".join(server.receive(wire[i : i + 1]) for i in range(len(wire))) == b"<a/>"


def test_hibernated_session_carries_on(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server, client = _pair(contexts)  # hibernated once already
    server.hibernate()  # a lean session drops its AEAD contexts; OpenSSL's keeps its state
    client.send(b"<ping/>")
    assert server.receive(client.data_to_send()) == b"<ping/>"
    server.hibernate()
    server.send(b"<pong/>")
    assert client.receive(server.data_to_send()) == b"<pong/>"


def test_no_hand_over_with_half_a_record_pending(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx = contexts[0]
    server, client = _handshaken(contexts)
    client.send(b"<half/>")
    wire = client.data_to_send()
    assert server.receive(wire[:10]) == b""
    assert not server.hibernate() and not server.lean  # the rest of the record comes later
    assert server.receive(wire[10:]) == b"<half/>"
    assert server.hibernate() is (id(server_ctx) in _KEYLOGS)
    client.send(b"<whole/>")
    assert server.receive(client.data_to_send()) == b"<whole/>"


def test_before_the_hand_over_openssl_refuses_what_it_should(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """The counted phase hands a record it does not count (too long) to OpenSSL, which
    refuses it (RFC 8446 §5.2 record_overflow); our close_notify there ends the counting."""
    server_ctx = contexts[0]
    for case in ("oversized", "closed"):
        server, client = _handshaken(contexts)
        assert server.lean_ready is (id(server_ctx) in _KEYLOGS)
        if case == "oversized":
            with pytest.raises(ssl.SSLError):
                server.receive(b"\x17\x03\x03" + ((1 << 14) + 300).to_bytes(2) + b"x" * 17_000)
        else:
            server.close()
            with pytest.raises(TLSClosed):
                client.receive(server.data_to_send())
        assert not server.lean_ready and not server.hibernate()
