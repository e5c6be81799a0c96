"""Session-kNN (V-SKNN / STAN style): items from past sessions that resemble this one.

Item-side index in the feature store: ``item_sessions(item)`` lists the most recent
sessions that touched the item (newest first, capped); the pipeline keeps every
session's items in ``session_items(session)``. Recommending takes two pipelined
reads:

1. the session lists of the current session's items. A past session's similarity
   is the sum of the position weights ``exp(-age / position_decay)`` of the current
   items it shares (``age`` 0 = the item just clicked), computed straight from those
   lists (an inverted index, so no neighbour has to be read to be compared);
2. the items of the ``neighbours`` most similar sessions. Each neighbour's items
   score ``similarity * exp(-distance / neighbour_decay)``, ``distance`` counted in
   clicks from where the neighbour met the current session's most recent item
   (STAN's third weight), and optionally divided by ``popularity ** idf``.

Scores are returned normalised to the best one (1.0), so sources blend on one scale.

>>> import asyncio
>>> from models.features.memory import MemoryStore
>>> from models.features.keys import Keys
>>> from models.candidates import Context
>>> store, keys = MemoryStore(), Keys()
>>> knn = SessionKNN(store, keys)
>>> async def click(sid, items, item):
...     ctx = Context("u", 0.0, list(items), [], session_id=sid)
...     now = [item, *items]
...     await store.write(knn.observe(ctx, item, 1.0, 0.0) + [("set", keys.session_items(sid), "\x1f".join(now), None)])
>>> async def play():
...     for sid, items in (("s1", "abc"), ("s2", "abd"), ("s3", "xbe")):
...         for i, item in enumerate(items):
...             await click(sid, items[:i][::-1], item)
...     return await knn.propose(Context("u", 0.0, ["b", "a"], [], session_id="now"), 3)
>>> [(i, round(s, 2)) for i, s, _ in asyncio.run(play())]
[('b', 1.0), ('a', 0.46), ('d', 0.23)]
"""

from __future__ import annotations

import math
import operator
import sys
from collections import OrderedDict

from models.candidates import Context
from models.features.cache import keep
from models.features.keys import Keys
from models.features.store import FeatureStore, WriteOp


