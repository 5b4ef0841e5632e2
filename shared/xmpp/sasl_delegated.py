"""Sans-I/O SASL exchanges whose secret a backend checks: PLAIN and OAUTHBEARER.

Domains whose users live in the platform's identity system (shared/store/domains.py,
``token`` and ``http`` backends) have no SCRAM keys here, so SCRAM cannot run; the client
sends the secret itself, over TLS, and the caller asks the backend:

    PLAIN (RFC 4616)        -> NeedVerification(authcid, password)
    OAUTHBEARER (RFC 7628)  -> NeedVerification(the authzid's localpart or None, token)

then answers `verified(localpart)` (-> `Success`) or `rejected()`.  PLAIN fails at once
with not-authorized; OAUTHBEARER first sends the error challenge of RFC 7628 §3.2.2 and
fails once the client sent its dummy %x01 response (or aborted).  The steps and failures
are those of `shared.xmpp.sasl`, so the stream machine drives both kinds alike.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from typing import Final

from shared.xmpp.sasl import (
    Challenge,
    SASLCondition,
    SASLFailure,
    Step,
    Success,
    _decode,
    prepare_username,
)

PASSWORD_MECHANISMS: Final = ("PLAIN",)
TOKEN_MECHANISMS: Final = ("OAUTHBEARER", "PLAIN")  # PLAIN: the token as the password
MECHANISMS: Final = ("OAUTHBEARER", "PLAIN")

KVSEP: Final = "\x01"  # RFC 7628 §3.1
# RFC 7628 §3.1: auth-value = "Bearer" 1*SP b64token (RFC 6750 §2.1; the scheme is
# case-insensitive, RFC 7235 §2.1)
_BEARER: Final = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")
_KEY: Final = re.compile(r"[A-Za-z]+")
# RFC 7628 §3.2.2: the error the server sends before failing (RFC 6750 §3.1 status)
ERROR_CHALLENGE: Final = json.dumps({"status": "invalid_token"}).encode()


@dataclass(frozen=True, slots=True)
class NeedVerification:
    """Ask the domain's backend whether ``secret`` authenticates; ``username`` is the
    prepared localpart the client named (None: the token names it)."""

    username: str | None
    secret: str = field(repr=False)


class _State(enum.Enum):
    START = "start"
    EXPECT_INITIAL = "expect-initial"
    NEED_VERIFICATION = "need-verification"
    EXPECT_DUMMY = "expect-dummy"  # RFC 7628 §3.2.2 error challenge sent
    DONE = "done"


class DelegatedAuthenticator:
    """One PLAIN or OAUTHBEARER exchange checked by a backend (RFC 6120 §6.4)."""

    def __init__(self, mechanism: str, *, domain: str) -> None:
        if mechanism not in MECHANISMS:
            raise SASLFailure(SASLCondition.INVALID_MECHANISM, "unsupported mechanism")
        self.mechanism = mechanism
        self._domain = domain.rstrip(".").lower()
        self._state = _State.START
        self._username: str | None = None
        self._authzid: str | None = None

    def start(self, initial_response: bytes | None) -> Step | NeedVerification:
        """Handle <auth/>; None when there was no initial response (RFC 6120 §6.4.2)."""
        if self._state is not _State.START:
            raise RuntimeError("start() called twice")
        if initial_response is None:
            self._state = _State.EXPECT_INITIAL
            return Challenge(b"")
        return self._guarded(initial_response)

    def respond(self, response: bytes) -> Step | NeedVerification:
        if self._state is _State.EXPECT_INITIAL:
            return self._guarded(response)
        state, self._state = self._state, _State.DONE
        if state is _State.EXPECT_DUMMY:
            if response != KVSEP.encode():  # RFC 7628 §3.2.2: a single %x01
                raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "expected %x01")
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED)
        raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "unexpected response")

    def verified(self, username: str) -> Step:
        """The backend accepted the secret for the account ``username`` (a localpart)."""
        self._expect_verdict()
        self._state = _State.DONE
        try:
            name = prepare_username(username)
        except ValueError as exc:
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED, str(exc)) from None
        if self._username is not None and name != self._username:
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED, "the token names another user")
        if self._authzid is not None and self._authzid != name:
            # RFC 6120 §6.3.8: one may only authorize as oneself
            raise SASLFailure(SASLCondition.INVALID_AUTHZID, "may only authorize as oneself")
        return Success(name, None)

    def rejected(self) -> Step:
        """The backend said no: PLAIN fails; OAUTHBEARER sends RFC 7628 §3.2.2's error."""
        self._expect_verdict()
        if self.mechanism == "OAUTHBEARER":
            self._state = _State.EXPECT_DUMMY
            return Challenge(ERROR_CHALLENGE)
        self._state = _State.DONE
        raise SASLFailure(SASLCondition.NOT_AUTHORIZED)

    # ---- parsing ------------------------------------------------------------------------

    def _expect_verdict(self) -> None:
        if self._state is not _State.NEED_VERIFICATION:
            raise RuntimeError("no verification was asked for")

    def _guarded(self, data: bytes) -> NeedVerification:
        try:
            text = _decode(data)
            need = self._plain(text) if self.mechanism == "PLAIN" else self._oauthbearer(text)
        except SASLFailure:
            self._state = _State.DONE
            raise
        self._state = _State.NEED_VERIFICATION
        return need

    def _local(self, raw: str) -> str:
        """An authcid or authzid (``user`` or ``user@domain``) as a localpart here."""
        local, at, domain = raw.rpartition("@")
        if not at:
            local = raw
        elif domain.rstrip(".").lower() != self._domain:
            raise SASLFailure(SASLCondition.INVALID_AUTHZID, "may only authorize as oneself")
        try:
            return prepare_username(local)
        except ValueError as exc:
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED, str(exc)) from None

    def _plain(self, text: str) -> NeedVerification:
        """RFC 4616 §2: message = [authzid] NUL authcid NUL passwd."""
        parts = text.split("\0")
        if len(parts) != 3:
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "PLAIN needs two NULs")
        authzid, authcid, password = parts
        if not authcid or not password:
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "empty authcid or password")
        try:
            self._username = prepare_username(authcid)
        except ValueError as exc:
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED, str(exc)) from None
        if authzid and self._local(authzid) != self._username:
            raise SASLFailure(SASLCondition.INVALID_AUTHZID, "may only authorize as oneself")
        return NeedVerification(self._username, password)

    def _oauthbearer(self, text: str) -> NeedVerification:
        """RFC 7628 §3.1: client-resp = gs2-header kvsep *kvpair kvsep."""
        header, sep, rest = text.partition(KVSEP)
        if not sep or not rest.endswith(KVSEP):
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "bad client response")
        flag, comma, authz = header.partition(",")
        if not comma or not authz.endswith(","):
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "bad gs2-header")
        if flag not in ("n", "y"):  # RFC 7628 §3.1: no channel binding ("p=")
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "bad gs2-cbind-flag")
        authz = authz[:-1]
        if authz:
            if not authz.startswith("a="):
                raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "bad authzid")
            self._authzid = self._local(_unescape(authz[2:]))
        pairs: dict[str, str] = {}
        for kvpair in rest[:-1].split(KVSEP)[:-1] if rest != KVSEP else []:
            key, eq, value = kvpair.partition("=")
            if not eq or not _KEY.fullmatch(key):
                raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "bad key/value pair")
            pairs[key] = value
        if rest[:-1] and not rest[:-1].endswith(KVSEP):
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "bad key/value pair")
        match = _BEARER.fullmatch(pairs.get("auth", ""))
        if match is None:
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "no Bearer auth value")
        return NeedVerification(self._authzid, match.group(1))


def _unescape(saslname: str) -> str:
    """RFC 5801 §4 saslname: "=2C" is ",", "=3D" is "="; any other "=" is an error."""
    for i, char in enumerate(saslname):
        if char == "=" and saslname[i + 1 : i + 3] not in ("2C", "3D"):
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "bad escape in authzid")
    return saslname.replace("=2C", ",").replace("=3D", "=")
