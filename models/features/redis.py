"""Redis backend of the feature store: redis.asyncio, one pipeline per call.

Works with Redis, Valkey and Redis Cluster-compatible key layouts (keys of one
user share a hash tag, see ``models.features.keys``). Connection errors and
timeouts surface as ``StoreError``; retries are the caller's policy.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import redis.asyncio as aioredis
from redis.connection import HiredisRespSerializer
from redis.exceptions import RedisError
from redis.utils import HIREDIS_AVAILABLE

from models.features.store import ReadOp, StoreError, WriteOp


def _hiredis_packing(connection_class: type) -> type:
    """``connection_class`` packing commands with hiredis (C), as redis-py's synchronous
    client already does; its asyncio client packs in Python, which is most of the cost
    of a pipeline of small commands."""
    if not HIREDIS_AVAILABLE:
        return connection_class
    packer = HiredisRespSerializer()
    return type(f"Hiredis{connection_class.__name__}", (connection_class,),
                {"pack_command": lambda self, *args: packer.pack(*args)})


def _str(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


class RedisStore:
    """Reads issued concurrently (e.g. by ``asyncio.gather`` over a batch's
    recommendations) are coalesced into one pipeline per event-loop turn, so a batch
    costs a few round trips and a single connection, however many lists it builds."""

    kind = "redis"
    #: Most operations sent in one coalesced pipeline.
    MAX_PIPELINE_OPS = 20_000

    def __init__(self, client: aioredis.Redis, timeout_s: float = 2.0) -> None:
        self._r = client
        self.timeout_s = timeout_s
        self._pending: list[tuple[Sequence[ReadOp], asyncio.Future]] = []
        self._flushing = False

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 2.0, **kwargs: Any) -> "RedisStore":
        """Connect lazily to ``redis://`` or ``rediss://`` (TLS); extra kwargs go to redis-py."""
        # One deadline per pipeline (``_execute``) instead of redis-py's per-reply socket
        # timeout, whose bookkeeping costs more than parsing the reply itself.
        client = aioredis.Redis.from_url(
            url, socket_timeout=None, socket_connect_timeout=timeout_s,
            health_check_interval=30, protocol=2, **kwargs)
        pool = client.connection_pool
        pool.connection_class = _hiredis_packing(pool.connection_class)
        return cls(client, timeout_s)

    async def read(self, ops: Sequence[ReadOp]) -> list[Any]:
        if not ops:
            return []
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((ops, fut))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush_reads()))
        return await fut

    async def _flush_reads(self) -> None:
        try:
            while self._pending:
                batch, size = [], 0
                while self._pending and (not batch or size + len(self._pending[0][0]) <= self.MAX_PIPELINE_OPS):
                    ops, fut = self._pending.pop(0)
                    batch.append((ops, fut))
                    size += len(ops)
                try:
                    flat = await self._read_now([op for ops, _ in batch for op in ops])
                except BaseException as e:  # noqa: BLE001 - handed to every waiting reader
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e if isinstance(e, Exception) else StoreError(repr(e)))
                    if not isinstance(e, Exception):
                        raise
                    continue
                pos = 0
                for ops, fut in batch:
                    if not fut.done():
                        fut.set_result(flat[pos:pos + len(ops)])
                    pos += len(ops)
        finally:
            self._flushing = False

    async def _read_now(self, ops: Sequence[ReadOp]) -> list[Any]:
        pipe = self._r.pipeline(transaction=False)
        for op in ops:
            name, key = op[0], op[1]
            if name == "lrange":
                pipe.lrange(key, 0, op[2] - 1)
            elif name == "hgetall":
                pipe.hgetall(key)
            elif name == "ztop":
                pipe.zrevrange(key, 0, op[2] - 1, withscores=True)
            elif name == "get":
                pipe.get(key)
            elif name == "mget":
                pipe.mget(key)
            elif name == "hmget":
                pipe.hmget(key, op[2])
            elif name == "zscores":
                pipe.zmscore(key, op[2])
            elif name == "smembers":
                pipe.smembers(key)
            else:
                raise StoreError(f"unknown read operation {name!r}")
        raw = await self._execute(pipe)
        out: list[Any] = []
        for op, v in zip(ops, raw):
            name = op[0]
            if name == "lrange":
                out.append([_str(x) for x in v])
            elif name == "hgetall":
                out.append({_str(k): _str(x) for k, x in v.items()})
            elif name == "ztop":
                out.append([(_str(m), float(s)) for m, s in v])
            elif name in ("get", "mget"):
                out.append(v)
            elif name == "hmget":
                out.append([_str(x) for x in v])
            elif name == "zscores":
                out.append([None if x is None else float(x) for x in v])
            else:
                out.append({_str(x) for x in v})
        return out

    async def write(self, ops: Sequence[WriteOp]) -> None:
        """Apply ``ops`` atomically (MULTI/EXEC): a batch's effects and its dedupe
        markers land together or not at all, which makes redelivery harmless."""
        if not ops:
            return
        pipe = self._r.pipeline(transaction=True)
        cmd = pipe.execute_command  # the hot commands raw: redis-py's wrappers cost more than packing
        for op in ops:
            name, key = op[0], op[1]
            if name == "zincr":
                cmd("ZINCRBY", key, op[3], op[2])
            elif name == "lpush":
                cmd("LPUSH", key, op[2])
                cmd("LTRIM", key, 0, op[3] - 1)
            elif name == "hincr":
                cmd("HINCRBYFLOAT", key, op[2], op[3])
            elif name == "hset":
                if op[2]:
                    cmd("HSET", key, *[x for kv in op[2].items() for x in kv])
            elif name == "set":
                if op[3]:
                    cmd("SET", key, op[2], "EX", int(op[3]))
                else:
                    cmd("SET", key, op[2])
            elif name == "ztrim":
                pipe.zremrangebyrank(key, 0, -(op[2] + 1))
            elif name == "zrem":
                pipe.zrem(key, op[2])
            elif name == "hdel":
                pipe.hdel(key, op[2])
            elif name == "lrem":
                pipe.lrem(key, 0, op[2])
            elif name == "sadd":
                pipe.sadd(key, op[2])
            elif name == "srem":
                pipe.srem(key, op[2])
            elif name == "delete":
                pipe.delete(key)
            elif name == "expire":
                pipe.expire(key, int(op[2]))
            else:
                raise StoreError(f"unknown write operation {name!r}")
        await self._execute(pipe)

    async def _execute(self, pipe: Any) -> list[Any]:
        try:
            return await asyncio.wait_for(pipe.execute(), self.timeout_s)
        except asyncio.TimeoutError:
            raise StoreError(f"redis: no answer within {self.timeout_s}s") from None
        except (RedisError, OSError) as e:
            # The message never carries the URL (it may hold a password).
            raise StoreError(f"redis: {type(e).__name__}: {str(e)[:200]}") from None

    async def ping(self) -> bool:
        try:
            return bool(await self._r.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._r.aclose()