class SessionKNN:
    name = "session_knn"

    def __init__(self, store: FeatureStore, keys: Keys, *, index_cap: int = 200, sample: int = 200,
                 neighbours: int = 100, anchors: int = 10, position_decay: float = 2.0,
                 neighbour_decay: float = 2.0, session_cap: int = 30, cache_s: float = 30.0,
                 cache_size: int = 100_000) -> None:
        self.store, self.keys = store, keys
        #: sessions remembered per item; sessions read per anchor item
        self.index_cap, self.sample = index_cap, min(sample, index_cap)
        self.neighbours, self.anchors = neighbours, anchors
        self.position_decay, self.neighbour_decay = position_decay, neighbour_decay
        self.session_cap = session_cap
        # exp(-d / decay) for small distances, computed once
        near = [math.exp(-d / neighbour_decay) for d in range(2 * session_cap + 2)]
        #: ``_around[at][p]``: the weight of position ``p`` in a neighbour met at ``at``
        self._around = [[near[abs(p - at)] for p in range(session_cap + 1)] for at in range(session_cap + 1)]
        #: Neighbour sessions' items, kept ``cache_s`` seconds of event time when the store is
        #: remote: most neighbours are finished sessions, and reading 50 of them per list
        #: is most of a list's round-trip payload. (The in-memory store needs no cache.)
        self.cache_s = cache_s if getattr(store, "kind", "") != "memory" else 0.0
        self.cache_size = cache_size
        #: session -> (event time read, its items), oldest first
        self._sessions: OrderedDict[str, tuple[float, list[str]]] = OrderedDict()

    def observe(self, ctx: Context, item_id: str, weight: float, ts: float) -> list[WriteOp]:
        """Index the session under the item the first time the session touches it."""
        if not ctx.session_id or item_id in ctx.session_items:
            return []
        return [("lpush", self.keys.item_sessions(item_id), ctx.session_id, self.index_cap)]

    async def propose(self, ctx: Context, n: int) -> list[tuple[str, float, str]]:
        weights: dict[str, float] = {}
        for age, item in enumerate(ctx.session_items):
            if item not in weights:
                weights[item] = math.exp(-age / self.position_decay)
                if len(weights) >= self.anchors:
                    break
        if not weights:
            return []
        anchors = list(weights)
        lists = await self.store.read([("lrange", self.keys.item_sessions(a), self.sample) for a in anchors])
        sim = similar_sessions(anchors, weights, lists)
        sim.pop(ctx.session_id, None)
        if not sim:
            return []
        # ties keep first-seen order (the sort is stable), so the choice is deterministic;
        # sorting all (a few hundred) is faster than heapq.nlargest, with the same answer
        top = sorted(sim.items(), key=_score, reverse=True)[:self.neighbours]
        sessions = await self._session_items([sid for sid, _ in top], ctx.now)
        scores = item_scores(top, sessions, anchors, self._around)
        if not scores:
            return []
        ranked = sorted(scores.items(), key=_score, reverse=True)[:n]
        top_score = ranked[0][1] or 1.0
        return [(item, v / top_score, "") for item, v in ranked]

    async def _session_items(self, sids: list[str], now: float) -> list[list[str]]:
        if not self.cache_s:
            return self._split(await self.store.read([("mget", [self.keys.session_items(sid) for sid in sids])]))
        cache = self._sessions
        out: list[list[str] | None] = []
        missing = []
        for sid in sids:
            hit = cache.get(sid)
            if hit is not None and 0 <= now - hit[0] < self.cache_s:
                out.append(hit[1])
            else:
                out.append(None)
                missing.append(sid)
        if missing:
            got = self._split(await self.store.read([("mget", [self.keys.session_items(sid) for sid in missing])]))
            fresh = dict(zip(missing, got))
            for sid, items in fresh.items():
                keep(cache, sid, now, items, self.cache_s, self.cache_size)
            out = [fresh[sid] if items is None else items for sid, items in zip(sids, out)]
        return out


    def _split(self, got: list) -> list[list[str]]:
        """Items of each session from one MGET answer (joined by the unit separator)."""
        cap = self.session_cap
        # item ids recur across sessions: one string per id, however many sessions hold it
        return [list(map(sys.intern, raw.decode().split(SEP)[:cap])) if raw else [] for raw in got[0]]


def similar_sessions(anchors: list[str], weights: dict[str, float], lists: list[list[str]]) -> dict[str, float]:
    """Past session -> the summed weights of the anchors whose session list
    (``lists[i]`` for ``anchors[i]``) holds it, in first-seen order.

    >>> similar_sessions(["a", "b"], {"a": 1.0, "b": 0.5}, [["s1", "s2"], ["s2", "s3"]])
    {'s1': 1.0, 's2': 1.5, 's3': 0.5}
    """
    sim: dict[str, float] = {}
    get = sim.get
    for anchor, sessions in zip(anchors, lists):
        w = weights[anchor]
        for sid in sessions:
            sim[sid] = get(sid, 0.0) + w
    return sim


def item_scores(top: list[tuple[str, float]], sessions: list[list[str]], anchors: list[str],
                around: list[list[float]]) -> dict[str, float]:
    """Item -> the summed ``similarity * around[at][position]`` over the neighbour
    sessions ``top`` ((id, similarity), their items in ``sessions``), ``at`` being where
    a neighbour holds the first anchor it holds (0 when none).

    >>> item_scores([("s1", 1.0), ("s2", 0.5)], [["x", "a"], ["a", "y"]], ["a"], [[1.0, 0.5], [0.5, 1.0]])
    {'x': 0.5, 'a': 1.5, 'y': 0.25}
    """
    scores: dict[str, float] = {}
    get = scores.get
    for (sid, s), items in zip(top, sessions):
        # where the neighbour met the most recent (highest weighted) current item:
        # anchors are in falling weight, so the first one it holds, first occurrence
        at = 0
        for a in anchors:
            if a in items:
                at = items.index(a)
                break
        for item, near in zip(items, around[at]):
            scores[item] = get(item, 0.0) + s * near
    return scores


SEP = "\x1f"
_score = operator.itemgetter(1)
