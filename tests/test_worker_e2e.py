"""End to end: aiokafka producers -> a real `streamrec worker` on a real broker and Redis
-> `recommendations` and `dead-letter` read back."""

from __future__ import annotations

import pickle
import time

import orjson
import pytest

from models.features import open_store
from models.features.keys import Keys
from streams.embedded import start_worker
from tests.support.dump import dump_store
from tests.support.kafka import Collector, produce

pytestmark = [pytest.mark.services, pytest.mark.slow]

MALFORMED = [  # (topic, raw value, words expected in the reason)
    ("clicks", b"{not json", "not JSON"),
    ("clicks", b"[1,2,3]", "expected a JSON object"),
    ("clicks", b'{"event_id": "m3", "item_id": "i1", "ts": 1700000000}', "user_id: missing"),
    ("clicks", b'{"event_id": "m4", "user_id": ["x"], "item_id": "i1", "ts": 1700000000}', "user_id: must be a string"),
    ("clicks", b'{"event_id": "m5", "user_id": "u1", "item_id": "i1", "ts": "noon"}', "ts: must be a number"),
    ("clicks", b'{"event_id": "m6", "user_id": "u1", "item_id": "i1", "ts": 99999999999999}', "in the future"),
    ("clicks", b'{"event_id": "m7", "user_id": "u1", "item_id": "i1", "ts": 5}', "before 2000"),
    ("carts", b'{"event_id": "m8", "user_id": "u1", "item_id": "i1", "action": "steal", "ts": 1700000000}', "action"),
    ("carts", b'{"event_id": "m9", "user_id": "u1", "item_id": "i1", "action": "add", "quantity": -3, "ts": 1700000000}', "quantity"),
    ("clicks", orjson.dumps({"event_id": "m10", "user_id": "u1", "item_id": "x" * 1000, "ts": 1700000000}), "longer than"),
    ("clicks", b"\xff\xfe\x00binary", "not JSON"),
    ("clicks", b"[" * 100_000, "exceeds"),
    ("clicks", b"", "not JSON"),
    ("items", b'{"item_id": "i1", "ts": 1700000000}', "title: missing"),
]


def click(n, user, item, ts):
    return {"event_id": f"c{n}", "user_id": user, "item_id": item, "ts": ts}


