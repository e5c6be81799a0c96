"""The Redis store's two write paths: one batch as a server-side script, or as MULTI/EXEC;
and the client's CPU per round trip of small reads and writes.

    python -m benchmarks.bench_store [--events 100] [--repeat 30] [--trips 3000]

Builds the writes of a batch of simulated events (dedupe markers, profile counters,
co-visitation increments, session index pushes, session and recent-items state: about
16 operations per event), then applies it ``--repeat`` times through
``RedisStore.write`` on an embedded Redis, once per path. Reports, per write, the CPU
of this process (packing, sending, parsing) and of the Redis server (``/proc``), and
the wall time. The script path is the default; the pipeline path is what a server that
refuses scripts gets.

Then, per round trip of the small calls a batch of one event makes (``--trips`` of
each): a read of one key, a shopper's state (five keys), a write of one operation, and
a write issued ahead of a read (one round trip for both), the client's CPU in µs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time

from models.features import open_store
from models.features.redis import WRITE_SCRIPT
from streams.embedded import start_redis


def batch_writes(events: int, seed: int = 1) -> list[tuple]:
    """The store writes of ``events`` clicks, shaped like ``Recommender.handle``'s."""
    rnd = random.Random(seed)
    ops: list[tuple] = []
    for e in range(events):
        user, session = f"u{rnd.randrange(20_000)}", f"s{e}"
        items = [f"i{rnd.randrange(5000)}" for _ in range(3)]
        ops += [("set", f"seen:{e}", b"1", 86_400), ("hincr", f"profile:{{u:{user}}}", "click", 1.0)]
        ops += [("zincr", f"covis:{rnd.randrange(5000)}", f"i{rnd.randrange(5000)}", 1.0) for _ in range(10)]
        ops += [("lpush", f"item_sessions:{items[0]}", session, 200),
                ("set", f"session_items:{session}", "\x1f".join(items), 3600),
                ("hset", f"session:{{u:{user}}}", {"id": session, "last": "1.7e9", "items": "\x1f".join(items)}),
                ("set", f"recent:{{u:{user}}}", "\x1f".join(items), None)]
    return ops


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, server_pid: int, ops: list[tuple], repeat: int) -> list[dict]:
    store = open_store(url)
    rows = []
    try:
        for path in ("script", "pipeline"):
            # the store falls back to pipelines on its own where scripts are refused; here
            # the path is chosen by hand to compare the two on one server
            store._script = store._r.register_script(WRITE_SCRIPT) if path == "script" else None
            await store.write(ops)  # loads the script; warms the connection
            cpu, server, wall = time.process_time(), _cpu_s(server_pid), time.perf_counter()
            for _ in range(repeat):
                await store.write(ops)
            rows.append({"path": path, "operations": len(ops),
                         "client_cpu_ms": round((time.process_time() - cpu) / repeat * 1000, 2),
                         "server_cpu_ms": round((_cpu_s(server_pid) - server) / repeat * 1000, 2),
                         "wall_ms": round((time.perf_counter() - wall) / repeat * 1000, 2)})
    finally:
        await store.close()
    return rows


async def round_trips(url: str, trips: int) -> list[dict]:
    """Client CPU per round trip of small reads and writes (see the module's docstring)."""
    store = open_store(url)
    u = "{u:bench}"
    state = [("get", f"recent:{u}"), ("hgetall", f"session:{u}"), ("hgetall", f"cart:{u}"),
             ("hgetall", f"purchases:{u}"), ("smembers", f"bought:{u}")]
    one_write = [("hincr", f"profile:{u}", "click", 1.0)]

    async def ahead() -> None:
        written = store.write_ahead(one_write)
        await store.read(state[:1])
        await written

    calls = {"read, 1 key": lambda: store.read(state[:1]), "read, a shopper's state (5 keys)": lambda: store.read(state),
             "write, 1 operation": lambda: store.write(one_write)}
    if hasattr(store, "write_ahead"):  # (releases before it had none)
        calls["write ahead of a read (1 round trip)"] = ahead
    rows = []
    try:
        await store.write([("hset", f"session:{u}", {"id": "s1", "items": "i1\x1fi2"}), *one_write])
        for name, call in calls.items():
            for _ in range(200):
                await call()
            cpu = time.process_time()
            for _ in range(trips):
                await call()
            rows.append({"round_trip": name, "client_cpu_us": round((time.process_time() - cpu) / trips * 1e6, 1)})
    finally:
        await store.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--trips", type=int, default=3000, help="round trips of each small call")
    p.add_argument("--report")
    a = p.parse_args()
    redis = start_redis()
    try:
        rows = asyncio.run(measure(f"redis://127.0.0.1:{redis.port}/0", redis.proc.pid,
                                   batch_writes(a.events), a.repeat))
        trips = asyncio.run(round_trips(f"redis://127.0.0.1:{redis.port}/0", a.trips))
    finally:
        redis.stop()
    for r in rows:
        print(f"{r['path']:8s} {r['operations']:>6,} operations: client {r['client_cpu_ms']:.2f} ms CPU, "
              f"server {r['server_cpu_ms']:.2f} ms CPU, {r['wall_ms']:.2f} ms wall per write")
    for r in trips:
        print(f"{r['round_trip']:38s} client {r['client_cpu_us']:6.1f} µs CPU per round trip")
    if a.report:
        with open(a.report, "w") as f:
            json.dump({"writes": rows, "round_trips": trips}, f, indent=2)


if __name__ == "__main__":
    main()
