"""Soak: one worker at a steady rate for a long time; RSS and latency per minute.

    python -m benchmarks.soak --minutes 10 --rate 50 --report soak.json

Starts an embedded broker and Redis, one worker (template copy in the worker, so the
copy pool runs too), then produces simulated shoppers at ``--rate`` events/s. Every
minute it prints the worker's RSS, the produce-to-recommendation latency percentiles
of that minute, the events still unanswered (backlog), the CPU share of the broker
and of the worker over that minute, and the machine's 1-minute load average (other
jobs share the cores). Memory is flat when the last minutes' RSS stays within a few MB
of the first minutes'; latency is stable when the last minutes' percentiles match the
first minutes' and the backlog does not grow.

``worker_p50_ms``/``worker_p99_ms`` are the lists' own ``latency_ms`` (from the start of
their batch in the worker to the list): the worker's share of the end-to-end latency.

``--worker passthrough`` runs the control: the bare Faust pass-through agent of
``streamrec bench`` (same consumer, batching and partitions, no Redis, no recommender)
under the same load on the same kind of broker. What drifts in both runs over the
minutes is the broker's and the clients'; what drifts only with streamrec is the
worker's.

The embedded Tansu broker (memory storage) bounds long runs, measured with plain
aiokafka clients and a request-counting proxy:

- it keeps every produced batch forever, and a fetch that finds new data in a
  partition costs about 1.8 us of broker CPU per batch stored in that partition
  (16 partitions holding 40,000 batches, 50 events/s: 31% of a core against 12% when
  empty). Batches in other partitions or topics, subscribed or not, and produce
  requests cost nothing extra;
- at 50 events/s every event and every recommendation is a batch of its own, so the
  cost per event grows linearly with the run; request rates stay flat (worker ~53
  fetches and ~97 produces a second, reader ~60 fetches a second, nothing else);
- a fetch that finds no data is held for the whole fetch wait (a new record does not
  wake it: 3.6 ms to deliver at a 20 ms wait, 216 ms at 500 ms), so a longer wait
  costs latency one for one, and idle polls cost ~37 us per partition polled.

``--partitions`` (default 16) spreads each topic's history; the reader polls with the
worker's fetch wait. A Kafka broker finds an offset through its log index instead.
SIGTERM stops the run and every child.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.embedded import Services, exit_on_sigterm, start_broker, start_redis, start_worker
from streams.measure import cpu_s, percentile, rss_mb
from streams.settings import Settings
from streams.simulate import catalog, simulate_shoppers


async def soak(bootstrap: str, prefix: str, pids: dict[str, int], minutes: float, rate: float,
               fetch_max_wait_ms: int, rows: list[dict], out_topic: str = "recommendations",
               trigger_of: str = "trigger_event_id") -> list[dict]:
    """Run the load; appends one row per minute to ``rows`` (kept when interrupted).

    The Kafka clients and the reader are closed on any exit, cancellation included."""
    pid = pids["worker"]
    async with contextlib.AsyncExitStack() as clients:
        consumer = AIOKafkaConsumer(prefix + out_topic, bootstrap_servers=bootstrap,
                                    group_id=f"soak-{uuid.uuid4().hex[:6]}", auto_offset_reset="latest",
                                    fetch_max_wait_ms=fetch_max_wait_ms)
        clients.push_async_callback(consumer.stop)
        await consumer.start()
        while not consumer.assignment():
            await asyncio.sleep(0.1)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
        clients.push_async_callback(producer.stop)
        await producer.start()
        for e in catalog(5000):
            await producer.send(prefix + "items", orjson.dumps(e["value"]))
        sent: dict[str, float] = {}
        window: list[float] = []
        in_worker: list[float] = []  # each list's own latency_ms: from its batch's start to the list

        async def read() -> None:
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                now = time.perf_counter()
                for msgs in batch.values():
                    for m in msgs:
                        rec = orjson.loads(m.value)
                        t = sent.pop(rec[trigger_of], None)
                        if t is not None:
                            window.append((now - t) * 1000)
                            if "latency_ms" in rec:  # a list (the pass-through forwards the input)
                                in_worker.append(rec["latency_ms"])

        reader = asyncio.create_task(read())

        async def stop_reader() -> None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

        clients.push_async_callback(stop_reader)
        stream = simulate_shoppers(int(minutes * 60 * rate) + 1, n_users=20_000, n_items=5000, seed=5)
        t0 = time.perf_counter()
        minute_end = t0 + 60
        cpu0 = {name: cpu_s(p) for name, p in pids.items()}
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
                cpu1 = {name: cpu_s(p) for name, p in pids.items()}
                rows.append({"minute": len(rows) + 1, "events": n, "rss_mb": round(rss_mb(pid), 1),
                             "p50_ms": round(percentile(window, 50), 1), "p99_ms": round(percentile(window, 99), 1),
                             **({"worker_p50_ms": round(percentile(in_worker, 50), 1),
                                 "worker_p99_ms": round(percentile(in_worker, 99), 1)} if in_worker else {}),
                             "outputs": len(window), "unanswered": len(sent),
                             **{f"{name}_cpu_pct": round((cpu1[name] - cpu0[name]) / 60 * 100, 1)
                                for name in pids},
                             "load1": os.getloadavg()[0]})
                print(json.dumps(rows[-1]), flush=True)
                window.clear()
                in_worker.clear()
                cpu0 = cpu1
                minute_end += 60
        await producer.flush()
        await asyncio.sleep(5)
    return rows


async def _interruptible(coro):
    """Await ``coro``; SIGTERM cancels it, so its ``finally`` closes the Kafka clients in
    order (a SystemExit raised inside the event loop skipped that and could leave the
    loop's shutdown waiting on aiokafka tasks, never reaching the services' stop)."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    try:
        return await coro
    finally:
        loop.remove_signal_handler(signal.SIGTERM)  # resets SIGTERM to the default ...
        exit_on_sigterm()  # ... so put SystemExit back for the rest of the run


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--rate", type=float, default=300)
    p.add_argument("--partitions", type=int, default=16,
                   help="partitions per topic (the broker's per-fetch cost grows with batches per partition)")
    p.add_argument("--worker", choices=("streamrec", "passthrough"), default="streamrec",
                   help="passthrough: the control run, a bare Faust agent forwarding each event")
    p.add_argument("--report")
    a = p.parse_args()
    exit_on_sigterm()
    logdir = Path(tempfile.mkdtemp(prefix="streamrec-soak-"))
    prefix = "soak-"
    rows: list[dict] = []
    # Every child is registered the moment it exists: SIGTERM at any point stops them all.
    with Services() as services:
        broker = services.start(start_broker(log_dir=logdir))
        redis = services.start(start_redis(log_dir=logdir))
        env = {"STREAMREC_KAFKA_URL": f"kafka://127.0.0.1:{broker.port}",
               "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0", "STREAMREC_TOPIC_PREFIX": prefix,
               "STREAMREC_WEB_PORT": "0", "STREAMREC_LLM_BASE_URL": "template",
               "STREAMREC_PARTITIONS": str(a.partitions)}
        if a.worker == "passthrough":
            from streams.bench import start_passthrough

            worker = services.start(start_passthrough(env, logdir / "worker.log"))
            out_topic, trigger_of = "passthrough-out", "event_id"
        else:
            worker = services.start(start_worker(env, logdir / "worker.log"))
            out_topic, trigger_of = "recommendations", "trigger_event_id"
        start_rss = rss_mb(worker.proc.pid)
        wait_ms = Settings().kafka_fetch_max_wait_ms  # the worker's (it inherits this environment)
        print(json.dumps({"logs": str(logdir), "worker": a.worker, "partitions": a.partitions, "rate": a.rate,
                          "reader_fetch_max_wait_ms": wait_ms}), flush=True)
        try:
            asyncio.run(_interruptible(soak(f"127.0.0.1:{broker.port}", prefix,
                                            {"worker": worker.proc.pid, "broker": broker.proc.pid},
                                            a.minutes, a.rate, wait_ms, rows, out_topic, trigger_of)))
        except asyncio.CancelledError:
            print(json.dumps({"interrupted_after_minutes": len(rows)}), flush=True)
            raise SystemExit(143) from None
        out = {"worker": a.worker, "minutes": a.minutes, "rate": a.rate, "partitions": a.partitions,
               "rss_mb_start": round(start_rss, 1), "rss_mb_end": round(rss_mb(worker.proc.pid), 1),
               "per_minute": rows}
        print(json.dumps({k: v for k, v in out.items() if k != "per_minute"}))
        if a.report:
            Path(a.report).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
