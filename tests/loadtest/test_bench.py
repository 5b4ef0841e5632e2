"""The side-by-side table of `make bench` (pure: made from result documents)."""

from __future__ import annotations

from typing import Any

from loadtest.bench import plan, side_by_side


def _doc(logins_per_cpu: float, p99: float) -> dict[str, Any]:
    return {"result": {"login": {"logins_per_server_cpu_s": logins_per_cpu,
                                 "time_to_bound_ms": {"p99": p99}}}}


def test_ratios_of_stanzad_to_prosody() -> None:
    rows = side_by_side({"sbs-login-stanzad": _doc(300.0, 10.0),
                         "sbs-login-prosody": _doc(150.0, None)})  # type: ignore[arg-type]
    assert "| logins per server CPU-second | 300.0 | 150.0 | 2.00 |" in rows
    assert "| login time to bound p99 (ms) | 10.0 | n/a | n/a |" in rows


def test_no_table_without_pairs() -> None:
    assert side_by_side({"sbs-login-stanzad": _doc(1.0, 1.0)}) == []


def test_the_default_plan_is_bounded() -> None:
    for quick in (True, False):
        for _, opt in plan(quick):
            assert opt.connections <= 2000 and opt.seconds <= 10
