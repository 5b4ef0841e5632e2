"""XEP-0191 blocking: does a blocklist match a JID?  (§3.4 and §3.5: an item blocks that
exact full JID, that bare JID and all its resources, or that domain and everything in it.)"""

from __future__ import annotations

from collections.abc import Collection


def is_blocked(blocklist: Collection[str], jid: str) -> bool:
    if not blocklist or not jid:
        return False
    bare, _, _resource = jid.partition("/")
    domain = bare.rpartition("@")[2]
    return jid in blocklist or bare in blocklist or domain in blocklist
