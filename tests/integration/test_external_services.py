"""XEP-0215 external services through a connection manager: STUN and TURN entries, the TURN
ones with credentials that a TURN server using the REST API scheme (coturn) accepts."""

from __future__ import annotations

import time

from slixmpp.xmlstream import ET

from shared.xmpp import extdisco, ns
from tests.conftest import TURN_SECRET, Users
from tests.support.cluster import Cluster
from tests.support.xmpp import Client


async def test_xep0215_turn_credentials_verify_against_the_rest_scheme(
    ways_cluster: Cluster, ways_users: Users
) -> None:
    jid, pw = await ways_users.create("caller")
    c = Client(jid, pw)
    c.register_plugin("xep_0030")
    try:
        await c.login("127.0.0.1", ways_cluster.c2s_port, presence=False)
        info = await c.plugin["xep_0030"].get_info(jid="localhost", timeout=10)
        assert ns.EXTDISCO in info["disco_info"]["features"]
        iq = c.make_iq_get(ito="localhost")
        iq.append(ET.Element(f"{{{ns.EXTDISCO}}}services"))
        result = await iq.send(timeout=10)
        services = result.xml.find(f"{{{ns.EXTDISCO}}}services")
        assert services is not None
        by_type = {s.get("type"): s for s in services}
        assert set(by_type) == {"stun", "turn", "turns"}
        assert by_type["stun"].get("password") is None
        for kind in ("turn", "turns"):
            svc = by_type[kind]
            username, password = svc.get("username"), svc.get("password")
            assert username.endswith(":" + jid)
            assert extdisco.check_credentials(TURN_SECRET.encode(), username, password,
                                              time.time())
            assert not extdisco.check_credentials(b"another secret", username, password,
                                                  time.time())
    finally:
        await c.logout()
