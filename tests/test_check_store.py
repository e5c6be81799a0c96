"""``streamrec check-store``: finds the keys the workers cannot use, on a real Redis, and deletes
only those."""

from __future__ import annotations

import inspect
import json
import pickle
import subprocess
import sys

import pytest
import redis.asyncio as aioredis

from models.events import Click, Feedback, Forget, Review
from models.features import open_store
from models.features.check import FAMILIES, check_store, family_of, repair
from models.features.keys import Keys
from tests.support.dump import dump_store
from tests.test_pipeline import T0, feed, recommender, shop_stream


def test_every_key_the_store_names_has_a_family():
    """A key family added to ``Keys`` without a check here fails this."""
    keys = Keys("p:")
    built = {}
    for name, method in inspect.getmembers(Keys, inspect.isfunction):
        if name.startswith("_") or name == "user_keys":
            continue
        args = [7 if p == "landmark" else "x}:y" for p in list(inspect.signature(method).parameters)[1:]]
        built[name] = getattr(keys, name)(*args)
    assert len(built) >= 25
    found = {name: family_of(key, "p:") for name, key in built.items()}
    assert [n for n, fam in found.items() if fam is None] == []
    # one family per kind of key (a learner snapshot's is the ranker's when named "ranker")
    assert len({fam.name for fam in found.values()}) == len(found)
    assert family_of("p:{u:a}:cartx", "p:") is None and family_of("q:{u:a}:cart", "p:") is None
    assert {f.name for f in FAMILIES} >= {fam.name for fam in found.values()}


async def _populated(redis_url: str, prefix: str):
    """A store written by the processing path itself: clicks, carts, purchases, feedback on
    shown lists, reviews, an erasure and a ranker snapshot."""
    store, keys = open_store(redis_url), Keys(prefix)
    rec = recommender(store, keys)
    recs = await feed(rec, shop_stream(n=400), 50)
    shown = [r for r in recs if r.items][:20]
    await rec.handle([Feedback(f"f{i}", r.user_id, r.rec_id, "click", T0 + 5000 + i, r.items[0].item_id)
                      for i, r in enumerate(shown)])
    await rec.handle([Review("rv1", "u1", "i2", "Sturdy and warm.", T0 + 6000),
                      Forget("fg1", "u9", T0 + 6001)])
    await rec.snapshot()
    return store, keys, rec


