"""One contract, every backend: the in-memory store must answer exactly like Redis.

Redis runs twice: writes as one server-side script (the default), and as MULTI/EXEC
on a server whose user may not run scripts (some managed Redis plans)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from models.features import open_store
from models.features.memory import MemoryStore
from streams.embedded import start_redis


@pytest.fixture(scope="module")
def no_scripting_redis_url():
    """A real server whose only user is denied every scripting command by ACL."""
    svc = start_redis(username="app", password="app-secret", acl="+@all -@scripting")
    yield f"redis://app:app-secret@127.0.0.1:{svc.port}/0"
    svc.stop()


@pytest.fixture(params=["memory", "redis", "redis-without-scripts"])
async def store(request, prefix):
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "redis":
        s = open_store(request.getfixturevalue("redis_url"))
    else:
        s = open_store(request.getfixturevalue("no_scripting_redis_url"))
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


async def test_a_write_meeting_a_key_of_the_wrong_kind_applies_none_of_its_operations(store, k):
    from models.features.store import StoreDataError

    shopper = k("{u:alice}:cart")
    await store.write([("set", shopper, b"damaged", None), ("hset", k("h"), {"n": "abc", "m": "2"})])
    untouched = [("zscores", k("z"), ["a"]), ("hgetall", k("counts")), ("lrange", k("l"), 5), ("smembers", k("s"))]
    with pytest.raises(StoreDataError, match="holds a string; hincr needs a hash") as err:
        await store.write([("zincr", k("z"), "a", 1.0), ("hincr", k("counts"), "x", 1.0),
                           ("lpush", k("l"), "v", 5), ("hincr", shopper, "i1", 1.0), ("sadd", k("s"), "m")])
    assert "alice" not in str(err.value)  # no shopper id in the message (it reaches logs)
    with pytest.raises(StoreDataError, match="field n is not a number"):
        await store.write([("zincr", k("z"), "a", 1.0), ("hincr", k("h"), "m", 1.0), ("hincr", k("h"), "n", 1.0)])
    assert await store.read(untouched) == [[None], {}, [], set()]
    assert await store.read([("hgetall", k("h"))]) == [{"n": "abc", "m": "2"}]
    # a key replaced earlier in the same write takes the kind its later operations need
    await store.write([("delete", shopper), ("hincr", shopper, "i1", 1.0), ("zincr", k("z"), "a", 1.0)])
    cart, z = await store.read([("hgetall", shopper), ("zscores", k("z"), ["a"])])
    assert {f: float(v) for f, v in cart.items()} == {"i1": 1.0} and z == [1.0]


async def test_reading_a_key_of_the_wrong_kind_is_a_data_error_naming_the_key(store, k):
    from models.features.store import StoreDataError

    await store.write([("zincr", k("{u:bob}:cart"), "a", 1.0), ("set", k("str"), b"x", None)])
    with pytest.raises(StoreDataError, match=r"\{u:…\}:cart.*hgetall needs a hash") as err:
        await store.read([("get", k("str")), ("hgetall", k("{u:bob}:cart"))])
    assert "bob" not in str(err.value)
    # like Redis's MGET, a many-key read answers nothing for a key of another kind
    assert await store.read([("mget", [k("str"), k("{u:bob}:cart")])]) == [[b"x", None]]


async def test_ping(store):
    assert await store.ping() is True


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(ValueError, match="must start with redis://"):
        open_store("postgres://x")


async def test_mget_reads_many_strings_in_one_operation(store, k):
    await store.write([("set", k("m1"), "a\x1fb", None), ("set", k("m2"), b"c", None)])
    assert await store.read([("mget", [k("m1"), k("nope"), k("m2")])]) == [[b"a\x1fb", None, b"c"]]


async def test_reads_of_no_keys_or_members_answer_empty(store, k):
    await store.write([("hset", k("h0"), {"a": "1"}), ("zincr", k("z0"), "a", 1.0)])
    assert await store.read([("mget", []), ("hmget", k("h0"), []), ("zscores", k("z0"), []),
                             ("hmget", k("h0"), ["a"])]) == [[], [], [], ["1"]]


async def test_a_large_batch_lands_whole_and_in_order(store, k):
    """Thousands of operations in one write (the script slices long HSETs); later
    operations see earlier ones."""
    fields = {f"f{i}": str(i) for i in range(1000)}
    ops = [("hset", k("big"), fields), ("hdel", k("big"), "f7")]
    ops += [("zincr", k("zz"), f"m{i % 50}", 0.5) for i in range(5000)]
    ops += [("lpush", k("ll"), f"v{i}", 10) for i in range(30)] + [("lrem", k("ll"), "v29")]
    ops += [("set", k("s1"), b"x", 30), ("expire", k("s1"), 60), ("delete", k("gone"))]
    await store.write(ops)
    [h, top, lst, s1] = await store.read([("hgetall", k("big")), ("ztop", k("zz"), 3),
                                          ("lrange", k("ll"), 20), ("get", k("s1"))])
    assert len(h) == 999 and "f7" not in h and h["f999"] == "999"
    assert top == [("m9", 50.0), ("m8", 50.0), ("m7", 50.0)]
    assert lst == [f"v{i}" for i in range(28, 19, -1)] and s1 == b"x"


async def test_writes_fall_back_to_pipelines_where_scripts_are_refused(no_scripting_redis_url, k, caplog):
    store = open_store(no_scripting_redis_url)
    try:
        with caplog.at_level(logging.WARNING, logger="streamrec.store"):
            await store.write([("zincr", k("fb"), "a", 2.0)])
            await store.write([("zincr", k("fb"), "a", 1.0)])
        assert await store.read([("zscores", k("fb"), ["a"])]) == [[3.0]]
        warnings = [r.getMessage() for r in caplog.records if r.name == "streamrec.store"]
        assert len(warnings) == 1 and "MULTI/EXEC" in warnings[0] and "evalsha" in warnings[0] and "app-secret" not in warnings[0]
    finally:
        await store.close()


async def test_on_redis_a_write_is_one_command_however_many_operations(k):
    import redis.asyncio as aioredis

    svc = start_redis()
    url = f"redis://127.0.0.1:{svc.port}/0"
    store, admin = open_store(url), aioredis.Redis.from_url(url)
    try:
        await store.write([("zincr", k("one"), f"m{i}", 1.0) for i in range(300)])  # loads the script
        await admin.config_resetstat()
        await store.write([("zincr", k("one"), f"m{i}", 1.0) for i in range(300)] + [("delete", k("x"))])
        [top] = await store.read([("ztop", k("one"), 5)])
        stats = await admin.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 1 and "cmdstat_exec" not in stats
        assert stats["cmdstat_zincrby"]["calls"] == 300  # run by the script, in order
        assert top == [("m99", 2.0), ("m98", 2.0), ("m97", 2.0), ("m96", 2.0), ("m95", 2.0)]
    finally:
        await store.close()
        await admin.aclose()
        svc.stop()


@pytest.fixture(params=["redis", "redis-without-scripts"])
async def redis_store(request):
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "no_scripting_redis_url")
    s = open_store(url)
    yield s
    await s.close()


def count_round_trips(store, monkeypatch) -> list[int]:
    """Commands per round trip ``store`` makes from now on (a spy on the real connection),
    not counting the one ahead of each round trip with writes that checks their keys'
    kinds where the server refuses scripts (``RedisStore._misfits``)."""
    trips: list[int] = []
    real = store._roundtrip

    async def spy(commands):
        if not all(c[0] in ("TYPE", "HGET") for c in commands):
            trips.append(len(commands))
        return await real(commands)

    monkeypatch.setattr(store, "_roundtrip", spy)
    return trips


async def test_a_write_ahead_lands_before_the_reads_issued_after_it_in_the_same_round_trip(
        redis_store, k, monkeypatch):
    await redis_store.write([("zincr", k("wa"), "a", 1.0)])  # loads the script, opens the connection
    trips = count_round_trips(redis_store, monkeypatch)
    before = asyncio.ensure_future(redis_store.read([("zscores", k("wa"), ["a"])]))
    await asyncio.sleep(0)  # issued first: answered without the write
    written = redis_store.write_ahead([("zincr", k("wa"), "a", 2.0), ("hset", k("wh"), {"f": "v"})])
    after = await asyncio.gather(redis_store.read([("zscores", k("wa"), ["a"])]),
                                 redis_store.read([("hgetall", k("wh"))]))
    assert await written is None
    assert await before == [[1.0]]
    assert after == [[[3.0]], [{"f": "v"}]]
    assert len(trips) == 1  # the read before, the write and both reads after: one round trip


async def test_reads_of_tasks_started_by_tasks_join_the_round_trip_of_the_write_ahead(
        redis_store, k, monkeypatch):
    """A batch's lists run as tasks that start a task per candidate source: their first
    reads go with the batch's effects, in one round trip."""
    await redis_store.write([("zincr", k("nt"), "a", 1.0)])
    trips = count_round_trips(redis_store, monkeypatch)
    written = redis_store.write_ahead([("zincr", k("nt"), "a", 2.0)])

    async def source():
        return await redis_store.read([("zscores", k("nt"), ["a"])])

    async def one_list():
        return await asyncio.gather(source(), source())

    got = await asyncio.gather(one_list(), one_list())
    assert await written is None
    assert got == [[[[3.0]], [[3.0]]]] * 2
    assert len(trips) == 1  # the write and the four reads


