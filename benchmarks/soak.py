"""Soak: one worker at a steady rate for a long time; RSS and latency per minute.

    python -m benchmarks.soak --minutes 10 --rate 300 --report soak.json

Starts an embedded broker and Redis, one worker (template copy in the worker, so the
copy pool runs too), then produces simulated shoppers at ``--rate`` events/s. Every
minute it prints the worker's RSS and the produce-to-recommendation latency
percentiles of that minute. Memory is flat when the last minutes' RSS stays within a
few MB of the first minutes'.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.embedded import exit_on_sigterm, start_broker, start_redis, start_worker
from streams.simulate import catalog, simulate_shoppers


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * (len(xs) - 1)))] if xs else float("nan")


async def soak(bootstrap: str, prefix: str, pid: int, minutes: float, rate: float) -> list[dict]:
    consumer = AIOKafkaConsumer(prefix + "recommendations", bootstrap_servers=bootstrap,
                                group_id=f"soak-{uuid.uuid4().hex[:6]}", auto_offset_reset="latest",
                                fetch_max_wait_ms=5)
    await consumer.start()
    while not consumer.assignment():
        await asyncio.sleep(0.1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    for e in catalog(5000):
        await producer.send(prefix + "items", orjson.dumps(e["value"]))
    sent: dict[str, float] = {}
    window: list[float] = []
    rows: list[dict] = []

    async def read() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for msgs in batch.values():
                for m in msgs:
                    t = sent.pop(orjson.loads(m.value)["trigger_event_id"], None)
                    if t is not None:
                        window.append((now - t) * 1000)

    reader = asyncio.create_task(read())
    stream = simulate_shoppers(int(minutes * 60 * rate) + 1, n_users=20_000, n_items=5000, seed=5)
    t0 = time.perf_counter()
    minute_end = t0 + 60
    n = 0
    for e in stream:
        due = t0 + n / rate
        if due > time.perf_counter():
            await asyncio.sleep(due - time.perf_counter())
        v = e["value"]
        sent[v["event_id"]] = time.perf_counter()
        await producer.send(prefix + e["topic"], orjson.dumps(v), key=v["user_id"].encode())
        n += 1
        if time.perf_counter() >= minute_end:
            rows.append({"minute": len(rows) + 1, "events": n, "rss_mb": round(rss_mb(pid), 1),
                         "p50_ms": round(pct(window, 50), 1), "p99_ms": round(pct(window, 99), 1),
                         "outputs": len(window), "unanswered": len(sent)})
            print(json.dumps(rows[-1]), flush=True)
            window.clear()
            minute_end += 60
    await producer.flush()
    await asyncio.sleep(5)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await producer.stop()
    await consumer.stop()
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--rate", type=float, default=300)
    p.add_argument("--report")
    a = p.parse_args()
    exit_on_sigterm()
    logdir = Path(tempfile.mkdtemp(prefix="streamrec-soak-"))
    broker, redis = start_broker(log_dir=logdir), start_redis(log_dir=logdir)
    prefix = "soak-"
    env = {"STREAMREC_KAFKA_URL": f"kafka://127.0.0.1:{broker.port}",
           "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0", "STREAMREC_TOPIC_PREFIX": prefix,
           "STREAMREC_WEB_PORT": "0", "STREAMREC_LLM_BASE_URL": "template", "STREAMREC_PARTITIONS": "4"}
    worker = start_worker(env, logdir / "worker.log")
    try:
        start_rss = rss_mb(worker.proc.pid)
        rows = asyncio.run(soak(f"127.0.0.1:{broker.port}", prefix, worker.proc.pid, a.minutes, a.rate))
        out = {"minutes": a.minutes, "rate": a.rate, "rss_mb_start": round(start_rss, 1),
               "rss_mb_end": round(rss_mb(worker.proc.pid), 1), "per_minute": rows}
        print(json.dumps({k: v for k, v in out.items() if k != "per_minute"}))
        if a.report:
            Path(a.report).write_text(json.dumps(out, indent=2))
    finally:
        worker.stop()
        redis.stop()
        broker.stop()


if __name__ == "__main__":
    main()
