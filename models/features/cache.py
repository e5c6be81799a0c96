"""A short-lived in-process cache of item-side aggregate reads, in front of any store.

The candidate sources read the same hot item-side aggregates over and over: the
co-visitation and next-item zsets of popular items, their session lists, the
popularity ranking. Those aggregates summarise every shopper, so a second of the
shop's time changes no list in a way a shopper could tell, while reading them afresh
for every list is most of a worker's store traffic. ``ItemSideCache`` answers such
reads from memory for ``ttl_s`` seconds of its clock (the worker gives it a
``ShopClock``: the shop's own time, so a backlog drained in a moment does not serve
minutes-old answers) and forwards everything else, every per-user key, every write,
unchanged. Reads of one key issued at the same time (the lists of one batch are
built concurrently) share one store read, and a read of fewer items than a cached
answer holds gets its head.

Only ``ztop`` and ``lrange`` of item-side keys (hash tag ``{i:...}``) and of the
popularity zsets are cached; per-user, per-session and dedupe keys never are.

>>> import asyncio
>>> from models.features.memory import MemoryStore
>>> from models.features.keys import Keys
>>> keys, now = Keys(), [0.0]
>>> store = ItemSideCache(MemoryStore(), keys, ttl_s=1.0, clock=lambda: now[0])
>>> async def covis_of_a(n=5):
...     return (await store.read([("ztop", keys.covis("a"), n)]))[0]
>>> asyncio.run(store.write([("zincr", keys.covis("a"), "b", 1.0), ("zincr", keys.covis("a"), "c", 2.0)]))
>>> asyncio.run(covis_of_a())
[('c', 2.0), ('b', 1.0)]
>>> asyncio.run(store.write([("zincr", keys.covis("a"), "d", 3.0)]))
>>> asyncio.run(covis_of_a(1))  # within ttl_s: the cached answer's head
[('c', 2.0)]
>>> now[0] = 1.5
>>> asyncio.run(covis_of_a())
[('d', 3.0), ('c', 2.0), ('b', 1.0)]
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


class ShopClock:
    """Seconds that run with the wall clock and never fall behind the events' own time.

    A cache of what the shop did should expire by the shop's time: in a live shop the
    events' timestamps and the wall clock agree, but a worker draining a backlog, or a
    simulation that plays minutes of visits in seconds, sees event time run far faster
    than the wall clock, and a wall-clock TTL then serves answers many event-minutes
    old. This clock is the later of the two: ``advance`` with each batch's latest event
    time moves it forward when the events are ahead of it; between batches, and when
    events are late (old events, a stalled stream), it runs with the wall clock, so an
    answer is never kept longer than ``ttl_s`` of either. It never goes back.
    (A storefront clock running ahead moves it ahead once: the cache then expires
    everything once and runs on; event timestamps are validated to at most a day ahead.)

    >>> wall = [100.0]
    >>> clock = ShopClock(wall=lambda: wall[0])
    >>> clock.advance(5_000.0); clock()  # events ahead of it: their time
    5000.0
    >>> wall[0] += 2.0; clock()  # between batches: the wall clock's pace
    5002.0
    >>> clock.advance(4_000.0); clock()  # late events never move it back
    5002.0
    >>> clock.advance(5_060.0); clock()  # a minute of shop time in a moment
    5060.0
    """

    def __init__(self, wall: Callable[[], float] = time.monotonic) -> None:
        self._wall = wall
        self._base, self._at = 0.0, wall()  # the reading at the last jump, and the wall time then

    def __call__(self) -> float:
        return self._base + (self._wall() - self._at)

    def advance(self, event_ts: float) -> None:
        """Move the clock to ``event_ts`` if that is later than it reads now."""
        if event_ts > self():
            self._base, self._at = event_ts, self._wall()


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
        #: (read, key) -> (when read, (n read, answer)), oldest first: one answer per key,
        #: the longest asked for; a read of fewer gets its head (the sources ask for a
        #: number that varies with the shopper: more when more items are excluded)
        self._cache: OrderedDict[tuple[str, str], tuple[float, tuple[int, Any]]] = OrderedDict()
        #: (read, key) -> (n, future) of a read under way
        self._inflight: dict[tuple[str, str], tuple[int, asyncio.Future]] = {}
        self.hits = 0
        self.misses = 0

    def cacheable(self, op: ReadOp) -> bool:
        return op[0] in CACHED_OPS and (op[1].startswith(self._item_tag) or op[1].startswith(self._popularity))

    async def read(self, ops: Sequence[ReadOp]) -> list[Any]:
        now = self.clock()
        out: list[Any] = [None] * len(ops)
        forward: list[int] = []  # positions read from the store by this call
        reading: list[tuple[int, tuple[str, str], asyncio.Future]] = []  # ...that others may wait on
        waits: list[tuple[int, int, asyncio.Future]] = []  # positions another call is reading
        for i, op in enumerate(ops):
            if not self.cacheable(op):
                forward.append(i)
                continue
            slot, n = (op[0], op[1]), op[2]
            hit = self._cache.get(slot)
            if hit is not None and now - hit[0] < self.ttl_s and (n <= hit[1][0] or len(hit[1][1]) < hit[1][0]):
                answer = hit[1][1]  # (shorter than read: the whole list, whatever n)
                out[i] = answer[:n] if n < len(answer) else answer
                self.hits += 1
                continue
            flying = self._inflight.get(slot)
            if flying is not None and n <= flying[0]:
                waits.append((i, n, flying[1]))
                self.hits += 1
                continue
            forward.append(i)
            self.misses += 1
            fut = asyncio.get_running_loop().create_future()
            self._inflight[slot] = (n, fut)
            reading.append((i, slot, fut))
        if forward:
            try:
                got = await self.store.read([ops[i] for i in forward])
            except BaseException as e:
                for _, slot, fut in reading:
                    if self._inflight.get(slot, (0, None))[1] is fut:
                        del self._inflight[slot]
                    if isinstance(e, Exception):
                        fut.set_exception(e)  # the calls waiting on this read fail the same way
                        fut.exception()  # marked retrieved: no warning when nobody waits
                    else:
                        fut.cancel()
                raise
            for i, value in zip(forward, got):
                out[i] = value
            stamp = self.clock()
            for i, slot, fut in reading:
                if self._inflight.get(slot, (0, None))[1] is fut:
                    del self._inflight[slot]
                n, old = ops[i][2], self._cache.get(slot)
                if old is None or stamp - old[0] >= self.ttl_s or n >= old[1][0]:
                    keep(self._cache, slot, stamp, (n, out[i]), self.ttl_s, self.max_entries)
                fut.set_result(out[i])
        for i, n, fut in waits:
            answer = await fut
            out[i] = answer[:n] if n < len(answer) else answer
        return out

    async def write(self, ops: Sequence[WriteOp]) -> None:
        await self.store.write(ops)

    async def ping(self) -> bool:
        return await self.store.ping()

    async def close(self) -> None:
        await self.store.close()

    def __getattr__(self, name: str) -> Any:  # anything else a backend offers (e.g. scan)
        return getattr(self.store, name)
