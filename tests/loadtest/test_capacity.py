"""The capacity model's arithmetic (loadtest/capacity.py): its unit table is docs/capacity.md's,
more load never asks for fewer pods, and hand-computed cases from the table."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

from loadtest import capacity
from loadtest.capacity import UNITS, Budget, Load, plan, rates, u
from loadtest.opcount import delta, pg_writes

DOC = Path(__file__).resolve().parents[2] / "docs" / "capacity.md"
ROW = re.compile(r"^\| `([a-z_.]+)` \| ([0-9.,]+) \|")


def doc_units() -> dict[str, float]:
    found: dict[str, float] = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            found[m.group(1)] = float(m.group(2).replace(",", ""))
    return found


def test_the_document_lists_the_same_units_as_the_module() -> None:
    documented = doc_units()
    assert set(documented) == set(UNITS)
    for key, unit in UNITS.items():
        assert documented[key] == pytest.approx(unit.value, abs=1e-9), key


def test_every_unit_is_measured_and_says_where_from() -> None:
    for key, unit in UNITS.items():
        assert unit.value >= 0 and unit.source, key
        assert key.split(".")[0] in capacity.ROLES, key
    # the figures the sizing divides by or scales with are not left at zero
    for key in ("cm.cpu_us.login", "cm.cpu_us.message", "router.cpu_us.message",
                "nats.cpu_us.message", "redis.commands.login", "cm.mib.base",
                "redis.bytes.connection"):
        assert UNITS[key].value > 0, key


def test_rates_by_hand() -> None:
    load = Load(3600, messages_per_user_hour=30, presence_changes_per_user_hour=4,
                contacts=50, online_share=0.3, logins_per_second_peak=10)
    r = rates(load)
    assert r["message"] == pytest.approx(30)  # 3,600 users x 30 an hour
    assert r["broadcast"] == pytest.approx(4)
    # 15 online contacts: 4 broadcasts/s reach 15 each, 10 logins/s twice 15 each
    assert r["presence_delivery"] == pytest.approx(4 * 15)
    assert r["login_delivery"] == pytest.approx(10 * 2 * 15)
    assert r["login"] == r["initial_presence"] == 10


def test_router_cores_by_hand() -> None:
    load = Load(3600, 30, 4, 50, 0.3, 10)
    # 10 logins/s (each with initial presence and 2 x 15 deliveries), 30 messages/s,
    # 4 broadcasts/s to 15 contacts each
    expected = (10 * u("router.cpu_us.login") + 10 * u("router.cpu_us.initial_presence")
                + 300 * u("router.cpu_us.login_delivery") + 30 * u("router.cpu_us.message")
                + 4 * u("router.cpu_us.broadcast") + 60 * u("router.cpu_us.presence_delivery")
                ) / 1e6
    assert capacity.cores(load, "router", Budget()) == pytest.approx(expected)
    # the same from the table's figures, by hand: 379.7 + 663.6 + 306 + 3,744.3 + 964.32
    # + 82.8 µs per second
    assert expected == pytest.approx(6140.72e-6)
    assert capacity.cores(load, "router", Budget(speed=2)) == pytest.approx(expected / 2)


def test_connection_manager_pods_by_memory_by_hand() -> None:
    # nothing but idle connections: memory decides
    load = Load(1_000_000, 0, 0, 0, 0, 0)
    b = Budget(cm_max_connections=10**9)
    p = plan(load, b)
    room = 2048 * 0.7 - u("cm.mib.base")
    assert p.cm_pods_by["memory"] == math.ceil(1_000_000 * u("cm.kib.connection") / 1024 / room)
    assert p.pods["cm"] == max(p.cm_pods_by.values())
    lean = plan(load, replace(b, connection="lean"))
    assert lean.cm_pods_by["memory"] < p.cm_pods_by["memory"]


def test_connection_cap_per_pod() -> None:
    p = plan(Load(1_000_000, 0, 0, 0, 0, 0), Budget(cm_max_connections=50_000))
    assert p.cm_pods_by["connections"] == 20
    assert p.pods["cm"] >= 20


def test_more_load_never_asks_for_less() -> None:
    base = Load(100_000, 30, 4, 50, 0.3, 200)
    bigger = [
        replace(base, connections=1_000_000),
        replace(base, messages_per_user_hour=300),
        replace(base, presence_changes_per_user_hour=40),
        replace(base, contacts=500),
        replace(base, online_share=0.9),
        replace(base, logins_per_second_peak=5000),
    ]
    small = plan(base)
    for load in bigger:
        big = plan(load)
        for role, n in small.pods.items():
            assert big.pods[role] >= n, (load, role)
        assert big.redis_shards >= small.redis_shards
        assert big.nats_nodes >= small.nats_nodes
        assert big.redis_ops_per_s >= small.redis_ops_per_s
        assert big.pg_writes_per_s >= small.pg_writes_per_s
        assert sum(big.cores.values()) > sum(small.cores.values()), load


def test_less_headroom_never_asks_for_more() -> None:
    load = Load(1_000_000, 30, 4, 50, 0.3, 2000)
    tight, loose = plan(load, Budget(headroom=0.1)), plan(load, Budget(headroom=0.5))
    for role in tight.pods:
        assert tight.pods[role] <= loose.pods[role]
    assert tight.redis_shards <= loose.redis_shards
    with pytest.raises(ValueError):
        plan(load, Budget(headroom=1.0))


def test_the_command_line_prints_every_role_and_the_assumptions(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert capacity.main(["--connections", "1000000", "--messages-per-user-hour", "30",
                          "--presence-changes-per-user-hour", "4", "--contacts", "50",
                          "--online-share", "0.3", "--logins-per-second-peak", "2000",
                          "--headroom", "0.3"]) == 0
    text = capsys.readouterr().out
    for word in ("| cm |", "| router |", "| presence |", "| roster |", "Redis:", "NATS:",
                 "PostgreSQL:", "Assumptions:", "headroom 30%"):
        assert word in text
    assert capacity.main([]) == 2


def test_predict_run_counts_the_phases_events() -> None:
    doc = {
        "options": {"scenario": "chat"},
        "result": {
            "login": {"bound": 100, "server": {"seconds": 2.0, "cpu_s": {
                "cm-1": 0.5, "cm-2": 0.5, "router-1": 0.1, "nats": 0.05}}},
            "chat": {"kind": "chat", "delivered": 1000, "sent": 1000, "server": {
                "seconds": 10.0, "cpu_s": {"cm-1": 0.2, "router-1": 0.1}}},
        },
    }
    rows = {(r.phase, r.role): r for r in capacity.predict_run(doc, background=False)}
    login_cm = 100 * (u("cm.cpu_us.login") + u("cm.cpu_us.initial_presence")) / 1e6
    assert rows["login", "cm"].predicted == pytest.approx(login_cm)
    assert rows["login", "cm"].measured == pytest.approx(1.0)  # both connection managers
    assert rows["chat", "router"].predicted == pytest.approx(1000 * u("router.cpu_us.message")
                                                             / 1e6)
    with_bg = {(r.phase, r.role): r for r in capacity.predict_run(doc)}
    assert with_bg["chat", "router"].predicted == pytest.approx(
        rows["chat", "router"].predicted + 10.0 * u("router.cpu_s.background"))
    # two connection managers idle twice what one does
    assert with_bg["login", "cm"].predicted == pytest.approx(
        rows["login", "cm"].predicted + 2 * 2.0 * u("cm.cpu_s.background"))


def test_predict_run_idle_memory() -> None:
    doc = {"options": {"scenario": "idle"}, "result": {
        "measured_connections": 1000, "rss_growth_bytes": {"cm-1": 20 * 2**20, "redis": 1},
        "login": {"bound": 1000, "server": {"seconds": 1.0, "cpu_s": {"cm-1": 1.0}}},
        "hold": {"seconds": 3600.0, "cpu_s": {"cm-1": 2.0}}}}
    rows = capacity.predict_run(doc, background=False)
    idle = [r for r in rows if r.unit.startswith("MiB")]
    assert len(idle) == 1
    hold = [r for r in rows if r.phase == "hold"]
    assert hold[0].predicted == pytest.approx(1000 * u("cm.cpu_s.connection_hour"))
    assert idle[0].predicted == pytest.approx(1000 * u("cm.kib.connection") / 1024)
    assert idle[0].measured == pytest.approx(20)


def test_op_deltas() -> None:
    before = {"redis.commands": 10, "pg.xact_commit": 5, "pg.tup_inserted": 1}
    after = {"redis.commands": 25, "pg.xact_commit": 9, "pg.tup_inserted": 4,
             "pg.tup_updated": 2, "nats.in_msgs": 7}
    d = delta(before, after)
    assert d["redis.commands"] == 15 and d["nats.in_msgs"] == 7
    assert d["pg.xact_commit"] == 3  # the reading's own transaction is not counted
    assert pg_writes(d) == 5


def test_keepalives_are_a_connection_managers_cost() -> None:
    """Every connection is pinged once per interval (XEP-0199): 60,000 connections at 60 s
    are 1,000 pings/s; a scale run's phases count the pings its clients answered."""
    load = Load(60_000, 0, 0, 0, 0, 0)
    assert rates(load)["keepalive"] == pytest.approx(1000)
    assert capacity.cores(load, "cm", Budget()) == pytest.approx(
        1000 * u("cm.cpu_us.keepalive") / 1e6 + 60_000 * u("cm.cpu_s.connection_hour") / 3600)
    assert rates(replace(load, keepalive_interval_s=0))["keepalive"] == 0
    doc = {"options": {"scenario": "scale", "contacts": 10}, "result": {
        "connections": 100, "measured_connections": 100, "online_contacts_mean": 4.0,
        "login": {"bound": 100, "available": 50, "pings_answered": 0,
                  "server": {"seconds": 1.0, "cpu_s": {"cm-1": 1.0}}},
        "hold": {"pings_answered": 1000, "live_connections": 100,
                 "server": {"seconds": 60.0, "cpu_s": {"cm-1": 1.0, "presence-1": 0.1}}}}}
    rows = {(r.phase, r.role): r for r in capacity.predict_run(doc, background=False)}
    assert rows["hold", "cm"].predicted == pytest.approx(
        1000 * u("cm.cpu_us.keepalive") / 1e6 + 100 * u("cm.cpu_s.connection_hour") / 60)
    # 100 logins, 50 of them with initial presence reaching 4 online contacts each
    assert rows["login", "cm"].predicted == pytest.approx(
        (100 * u("cm.cpu_us.login") + 50 * u("cm.cpu_us.initial_presence")
         + 200 * u("cm.cpu_us.login_delivery")) / 1e6)
