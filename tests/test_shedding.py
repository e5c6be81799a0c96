"""Load shedding end to end: a real `streamrec worker` with STREAMREC_SHED_AFTER_MS on a
real broker and Redis. Records whose Kafka timestamps are older than the threshold get
lists without the shed sources, which say so; fresh ones get full lists."""

from __future__ import annotations

import time

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.embedded import free_port, start_worker
from streams.settings import Settings
from tests.support.kafka import Collector, produce

pytestmark = [pytest.mark.services, pytest.mark.slow]

SHED = ("session_knn", "content", "new_items")


async def produce_stamped(bootstrap: str, messages: list[tuple[str, dict]], timestamp_ms: int) -> None:
    """Send (topic, value) pairs keyed by user with the given Kafka record timestamp."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await p.start()
    try:
        for topic, value in messages:
            await p.send(topic, orjson.dumps(value), key=value["user_id"].encode(), timestamp_ms=timestamp_ms)
        await p.flush()
    finally:
        await p.stop()


def clicks(prefix: str, first: int, users: range, t: float) -> list[tuple[str, dict]]:
    return [(prefix + "clicks", {"event_id": f"c{first + n}", "user_id": f"u{u}", "item_id": f"i{(u + n) % 20}",
                                 "ts": t + n}) for n, u in enumerate(users)]


async def test_late_records_get_lists_without_the_shed_sources(broker, worker_env, prefix, tmp_path):
    t = time.time() - 600
    catalog = [(prefix + "items", None, {"item_id": f"i{j}", "title": f"Product {j}", "ts": t}) for j in range(20)]
    history = [(topic, value["user_id"].encode(), value) for topic, value in clicks(prefix, 0, range(40), t)]
    port = free_port()
    env = {**worker_env, "STREAMREC_SHED_AFTER_MS": "10000", "STREAMREC_WEB_PORT": str(port)}
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        async with Collector(broker, prefix + "recommendations") as col:
            def answered(ids: set[str]):
                return lambda c: ids <= {v["trigger_event_id"] for v in c.values(prefix + "recommendations")}

            await produce(broker, catalog + history)  # written now: on time
            assert await col.wait_for(answered({v["event_id"] for _, _, v in history}), 90)
            late = clicks(prefix, 100, range(20), t + 100)  # written ten minutes ago, by their Kafka timestamps
            await produce_stamped(broker, late, int((time.time() - 600) * 1000))
            assert await col.wait_for(answered({v["event_id"] for _, v in late}), 60)
            fresh = clicks(prefix, 200, range(20, 40), t + 200)
            await produce_stamped(broker, fresh, int(time.time() * 1000))
            assert await col.wait_for(answered({v["event_id"] for _, v in fresh}), 60)
            recs = {v["trigger_event_id"]: v for v in col.values(prefix + "recommendations")}
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
            metrics = dict(line.rsplit(" ", 1) for line in (await r.text()).splitlines() if not line.startswith("#"))
    finally:
        worker.stop()
    for _, event in late:
        rec = recs[event["event_id"]]
        skipped = rec.get("skipped_sources")
        assert skipped and "session_knn" in skipped and set(skipped) <= set(SHED), rec
        assert rec["items"] and not any(set(i["sources"]) & set(SHED) for i in rec["items"]), rec
    for _, event in fresh:  # sent after the late ones were answered: seconds at most behind
        assert "skipped_sources" not in recs[event["event_id"]]
    # operators see it: batches shed, and how far behind the batches started (10 s and more)
    assert float(metrics["streamrec_shed_batches_total"]) >= 1
    ages = "streamrec_batch_record_age_seconds"
    behind = float(metrics[f'{ages}_count']) - float(metrics[f'{ages}_bucket{{le="10.0"}}'])
    assert behind >= 1 and float(metrics[f'{ages}_count']) > behind  # late batches, and on-time ones
    log = (tmp_path / "worker.log").read_text()
    assert "Traceback" not in log


def test_shed_sources_must_be_known_names():
    assert Settings(shed_sources=" session_knn , covis ", _env_file=None).shed_sources == "session_knn,covis"
    with pytest.raises(ValueError, match="unknown source.*knn"):
        Settings(shed_sources="session_knn,knn", _env_file=None)
