"""How long ``streamrec check-store`` takes to walk a store.

    python -m benchmarks.bench_check_store [--shoppers 20000]

Starts an embedded Redis, writes four keys per shopper (a cart, recent items, a dedupe
marker, an item's co-visitation: a hash, a string, a string and a sorted set), damages
one cart, and times ``models.features.check.check_store`` over all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import redis.asyncio as aioredis

from models.features.check import check_store
from models.features.keys import Keys
from streams.embedded import start_redis


async def _run(url: str, shoppers: int) -> None:
    keys = Keys("bench:")
    client = aioredis.Redis.from_url(url)
    try:
        for lo in range(0, shoppers, 5000):
            pipe = client.pipeline(transaction=False)
            for n in range(lo, min(lo + 5000, shoppers)):
                pipe.hset(keys.cart(f"u{n}"), "i1", "2")
                pipe.set(keys.recent(f"u{n}"), "i1\x1fi2")
                pipe.set(keys.seen(f"e{n}"), "1")
                pipe.zadd(keys.covis(f"i{n}"), {"i2": 1.0})
            await pipe.execute()
        await client.set(keys.cart("u0"), "damaged")
        t0 = time.perf_counter()
        report = await check_store(client, keys.prefix)
        took = time.perf_counter() - t0
        print(f"{report.keys:,} keys walked in {took:.2f} s ({report.keys / took:,.0f} keys/s); "
              f"{len(report.damaged)} damaged")
    finally:
        await client.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shoppers", type=int, default=20000)
    args = p.parse_args()
    redis = start_redis()
    try:
        asyncio.run(_run(f"redis://127.0.0.1:{redis.port}/0", args.shoppers))
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
