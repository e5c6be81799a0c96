"""What the item-side cache's TTL does to lists: a recorded stream replayed with and without it.

    python -m benchmarks.bench_item_cache PATH --format FORMAT [--ttl-s 1 500 5000] [--limit N]

The worker's candidate sources read item-side aggregates (co-visitation and next-item
zsets, item session lists) through ``models.features.cache.ItemSideCache``, which
keeps each answer ``STREAMREC_ITEM_CACHE_S`` seconds of the shop's time and does not
see writes meanwhile: a list then misses what was written since, the shopper's own
last clicks included. Each run replays the recording prequentially (``streams.replay``,
the in-memory store, the tuned profile the replay would pick) with the cache's TTL
counted in event seconds (the replay's clock; 0 = no cache) and prints HR@k, MRR@k and
the share of item-side reads the cache answered.

Diginetica's sessions replay one click per event second, session after session, so a
TTL of 500 is 500 clicks of staleness with a session's own clicks a second apart: what
a wall-clock second held when a worker drained a backlog at 500 events/s. The shop's
clock (``ShopClock``) counts a live shop's seconds instead, where a shopper's clicks
come seconds apart.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

from models.features.cache import ItemSideCache
from models.features.keys import Keys
from models.features.memory import MemoryStore
from streams.readers import FORMATS, open_recording
from streams.replay import ReplayClock, build_recommender, replay


async def run_arm(path: str, fmt: str, ttl_s: float, k: int = 20, limit: int | None = None) -> dict:
    """Replay ``path`` with the cache kept ``ttl_s`` event seconds (0: none); the
    report's metrics and the cache's hits and misses."""
    recording = open_recording(path, fmt)
    profile = "sessions" if recording.test_from is not None else "events"
    clock = ReplayClock()
    store, keys = MemoryStore(clock=clock), Keys()
    cache = ItemSideCache(store, keys, ttl_s=ttl_s, clock=clock) if ttl_s > 0 else None
    rec = build_recommender(profile, k, store, keys, clock, source_store=cache)
    out = await replay(recording, rec, clock, k=k, limit=limit, progress=False, total=recording.total)
    return {"metrics": out["metrics"], "cases": out["test_cases"],
            "hits": cache.hits if cache else 0, "misses": cache.misses if cache else 0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--ttl-s", type=float, nargs="+", default=[1.0, 500.0, 5000.0],
                   help="the cache's TTL in event seconds, one run each (a run without it comes first)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--limit", type=int, help="stop after this many shopper events")
    a = p.parse_args()
    gc.set_threshold(100_000, 50, 1000)  # as the replay does: millions of small objects
    print(f"{'ttl_s':>7} {'HR@' + str(a.k):>8} {'MRR@' + str(a.k):>8} {'hits':>6}  seconds")
    for ttl in [0.0, *a.ttl_s]:
        t0 = time.perf_counter()
        r = asyncio.run(run_arm(a.path, a.format, ttl, a.k, a.limit))
        m, reads = r["metrics"], r["hits"] + r["misses"]
        hits = f"{100 * r['hits'] / reads:5.1f}%" if reads else "    -"
        print(f"{ttl:>7g} {100 * m[f'hit_rate@{a.k}']:>8.2f} {100 * m[f'mrr@{a.k}']:>8.2f} {hits:>6}"
              f"  {time.perf_counter() - t0:.0f}", flush=True)


if __name__ == "__main__":
    main()
