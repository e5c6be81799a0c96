"""The worker's processing path over a long stream, without the broker: memory and
list latency per segment.

    python -m benchmarks.soak_core --events 600000 --segment 50000 --report core.json

``benchmarks.soak`` runs the whole worker through the embedded broker, whose own cost
grows with every batch it keeps (see there), so a long run there mixes the broker's
drift into the worker's. This one runs the same path the Faust agent calls for each
batch (``Runtime.handle``: decode, features, candidates, ranking, store writes, the
recommendation's JSON) against an embedded Redis, over simulated shoppers (a
5,000-item catalog embedded first, ``--shoppers`` shoppers, event time advancing
``--gap-s`` per event), in batches of ``--batch`` events, as fast as one core runs it.
Outputs are dropped after their latency is read.

The garbage collector is settled once the catalog is embedded, as a started worker
settles it (``streams.app.settle_gc``; ``--gc-gen0-threshold 0`` keeps Python's
defaults). Every ``--segment`` events it prints this process's RSS, the lists' own
``latency_ms`` percentiles in that segment (from the start of their batch to the
list), CPU milliseconds per event, the collector's pauses (count, longest), and
Redis's ``used_memory`` and key count. Memory is
flat when the RSS of the last segments stays within a few MB of the segments before:
every in-process cache is bounded, so RSS has to level off once they are full.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import re
import statistics
import time

import orjson
import redis.asyncio as aioredis

from benchmarks.bench_hotpath import GcPauses, embed_catalog
from models.events import parse_value
from streams.app import Runtime, settle_gc
from streams.embedded import start_redis
from streams.measure import percentile, rss_mb
from streams.settings import GC_GEN0_THRESHOLD, Settings
from streams.simulate import simulate_shoppers


def cache_sizes(rt: Runtime) -> dict[str, int]:
    """Entries in each bounded in-process cache of the worker's processing path."""
    rec = rt.recommender
    sizes = {"item_meta": len(rec.item_meta._entries)}
    for source in rec.sources:
        if isinstance(getattr(getattr(source, "store", None), "_cache", None), dict):
            sizes["item_side"] = len(source.store._cache)
        for attr in ("_sessions", "_taste", "_neighbours", "_taste_hits", "_session_taste", "_parts", "_established", "_fresh"):
            if isinstance(getattr(source, attr, None), dict):
                sizes[f"{source.name}.{attr.lstrip('_')}"] = len(getattr(source, attr))
    return sizes


async def redis_by_family(server: aioredis.Redis, sample: int = 300) -> dict[str, dict]:
    """Keys and estimated bytes per key family (the key with its user, session, item or
    event id left out), from a SCAN of every key and ``MEMORY USAGE`` of a sample of each
    family; largest first."""
    families: dict[str, list[bytes]] = {}
    count: dict[str, int] = {}
    async for key in server.scan_iter(count=5000):
        fam = re.sub(r"\{[a-z]+:[^}]*\}", "{id}", key.decode(errors="replace"))
        fam = re.sub(r"[0-9a-f]{16,}|ev[0-9-]+", "<id>", fam)
        count[fam] = count.get(fam, 0) + 1
        if len(families.setdefault(fam, [])) < sample:
            families[fam].append(key)
    out = {}
    for fam, keys in families.items():
        sizes = [await server.memory_usage(k) or 0 for k in keys]
        out[fam] = {"keys": count[fam], "mb": round(count[fam] * statistics.fmean(sizes) / 2**20, 1)}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["mb"]))