@pytest.mark.parametrize("consumer_in_loop", ["true", "false"], ids=["consumer-in-loop", "faust-consumer-thread"])
async def test_worker_end_to_end(broker, worker_env, prefix, redis_url, tmp_path, consumer_in_loop):
    t = time.time() - 3600
    catalog = [("items", None, {"item_id": f"i{j}", "title": f"Product {j}", "ts": t}) for j in range(30)]
    before, after = [], []
    n = 0
    for u in range(12):
        for s in range(4):
            n += 1
            before.append(("clicks", f"u{u}".encode(), click(n, f"u{u}", f"i{(u + s * 3) % 30}", t + n)))
    purchases = [("carts", f"u{u}".encode(), {"event_id": f"p{u}", "user_id": f"u{u}", "item_id": f"i{u % 30}",
                                               "action": "purchase", "ts": t + 500 + u}) for u in range(12)]
    for u in range(12, 20):  # users whose events all come after the garbage
        n += 1
        after.append(("clicks", f"u{u}".encode(), click(n, f"u{u}", f"i{u % 30}", t + 1000 + n)))
    for u in range(12):  # and more events from the first users, after their purchase
        n += 1
        after.append(("clicks", f"u{u}".encode(), click(n, f"u{u}", f"i{(u + 1) % 30}", t + 2000 + n)))
    bad = [(topic, b"u1", raw) for topic, raw, _ in MALFORMED]
    valid = catalog + before + purchases + after
    first = [(prefix + topic, key, value) for topic, key, value in catalog + before]
    paying = [(prefix + topic, key, value) for topic, key, value in purchases]
    then = [(prefix + topic, key, value) for topic, key, value in bad + after]
    triggers = len(before) + len(purchases) + len(after)

    # a store upgraded from a release that snapshotted the ranker as a pickle: never loaded
    store = open_store(redis_url)
    await store.write([("set", Keys(prefix).snapshot("ranker"), pickle.dumps({"updates": 9}), None)])
    await store.close()
    worker = start_worker({**worker_env, "STREAMREC_KAFKA_CONSUMER_IN_LOOP": consumer_in_loop}, tmp_path / "worker.log")
    try:
        async with Collector(broker, prefix + "recommendations", prefix + "dead-letter") as col:
            # Kafka orders a user's events within a topic, not across `carts` and `clicks`:
            # each step goes out once the one before has been answered, as a shopper's would
            # (a purchase read before the click that led to it would have nothing to show)
            await produce(broker, first)
            browsed = {v["event_id"] for _, _, v in before}
            assert await col.wait_for(lambda c: browsed <= {v["trigger_event_id"] for v in c.values(
                prefix + "recommendations")}, 90)
            await produce(broker, paying)
            paid = {f"p{u}" for u in range(12)}
            assert await col.wait_for(lambda c: paid <= {v["trigger_event_id"] for v in c.values(
                prefix + "recommendations")}, 90)
            await produce(broker, then)
            assert await col.wait_for(lambda c: len(c.messages[prefix + "recommendations"]) >= triggers
                                      and len(c.messages[prefix + "dead-letter"]) >= len(MALFORMED), 90), \
                (len(col.messages[prefix + "recommendations"]), len(col.messages[prefix + "dead-letter"]))
            recs = col.values(prefix + "recommendations")
            dead = col.values(prefix + "dead-letter")

            # every valid trigger got exactly one list, every user is served
            assert sorted(r["trigger_event_id"] for r in recs) == sorted(
                v["event_id"] for topic, _, v in valid if topic in ("clicks", "carts"))
            assert {r["user_id"] for r in recs} == {f"u{u}" for u in range(20)}
            # cold start is filled by popularity: only the very first click of the shop has nothing to show
            assert sum(not r["items"] for r in recs) <= 1
            for r in recs:
                assert set(r) >= {"rec_id", "user_id", "trigger_event_id", "ts", "items", "model_version", "latency_ms"}
                for item in r["items"]:
                    assert item["sources"] and item["reason"] and isinstance(item["score"], float)
            # nothing a user bought is recommended to them afterwards
            bought = {f"u{u}": f"i{u % 30}" for u in range(12)}
            after_ids = {v["event_id"] for _, _, v in after}
            for r in recs:
                if r["trigger_event_id"] in after_ids and r["user_id"] in bought:
                    assert bought[r["user_id"]] not in [i["item_id"] for i in r["items"]]
            # each malformed input is on dead-letter with its reason, topic, partition, offset
            assert len(dead) == len(MALFORMED)
            unmatched = list(dead)
            for topic, raw, words in MALFORMED:
                match = next((d for d in unmatched if d["topic"] == prefix + topic and words in d["error"]
                              and d["value_bytes"] == len(raw)), None)
                assert match is not None, (topic, words, [(d["error"], d["value_bytes"]) for d in unmatched])
                unmatched.remove(match)
                assert isinstance(match["partition"], int) and isinstance(match["offset"], int)

            # redelivery: the same events again change no counter
            store = open_store(redis_url)
            once = _counters(await dump_store(store, prefix, redis_url))
            await produce(broker, [(prefix + t, k, v) for t, k, v in valid])
            assert await col.wait_for(lambda c: len(c.messages[prefix + "recommendations"]) >= 2 * triggers, 90)
            twice = _counters(await dump_store(store, prefix, redis_url))
            await store.close()
            assert once == twice and len(once) > 50
    finally:
        worker.stop()
    log = (tmp_path / "worker.log").read_bytes()
    assert b"Traceback" not in log
    assert b"could not load the ranker snapshot: not a ranker snapshot" in log


def _counters(d):
    skip = (":rec", ":last-rec", ":rec-enriched", "rec:", "snapshot:", "copy:")
    return {k: v for k, v in d.items() if not any(s in k for s in skip)}
