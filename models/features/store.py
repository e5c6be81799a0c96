"""The feature-store protocol: a handful of pipelined read and write operations.

Every backend (Redis, in-memory) executes the same small operation vocabulary, so
the recommender speaks to one interface and one contract test-suite covers all
backends. Reads are a list of operations answered in one round trip; writes are a
list of operations applied in one round trip, in order.

Read operations (tuples):

``("get", key)``                        -> bytes | None
``("mget", [keys])``                    -> list[bytes | None], one command for many strings
``("hgetall", key)``                    -> dict[str, str]
``("hmget", key, [fields])``            -> list[str | None]
``("lrange", key, n)``                  -> list[str], newest first, at most n
``("ztop", key, n)``                    -> list[(member, score)], highest first
``("zscores", key, [members])``         -> list[float | None]
``("smembers", key)``                   -> set[str]

Write operations (tuples):

``("set", key, value, ttl_s | None)``   value is bytes or str
``("hset", key, {field: value})``
``("hincr", key, field, amount)``       float increment
``("hdel", key, field)``
``("lpush", key, value, cap)``          push to the front, keep the newest ``cap``
``("lrem", key, value)``                remove every occurrence
``("zincr", key, member, amount)``
``("zrem", key, member)``
``("ztrim", key, keep)``                keep the ``keep`` highest-scored members
``("sadd", key, member)`` / ``("srem", key, member)``
``("delete", key)``
``("expire", key, ttl_s)``

Values come back as ``str`` (hash fields, list and set members) or ``bytes`` (``get``).

>>> import asyncio
>>> from models.features.memory import MemoryStore
>>> s = MemoryStore()
>>> asyncio.run(s.write([("zincr", "pop", "i1", 2.0), ("zincr", "pop", "i2", 5.0)]))
>>> asyncio.run(s.read([("ztop", "pop", 1)]))
[[('i2', 5.0)]]
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

ReadOp = tuple
WriteOp = tuple

READ_OPS = frozenset({"get", "mget", "hgetall", "hmget", "lrange", "ztop", "zscores", "smembers"})
WRITE_OPS = frozenset({"set", "hset", "hincr", "hdel", "lpush", "lrem", "zincr", "zrem", "ztrim",
                       "sadd", "srem", "delete", "expire"})


class StoreError(RuntimeError):
    """The feature store could not be reached or refused an operation."""


@runtime_checkable
class FeatureStore(Protocol):
    """What the recommender needs from a feature store."""

    #: Short name for logs and metrics, e.g. ``redis`` or ``memory``.
    kind: str

    async def read(self, ops: Sequence[ReadOp]) -> list[Any]:
        """Answer every read operation, in order, in one round trip."""

    async def write(self, ops: Sequence[WriteOp]) -> None:
        """Apply every write operation, in order, in one round trip, all or nothing."""

    async def ping(self) -> bool:
        """True when the store answers."""

    async def close(self) -> None:
        """Release connections."""
