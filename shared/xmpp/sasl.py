"""Sans-I/O SASL for the c2s stream (RFC 6120 §6).

Mechanisms: SCRAM-SHA-256 (RFC 7677), SCRAM-SHA-1 (RFC 5802) and PLAIN (RFC 4616).  The
stream state machine decodes the base64 of <auth/>/<response/> and drives an
`Authenticator` with the raw bytes; each call returns the next `Step`:

    NeedCredentials(username) -> look the user up (asynchronously), then
                                 `provide_credentials(creds or None)`
    Challenge(data)           -> send <challenge/> with base64(data)
    Success(username, data)   -> send <success/> with base64(data), or empty without data

or raises `SASLFailure`, whose condition goes into <failure/> (RFC 6120 §6.5).  After a
failure or a success the authenticator is spent; a new <auth/> gets a new one.

The SCRAM arithmetic is scramp's.  scramp asks for the user's keys synchronously inside
``set_client_first``, so this module parses the username out of the client-first-message
itself (RFC 5802 §7), returns `NeedCredentials`, and only feeds scramp once the keys are
there.  Unknown users get a challenge with a deterministic fake salt and fail with
not-authorized at the end, like a wrong password (RFC 5802 §5.1 allows this to avoid
revealing which accounts exist).

Channel binding (RFC 5802 §6, §7; RFC 5929, RFC 9266): SCRAM-SHA-1-PLUS and
SCRAM-SHA-256-PLUS are offered on a connection whose TLS gives at least one binding type (a
`ChannelBinding`, from ``shared.tls.binding``); the types are advertised with XEP-0440
(`binding_feature`).  scramp knows no ``tls-exporter``, so the gs2-header and the binding data
are checked the way an authzid already is: scramp compares the client's ``c=`` against the
header the client sent plus our binding data (`_VerbatimGs2Header`).  A ``p=`` type this
connection lacks, a PLUS mechanism without ``p=``, and ``y`` while PLUS was offered (a
downgrade, RFC 5802 §6) fail with not-authorized.  XEP-0474 (SSDP): the server-first-message
carries ``h=``, the hash of the offered mechanisms and binding types (`ssdp_hash`), covered by
the client's proof.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar
from xml.sax.saxutils import escape, quoteattr

from precis_i18n import get_profile
from scramp import ScramException, ScramMechanism
from scramp.core import ScramServer
from scramp.utils import ServerError

from shared.xmpp import ns
from shared.xmpp.credentials import (
    DEFAULT_ITERATIONS,
    SALT_BYTES,
    ScramKeys,
    StoredCredentials,
    check_password,
)
from shared.xmpp.errors import XMPPError

# offered in this order; the -PLUS ones only where the connection has a channel binding
MECHANISMS: Final = ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1",
                     "PLAIN")
# channel binding types in our order of preference (RFC 9266 §3: tls-exporter first)
BINDING_TYPES: Final = ("tls-exporter", "tls-unique", "tls-server-end-point")

MAX_MESSAGE_BYTES: Final = 4096  # one client message, after base64 decoding
MAX_LOCALPART_BYTES: Final = 1023  # RFC 7622 §3.3.1

_SCRAM_DIGEST_SIZE: Final = {"SCRAM-SHA-1": 20, "SCRAM-SHA-256": 32}
_SCRAM_HASH: Final = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}

# RFC 7622 §3.3.1: characters a localpart may not contain even when PRECIS allows them.
_LOCALPART_FORBIDDEN: Final = frozenset("\"&'/:<>@")

_USERNAME = get_profile("UsernameCaseMapped")

# Keys the fake salts of unknown users; per process unless the caller gives a shared one.
_PROCESS_FAKE_SALT_KEY: Final = secrets.token_bytes(32)

_T = TypeVar("_T")


class ChannelBinding(Protocol):
    """What a connection's TLS layer offers for channel binding (``shared.tls.binding``)."""

    types: tuple[str, ...]  # the binding types of this connection, in `BINDING_TYPES` order

    def data(self, kind: str) -> bytes | None:
        """The binding data of type ``kind`` (RFC 5929, RFC 9266), None if there is none."""
        ...


