"""A short-lived in-process cache of item-side aggregate reads, in front of any store.

The candidate sources read the same hot item-side aggregates over and over: the
co-visitation and next-item zsets of popular items, their session lists, the
popularity ranking. Reading them afresh for every list is most of a worker's store
traffic. ``ItemSideCache`` answers such reads from memory for ``ttl_s`` seconds of its
clock (the worker gives it a ``ShopClock``: the shop's own time, see there) and
forwards everything else, every per-user key, unchanged. Reads of one key issued at
the same time (the lists of one batch are built concurrently) share one store read.

Writes pass through it too, and it applies this process's own writes to what it
holds (write-through): an ``lpush`` to a cached session list, a ``zincr`` to a cached
top-n, a ``ztrim`` keep the answer exact; any other write to a cached key, or an
increment it cannot place (a member outside a full top-n), drops the answer. So a
shopper always sees the effect of their own last click (their own transitions count
in the next-item zsets at once), and a single worker's lists are exactly those of no
cache at all; only other workers' writes are seen up to ``ttl_s`` late.

Only ``ztop`` and ``lrange`` of item-side keys (hash tag ``{i:...}``) and of the
popularity zsets are cached; per-user, per-session and dedupe keys never are.

>>> import asyncio
>>> from models.features.memory import MemoryStore
>>> from models.features.keys import Keys
>>> keys, now, backend = Keys(), [0.0], MemoryStore()
>>> store = ItemSideCache(backend, keys, ttl_s=1.0, clock=lambda: now[0])
>>> async def covis_of_a():
...     return (await store.read([("ztop", keys.covis("a"), 5)]))[0]
>>> asyncio.run(store.write([("zincr", keys.covis("a"), "b", 1.0)]))
>>> asyncio.run(covis_of_a())
[('b', 1.0)]
>>> asyncio.run(store.write([("zincr", keys.covis("a"), "c", 2.0)]))  # its own write: applied
>>> asyncio.run(covis_of_a())
[('c', 2.0), ('b', 1.0)]
>>> asyncio.run(backend.write([("zincr", keys.covis("a"), "d", 3.0)]))  # another worker's write
>>> asyncio.run(covis_of_a())  # within ttl_s: not seen yet
[('c', 2.0), ('b', 1.0)]
>>> now[0] = 1.5
>>> asyncio.run(covis_of_a())
[('d', 3.0), ('c', 2.0), ('b', 1.0)]
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Sequence

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
        #: op -> (when read, answer), oldest first
        self._cache: OrderedDict[ReadOp, tuple[float, Any]] = OrderedDict()
        self._inflight: dict[ReadOp, asyncio.Future] = {}
        #: reads in flight that a write touched meanwhile: their answers are not kept
        self._stale: set[ReadOp] = set()
        #: read name -> the sizes (n) cached under it, to find what a write touches
        self._sizes: dict[str, set[int]] = {name: set() for name in CACHED_OPS}
        if getattr(store, "write_ahead", None) is not None:  # (else it offers none either)
            self.write_ahead = self._write_ahead
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
                        if ops[n] in self._stale:  # written meanwhile: this answer may predate it
                            self._stale.discard(ops[n])
                        else:
                            keep(self._cache, ops[n], stamp, out[n], self.ttl_s, self.max_entries)
                            self._sizes[ops[n][0]].add(ops[n][2])
                        fut.set_result(out[n])
                        self._inflight.pop(ops[n], None)
        for n, fut in waits:
            out[n] = await fut
        return out

    async def write(self, ops: Sequence[WriteOp]) -> None:
        await self.store.write(ops)
        self.written(ops)

    def _write_ahead(self, ops: Sequence[WriteOp], *, lazy: bool = False) -> Awaitable[None]:
        """The store's ``write_ahead`` (reads issued after it see the write), applied to
        the cached answers at once; should the write fail, the cache is emptied (what
        it applied never landed)."""
        done = self.store.write_ahead(ops, lazy=lazy)
        self.written(ops)
        return self._undone_on_failure(done)

    async def _undone_on_failure(self, done: Awaitable[None]) -> None:
        try:
            await done
        except BaseException:
            self._cache.clear()
            raise

    def written(self, ops: Sequence[WriteOp]) -> None:
        """Bring the cached answers that ``ops`` (written to the store) touch up to date,
        or drop them where that cannot be done exactly."""
        cache, inflight, stale = self._cache, self._inflight, self._stale
        lranges, ztops = self._sizes["lrange"], self._sizes["ztop"]
        item_tag, popularity = self._item_tag, self._popularity
        for op in ops:
            name, key = op[0], op[1]
            if not (key.startswith(item_tag) or key.startswith(popularity)):
                continue
            # the reads a write can touch: an lpush a list's, an increment or trim a zset's
            if name == "zincr" or name == "ztrim":
                reads = [("ztop", key, n) for n in ztops]
            elif name == "lpush":
                reads = [("lrange", key, n) for n in lranges]
            else:
                reads = [("lrange", key, n) for n in lranges] + [("ztop", key, n) for n in ztops]
            for read in reads:
                if inflight and read in inflight:
                    stale.add(read)
                hit = cache.get(read)
                if hit is not None:
                    answer = _after(op, read, hit[1])
                    if answer is None:
                        del cache[read]
                    else:  # in place: it keeps its age (other workers' writes are still up to ttl_s late)
                        cache[read] = (hit[0], answer)

    async def ping(self) -> bool:
        return await self.store.ping()

    async def close(self) -> None:
        await self.store.close()

    def __getattr__(self, name: str) -> Any:  # anything else a backend offers (e.g. scan)
        return getattr(self.store, name)


def _after(write: WriteOp, read: ReadOp, answer: list) -> list | None:
    """``read``'s answer once ``write`` is applied to its key, or None when that cannot
    be told without reading (a new answer: cached answers are shared, never changed).

    >>> _after(("lpush", "k", "s3", 3), ("lrange", "k", 2), ["s2", "s1"])
    ['s3', 's2']
    >>> _after(("zincr", "k", "b", 2.0), ("ztop", "k", 2), [("a", 3.0), ("b", 1.5)])
    [('b', 3.5), ('a', 3.0)]
    >>> _after(("zincr", "k", "c", 1.0), ("ztop", "k", 3), [("a", 3.0), ("b", 1.5)])  # the whole zset
    [('a', 3.0), ('b', 1.5), ('c', 1.0)]
    >>> print(_after(("zincr", "k", "c", 1.0), ("ztop", "k", 2), [("a", 3.0), ("b", 1.5)]))  # c's score unknown
    None
    """
    name, n = write[0], read[2]
    if read[0] == "lrange":
        return [write[2], *answer][:min(n, write[3])] if name == "lpush" else None
    if name == "ztrim":  # keeps the top write[2]: a top-n within them is unchanged
        return answer[:write[2]]
    if name != "zincr":
        return None
    member, inc = write[2], write[3]
    for at, (m, score) in enumerate(answer):
        if m == member:
            break
    else:
        if len(answer) >= n:
            return None  # it was below the top n by an unknown score
        at, score = len(answer), 0.0
    raised = (member, score + inc)
    to = at  # it moves up past those it now outranks (ZREVRANGE's order: score, then member)
    while to and _by_score_then_member(answer[to - 1]) < _by_score_then_member(raised):
        to -= 1
    return [*answer[:to], raised, *answer[to:at], *answer[at + 1:]][:n]


def _by_score_then_member(item: tuple[str, float]) -> tuple[float, str]:
    """Redis ZREVRANGE's order: highest score first, ties by member descending."""
    return (item[1], item[0])
