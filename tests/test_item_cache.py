"""The item-side read cache in front of a real Redis: what it caches, what it never does."""

from __future__ import annotations

import asyncio

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


async def test_a_shorter_read_gets_the_head_of_a_longer_cached_one(redis_store, prefix):
    """The sources ask for more items when a shopper's list excludes more: one cached
    answer per key serves every shorter read, and a longer read goes to the store."""
    keys = Keys(prefix)
    counting = CountingStore(redis_store)
    cache = ItemSideCache(counting, keys, ttl_s=60.0)
    await redis_store.write([("zincr", keys.covis("a"), f"b{n}", float(n)) for n in range(10)]
                            + [("lpush", keys.item_sessions("a"), f"s{n}", 100) for n in range(3)])
    for n in (6, 2, 5, 8, 3, 20, 10):
        asked = [("ztop", keys.covis("a"), n), ("lrange", keys.item_sessions("a"), n)]
        assert await cache.read(asked) == await redis_store.read(asked)
    # read: covis 6, 8, 20 (the whole zset: no longer read after); the session list 6 (all of it)
    assert [op[2] for op in counting.forwarded if op[0] == "ztop"] == [6, 8, 20]
    assert [op[2] for op in counting.forwarded if op[0] == "lrange"] == [6]


async def test_the_replay_bench_measures_what_a_ttl_hides(tmp_path):
    """``benchmarks.bench_item_cache`` on a small stream (an event every 7 s): a cache
    kept 5 s of event time scores what no cache scores; one kept for the whole stream
    serves stale answers, and the metrics move."""
    from benchmarks.bench_item_cache import run_arm
    from tests.test_replay import write_stream

    path = str(write_stream(tmp_path / "s.jsonl", users=60, clicks=15))
    none = await run_arm(path, "jsonl", 0.0)
    short, long = await run_arm(path, "jsonl", 5.0), await run_arm(path, "jsonl", 10_000.0)
    assert none["cases"] > 500
    assert short["metrics"] == none["metrics"] and short["hits"] == 0 < short["misses"]
    assert long["metrics"] != none["metrics"] and long["hits"] > long["misses"]
