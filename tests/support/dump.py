"""Read a whole feature store back, to compare states."""

from __future__ import annotations

import redis.asyncio as aioredis

from models.features.memory import MemoryStore


async def dump_store(store, prefix: str = "", redis_url: str | None = None) -> dict:
    """Every key under ``prefix`` with its value, in a backend-neutral form."""
    if isinstance(store, MemoryStore):
        out = {}
        for key in store.keys():
            if not key.startswith(prefix):
                continue
            v = store._data[key]
            out[key] = _norm(v)
        return out
    r = aioredis.Redis.from_url(redis_url)
    out = {}
    try:
        async for key in r.scan_iter(match=f"{prefix}*", count=1000):
            k = key.decode()
            t = (await r.type(key)).decode()
            if t == "string":
                out[k] = await r.get(key)
            elif t == "hash":
                out[k] = {a.decode(): _num(b.decode()) for a, b in (await r.hgetall(key)).items()}
            elif t == "zset":
                out[k] = {m.decode(): round(s, 9) for m, s in await r.zrange(key, 0, -1, withscores=True)}
            elif t == "list":
                out[k] = [x.decode() for x in await r.lrange(key, 0, -1)]
            elif t == "set":
                out[k] = {x.decode() for x in await r.smembers(key)}
    finally:
        await r.aclose()
    return out


def _num(v: str):
    try:
        return round(float(v), 9)
    except ValueError:
        return v


def _norm(v):
    if isinstance(v, dict):
        return {a: (round(b, 9) if isinstance(b, float) else _num(b)) for a, b in v.items()}
    if isinstance(v, (set, frozenset)):
        return set(v)
    if isinstance(v, (bytes, str)):
        return v
    return list(v)
