"""The worker's processing path without the broker: CPU per event by batch size.

    python -m benchmarks.bench_hotpath --batches 1 10 100 [--no-content] [--gc-gen0-threshold 0] [--ranks-by model]
        [--workload stress|live] [--item-cache-s S] [--shed]

Runs ``Runtime.handle`` (what the Faust agent calls for each batch) against an
embedded Redis over simulated shoppers: a 5,000-item catalog embedded first, 3,000
events to warm up, then the measured events in batches of each size. Outputs are
dropped instead of produced, so the figures are the recommender's own cost: CPU
milliseconds per event (all threads of this process) and events per wall second.
The garbage collector is settled as the worker settles it once started
(``streams.app.settle_gc``; ``--gc-gen0-threshold 0`` for Python's defaults), and
its pauses during the measured events are reported: the longest one stops the event
loop, and every list in the batch it lands in waits for it. So are the catalog
searches the content sources made (calls, and queries in them: anchors and taste
vectors not found among the kept rows).
``--ranks-by model``: the online model ranks every list, as once storefront feedback has
taught it and it has won its trial (it is given its warm-up's labels and a won trial
first; a fifth of the lists are then interleaved, as in the worker); by default the
prior blend ranks, as before any feedback.
``--workload live``: a live shop at 500 events/s (``streams.simulate.simulate_live_shop``)
instead of the stress stream, its warm-up preceded by the bench's lead-in (the shop's
minute before, 30,000 events): the store a worker of a running shop meets, whose item
session lists and co-visitation are full, so a list costs more than on the stress
stream's young store.
``--shed``: the measured batches are made as a late worker makes them
(``STREAMREC_SHED_AFTER_MS``): lists without the shed sources, state updated alike.
``streamrec bench`` measures the same path through the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import time

from models.events import parse_value
from models.ranking import Ranker
from streams.app import Runtime, settle_gc
from streams.embedded import start_redis
from streams.bench import LIVE_LEAD_IN_S
from streams.settings import GC_GEN0_THRESHOLD, Settings
from streams.simulate import catalog, simulate_live_shop, simulate_shoppers


#: events handled (in batches of 100) before the measured ones; a live shop's lead-in comes first
WARM_UP = 3000


async def embed_catalog(rt: Runtime, n_items: int = 5000) -> None:
    """Publish a simulated catalog to ``rt`` and embed every title, as the worker does."""
    items = [parse_value("items", e["value"], now=2e9) for e in catalog(n_items)]
    await rt.recommender.handle(items)
    if rt.catalog is not None:
        await rt.catalog.ingest(items)
        await rt.catalog.flush()


#: Python's collector thresholds, restored after each measurement
DEFAULT_GC_THRESHOLDS = gc.get_threshold()


class GcPauses:
    """Every garbage collection's pause while recording, in ms (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self.recording = False
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif self.recording:
            self.ms.append((time.perf_counter() - self._start) * 1000)


def let_the_model_rank(ranker: Ranker, seed: int = 0) -> None:
    """Give ``ranker`` its warm-up's labels (clicks likelier on higher source scores) and
    a won trial, so that the model ranks, as feedback and a trial would have it."""
    rng = random.Random(seed)
    for _ in range(ranker.warmup):
        signals = {s: rng.random() for s in ranker.sources if rng.random() < 0.5}
        ranker.learn({**ranker.features(signals, {s: rng.randrange(20) for s in signals}),
                      "cat_affinity": rng.random()}, rng.random() < 0.2 + 0.5 * sum(signals.values()) / 3)
    ranker.add_trials([True] * ranker.trial_min)
    assert ranker.active


