"""Sequential next-item transitions (sequential rules, "SR"): what comes after what.

``observe`` adds ``weight / distance`` to the transition ``earlier -> new`` for each
of the last ``window`` clicks of the session (distance 1 = the click just before;
repeats count, so re-viewing an item is learned too). The zsets live in the feature
store under ``Keys.next_items`` and are trimmed to ``cap`` now and then
(deterministically, by a hash of the item and the event time).

``propose`` reads the transitions of the last ``anchors`` clicks in one round trip,
normalises each list to its best entry, weights the list of the click ``d`` steps
back by ``1 / d ** decay`` and sums; scores come back normalised to the best (1.0).

>>> import asyncio
>>> from models.features.memory import MemoryStore
>>> from models.features.keys import Keys
>>> from models.candidates import Context
>>> store = MemoryStore()
>>> seq = Sequential(store, Keys())
>>> ops = []
>>> for session in (["a", "b", "c"], ["a", "b", "d"], ["b", "c"]):
...     for i, item in enumerate(session):
...         ops += seq.observe(Context("u", 0.0, session[:i][::-1], []), item, 1.0, 0.0)
>>> asyncio.run(store.write(ops))
>>> [(i, round(s, 2)) for i, s, _ in asyncio.run(seq.propose(Context("u", 0.0, ["b", "a"], []), 3))]
[('c', 1.0), ('d', 0.56), ('b', 0.44)]
"""

from __future__ import annotations

import functools
import zlib

from models.candidates import Context
from models.features.keys import Keys
from models.features.store import FeatureStore, WriteOp


class Sequential:
    name = "sequential"

    def __init__(self, store: FeatureStore, keys: Keys, *, window: int = 3, anchors: int = 3,
                 decay: float = 1.0, cap: int = 200, trim_every: int = 16) -> None:
        self.store, self.keys = store, keys
        self.window, self.anchors, self.decay = window, anchors, decay
        self.cap, self.trim_every = cap, trim_every
        # key names are rebuilt for every click otherwise; a bounded memo saves that
        self._key = functools.lru_cache(maxsize=1 << 16)(keys.next_items)

    def observe(self, ctx: Context, item_id: str, weight: float, ts: float) -> list[WriteOp]:
        key = self._key
        ops: list[WriteOp] = [("zincr", key(prev), item_id, weight / d)
                              for d, prev in enumerate(ctx.session_items[: self.window], start=1)]
        if ops and zlib.crc32(item_id.encode()) % self.trim_every == int(ts) % self.trim_every:
            ops += [("ztrim", key(prev), self.cap) for prev in dict.fromkeys(ctx.session_items[: self.window])]
        return ops

    async def propose(self, ctx: Context, n: int) -> list[tuple[str, float, str]]:
        anchors = ctx.session_items[: self.anchors] or ctx.recent_items[:1]
        if not anchors:
            return []
        unique = list(dict.fromkeys(anchors))
        lists = dict(zip(unique, await self.store.read([("ztop", self.keys.next_items(a), n) for a in unique])))
        scores: dict[str, float] = {}
        because: dict[str, tuple[float, str]] = {}
        for d, anchor in enumerate(anchors, start=1):
            neigh = lists[anchor]
            if not neigh:
                continue
            w = 1.0 / (neigh[0][1] or 1.0) / d ** self.decay
            for item, s in neigh:
                c = w * s
                scores[item] = scores.get(item, 0.0) + c
                if c > because.get(item, (0.0, ""))[0]:
                    because[item] = (c, anchor)
        if not scores:
            return []
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        top = ranked[0][1]
        return [(item, s / top, because[item][1]) for item, s in ranked]
