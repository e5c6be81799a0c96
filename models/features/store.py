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
A key holding another kind of value than an operation needs raises ``StoreDataError``
(a write then applies none of its operations).

>>> import asyncio
>>> from models.features.memory import MemoryStore
>>> s = MemoryStore()
>>> asyncio.run(s.write([("zincr", "pop", "i1", 2.0), ("zincr", "pop", "i2", 5.0)]))
>>> asyncio.run(s.read([("ztop", "pop", 1)]))
[[('i2', 5.0)]]
"""

from __future__ import annotations

import re
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

ReadOp = tuple
WriteOp = tuple

READ_OPS = frozenset({"get", "mget", "hgetall", "hmget", "lrange", "ztop", "zscores", "smembers"})
WRITE_OPS = frozenset({"set", "hset", "hincr", "hdel", "lpush", "lrem", "zincr", "zrem", "ztrim",
                       "sadd", "srem", "delete", "expire"})


class StoreError(RuntimeError):
    """The feature store could not be reached or refused an operation."""


class StoreDataError(ValueError):
    """A key holds another kind of value than an operation needs (a hash where a
    sorted set belongs, text in a counter): written by something else, or damaged.

    Not a ``StoreError``: the store answers, and asking again cannot help, so the
    worker does not wait for it but isolates the events whose keys are damaged and
    sends them to ``dead-letter`` with this message. A write refused for it applies
    nothing (``first_misfit`` is checked before any operation runs).
    """


#: the kind of value (Redis ``TYPE`` names) each write operation needs its key to hold
#: when the key exists; ``set`` and ``delete`` replace whatever is there, ``expire`` takes any
WRITE_NEEDS = {"zincr": "zset", "ztrim": "zset", "zrem": "zset", "lpush": "list", "lrem": "list",
               "hincr": "hash", "hset": "hash", "hdel": "hash", "sadd": "set", "srem": "set"}
#: the same for reads (``mget`` answers nothing for a key of another kind, as Redis does)
READ_NEEDS = {"get": "string", "hgetall": "hash", "hmget": "hash", "lrange": "list",
              "ztop": "zset", "zscores": "zset", "smembers": "set"}

_USER_TAG = re.compile(r"\{u:[^}]*\}")


def key_for_humans(key: str) -> str:
    """``key`` with the shopper id in its hash tag hidden, for logs and dead-letter reasons.

    >>> key_for_humans("shop1:{u:alice}:cart")
    'shop1:{u:…}:cart'
    """
    return _USER_TAG.sub("{u:…}", key)


def counts_as_number(value: Any) -> bool:
    """Whether an increment can add to a stored hash field's ``value`` (absent, or a number).

    >>> [counts_as_number(v) for v in (None, 2.0, "1.5", b"3", "abc")]
    [True, True, True, True, False]
    """
    if value is None or value.__class__ is float:
        return True
    try:
        float(value)
    except ValueError:
        return False
    return True


def first_misfit(ops: Sequence[WriteOp], kind_of: Callable[[str], str],
                 is_number: Callable[[str, str], bool]) -> str | None:
    """Why ``ops`` cannot all be applied, or None: the first operation whose key holds
    another kind of value than it needs (as left by the operations before it in
    ``ops``), or whose increment meets a hash field that is not a number.

    ``kind_of(key)`` answers the stored key's kind by Redis's ``TYPE`` names (``none``
    when absent), ``is_number(key, field)`` whether a stored hash field can be
    incremented (True when absent). Every backend checks this before applying
    anything, which is what makes a write all or nothing; Redis's write script runs
    the same check in Lua.

    >>> kinds = {"k": "string"}
    >>> first_misfit([("zincr", "k", "a", 1.0)], lambda k: kinds.get(k, "none"), lambda k, f: True)
    'k holds a string; zincr needs a zset'
    >>> first_misfit([("delete", "k"), ("zincr", "k", "a", 1.0)], lambda k: kinds.get(k, "none"),
    ...              lambda k, f: True) is None
    True
    """
    kinds: dict[str, str] = {}  # each key's kind as the operations before leave it
    stored: dict[str, str] = {}  # each key's kind in the store, where asked
    replaced: set[str] = set()  # keys set or deleted earlier in ops: their stored fields are gone
    for op in ops:
        name, key = op[0], op[1]
        need = WRITE_NEEDS.get(name)
        if need is not None:
            if key not in kinds:
                kinds[key] = stored[key] = kind_of(key)
            kind = kinds[key]
            if kind != "none" and kind != need:
                return f"{key_for_humans(key)} holds a {kind}; {name} needs a {need}"
            if name == "hincr" and stored.get(key) == "hash" and key not in replaced and not is_number(key, op[2]):
                return f"{key_for_humans(key)} field {op[2]} is not a number; hincr adds to numbers"
            kinds[key] = need
        elif name == "set":
            kinds[key] = "string"
            replaced.add(key)
        elif name == "delete":
            kinds[key] = "none"
            replaced.add(key)
    return None


@runtime_checkable
class FeatureStore(Protocol):
    """What the recommender needs from a feature store."""

    #: Short name for logs and metrics, e.g. ``redis`` or ``memory``.
    kind: str

    async def read(self, ops: Sequence[ReadOp]) -> list[Any]:
        """Answer every read operation, in order, in one round trip."""

    async def write(self, ops: Sequence[WriteOp]) -> None:
        """Apply every write operation, in order, in one round trip, all or nothing
        (``StoreDataError`` when a key holds the wrong kind of value: nothing applied)."""

    async def ping(self) -> bool:
        """True when the store answers."""

    async def close(self) -> None:
        """Release connections."""
