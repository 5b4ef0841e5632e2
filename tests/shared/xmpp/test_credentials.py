"""Stored credentials: salted SCRAM keys (RFC 5802 §3, RFC 7677), PRECIS passwords (RFC 8265)."""

from __future__ import annotations

import hashlib
import hmac
import inspect

import pytest

from shared.xmpp.credentials import (
    DEFAULT_ITERATIONS,
    InvalidPassword,
    ScramKeys,
    StoredCredentials,
    check_password,
    derive_credentials,
    from_redis_hash,
    to_redis_hash,
)

FAST = 4096
FIELDS = {
    f"{prefix}_{field}"
    for prefix in ("sha1", "sha256")
    for field in ("salt", "iter", "stored", "server")
}


@pytest.fixture(scope="module")
def creds() -> StoredCredentials:
    return derive_credentials("pencil", iterations=FAST)


def _rfc5802_keys(hash_name: str, password: str, keys: ScramKeys) -> tuple[bytes, bytes]:
    """StoredKey and ServerKey computed straight from RFC 5802 §3, independently of scramp."""
    salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), keys.salt, keys.iterations)
    client_key = hmac.digest(salted, b"Client Key", hash_name)
    server_key = hmac.digest(salted, b"Server Key", hash_name)
    return hashlib.new(hash_name, client_key).digest(), server_key


def test_default_iterations_are_at_least_10000() -> None:
    assert DEFAULT_ITERATIONS >= 10_000
    default = inspect.signature(derive_credentials).parameters["iterations"].default
    assert default == DEFAULT_ITERATIONS
    creds = derive_credentials("pencil")
    assert creds.sha1.iterations == creds.sha256.iterations == DEFAULT_ITERATIONS


@pytest.mark.parametrize("iterations", [0, 1000, 4095, -1])
def test_too_few_iterations_are_refused(iterations: int) -> None:
    with pytest.raises(ValueError):
        derive_credentials("pencil", iterations=iterations)


def test_keys_follow_rfc5802(creds: StoredCredentials) -> None:
    assert (creds.sha1.stored_key, creds.sha1.server_key) == _rfc5802_keys(
        "sha1", "pencil", creds.sha1
    )
    assert (creds.sha256.stored_key, creds.sha256.server_key) == _rfc5802_keys(
        "sha256", "pencil", creds.sha256
    )
    assert len(creds.sha1.stored_key) == 20
    assert len(creds.sha256.stored_key) == 32


def test_salts_are_random_and_16_bytes(creds: StoredCredentials) -> None:
    again = derive_credentials("pencil", iterations=FAST)
    assert len(creds.sha1.salt) == len(creds.sha256.salt) == 16
    assert creds.sha1.salt != again.sha1.salt
    assert creds.sha256.salt != again.sha256.salt
    assert creds.sha256.stored_key != again.sha256.stored_key
    assert creds.sha1.salt != creds.sha256.salt


def test_check_password(creds: StoredCredentials) -> None:
    assert check_password(creds, "pencil")
    assert not check_password(creds, "pencil ")
    assert not check_password(creds, "Pencil")
    assert not check_password(creds, "")
    assert not check_password(creds, "pen\x00cil")


def test_password_is_prepared_with_opaquestring() -> None:
    # RFC 8265 §4.2.1: non-ASCII spaces map to U+0020, and the result is NFC.
    creds = derive_credentials("correct horse", iterations=FAST)
    assert check_password(creds, "correct\u00a0horse")
    creds = derive_credentials("caf\u00e9", iterations=FAST)
    assert check_password(creds, "cafe\u0301")


@pytest.mark.parametrize("password", ["", "bad\x00byte", "bell\x07"])
def test_invalid_passwords_are_refused(password: str) -> None:
    with pytest.raises(InvalidPassword):
        derive_credentials(password, iterations=FAST)
    assert issubclass(InvalidPassword, ValueError)


def test_redis_hash_round_trip(creds: StoredCredentials) -> None:
    flat = to_redis_hash(creds)
    assert set(flat) == FIELDS
    assert all(isinstance(value, bytes) for value in flat.values())
    assert flat["sha256_iter"] == b"4096"
    # HGETALL gives bytes keys, and the account hash holds other fields too.
    from_redis = {key.encode(): value for key, value in flat.items()} | {b"created": b"1700000000"}
    assert from_redis_hash(from_redis) == creds
    assert from_redis_hash(flat) == creds


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_redis_hash_missing_field(creds: StoredCredentials, field: str) -> None:
    flat = {key.encode(): value for key, value in to_redis_hash(creds).items()}
    del flat[field.encode()]
    with pytest.raises(ValueError, match=field):
        from_redis_hash(flat)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sha1_iter", b"lots"),
        ("sha256_iter", b"12"),
        ("sha256_stored", b"short"),
        ("sha1_server", b"x" * 32),
        ("sha1_salt", b"tiny"),
    ],
)
def test_redis_hash_malformed_field(creds: StoredCredentials, field: str, value: bytes) -> None:
    flat = {key.encode(): value for key, value in to_redis_hash(creds).items()}
    flat[field.encode()] = value
    with pytest.raises(ValueError):
        from_redis_hash(flat)


def test_password_never_stored() -> None:
    password = "correct horse battery staple"
    creds = derive_credentials(password, iterations=FAST)
    flat = to_redis_hash(creds)
    for value in flat.values():
        assert password.encode() not in value
        assert b"horse" not in value
    assert "horse" not in repr(creds)
    # Neither are the keys themselves shown by repr (they are password equivalents).
    assert creds.sha256.stored_key.hex() not in repr(creds)
    assert repr(creds.sha256.stored_key) not in repr(creds)
