"""Scale-out: two, then three real workers in one consumer group, on one broker and one
Redis, while shoppers keep clicking.

Checks that partitions move to the new worker and it does work, that every click
gets a recommendation, and that no shopper's state was built from a stale copy: each
shopper's session in Redis ends up holding exactly their clicks, in order. A lost
update (two workers holding one shopper's state at once, or a worker reading before
another's write landed) would drop or repeat an item there.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import redis.asyncio as aioredis

from models.features.keys import Keys
from models.pipeline import SEP
from streams.embedded import Service, create_topics, free_port, start_worker
from tests.support.kafka import Collector, produce

pytestmark = [pytest.mark.services, pytest.mark.slow]

PARTITIONS = 6
USERS = 48
#: Rounds of clicks (one click per user each): with 2 workers; at most while the third
#: joins (one round every ROUND_S); with 3 workers. At most 28 clicks per user: below
#: the session cap (30), so a session holds every click.
BEFORE, JOINING_MAX, AFTER = 6, 18, 4
ROUND_S = 3.0


async def health(session: aiohttp.ClientSession, port: int) -> dict:
    try:
        async with session.get(f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=5)) as r:
            return await r.json()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return {}


async def metric(session: aiohttp.ClientSession, port: int, name: str) -> float:
    """A worker's metric sample ``name`` from its /metrics (0 when absent)."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def until(predicate, timeout_s: float, every_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(every_s)
    return await predicate()


def clicks(prefix: str, lo: int, hi: int, t0: float) -> list[tuple[str, bytes, dict]]:
    """Clicks number lo..hi-1 of every user, interleaved; each user's items are distinct."""
    out = []
    for k in range(lo, hi):
        for u in range(USERS):
            user = f"s{u}"
            out.append((prefix + "clicks", user.encode(),
                        {"event_id": f"{user}-c{k}", "user_id": user, "item_id": item_of(u, k),
                         "ts": t0 + k * USERS + u}))
    return out


def item_of(u: int, k: int) -> str:
    return f"i{(u * 7 + k) % 300}"


async def test_two_then_three_workers(broker, redis_url, worker_env, prefix, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # each worker keeps its Faust data folder here
    await create_topics(broker, prefix, PARTITIONS)
    ports = [free_port() for _ in range(3)]
    envs = [{**worker_env, "STREAMREC_PARTITIONS": str(PARTITIONS), "STREAMREC_CONTENT": "false",
             "STREAMREC_COPY_IN_WORKER": "false",
             "STREAMREC_WEB_PORT": str(port), "STREAMREC_WORKER_ID": f"w{i + 1}"}
            for i, port in enumerate(ports)]
    envs[1]["STREAMREC_EVENT_LOOP"] = "asyncio"  # the others run the default, uvloop: one group, both loops
    t0 = time.time() - 3 * 3600
    workers: list[Service] = []
    joining: asyncio.Task | None = None
    input_partitions = 6 * PARTITIONS
    try:
        async with aiohttp.ClientSession() as http, \
                Collector(broker, prefix + "recommendations") as col:
            workers += await asyncio.gather(*(asyncio.to_thread(start_worker, envs[i], tmp_path / f"w{i + 1}.log")
                                              for i in range(2)))

            async def assigned(n: int) -> list[int]:
                got = [await health(http, p) for p in ports[:n]]
                return [g.get("assigned_partitions", 0) for g in got]

            async def shared_by(n: int) -> bool:
                a = await assigned(n)
                return all(x > 0 for x in a) and sum(a) >= input_partitions

            assert await until(lambda: shared_by(2), 120), await assigned(2)
            before = await assigned(2)

            # two workers
            await produce(broker, clicks(prefix, 0, BEFORE, t0))
            # the third worker joins while a round of clicks arrives every ROUND_S
            joining = asyncio.create_task(asyncio.to_thread(start_worker, envs[2], tmp_path / "w3.log"))
            rounds = BEFORE
            while rounds < BEFORE + JOINING_MAX and not (joining.done() and await shared_by(3)):
                await produce(broker, clicks(prefix, rounds, rounds + 1, t0))
                rounds += 1
                await asyncio.sleep(ROUND_S)
            workers.append(await joining)
            assert await until(lambda: shared_by(3), 120), await assigned(3)
            after = await assigned(3)
            # three workers
            await produce(broker, clicks(prefix, rounds, rounds + AFTER, t0))
            rounds += AFTER

            triggers = {f"s{u}-c{k}" for u in range(USERS) for k in range(rounds)}

            def served(c: Collector) -> bool:
                return triggers <= {r["trigger_event_id"] for r in c.values(prefix + "recommendations")}

            assert await col.wait_for(served, 180), \
                len(triggers - {r["trigger_event_id"] for r in col.values(prefix + "recommendations")})
            recs = col.values(prefix + "recommendations")
            made = [await metric(http, p, "streamrec_recommendations_total") for p in ports]
            # every worker watches its event loop (a timer every 100 ms): ten checks each, given
            # time (on two loaded cores a newcomer's loop may have woken only a few times yet)
            async def lag_checks_of_all() -> list[float]:
                return [await metric(http, p, "streamrec_event_loop_lag_seconds_count") for p in ports]

            async def watched() -> bool:
                return all(n >= 10 for n in await lag_checks_of_all())

            await until(watched, 30)
            lag_checks = await lag_checks_of_all()

        # partitions moved: the newcomer took some from the first two, and did work
        assert after[2] > 0 and sum(after[:2]) < sum(before), (before, after)
        assert made[2] > 0 and made[0] > 0 and made[1] > 0, made
        assert all(n >= 10 for n in lag_checks), lag_checks
        assert all(w.proc.poll() is None for w in workers), "a worker died"
        loops = [(tmp_path / f"w{i + 1}.log").read_text().split("event loop=", 1)[1].split()[0]
                 for i in range(3)]
        assert loops == ["uvloop", "asyncio", "uvloop"], loops
        # and its log shows the assignment it received
        log3 = (tmp_path / "w3.log").read_text()
        assert "newly assigned partitions" in log3 and prefix + "clicks" in log3.split("newly assigned partitions", 1)[1]
        # every list answers one of our clicks, for the right user
        for r in recs:
            assert r["trigger_event_id"] in triggers and r["trigger_event_id"].startswith(r["user_id"] + "-")

        # no stale state: each session holds exactly the user's clicks, newest first, once each
        keys = Keys(prefix)
        store = aioredis.from_url(redis_url)
        try:
            for u in range(USERS):
                session = await store.hgetall(keys.session(f"s{u}"))
                items = session[b"items"].decode().split(SEP)
                assert items == [item_of(u, k) for k in reversed(range(rounds))], (u, items)
                recent = (await store.get(keys.recent(f"s{u}"))).decode().split(SEP)
                assert recent == items, u
        finally:
            await store.aclose()
    finally:
        if joining is not None and not joining.done():
            late = (await asyncio.gather(joining, return_exceptions=True))[0]
            if isinstance(late, Service):
                workers.append(late)
        for w in workers:
            w.stop()
