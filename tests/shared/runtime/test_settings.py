"""Settings come from STANZAD_* variables; bad values name the variable."""

from __future__ import annotations

import pytest

from shared.runtime.settings import ConfigError, ConnectionManagerSettings, RouterSettings, load


def test_defaults_run_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STANZAD_DOMAIN", "STANZAD_C2S_PORT", "STANZAD_ALLOW_REGISTRATION"):
        monkeypatch.delenv(var, raising=False)
    s = load(ConnectionManagerSettings)
    assert s.domain == "localhost" and s.c2s_port == 5222
    assert s.allow_registration is False
    assert s.max_stanza_bytes == 256 * 1024


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANZAD_PARTITIONS", "8")
    monkeypatch.setenv("STANZAD_ROUTER_ID", "r9")
    s = load(RouterSettings)
    assert (s.partitions, s.router_id) == (8, "r9")


def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANZAD_C2S_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="STANZAD_C2S_PORT"):
        load(ConnectionManagerSettings)


def test_scram_iterations_below_4096_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANZAD_SCRAM_ITERATIONS", "100")
    with pytest.raises(ConfigError, match="STANZAD_SCRAM_ITERATIONS"):
        load(ConnectionManagerSettings)


def test_sm_location_empty_by_default_checked_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """XEP-0198 §5 <enabled location/>: none by default; a malformed one names the variable."""
    monkeypatch.delenv("STANZAD_SM_LOCATION", raising=False)
    assert load(ConnectionManagerSettings).sm_location == ""
    monkeypatch.setenv("STANZAD_SM_LOCATION", "[2001:db8::5]:5232")
    assert load(ConnectionManagerSettings).sm_location == "[2001:db8::5]:5232"
    monkeypatch.setenv("STANZAD_SM_LOCATION", "2001:db8::5:5232")  # IPv6 needs brackets
    with pytest.raises(ConfigError, match="STANZAD_SM_LOCATION"):
        load(ConnectionManagerSettings)


def test_placement_is_off_until_direct_addressing_and_its_marks_are_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/operations.md "Placement of new connections": full at 0.9 of the capacity until
    0.05 under it; redirects need a direct port, never a public address alone (a redirect
    naming the shared port could loop)."""
    for var in ("STANZAD_PLACEMENT_HIGH_WATER", "STANZAD_PLACEMENT_LOW_WATER",
                "STANZAD_C2S_DIRECT_PORT", "STANZAD_C2S_PUBLIC_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    s = load(ConnectionManagerSettings)
    assert (s.placement_high_water, s.low_water) == (0.9, pytest.approx(0.85))
    assert not s.direct_addressing
    monkeypatch.setenv("STANZAD_C2S_PUBLIC_ADDRESS", "cm-1.example.org:5224")
    with pytest.raises(ConfigError, match="STANZAD_C2S_PUBLIC_ADDRESS"):
        load(ConnectionManagerSettings)
    monkeypatch.setenv("STANZAD_C2S_DIRECT_PORT", "5224")
    assert load(ConnectionManagerSettings).direct_addressing
    monkeypatch.setenv("STANZAD_PLACEMENT_HIGH_WATER", "0.5")
    monkeypatch.setenv("STANZAD_PLACEMENT_LOW_WATER", "0.6")
    with pytest.raises(ConfigError, match="STANZAD_PLACEMENT_LOW_WATER"):
        load(ConnectionManagerSettings)
