"""Stored credentials: the salted SCRAM keys of an account, never its password.

RFC 5802 §3 lets a server keep only ``salt``, the iteration count, ``StoredKey`` and
``ServerKey`` for each hash function; that is enough to run SCRAM-SHA-1 (RFC 5802) and
SCRAM-SHA-256 (RFC 7677) and, by recomputing the keys, to check a PLAIN password
(RFC 4616).  Passwords are prepared with the PRECIS OpaqueString profile (RFC 8265 §4)
before anything is derived from them.  The key derivation itself (``Hi()``, i.e.
PBKDF2, RFC 5802 §2.2) is done by scramp.  The same keys have a JSON form (`to_json`,
`from_json`), in which accounts are imported from other servers (shared/cluster/admin.py).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from precis_i18n import get_profile
from scramp import ScramException, ScramMechanism

DEFAULT_ITERATIONS: Final = 10_000
MIN_ITERATIONS: Final = 4096  # RFC 7677 §4 / RFC 5802 §5.1: at least 4096
MAX_ITERATIONS: Final = 10_000_000  # scramp's own DoS guard
SALT_BYTES: Final = 16

# (field prefix, scramp mechanism name, digest length in bytes)
_MECHANISMS: Final = (("sha1", "SCRAM-SHA-1", 20), ("sha256", "SCRAM-SHA-256", 32))
_FIELDS: Final = ("salt", "iter", "stored", "server")

_OPAQUE_STRING = get_profile("OpaqueString")


class InvalidPassword(ValueError):
    """The password is empty or not allowed by the PRECIS OpaqueString profile (RFC 8265 §4)."""


@dataclass(frozen=True, slots=True)
class ScramKeys:
    """What RFC 5802 §3 says a server stores for one hash function."""

    salt: bytes
    iterations: int
    # For SCRAM these are password equivalents (RFC 5802 §9): keep them out of reprs and logs.
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class StoredCredentials:
    """The salted keys for SCRAM-SHA-1 (RFC 5802) and SCRAM-SHA-256 (RFC 7677)."""

    sha1: ScramKeys
    sha256: ScramKeys


def prepare_password(password: str) -> str:
    """Enforce the PRECIS OpaqueString profile on a password (RFC 8265 §4.2).

    Raises `InvalidPassword` for an empty password or one with disallowed code points.
    """
    if not isinstance(password, str) or not password:
        raise InvalidPassword("the password is empty")
    try:
        return _OPAQUE_STRING.enforce(password)
    except UnicodeError as exc:  # precis_i18n raises UnicodeEncodeError
        raise InvalidPassword(f"the password is not allowed: {exc.reason}") from None


def _check_iterations(iterations: int) -> None:
    if type(iterations) is not int or not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(
            f"iterations must be an int in [{MIN_ITERATIONS}, {MAX_ITERATIONS}], not {iterations!r}"
        )


def _keys(mechanism: str, prepared: str, salt: bytes, iterations: int) -> ScramKeys:
    """SaltedPassword, StoredKey and ServerKey of RFC 5802 §3, computed by scramp."""
    try:
        salt, stored_key, server_key, i = ScramMechanism(mechanism).make_auth_info(
            prepared, iteration_count=iterations, salt=salt
        )
    except ScramException as exc:
        # scramp applies SASLprep (RFC 4013) on top; it refuses e.g. code points
        # unassigned in Unicode 3.2, which OpaqueString accepts.
        raise InvalidPassword(f"the password cannot be used with SCRAM: {exc}") from None
    return ScramKeys(salt, i, stored_key, server_key)


def derive_credentials(password: str, iterations: int = DEFAULT_ITERATIONS) -> StoredCredentials:
    """Salt and hash a new password for both SCRAM mechanisms (RFC 5802 §3, RFC 7677).

    Each mechanism gets its own random 16-byte salt.  CPU heavy: run it in a thread.
    Raises `InvalidPassword` for an unusable password and `ValueError` for a bad count.
    """
    _check_iterations(iterations)
    prepared = prepare_password(password)
    sha1, sha256 = (
        _keys(name, prepared, secrets.token_bytes(SALT_BYTES), iterations)
        for _, name, _ in _MECHANISMS
    )
    return StoredCredentials(sha1=sha1, sha256=sha256)


def unusable_credentials() -> StoredCredentials:
    """Keys no password matches (random, derived from none): the account of a user whom
    another system authenticates (a token or HTTP backend) exists here without a password."""
    sha1, sha256 = (
        ScramKeys(secrets.token_bytes(SALT_BYTES), DEFAULT_ITERATIONS,
                  secrets.token_bytes(size), secrets.token_bytes(size))
        for _, _, size in _MECHANISMS
    )
    return StoredCredentials(sha1=sha1, sha256=sha256)


def check_password(creds: StoredCredentials, password: str) -> bool:
    """Whether a plaintext password (SASL PLAIN, RFC 4616 §2) matches the stored keys.

    The SCRAM-SHA-256 keys are recomputed with the stored salt and iteration count and
    compared in constant time.  An unusable password simply does not match.
    """
    try:
        keys = _keys(
            "SCRAM-SHA-256",
            prepare_password(password),
            creds.sha256.salt,
            creds.sha256.iterations,
        )
    except InvalidPassword:
        return False
    return hmac.compare_digest(keys.stored_key, creds.sha256.stored_key) & hmac.compare_digest(
        keys.server_key, creds.sha256.server_key
    )


def to_redis_hash(creds: StoredCredentials) -> dict[str, bytes]:
    """The flat Redis hash form: ``sha1_salt``, ``sha1_iter``, ``sha1_stored``, …"""
    out: dict[str, bytes] = {}
    for prefix, _, _ in _MECHANISMS:
        keys: ScramKeys = getattr(creds, prefix)
        out[f"{prefix}_salt"] = keys.salt
        out[f"{prefix}_iter"] = str(keys.iterations).encode("ascii")
        out[f"{prefix}_stored"] = keys.stored_key
        out[f"{prefix}_server"] = keys.server_key
    return out


def from_redis_hash(mapping: Mapping[bytes, bytes] | Mapping[str, bytes]) -> StoredCredentials:
    """Read back what `to_redis_hash` wrote (as HGETALL returns it; other fields are ignored).

    Raises `ValueError` naming the missing or malformed fields.
    """
    fields: dict[str, bytes] = {
        (k.decode("utf-8", "replace") if isinstance(k, bytes) else k): v for k, v in mapping.items()
    }
    wanted = [f"{prefix}_{field}" for prefix, _, _ in _MECHANISMS for field in _FIELDS]
    missing = [name for name in wanted if name not in fields]
    if missing:
        raise ValueError(f"stored credentials lack the field(s) {', '.join(missing)}")
    parsed: dict[str, ScramKeys] = {}
    for prefix, _, digest_size in _MECHANISMS:
        raw_iter = fields[f"{prefix}_iter"]
        if not raw_iter.isdigit():
            raise ValueError(f"stored credentials: {prefix}_iter is not a number")
        keys = ScramKeys(
            salt=bytes(fields[f"{prefix}_salt"]),
            iterations=int(raw_iter),
            stored_key=bytes(fields[f"{prefix}_stored"]),
            server_key=bytes(fields[f"{prefix}_server"]),
        )
        if not MIN_ITERATIONS <= keys.iterations <= MAX_ITERATIONS:
            raise ValueError(f"stored credentials: {prefix}_iter is out of range")
        if len(keys.salt) < 12:  # what scramp accepts
            raise ValueError(f"stored credentials: {prefix}_salt is too short")
        if len(keys.stored_key) != digest_size or len(keys.server_key) != digest_size:
            raise ValueError(f"stored credentials: {prefix} keys have the wrong length")
        parsed[prefix] = keys
    return StoredCredentials(sha1=parsed["sha1"], sha256=parsed["sha256"])


# ---- the JSON form: import from (and export to) other servers -------------------------------
#
#   {"SCRAM-SHA-1":   {"salt": B64, "iterations": N, "stored_key": B64, "server_key": B64},
#    "SCRAM-SHA-256": {"salt": B64, "iterations": N, "stored_key": B64, "server_key": B64}}
#
# B64 is standard base64 with padding (RFC 4648 §4).  Both hashes are needed: an account
# offers SCRAM-SHA-1 and SCRAM-SHA-256 alike (the SASL layer has no per-account list).

_JSON_FIELDS: Final = frozenset({"salt", "iterations", "stored_key", "server_key"})


def to_json(creds: StoredCredentials) -> dict[str, dict[str, str | int]]:
    """The JSON form of the keys (documented in docs/operations.md, "Importing accounts")."""
    out: dict[str, dict[str, str | int]] = {}
    for prefix, name, _ in _MECHANISMS:
        keys: ScramKeys = getattr(creds, prefix)
        out[name] = {
            "salt": base64.b64encode(keys.salt).decode("ascii"),
            "iterations": keys.iterations,
            "stored_key": base64.b64encode(keys.stored_key).decode("ascii"),
            "server_key": base64.b64encode(keys.server_key).decode("ascii"),
        }
    return out


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not well-formed base64") from None


def from_json(doc: object, min_iterations: int = MIN_ITERATIONS) -> StoredCredentials:
    """Read the JSON form back, checking everything RFC 5802 §3 keys must satisfy: both
    mechanisms present and nothing else, base64 well-formed, StoredKey and ServerKey as long
    as the hash's output (20 bytes for SHA-1, 32 for SHA-256), a salt of at least 12 bytes
    and an iteration count in [min_iterations, MAX_ITERATIONS].

    Raises `ValueError` with a reason fit for an operator."""
    if not isinstance(doc, dict):
        raise ValueError("scram is not a JSON object")
    names = {name for _, name, _ in _MECHANISMS}
    unknown = sorted(str(k) for k in doc if k not in names)
    if unknown:
        raise ValueError(f"scram: unsupported mechanism(s) {', '.join(unknown)} "
                         f"(give {' and '.join(sorted(names))})")
    parsed: dict[str, ScramKeys] = {}
    for prefix, name, digest_size in _MECHANISMS:
        part = doc.get(name)
        if part is None:
            raise ValueError(f"scram: {name} is missing (keys for both hashes are needed)")
        if not isinstance(part, dict):
            raise ValueError(f"scram: {name} is not a JSON object")
        missing = sorted(_JSON_FIELDS - part.keys())
        extra = sorted(str(k) for k in part.keys() - _JSON_FIELDS)
        if missing or extra:
            raise ValueError(f"scram: {name} " + "; ".join(
                ([f"lacks {', '.join(missing)}"] if missing else [])
                + ([f"has unknown field(s) {', '.join(extra)}"] if extra else [])))
        iterations = part["iterations"]
        if type(iterations) is not int or not min_iterations <= iterations <= MAX_ITERATIONS:
            raise ValueError(f"scram: {name} iterations must be an integer in "
                             f"[{min_iterations}, {MAX_ITERATIONS}], not {iterations!r}")
        salt = _b64(part["salt"], f"scram: {name} salt")
        stored = _b64(part["stored_key"], f"scram: {name} stored_key")
        server = _b64(part["server_key"], f"scram: {name} server_key")
        if len(salt) < 12:  # what scramp accepts
            raise ValueError(f"scram: {name} salt is shorter than 12 bytes")
        for what, key in (("stored_key", stored), ("server_key", server)):
            if len(key) != digest_size:
                raise ValueError(f"scram: {name} {what} has {len(key)} bytes, "
                                 f"not {digest_size}")
        parsed[prefix] = ScramKeys(salt, iterations, stored, server)
    return StoredCredentials(sha1=parsed["sha1"], sha256=parsed["sha256"])