async def test_a_store_the_processing_path_wrote_has_nothing_damaged_and_nothing_foreign(redis_url, prefix):
    store, keys, _ = await _populated(redis_url, prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        report = await check_store(client, prefix, scan_count=50)
    finally:
        await client.aclose()
        await store.close()
    assert report.damaged == [] and report.foreign == 0
    assert report.keys == sum(report.per_family.values()) > 100
    assert {"a shopper's cart", "a shopper's purchase record", "a shopper's session", "a shopper's counters",
            "an item's co-visitation", "popularity", "interaction totals", "the ranker snapshot",
            "click-through counts", "a list for feedback", "an item's reviews", "a dedupe marker",
            "a session's items", "a shopper's last list for labels"} <= set(report.per_family)


async def _damage(client: aioredis.Redis, keys: Keys) -> dict[str, str]:
    """Damage one key of several families; the key -> a word of the reason expected."""
    await client.delete(keys.cart("u1"))
    await client.set(keys.cart("u1"), "three mugs")
    await client.hset(keys.profile("u2"), "click", "many")
    await client.hset(keys.purchases("u3"), "i1", "yesterday")
    await client.hset(keys.session("u4"), "last", "noon")
    await client.set(keys.last_rec("u5"), b"\x00garbage")
    await client.delete(keys.covis("i3"))
    await client.hset(keys.covis("i3"), "i4", "1")
    await client.hset(keys.counts(), "i1", "lots")
    await client.set(keys.snapshot("ranker"), pickle.dumps({"updates": 1}))
    return {keys.cart("u1"): "holds a string; needs a hash", keys.profile("u2"): "field click is not a number",
            keys.purchases("u3"): "field i1 is not a purchase record", keys.session("u4"): "field last is not a number",
            keys.last_rec("u5"): "is not a list record", keys.covis("i3"): "holds a hash; needs a zset",
            keys.counts(): "field i1 is not a number", keys.snapshot("ranker"): "never loaded"}


async def test_damaged_keys_are_found_named_without_the_shopper_and_repaired_alone(redis_url, prefix):
    store, keys, rec = await _populated(redis_url, prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        expected = await _damage(client, keys)
        await client.set(f"{prefix}not-ours", "someone else's")
        before = await dump_store(store, prefix, redis_url)
        not_utf8 = prefix.encode() + b"{u:\xff}:cart"  # not a name streamrec writes
        await client.set(not_utf8, "someone else's")
        report = await check_store(client, prefix)
        assert {d.key: d.reason for d in report.damaged}.keys() == expected.keys()
        for d in report.damaged:
            assert expected[d.key] in d.reason
            said = d.describe()
            assert "{u:u" not in said and "deleting it loses" in said
        assert report.foreign == 2
        assert all("{u:u" not in row["key"] for row in report.as_json()["damaged"])

        deleted, left = await repair(client, report.damaged)
        assert (deleted, left) == (len(expected), 0)
        assert await client.exists(not_utf8)
        await client.delete(not_utf8)  # (the dump below reads names as text)
        after = await dump_store(store, prefix, redis_url)
        assert {k: v for k, v in before.items() if k not in expected} == after
        assert (await check_store(client, prefix)).damaged == []
        # the shoppers whose keys were damaged are served again
        out = await rec.handle([Click(f"again-{u}", u, "i2", T0 + 7000) for u in ("u1", "u2", "u3", "u4", "u5")])
        assert sorted(r.user_id for r in out.recommendations) == ["u1", "u2", "u3", "u4", "u5"]
    finally:
        await client.aclose()
        await store.close()


async def test_repair_leaves_a_key_mended_since_the_check(redis_url, prefix):
    keys = Keys(prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(keys.cart("u1"), "junk")
        await client.hset(keys.profile("u1"), "click", "junk")
        report = await check_store(client, prefix)
        assert len(report.damaged) == 2
        await client.delete(keys.cart("u1"))  # mended meanwhile (by a worker's erasure and a new cart)
        await client.hset(keys.cart("u1"), "i1", "2")
        assert await repair(client, report.damaged) == (1, 1)
        assert await client.hgetall(keys.cart("u1")) == {b"i1": b"2"}
        assert not await client.exists(keys.profile("u1"))
    finally:
        await client.aclose()


def _cli(redis_url: str, prefix: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", "check-store", "--redis-url", redis_url,
                           "--key-prefix", prefix, *flags], capture_output=True, text=True, timeout=120)


async def test_the_command_reports_exits_nonzero_while_damage_is_left_and_repairs(redis_url, prefix):
    keys = Keys(prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.hset(keys.cart("alice"), "i1", "2")
        await client.zadd(keys.covis("i1"), {"i2": 1.0})
        await client.set(keys.recent("alice"), b"\xff\xfe")
        await client.set(keys.rec("r1"), "{not json")
    finally:
        await client.aclose()
    found = _cli(redis_url, prefix, "--json")
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert report["keys"] == 4 and len(report["damaged"]) == 2 and report["deleted"] == 0
    assert "alice" not in found.stdout + found.stderr
    text = _cli(redis_url, prefix)
    assert text.returncode == 1 and "damaged: 2" in text.stdout and "--repair" in text.stdout
    fixed = _cli(redis_url, prefix, "--repair")
    assert fixed.returncode == 0 and "deleted 2" in fixed.stdout, fixed.stdout + fixed.stderr
    clean = _cli(redis_url, prefix)
    assert clean.returncode == 0 and "damaged: 0" in clean.stdout
    refused = subprocess.run([sys.executable, "-m", "streams.cli", "check-store", "--redis-url", "memory://"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "in-memory store" in refused.stderr
