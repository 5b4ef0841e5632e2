"""The JSON form of stored SCRAM keys, for imports from other servers (RFC 5802 §3: salt,
iteration count, StoredKey and ServerKey per hash; RFC 7677 for SHA-256)."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from shared.xmpp.credentials import (
    MAX_ITERATIONS,
    MIN_ITERATIONS,
    StoredCredentials,
    check_password,
    derive_credentials,
    from_json,
    to_json,
)


@pytest.fixture(scope="module")
def creds() -> StoredCredentials:
    return derive_credentials("pencil", iterations=MIN_ITERATIONS)


@pytest.fixture
def doc(creds: StoredCredentials) -> dict[str, Any]:
    return copy.deepcopy(to_json(creds))


def test_round_trip_keeps_every_key(creds: StoredCredentials) -> None:
    doc = to_json(creds)
    assert set(doc) == {"SCRAM-SHA-1", "SCRAM-SHA-256"}
    assert set(doc["SCRAM-SHA-1"]) == {"salt", "iterations", "stored_key", "server_key"}
    back = from_json(doc)
    assert back == creds
    assert check_password(back, "pencil") and not check_password(back, "pen")


def test_base64_is_standard_with_padding(creds: StoredCredentials) -> None:
    sha1 = to_json(creds)["SCRAM-SHA-1"]
    assert base64.b64decode(sha1["stored_key"], validate=True) == creds.sha1.stored_key
    assert str(sha1["stored_key"]).endswith("=")  # 20 bytes: padded


def _set(doc: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value


_DELETE = object()
_20 = base64.b64encode(b"k" * 20).decode()
_32 = base64.b64encode(b"k" * 32).decode()


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("SCRAM-SHA-256",), _DELETE, "SCRAM-SHA-256 is missing"),
        (("SCRAM-SHA-1",), _DELETE, "SCRAM-SHA-1 is missing"),
        (("SCRAM-SHA-512",), {}, "unsupported mechanism(s) SCRAM-SHA-512"),
        (("SCRAM-SHA-1",), "keys", "SCRAM-SHA-1 is not a JSON object"),
        (("SCRAM-SHA-1", "salt"), _DELETE, "lacks salt"),
        (("SCRAM-SHA-1", "hash"), "x", "unknown field(s) hash"),
        # RFC 5802 §3: StoredKey and ServerKey are outputs of H() / HMAC(): the hash's length
        (("SCRAM-SHA-1", "stored_key"), _32, "stored_key has 32 bytes, not 20"),
        (("SCRAM-SHA-256", "server_key"), _20, "server_key has 20 bytes, not 32"),
        (("SCRAM-SHA-256", "stored_key"), "not base64!", "stored_key is not well-formed base64"),
        (("SCRAM-SHA-256", "salt"), "QUJD", "salt is shorter than 12 bytes"),
        (("SCRAM-SHA-256", "salt"), 12, "salt is not a base64 string"),
        (("SCRAM-SHA-1", "stored_key"), _20[:-1], "not well-formed base64"),  # bad padding
        # RFC 7677 §4 / RFC 5802 §5.1: at least 4096 iterations
        (("SCRAM-SHA-1", "iterations"), MIN_ITERATIONS - 1, "iterations must be an integer"),
        (("SCRAM-SHA-1", "iterations"), MAX_ITERATIONS + 1, "iterations must be an integer"),
        (("SCRAM-SHA-1", "iterations"), "4096", "iterations must be an integer"),
        (("SCRAM-SHA-1", "iterations"), True, "iterations must be an integer"),
    ],
)
def test_malformed_keys_are_refused_with_a_reason(
    doc: dict[str, Any], path: tuple[str, ...], value: object, reason: str
) -> None:
    _set(doc, path, value)
    with pytest.raises(ValueError, match="scram: ") as err:
        from_json(doc)
    assert reason in str(err.value)


def test_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match="scram is not a JSON object"):
        from_json(["SCRAM-SHA-1"])


def test_the_minimum_iteration_count_is_a_parameter(doc: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"\[10000, "):
        from_json(doc, min_iterations=10_000)
    assert from_json(doc, min_iterations=MIN_ITERATIONS).sha1.iterations == MIN_ITERATIONS
