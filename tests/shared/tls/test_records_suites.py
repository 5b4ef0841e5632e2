"""shared.tls.records with each of its suites, two `Records13` talking to each other.

Python's ``ssl`` (3.11) cannot choose the TLS 1.3 suite of a handshake (no
``set_ciphersuites``), so the handshake tests meet AES-256-GCM only, the first of OpenSSL's
list; here each suite's key schedule (RFC 8446 §7.1-7.3) and record protection (§5.2-5.3)
runs between two record layers built from the same secrets, and a hypothesis fuzz checks
the framing: any split of the byte stream gives the same plaintext, and a flipped bit is
never delivered as altered plaintext.  tests/shared/tls/test_interop.py runs every suite
against OpenSSL's own record layer (`openssl s_client -ciphersuites`).
"""

from __future__ import annotations

import itertools
import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.tls import records as tls_records
from shared.tls.records import SUITES, Records13, TLSClosed

SUITE_NAMES = sorted(SUITES)


def _peers(suite: str) -> tuple[Records13, Records13]:
    """A client and a server record layer of one connection (client secret, server secret)."""
    digest = SUITES[suite][2].digest_size
    client_secret, server_secret = bytes(range(digest)), bytes(range(100, 100 + digest))
    client = Records13(suite, read_secret=server_secret, write_secret=client_secret)
    server = Records13(suite, read_secret=client_secret, write_secret=server_secret)
    return client, server


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_each_suite_both_ways_with_key_updates(suite: str) -> None:
    client, server = _peers(suite)
    key_length = SUITES[suite][1]
    assert len(client._write.key) == key_length
    big = bytes(range(256)) * 100  # two records
    for round_ in range(3):
        client.send(b"<c%d/>" % round_ + big)
        assert server.receive(client.data_to_send()) == b"<c%d/>" % round_ + big
        server.send(b"<s%d/>" % round_)
        assert client.receive(server.data_to_send()) == b"<s%d/>" % round_
        client.key_update(request_peer=True)  # §4.6.3: both directions move on
        assert server.receive(client.data_to_send()) == b""
    server.close()
    with pytest.raises(TLSClosed):
        client.receive(server.data_to_send())


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_a_peer_on_another_suite_fails_authentication(suite: str) -> None:
    client, _ = _peers(suite)
    other = next(name for name in SUITE_NAMES if name != suite)
    _, server = _peers(other)
    client.send(b"<m/>")
    with pytest.raises(ssl.SSLError, match="authentication"):
        server.receive(client.data_to_send())


def test_the_nonce_is_the_iv_xor_the_sequence_number() -> None:
    """§5.3, checked against the AEAD directly: record n is sealed with iv XOR n."""
    for suite in SUITE_NAMES:
        client, _ = _peers(suite)
        aead = SUITES[suite][0](client._write.key)
        for n in range(3):
            client.send(b"<n/>")
            wire = client.data_to_send()
            nonce = (client._write.iv ^ n).to_bytes(12)
            assert aead.decrypt(nonce, wire[5:], wire[:5]) == b"<n/>\x17"


# ---- hypothesis: framing and integrity ------------------------------------------------------

_messages = st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=8)


def _wire(suite: str, messages: list[bytes], rekey_at: int | None) -> tuple[bytes, Records13]:
    client, server = _peers(suite)
    for i, message in enumerate(messages):
        if i == rekey_at:
            client.key_update()
        client.send(message)
    return client.data_to_send(), server


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    suite=st.sampled_from(SUITE_NAMES),
    messages=_messages,
    cuts=st.lists(st.integers(min_value=0, max_value=30_000), max_size=12),
    rekey_at=st.none() | st.integers(min_value=0, max_value=7),
)
def test_any_split_of_the_stream_gives_the_same_plaintext(
    suite: str, messages: list[bytes], cuts: list[int], rekey_at: int | None
) -> None:
    wire, server = _wire(suite, messages, rekey_at)
    points = sorted({min(cut, len(wire)) for cut in cuts} | {0, len(wire)})
    got = b"".join(server.receive(wire[a:b]) for a, b in itertools.pairwise(points))
    assert got == b"".join(messages)
    assert server._pending == b""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    suite=st.sampled_from(SUITE_NAMES),
    messages=_messages,
    position=st.integers(min_value=0),
    bit=st.integers(min_value=0, max_value=7),
    cut=st.integers(min_value=0),
    rekey_at=st.none() | st.integers(min_value=0, max_value=7),
)
def test_a_flipped_bit_is_never_delivered(
    suite: str, messages: list[bytes], position: int, bit: int, cut: int,
    rekey_at: int | None,
) -> None:
    """Whatever bit flips (header, ciphertext or tag), what comes out is the plaintext of
    the records before the damaged one, never a byte of it or after it."""
    wire, server = _wire(suite, messages, rekey_at)
    damaged = bytearray(wire)
    position %= len(wire)
    damaged[position] ^= 1 << bit
    start = at = 0  # the start of the record the flip is in
    while at <= position:
        start = at
        at += 5 + int.from_bytes(wire[at + 3 : at + 5])
    _, reference = _peers(suite)
    before = reference.receive(wire[:start])  # what the records before it carry
    got = b""
    cut %= len(wire) + 1
    try:
        for part in (bytes(damaged[:cut]), bytes(damaged[cut:])):
            got += server.receive(part)
    except ssl.SSLError:
        pass
    assert got == before[: len(got)], "altered plaintext delivered"
    assert len(got) <= len(before), "plaintext of the damaged record delivered"


def test_max_empty_records_is_32() -> None:
    assert tls_records.MAX_EMPTY_RECORDS == 32
