"""Throughput of 1 and 2 workers in one consumer group, on one machine.

    python -m benchmarks.bench_scale [--events 5000] [--partitions 4] [--workers 1 2] [--report out.json]

Starts an embedded Redis, then for each worker count: a fresh embedded broker, fresh topics
(``--partitions`` each), starts that many ``streamrec worker`` processes in one group
(copy pool, content source and web API as in a lean deployment: copy off, content
off, web on for health), waits until every partition is assigned and the assignment
has settled, warms up, then produces ``--events`` simulated shopper events (clicks
and carts, each one triggers a recommendation) as fast as possible and times until
every one of them has its recommendation on ``recommendations``.

events/s = events / (last recommendation read - first event sent). Everything (broker,
Redis, producer, reader, workers) shares this machine's cores, so the figure says what
one host gives, not what N hosts would. The CPU seconds each process used during the
run are printed too: events per worker CPU-second is the cost of the pipeline itself,
and stays meaningful when other work shares the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.embedded import Service, create_topics, free_port, start_broker, start_redis, start_worker
from streams.simulate import catalog, simulate_shoppers

INPUTS = 6  # input topics each worker subscribes to
#: Every service started here, stopped on the way out whatever happens.
STARTED: list[Service] = []


async def _get(http: aiohttp.ClientSession, port: int, path: str) -> str:
    try:
        async with http.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=5)) as r:
            return await r.text()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return ""


async def _assignment(http: aiohttp.ClientSession, ports: list[int]) -> list[int]:
    out = []
    for p in ports:
        body = await _get(http, p, "/healthz")
        out.append(orjson.loads(body).get("assigned_partitions", 0) if body.startswith("{") else 0)
    return out


async def _settled(http: aiohttp.ClientSession, ports: list[int], partitions: int, timeout_s: float = 180.0,
                   stable_s: float = 4.0) -> list[int]:
    """Wait until every worker holds partitions, all are held, and nothing moved for ``stable_s``."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        a = await _assignment(http, ports)
        if a != last:
            last, since = a, time.monotonic()
        elif all(a) and sum(a) >= INPUTS * partitions and time.monotonic() - since >= stable_s:
            return a
        await asyncio.sleep(0.5)
    raise TimeoutError(f"partitions never settled: {last}")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _recs_made(http: aiohttp.ClientSession, port: int) -> int:
    for line in (await _get(http, port, "/metrics")).splitlines():
        if line.startswith("streamrec_recommendations_total "):
            return int(float(line.split()[1]))
    return 0


async def _run(bootstrap: str, prefix: str, events: list[dict], timeout_s: float = 600.0) -> float:
    """Produce ``events`` as fast as possible; seconds until each has a recommendation."""
    want = {e["value"]["event_id"] for e in events if e["topic"] in ("clicks", "carts")}
    consumer = AIOKafkaConsumer(prefix + "recommendations", bootstrap_servers=bootstrap,
                                group_id=f"bench-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest",
                                fetch_max_wait_ms=20)
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        t0 = time.perf_counter()
        for e in events:
            v = e["value"]
            key = (v.get("user_id") or v["item_id"]).encode()
            await producer.send(prefix + e["topic"], orjson.dumps(v), key=key)
        await producer.flush()
        deadline = time.monotonic() + timeout_s
        while want and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                for m in msgs:
                    want.discard(orjson.loads(m.value)["trigger_event_id"])
        if want:
            raise TimeoutError(f"{len(want)} events without a recommendation after {timeout_s}s")
        return time.perf_counter() - t0
    finally:
        await producer.stop()
        await consumer.stop()


