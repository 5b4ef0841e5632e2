"""shared.store.pubsub: a node's subscription limit on a real PostgreSQL, with the count
taken once per COUNT_TTL_S instead of at every subscribe."""

from __future__ import annotations

import secrets

from shared.store.pg.database import Database
from shared.store.pubsub import COUNT_HEADROOM, PubsubStore, Subscription


async def test_the_subscription_limit_holds_exactly_while_most_subscribes_skip_the_count(
    db: Database
) -> None:
    store = PubsubStore(db, "tests")
    node = f"n-{secrets.token_hex(4)}"
    assert await store.create("pubsub.localhost", node, "owner@localhost", {})
    limit = 40

    def sub(i: int) -> Subscription:
        return Subscription(f"u{i}@localhost", f"s{i}", "subscribed", {})

    results = [await store.subscribe("pubsub.localhost", node, sub(i), limit)
               for i in range(limit + 5)]
    assert results == [True] * limit + [False] * 5
    assert await store.count_subscriptions("pubsub.localhost", node) == limit
    # a subscriber already there may change its subscription at the limit
    assert await store.subscribe("pubsub.localhost", node, sub(3), limit)
    # below the headroom the count is remembered, not taken: it still says what is stored
    other = f"m-{secrets.token_hex(4)}"
    assert await store.create("pubsub.localhost", other, "owner@localhost", {})
    for i in range(10):
        assert await store.subscribe("pubsub.localhost", other, sub(i), 1000)
        assert await store.subscribe("pubsub.localhost", other, sub(i), 1000)  # replaced
    known, _ = store._counts[("pubsub.localhost", other)]
    assert known == 10 < 1000 * COUNT_HEADROOM
    assert await store.count_subscriptions("pubsub.localhost", other) == 10
