"""Buy it again: the shopper's own past purchases, for shops where people re-order.

Groceries, consumables and wholesale buyers re-order the same things; a durable
good is bought once. Which one a shop is, is a business rule, not something to learn
per list: with ``exclude_purchased`` on and ``repurchase_after_s`` infinite (the
default) every purchased item stays out of the shopper's lists and this source
proposes nothing. With a finite ``repurchase_after_s`` (or ``exclude_purchased``
off) an item becomes eligible again that long after its last purchase, and this
source proposes it.

The score of a past purchase is ``purchases * exp(-age / tau)`` (``age``: event time
since the last purchase of it; ``tau`` from ``half_life_s``), normalised to the best
one: what a shopper bought often and lately comes first. The state is the shopper's
purchase record, which the pipeline keeps anyway (``Context.bought``), so the source
writes nothing and reads nothing.

>>> import asyncio
>>> src = BuyAgain(half_life_s=86_400)
>>> ctx = Context("u", 10 * 86_400.0, [], [], bought={"tea": (3, 8 * 86_400.0), "kettle": (1, 9 * 86_400.0),
...                                                  "filter": (1, 2 * 86_400.0)}, exclude={"kettle"})
>>> [(i, round(s, 3)) for i, s, _ in asyncio.run(src.propose(ctx, 5))]
[('tea', 1.0), ('filter', 0.005)]
"""

from __future__ import annotations

import heapq
import math

from models.candidates import Context
from models.features.store import WriteOp


class BuyAgain:
    name = "buy_again"

    def __init__(self, half_life_s: float = 30 * 86_400) -> None:
        self.tau = half_life_s / math.log(2)

    def observe(self, ctx: Context, item_id: str, weight: float, ts: float) -> list[WriteOp]:
        return []  # the pipeline records purchases itself

    async def propose(self, ctx: Context, n: int) -> list[tuple[str, float, str]]:
        if not ctx.bought:
            return []
        scored = [(count * math.exp(-max(0.0, ctx.now - last) / self.tau), item)
                  for item, (count, last) in ctx.bought.items() if item not in ctx.exclude]
        best = heapq.nlargest(n, scored, key=lambda p: (p[0], p[1]))
        if not best or best[0][0] <= 0:
            return []
        top = best[0][0]
        return [(item, score / top, "") for score, item in best]
