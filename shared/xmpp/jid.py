"""XMPP addresses (JIDs), RFC 7622: parsing, preparation/enforcement and canonical form.

A JID is ``[ localpart "@" ] domainpart [ "/" resourcepart ]`` (RFC 7622 §3.1):

* localpart: PRECIS ``UsernameCaseMapped`` profile (RFC 7622 §3.3, RFC 8265 §3.3), and none of
  the characters ``"&'/:<>@`` (RFC 7622 §3.3.1);
* domainpart: an IP literal (IPv4 dotted quad, or IPv6 in brackets), or a domain name prepared
  with IDNA2008 (UTS #46 mapping) and stored as U-labels, lower case, without a final dot
  (RFC 7622 §3.2);
* resourcepart: PRECIS ``OpaqueString`` profile (RFC 7622 §3.4, RFC 8265 §4.2).

Every part is 1 to 1023 octets of UTF-8 after preparation.  Stringprep (RFC 6122) is not used:
``precis_i18n`` and ``idna`` do the Unicode work.

``JID.parse`` / ``parse_jid`` return JIDs whose parts are canonical, so two JIDs are the same
address exactly when they compare equal, and ``str(jid)`` is the canonical string.  The
constructor ``JID(local, domain, resource)`` does not prepare anything: use it only with parts
that are already canonical (e.g. taken from another parsed JID).

``jid_to_token`` maps a JID to a NATS subject token (``[A-Za-z0-9_-]+``), injectively.
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import idna
import precis_i18n

__all__ = ["JID", "JIDError", "jid_to_token", "parse_jid", "token_to_jid"]

MAX_PART_OCTETS: Final = 1023
"""RFC 7622 §3.2.1, §3.3.1, §3.4.1: each part is at most 1023 octets after preparation."""

# Preparation never shrinks a part to less than a quarter of its code points (NFC composes at
# most 4 code points into one), so a part this long cannot fit in 1023 octets.  Checked before
# running PRECIS/IDNA so that huge hostile inputs are rejected cheaply.
_MAX_RAW_PART_CHARS: Final = 8 * MAX_PART_OCTETS

_LOCALPART_FORBIDDEN: Final = frozenset("\"&'/:<>@")  # RFC 7622 §3.3.1

_USERNAME = precis_i18n.get_profile("UsernameCaseMapped")
_OPAQUE = precis_i18n.get_profile("OpaqueString")

# Plain ASCII LDH domain names (already lower case, no final dot) that IDNA2008 would leave
# unchanged: labels of 1-63 letters/digits/hyphens, no leading/trailing hyphen.  Names with "--"
# (A-labels such as "xn--...", or hyphens in positions 3-4) take the full IDNA path.
_LDH_DOMAIN: Final = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
_MAX_DNS_NAME: Final = 253  # RFC 1035 octets, without the final dot


class JIDError(ValueError):
    """A string that is not a valid JID (RFC 7622); the message says which rule it breaks."""

    condition: Final = "jid-malformed"  # RFC 6120 §8.3.3.8 / §4.9.3.9


def _show(text: str, limit: int = 64) -> str:
    """A short repr of (possibly huge, hostile) input for error messages."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _check_length(kind: str, prepared: str) -> None:
    size = len(prepared.encode("utf-8"))
    if size > MAX_PART_OCTETS:
        raise JIDError(f"{kind} is {size} octets long after preparation, over {MAX_PART_OCTETS}")


def _check_raw(kind: str, raw: str) -> None:
    if not raw:
        raise JIDError(f"empty {kind}")
    if len(raw) > _MAX_RAW_PART_CHARS:
        raise JIDError(f"{kind} is far too long ({len(raw)} characters)")


