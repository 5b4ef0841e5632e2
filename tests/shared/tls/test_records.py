"""shared.tls.records: the TLS 1.3 record layer of lean sessions (RFC 8446 §4.6.3, §5, §6).

A real handshake (CPython's ssl on both ends, memory BIOs) gives each side its traffic secrets
through a `KeyLog`; the server is a lean `TLSSession`, the client a `Records13` built from its
own secrets, so the tests can send what an OpenSSL client's API cannot (KeyUpdate, forged or
damaged records, alerts).  tests/shared/tls/test_session.py runs the ordinary traffic against
an OpenSSL client; tests/integration/test_tls_lean.py a KeyUpdate from `openssl s_client`.
"""

from __future__ import annotations

import ssl
import struct
from pathlib import Path

import pytest

from shared.tls import records as tls_records
from shared.tls.context import ensure_self_signed, server_context
from shared.tls.keylog import CLIENT_TRAFFIC, SERVER_TRAFFIC, KeyLog
from shared.tls.records import Records13, TLSClosed
from shared.tls.session import TLSSession

Pair = tuple[TLSSession, Records13]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d: Path = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    ensure_self_signed(cert, key, "example.org")
    return cert, key


@pytest.fixture(scope="module")
def keylogs(files: tuple[str, str]) -> tuple[ssl.SSLContext, KeyLog, ssl.SSLContext, KeyLog]:
    cert, key = files
    server_ctx, server_log = server_context(cert, key), KeyLog()
    client_ctx, client_log = ssl.create_default_context(cafile=cert), KeyLog()
    assert server_log.attach(server_ctx) and client_log.attach(client_ctx)
    return server_ctx, server_log, client_ctx, client_log


def _handshake(
    server: TLSSession, client_ctx: ssl.SSLContext, client_log: KeyLog
) -> Records13:
    client = TLSSession(client_ctx, server_side=False, server_hostname="example.org")
    client.start()
    hello = client.data_to_send()
    random = hello[11:43]  # ClientHello.random
    secrets: dict[bytes, bytes] = {}
    for _ in range(10):
        server.receive(hello)
        client.receive(server.data_to_send())
        client_log.take(random, secrets)
        hello = client.data_to_send()
        if client.established:
            break
    server.receive(hello)  # the client's Finished
    assert server.established and client.established
    suite = client._tls.cipher()[0]  # type: ignore[union-attr]
    return Records13(suite, secrets[SERVER_TRAFFIC], secrets[CLIENT_TRAFFIC])


@pytest.fixture
def pair(keylogs: tuple[ssl.SSLContext, KeyLog, ssl.SSLContext, KeyLog]) -> Pair:
    server_ctx, server_log, client_ctx, client_log = keylogs
    server = TLSSession(server_ctx, keylog=server_log)
    client = _handshake(server, client_ctx, client_log)
    assert server.lean_ready and server.hibernate() and server.lean
    return server, client


def _exchange(server: TLSSession, client: Records13, text: bytes) -> None:
    client.send(b"c:" + text)
    assert server.receive(client.data_to_send()) == b"c:" + text
    server.send(b"s:" + text)
    assert client.receive(server.data_to_send()) == b"s:" + text


def _inner_record(client: Records13, inner: bytes) -> bytes:
    """A record the client protects by hand: ``inner`` is content + type + padding (§5.2)."""
    write = client._write
    header = struct.pack("!BHH", 23, 0x0303, len(inner) + 16)
    aead = tls_records.SUITES[client._suite][0](write.key)
    return header + aead.encrypt(write.nonce(), inner, header)


def _alert_sent(server: TLSSession, client: Records13) -> int:
    """The fatal alert the server queued, read the way its peer would."""
    with pytest.raises(ssl.SSLError, match="peer sent TLS alert") as caught:
        client.receive(server.data_to_send())
    return int(str(caught.value.args[0]).rsplit(" ", 1)[1])


# ---- both directions, and the sessions that stay on OpenSSL ---------------------------------

def test_data_both_ways_and_large_writes(pair: Pair) -> None:
    server, client = pair
    _exchange(server, client, b"<message/>")
    big = bytes(range(256)) * 300  # 76,800 B: five records of at most 2^14 (§5.1)
    server.send(big)
    wire = server.data_to_send()
    assert wire.count(b"\x17\x03\x03") >= 5
    assert client.receive(wire) == big
    client.send(big)
    assert server.receive(client.data_to_send()) == big


