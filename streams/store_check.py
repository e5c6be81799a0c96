"""``streamrec check-store [--repair] [--json]``: the damaged keys of a Redis feature store.

Prints what it found (shopper ids hidden), and with ``--repair`` deletes the damaged
keys (each only if still damaged as it goes: see ``models.features.check``). Exit
status 0 when nothing damaged is left, 1 when some is (to alert on), 2 on bad usage.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TextIO

from tqdm import tqdm

from models.features.check import check_store, repair
from streams.settings import Settings


def _client(url: str):
    import redis.asyncio as aioredis

    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        raise ValueError("check-store reads a Redis store; the in-memory store lives inside one process")
    if scheme.startswith("valkey"):
        url = "redis" + url[len("valkey"):]
    return aioredis.Redis.from_url(url, socket_connect_timeout=5.0)


async def check_and_repair(settings: Settings, *, fix: bool = False, as_json: bool = False,
                           out: TextIO = sys.stdout) -> int:
    client = _client(settings.redis_url)
    try:
        total = await client.dbsize()
        with tqdm(total=total, unit="key", desc="checking", file=sys.stderr, disable=None, leave=False) as bar:
            report = await check_store(client, settings.key_prefix, on_keys=bar.update)
        deleted = left = 0
        if fix and report.damaged:
            deleted, left = await repair(client, report.damaged)
    finally:
        await client.aclose()
    remaining = len(report.damaged) - deleted if fix else len(report.damaged)
    if as_json:
        out.write(json.dumps({**report.as_json(), "repaired": fix, "deleted": deleted,
                              "mended_meanwhile": left}, indent=2) + "\n")
    else:
        ours = report.keys - report.foreign
        out.write(f"checked {report.keys:,} keys under prefix {report.prefix!r} in {report.seconds:.1f} s: "
                  f"{ours:,} streamrec's, {report.foreign:,} not (left alone)\n")
        for name, n in sorted(report.per_family.items(), key=lambda kv: -kv[1]):
            out.write(f"  {n:>10,}  {name}\n")
        out.write(f"damaged: {len(report.damaged):,}\n")
        for d in report.damaged:
            out.write(f"  {d.describe()}\n")
        if fix and report.damaged:
            out.write(f"deleted {deleted:,}; {left:,} mended or gone meanwhile, left as they are\n")
        elif report.damaged:
            out.write("nothing changed; `streamrec check-store --repair` deletes them\n")
    return 1 if remaining else 0


def run_check_store(settings: Settings, *, fix: bool = False, as_json: bool = False) -> int:
    from redis.exceptions import AuthenticationError, ConnectionError, ResponseError, TimeoutError

    try:
        return asyncio.run(check_and_repair(settings, fix=fix, as_json=as_json))
    except (ConnectionError, TimeoutError, AuthenticationError, ResponseError) as e:
        print(f"streamrec check-store: error: the Redis store answered: {e}", file=sys.stderr)
        return 2