def _prepare_local(local: str) -> str:
    """RFC 7622 §3.3: enforce the UsernameCaseMapped profile, then the forbidden characters."""
    _check_raw("localpart", local)
    try:
        prepared: str = _USERNAME.enforce(local)
    except UnicodeError as exc:
        raise JIDError(f"invalid localpart {_show(local)}: {_reason(exc)}") from None
    # After enforcement: width mapping turns e.g. U+FF20 FULLWIDTH COMMERCIAL AT into "@".
    bad = _LOCALPART_FORBIDDEN.intersection(prepared)
    if bad:
        chars = " ".join(sorted(bad))
        raise JIDError(f"invalid localpart {_show(local)}: contains forbidden {chars}")
    _check_length("localpart", prepared)
    return prepared


def _prepare_resource(resource: str) -> str:
    """RFC 7622 §3.4: enforce the OpaqueString profile (case and spaces are preserved)."""
    _check_raw("resourcepart", resource)
    try:
        prepared: str = _OPAQUE.enforce(resource)
    except UnicodeError as exc:
        raise JIDError(f"invalid resourcepart {_show(resource)}: {_reason(exc)}") from None
    _check_length("resourcepart", prepared)
    return prepared


def _prepare_domain(domain: str) -> str:
    """RFC 7622 §3.2: an IP literal, or a domain name as lower-case U-labels, no final dot."""
    _check_raw("domainpart", domain)
    if domain[0] == "[":
        return _prepare_ipv6_literal(domain)
    if domain.isascii():
        name = domain.lower()
        if name.endswith("."):  # §3.2: a final label separator is stripped
            name = name[:-1]
        if len(name) <= _MAX_DNS_NAME and "--" not in name and _LDH_DOMAIN.fullmatch(name):
            return _check_numeric(domain, name)
    try:
        a_labels = idna.encode(domain, uts46=True)  # UTS #46 mapping, then IDNA2008 rules
        if a_labels.endswith(b"."):  # §3.2: a final label separator (any of them) is stripped
            a_labels = a_labels[:-1]
        name = idna.decode(a_labels)  # §3.2.2: A-labels become U-labels
    except (idna.IDNAError, UnicodeError) as exc:
        raise JIDError(f"invalid domainpart {_show(domain)}: {exc}") from None
    if not name:
        raise JIDError(f"invalid domainpart {_show(domain)}: empty")
    _check_length("domainpart", name)
    return _check_numeric(domain, name)


def _check_numeric(raw: str, name: str) -> str:
    """A name made only of digits and dots must be a valid IPv4 address (RFC 3986 IPv4address)."""
    if name.isascii() and name.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            raise JIDError(f"invalid domainpart {_show(raw)}: not an IPv4 address") from None
    return name


def _prepare_ipv6_literal(domain: str) -> str:
    """RFC 7622 §3.2 / RFC 3986 IP-literal: ``[`` IPv6address ``]``, kept as written."""
    inner = domain[1:-1] if domain.endswith("]") else None
    if not inner or "%" in inner:  # no zone identifiers (RFC 6874 is not part of RFC 3986)
        raise JIDError(f"invalid domainpart {_show(domain)}: malformed IPv6 literal")
    try:
        ipaddress.IPv6Address(inner)
    except ValueError as exc:
        raise JIDError(f"invalid domainpart {_show(domain)}: {exc}") from None
    return domain


def _reason(exc: UnicodeError) -> str:
    """The PRECIS rule behind a ``precis_i18n`` error, e.g. ``DISALLOWED/spaces``."""
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else str(exc)


@dataclass(frozen=True, slots=True)
class JID:
    """An XMPP address.  Parts are canonical when built by ``JID.parse`` / ``parse_jid``."""

    local: str | None
    domain: str
    resource: str | None

    @classmethod
    def parse(cls, text: str) -> JID:
        """Parse and prepare ``text`` (RFC 7622 §3.1); raises ``JIDError``.  Cached."""
        return parse_jid(text)

    def __str__(self) -> str:
        text = self.domain if self.local is None else f"{self.local}@{self.domain}"
        return text if self.resource is None else f"{text}/{self.resource}"

    @property
    def bare(self) -> JID:
        """The JID without its resourcepart (RFC 6120 §1.4 "bare JID")."""
        return self if self.resource is None else JID(self.local, self.domain, None)

    @property
    def is_bare(self) -> bool:
        return self.resource is None

    @property
    def bare_str(self) -> str:
        """``str(self.bare)``, without building the intermediate JID."""
        return self.domain if self.local is None else f"{self.local}@{self.domain}"

    def with_resource(self, resource: str) -> JID:
        """This JID with ``resource`` (prepared with OpaqueString) as resourcepart."""
        return JID(self.local, self.domain, _prepare_resource(resource))