def is_plus(mechanism: str) -> bool:
    """A mechanism that needs channel binding (RFC 5802 §4: the -PLUS suffix)."""
    return mechanism.endswith("-PLUS")


def offered_mechanisms(configured: tuple[str, ...], binding: ChannelBinding | None
                       ) -> tuple[str, ...]:
    """The mechanisms to offer on a connection: the -PLUS ones only with a binding type."""
    if binding is not None and binding.types:
        return configured
    return tuple(m for m in configured if not is_plus(m))


def binding_feature(types: tuple[str, ...]) -> str:
    """XEP-0440 §2: the <sasl-channel-binding/> stream feature ("" without types)."""
    if not types:
        return ""
    inner = "".join(f"<channel-binding type={quoteattr(t)}/>" for t in types)
    return f'<sasl-channel-binding xmlns="{ns.SASL_CB}">{inner}</sasl-channel-binding>'


def ssdp_hash(mechanisms: tuple[str, ...], binding_types: tuple[str, ...] | None,
              hash_name: str) -> str:
    """XEP-0474 §5.1: base64 of the hash, with the SCRAM mechanism's function, of the
    offered mechanisms (sorted by octets, joined by 0x1E), then, when XEP-0440 advertised
    binding types (`binding_types` not None), 0x1F and those types sorted and joined alike."""
    text = "\x1e".join(sorted(mechanisms, key=str.encode))
    if binding_types is not None:
        text += "\x1f" + "\x1e".join(sorted(binding_types, key=str.encode))
    return base64.b64encode(hashlib.new(hash_name, text.encode()).digest()).decode()


class SASLCondition(enum.Enum):
    """RFC 6120 §6.5 SASL failure conditions; the value is the element name."""

    ABORTED = "aborted"
    ACCOUNT_DISABLED = "account-disabled"
    CREDENTIALS_EXPIRED = "credentials-expired"
    ENCRYPTION_REQUIRED = "encryption-required"
    INCORRECT_ENCODING = "incorrect-encoding"
    INVALID_AUTHZID = "invalid-authzid"
    INVALID_MECHANISM = "invalid-mechanism"
    MALFORMED_REQUEST = "malformed-request"
    MECHANISM_TOO_WEAK = "mechanism-too-weak"
    NOT_AUTHORIZED = "not-authorized"
    TEMPORARY_AUTH_FAILURE = "temporary-auth-failure"


class SASLFailure(XMPPError):
    """The exchange failed; answer with <failure/> (RFC 6120 §6.4.5, §6.5)."""

    def __init__(self, condition: SASLCondition, text: str | None = None) -> None:
        super().__init__(f"{condition.value}: {text}" if text else condition.value)
        self.condition = condition
        self.text = text

    def to_xml(self) -> bytes:
        """The <failure/> element (RFC 6120 §6.4.5).  The text is for debugging only."""
        text = f'<text xml:lang="en">{escape(self.text)}</text>' if self.text else ""
        return f'<failure xmlns="{ns.SASL}"><{self.condition.value}/>{text}</failure>'.encode()


@dataclass(frozen=True, slots=True)
class NeedCredentials:
    """Look up `username` and call `Authenticator.provide_credentials` with the result."""

    username: str


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send <challenge/> with base64(data) (RFC 6120 §6.4.3)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Success:
    """Send <success/> (RFC 6120 §6.4.6), with base64(data) as additional data if any.

    `username` is the PRECIS UsernameCaseMapped localpart (RFC 8265 §3.3, RFC 7622 §3.3).
    """

    username: str
    data: bytes | None
    detail: object = None  # what the mechanism wants its caller to know (FAST: the token)


Step = NeedCredentials | Challenge | Success


