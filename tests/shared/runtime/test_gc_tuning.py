"""The garbage collector's settings (shared/runtime/gc_tuning.py): thresholds, the startup
freeze, and the pause histogram."""

from __future__ import annotations

import gc

import pytest
from prometheus_client import REGISTRY

from shared.runtime import gc_tuning
from shared.runtime.settings import CommonSettings, ConfigError, load, parse_gc_thresholds


def _pauses(service: str, generation: int) -> float:
    value = REGISTRY.get_sample_value(
        "stanzad_process_gc_pause_seconds_count",
        {"service": service, "generation": str(generation)},
    )
    return value or 0.0


def test_every_collection_is_timed_by_generation() -> None:
    gc_tuning.observe_pauses("gc-test")
    gc_tuning.observe_pauses("gc-test")  # once per process, however often it is asked
    enabled = gc.isenabled()
    gc.disable()  # no automatic collection in between: only the three below are counted
    try:
        before = [_pauses("gc-test", g) for g in range(3)]
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
        after = [_pauses("gc-test", g) for g in range(3)]
        assert [a - b for a, b in zip(after, before, strict=True)] == [1, 0, 2]
        assert sum(isinstance(cb, gc_tuning._PauseObserver) for cb in gc.callbacks) == 1
    finally:
        if enabled:
            gc.enable()
        observer = gc_tuning._PauseObserver
        gc.callbacks[:] = [cb for cb in gc.callbacks if not isinstance(cb, observer)]


def test_startup_objects_are_frozen_out_of_collections() -> None:
    before = gc.get_freeze_count()
    try:
        gc_tuning.freeze_startup()
        assert gc.get_freeze_count() > before + 1000  # the tests' modules, classes, functions
    finally:
        gc.unfreeze()


def test_thresholds_are_applied() -> None:
    old = gc.get_threshold()
    try:
        gc_tuning.apply_thresholds((20000, 20, 100))
        assert gc.get_threshold() == (20000, 20, 100)
    finally:
        gc.set_threshold(*old)


def test_thresholds_setting_default_and_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STANZAD_GC_THRESHOLDS", raising=False)
    assert load(CommonSettings).gc_threshold_values == (20000, 20, 100)
    monkeypatch.setenv("STANZAD_GC_THRESHOLDS", " 700, 10,10 ")
    assert load(CommonSettings).gc_threshold_values == (700, 10, 10)
    assert parse_gc_thresholds("0,0,0") == (0, 0, 0)  # CPython's "collector off"


@pytest.mark.parametrize("value", ["", "700,10", "700,10,10,10", "a,b,c", "-1,10,10", "7e2,1,1",
                                   "9999999999,10,10"])
def test_bad_thresholds_name_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("STANZAD_GC_THRESHOLDS", value)
    with pytest.raises(ConfigError, match="STANZAD_GC_THRESHOLDS"):
        load(CommonSettings)
