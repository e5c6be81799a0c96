"""Redis backend of the feature store: redis.asyncio, one round trip per call.

A write's operations, however many, go as one ``EVALSHA`` of a small Lua script
(``WRITE_SCRIPT``) that applies them in order, atomically: one command to pack and
one reply to parse. Where the server or the ACL user refuses scripts, the store logs
it once and sends the same operations as a MULTI/EXEC from then on. Reads go as one
pipeline.

Works with Redis and Valkey. Keys of one user share a hash tag (see
``models.features.keys``), but a batch touches many users and items, so one store
is one server (or a primary with replicas), not a Redis Cluster. Connection errors
and timeouts surface as ``StoreError``; retries are the caller's policy.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Sequence

import redis.asyncio as aioredis
from redis.connection import HiredisRespSerializer
from redis.exceptions import NoPermissionError, RedisError, ResponseError
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


log = logging.getLogger("streamrec.store")

#: Applies a batch of write operations in order, as one atomic command. ARGV is the
#: operations flattened: name, key, then the name's operands (``_script_args``).
WRITE_SCRIPT = """
local a, i, n, call = ARGV, 1, #ARGV, redis.call
while i <= n do
  local op, key = a[i], a[i + 1]
  if op == 'zincr' then call('ZINCRBY', key, a[i + 3], a[i + 2]); i = i + 4
  elseif op == 'set' then
    if a[i + 3] == '0' then call('SET', key, a[i + 2]) else call('SET', key, a[i + 2], 'EX', a[i + 3]) end
    i = i + 4
  elseif op == 'lpush' then call('LPUSH', key, a[i + 2]); call('LTRIM', key, 0, tonumber(a[i + 3]) - 1); i = i + 4
  elseif op == 'hincr' then call('HINCRBYFLOAT', key, a[i + 2], a[i + 3]); i = i + 4
  elseif op == 'hset' then
    local pairs_ = tonumber(a[i + 2])
    local j, last = i + 3, i + 2 + 2 * pairs_
    while j <= last do  -- in slices: unpack's stack is bounded
      local upto = math.min(j + 199, last)
      call('HSET', key, unpack(a, j, upto))
      j = upto + 1
    end
    i = last + 1
  elseif op == 'delete' then call('DEL', key); i = i + 2
  elseif op == 'ztrim' then call('ZREMRANGEBYRANK', key, 0, -(tonumber(a[i + 2]) + 1)); i = i + 3
  elseif op == 'lrem' then call('LREM', key, 0, a[i + 2]); i = i + 3
  elseif op == 'zrem' then call('ZREM', key, a[i + 2]); i = i + 3
  elseif op == 'hdel' then call('HDEL', key, a[i + 2]); i = i + 3
  elseif op == 'sadd' then call('SADD', key, a[i + 2]); i = i + 3
  elseif op == 'srem' then call('SREM', key, a[i + 2]); i = i + 3
  elseif op == 'expire' then call('EXPIRE', key, a[i + 2]); i = i + 3
  else return redis.error_reply('unknown write operation ' .. tostring(op)) end
