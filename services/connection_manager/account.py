"""XEP-0077 in band, on an authenticated stream (§3.2, §3.3): the form, a password change
and the removal of the account; and the rate limit on registrations of new accounts (§3.1,
before authentication; `STANZAD_REGISTRATIONS_PER_IP_PER_HOUR`).

On a domain whose accounts are the platform's (a token or HTTP authentication backend,
shared/store/domains.py) none of this is offered: the server's disco#info does not list
jabber:iq:register to its users and every such request gets <not-allowed/> (XEP-0077 §3.3:
"the server or service does not allow password changes"; §3.2 likewise for removal): the
password is the identity provider's, and an account removed here would come back at the
next login (or lock the user out).

Sessions, as Prosody 0.12 does it (ejabberd leaves them open after a password change):
after a password change every *other* session of the account is closed with `<reset/>`
(RFC 6120 §4.9.3.16: its credentials were revoked), so a stolen session does not outlive
the new password; after a removal every session, the requester's after its result, is
closed with `<not-authorized/>` (XEP-0077 §3.2).  Detached XEP-0198 sessions end too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final
from xml.sax.saxutils import escape

from lxml import etree

from shared.bus import subjects
from shared.bus.envelope import Envelope, Kind
from shared.store import keys
from shared.xmpp import credentials as creds_mod
from shared.xmpp import ns
from shared.xmpp.errors import StanzaError, StanzaErrorCondition, StreamErrorCondition
from shared.xmpp.stanza import iq_result

from . import metrics

if TYPE_CHECKING:
    from shared.xmpp.c2s import StanzaIn

    from .connection import C2SConnection
    from .service import ConnectionManager

log = logging.getLogger(__name__)

HOUR_S: Final = 3600
PASSWORD_CHANGED: Final = "password changed"
ACCOUNT_REMOVED: Final = "account removed"


class InBand:
    def __init__(self, cm: ConnectionManager) -> None:
        self.cm = cm

    # ---- registration of new accounts (§3.1): how many per address ------------------------

    async def may_register(self, source: str) -> bool:
        """At most ``registrations_per_ip_per_hour`` from one address (IPv6: /64) in the
        current hour, across the cluster; trusted networks are not counted."""
        limit = self.cm.settings.registrations_per_ip_per_hour
        if not limit or source in self.cm.trusted:
            return True
        key = keys.registrations_source(source)
        async with self.cm.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=HOUR_S, nx=True)  # the hour starts with the first one
            pipe.incr(key)
            _, count = await pipe.execute()
        return int(count) <= limit

    # ---- an authenticated session's own account (§3.2, §3.3) -------------------------------

    def handle(self, conn: C2SConnection, st: StanzaIn) -> None:
        """A jabber:iq:register IQ of a bound session, to the server."""
        jid = conn.stream.jid
        assert jid is not None
        query = st.element[0]
        if self.cm.delegated(jid.domain):
            self._error(conn, st, StanzaErrorCondition.NOT_ALLOWED,
                        f"accounts of {jid.domain} are managed by its identity provider")
            return
        if st.type == "get":
            form = (f'<query xmlns="{ns.REGISTER}"><registered/>'
                    f"<username>{escape(jid.local or '')}</username><password/></query>")
            conn.write_stanza(iq_result(st.id, str(jid), None, form))
            return
        if query.find(f"{{{ns.REGISTER}}}remove") is not None:
            conn.spawn(self._remove(conn, st))
            return
        username = query.findtext(f"{{{ns.REGISTER}}}username")
        password = query.findtext(f"{{{ns.REGISTER}}}password")
        if not username or not password:  # §3.3: both are required
            self._error(conn, st, StanzaErrorCondition.BAD_REQUEST)
        elif username != jid.local:  # only one's own password
            self._error(conn, st, StanzaErrorCondition.NOT_ALLOWED)
        else:
            conn.spawn(self._change_password(conn, st, password))

    def _error(self, conn: C2SConnection, st: StanzaIn, condition: StanzaErrorCondition,
               text: str | None = None) -> None:
        metrics.IN_BAND.labels(_action(st), "error").inc()
        conn.stream.stanza_error(st.element, StanzaError(condition, text))
        conn.write(conn.stream.data_to_send())

    async def _change_password(self, conn: C2SConnection, st: StanzaIn, password: str) -> None:
        jid = conn.stream.jid
        assert jid is not None
        try:
            creds = await asyncio.to_thread(
                creds_mod.derive_credentials, password, self.cm.settings.scram_iterations)
        except ValueError:
            self._error(conn, st, StanzaErrorCondition.NOT_ACCEPTABLE, "unusable password")
            return
        try:
            changed = await self.cm.accounts.set_credentials(jid.bare_str, creds)
        except Exception as exc:  # an answer, never a hang (RFC 6120 §8.3.3.8)
            log.warning("password change failed: %s", exc)
            self._error(conn, st, StanzaErrorCondition.RESOURCE_CONSTRAINT)
            return
        if not changed:
            self._error(conn, st, StanzaErrorCondition.ITEM_NOT_FOUND)
            return
        metrics.IN_BAND.labels("password", "ok").inc()
        log.info("password changed in band; closing the account's other sessions")
        conn.write_stanza(iq_result(st.id, str(jid), None))
        await self._close_sessions(jid.bare_str, StreamErrorCondition.RESET,
                                   keep=str(jid))

    async def _remove(self, conn: C2SConnection, st: StanzaIn) -> None:
        """§3.2: the account and its data go (PostgreSQL in one transaction, then its soft
        state in Redis), the routers forget it, every session ends with <not-authorized/>."""
        jid = conn.stream.jid
        assert jid is not None
        bare = jid.bare_str
        try:
            removed = await self.cm.accounts.delete(bare)
        except Exception as exc:
            log.warning("account removal failed: %s", exc)
            self._error(conn, st, StanzaErrorCondition.RESOURCE_CONSTRAINT)
            return
        try:
            await self.cm.store.forget_account(bare)
        except Exception as exc:  # soft state: it expires or is overwritten
            log.warning("could not forget the removed account's soft state: %s", exc)
        self.cm.account_changed(bare)  # routers cache that the account exists
        metrics.IN_BAND.labels("remove", "ok" if removed else "error").inc()
        log.info("account removed in band")
        conn.write_stanza(iq_result(st.id, str(jid), None))
        conn.flush()
        conn.close(StreamErrorCondition.NOT_AUTHORIZED, ACCOUNT_REMOVED)
        await self._close_sessions(bare, StreamErrorCondition.NOT_AUTHORIZED, keep=str(jid))

    async def _close_sessions(self, bare: str, condition: StreamErrorCondition,
                              keep: str) -> None:
        """A KICK with ``condition`` to every session of ``bare`` but ``keep``, wherever it
        is (attached, or detached: XEP-0198 resumption ends with it)."""
        try:
            sessions = await self.cm.store.get(bare)
        except Exception as exc:
            log.warning("could not list the account's sessions: %s", exc)
            return
        for resource, record in sessions.items():
            full = f"{bare}/{resource}"
            if full == keep:
                continue
            kick = Envelope(Kind.KICK, to=full, from_="", id=record.session_id,
                            origin="account", payload=condition.value.encode())
            self.cm.bus.publish_soon(subjects.connection_manager(record.cm_id), kick.encode())


def _action(st: StanzaIn) -> str:
    query = st.element[0]
    if st.type == "get":
        return "form"
    return "remove" if query.find(f"{{{ns.REGISTER}}}remove") is not None else "password"


def is_register_query(element: etree._Element) -> bool:
    return len(element) == 1 and element[0].tag == f"{{{ns.REGISTER}}}query"
