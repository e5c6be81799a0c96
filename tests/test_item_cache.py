"""The item-side read cache in front of a real Redis: what it caches, what it never does."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from models.features import open_store
from models.features.cache import ItemSideCache, ShopClock
from models.features.keys import Keys
from models.features.store import StoreError


class CountingStore:
    """Passes everything to a real store and counts the read operations it forwards."""

    def __init__(self, store):
        self.store, self.kind, self.forwarded = store, store.kind, []

    async def read(self, ops):
        self.forwarded += list(ops)
        return await self.store.read(ops)

    async def write(self, ops):
        await self.store.write(ops)


@pytest.fixture
async def redis_store(redis_url):
    store = open_store(redis_url)
    yield store
    await store.close()


async def test_item_side_reads_are_reused_until_they_expire(redis_store, prefix):
    keys, now = Keys(prefix), [0.0]
    counting = CountingStore(redis_store)
    cache = ItemSideCache(counting, keys, ttl_s=1.0, clock=lambda: now[0])
    await cache.write([("zincr", keys.covis("a"), "b", 1.0), ("lpush", keys.item_sessions("a"), "s1", 10),
                       ("set", keys.recent("ann"), "a", None)])
    ops = [("ztop", keys.covis("a"), 5), ("lrange", keys.item_sessions("a"), 5), ("get", keys.recent("ann"))]
    first = await cache.read(ops)
    assert first == [[("b", 1.0)], ["s1"], b"a"]
    # another worker's writes (straight to the store)
    await redis_store.write([("zincr", keys.covis("a"), "c", 5.0), ("set", keys.recent("ann"), "c\x1fa", None)])
    counting.forwarded.clear()
    again = await cache.read(ops)
    assert again[:2] == first[:2]  # item-side: up to ttl_s of staleness
    assert again[2] == b"c\x1fa"  # per-user state: always fresh
    assert counting.forwarded == [ops[2]]
    now[0] = 1.5
    assert (await cache.read(ops[:1]))[0] == [("c", 5.0), ("b", 1.0)]


async def test_concurrent_reads_of_one_key_share_one_store_read(redis_store, prefix):
    keys = Keys(prefix)
    counting = CountingStore(redis_store)
    cache = ItemSideCache(counting, keys)
    await cache.write([("zincr", keys.next_items("a"), "b", 2.0)])
    got = await asyncio.gather(*(cache.read([("ztop", keys.next_items("a"), 3)]) for _ in range(20)))
    assert all(g == [[("b", 2.0)]] for g in got)
    assert counting.forwarded == [("ztop", keys.next_items("a"), 3)]
    assert cache.hits == 19 and cache.misses == 1


async def test_a_failed_read_fails_every_waiter_and_is_not_cached(prefix):
    keys = Keys(prefix)
    dead = open_store("redis://127.0.0.1:1/0", timeout_s=0.5)  # nothing listens on port 1
    cache = ItemSideCache(dead, keys)
    results = await asyncio.gather(*(cache.read([("ztop", keys.covis("a"), 3)]) for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
    assert not cache._inflight and not cache._cache
    await dead.close()


async def test_its_own_writes_keep_every_cached_answer_exact(redis_store, prefix):
    """Random session pushes, increments and trims written through the cache, reads of
    varying length: every answer it gives equals a fresh read of the store, while it
    still serves most reads."""
    rng = random.Random(3)
    keys = Keys(prefix)
    counting = CountingStore(redis_store)
    cache = ItemSideCache(counting, keys, ttl_s=3600.0)
    items = [f"i{n}" for n in range(6)]
    reads = [op for i in items for op in (("ztop", keys.covis(i)), ("ztop", keys.next_items(i)),
                                          ("lrange", keys.item_sessions(i)))]
    for step in range(300):
        i, other = rng.choice(items), rng.choice(items + [f"x{n}" for n in range(10)])
        batch = [("zincr", keys.covis(i), other, rng.choice([0.5, 1.0, 3.0])),
                 ("zincr", keys.next_items(i), other, 1.0),
                 ("lpush", keys.item_sessions(i), f"s{step}", 8)]
        if step % 7 == 0:
            batch.append(("ztrim", keys.covis(i), rng.choice([2, 6])))
        await cache.write(batch)
        # as the sources ask: how many varies (with what the shopper's list excludes)
        asked = [(*op, rng.choice([3, 4, 5, 12])) for op in rng.sample(reads, 6)]
        assert await cache.read(asked) == await redis_store.read(asked), f"step {step}"
    assert cache.hits > 2 * cache.misses  # answered from memory, not re-read


async def test_a_read_in_flight_when_its_key_is_written_is_not_kept(redis_store, prefix):
    keys = Keys(prefix)
    cache = ItemSideCache(redis_store, keys, ttl_s=3600.0)
    op = ("ztop", keys.covis("a"), 3)
    read = asyncio.ensure_future(cache.read([op]))
    await asyncio.sleep(0)  # the read is on its way
    cache.written([("zincr", keys.covis("a"), "b", 1.0)])  # (as if written on another connection)
    await read
    assert not cache._cache


def test_the_shop_clock_runs_with_the_wall_and_follows_events_ahead():
    wall = [0.0]
    clock = ShopClock(wall=lambda: wall[0])
    clock.advance(1000.0)
    wall[0] = 3.0
    assert clock() == 1003.0
    clock.advance(900.0)  # an old event
    assert clock() == 1003.0
    clock.advance(1600.0)  # ten shop minutes played in no wall time
    assert clock() == 1600.0


@pytest.mark.parametrize("item_cache_s", [10.0, 60.0])
async def test_a_worker_lists_exactly_what_it_would_without_the_cache(redis_url, prefix, item_cache_s):
    """The worker's recommender (Redis, the tuned events profile) over a live shop's
    stream: with the item-side cache it makes the same lists, item for item and score
    for score, as with the cache off, since it applies its own writes (one worker:
    nobody else writes); yet most item-side reads are answered in process."""
    from models.events import parse_value
    from streams.app import Runtime
    from streams.settings import Settings
    from streams.simulate import simulate_live_shop

    stream = [parse_value(e["topic"], e["value"], now=2e9)
              for e in simulate_live_shop(1500, rate=200.0, n_items=300, seed=11)]
    lists = {}
    for cache_s in (0.0, item_cache_s):
        rt = Runtime(Settings(redis_url=redis_url, key_prefix=f"{prefix}{cache_s}:", content=False,
                              item_cache_s=cache_s, _env_file=None))
        sent = lists[cache_s] = {}

        async def keep(user_id, payload, sent=sent):
            rec = orjson.loads(payload)
            sent[rec["trigger_event_id"]] = [(i["item_id"], i["score"], i["sources"]) for i in rec["items"]]

        rt.send_recommendation = keep
        try:
            for i in range(0, len(stream), 40):
                assert not await rt.handle(stream[i:i + 40])
        finally:
            await rt.store.close()
        if cache_s:
            cache = rt.recommender.store
            assert isinstance(cache, ItemSideCache) and cache.hits > cache.misses
    assert len(lists[0.0]) > 1000
    assert lists[item_cache_s] == lists[0.0]


async def test_the_replay_bench_scores_write_through_exactly_as_no_cache(tmp_path):
    """``benchmarks.bench_item_cache`` on a small stream: the worker's arrangement scores
    what no cache scores; reading through a cache the writes bypass does not."""
    from benchmarks.bench_item_cache import run_arm
    from tests.test_replay import write_stream

    path = str(write_stream(tmp_path / "s.jsonl", users=60, clicks=15))
    arms = {arm: await run_arm(path, "jsonl", arm, ttl_s=10_000.0) for arm in
            ("no cache", "reads only", "write-through")}
    assert arms["no cache"]["cases"] > 500
    assert arms["write-through"]["metrics"] == arms["no cache"]["metrics"]
    assert arms["write-through"]["hits"] > arms["write-through"]["misses"]
    assert arms["reads only"]["metrics"] != arms["no cache"]["metrics"]