end
return i - 1
"""

#: read operations over a list of keys or members
_MANY = frozenset({"mget", "hmget", "zscores"})

#: write operations of one operand that map to one command
_SIMPLE = {"zrem": "ZREM", "hdel": "HDEL", "sadd": "SADD", "srem": "SREM"}


class CommandRefused(StoreError):
    """The server refuses a command: it does not know it, or the ACL denies it."""


def _ttl(seconds: float) -> int:
    return max(1, int(seconds))


def _script_args(ops: Sequence[WriteOp]) -> list[Any]:
    """``ops`` flattened into ``WRITE_SCRIPT``'s ARGV.

    >>> _script_args([("set", "k", b"v", None), ("hset", "h", {"a": "1"}), ("delete", "x")])
    ['set', 'k', b'v', 0, 'hset', 'h', 1, 'a', '1', 'delete', 'x']
    """
    args: list[Any] = []
    extend = args.extend
    for op in ops:
        name = op[0]
        if name in ("zincr", "hincr", "lpush"):
            extend(op)
        elif name == "set":
            extend((name, op[1], op[2], _ttl(op[3]) if op[3] else 0))
        elif name == "hset":
            fields = op[2]
            extend((name, op[1], len(fields)))
            for kv in fields.items():
                extend(kv)
        elif name == "delete":
            extend(op[:2])
        elif name == "expire":
            extend((name, op[1], _ttl(op[2])))
        elif name in _SIMPLE or name in ("ztrim", "lrem"):
            extend(op[:3])
        else:
            raise StoreError(f"unknown write operation {name!r}")
    return args


def _answer(op: ReadOp, v: Any) -> Any:
    """A read operation's answer in the store protocol's types, from redis-py's."""
    name = op[0]
    if name in ("get", "mget"):
        return v
    if name == "lrange" or name == "hmget":
        return [_str(x) for x in v]
    if name == "hgetall":
        return {_str(k): _str(x) for k, x in v.items()}
    if name == "ztop":
        return [(_str(m), float(s)) for m, s in v]
    if name == "zscores":
        return [None if x is None else float(x) for x in v]
    return {_str(x) for x in v}


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
        self._script: Any = client.register_script(WRITE_SCRIPT)

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
        """Every answer in one round trip (a pipeline: reads with long answers, such as
        a session index, come back faster than through a script, which would convert
        every element into Lua and back)."""
        pipe = self._r.pipeline(transaction=False)
        for op in ops:
            name, key = op[0], op[1]
            if name in _MANY and not op[-1]:
                continue  # nothing to ask (the server refuses an MGET of no keys)
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
        raw = iter(await self._execute(pipe))
        return [_answer(op, [] if op[0] in _MANY and not op[-1] else next(raw)) for op in ops]

    async def write(self, ops: Sequence[WriteOp]) -> None:
        """Apply ``ops`` in order and atomically: a batch's effects and its dedupe
        markers land together or not at all, which makes redelivery harmless.

        The whole batch goes as one ``EVALSHA`` of ``WRITE_SCRIPT`` (one command to
        pack and one reply to parse, however many operations); a server without
        scripting gets the same operations as a MULTI/EXEC pipeline.
        """
        if not ops:
            return
        if self._script is not None:
            try:
                await self._guard(self._script(args=_script_args(ops)))
                return
            except CommandRefused as e:  # no scripting on this server, or not for this user
                log.warning("%s; writes go as MULTI/EXEC pipelines from now on", e)
                self._script = None
        pipe = self._r.pipeline(transaction=True)
        cmd = pipe.execute_command  # raw: redis-py's per-command wrappers cost more than packing
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
                    cmd("SET", key, op[2], "EX", _ttl(op[3]))
                else:
                    cmd("SET", key, op[2])
            elif name == "ztrim":
                cmd("ZREMRANGEBYRANK", key, 0, -(op[2] + 1))
            elif name == "lrem":
                cmd("LREM", key, 0, op[2])
            elif name in _SIMPLE:
                cmd(_SIMPLE[name], key, op[2])
            elif name == "delete":
                cmd("DEL", key)
            elif name == "expire":
                cmd("EXPIRE", key, _ttl(op[2]))
            else:
                raise StoreError(f"unknown write operation {name!r}")
        await self._execute(pipe)

    async def _execute(self, pipe: Any) -> list[Any]:
        return await self._guard(pipe.execute())

    async def _guard(self, call: Any) -> Any:
        """Await a call to Redis within the deadline, its failures as ``StoreError``."""
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except asyncio.TimeoutError:
            raise StoreError(f"redis: no answer within {self.timeout_s}s") from None
        except (NoPermissionError, ResponseError) as e:
            if isinstance(e, NoPermissionError) or "unknown command" in str(e).lower():
                raise CommandRefused(f"redis: {type(e).__name__}: {str(e)[:200]}") from None
            raise StoreError(f"redis: {type(e).__name__}: {str(e)[:200]}") from None
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
