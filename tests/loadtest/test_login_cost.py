"""loadtest.login_cost: the measured login really completes (no timing asserted)."""

from __future__ import annotations

import pytest

from loadtest import login_cost


def test_stream_cost_runs_a_full_login_to_the_bind_result() -> None:
    assert login_cost.stream_cost(3) > 0


def test_token_cost_runs_oauthbearer_logins_with_the_backend_to_the_bind_result() -> None:
    assert login_cost.token_cost(2) > 0  # raises unless every token is accepted and bound


def test_tls_cost_counts_a_handshake_and_records() -> None:
    handshake, records = login_cost.tls_cost(2)
    assert handshake > 0 and records > 0


def test_main_prints_the_three_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert login_cost.main(["-n", "4"]) == 0
    out = capsys.readouterr().out
    assert "tls handshake" in out and "stream machine" in out and "token check" in out
