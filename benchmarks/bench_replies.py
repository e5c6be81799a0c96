"""The Redis store's CPU for reading a round trip's replies: straight from the
connection's hiredis reader (``models.features.redis._replies``, what the store does)
against redis-py's ``read_response`` once per reply (what it did before).

    python -m benchmarks.bench_replies [--commands 250] [--trips 200] [--rounds 10]

Each round trip sends ``--commands`` reads to an embedded Redis (four in five ``GET`` of
a 20-byte value, one in five an ``LRANGE`` on a string: an error reply, kept as a
value), ``--trips`` times per way and round, the two ways alternating for
``--rounds`` rounds. Prints the median and range of this process's CPU per round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import models.features.redis as redis_backend
from streams.embedded import start_redis


async def measure(url: str, commands: int, trips: int, rounds: int) -> dict[str, list[float]]:
    store = redis_backend.RedisStore.from_url(url)
    direct = redis_backend._replies
    try:
        await store._roundtrip([("SET", f"bench-replies:{i}", "x" * 20) for i in range(commands)])
        cmds = [("LRANGE", f"bench-replies:{i}", 0, 9) if i % 5 == 4 else ("GET", f"bench-replies:{i}")
                for i in range(commands)]
        us: dict[str, list[float]] = {"read_response per reply": [], "the reader (the store's way)": []}
        for _ in range(rounds):
            for way, read in zip(us, (redis_backend.read_each, direct)):
                redis_backend._replies = read
                t = time.process_time()
                for _ in range(trips):
                    got = await store._roundtrip(cmds)
                us[way].append((time.process_time() - t) / trips * 1e6)
                assert len(got) == commands and got[0] == b"x" * 20
        return us
    finally:
        redis_backend._replies = direct
        await store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--commands", type=int, default=250)
    p.add_argument("--trips", type=int, default=200)
    p.add_argument("--rounds", type=int, default=10)
    a = p.parse_args()
    redis = start_redis()
    try:
        us = asyncio.run(measure(f"redis://127.0.0.1:{redis.port}/0", a.commands, a.trips, a.rounds))
    finally:
        redis.stop()
    for way, xs in us.items():
        xs.sort()
        print(f"{way:30s} {xs[len(xs) // 2]:7.0f} µs CPU per round trip of {a.commands} commands "
              f"(range {xs[0]:.0f}–{xs[-1]:.0f}, {a.rounds} rounds)")


if __name__ == "__main__":
    main()
