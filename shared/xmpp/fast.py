"""FAST tokens (XEP-0484) and their HT-* SASL mechanisms (draft-schmaus-kitten-sasl-ht), sans-I/O.

A client that authenticated with its password asks for a token (<request-token/> in its
SASL2 <authenticate/>); later it logs in with the token alone, in one round trip:

    initial response = authcid NUL HMAC-SHA-256(token, "Initiator" || cb-data)
    success data     = HMAC-SHA-256(token, "Responder" || cb-data)

cb-data is the channel binding of the mechanism's type (-EXPR tls-exporter, -UNIQ
tls-unique, -ENDP tls-server-end-point; -NONE none).  A token is bound to the mechanism it was
issued for (XEP-0484 §4.4).

Stored hashed: the database keeps a token's random id and the SHA-256 of the token, never the
token.  The token is `derive_token(secret, id)`: an HMAC under a secret of the cluster
(``STANZAD_FAST_TOKEN_SECRET``, or one kept in Redis), so a copy of the database alone
neither holds nor yields a usable token.  The HT mechanisms need the token itself as the
HMAC key; the server derives it again at each login and checks it against the stored hash.

Rotation follows XEP-0484 §8.1: two slots per (account, client), "current" and "new".  A
token issued goes to "new" (replacing one never used); a login with the "new" token makes it
"current" (the older one is gone); a login with the "current" one near its expiry gets a new
token in the <success/>.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from shared.xmpp.sasl import (
    ChannelBinding,
    SASLCondition,
    SASLFailure,
    Step,
    Success,
    prepare_username,
)

# HT mechanism -> the channel binding type it needs (None: none), offered in this order
MECHANISMS: Final[dict[str, str | None]] = {
    "HT-SHA-256-EXPR": "tls-exporter",
    "HT-SHA-256-UNIQ": "tls-unique",
    "HT-SHA-256-ENDP": "tls-server-end-point",
    "HT-SHA-256-NONE": None,
}
CURRENT: Final = "current"
NEW: Final = "new"
_MAX_AUTHCID: Final = 3071  # a bare JID at most (RFC 7622 §3.1)


def offered(binding: ChannelBinding | None) -> tuple[str, ...]:
    """The HT mechanisms a connection can do: -NONE always, the others with their binding."""
    types = binding.types if binding is not None else ()
    return tuple(m for m, kind in MECHANISMS.items() if kind is None or kind in types)


def derive_token(secret: bytes, token_id: bytes) -> str:
    """The token of id `token_id` under the cluster's secret (the module's docstring)."""
    mac = hmac.digest(secret, b"stanzad FAST token\0" + token_id, hashlib.sha256)
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def token_hash(token: str) -> bytes:
    """What the database keeps of a token."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class StoredToken:
    """One slot's token of an (account, client), as the caller loaded and derived it."""

    slot: str  # CURRENT or NEW
    mechanism: str
    token: str
    expires_at: float  # Unix time


@dataclass(frozen=True, slots=True)
class NeedTokens:
    """Load the tokens of `username` for the client (its SASL2 user-agent id), then call
    `TokenAuthenticator.provide_tokens`."""

    username: str


class TokenAuthenticator:
    """One HT-* exchange on the server side: one message in, success or failure out."""

    def __init__(self, mechanism: str, *, domain: str,
                 channel_binding: ChannelBinding | None) -> None:
        if mechanism not in MECHANISMS:
            raise SASLFailure(SASLCondition.INVALID_MECHANISM, "unsupported mechanism")
        kind = MECHANISMS[mechanism]
        data = b""
        if kind is not None:
            found = channel_binding.data(kind) if channel_binding is not None else None
            if not found:
                raise SASLFailure(SASLCondition.INVALID_MECHANISM, "no such channel binding here")
            data = found
        self.mechanism = mechanism
        self._domain = domain
        self._cb_data = data
        self._username = ""
        self._mac = b""
        self._done = False

    def start(self, initial_response: bytes | None) -> NeedTokens:
        """The initiator's message (the initial response; HT has no challenge)."""
        if self._done or self._username:
            raise RuntimeError("start() called twice")
        if not initial_response:
            self._done = True
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "HT needs an initial response")
        authcid, nul, mac = bytes(initial_response).partition(b"\0")
        if not nul or len(mac) != hashlib.sha256().digest_size or len(authcid) > _MAX_AUTHCID:
            self._done = True
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "bad HT initiator message")
        try:
            name = authcid.decode()
            local, at, domain = name.rpartition("@")
            if at and domain.rstrip(".").lower() != self._domain:
                raise ValueError("another domain")
            self._username = prepare_username(local if at else name)
        except ValueError:  # UnicodeDecodeError included
            self._done = True
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED) from None
        self._mac = mac
        return NeedTokens(self._username)

    def provide_tokens(self, tokens: list[StoredToken], now: float) -> Step:
        """The client's tokens (at most one per slot); success carries the one that matched
        (`Success.detail`), a NEW one first (XEP-0484 §8.1)."""
        if self._done or not self._username:
            raise RuntimeError("provide_tokens() without NeedTokens")
        self._done = True
        ordered = sorted(tokens, key=lambda t: t.slot != NEW)
        for token in ordered:
            if token.mechanism != self.mechanism or token.expires_at <= now:
                continue
            key = token.token.encode()
            expected = hmac.digest(key, b"Initiator" + self._cb_data, hashlib.sha256)
            if hmac.compare_digest(expected, self._mac):
                answer = hmac.digest(key, b"Responder" + self._cb_data, hashlib.sha256)
                return Success(self._username, answer, token)
        raise SASLFailure(SASLCondition.NOT_AUTHORIZED)

    def respond(self, response: bytes) -> Step:
        self._done = True
        raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "unexpected response")


def initiator_message(username: str, token: str, cb_data: bytes = b"") -> bytes:
    """The client's side of an HT login (for tests and tools)."""
    mac = hmac.digest(token.encode(), b"Initiator" + cb_data, hashlib.sha256)
    return username.encode() + b"\0" + mac


def responder_data(token: str, cb_data: bytes = b"") -> bytes:
    """What the server's <success/> must carry for `token` (for tests and tools)."""
    return hmac.digest(token.encode(), b"Responder" + cb_data, hashlib.sha256)
