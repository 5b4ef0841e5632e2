"""The side-by-side table of `make bench` (pure: made from result documents)."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.bench import auth_figures, headline, plan, side_by_side, sm_figures


def _doc(logins_per_cpu: float, p99: float) -> dict[str, Any]:
    return {"result": {"login": {"logins_per_server_cpu_s": logins_per_cpu,
                                 "time_to_bound_ms": {"p99": p99}}}}


def test_ratios_to_ejabberd() -> None:
    rows = side_by_side({"sbs-login-stanzad": _doc(300.0, 10.0),
                         "sbs-login-prosody": _doc(150.0, None),  # type: ignore[arg-type]
                         "sbs-login-ejabberd": _doc(100.0, 20.0)})
    assert "| logins per server CPU-second | 300.0 | 150.0 | 100.0 | 3.00 | 1.50 |" in rows
    assert "| login time to bound p99 (ms) | 10.0 | n/a | 20.0 | 0.50 | n/a |" in rows


def test_without_ejabberd_the_figures_stay_and_the_ratios_are_na() -> None:
    rows = side_by_side({"sbs-login-stanzad": _doc(300.0, 10.0),
                         "sbs-login-prosody": _doc(150.0, 5.0)})
    assert "| logins per server CPU-second | 300.0 | 150.0 | n/a | n/a | n/a |" in rows


def test_the_plan_runs_each_side_by_side_scenario_on_every_installed_server() -> None:
    from loadtest import ejabberd, prosody

    names = [name for name, _ in plan(True)]
    for server, there in (("prosody", prosody.available()),
                          ("ejabberd", ejabberd.available())):
        assert ("sbs-chat-" + server in names) == there


def test_no_table_without_pairs() -> None:
    assert side_by_side({"sbs-login-stanzad": _doc(1.0, 1.0)}) == []


def test_the_default_plan_is_bounded() -> None:
    for quick in (True, False):
        for _, opt in plan(quick):
            assert opt.connections <= 10_000 and opt.seconds <= 10


def test_stanzad_runs_side_by_side_as_the_cluster_and_as_one_node() -> None:
    """Issue 21: the cluster (1 cm + 1 router) is the headline, beside 2 + 2, one node and
    the same 1 + 1 with durable delivery off (issue 20); at the defaults otherwise."""
    from loadtest import ejabberd, prosody

    if not (ejabberd.available() or prosody.available()):
        pytest.skip("no other server installed: no side-by-side runs are planned")
    runs = dict(plan(True))
    assert runs["ramp-embedded"].routers == 0 and runs["ramp"].routers == 1
    shapes = {name: (opt.cms, opt.routers, opt.durable) for name, opt in runs.items()
              if name.startswith("sbs-chat-stanzad")}
    assert shapes == {"sbs-chat-stanzad": (1, 1, True),
                      "sbs-chat-stanzad@1+1-nondurable": (1, 1, False),
                      "sbs-chat-stanzad@2+2": (2, 2, True),
                      "sbs-chat-stanzad@node": (1, 0, True)}
    assert runs["sbs-login-stanzad"].scenario == "login"  # not another run's options
    assert (runs["sbs-login-stanzad"].cms, runs["sbs-login-stanzad"].routers) == (1, 1)
    assert all(opt.pin for opt in runs.values())
    assert not any(opt.pin for opt in dict(plan(True, pin=False)).values())
    subset = [n for n in dict(plan(True, ("2+2",))) if n.startswith("sbs-")
              and "stanzad" in n]
    assert subset == ["sbs-login-stanzad@2+2", "sbs-chat-stanzad@2+2", "sbs-idle-stanzad@2+2"]


def _chat(rate: float, p50: float = 1.0, p99: float = 5.0,
          nats_s: float = 0.5) -> dict[str, Any]:
    return {"result": {"chat": {"deliveries_per_server_cpu_s": rate, "target_rate": 2000.0,
                                "delivered": 10_000,
                                "latency_ms": {"p50": p50, "p99": p99},
                                "server": {"cpu_s": {"nats": nats_s}}}}}


def test_the_headline_is_the_cluster_against_ejabberd_with_durability_off_beside() -> None:
    lines = headline({"sbs-chat-stanzad": _chat(3000.0, 4.0, 20.0),
                      "sbs-chat-stanzad@1+1-nondurable": _chat(4000.0),
                      "sbs-chat-stanzad@2+2": _chat(2800.0),
                      "sbs-chat-ejabberd": _chat(6000.0),
                      "chat-half-peak": {"result": {"chat": {
                          "target_rate": 1500.0, "latency_ms": {"p50": 2.0, "p99": 9.0}}}}})
    text = "\n".join(lines)
    assert ("- **stanzad (1 cm + 1 router)**: 3,000.0 chat deliveries per server CPU-second "
            "(**0.50x** ejabberd's 6,000), latency p50 4.0 ms, p99 20.0 ms; NATS 50 µs of CPU "
            "per delivery") in text
    assert "durable delivery off**: 4,000.0" in text and "(**0.67x**" in text
    assert "2 + 2 over 1 + 1, server CPU per delivery: 1.07" in text
    assert "durable delivery on over off (1 + 1): 0.75" in text
    assert "half the ramp's peak (1,500.0/s): p50 2.0 ms, p99 9.0 ms" in text
    assert headline({"sbs-chat-ejabberd": _chat(1.0)}) == []


def test_the_table_has_a_column_per_topology() -> None:
    rows = side_by_side({"sbs-chat-stanzad": _chat(3000.0),
                         "sbs-chat-stanzad@node": _chat(4500.0),
                         "sbs-chat-ejabberd": _chat(6000.0)})
    assert ("| chat deliveries per server CPU-second | 3,000.0 | 4,500.0 | n/a | 6,000.0 "
            "| 0.50 | 0.75 | n/a |") in rows


def test_login_rounds_against_ejabberd_are_alternated() -> None:
    from loadtest import bench, ejabberd

    if not ejabberd.available():
        pytest.skip("ejabberd is not installed: no login rounds against it are planned")
    names = [name for name, _ in plan(False)]
    logins = [n for n in names if n.startswith("sbs-login")]
    assert logins[:2] == ["sbs-login-stanzad", "sbs-login-prosody"] or \
        logins[:2] == ["sbs-login-stanzad", "sbs-login-ejabberd"]
    assert f"sbs-login-r{bench.LOGIN_ROUNDS}-ejabberd" in names


def test_the_table_takes_each_servers_median_of_the_login_rounds() -> None:
    rows = side_by_side({"sbs-login-stanzad": _doc(300.0, 10.0),
                         "sbs-login-r2-stanzad": _doc(100.0, 30.0),
                         "sbs-login-r3-stanzad": _doc(200.0, 20.0),
                         "sbs-login-ejabberd": _doc(100.0, 20.0),
                         "sbs-login-r2-ejabberd": _doc(400.0, 20.0),
                         "sbs-login-rx-ejabberd": _doc(1.0, 1.0)})  # not a round: ignored
    assert "| logins per server CPU-second | 200.0 | n/a | 250.0 | 0.80 | n/a |" in rows
    assert "| login time to bound p99 (ms) | 20.0 | n/a | 20.0 | 1.00 | n/a |" in rows


def test_the_plan_measures_sm_beside_the_same_runs_without() -> None:
    """Issue 16: chat with XEP-0198 on every client vs without (same run, same load), and
    idle memory per connection with it beside the plain figure."""
    for quick in (True, False):
        runs = dict(plan(quick))
        for plain, with_sm in (("chat-2000", "chat-2000-sm"), ("idle", "idle-sm")):
            assert runs[with_sm].sm and not runs[plain].sm
            from dataclasses import replace

            assert replace(runs[with_sm], sm=False) == runs[plain]


def test_sm_figures_ratio_and_memory() -> None:
    def doc(**result: Any) -> dict[str, Any]:
        return {"result": result}

    lines = sm_figures({"chat-2000": doc(chat={"deliveries_per_server_cpu_s": 1000.0}),
                        "chat-2000-sm": doc(chat={"deliveries_per_server_cpu_s": 950.0}),
                        "idle": doc(cm_rss_per_connection_bytes=10240.0),
                        "idle-sm": doc(cm_rss_per_connection_bytes=11264.0)})
    assert "without SM 1,000, with SM 950, ratio 0.95 (issue 16 wants >= 0.90)" in lines[2]
    assert lines[3].endswith("without SM 10.0 KiB, with SM 11.0 KiB")
    assert sm_figures({"chat-2000": doc(chat={"deliveries_per_server_cpu_s": 1.0})}) == []


def test_auth_figures_put_each_backend_beside_the_internal_store() -> None:
    """Issue 23: logins per server CPU-second of the token and HTTP backends beside the
    SCRAM store's, from the same bench run."""
    rows = auth_figures({"login": _doc(400.0, 50.0), "login-token": _doc(300.0, 60.0),
                         "login-http": _doc(200.0, 70.0)})
    assert "| internal (SCRAM-SHA-256, stored keys) | 400.0 | 1.00 | 50.0 |" in rows
    assert "| token (OAUTHBEARER, RS256 JWT, static key) | 300.0 | 0.75 | 60.0 |" in rows
    assert "| http (PLAIN, check_password endpoint) | 200.0 | 0.50 | 70.0 |" in rows
    assert auth_figures({"login": _doc(400.0, 50.0)}) == []
    runs = dict(plan(False))
    for name, auth in (("login-token", "token"), ("login-http", "http")):
        from dataclasses import replace

        assert runs[name].auth == auth
        assert replace(runs[name], auth="internal",
                       mechanism="SCRAM-SHA-256") == runs["login"]


def test_the_half_peak_figure_shows_without_the_side_by_side_runs() -> None:
    lines = headline({"chat-half-peak": {"result": {"chat": {
        "target_rate": 500.0, "latency_ms": {"p50": 4.6, "p99": 40.5}}}}})
    assert any("half the ramp's peak (500.0/s): p50 4.6 ms, p99 40.5 ms" in x for x in lines)
