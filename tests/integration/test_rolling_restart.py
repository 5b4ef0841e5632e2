"""Issue 16: a rolling restart of every connection manager of a cluster of two, under chat
load from XEP-0198 clients, loses and duplicates nothing: each cm in turn gets SIGTERM (its
SM sessions are detached and closed without </stream:stream>, XEP-0198 §5), the clients
resume on the other one, and every numbered message arrives exactly once and in order per
sender.  loadtest/rolling_restart.py does the same with more clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.localservers import LocalPostgres
from tests.conftest import Users
from tests.support.cluster import Cluster, new_cluster
from tests.support.rolling import rolling_restart

CLIENTS = 6
MESSAGES = 80  # per client, one every 50 ms; the restarts happen while they chat
CMS = ("cm-a", "cm-b")


@pytest.fixture
def two_cms(postgres: LocalPostgres) -> Iterator[Cluster]:
    c = new_cluster()
    try:
        c.start_servers()
        c.start_core()
        for name in CMS:
            c.start_cm(name, STANZAD_DRAIN_TIMEOUT_S="30")
        yield c
    finally:
        c.stop()


async def test_rolling_restart_of_two_cms_loses_and_duplicates_nothing(
    two_cms: Cluster,
) -> None:
    users = await Users(two_cms).open()
    try:
        accounts = [await users.create("roll") for _ in range(CLIENTS)]
    finally:
        await users.db.close()
    counts = await rolling_restart(two_cms, list(CMS), accounts, MESSAGES, interval_s=0.05,
                                   deadline_s=180)
    print(counts.line(), counts.restarts)
    assert [name for name, _ in counts.restarts] == list(CMS)  # each cm went and came back
    assert counts.sent == CLIENTS * MESSAGES, counts.line()
    assert counts.lost == 0, counts.line()
    assert counts.duplicated == 0, counts.line()
    assert counts.out_of_order == 0, counts.line()
    assert counts.received == counts.sent, counts.line()
    assert counts.sm_failed == 0, counts.line()
    # every client was on a restarted pod at least once, and resumed elsewhere
    assert counts.resumptions >= CLIENTS, counts.line()
    for name in CMS:
        assert "session handed over to" in two_cms.log(name), two_cms.log(name)[-2000:]