async def soak(events: int, segment: int, batch: int, shoppers: int, gap_s: float, redis_url: str,
               content: bool = True,
               gc_gen0_threshold: int = GC_GEN0_THRESHOLD) -> list[dict]:
    rt = Runtime(Settings(redis_url=redis_url, content=content, copy_in_worker=False, _env_file=None))
    latencies: list[float] = []

    async def keep_latency(user_id: str, payload: bytes) -> None:
        latencies.append(orjson.loads(payload)["latency_ms"])

    rt.send_recommendation = keep_latency  # type: ignore[method-assign]
    server = aioredis.from_url(redis_url)
    rows: list[dict] = []
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    try:
        await embed_catalog(rt)
        settle_gc(gc_gen0_threshold)
        pauses.recording = True
        pid, start = os.getpid(), time.perf_counter()
        print(f"catalog embedded: RSS {rss_mb(pid):.0f} MB", flush=True)
        stream = simulate_shoppers(events, n_users=shoppers, n_items=5000, seed=11, gap_s=gap_s)
        done, cpu = 0, time.process_time()
        while done < events:
            todo = min(segment, events - done)
            end = done + todo
            while done < end:
                chunk = [parse_value(e["topic"], e["value"], now=2e9)
                         for e in itertools.islice(stream, min(batch, end - done))]
                await rt.handle(chunk)
                done += len(chunk)
            info = await server.info("memory")
            now_cpu = time.process_time()
            rows.append({"events": done, "rss_mb": round(rss_mb(pid), 1),
                         "lists": len(latencies),
                         "list_p50_ms": round(percentile(latencies, 50), 2),
                         "list_p99_ms": round(percentile(latencies, 99), 2),
                         "list_mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
                         "cpu_ms_per_event": round(1000 * (now_cpu - cpu) / todo, 3),
                         "redis_used_mb": round(info["used_memory"] / 2**20, 1),
                         "redis_keys": await server.dbsize(), "caches": cache_sizes(rt),
                         "gc_pauses": len(pauses.ms), "gc_ms_max": round(max(pauses.ms, default=0.0), 1),
                         "elapsed_s": round(time.perf_counter() - start, 1)})
            latencies.clear()
            pauses.ms.clear()
            cpu = now_cpu
            r = rows[-1]
            print(f"{r['events']:>9,} events  RSS {r['rss_mb']:6.1f} MB  lists p50/p99 "
                  f"{r['list_p50_ms']:.2f}/{r['list_p99_ms']:.2f} ms  CPU {r['cpu_ms_per_event']:.2f} ms/event  "
                  f"GC {r['gc_pauses']} pauses, longest {r['gc_ms_max']:.1f} ms  "
                  f"Redis {r['redis_used_mb']:.0f} MB, {r['redis_keys']:,} keys  ({r['elapsed_s']:.0f} s)\n    caches "
                  + " ".join(f"{k} {v:,}" for k, v in r["caches"].items()), flush=True)
        rows[-1]["redis_by_family"] = await redis_by_family(server)
        print("Redis by key family (keys, estimated MB): " + ", ".join(
            f"{fam} {v['keys']:,} {v['mb']}" for fam, v in list(rows[-1]["redis_by_family"].items())[:8]), flush=True)
    finally:
        gc.callbacks.remove(pauses)
        await server.aclose()
        if rt.catalog is not None:
            await rt.catalog.close()
        await rt.store.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=600_000)
    p.add_argument("--segment", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--shoppers", type=int, default=20_000)
    p.add_argument("--gap-s", type=float, default=0.05, help="event time between events (0.05: a 20 events/s shop)")
    p.add_argument("--no-content", action="store_true", help="content and new-item sources off")
    p.add_argument("--gc-gen0-threshold", type=int, default=GC_GEN0_THRESHOLD,
                   help="as the worker's setting (0: Python's defaults, nothing frozen)")
    p.add_argument("--report")
    a = p.parse_args()
    server = start_redis()
    try:
        rows = asyncio.run(soak(a.events, a.segment, a.batch, a.shoppers, a.gap_s,
                                f"redis://127.0.0.1:{server.port}/0", content=not a.no_content,
                                gc_gen0_threshold=a.gc_gen0_threshold))
    finally:
        server.stop()
    if a.report:
        with open(a.report, "w") as f:
            json.dump({"args": vars(a), "segments": rows}, f, indent=2)


if __name__ == "__main__":
    main()
