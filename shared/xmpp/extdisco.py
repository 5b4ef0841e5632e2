"""XEP-0215 external service discovery: the STUN/TURN servers a client uses for calls.

TURN entries carry time-limited credentials in the TURN REST API scheme that coturn
implements (``use-auth-secret``/``static-auth-secret``; draft-uberti-behave-turn-rest-00
§2.2): the user name is ``<expiry Unix time>:<user>``, the password
``base64(HMAC-SHA1(secret, user name))``, so the TURN server checks them with the shared
secret alone and refuses them after the expiry.  Pure: the caller passes the clock.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
from dataclasses import dataclass
from typing import Final
from xml.sax.saxutils import quoteattr

from lxml import etree

from shared.xmpp import ns

TYPES: Final = frozenset({"stun", "stuns", "turn", "turns"})  # XEP-0215 §4 registry
TRANSPORTS: Final = frozenset({"udp", "tcp"})
NEEDS_CREDENTIALS: Final = frozenset({"turn", "turns"})
SERVICES_TAG: Final = f"{{{ns.EXTDISCO}}}services"
CREDENTIALS_TAG: Final = f"{{{ns.EXTDISCO}}}credentials"


@dataclass(frozen=True, slots=True)
class Service:
    type: str
    host: str
    port: int
    transport: str


def parse_services(text: str) -> tuple[Service, ...]:
    """'stun:turn.example.com:3478/udp,turns:turn.example.com:5349/tcp' → the services;
    the transport defaults to udp (tcp for stuns/turns, which run over TLS); ValueError on
    anything else."""
    found: list[Service] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        type_, _, rest = item.partition(":")
        target, _, transport = rest.partition("/")
        host, _, port = target.rpartition(":")
        type_ = type_.strip().lower()
        transport = transport.strip().lower() or ("tcp" if type_.endswith("s") else "udp")
        host = host.strip().strip("[]")
        if (type_ not in TYPES or not host or not port.isdigit()
                or not 0 < int(port) < 65536 or transport not in TRANSPORTS):
            raise ValueError(
                f"expected type:host:port/transport (type stun, stuns, turn or turns; "
                f"transport udp or tcp), got {item!r}")
        found.append(Service(type_, host, int(port), transport))
    return tuple(found)


def turn_credentials(secret: bytes, user: str, now: float, ttl_s: int) -> tuple[str, str, int]:
    """(user name, password, expiry) for ``user``, valid for ``ttl_s`` from ``now``."""
    expiry = int(now) + ttl_s
    username = f"{expiry}:{user}"
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode(), expiry


def check_credentials(secret: bytes, username: str, password: str, now: float) -> bool:
    """What a TURN server does with them (coturn): the HMAC matches and the expiry is ahead."""
    expiry, sep, _ = username.partition(":")
    if not sep or not expiry.isdigit() or int(expiry) <= now:
        return False
    expected = base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest())
    return hmac.compare_digest(expected, password.encode())


@dataclass(frozen=True, slots=True)
class Config:
    """What the server hands out: the services, the TURN secret (b'' : TURN entries are
    left out, they would be useless without credentials) and the credentials' lifetime."""

    services: tuple[Service, ...] = ()
    secret: bytes = b""
    ttl_s: int = 86400

    @property
    def offered(self) -> tuple[Service, ...]:
        return tuple(s for s in self.services
                     if s.type not in NEEDS_CREDENTIALS or self.secret)


NONE: Final = Config()


def _stamp(t: int) -> str:
    """XEP-0082 DateTime in UTC."""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _service_xml(svc: Service, config: Config, user: str, now: float) -> str:
    attrs = (f"type={quoteattr(svc.type)} host={quoteattr(svc.host)} port='{svc.port}' "
             f"transport={quoteattr(svc.transport)}")
    if svc.type in NEEDS_CREDENTIALS:
        username, password, expiry = turn_credentials(config.secret, user, now, config.ttl_s)
        attrs += (f" username={quoteattr(username)} password={quoteattr(password)} "
                  f"expires='{_stamp(expiry)}' restricted='1'")
    return f"<service {attrs}/>"


def answer(child: etree._Element, config: Config, user: str, now: float) -> str | None:
    """The result's child for a <services/> (XEP-0215 §3.1, with an optional type filter,
    §3.2) or <credentials/> (§3.3) query from ``user``; None when the query is not one of
    those (the caller answers service-unavailable)."""
    offered = config.offered
    if child.tag == SERVICES_TAG:
        wanted = child.get("type")
        listed = "".join(_service_xml(s, config, user, now) for s in offered
                         if wanted is None or s.type == wanted)
        return f'<services xmlns="{ns.EXTDISCO}">{listed}</services>'
    if child.tag == CREDENTIALS_TAG:
        asked = [(s.get("host"), s.get("type"), s.get("port"))
                 for s in child if s.tag == f"{{{ns.EXTDISCO}}}service"]
        listed = "".join(
            _service_xml(s, config, user, now) for s in offered
            if s.type in NEEDS_CREDENTIALS and any(
                h == s.host and (t is None or t == s.type) and (p is None or p == str(s.port))
                for h, t, p in asked))
        return f'<credentials xmlns="{ns.EXTDISCO}">{listed}</credentials>'
    return None