async def measure(batch: int, content: bool, events: int, redis_url: str,
                  gc_gen0_threshold: int = GC_GEN0_THRESHOLD, ranks_by: str = "prior",
                  workload: str = "stress", item_cache_s: float | None = None, shed: bool = False) -> dict:
    extra = {} if item_cache_s is None else {"item_cache_s": item_cache_s}
    rt = Runtime(Settings(redis_url=redis_url, content=content, copy_in_worker=False,
                          key_prefix=f"hot{batch}{int(content)}{ranks_by}{workload}:", _env_file=None, **extra))
    if ranks_by == "model":
        let_the_model_rank(rt.recommender.ranker)

    async def drop(user_id: str, payload: bytes) -> None:
        return None

    rt.send_recommendation = drop  # type: ignore[method-assign]
    if workload == "live":  # a live shop at 500 events/s, after the bench's lead-in (its minute before)
        shop = list(simulate_live_shop(WARM_UP + events, rate=500.0, n_items=5000, seed=5, lead_in_s=LIVE_LEAD_IN_S))
    else:
        shop = list(simulate_shoppers(WARM_UP + events, n_users=20_000, n_items=5000, seed=5))
    stream = [parse_value(e["topic"], e["value"], now=2e9) for e in shop]
    warm_up = len(stream) - events
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    searches = {"calls": 0, "queries": 0}
    try:
        await embed_catalog(rt)
        if rt.catalog is not None:  # count the searches (a wrapper on the index the sources share)
            index, search = rt.catalog.index, rt.catalog.index.search

            def counted(queries, n, exclude=()):
                if pauses.recording:
                    searches["calls"] += 1
                    searches["queries"] += len(queries)
                return search(queries, n, exclude)

            index.search = counted
        settle_gc(gc_gen0_threshold)  # the worker does it once started, before traffic
        for i in range(0, warm_up, 100):
            await rt.handle(stream[i:i + 100])
        pauses.recording = True
        import os; print("MEASURING", os.getpid(), flush=True); await asyncio.sleep(1.5)
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(warm_up, len(stream), batch):
            await rt.handle(stream[i:i + batch], shed=shed)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        pauses.recording = False
    finally:
        gc.callbacks.remove(pauses)
        gc.unfreeze()
        gc.set_threshold(*DEFAULT_GC_THRESHOLDS)
        if rt.catalog is not None:
            await rt.catalog.close()
        await rt.store.close()
    splits = int(rt.metrics.registry.get_sample_value("streamrec_batch_splits_total") or 0)
    if splits:
        print(f"WARNING: {splits} batches raised and were redone one event at a time: "
              "these figures are not the normal path's", flush=True)
    return {"batch": batch, "workload": workload, "content": content, "ranks_by": ranks_by, "shed": shed,
            "events": events, "batch_splits": splits,
            "cpu_ms_per_event": round(1000 * cpu / events, 2), "events_per_s": round(events / wall, 1),
            "gc_gen0_threshold": gc_gen0_threshold, "gc_pauses": len(pauses.ms),
            "gc_ms_total": round(sum(pauses.ms), 1), "gc_ms_max": round(max(pauses.ms, default=0.0), 1),
            "catalog_searches": searches["calls"], "catalog_queries": searches["queries"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--no-content", action="store_true", help="content and new-item sources off")
    p.add_argument("--gc-gen0-threshold", type=int, default=GC_GEN0_THRESHOLD,
                   help="as the worker's setting (0: Python's defaults, nothing frozen)")
    p.add_argument("--ranks-by", choices=["prior", "model"], default="prior",
                   help="what ranks the lists: the prior blend (before feedback) or the online model")
    p.add_argument("--workload", choices=["stress", "live"], default="stress",
                   help="simulated shoppers (the bench's stress stream) or a live shop at 500 events/s "
                        "after the bench's lead-in (its minute before: a store as a running shop has it)")
    p.add_argument("--item-cache-s", type=float, help="the worker's STREAMREC_ITEM_CACHE_S (default: its default)")
    p.add_argument("--shed", action="store_true", help="measure lists made as a late batch's (without the shed sources)")
    p.add_argument("--report")
    a = p.parse_args()
    redis = start_redis()
    try:
        rows = []
        for b in a.batches:
            rows.append(asyncio.run(measure(b, not a.no_content, a.events, f"redis://127.0.0.1:{redis.port}/0",
                                            a.gc_gen0_threshold, a.ranks_by, a.workload, a.item_cache_s, a.shed)))
            r = rows[-1]
            print(f"batch {b:>4}: {r['cpu_ms_per_event']:.2f} ms CPU per event, {r['events_per_s']:,.0f} events/s, "
                  f"{r['gc_pauses']} GC pauses ({r['gc_ms_total']:.0f} ms in all, longest {r['gc_ms_max']:.1f} ms), "
                  f"{r['catalog_searches']:,} catalog searches ({r['catalog_queries']:,} queries)", flush=True)
    finally:
        redis.stop()
    if a.report:
        with open(a.report, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
