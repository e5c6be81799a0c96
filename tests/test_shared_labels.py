"""Every worker's ranker learns every worker's labels (``ranker-labels``): in process, and
through two real workers in one consumer group, each owning some shoppers."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from models.events import Click, Feedback
from models.features.keys import Keys
from models.features.memory import MemoryStore
from models.ranking import labels_json
from streams.app import Runtime
from streams.embedded import Service, create_topics, free_port, start_worker
from streams.settings import Settings
from tests.support.faults import FailsEachBatchOnce, handle_redoing_failures
from tests.support.kafka import Collector, produce
from tests.test_pipeline import T0, feed, recommender, shop_stream
from tests.test_scale_out import health, until


def with_feedback(events, recs, every=2):
    """``events`` and, after them, a click on the third item of every ``every``-th list."""
    shown = [r for r in recs if len(r.items) >= 3][::every]
    return [Feedback(f"fb{n}", r.user_id, r.rec_id, "click", T0 + 10**6 + n, r.items[2].item_id)
            for n, r in enumerate(shown)]


async def test_a_ranker_fed_the_labels_another_learned_becomes_the_same_ranker(prefix):
    here = recommender(MemoryStore(), Keys(prefix))
    here.share_labels()
    events = shop_stream(n=800)
    recs = await feed(here, events, 40)
    await feed(here, with_feedback(events, recs), 40)
    labels, trials = here.take_labels()
    assert len(labels) == here.ranker.updates > 100 and here.take_labels() == ([], [])
    assert list(here.ranker.trials) == trials and len(trials) > 20  # each click on an interleaved list
    assert set().union(*(f for f, _ in labels)) <= here.ranker.feature_names
    there = recommender(MemoryStore(), Keys(prefix))
    assert there.learn_labels(labels, trials) == 0
    assert there.ranker.snapshot() == here.ranker.snapshot()  # the trial's lists and verdict too
    assert there.take_labels() == ([], [])  # learned from a peer: not shared again


async def test_a_batch_done_again_shares_its_labels_once(prefix):
    events = shop_stream(n=1500)
    clean = recommender(MemoryStore(), Keys(prefix))
    clean.share_labels()
    await feed(clean, events, 50)
    flaky = recommender(FailsEachBatchOnce(MemoryStore(), Keys(prefix)), Keys(prefix))
    flaky.share_labels()
    assert await handle_redoing_failures(flaky, events, 50) > 20
    (shared, judged), (clean_shared, clean_judged) = flaky.take_labels(), clean.take_labels()
    assert len(shared) == flaky.ranker.updates == clean.ranker.updates == len(clean_shared) > 100
    assert judged == clean_judged == list(flaky.ranker.trials) and judged  # each trial click counted once


def test_a_worker_skips_its_own_labels_and_refuses_what_is_not_labels():
    rt = Runtime(Settings(redis_url="memory://", content=False))
    own = labels_json(rt.label_origin, [({"covis": 1.0}, True)])
    assert rt.learn_peer_labels(own) == 0 and rt.recommender.ranker.updates == 0
    assert rt.learn_peer_labels(labels_json("other", [({"covis": 1.0}, True), ({"covis": 0.2}, False)])) == 2
    assert rt.recommender.ranker.updates == 2
    for bad in (b"{", orjson.dumps({"from": "x"}), orjson.dumps({"from": "x", "labels": [[{"covis": "1"}, True]]}),
                orjson.dumps({"from": "x", "labels": [[{"covis": 1.0}, 1]]}),
                orjson.dumps({"from": "x", "labels": [[{"covis": 1.0}, True], [{}, "yes"]]})):
        with pytest.raises(ValueError):
            rt.learn_peer_labels(bad)
    assert rt.recommender.ranker.updates == 2  # nothing of a bad message was learned
    # names the ranker does not have are left out: nothing sent can grow the model without bound
    junk = {f"junk{i}": 1.0 for i in range(1000)}
    assert rt.learn_peer_labels(labels_json("other", [({**junk, "covis": 0.5}, True)])) == 1
    weights = rt.recommender.ranker.model.steps["LogisticRegression"]._weights.to_dict()
    assert set(weights) <= rt.recommender.ranker.feature_names


async def _samples(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        out = {}
        for line in (await r.text()).splitlines():
            if line.startswith("streamrec_ranker"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out


async def _items_taken(http: aiohttp.ClientSession, ports: list[int]) -> float:
    """Catalog items the workers on ``ports`` have taken into a batch (accepted, not dead-lettered)."""
    total = 0.0
    for port in ports:
        try:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
        except aiohttp.ClientError:
            continue
        for line in text.splitlines():
            if line.startswith("streamrec_events_total{") and 'topic="items"' in line and 'outcome="accepted"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.services
@pytest.mark.slow
async def test_two_workers_rankers_both_learn_every_label(broker, worker_env, prefix, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    await create_topics(broker, prefix, 4)
    ports = [free_port(), free_port()]
    envs = [{**worker_env, "STREAMREC_CONTENT": "false", "STREAMREC_COPY_IN_WORKER": "false",
             "STREAMREC_WEB_PORT": str(port)} for port in ports]
    workers: list[Service] = []
    t = time.time() - 3600
    users = [f"u{n}" for n in range(24)]
    try:
        workers += await asyncio.gather(*(asyncio.to_thread(start_worker, env, tmp_path / f"w{i}.log")
                                          for i, env in enumerate(envs)))
        async with aiohttp.ClientSession() as http, Collector(broker, prefix + "recommendations") as col:
            async def both_assigned() -> bool:
                got = [await health(http, p) for p in ports]
                return all(g.get("assigned_partitions", 0) > 0 for g in got)

            assert await until(both_assigned, 120)
            items = [(prefix + "items", None, {"item_id": f"i{j}", "title": f"Product {j}", "ts": t})
                     for j in range(40)]
            clicks = [(prefix + "clicks", u.encode(), {"event_id": f"{u}-{k}", "user_id": u,
                                                       "item_id": f"i{(n * 3 + k) % 40}", "ts": t + 10 + k * 50 + n})
                      for k in range(4) for n, u in enumerate(users)]
            await produce(broker, items)
            # the clicks come after the catalog: their lists need three items to click on

            async def catalog_taken() -> bool:
                return await _items_taken(http, ports) >= len(items)

            assert await until(catalog_taken, 60)
            await produce(broker, clicks)
            assert await col.wait_for(lambda c: len(c.values(prefix + "recommendations")) >= len(clicks), 90)
            latest = {r["user_id"]: r for r in col.values(prefix + "recommendations")}
            feedback, expected = [], 0
            for n, u in enumerate(users):
                rec = latest[u]
                pos = n % 3  # the first, second or third item clicked: pos negatives above it, one positive
                feedback.append((prefix + "feedback", u.encode(),
                                 {"event_id": f"fb-{u}", "user_id": u, "rec_id": rec["rec_id"], "action": "click",
                                  "item_id": rec["items"][pos]["item_id"], "ts": t + 1000 + n}))
                expected += pos + 1
            await produce(broker, feedback)

            async def learned_everything() -> bool:
                got = [await _samples(http, p) for p in ports]
                return all(g.get("streamrec_ranker_updates") == expected for g in got)

            settled = await until(learned_everything, 60)
            got = [await _samples(http, p) for p in ports]
        assert settled, (expected, got)
        here = [g['streamrec_ranker_labels_total{origin="here"}'] for g in got]
        peers = [g['streamrec_ranker_labels_total{origin="peers"}'] for g in got]
        # each worker learned its own shoppers' labels and the other's, each once
        assert all(h > 0 for h in here) and sum(here) == expected and peers == here[::-1]
    finally:
        for w in workers:
            w.stop()
    for i in range(2):
        assert b"Traceback" not in (tmp_path / f"w{i}.log").read_bytes()


@pytest.mark.services
@pytest.mark.slow
async def test_a_restarted_worker_learns_the_labels_sent_while_it_was_down_once(broker, worker_env, redis_url,
                                                                                 prefix, tmp_path, monkeypatch):
    """A snapshots its ranker (with where it stood in ``ranker-labels``) and is killed;
    B, started from that snapshot, learns more labels; A', started from the same
    snapshot after them, reads B's labels from where the snapshot stood. Both end with
    every label once (from the newest offsets, A' would have missed B's)."""
    import redis.asyncio as aioredis

    monkeypatch.chdir(tmp_path)
    await create_topics(broker, prefix, 4)
    ports = [free_port() for _ in range(3)]

    def env(n: int, snapshot_every_s: str) -> dict:
        return {**worker_env, "STREAMREC_CONTENT": "false", "STREAMREC_COPY_IN_WORKER": "false",
                "STREAMREC_WEB_PORT": str(ports[n]), "STREAMREC_SNAPSHOT_EVERY_S": snapshot_every_s}

    t = time.time() - 3600
    users = [f"u{n}" for n in range(12)]
    running: list[Service] = []

    async def updates(http, port) -> float | None:
        try:
            return (await _samples(http, port)).get("streamrec_ranker_updates")
        except aiohttp.ClientError:
            return None

    async def a_round(col, k: int) -> int:
        """Clicks of every user, then a feedback click on an item of each new list; the labels it makes."""
        before = len(col.values(prefix + "recommendations"))
        await produce(broker, [(prefix + "clicks", u.encode(), {"event_id": f"{u}-r{k}", "user_id": u,
                                                                "item_id": f"i{(n * 5 + k) % 40}", "ts": t + k * 100 + n})
                               for n, u in enumerate(users)])
        assert await col.wait_for(lambda c: len(c.values(prefix + "recommendations")) >= before + len(users), 90)
        latest = {r["user_id"]: r for r in col.values(prefix + "recommendations")[before:]}
        made = 0
        feedback = []
        for n, u in enumerate(users):
            pos = (n + k) % 3
            feedback.append((prefix + "feedback", u.encode(),
                             {"event_id": f"fb-{u}-r{k}", "user_id": u, "rec_id": latest[u]["rec_id"],
                              "action": "click", "item_id": latest[u]["items"][pos]["item_id"],
                              "ts": t + k * 100 + 50 + n}))
            made += pos + 1
        await produce(broker, feedback)
        return made

    try:
        async with aiohttp.ClientSession() as http, Collector(broker, prefix + "recommendations") as col:
            running.append(await asyncio.to_thread(start_worker, env(0, "1"), tmp_path / "a.log"))
            await produce(broker, [(prefix + "items", None, {"item_id": f"i{j}", "title": f"Product {j}", "ts": t})
                                   for j in range(40)])

            async def catalog_taken() -> bool:  # before the clicks: their lists need three items
                return await _items_taken(http, ports[:1]) >= 40

            assert await until(catalog_taken, 60)
            first = await a_round(col, 1)
            store = aioredis.Redis.from_url(redis_url)
            try:
                async def snapshotted() -> bool:
                    blob = await store.get(Keys(prefix).snapshot("ranker"))
                    return blob is not None and orjson.loads(blob)["updates"] == first
                assert await until(snapshotted, 60)
            finally:
                await store.aclose()
            running.pop().proc.kill()  # no goodbye: the snapshot is all it leaves

            running.append(await asyncio.to_thread(start_worker, env(1, "3600"), tmp_path / "b.log"))
            second = await a_round(col, 2)

            async def b_learned() -> bool:
                return await updates(http, ports[1]) == first + second
            assert await until(b_learned, 60), await updates(http, ports[1])

            running.append(await asyncio.to_thread(start_worker, env(2, "3600"), tmp_path / "a2.log"))

            async def a2_caught_up() -> bool:
                return await updates(http, ports[2]) == first + second
            caught_up = await until(a2_caught_up, 60)
            got = [await _samples(http, p) for p in ports[1:]]
        assert caught_up, got
        b, a2 = got
        assert b["streamrec_ranker_updates"] == a2["streamrec_ranker_updates"] == first + second
        # A' learned B's labels from the topic; B learned its own, and none of A's again
        assert a2['streamrec_ranker_labels_total{origin="peers"}'] == second
        assert b.get('streamrec_ranker_labels_total{origin="peers"}', 0) == 0
    finally:
        for w in running:
            w.stop()
