"""Item-to-item co-visitation: items seen in the same session, weighted by closeness.

Symmetric (either order, a window of the session); ``models.candidates.sequential``
keeps the directed "clicked right after" counterpart.
"""

from __future__ import annotations

import zlib
from typing import Callable

from models.candidates import Context
from models.features.keys import Keys
from models.features.store import FeatureStore, WriteOp


class CoVisitation:
    """Weighted co-visitation counts kept as one zset per item in the feature store.

    ``observe`` adds ``weight / distance`` between the new item and each of the last
    ``window`` session items (both directions when ``symmetric``, else only
    earlier -> new); ``propose`` sums normalised neighbours of the newest ``anchors``
    session items, the i-th newest weighted ``decay ** i``.
    """

    def __init__(self, store: FeatureStore, keys: Keys, *, name: str = "covis",
                 key: Callable[[str], str] | None = None, symmetric: bool = True,
                 window: int = 5, cap: int = 200, anchors: int = 3, decay: float = 0.6) -> None:
        self.store, self.keys, self.name = store, keys, name
        self.key = key or keys.covis
        self.symmetric = symmetric
        self.window, self.cap, self.anchors, self.decay = window, cap, anchors, decay

    def observe(self, ctx: Context, item_id: str, weight: float, ts: float) -> list[WriteOp]:
        ops: list[WriteOp] = []
        seen = {item_id}
        for dist, other in enumerate(ctx.session_items[: self.window], start=1):
            if other in seen:
                continue
            seen.add(other)
            w = weight / dist
            ops.append(("zincr", self.key(other), item_id, w))
            if self.symmetric:
                ops.append(("zincr", self.key(item_id), other, w))
        # Trim now and then, deterministically, so zsets stay bounded but newcomers get in.
        if ops and zlib.crc32(item_id.encode()) % 16 == int(ts) % 16:
            for other in seen:
                ops.append(("ztrim", self.key(other), self.cap))
        return ops

    async def propose(self, ctx: Context, n: int) -> list[tuple[str, float, str]]:
        anchors = list(dict.fromkeys(ctx.session_items or ctx.recent_items))[: self.anchors]
        if not anchors:
            return []
        lists = await self.store.read([("ztop", self.key(a), n) for a in anchors])
        return blend_neighbours(anchors, lists, self.decay, n)


def blend_neighbours(anchors: list[str], lists: list[list[tuple[str, float]]], decay: float, n: int
                     ) -> list[tuple[str, float, str]]:
    """Sum each anchor's normalised neighbour scores, the i-th anchor weighted ``decay**i``;
    each item remembers the anchor that contributed most.

    >>> blend_neighbours(["a", "b"], [[("x", 2.0), ("y", 1.0)], [("y", 4.0)]], 0.5, 5)
    [('x', 1.0, 'a'), ('y', 1.0, 'a')]
    """
    scores: dict[str, float] = {}
    because: dict[str, tuple[float, str]] = {}
    for i, (anchor, neigh) in enumerate(zip(anchors, lists)):
        if not neigh:
            continue
        top = neigh[0][1] or 1.0
        aw = decay ** i
        for item, s in neigh:
            if item in anchors[:1]:
                continue
            contrib = aw * s / top
            scores[item] = scores.get(item, 0.0) + contrib
            if contrib > because.get(item, (0.0, ""))[0]:
                because[item] = (contrib, anchor)
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [(item, round(s, 6), because[item][1]) for item, s in ranked]
