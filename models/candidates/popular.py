"""Time-decayed item popularity: the cold-start fallback.

Forward decay (Cormode et al., 2009): an interaction at time ``t`` adds
``w * exp((t - L) / tau)`` to the item's score in the zset of landmark ``L``, so
ranking by score equals ranking by exponentially decayed counts, and no score ever
needs rewriting. Landmarks advance every ``period`` taus (keeping exponents small);
reading merges the current landmark with the previous one rescaled into the current
units, which is exact.

>>> import asyncio
>>> from models.features.memory import MemoryStore
>>> from models.features.keys import Keys
>>> from models.candidates import Context
>>> pop = Popularity(MemoryStore(), Keys(), half_life_s=3600)
>>> ctx = Context("u", 0.0, [], [])
>>> ops = pop.observe(ctx, "old", 1.0, 1_700_000_000) + pop.observe(ctx, "new", 1.0, 1_700_007_200)
>>> asyncio.run(pop.store.write(ops))
>>> [i for i, _, _ in asyncio.run(pop.propose(Context("u", 1_700_007_200, [], []), 2))]
['new', 'old']
"""

from __future__ import annotations

import math

from models.candidates import Context
from models.features.keys import Keys
from models.features.store import FeatureStore, WriteOp


class Popularity:
    name = "popular"

    def __init__(self, store: FeatureStore, keys: Keys, half_life_s: float = 2 * 86_400,
                 period: int = 20, cap: int = 5000, refresh_s: float = 60.0) -> None:
        self.store, self.keys = store, keys
        self.tau = half_life_s / math.log(2)
        self.span = period * self.tau
        self.cap, self.refresh_s = cap, refresh_s
        #: (event time read, landmark, ranking, complete, this worker's writes when read)
        self._cache: tuple[float, int, list[tuple[str, float]], bool, int] | None = None
        self._writes = 0

    def landmark(self, ts: float) -> int:
        return int(ts // self.span)

    def observe(self, ctx: Context, item_id: str, weight: float, ts: float) -> list[WriteOp]:
        lm = self.landmark(ts)
        ops: list[WriteOp] = [("zincr", self.keys.popularity(lm), item_id,
                               weight * math.exp((ts - lm * self.span) / self.tau)),
                              ("hincr", self.keys.counts(), item_id, weight)]
        self._writes += 1
        if self._writes % 1000 == 0:
            ops.append(("ztrim", self.keys.popularity(lm), self.cap))
        return ops

    async def top(self, now: float, n: int) -> list[tuple[str, float]]:
        """The ``n`` most popular items at ``now``, cached for ``refresh_s`` of event time.

        A ranking shorter than ``n`` (a shop's first minutes, a small catalog) is
        reused only until this worker writes another interaction: a young shop's
        popularity grows with every click, and a shopper should see it grow.
        """
        lm = self.landmark(now)
        c = self._cache
        if (c is not None and c[1] == lm and 0 <= now - c[0] < self.refresh_s
                and (len(c[2]) >= n or (c[3] and c[4] == self._writes))):
            return c[2][:n]
        want = max(n, 200)
        cur, prev = await self.store.read([("ztop", self.keys.popularity(lm), want),
                                           ("ztop", self.keys.popularity(lm - 1), want)])
        scale = math.exp(-self.span / self.tau)
        merged: dict[str, float] = {i: s * scale for i, s in prev}
        for i, s in cur:
            merged[i] = merged.get(i, 0.0) + s
        ranked = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:want]
        # Express scores as decayed counts at ``now``.
        f = math.exp(-(now - lm * self.span) / self.tau)
        ranked = [(i, s * f) for i, s in ranked]
        # complete: the store held fewer items than asked for, so a longer read finds no more
        self._cache = (now, lm, ranked, len(cur) < want and len(prev) < want, self._writes)
        return ranked[:n]

    async def propose(self, ctx: Context, n: int) -> list[tuple[str, float, str]]:
        """The most popular items, scores normalised to the best (1.0) so that the
        popularity signal blends on the same scale as the other sources'."""
        top = await self.top(ctx.now, n)
        best = top[0][1] if top and top[0][1] > 0 else 1.0
        return [(i, s / best, "") for i, s in top]