class _State(enum.Enum):
    START = "start"
    EXPECT_INITIAL = "expect-initial"  # an empty challenge was sent (RFC 6120 §6.4.2)
    NEED_CREDENTIALS = "need-credentials"
    EXPECT_FINAL = "expect-final"  # SCRAM server-first-message was sent
    DONE = "done"


def prepare_username(raw: str) -> str:
    """A SASL simple user name as a JID localpart (RFC 6120 §6.3.8, RFC 7622 §3.3).

    Enforces PRECIS UsernameCaseMapped (RFC 8265 §3.3) plus the JID localpart rules;
    raises ValueError.
    """
    try:
        name: str = _USERNAME.enforce(raw)
    except UnicodeError as exc:  # precis_i18n raises UnicodeEncodeError
        raise ValueError(f"invalid username: {exc.reason}") from None
    if _LOCALPART_FORBIDDEN.intersection(name):
        raise ValueError("invalid username: character not allowed in a localpart")
    if len(name.encode()) > MAX_LOCALPART_BYTES:
        raise ValueError("invalid username: too long")
    return name


def _scram_unescape(saslname: str) -> str:
    """RFC 5802 §5.1 saslname: "=2C" is ",", "=3D" is "=", any other "=" is an error."""
    if not saslname:
        raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "empty name")
    for i, char in enumerate(saslname):
        if char == "=" and saslname[i + 1 : i + 3] not in ("2C", "3D"):
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "bad escape in name")
    return saslname.replace("=2C", ",").replace("=3D", "=")


class _VerbatimGs2Header:
    """Stands in for scramp's parsed gs2-header: the header the client sent, and our
    channel binding data when it asked for binding.

    scramp refuses a non-empty authzid ("a=") in the gs2-header, but RFC 5802 §7 allows one,
    and the client's c= attribute (covered by its proof) is base64 of the header *with* it;
    scramp knows no tls-exporter either.  We check the header ourselves, give scramp "n,,"
    and the bare message, then swap this in so that scramp compares c= against the header
    the client really sent followed, for "p=", by the binding data (RFC 5802 §7 cbind-input).
    """

    def __init__(self, header: str, binding_data: bytes = b"") -> None:
        self._input = header.encode() + binding_data

    def make_cbind_input(self, channel_binding: object) -> bytes:
        return self._input


_SCRAM_ERRORS: Final = {
    ServerError.INVALID_PROOF: SASLCondition.NOT_AUTHORIZED,
    ServerError.UNKNOWN_USER: SASLCondition.NOT_AUTHORIZED,
    ServerError.CHANNEL_BINDINGS_DONT_MATCH: SASLCondition.NOT_AUTHORIZED,
    ServerError.CHANNEL_BINDING_NOT_SUPPORTED: SASLCondition.NOT_AUTHORIZED,
    ServerError.SERVER_DOES_SUPPORT_CHANNEL_BINDING: SASLCondition.NOT_AUTHORIZED,
    ServerError.UNSUPPORTED_CHANNEL_BINDING_TYPE: SASLCondition.NOT_AUTHORIZED,
    ServerError.NO_RESOURCES: SASLCondition.TEMPORARY_AUTH_FAILURE,
}


def _scram_failure(exc: Exception) -> SASLFailure:
    """Map a scramp error (RFC 5802 §7 server-error values) to an RFC 6120 §6.5 condition."""
    server_error = exc.server_error if isinstance(exc, ScramException) else None
    condition = (
        _SCRAM_ERRORS.get(server_error, SASLCondition.MALFORMED_REQUEST)
        if server_error is not None
        else SASLCondition.MALFORMED_REQUEST
    )
    return SASLFailure(condition, str(exc))


