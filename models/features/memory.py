"""In-memory feature store: the twin of the Redis backend, for replay and tests.

Same operations, same answers (the contract suite in ``tests/test_store_contract.py``
runs against both). Not shared between processes; TTLs follow the injected clock.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from typing import Any, Callable, Sequence

from models.features.store import (READ_NEEDS, WRITE_OPS, ReadOp, StoreDataError, StoreError, WriteOp,
                                   counts_as_number, first_misfit, key_for_humans)


class _ZSet(dict):
    """member -> score"""


class _Hash(dict):
    """field -> value"""


#: Redis's TYPE name of each kind of value this store keeps
_KIND = {bytes: "string", _ZSet: "zset", _Hash: "hash", deque: "list", set: "set"}


def _s(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, float):
        return repr(v)
    return str(v)


class MemoryStore:
    kind = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, Any] = {}
        self._expiry: dict[str, float] = {}
        self._clock = clock

    # -- helpers -----------------------------------------------------------------
    def _live(self, key: str) -> Any:
        if self._expiry:
            exp = self._expiry.get(key)
            if exp is not None and exp <= self._clock():
                self._data.pop(key, None)
                self._expiry.pop(key, None)
                return None
        return self._data.get(key)

    def _typed(self, key: str, kind: type) -> Any:
        v = self._live(key)
        if v is None:
            v = kind()
            self._data[key] = v
        return v

    def _kind(self, key: str) -> str:
        v = self._live(key)
        return "none" if v is None else _KIND[type(v)]

    def _is_number(self, key: str, field: str) -> bool:
        return counts_as_number(self._data[key].get(field))

    # -- protocol ----------------------------------------------------------------
    async def read(self, ops: Sequence[ReadOp]) -> list[Any]:
        return [self._read_one(op) for op in ops]

    def _read_one(self, op: ReadOp) -> Any:
        name, key = op[0], op[1]
        if name == "mget":
            return [v if v.__class__ is bytes else None for v in map(self._live, key)]
        v = self._live(key)
        if v is not None and _KIND[type(v)] != READ_NEEDS.get(name, "?"):
            if name not in READ_NEEDS:
                raise StoreError(f"unknown read operation {name!r}")
            raise StoreDataError(f"{key_for_humans(key)} holds a {_KIND[type(v)]}; {name} needs a {READ_NEEDS[name]}")
        if name == "lrange":
            return list(v)[: op[2]] if v else []
        if name == "hgetall":
            return {f: x if x.__class__ is str else _s(x) for f, x in v.items()} if v else {}
        if name == "ztop":
            if not v:
                return []
            return _ztop(v, op[2])
        if name == "get":
            return v
        if name == "hmget":
            got = [v.get(f) if v else None for f in op[2]]
            return [x if x is None or x.__class__ is str else _s(x) for x in got]
        if name == "zscores":
            return [None if not v or m not in v else float(v[m]) for m in op[2]]
        if name == "smembers":
            return set(v) if v else set()
        raise StoreError(f"unknown read operation {name!r}")

    async def write(self, ops: Sequence[WriteOp]) -> None:
        unknown = next((op[0] for op in ops if op[0] not in WRITE_OPS), None)
        if unknown is not None:
            raise StoreError(f"unknown write operation {unknown!r}")
        misfit = first_misfit(ops, self._kind, self._is_number)
        if misfit is not None:
            raise StoreDataError(misfit)
        for op in ops:
            self._write_one(op)

    def _write_one(self, op: WriteOp) -> None:
        name, key = op[0], op[1]
        if name == "zincr":
            z = self._typed(key, _ZSet)
            z[op[2]] = z.get(op[2], 0.0) + op[3]
        elif name == "lpush":
            lst = self._live(key)
            if lst is None or lst.maxlen != op[3]:
                lst = deque(lst or (), maxlen=op[3])
                self._data[key] = lst
            lst.appendleft(_s(op[2]))
        elif name == "hincr":  # kept as a float here, answered as text like Redis
            h = self._typed(key, _Hash)
            h[op[2]] = float(h.get(op[2], 0.0)) + op[3]
        elif name == "hset":
            self._typed(key, _Hash).update({f: _s(v) for f, v in op[2].items()})
        elif name == "set":
            value = op[2].encode() if isinstance(op[2], str) else bytes(op[2])
            self._data[key] = value
            self._set_ttl(key, op[3])
        elif name == "ztrim":
            z = self._live(key)
            if z and len(z) > op[2]:
                self._data[key] = _ZSet(_ztop(z, op[2]))
        elif name == "zrem":
            z = self._live(key)
            if z:
                z.pop(op[2], None)
        elif name == "hdel":
            h = self._live(key)
            if h:
                h.pop(op[2], None)
        elif name == "lrem":
            lst = self._live(key)
            if lst:
                kept = [x for x in lst if x != _s(op[2])]
                lst.clear()
                lst.extend(kept)
        elif name == "sadd":
            self._typed(key, set).add(_s(op[2]))
        elif name == "srem":
            st = self._live(key)
            if st:
                st.discard(_s(op[2]))
        elif name == "delete":
            self._data.pop(key, None)
            self._expiry.pop(key, None)
        elif name == "expire":
            if self._live(key) is not None:
                self._set_ttl(key, op[2])
        else:
            raise StoreError(f"unknown write operation {name!r}")
        if name in ("zrem", "hdel", "lrem", "srem", "ztrim"):
            v = self._data.get(key)
            if v is not None and not v:
                self._data.pop(key, None)

    def _set_ttl(self, key: str, ttl: float | None) -> None:
        if ttl:
            self._expiry[key] = self._clock() + ttl
        else:
            self._expiry.pop(key, None)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    # -- introspection for tests and forget audits ---------------------------------
    def keys(self) -> list[str]:
        return [k for k in list(self._data) if self._live(k) is not None]


def _ztop(z: dict[str, float], n: int) -> list[tuple[str, float]]:
    """Highest score first; ties by member descending, as Redis ZREVRANGE orders them."""
    if n >= len(z):
        return sorted(z.items(), key=_by_score_then_member, reverse=True)
    return heapq.nlargest(n, z.items(), key=_by_score_then_member)


def _by_score_then_member(item: tuple[str, float]) -> tuple[float, str]:
    return (item[1], item[0])