async def test_reads_behind_a_failed_write_fail_with_it_and_the_ones_before_do_not(redis_store, k):
    from models.features.store import StoreDataError

    await redis_store.write([("set", k("str"), b"not a hash", None), ("zincr", k("ok"), "a", 1.0)])
    before = asyncio.ensure_future(redis_store.read([("zscores", k("ok"), ["a"])]))
    await asyncio.sleep(0)
    written = redis_store.write_ahead([("hincr", k("str"), "f", 1.0)])  # the wrong kind of key
    after = asyncio.ensure_future(redis_store.read([("get", k("str"))]))
    with pytest.raises(StoreDataError, match="holds a string; hincr needs a hash"):
        await written
    with pytest.raises(StoreDataError, match="behind a write that failed"):
        await after
    assert await before == [[1.0]]
    assert await redis_store.read([("get", k("str"))]) == [b"not a hash"]  # the store serves on


async def test_a_server_that_lost_the_script_gets_it_again_with_the_same_batch(k, monkeypatch):
    import redis.asyncio as aioredis

    svc = start_redis()
    url = f"redis://127.0.0.1:{svc.port}/0"
    store, admin = open_store(url), aioredis.Redis.from_url(url)
    try:
        await store.write([("zincr", k("ns"), "a", 1.0)])
        await admin.script_flush()  # e.g. a restarted or failed-over server
        await admin.config_resetstat()
        trips = count_round_trips(store, monkeypatch)
        written = store.write_ahead([("zincr", k("ns"), "a", 1.0)])
        got = await store.read([("zscores", k("ns"), ["a"])])
        await written
        stats = await admin.info("commandstats")
        assert got == [[2.0]]  # applied once, and seen by the read sent with it
        assert stats["cmdstat_eval"]["calls"] == 1 and stats["cmdstat_zincrby"]["calls"] == 1
        assert trips == [2, 2]  # EVALSHA refused (nothing ran), then EVAL with the read again
        await store.write([("zincr", k("ns"), "a", 1.0)])
        assert (await admin.info("commandstats"))["cmdstat_evalsha"]["calls"] == 2  # cached again
    finally:
        await store.close()
        await admin.aclose()
        svc.stop()