async def measure(broker: Service, redis: Service, n_workers: int, n_events: int, partitions: int,
                  workdir: Path) -> dict:
    bootstrap = f"127.0.0.1:{broker.port}"
    prefix = f"b{uuid.uuid4().hex[:6]}-"
    await create_topics(bootstrap, prefix, partitions)
    ports = [free_port() for _ in range(n_workers)]
    env = {"STREAMREC_KAFKA_URL": f"kafka://{bootstrap}", "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
           "STREAMREC_TOPIC_PREFIX": prefix, "STREAMREC_KEY_PREFIX": prefix, "STREAMREC_APP_ID": f"bench-{prefix}",
           "STREAMREC_PARTITIONS": str(partitions), "STREAMREC_LLM_BASE_URL": "template",
           "STREAMREC_COPY_IN_WORKER": "false", "STREAMREC_CONTENT": "false"}
    workers: list[Service] = []
    try:
        workers += await asyncio.gather(*(asyncio.to_thread(
            start_worker, {**env, "STREAMREC_WEB_PORT": str(p), "STREAMREC_WORKER_ID": f"w{i + 1}"},
            workdir / f"{prefix}w{i + 1}.log") for i, p in enumerate(ports)))
        STARTED.extend(workers)
        async with aiohttp.ClientSession() as http:
            assignment = await _settled(http, ports, partitions)
            warm = catalog(500) + list(simulate_shoppers(1000, n_users=2000, n_items=500, seed=1))
            await _run(bootstrap, prefix, warm)
            base = [await _recs_made(http, p) for p in ports]
            events = list(simulate_shoppers(n_events, n_users=2000, n_items=500, seed=2))
            procs = {"workers": [w.proc.pid for w in workers], "broker": [broker.proc.pid],
                     "redis": [redis.proc.pid]}
            cpu0 = {k: [_cpu_s(p) for p in v] for k, v in procs.items()}
            elapsed = await _run(bootstrap, prefix, events)
            cpu = {k: [round(_cpu_s(p) - c, 2) for p, c in zip(v, cpu0[k])] for k, v in procs.items()}
            share = [await _recs_made(http, p) - b for p, b in zip(ports, base)]
            if await _assignment(http, ports) != assignment:
                print("  note: the assignment changed during the run")
        return {"workers": n_workers, "events": n_events, "partitions": partitions, "elapsed_s": round(elapsed, 3),
                "events_per_s": round(n_events / elapsed, 1), "assigned_partitions": assignment,
                "recommendations_per_worker": share, "cpu_s": cpu,
                "events_per_worker_cpu_s": round(n_events / max(sum(cpu["workers"]), 1e-9), 1)}
    finally:
        for w in workers:
            w.stop()


async def main_async(args: argparse.Namespace) -> list[dict]:
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-bench-scale-"))
    os.chdir(workdir)  # the workers' Faust data folders go here
    redis = start_redis(log_dir=workdir)
    STARTED.append(redis)
    results = []
    try:
        for n in args.workers:
            # a broker per worker count: the embedded broker's fetches cost more with every
            # batch it holds, so a shared one would slow each later count by the earlier runs
            broker = start_broker(log_dir=workdir)
            STARTED.append(broker)
            try:
                r = await measure(broker, redis, n, args.events, args.partitions, workdir)
            finally:
                broker.stop()
            print(f"{n} worker(s): {r['events_per_s']:>8.0f} events/s  ({r['events']} events in {r['elapsed_s']:.1f}s;"
                  f" partitions per worker {r['assigned_partitions']}, lists per worker"
                  f" {r['recommendations_per_worker']}; CPU s: workers {r['cpu_s']['workers']},"
                  f" broker {r['cpu_s']['broker'][0]}, redis {r['cpu_s']['redis'][0]};"
                  f" {r['events_per_worker_cpu_s']:.0f} events per worker CPU-second)", flush=True)
            results.append(r)
    finally:
        redis.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=5000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--report", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.report:
        args.report = os.path.abspath(args.report)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results = asyncio.run(main_async(args))
    finally:
        for svc in STARTED:
            svc.stop()
    load = os.getloadavg()[0]
    print(f"cpu cores: {os.cpu_count()}, load average over the last minute: {load:.1f}")
    if args.report:
        Path(args.report).write_text(json.dumps({"cpu_cores": os.cpu_count(), "load_average_1m": load,
                                                  "results": results}, indent=2))


if __name__ == "__main__":
    main()
