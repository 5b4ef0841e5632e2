"""Bounds of a run and the loopback-only rule, checked before anything starts."""

from __future__ import annotations

import pytest

from loadtest import bounds
from loadtest.__main__ import main
from loadtest.runner import validate
from loadtest.scenarios import Options


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.9", "127.255.0.1", "::1", "localhost"])
def test_loopback_addresses_are_accepted(host: str) -> None:
    assert bounds.require_loopback("--host", host)


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.1", "0.0.0.0", "8.8.8.8",
                                  "example.com", "::", "2001:db8::1", ""])
def test_anything_else_is_refused(host: str) -> None:
    with pytest.raises(bounds.NotLoopback, match="--host"):
        bounds.require_loopback("--host", host)


def test_cli_refuses_a_remote_host_before_starting_anything(capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    assert main(["chat", "--host", "192.0.2.1"]) == 2
    assert "not a loopback address" in capsys.readouterr().err


def test_source_addresses_are_distinct_loopback_addresses() -> None:
    sources = bounds.source_addresses(5)
    assert sources == ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"]
    with pytest.raises(bounds.BoundsError, match="--sources"):
        bounds.source_addresses(bounds.MAX_SOURCES + 1)


def test_plan_spreads_connections_evenly() -> None:
    p = bounds.plan(10, 3, nofile=1000)
    assert p.workers == 3 and p.shares() == [4, 3, 3] and sum(p.shares()) == 10


def test_plan_adds_workers_when_descriptors_run_short() -> None:
    p = bounds.plan(1000, 1, nofile=bounds.FD_RESERVE + 300)
    assert p.per_worker_cap == 300
    assert p.workers == 4
    assert max(p.shares()) <= p.per_worker_cap


def test_plan_refuses_what_no_number_of_workers_can_hold() -> None:
    with pytest.raises(bounds.BoundsError, match="RLIMIT_NOFILE"):
        bounds.plan(20_000, 1, nofile=bounds.FD_RESERVE + 100)


@pytest.mark.parametrize(("change", "option"), [
    ({"connections": 0}, "--connections"),
    ({"connections": bounds.MAX_CONNECTIONS + 1}, "--connections"),
    ({"messages": 0}, "--messages"),
    ({"messages": bounds.MAX_MESSAGES + 1}, "--messages"),
    ({"seconds": bounds.MAX_SECONDS + 1}, "--seconds"),
    ({"rate": bounds.MAX_RATE_PER_S * 2}, "--rate"),
    ({"workers": 0}, "--workers"),
    ({"sources": 0}, "--sources"),
    ({"iterations": 100}, "--iterations"),
    ({"mechanism": "DIGEST-MD5"}, "--mechanism"),
    ({"connections": 1}, "--connections"),
    ({"scenario": "presence", "connections": 5, "contacts": 5}, "--contacts"),
    ({"scenario": "presence", "connections": 5, "contacts": 3}, "--contacts"),
    ({"scenario": "ramp", "ramp_steps": bounds.MAX_RAMP_STEPS + 1}, "--ramp-steps"),
    ({"scenario": "ramp", "ramp_factor": 1.0}, "--ramp-factor"),
    ({"scenario": "nope"}, "scenario"),
])
def test_options_out_of_bounds_are_refused(change: dict[str, object], option: str) -> None:
    opt = Options(**{"scenario": "chat", "connections": 10, **change})  # type: ignore[arg-type]
    with pytest.raises(bounds.BoundsError, match=option):
        validate(opt)


def test_default_options_are_within_bounds() -> None:
    for scenario in ("idle", "login", "chat", "presence", "ramp"):
        plan = validate(Options(scenario=scenario))  # raises BoundsError when out of bounds
        assert sum(plan.shares()) == plan.connections and plan.workers >= 1


def test_the_descriptor_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    soft = bounds.raise_nofile()
    now, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == now
    assert hard == resource.RLIM_INFINITY or now == hard


def test_the_scale_run_fits_the_descriptor_limit() -> None:
    """Issue 24: 100,000 connections at a hard RLIMIT_NOFILE of 20,000 per process take six
    workers; one more connection is refused."""
    p = bounds.plan(100_000, 2, nofile=20_000)
    assert p.workers == 6 and sum(p.shares()) == 100_000
    assert max(p.shares()) <= p.per_worker_cap
    with pytest.raises(bounds.BoundsError, match="--connections"):
        bounds.plan(100_001, 2, nofile=20_000)
