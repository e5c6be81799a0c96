"""A short-lived in-process cache of item-side aggregate reads, in front of any store.

The candidate sources read the same hot item-side aggregates over and over: the
co-visitation and next-item zsets of popular items, their session lists, the
popularity ranking. Those aggregates summarise every shopper, so a second of
staleness changes no list in any way a shopper could tell, while reading them
afresh for every list is most of a worker's store traffic. ``ItemSideCache`` answers
such reads from memory for ``ttl_s`` seconds (wall clock) and forwards everything
else — every per-user key, every write — unchanged. Reads of one key issued at the
same time (the lists of one batch are built concurrently) share one store read.

Only ``ztop`` and ``lrange`` of item-side keys (hash tag ``{i:...}``) and of the
popularity zsets are cached; per-user, per-session and dedupe keys never are, so a
shopper always sees the effect of their own last click.

>>> import asyncio
>>> from models.features.memory import MemoryStore
>>> from models.features.keys import Keys
>>> keys, now = Keys(), [0.0]
>>> store = ItemSideCache(MemoryStore(), keys, ttl_s=1.0, clock=lambda: now[0])
>>> async def covis_of_a():
...     return (await store.read([("ztop", keys.covis("a"), 5)]))[0]
>>> asyncio.run(store.write([("zincr", keys.covis("a"), "b", 1.0)]))
>>> asyncio.run(covis_of_a())
[('b', 1.0)]
>>> asyncio.run(store.write([("zincr", keys.covis("a"), "c", 2.0)]))
>>> asyncio.run(covis_of_a())  # within ttl_s: the cached answer
[('b', 1.0)]
>>> now[0] = 1.5
>>> asyncio.run(covis_of_a())
[('c', 2.0), ('b', 1.0)]
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any, Callable, Sequence

from models.features.keys import Keys
from models.features.store import FeatureStore, ReadOp, WriteOp

CACHED_OPS = frozenset({"ztop", "lrange"})


def keep(entries: OrderedDict, key: Any, stamp: float, value: Any, ttl_s: float, size: int) -> None:
    """Store ``(stamp, value)`` under ``key`` at the young end of ``entries``, then drop
    entries from the old end while there are more than ``size`` or the oldest is past
    ``ttl_s``: a cache holds what was read within ``ttl_s``, never more than ``size``.

    >>> d = OrderedDict()
    >>> for t, k in enumerate("abca"): keep(d, k, float(t), k.upper(), ttl_s=2.5, size=10)
    >>> list(d.items())
    [('b', (1.0, 'B')), ('c', (2.0, 'C')), ('a', (3.0, 'A'))]
    >>> keep(d, "d", 4.0, "D", ttl_s=2.5, size=2); list(d)
    ['a', 'd']
    """
    entries.pop(key, None)
    entries[key] = (stamp, value)
    while entries and (len(entries) > size or not 0 <= stamp - next(iter(entries.values()))[0] < ttl_s):
        entries.popitem(last=False)


class ItemSideCache:
    """``FeatureStore`` wrapper; cached answers are shared objects: callers must not
    mutate them (the candidate sources only read them)."""

    def __init__(self, store: FeatureStore, keys: Keys, ttl_s: float = 1.0, max_entries: int = 200_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.kind = store.kind
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._item_tag = f"{keys.prefix}{{i:"
        self._popularity = keys.popularity(0).rsplit(":", 1)[0] + ":"
        #: op -> (when read, answer), oldest first
        self._cache: OrderedDict[ReadOp, tuple[float, Any]] = OrderedDict()
        self._inflight: dict[ReadOp, asyncio.Future] = {}
        self.hits = 0
        self.misses = 0

    def cacheable(self, op: ReadOp) -> bool:
        return op[0] in CACHED_OPS and (op[1].startswith(self._item_tag) or op[1].startswith(self._popularity))

    async def read(self, ops: Sequence[ReadOp]) -> list[Any]:
        now = self.clock()
        out: list[Any] = [None] * len(ops)
        forward: list[int] = []  # positions read from the store by this call
        futures: dict[ReadOp, asyncio.Future] = {}  # cacheable ops this call reads for everyone
        waits: list[tuple[int, asyncio.Future]] = []  # positions another call is reading
        for n, op in enumerate(ops):
            if not self.cacheable(op):
                forward.append(n)
                continue
            hit = self._cache.get(op)
            if hit is not None and now - hit[0] < self.ttl_s:
                out[n] = hit[1]
                self.hits += 1
            elif op in self._inflight:
                waits.append((n, self._inflight[op]))
                self.hits += 1
            else:
                forward.append(n)
                self.misses += 1
                if op not in futures:
                    futures[op] = self._inflight[op] = asyncio.get_running_loop().create_future()
        if forward:
            try:
                got = await self.store.read([ops[n] for n in forward])
            except BaseException as e:
                for op, fut in futures.items():
                    self._inflight.pop(op, None)
                    if isinstance(e, Exception):
                        fut.set_exception(e)  # the calls waiting on this read fail the same way
                        fut.exception()  # marked retrieved: no warning when nobody waits
                    else:
                        fut.cancel()
                raise
            for n, value in zip(forward, got):
                out[n] = value
            if futures:
                stamp = self.clock()
                for n in forward:
                    fut = futures.get(ops[n]) if self.cacheable(ops[n]) else None
                    if fut is not None and not fut.done():
                        keep(self._cache, ops[n], stamp, out[n], self.ttl_s, self.max_entries)
                        fut.set_result(out[n])
                        self._inflight.pop(ops[n], None)
        for n, fut in waits:
            out[n] = await fut
        return out

    async def write(self, ops: Sequence[WriteOp]) -> None:
        await self.store.write(ops)

    async def ping(self) -> bool:
        return await self.store.ping()

    async def close(self) -> None:
        await self.store.close()

    def __getattr__(self, name: str) -> Any:  # anything else a backend offers (e.g. scan)
        return getattr(self.store, name)