async def test_a_lazy_write_ahead_goes_with_the_next_operation_or_when_awaited(redis_store, k, monkeypatch):
    await redis_store.write([("zincr", k("lz"), "a", 1.0)])
    trips = count_round_trips(redis_store, monkeypatch)
    written = redis_store.write_ahead([("zincr", k("lz"), "a", 2.0)], lazy=True)
    for _ in range(10):
        await asyncio.sleep(0)
    assert trips == []  # waiting for company
    assert await redis_store.read([("zscores", k("lz"), ["a"])]) == [[3.0]]  # it went first
    await written
    assert len(trips) == 1
    alone = redis_store.write_ahead([("zincr", k("lz"), "a", 1.0)], lazy=True)
    await alone  # nothing else came: awaiting sends it
    assert len(trips) == 2
    assert await redis_store.read([("zscores", k("lz"), ["a"])]) == [[4.0]]


@pytest.mark.parametrize("acl", ["+@all -type", "+@all -@scripting -type"])
async def test_a_user_who_may_not_ask_a_keys_kind_gets_a_store_error_not_a_data_error(k, acl):
    """Every write asks for its keys' kinds (in the script, or ahead of MULTI/EXEC): an
    ACL user denied ``TYPE`` gets the server's refusal, never a claim that the data is
    damaged."""
    from models.features import StoreError
    from models.features.store import StoreDataError

    svc = start_redis(username="app", password="app-secret", acl=acl)
    store = open_store(f"redis://app:app-secret@127.0.0.1:{svc.port}/0")
    try:
        with pytest.raises(StoreError, match="(?i)permission|noperm") as err:
            await store.write([("zincr", k("z"), "a", 1.0)])
        assert not isinstance(err.value, StoreDataError)
    finally:
        await store.close()
        svc.stop()


async def test_a_round_trip_reads_every_reply_in_order_as_redis_py_does(redis_store, k, monkeypatch):
    """Replies are read straight from the connection's hiredis reader (``_replies``):
    hundreds of them, over many socket reads, error replies kept in place as values,
    exactly as redis-py's ``read_response`` gives them one by one."""
    from redis.exceptions import ResponseError

    import models.features.redis as redis_backend

    big = "v" * 5000  # 300 of them: many reads of the socket
    await redis_store._roundtrip([("SET", k(f"big{i}"), big) for i in range(300)])
    commands = [c for i in range(300) for c in (("GET", k(f"big{i}")), ("LRANGE", k(f"big{i}"), 0, 1))]
    read_each = redis_backend.read_each

    async def not_taken(conn, n):
        raise AssertionError("the reader's way was not taken: read_response per reply")

    monkeypatch.setattr(redis_backend, "read_each", not_taken)
    fast = await redis_store._roundtrip(commands)  # fails if it fell back to read_each

    monkeypatch.setattr(redis_backend, "_replies", read_each)  # redis-py's own path
    slow = await redis_store._roundtrip(commands)
    assert len(fast) == len(slow) == 600
    assert fast[0::2] == slow[0::2] == [big.encode()] * 300
    assert all(isinstance(e, ResponseError) and "WRONGTYPE" in str(e) for e in fast[1::2])
    assert [type(e) for e in fast[1::2]] == [type(e) for e in slow[1::2]]
    await redis_store._roundtrip([("DEL", *[k(f"big{i}") for i in range(300)])])
    assert await redis_store.read([("get", k("big0"))]) == [None]  # the connection stayed usable
