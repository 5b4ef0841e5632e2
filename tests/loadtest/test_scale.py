"""The scale scenario (issue 24) at a tiny size on a cluster of its own with two connection
managers: one set of connections logged in with rosters, held idle, then chat and presence
on the same connections.  Counts are checked, timing never is."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import capacity, report
from loadtest.runner import run
from loadtest.scenarios import Options, online
from loadtest.users import ring_contacts

pytestmark = pytest.mark.timeout(120)


def test_online_share_is_spread_over_the_ring() -> None:
    flags = online(60, 0.5)
    assert sum(flags) == 30 and flags[:4] == [False, True, False, True]
    assert sum(online(100_000, 0.3)) == 30_000 and all(online(7, 1.0))
    # every online user of a half-online ring of 6 contacts has 2 of them online (i ± 2)
    near = ring_contacts(60, 6)
    assert {sum(flags[j] for j in near[i]) for i in range(60) if flags[i]} == {2}


def test_scale_phases_on_one_set_of_connections(postgres: object, tmp_path: Path) -> None:
    opt = Options("scale", connections=60, workers=2, sources=4, concurrency=30, rate=40.0,
                  seconds=2.0, messages=60, hold_s=1.0, contacts=6, online_share=0.5,
                  presence_rate=20.0, iterations=4096, drain_s=2.0, cms=2, pin=False)
    doc = run(opt, quiet=True)
    r = doc["result"]
    assert doc["topology"]["cms"] == 2
    assert {"cm-1", "cm-2", "presence-1", "redis", "nats"} <= set(doc["samples"][-1]["rss"])
    # every connection bound (3 warm up first), half of them online
    assert r["connections"] == 60 and r["measured_connections"] == 57
    assert (r["login"]["bound"], r["login"]["failed"]) == (57, 0), r["login"]["errors"]
    assert r["online"] == 30 and r["online_contacts_mean"] == 2
    assert r["login"]["ops"]["redis.commands"] >= 57
    assert r["hold"]["live_connections"] == 60
    chat = r["chat"]
    assert chat["sent"] > 0 and chat["delivered"] == chat["sent"] and chat["loss"] == 0
    # a broadcast reaches the sender's online contacts and no one else (RFC 6121 §4.4.2)
    pres = r["presence"]
    assert pres["sent"] > 0 and pres["expected"] == 2 * pres["sent"]
    assert pres["delivered"] == pres["expected"]
    assert pres["fanout"]["complete"] == pres["sent"]
    assert pres["live_connections"] == 60
    # the report has each phase, and the capacity model predicts each
    written = report.write_all(doc, tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    for phase in ("login", "hold", "chat", "presence"):
        assert f"| {phase} |" in summary
    rows = capacity.predict_run(report.clean(doc))
    assert {"login", "hold", "chat", "presence"} <= {row.phase for row in rows}
    assert {("idle", "cm"), ("idle", "redis")} <= {(row.phase, row.role) for row in rows}
    assert all(p.exists() for p in written)
