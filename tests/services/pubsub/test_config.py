"""Node configuration forms and publish-options preconditions (services/pubsub/config.py,
XEP-0060 §7.1.5, §8.2)."""

from __future__ import annotations

import pytest

from services.pubsub import config as cfg
from shared.xmpp.errors import StanzaError


def test_max_items_max_means_the_servers_limit_and_preconditions_compare_values() -> None:
    base = cfg.defaults(True, 1000, 100_000)
    new = cfg.apply_form(base, {"pubsub#max_items": ["max"],
                                "pubsub#access_model": ["whitelist"],
                                "pubsub#persist_items": ["true"]}, 1000)
    assert new["pubsub#max_items"] == 1000 and new["pubsub#access_model"] == "whitelist"
    assert cfg.preconditions_met(new, {"pubsub#persist_items": ["1"]}, 1000)
    assert not cfg.preconditions_met(new, {"pubsub#access_model": ["open"]}, 1000)
    assert not cfg.preconditions_met(new, {"pubsub#unknown": ["x"]}, 1000)


@pytest.mark.parametrize("values", [{"pubsub#access_model": ["nobody"]},
                                    {"pubsub#max_items": ["0"]},
                                    {"pubsub#persist_items": ["maybe"]},
                                    {"pubsub#no_such_field": ["1"]}])
def test_invalid_configuration_is_not_acceptable(values: dict[str, list[str]]) -> None:
    with pytest.raises(StanzaError) as err:
        cfg.apply_form(cfg.defaults(False, 100, 1000), values, 100)
    assert err.value.condition.value == "not-acceptable"