@lru_cache(maxsize=65536)
def parse_jid(text: str) -> JID:
    """Parse ``text`` into a canonical JID (RFC 7622 §3.1); raises ``JIDError``.

    The resourcepart is everything after the first "/"; the localpart is everything before the
    first "@" that comes before that "/"; the rest is the domainpart.  Successful results are
    cached (JIDs are immutable); errors are not.
    """
    if not text:
        raise JIDError("empty JID")
    rest, slash, resource = text.partition("/")
    local, at, domain = rest.partition("@")
    if not at:
        local, domain = "", rest
    if at and not local:
        raise JIDError(f"{_show(text)}: empty localpart before '@'")
    if slash and not resource:
        raise JIDError(f"{_show(text)}: empty resourcepart after '/'")
    if not domain:
        raise JIDError(f"{_show(text)}: empty domainpart")
    return JID(
        _prepare_local(local) if at else None,
        _prepare_domain(domain),
        _prepare_resource(resource) if slash else None,
    )


# --- prepared JID strings ------------------------------------------------------------------
# The cluster passes JIDs around as prepared strings (envelopes, Redis keys); these cut parts
# out of such a string without parsing it again.  A prepared localpart holds no "/" and no "@"
# (RFC 7622 §3.3.1), so the first "/" starts the resource and the last "@" of the bare JID
# ends the localpart.


def bare_of(jid: str) -> str:
    """The bare JID of a prepared JID string (its resourcepart cut off)."""
    return jid.partition("/")[0]


def domain_of(jid: str) -> str:
    """The domainpart of a prepared JID string."""
    return jid.partition("/")[0].rpartition("@")[2]


# --- NATS subject tokens --------------------------------------------------------------------

_TOKEN_LITERAL: Final = frozenset(string.ascii_letters.encode() + string.digits.encode() + b"-")
# UTF-8 byte -> token text: letters, digits and "-" stand for themselves, every other byte
# (including "_" itself) is "_" + two lower-case hex digits.
_BYTE_TO_TOKEN: Final = tuple(chr(b) if b in _TOKEN_LITERAL else f"_{b:02x}" for b in range(256))
_TOKEN_RE: Final = re.compile(r"(?:[A-Za-z0-9-]|_[0-9a-f]{2})+")


def jid_to_token(jid: JID | str) -> str:
    """A NATS subject token (only ``[A-Za-z0-9_-]``) naming ``jid``.

    Deterministic and injective on strings: ASCII letters, digits and "-" are kept, every other
    UTF-8 byte becomes ``_xx`` (lower-case hex), so ``juliet@example.com`` gives
    ``juliet_40example_2ecom``.  A string argument is used as is: pass canonical JID strings
    (``str(jid)``, ``jid.bare_str``) so that equal JIDs give equal tokens.
    """
    text = str(jid)
    if not text:
        raise ValueError("cannot make a token of an empty JID")
    return "".join(map(_BYTE_TO_TOKEN.__getitem__, text.encode("utf-8")))


def token_to_jid(token: str) -> str:
    """The JID string that ``jid_to_token`` turned into ``token`` (the exact inverse; debugging).

    Raises ``ValueError`` for strings that ``jid_to_token`` never produces.
    """
    if not _TOKEN_RE.fullmatch(token):
        raise ValueError(f"not a JID token: {_show(token)}")
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "_":
            byte = int(token[i + 1 : i + 3], 16)
            if byte in _TOKEN_LITERAL:  # jid_to_token would have kept it literally
                raise ValueError(f"not a JID token (non-canonical escape): {_show(token)}")
            out.append(byte)
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"not a JID token (bad UTF-8): {_show(token)}") from None