def test_tls12_session_stays_on_openssl(files: tuple[str, str]) -> None:
    cert, key = files
    server_ctx = server_context(cert, key)
    keylog = KeyLog()
    assert keylog.attach(server_ctx)
    client_ctx = ssl.create_default_context(cafile=cert)
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    server = TLSSession(server_ctx, keylog=keylog)
    client = TLSSession(client_ctx, server_side=False, server_hostname="example.org")
    client.start()
    for _ in range(5):
        server.receive(client.data_to_send())
        client.receive(server.data_to_send())
    assert server.established and not server.lean
    client.send(b"<a/>")
    assert server.receive(client.data_to_send()) == b"<a/>"
    keylog.close()


def test_tls12_secrets_are_dropped_at_once(files: tuple[str, str]) -> None:
    """A TLS 1.2 session never goes lean: it holds no secret after its handshake, and the
    master secret OpenSSL logged (CLIENT_RANDOM) went through a buffer now zeroed."""
    cert, key = files
    server_ctx = server_context(cert, key)
    keylog = KeyLog()
    assert keylog.attach(server_ctx)
    client_ctx = ssl.create_default_context(cafile=cert)
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    server = TLSSession(server_ctx, keylog=keylog)
    client = TLSSession(client_ctx, server_side=False, server_hostname="example.org")
    client.start()
    for _ in range(5):
        server.receive(client.data_to_send())
        client.receive(server.data_to_send())
    assert server.established and server._tls.version() == "TLSv1.2"  # type: ignore[union-attr]
    assert server._secrets == {} and server._lean_keys is None and not server.lean_ready
    assert not any(keylog._buffer)
    keylog.close()


def test_secrets_are_wiped_when_a_session_stays_on_openssl(
    keylogs: tuple[ssl.SSLContext, KeyLog, ssl.SSLContext, KeyLog],
) -> None:
    server_ctx, server_log, client_ctx, client_log = keylogs
    server = TLSSession(server_ctx, keylog=server_log)
    client = _handshake(server, client_ctx, client_log)
    assert server._lean_keys is not None
    _, client_secret, server_secret = server._lean_keys
    assert any(client_secret) and any(server_secret)
    client.key_update()  # OpenSSL applies it: the session stays there, the secrets go
    assert server.receive(client.data_to_send()) == b""
    assert server._lean_keys is None
    assert not any(client_secret) and not any(server_secret)


def test_secrets_are_wiped_after_the_hand_over(
    keylogs: tuple[ssl.SSLContext, KeyLog, ssl.SSLContext, KeyLog],
) -> None:
    server_ctx, server_log, client_ctx, client_log = keylogs
    server = TLSSession(server_ctx, keylog=server_log)
    client = _handshake(server, client_ctx, client_log)
    assert server._lean_keys is not None
    _, client_secret, server_secret = server._lean_keys
    assert server.hibernate() and server.lean
    assert not any(client_secret) and not any(server_secret)  # Records13 has its own copies
    records = server._records
    assert records is not None
    old = records._read.secret
    client.key_update()
    assert server.receive(client.data_to_send()) == b""
    assert not any(old) and any(records._read.secret)  # the replaced secret is overwritten
    _exchange(server, client, b"<ok/>")


def test_hello_retry_request_then_lean(files: tuple[str, str]) -> None:
    """RFC 8446 §4.1.4: a server that accepts only P-256 answers the client's X25519 key
    share with a HelloRetryRequest; the session still goes lean (the key log lines are filed
    under the first ClientHello's random, which the second one repeats, §4.1.2)."""
    cert, key = files
    server_ctx = server_context(cert, key)
    server_ctx.set_ecdh_curve("prime256v1")  # OpenSSL 3: the server's only group
    server_log, client_log = KeyLog(), KeyLog()
    client_ctx = ssl.create_default_context(cafile=cert)
    assert server_log.attach(server_ctx) and client_log.attach(client_ctx)
    server = TLSSession(server_ctx, keylog=server_log)
    probe = TLSSession(client_ctx, server_side=False, server_hostname="example.org")
    probe.start()
    server.receive(probe.data_to_send())
    first = server.data_to_send()
    assert first[5] == 2 and first[11:43] == bytes.fromhex(  # ServerHello, HRR's random
        "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"
    )
    server = TLSSession(server_ctx, keylog=server_log)
    client = _handshake(server, client_ctx, client_log)
    assert server.lean_ready and server.hibernate() and server.lean
    _exchange(server, client, b"<after-hrr/>")
    server_log.close()
    client_log.close()