class Authenticator:
    """One SASL exchange on the server side (RFC 6120 §6.4), without I/O."""

    def __init__(
        self,
        mechanism: str,
        *,
        domain: str,
        channel_binding: ChannelBinding | None = None,
        offered: tuple[str, ...] | None = None,
        fake_salt_key: bytes | None = None,
    ) -> None:
        """`domain` is the server's domain (an authzid may be ``user@domain``).

        `channel_binding`: the connection's bindings (SCRAM-*-PLUS, RFC 5802 §6).
        `offered`: the mechanisms advertised on this connection; given, SCRAM's
        server-first-message carries the XEP-0474 hash of them and of the binding types.
        `fake_salt_key` keys the fake salts shown for unknown users; give every node of a
        cluster the same secret so they all show the same salt for the same name.
        Raises SASLFailure(invalid-mechanism) for a mechanism not in `MECHANISMS`, or a -PLUS
        one without a channel binding.
        """
        if mechanism not in MECHANISMS:
            raise SASLFailure(SASLCondition.INVALID_MECHANISM, "unsupported mechanism")
        types = channel_binding.types if channel_binding is not None else ()
        if is_plus(mechanism) and not types:
            raise SASLFailure(SASLCondition.INVALID_MECHANISM, "no channel binding here")
        self.mechanism = mechanism
        self._base = mechanism.removesuffix("-PLUS")
        self._binding = channel_binding if types else None
        # RFC 5802 §6: a "y" flag is a downgrade when PLUS was offered
        self._plus_offered = bool(types) and any(
            is_plus(m) for m in (offered if offered is not None else MECHANISMS))
        self._ssdp = (
            ssdp_hash(offered, types or None, _SCRAM_HASH[self._base])
            if offered is not None and self._base in _SCRAM_HASH else ""
        )
        self._domain = domain.rstrip(".").lower()
        self._fake_salt_key = fake_salt_key or _PROCESS_FAKE_SALT_KEY
        self._state = _State.START
        self._username = ""
        # PLAIN
        self._password: str | None = None
        # SCRAM
        self._gs2_header = ""  # as the client sent it, authzid included
        self._binding_input = b""  # the channel binding data for a "p=" header
        self._authzid = ""
        self._scramp_first = ""  # client-first-message without the authzid, for scramp
        self._nonce = ""  # client nonce + server nonce (RFC 5802 §5.1 "r")
        self._server: ScramServer | None = None
        self._unknown_user = False

    # ---- the three calls ------------------------------------------------------------

    def start(self, initial_response: bytes | None) -> Step:
        """Handle <auth/> (RFC 6120 §6.4.2).

        `initial_response` is the decoded initial response, None when there was none and
        b"" when the client sent "=" (an empty one).
        """
        if self._state is not _State.START:
            raise RuntimeError("start() called twice")
        if initial_response is None:
            self._state = _State.EXPECT_INITIAL
            return Challenge(b"")
        return self._guarded(self._first_message, initial_response)

    def provide_credentials(self, creds: StoredCredentials | None) -> Step:
        """The caller's answer to `NeedCredentials`; None when there is no such user."""
        if self._state is not _State.NEED_CREDENTIALS:
            raise RuntimeError("provide_credentials() called without NeedCredentials")
        if self.mechanism == "PLAIN":
            return self._guarded(self._plain_verify, creds)
        return self._guarded(self._scram_server_first, creds)

    def respond(self, response: bytes) -> Step:
        """Handle <response/> (RFC 6120 §6.4.3) with its decoded data."""
        if self._state is _State.EXPECT_INITIAL:
            return self._guarded(self._first_message, response)
        if self._state is _State.EXPECT_FINAL:
            return self._guarded(self._scram_final, response)
        self._state = _State.DONE
        raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "unexpected response")

    # ---- plumbing -------------------------------------------------------------------

    def _guarded(self, handler: Callable[[_T], Step], arg: _T) -> Step:
        """Run one step; any failure spends the authenticator."""
        try:
            return handler(arg)
        except SASLFailure:
            self._fail()
            raise
        except (ScramException, ValueError) as exc:  # never a traceback towards the peer
            self._fail()
            raise _scram_failure(exc) from None

    def _fail(self) -> None:
        self._state = _State.DONE
        self._password = None
        self._server = None

    def _first_message(self, data: bytes) -> Step:
        text = _decode(data)
        if self.mechanism == "PLAIN":
            return self._plain_message(text)
        return self._scram_client_first(text)

    def _prepare_username(self, raw: str) -> str:
        try:
            return prepare_username(raw)
        except ValueError as exc:
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED, str(exc)) from None

    def _check_authzid(self, authzid: str, username: str) -> None:
        """RFC 6120 §6.3.8: an authzid must be the account's own bare JID (or localpart)."""
        if not authzid:
            return
        local, at, domain = authzid.rpartition("@")
        if not at:
            local, domain = authzid, None
        try:
            same_user = prepare_username(local) == username
        except ValueError:
            same_user = False
        same_domain = domain is None or domain.rstrip(".").lower() == self._domain
        if not (same_user and same_domain):
            raise SASLFailure(SASLCondition.INVALID_AUTHZID, "may only authorize as oneself")

    def _fake_keys(self, mechanism: str) -> ScramKeys:
        """Keys for a user that does not exist: a salt that is stable per name, junk keys."""
        salt = hmac.digest(
            self._fake_salt_key, f"{mechanism}\0{self._username}".encode(), hashlib.sha256
        )[:SALT_BYTES]
        size = _SCRAM_DIGEST_SIZE.get(mechanism, 32)
        return ScramKeys(
            salt, DEFAULT_ITERATIONS, secrets.token_bytes(size), secrets.token_bytes(size)
        )

    # ---- PLAIN (RFC 4616) -----------------------------------------------------------

    def _plain_message(self, text: str) -> Step:
        """RFC 4616 §2: message = [authzid] NUL authcid NUL passwd."""
        parts = text.split("\0")
        if len(parts) != 3:
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "PLAIN needs two NULs")
        authzid, authcid, password = parts
        if not authcid or not password:
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "empty authcid or password")
        self._username = self._prepare_username(authcid)
        self._check_authzid(authzid, self._username)
        self._password = password
        self._state = _State.NEED_CREDENTIALS
        return NeedCredentials(self._username)

    def _plain_verify(self, creds: StoredCredentials | None) -> Step:
        password, self._password = self._password, None
        assert password is not None
        if creds is None:
            # Spend the same hashing time as for a real user before saying no.
            fake = self._fake_keys("SCRAM-SHA-256")
            check_password(StoredCredentials(fake, fake), password)
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED)
        if not check_password(creds, password):
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED)
        self._state = _State.DONE
        return Success(self._username, None)

    # ---- SCRAM (RFC 5802, RFC 7677) -------------------------------------------------

    def _scram_client_first(self, text: str) -> Step:
        """RFC 5802 §7: client-first-message = gs2-header client-first-message-bare."""
        try:
            flag, authz, bare = text.split(",", 2)
        except ValueError:
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "no gs2-header") from None
        binding_data = b""
        if flag.startswith("p="):
            binding_data = self._binding_data(flag[2:])
        elif flag not in ("n", "y"):
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "bad gs2-cbind-flag")
        elif is_plus(self.mechanism):  # RFC 5802 §6: -PLUS means binding
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED, "channel binding required")
        elif flag == "y" and self._plus_offered:
            # RFC 5802 §6: the client thinks we lack channel binding, but we offered it
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED, "server does support channel binding")
        if authz and not authz.startswith("a="):
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "bad authzid")
        authzid = _scram_unescape(authz[2:]) if authz else ""

        attrs = bare.split(",")
        if attrs[0].startswith("m="):
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "mandatory extensions unsupported")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "bad client-first-message")
        client_nonce = attrs[1][2:]
        if not client_nonce or not all(0x21 <= ord(c) <= 0x7E for c in client_nonce):
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "bad nonce")

        self._username = self._prepare_username(_scram_unescape(attrs[0][2:]))
        self._check_authzid(authzid, self._username)
        self._gs2_header = f"{flag},{authz},"
        self._binding_input = binding_data
        self._authzid = authzid
        self._scramp_first = f"n,,{bare}"
        self._nonce = client_nonce
        self._state = _State.NEED_CREDENTIALS
        return NeedCredentials(self._username)

    def _binding_data(self, kind: str) -> bytes:
        """RFC 5802 §6: the data of the binding type a "p=" flag names, if we have it."""
        if not is_plus(self.mechanism):
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED, "p= needs a -PLUS mechanism")
        binding = self._binding
        data = binding.data(kind) if binding is not None and kind in binding.types else None
        if not data:
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED, "unsupported channel binding type")
        return data

    def _scram_server_first(self, creds: StoredCredentials | None) -> Step:
        """RFC 5802 §5.1: server-first-message = r=nonce,s=salt,i=iteration-count."""
        if creds is None:
            self._unknown_user = True
            keys = self._fake_keys(self._base)
        else:
            keys = creds.sha256 if self._base == "SCRAM-SHA-256" else creds.sha1
        record = (keys.salt, keys.stored_key, keys.server_key, keys.iterations)
        server_nonce = _new_server_nonce()
        server = ScramMechanism(self._base).make_server(
            lambda _username: record, s_nonce=server_nonce
        )
        server.set_client_first(self._scramp_first)
        if self._gs2_header != "n,,":
            if not hasattr(server, "gs2_header"):  # a scramp that changed under us
                raise SASLFailure(SASLCondition.TEMPORARY_AUTH_FAILURE, "gs2-header unsupported")
            server.gs2_header = _VerbatimGs2Header(self._gs2_header, self._binding_input)
        server_first: str = server.get_server_first()
        if self._ssdp:
            # XEP-0474 §5.1: an extension attribute (RFC 5802 §7) in the AuthMessage too
            server_first += f",h={self._ssdp}"
            if getattr(server, "server_first", None) is None:  # a scramp that changed
                raise SASLFailure(SASLCondition.TEMPORARY_AUTH_FAILURE, "SSDP unsupported")
            server.server_first = server_first
        self._nonce += server_nonce
        self._server = server
        self._state = _State.EXPECT_FINAL
        return Challenge(server_first.encode())

    def _scram_final(self, data: bytes) -> Step:
        """RFC 5802 §7: client-final-message = c=…,r=…[,ext],p=proof; answer v=signature."""
        text = _decode(data)
        attrs = text.split(",")
        if len(attrs) < 3 or not attrs[1].startswith("r="):
            raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "bad client-final-message")
        if attrs[1][2:] != self._nonce:
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED, "nonce mismatch")
        server = self._server
        assert server is not None
        server.set_client_final(text)  # checks c= (the gs2-header) and the proof
        if self._unknown_user:  # cannot happen with random keys; never let it succeed anyway
            raise SASLFailure(SASLCondition.NOT_AUTHORIZED)
        server_final: str = server.get_server_final()
        self._state = _State.DONE
        self._server = None
        # RFC 6120 §6.3.10: the server-final-message goes with <success/>.
        return Success(self._username, server_final.encode())


def _new_server_nonce() -> str:
    """The server's part of the SCRAM nonce (RFC 5802 §5.1 "r"): 128 random bits."""
    return secrets.token_hex(16)


def _decode(data: bytes) -> str:
    """Bound the size and decode UTF-8 (RFC 4616 §2, RFC 5802 §7 are UTF-8)."""
    if not isinstance(data, bytes | bytearray):
        raise TypeError("SASL data must be bytes (decoded from base64 by the caller)")
    if len(data) > MAX_MESSAGE_BYTES:
        raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "message too long")
    if not data:
        raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "empty message")
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise SASLFailure(SASLCondition.MALFORMED_REQUEST, "not UTF-8") from None
