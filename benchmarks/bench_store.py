"""The Redis store's two write paths: one batch as a server-side script, or as MULTI/EXEC.

    python -m benchmarks.bench_store [--events 100] [--repeat 30]

Builds the writes of a batch of simulated events (dedupe markers, profile counters,
co-visitation increments, session index pushes, session and recent-items state: about
16 operations per event), then applies it ``--repeat`` times through
``RedisStore.write`` on an embedded Redis, once per path. Reports, per write, the CPU
of this process (packing, sending, parsing) and of the Redis server (``/proc``), and
the wall time. The script path is the default; the pipeline path is what a server that
refuses scripts gets.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--report")
    a = p.parse_args()
    redis = start_redis()
    try:
        rows = asyncio.run(measure(f"redis://127.0.0.1:{redis.port}/0", redis.proc.pid,
                                   batch_writes(a.events), a.repeat))
    finally:
        redis.stop()
    for r in rows:
        print(f"{r['path']:8s} {r['operations']:>6,} operations: client {r['client_cpu_ms']:.2f} ms CPU, "
              f"server {r['server_cpu_ms']:.2f} ms CPU, {r['wall_ms']:.2f} ms wall per write")
    if a.report:
        with open(a.report, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
