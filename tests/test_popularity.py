"""Time-decayed popularity, the cold-start fallback: its ranking, its landmarks, its cache."""

from __future__ import annotations

import math

from models.candidates import Context
from models.candidates.popular import Popularity
from models.features.keys import Keys
from models.features.memory import MemoryStore

T0 = 1_700_000_000.0


def ctx(now: float) -> Context:
    return Context("shopper", now, [], [])


async def click(pop: Popularity, item: str, ts: float, weight: float = 1.0) -> None:
    await pop.store.write(pop.observe(ctx(ts), item, weight, ts))


async def test_recent_interest_outranks_older_interest_of_the_same_size():
    pop = Popularity(MemoryStore(), Keys(), half_life_s=3600)
    for n in range(3):
        await click(pop, "yesterday", T0 + n)
    for n in range(2):
        await click(pop, "now", T0 + 86_400 + n)
    ranked = await pop.top(T0 + 86_400 + 10, 2)
    assert [i for i, _ in ranked] == ["now", "yesterday"]
    # scores are decayed counts at the time asked for: 2 clicks ten seconds ago
    assert math.isclose(ranked[0][1], sum(0.5 ** ((10 - n) / 3600) for n in range(2)), rel_tol=1e-9)


async def test_a_ranking_across_a_landmark_change_is_exact():
    pop = Popularity(MemoryStore(), Keys(), half_life_s=60, period=2)
    boundary = (pop.landmark(T0) + 1) * pop.span
    await click(pop, "before", boundary - 5, weight=4.0)
    await click(pop, "after", boundary + 5, weight=1.0)
    assert pop.landmark(boundary - 5) != pop.landmark(boundary + 5)
    scores = dict(await pop.top(boundary + 5, 2))
    assert math.isclose(scores["before"], 4.0 * 0.5 ** (10 / 60), rel_tol=1e-9)
    assert math.isclose(scores["after"], 1.0, rel_tol=1e-9)


async def test_a_young_shop_sees_every_new_item_at_once():
    """Within the refresh period a short ranking is read again once this worker has
    written another interaction: the shop's second shopper is offered the first one's
    item, the third both of theirs."""
    pop = Popularity(MemoryStore(), Keys(), refresh_s=60)
    await click(pop, "first", T0)
    assert [i for i, _ in await pop.top(T0, 20)] == ["first"]
    await click(pop, "second", T0 + 1)
    assert sorted(i for i, _ in await pop.top(T0 + 1, 20)) == ["first", "second"]


async def test_a_full_ranking_is_reused_for_the_refresh_period():
    store = MemoryStore()
    pop = Popularity(store, Keys(), refresh_s=60)
    for n in range(30):
        await click(pop, f"i{n}", T0)
    before = await pop.top(T0, 10)
    await click(pop, "late", T0 + 1, weight=100.0)
    assert await pop.top(T0 + 30, 10) == before  # within refresh_s: the kept ranking
    assert (await pop.top(T0 + 61, 10))[0][0] == "late"  # after it: read again
