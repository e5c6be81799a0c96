"""One contract, every backend: the in-memory store must answer exactly like Redis."""

from __future__ import annotations

import asyncio

import pytest

from models.features import open_store
from models.features.memory import MemoryStore


@pytest.fixture(params=["memory", "redis"])
async def store(request, prefix):
    if request.param == "memory":
        s = MemoryStore()
    else:
        s = open_store(request.getfixturevalue("redis_url"))
    yield s
    await s.close()


@pytest.fixture
def k(prefix):
    return lambda name: f"{prefix}{name}"


async def test_zsets_rank_by_score_then_member_descending(store, k):
    await store.write([("zincr", k("z"), m, s) for m, s in [("a", 1.0), ("b", 3.0), ("c", 3.0), ("d", 0.5)]])
    await store.write([("zincr", k("z"), "a", 1.5)])
    [top2, top9, scores] = await store.read([("ztop", k("z"), 2), ("ztop", k("z"), 9),
                                             ("zscores", k("z"), ["a", "zz"])])
    assert top2 == [("c", 3.0), ("b", 3.0)]
    assert [m for m, _ in top9] == ["c", "b", "a", "d"]
    assert scores == [2.5, None]


async def test_ztrim_keeps_the_highest(store, k):
    await store.write([("zincr", k("t"), f"m{i}", float(i)) for i in range(10)] + [("ztrim", k("t"), 3)])
    [top] = await store.read([("ztop", k("t"), 10)])
    assert top == [("m9", 9.0), ("m8", 8.0), ("m7", 7.0)]


async def test_capped_lists_keep_the_newest_first(store, k):
    await store.write([("lpush", k("l"), f"v{i}", 3) for i in range(5)])
    await store.write([("lrem", k("l"), "v3")])
    [got, two] = await store.read([("lrange", k("l"), 10), ("lrange", k("l"), 1)])
    assert got == ["v4", "v2"] and two == ["v4"]


async def test_hashes_sets_and_strings(store, k):
    await store.write([("hset", k("h"), {"title": "Mug", "n": "1"}), ("hincr", k("h"), "n", 2.5),
                       ("hdel", k("h"), "title"), ("sadd", k("s"), "x"), ("sadd", k("s"), "y"),
                       ("srem", k("s"), "x"), ("set", k("b"), b"\x00\xff", None)])
    [h, mget, s, b, missing] = await store.read([("hgetall", k("h")), ("hmget", k("h"), ["n", "none"]),
                                                 ("smembers", k("s")), ("get", k("b")), ("get", k("nope"))])
    assert float(h["n"]) == 3.5 and "title" not in h
    assert float(mget[0]) == 3.5 and mget[1] is None
    assert s == {"y"} and b == b"\x00\xff" and missing is None


async def test_delete_and_empty_reads(store, k):
    await store.write([("hset", k("d"), {"a": "1"}), ("delete", k("d"))])
    assert await store.read([("hgetall", k("d")), ("lrange", k("d"), 5), ("ztop", k("d"), 5),
                             ("smembers", k("d"))]) == [{}, [], [], set()]


async def test_ttl_expires_keys(store, k):
    await store.write([("set", k("ttl"), b"v", 1)])
    assert await store.read([("get", k("ttl"))]) == [b"v"]
    await asyncio.sleep(2.1)
    assert await store.read([("get", k("ttl"))]) == [None]


async def test_unknown_operations_are_refused(store, k):
    from models.features import StoreError

    with pytest.raises(StoreError):
        await store.write([("explode", k("x"))])
    with pytest.raises(StoreError):
        await store.read([("explode", k("x"))])


async def test_ping(store):
    assert await store.ping() is True


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(ValueError, match="must start with redis://"):
        open_store("postgres://x")


async def test_mget_reads_many_strings_in_one_operation(store, k):
    await store.write([("set", k("m1"), "a\x1fb", None), ("set", k("m2"), b"c", None)])
    assert await store.read([("mget", [k("m1"), k("nope"), k("m2")])]) == [[b"a\x1fb", None, b"c"]]