def test_session_tickets_keep_the_session_on_openssl(files: tuple[str, str]) -> None:
    """Tickets go out under the server's traffic key after the handshake (RFC 8446 §4.6.1):
    they would move its sequence number, so such a context never goes lean."""
    cert, key = files
    server_ctx = server_context(cert, key, session_tickets=2)
    keylog = KeyLog()
    assert keylog.attach(server_ctx)
    server = TLSSession(server_ctx, keylog=keylog)
    client = TLSSession(
        ssl.create_default_context(cafile=cert), server_side=False, server_hostname="example.org"
    )
    client.start()
    for _ in range(5):
        server.receive(client.data_to_send())
        client.receive(server.data_to_send())
    assert server.established and not server.lean
    keylog.close()


# ---- KeyUpdate (§4.6.3) ---------------------------------------------------------------------

def test_key_update_while_on_openssl_keeps_the_session_there(
    keylogs: tuple[ssl.SSLContext, KeyLog, ssl.SSLContext, KeyLog],
) -> None:
    """OpenSSL applies a KeyUpdate that comes before the hand-over, out of our sight: the
    secrets we hold are then stale, so the session must stay on OpenSSL."""
    server_ctx, server_log, client_ctx, client_log = keylogs
    server = TLSSession(server_ctx, keylog=server_log)
    client = _handshake(server, client_ctx, client_log)
    client.send(b"<before/>")
    assert server.receive(client.data_to_send()) == b"<before/>"
    client.key_update(request_peer=True)
    client.send(b"<after/>")
    assert server.receive(client.data_to_send()) == b"<after/>"
    assert client.receive(server.data_to_send()) == b""  # OpenSSL's KeyUpdate back
    assert not server.lean_ready and not server.hibernate() and not server.lean
    _exchange(server, client, b"<still-openssl/>")


def test_peer_key_update_requested_is_answered(pair: Pair) -> None:
    """§4.6.3: the answer goes out before our next application data, under the old key."""
    server, client = pair
    old = bytes(server._records._read.secret)  # type: ignore[union-attr]
    client.key_update(request_peer=True)
    client.send(b"<after/>")  # already under the client's new key
    assert server.receive(client.data_to_send()) == b"<after/>"
    assert server._records._read.secret != old  # type: ignore[union-attr]
    assert server.data_to_send() == b""  # nothing of ours to send yet: no KeyUpdate either
    server.send(b"<reply/>")
    answer = server.data_to_send()  # the server's KeyUpdate, then the reply
    assert answer.count(b"\x17\x03\x03") == 2
    assert client.receive(answer) == b"<reply/>"
    assert client._read.seq == 1  # the client moved to the server's next key
    _exchange(server, client, b"<both-rekeyed/>")


def test_several_update_requests_get_one_key_update(pair: Pair) -> None:
    """§4.6.3: "an implementation which receives multiple KeyUpdates while it is silent"
    responds "with a single update"."""
    server, client = pair
    first = bytes(server._records._write.secret)  # type: ignore[union-attr]
    for i in range(3):
        client.key_update(request_peer=True)
        client.send(b"<m%d/>" % i)
        assert server.receive(client.data_to_send()) == b"<m%d/>" % i
    server.send(b"<reply/>")
    answer = server.data_to_send()
    assert answer.count(b"\x17\x03\x03") == 2  # one KeyUpdate, one record of data
    assert client.receive(answer) == b"<reply/>"
    algorithm = tls_records.SUITES[client._suite][2]
    once = tls_records.hkdf_expand_label(algorithm, first, b"traffic upd", algorithm.digest_size)
    assert server._records._write.secret == once == client._read.secret  # type: ignore[union-attr]
    server.send(b"<more/>")
    wire = server.data_to_send()
    assert wire.count(b"\x17\x03\x03") == 1  # answered: no second update
    assert client.receive(wire) == b"<more/>"
    _exchange(server, client, b"<both-rekeyed/>")


def test_our_own_key_update_answers_a_pending_request(pair: Pair) -> None:
    server, client = pair
    client.key_update(request_peer=True)
    assert server.receive(client.data_to_send()) == b""
    server._records.key_update()  # type: ignore[union-attr]
    server.send(b"<x/>")
    answer = server.data_to_send()
    assert answer.count(b"\x17\x03\x03") == 2
    assert client.receive(answer) == b"<x/>"


