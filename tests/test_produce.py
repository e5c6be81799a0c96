"""``streamrec produce`` against the embedded broker: topic routing, keys, per-key
order, values, limit and pace (lower bounds only: a slow machine never fails them)."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time

import orjson
import pytest

from models.events import Item, parse_value, to_dict
from streams.produce import Pacer, run_produce
from streams.readers import csv_time, open_recording
from streams.settings import Settings
from tests.support.kafka import Collector

pytestmark = [pytest.mark.services]

INPUTS = ("clicks", "carts", "items", "reviews", "feedback", "forget")
T0 = 1_700_000_000.0


def recording(path, n_users: int = 8, per_user: int = 12, span_s: float = 60.0, seed: int = 3):
    """A jsonl recording of every input type, written shuffled (the reader sorts it)."""
    rnd = random.Random(seed)
    lines = [{"topic": "items", "value": {"item_id": f"i{j}", "title": f"Product {j}", "ts": T0 + j * 0.001}}
             for j in range(10)]
    step = span_s / (n_users * per_user)
    n = 0
    for k in range(per_user):
        for u in range(n_users):
            n += 1
            ts, user, item = T0 + 1 + n * step, f"u{u}", f"i{(u + k) % 10}"
            kind = k % 6
            if kind in (0, 1, 2):
                lines.append({"topic": "clicks", "value": {"event_id": f"c{n}", "user_id": user, "item_id": item, "ts": ts}})
            elif kind == 3:
                lines.append({"topic": "carts", "value": {"event_id": f"a{n}", "user_id": user, "item_id": item,
                                                          "action": "add", "quantity": 2, "ts": ts}})
            elif kind == 4:
                lines.append({"topic": "reviews", "value": {"event_id": f"r{n}", "user_id": user, "item_id": item,
                                                            "text": "nice", "rating": 4.0, "ts": ts}})
            else:
                lines.append({"topic": "feedback", "value": {"event_id": f"f{n}", "user_id": user, "rec_id": f"rec{n}",
                                                             "action": "impression", "ts": ts}})
    lines.append({"topic": "forget", "value": {"event_id": "g1", "user_id": "u0", "ts": T0 + span_s + 2}})
    rnd.shuffle(lines)
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines) + b"not json\n")
    return path


def settings_for(broker: str, prefix: str) -> Settings:
    return Settings(kafka_url=f"kafka://{broker}", topic_prefix=prefix, _env_file=None)


async def collect(broker: str, prefix: str, expected: int, produce) -> Collector:
    async with Collector(broker, *(prefix + t for t in INPUTS)) as col:
        sent = await produce()
        assert sent == expected
        assert await col.wait_for(lambda c: sum(map(len, c.messages.values())) >= expected, 60)
        await asyncio.sleep(0.5)  # nothing more than expected arrives
    assert sum(map(len, col.messages.values())) == expected
    return col


async def test_routes_keys_and_order(broker, prefix, tmp_path):
    path = recording(tmp_path / "rec.jsonl")
    events = list(open_recording(path, "jsonl"))
    col = await collect(broker, prefix, len(events),
                        lambda: asyncio.to_thread(run_produce, settings_for(broker, prefix), path, "jsonl",
                                                  progress=False))
    for topic in INPUTS:
        want = [e for e in events if type(e).__name__.lower() in (topic, topic.rstrip("s"))]
        got = col.messages[prefix + topic]
        assert len(got) == len(want) > 0, topic
        # every value is the wire JSON of its event, keyed by user (items: by item)
        assert sorted(orjson.loads(m.value)["ts"] for m in got) == sorted(e.ts for e in want)
        for m in got:
            value = orjson.loads(m.value)
            assert m.key.decode() == (value["item_id"] if topic == "items" else value["user_id"])
    by_id = {orjson.dumps(to_dict(e)): e for e in events}
    assert all(m.value in by_id for ms in col.messages.values() for m in ms)
    # per key (one partition), messages arrive in event-time order
    for topic in INPUTS:
        per_key: dict[tuple, list[float]] = {}
        for m in col.messages[prefix + topic]:
            per_key.setdefault((m.key, m.partition), []).append(orjson.loads(m.value)["ts"])
        assert len({k for k, _ in per_key}) == len(per_key), "one key landed on two partitions"
        for key, stamps in per_key.items():
            assert stamps == sorted(stamps), (topic, key)


@pytest.mark.slow
async def test_speedup_and_rate_pace(broker, prefix, tmp_path):
    # 96 events over 20 s of event time, 10x faster: at least ~2 s of wall time
    path = recording(tmp_path / "rec.jsonl", span_s=20.0)
    n = len(list(open_recording(path, "jsonl")))
    settings = settings_for(broker, prefix)
    t = time.perf_counter()
    assert await asyncio.to_thread(run_produce, settings, path, "jsonl", speedup=10.0, progress=False) == n
    span = max(e.ts for e in open_recording(path, "jsonl")) - min(e.ts for e in open_recording(path, "jsonl"))
    assert time.perf_counter() - t >= 0.9 * span / 10.0
    # 40 shopper events at 25/s: at least 39/25 s; the 10 catalog events first, on top
    # of the limit and not paced
    t = time.perf_counter()
    assert await asyncio.to_thread(run_produce, settings, path, "jsonl", rate=25.0, limit=40, progress=False) == 50
    assert time.perf_counter() - t >= 0.9 * 39 / 25.0
    # as fast as possible: far faster than the paced runs (a loose sanity bound)
    t = time.perf_counter()
    assert await asyncio.to_thread(run_produce, settings, path, "jsonl", limit=40, progress=False) == 50
    assert time.perf_counter() - t < 30


def test_pacer_rejects_bad_pace():
    for kwargs in ({"speedup": 0}, {"rate": -1}, {"speedup": 2, "rate": 3}):
        with pytest.raises(ValueError):
            Pacer(**kwargs)


@pytest.mark.slow
async def test_cli_taobao_limit(broker, prefix, tmp_path):
    """``streamrec produce`` from the command line, on another format, with --limit."""
    csv = tmp_path / "UserBehavior.csv"
    rows = [f"{u},{100 + (u * 7 + k) % 13},5,{'pv' if k % 4 else ('cart' if k % 8 else 'buy')},{int(T0) + 50 * u + k}"
            for u in range(6) for k in range(10)]
    csv.write_text("\n".join(reversed(rows)) + "\n")
    env = {**os.environ, "STREAMREC_KAFKA_URL": f"kafka://{broker}", "STREAMREC_TOPIC_PREFIX": prefix}

    async def run():
        proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "streams.cli", "produce", str(csv),
                                                        "--format", "taobao", "--rate", "500", "--limit", "50"],
                                       env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "produced 50 events" in proc.stdout
        return 50

    col = await collect(broker, prefix, 50, run)
    clicks = [orjson.loads(m.value) for m in col.messages[prefix + "clicks"]]
    carts = [orjson.loads(m.value) for m in col.messages[prefix + "carts"]]
    assert clicks and carts and {c["action"] for c in carts} <= {"add", "purchase"}
    # the first 50 rows by time, not by file order
    first = sorted(rows, key=lambda r: int(r.rsplit(",", 1)[1]))[:50]
    assert sorted(v["ts"] for v in clicks + carts) == sorted(float(r.rsplit(",", 1)[1]) for r in first)


async def test_cli_csv_export_with_its_layout(broker, prefix, tmp_path):
    """``streamrec produce --format csv`` with ``--columns`` and ``--actions``: a shop's
    export without a header, in its own action words, into the right topics by time."""
    export = tmp_path / "export.tsv"
    rows = [f"{int(T0 * 1000) + 1000 * n}\tu{n % 3}\ti{n % 5}\t{'seen' if n % 4 else 'bought'}" for n in range(12)]
    export.write_text("\n".join(reversed(rows)) + "\nnot\ta\trow\n")
    env = {**os.environ, "STREAMREC_KAFKA_URL": f"kafka://{broker}", "STREAMREC_TOPIC_PREFIX": prefix}

    async def run():
        proc = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "streams.cli", "produce", str(export), "--format", "csv", "--rate", "500",
            "--columns", "time=0,user=1,item=2,action=3", "--actions", "seen=click,bought=purchase"],
            env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "produced 12 events" in proc.stdout and "1 malformed rows skipped" in proc.stderr
        assert "read as export.tsv: user=1, item=2, time=0, action=3; delimiter '\\t'" in proc.stderr
        return 12

    col = await collect(broker, prefix, 12, run)
    clicks = [orjson.loads(m.value) for m in col.messages[prefix + "clicks"]]
    carts = [orjson.loads(m.value) for m in col.messages[prefix + "carts"]]
    assert len(clicks) == 9 and len(carts) == 3 and {c["action"] for c in carts} == {"purchase"}
    assert sorted(v["ts"] for v in clicks + carts) == [T0 + n for n in range(12)]


async def test_cli_catalog_file_goes_to_items_first(broker, prefix, tmp_path):
    """``--catalog``: a product file kept apart from the events is sent to ``items``
    ahead of the stream, stamped with its first event's time; ``--limit`` counts shopper
    events only."""
    events = tmp_path / "transactions_train.csv"
    events.write_text("t_dat,customer_id,article_id\n" + "".join(
        f"2018-09-{20 + n // 3},c{n % 4},0{n % 5}00000001\n" for n in range(9)))
    articles = tmp_path / "articles.csv"
    articles.write_text("article_id,prod_name,product_type_name\n" + "".join(
        f"0{j}00000001,Article {j},Type {j % 2}\n" for j in range(5)) + "0900000001,,Untitled\n")
    env = {**os.environ, "STREAMREC_KAFKA_URL": f"kafka://{broker}", "STREAMREC_TOPIC_PREFIX": prefix}

    async def run():
        proc = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "streams.cli", "produce", str(events), "--format", "csv", "--actions", "*=purchase",
            "--rate", "500", "--limit", "6", "--catalog", str(articles)], env=env, capture_output=True, text=True,
            timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "produced 11 events" in proc.stdout
        assert ("catalog articles.csv: item=article_id, title=prod_name, category=product_type_name; "
                "5 items (1 without a title left out)") in proc.stderr
        return 11

    col = await collect(broker, prefix, 5 + 6, run)
    items = [orjson.loads(m.value) for m in col.messages[prefix + "items"]]
    carts = [orjson.loads(m.value) for m in col.messages[prefix + "carts"]]
    start = csv_time("2018-09-20")
    assert sorted((i["item_id"], i["title"], i["category"], i["ts"]) for i in items) == [
        (f"0{j}00000001", f"Article {j}", f"Type {j % 2}", start) for j in range(5)]
    assert len(carts) == 6 and {c["item_id"] for c in carts} <= {i["item_id"] for i in items}
    # the catalog went out before the first purchase
    assert max(m.timestamp for m in col.messages[prefix + "items"]) <= min(m.timestamp for m in col.messages[prefix + "carts"])


async def test_cli_catalog_publishes_a_product_export_to_items_stamped_now(broker, prefix, tmp_path):
    """``streamrec catalog FILE``: a shop's product export (here semicolon-separated,
    cp1252, as a spreadsheet on Windows saves it) onto ``items``, keyed by item, each
    value what the topic accepts; rows it cannot use are logged with their reasons."""
    products = tmp_path / "products.csv"
    products.write_bytes(("SKU;Name;Description;Category;Price;In stock?\n"
                          "S1;Café mug;<p>Stoneware, 300 ml</p>;Kitchen;8.50;yes\n"
                          "S2;Tea pot;;Kitchen;24;no\n"
                          "S3;Lamp;;Home;cheap;yes\n"
                          "S4;;Untitled;Home;3;yes\n").encode("cp1252"))
    env = {**os.environ, "STREAMREC_KAFKA_URL": f"kafka://{broker}", "STREAMREC_TOPIC_PREFIX": prefix}
    before = time.time()

    async def run():
        proc = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "streams.cli", "catalog", str(products), "--encoding", "cp1252",
            "--catalog-columns", "item=SKU"], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "published 2 items" in proc.stdout
        assert ("read as catalog products.csv: item=SKU, title=Name, description=Description, category=Category, "
                "price=Price, available=In stock?; 2 items (1 without a title left out)") in proc.stderr
        assert "1 malformed rows or items left out, e.g. products.csv:4: price: 'cheap' is not a number" in proc.stderr
        return 2

    col = await collect(broker, prefix, 2, run)
    got = {m.key.decode(): orjson.loads(m.value) for m in col.messages[prefix + "items"]}
    assert {k: {f: v.get(f) for f in ("item_id", "title", "description", "category", "price", "available")}
            for k, v in got.items()} == {
        "S1": {"item_id": "S1", "title": "Café mug", "description": "Stoneware, 300 ml", "category": "Kitchen",
               "price": 8.5, "available": True},
        "S2": {"item_id": "S2", "title": "Tea pot", "description": None, "category": "Kitchen", "price": 24.0,
               "available": False}}
    assert all(before <= v["ts"] <= time.time() for v in got.values())
    # a file with nothing to publish is an error, not "published 0 items"
    products.write_text("SKU,Name\nS9,\n")
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "streams.cli", "catalog", str(products)],
                                   env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "products.csv: no item to publish" in proc.stderr


async def test_cli_catalog_replace_retires_what_the_file_no_longer_names(broker, redis_url, prefix, tmp_path):
    """``streamrec catalog FILE --replace``: a shop's full export is the whole catalog.
    An item the workers' store lists as available that the file no longer names goes
    out unavailable, carrying what the store holds of it; ``--check`` only reports; a
    file that would retire most of the catalog is refused unless ``--force``."""
    from models.features import open_store
    from models.features.keys import Keys
    from models.pipeline import Recommender

    store, keys = open_store(redis_url), Keys(prefix)
    shop = Recommender(store, keys)  # the workers' processing path, on their store
    await shop.handle([Item("A", "Mug", T0, "Stoneware", "Kitchen", 8.5), Item("B", "Pot", T0, category="Kitchen"),
                       Item("C", "Old lamp", T0, "Brass, 40 cm", "Home", 30.0)])
    products = tmp_path / "products.csv"
    products.write_text("sku,name,category\nA,Stoneware mug,Kitchen\nB,Tea pot,Kitchen\n")
    env = {**os.environ, "STREAMREC_KAFKA_URL": f"kafka://{broker}", "STREAMREC_TOPIC_PREFIX": prefix,
           "STREAMREC_REDIS_URL": redis_url, "STREAMREC_KEY_PREFIX": prefix}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "streams.cli", "catalog", str(products), *args],
                              env=env, capture_output=True, text=True, timeout=120)

    async def run():
        check = await asyncio.to_thread(cli, "--replace", "--check")
        assert check.returncode == 0, check.stderr[-2000:]
        assert check.stdout.strip() == "would publish 2 items, 1 of the 3 listed available no longer in the file to retire"
        done = await asyncio.to_thread(cli, "--replace")
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "published 2 items, 1 of the 3 listed available no longer in the file retired " \
                                      "(published unavailable)"
        return 3

    col = await collect(broker, prefix, 3, run)  # --check sent nothing
    got = {m.key.decode(): orjson.loads(m.value) for m in col.messages[prefix + "items"]}
    assert {k: (v["title"], v.get("available", True)) for k, v in got.items()} == {
        "A": ("Stoneware mug", True), "B": ("Tea pot", True), "C": ("Old lamp", False)}
    assert (got["C"]["category"], got["C"]["description"], got["C"]["price"]) == ("Home", "Brass, 40 cm", 30.0)
    # the workers apply them: the lamp leaves the catalog
    await shop.handle([parse_value("items", v, now=time.time() + 1) for v in got.values()])
    assert (await store.read([("smembers", keys.catalog_ids())]))[0] == {"A", "B"}
    # a file that names none of the items left would retire them all: refused
    products.write_text("sku,name\nZ,Something else\n")
    check = await asyncio.to_thread(cli, "--replace", "--check")
    assert check.stdout.strip().endswith("; more than half the catalog: refused without --force")
    refused = await asyncio.to_thread(cli, "--replace")
    assert refused.returncode == 2
    assert "--replace would retire 2 of the 2 available items (100%), more than 50%" in refused.stderr
    assert "give --force" in refused.stderr
    await store.close()
