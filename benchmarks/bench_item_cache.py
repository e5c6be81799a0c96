"""What the item-side cache does to lists: a recorded stream replayed three ways.

    python -m benchmarks.bench_item_cache PATH --format FORMAT [--ttl-s 500 5000] [--limit N]

The worker's candidate sources read item-side aggregates (co-visitation and next-item
zsets, item session lists) through ``models.features.cache.ItemSideCache``. Each arm
replays the recording prequentially (``streams.replay``, the in-memory store, the
tuned profile the replay would pick) and prints HR@k and MRR@k:

- ``no cache``: every read from the store;
- ``reads only``: the cache in front of the sources' reads, the recommender writing
  straight to the store (what workers did before the cache applied their writes):
  a cached answer misses everything written since it was read, the shopper's own
  last clicks included;
- ``write-through``: the worker's arrangement: the recommender writes through the
  cache, which applies those writes to what it holds. One process is the only
  writer here, so its lists must be exactly those of ``no cache``.

The cache's TTL counts event seconds (the replay's clock). Diginetica's sessions
replay one click per event second, session after session, so ``--ttl-s 500`` is 500
clicks of staleness: one second of a shop taking 500 events a second.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

from models import tuned
from models.features.cache import ItemSideCache
from models.features.keys import Keys
from models.features.memory import MemoryStore
from models.pipeline import Recommender
from models.ranking import Ranker
from streams.readers import FORMATS, open_recording
from streams.replay import ReplayClock, replay

ARMS = ("no cache", "reads only", "write-through")


async def run_arm(path: str, fmt: str, arm: str, ttl_s: float, k: int = 20, limit: int | None = None) -> dict:
    """Replay ``path`` with the cache arranged as ``arm``; the report's metrics and the
    cache's hits and misses."""
    recording = open_recording(path, fmt)
    profile = "sessions" if recording.test_from is not None else "events"
    clock = ReplayClock()
    store, keys = MemoryStore(clock=clock), Keys()
    cache = ItemSideCache(store, keys, ttl_s=ttl_s, clock=clock) if arm != "no cache" else None
    cfg, sources, prior, warmup = tuned.build(profile, cache or store, keys, k=k, content=None)
    ranker = Ranker([s.name for s in sources], prior=prior, warmup=warmup)
    sessions, recs = iter(range(1, 1 << 62)), iter(range(1, 1 << 62))
    rec = Recommender(cache if arm == "write-through" else store, keys, cfg, sources=sources, ranker=ranker,
                      clock=clock, new_session_id=lambda: f"s{next(sessions)}",
                      new_rec_id=lambda: f"r{next(recs)}")
    out = await replay(recording, rec, clock, k=k, limit=limit, progress=False, total=recording.total)
    return {"metrics": out["metrics"], "cases": out["test_cases"],
            "hits": cache.hits if cache else 0, "misses": cache.misses if cache else 0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--ttl-s", type=float, nargs="+", default=[500.0, 5000.0],
                   help="the cache's TTL in event seconds, one pair of cached arms each")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--limit", type=int, help="stop after this many shopper events")
    a = p.parse_args()
    gc.set_threshold(100_000, 50, 1000)  # as the replay does: millions of small objects
    runs = [("no cache", 0.0)] + [(arm, ttl) for ttl in a.ttl_s for arm in ARMS[1:]]
    print(f"{'arm':<14} {'ttl_s':>7} {'HR@' + str(a.k):>8} {'MRR@' + str(a.k):>8} {'hits':>6}  seconds")
    for arm, ttl in runs:
        t0 = time.perf_counter()
        r = asyncio.run(run_arm(a.path, a.format, arm, ttl, a.k, a.limit))
        m, reads = r["metrics"], r["hits"] + r["misses"]
        hits = f"{100 * r['hits'] / reads:5.1f}%" if reads else "    -"
        print(f"{arm:<14} {ttl:>7g} {100 * m[f'hit_rate@{a.k}']:>8.2f} {100 * m[f'mrr@{a.k}']:>8.2f} {hits:>6}"
              f"  {time.perf_counter() - t0:.0f}", flush=True)


if __name__ == "__main__":
    main()