def test_peer_key_update_not_requested_gets_no_answer(pair: Pair) -> None:
    server, client = pair
    client.key_update()
    assert server.receive(client.data_to_send()) == b""
    assert server.data_to_send() == b""
    _exchange(server, client, b"<one-side-rekeyed/>")


def test_key_update_split_across_two_records(pair: Pair) -> None:
    """Handshake messages may be fragmented across records (§5.1)."""
    server, client = pair
    message = bytes((24, 0, 0, 1, 0))
    wire = _inner_record(client, message[:2] + b"\x16")
    wire += _inner_record(client, message[2:] + b"\x16")
    client._write.update(client._suite)
    assert server.receive(wire) == b""
    _exchange(server, client, b"<ok/>")


def test_we_rekey_before_the_aes_gcm_limit(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """§5.5: a key protects at most 2^24.5 AES-GCM records; we move on at REKEY_AFTER."""
    server, client = pair
    monkeypatch.setattr(tls_records, "REKEY_AFTER", 3)
    first = server._records._write.secret  # type: ignore[union-attr]
    for i in range(8):
        server.send(b"<m%d/>" % i)
    assert client.receive(server.data_to_send()) == b"".join(b"<m%d/>" % i for i in range(8))
    assert server._records._write.secret != first  # type: ignore[union-attr]
    assert client._read.secret == server._records._write.secret  # type: ignore[union-attr]


# ---- what a peer may not send (§5, §6) ------------------------------------------------------

def test_damaged_record_is_bad_record_mac(pair: Pair) -> None:
    server, client = pair
    client.send(b"<message/>")
    wire = bytearray(client.data_to_send())
    wire[10] ^= 1
    with pytest.raises(ssl.SSLError, match="authentication") as caught:
        server.receive(bytes(wire))
    assert caught.value.reason == "record failed authentication"  # logged by the connection
    assert _alert_sent(server, client) == tls_records.BAD_RECORD_MAC
    with pytest.raises(ssl.SSLError):
        server.receive(b"")  # the layer stays failed


def test_oversized_record_is_record_overflow(pair: Pair) -> None:
    server, client = pair
    with pytest.raises(ssl.SSLError):
        server.receive(struct.pack("!BHH", 23, 0x0303, (1 << 14) + 257))
    assert _alert_sent(server, client) == tls_records.RECORD_OVERFLOW


@pytest.mark.parametrize("split", [False, True], ids=["one-read", "two-reads"])
def test_whole_oversized_record_is_refused_by_its_header(pair: Pair, split: bool) -> None:
    """§5.2: a ciphertext over 2^14 + 256 bytes is record_overflow, before any decryption."""
    server, client = pair
    wire = _inner_record(client, b"x" * ((1 << 14) + 300) + b"\x17")
    with pytest.raises(ssl.SSLError, match="record of") as caught:
        server.receive(wire[:100] if split else wire)
        server.receive(wire[100:])
    assert "plaintext" not in caught.value.reason
    assert _alert_sent(server, client) == tls_records.RECORD_OVERFLOW


def test_plaintext_too_long_is_record_overflow(pair: Pair) -> None:
    server, client = pair
    with pytest.raises(ssl.SSLError):
        server.receive(_inner_record(client, b"x" * ((1 << 14) + 1) + b"\x17"))
    assert _alert_sent(server, client) == tls_records.RECORD_OVERFLOW


def test_change_cipher_spec_after_the_handshake_is_unexpected(pair: Pair) -> None:
    server, client = pair
    with pytest.raises(ssl.SSLError):
        server.receive(b"\x14\x03\x03\x00\x01\x01")
    assert _alert_sent(server, client) == tls_records.UNEXPECTED_MESSAGE


@pytest.mark.parametrize(
    ("inner", "alert"),
    [
        (b"\x04\x00\x00\x01\x00\x16", tls_records.UNEXPECTED_MESSAGE),  # a NewSessionTicket
        (b"\x18\x00\x00\x01\x00<a/>\x16", tls_records.UNEXPECTED_MESSAGE),  # data after KeyUpdate
        (b"\x18\x00\x00\x02\x00\x00\x16", tls_records.DECODE_ERROR),
        (b"\x18\x00\x00\x01\x07\x16", tls_records.ILLEGAL_PARAMETER),
        (b"\x00\x00\x00", tls_records.UNEXPECTED_MESSAGE),  # padding without a content type
        (b"<a/>\x14", tls_records.UNEXPECTED_MESSAGE),  # an inner change_cipher_spec
    ],
    ids=["new-session-ticket", "data-after-key-update", "key-update-length",
         "key-update-value", "no-content-type", "inner-ccs"],
)
def test_forbidden_inner_records(pair: Pair, inner: bytes, alert: int) -> None:
    server, client = pair
    with pytest.raises(ssl.SSLError):
        server.receive(_inner_record(client, inner))
    assert _alert_sent(server, client) == alert


def test_padding_is_removed(pair: Pair) -> None:
    """§5.4: zeros after the content type are padding."""
    server, client = pair
    assert server.receive(_inner_record(client, b"<padded/>\x17" + bytes(500))) == b"<padded/>"
    _exchange(server, client, b"<after-padding/>")


def test_user_canceled_then_close_notify(pair: Pair) -> None:
    server, client = pair
    wire = _inner_record(client, b"<bye/>\x17")
    wire += _inner_record(client, b"\x01\x5a\x15")  # user_canceled: no reason to stop (§6.1)
    wire += _inner_record(client, b"\x01\x00\x15")  # close_notify
    wire += _inner_record(client, b"<ignored/>\x17")
    assert server.receive(wire) == b"<bye/>"
    with pytest.raises(TLSClosed):
        server.receive(b"")
    server.close()
    with pytest.raises(TLSClosed):
        client.receive(server.data_to_send())


def test_fatal_alert_from_the_peer(pair: Pair) -> None:
    server, client = pair
    with pytest.raises(ssl.SSLError, match="alert 40"):
        server.receive(_inner_record(client, b"\x02\x28\x15"))  # handshake_failure
    assert server.data_to_send() == b""  # no alert answers a fatal alert (§6.2)


def test_nothing_is_written_after_our_close_notify(pair: Pair) -> None:
    """§6.1: close_notify is the last record we send; later writes are refused loudly."""
    server, client = pair
    server.close()
    wire = server.data_to_send()
    with pytest.raises(ssl.SSLError, match="after our close_notify"):
        server.send(b"<late/>")
    with pytest.raises(ssl.SSLError, match="after our close_notify"):
        server._records.key_update()  # type: ignore[union-attr]
    server.close()  # twice: still one close_notify
    assert server.data_to_send() == b""
    with pytest.raises(TLSClosed):
        client.receive(wire)


def test_no_alert_after_our_close_notify(pair: Pair) -> None:
    """A record that fails after our close_notify fails the session, but nothing more goes
    out: the close_notify was our last record."""
    server, client = pair
    server.close()
    wire = server.data_to_send()
    client.send(b"<m/>")
    damaged = bytearray(client.data_to_send())
    damaged[-1] ^= 1
    with pytest.raises(ssl.SSLError, match="authentication"):
        server.receive(bytes(damaged))
    assert server.data_to_send() == b""
    with pytest.raises(TLSClosed):
        client.receive(wire)


def test_unknown_suite_refused() -> None:
    with pytest.raises(ValueError):
        Records13("TLS_AES_128_CCM_SHA256", b"\0" * 32, b"\0" * 32)


# ---- hardening: records that carry nothing, lengths, what comes after the hand-over ----------

def test_records_without_application_data_are_bounded(pair: Pair) -> None:
    """Empty application data, user_canceled and KeyUpdates are each allowed, but not
    without end: MAX_EMPTY_RECORDS in a row, and the next one fails the session."""
    server, client = pair
    limit = tls_records.MAX_EMPTY_RECORDS
    kinds = [b"\x17", b"\x01\x5a\x15"]  # empty application data (§5.1), user_canceled (§6.1)
    for _ in range(3):  # a record of data in between starts the count again
        wire = b"".join(_inner_record(client, kinds[i % 2]) for i in range(limit - 1))
        client.key_update()
        wire += client.data_to_send()  # the 32nd: a KeyUpdate
        assert server.receive(wire) == b""
        _exchange(server, client, b"<data-resets-the-count/>")
    wire = b"".join(_inner_record(client, b"\x17") for _ in range(limit + 1))
    with pytest.raises(ssl.SSLError, match="without application data"):
        server.receive(wire)
    assert _alert_sent(server, client) == tls_records.UNEXPECTED_MESSAGE


def test_zero_length_handshake_record_is_unexpected(pair: Pair) -> None:
    """§5.1: "Implementations MUST NOT send zero-length fragments of Handshake types"."""
    server, client = pair
    with pytest.raises(ssl.SSLError, match="zero-length handshake"):
        server.receive(_inner_record(client, b"\x16"))
    assert _alert_sent(server, client) == tls_records.UNEXPECTED_MESSAGE


def test_zero_length_application_data_is_allowed(pair: Pair) -> None:
    server, client = pair
    client.send(b"")
    assert server.receive(client.data_to_send()) == b""
    _exchange(server, client, b"<after-empty/>")


def test_inner_plaintext_length_counts_the_padding(pair: Pair) -> None:
    """§5.4: TLSInnerPlaintext is at most 2^14 + 1 bytes, padding included; a short record
    padded past that is record_overflow although its content alone would fit."""
    server, client = pair
    most = tls_records.MAX_PLAINTEXT + 1
    assert server.receive(_inner_record(client, b"<a/>\x17" + bytes(most - 5))) == b"<a/>"
    with pytest.raises(ssl.SSLError, match="inner plaintext of 16386") as caught:
        server.receive(_inner_record(client, b"<a/>\x17" + bytes(most - 4)))
    assert caught.value.reason.startswith("inner plaintext")
    assert _alert_sent(server, client) == tls_records.RECORD_OVERFLOW


@pytest.mark.parametrize(("over", "reason"), [(0, "inner plaintext"), (1, "record of")])
def test_ciphertext_length_limit(pair: Pair, over: int, reason: str) -> None:
    """§5.2: a ciphertext of 2^14 + 256 bytes passes the header check (and then fails the
    inner length); one byte more is refused by its header alone."""
    server, client = pair
    wire = _inner_record(client, b"\x17" + bytes((1 << 14) + 256 - 17 + over))
    assert len(wire) - 5 == (1 << 14) + 256 + over
    with pytest.raises(ssl.SSLError, match=reason):
        server.receive(wire)
    assert _alert_sent(server, client) == tls_records.RECORD_OVERFLOW


def test_replayed_record_fails(pair: Pair) -> None:
    """Every record's nonce holds its sequence number (§5.3): the same record twice fails."""
    server, client = pair
    client.send(b"<once/>")
    wire = client.data_to_send()
    assert server.receive(wire) == b"<once/>"
    with pytest.raises(ssl.SSLError, match="authentication"):
        server.receive(wire)
    assert _alert_sent(server, client) == tls_records.BAD_RECORD_MAC


def test_truncated_record_waits_then_completes(pair: Pair) -> None:
    server, client = pair
    for cut in (1, 4, 5, 5 + 10, 5 + len(b"<whole/>") + 16):
        client.send(b"<whole/>")
        wire = client.data_to_send()
        assert server.receive(wire[:cut]) == b""
        assert server.receive(wire[cut:]) == b"<whole/>"
    assert server.receive(wire[:-1]) == b""  # and the rest never comes: nothing delivered


def test_truncated_record_with_a_matching_header_fails(pair: Pair) -> None:
    server, client = pair
    client.send(b"<truncated/>")
    wire = client.data_to_send()
    short = struct.pack("!BHH", 23, 0x0303, len(wire) - 5 - 3) + wire[5:-3]
    with pytest.raises(ssl.SSLError, match="authentication"):
        server.receive(short)
    assert _alert_sent(server, client) == tls_records.BAD_RECORD_MAC


def test_zero_length_record_is_decode_error(pair: Pair) -> None:
    server, client = pair
    with pytest.raises(ssl.SSLError, match="too short"):
        server.receive(b"\x17\x03\x03\x00\x00")
    assert _alert_sent(server, client) == tls_records.DECODE_ERROR


@pytest.mark.parametrize(
    "record",
    [b"\x15\x03\x03\x00\x02\x01\x00",  # a plaintext close_notify
     b"\x15\x03\x03\x00\x02\x02\x28",  # a plaintext fatal alert
     b"\x16\x03\x03\x00\x05\x18\x00\x00\x01\x00",  # a plaintext KeyUpdate
     b"\x16\x03\x01\x00\x04\x01\x00\x00\x00"],  # a plaintext ClientHello
    ids=["close-notify", "fatal-alert", "key-update", "client-hello"],
)
def test_plaintext_records_after_the_hand_over_fail(pair: Pair, record: bytes) -> None:
    """§5: after the handshake every record is protected; a plaintext alert or handshake
    record fails the session, it is never acted on."""
    server, client = pair
    client.send(b"<before/>")
    with pytest.raises(ssl.SSLError, match="unprotected record"):
        server.receive(client.data_to_send() + record)
    assert _alert_sent(server, client) == tls_records.UNEXPECTED_MESSAGE
    with pytest.raises(ssl.SSLError):
        server.send(b"<after/>")
