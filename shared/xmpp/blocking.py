"""XEP-0191 blocking: does a blocklist match a JID?  (§3.4 and §3.5: an item blocks that
exact full JID, that bare JID and all its resources, or that domain and everything in it.)"""

from __future__ import annotations

from collections.abc import Collection

from shared.xmpp.jid import bare_of, domain_of


def is_blocked(blocklist: Collection[str], jid: str) -> bool:
    if not blocklist or not jid:
        return False
    return jid in blocklist or bare_of(jid) in blocklist or domain_of(jid) in blocklist
