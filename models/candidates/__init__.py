"""Candidate sources: each proposes scored items for one shopper's situation.

Sources run in order; the chain keeps asking until it holds enough candidates
beyond the exclude set, so popularity only fills what the personal sources could
not (cold start). Every candidate remembers which sources proposed it and with what
score: the ranker uses those signals and the reason line is built from them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from models.features.store import WriteOp


@dataclass(slots=True)
class Context:
    """What the recommender knows about the shopper at the moment of a recommendation."""

    user_id: str
    now: float
    #: The current session's items, newest first (repeats kept, in click order).
    session_items: list[str]
    #: The user's recent items across sessions, newest first.
    recent_items: list[str]
    cart: dict[str, int] = field(default_factory=dict)
    #: item -> (times bought, event time of the last purchase)
    bought: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: Items that business rules keep out of the list.
    exclude: set[str] = field(default_factory=set)
    #: Opaque id of the current session.
    session_id: str = ""


@dataclass(slots=True)
class Candidate:
    item_id: str
    #: source name -> that source's score for the item
    signals: dict[str, float] = field(default_factory=dict)
    #: source name -> the anchor item (or words) that made the source propose it
    because: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class CandidateSource(Protocol):
    #: Short name that appears in ``sources`` of each recommended item.
    name: str

    def observe(self, ctx: Context, item_id: str, weight: float, ts: float) -> list[WriteOp]:
        """Store writes that learn from one interaction with ``item_id``.

        ``ctx`` is the shopper's state *before* the interaction; ``weight`` says how
        strong it is (a click 1, a cart add more, a purchase most). The recommender
        applies the writes of a whole batch in one pipelined round trip.
        """

    async def propose(self, ctx: Context, n: int) -> list[tuple[str, float, str]]:
        """Up to ``n`` (item_id, score, because) triples, best first. ``because`` names
        the anchor (an item id from the context) or is empty.

        A source may also define ``async prepare(contexts, n)``: the recommender calls it
        once before computing the lists of a batch, so the source can do their shared
        work at once (one round trip, one batched search); ``propose`` must answer the
        same with or without it. And ``begin_batch()``: called as each batch begins,
        before its ``observe`` calls (e.g. to drop what was kept for the last batch's
        lists)."""


async def gather_candidates(sources: Sequence[CandidateSource], ctx: Context, k: int,
                            depth: int = 4, fill_only: Sequence[str] = ("popular",),
                            concurrent: bool = False) -> dict[str, Candidate]:
    """Run ``sources`` in order until ``depth * k`` candidates outside the exclude set exist.

    Sources named in ``fill_only`` (popularity) only run when the others found fewer
    than ``k``. With ``concurrent`` the other sources are asked all at once (their
    store reads then share one round trip); the result is the same.

    >>> import asyncio
    >>> class Fixed:
    ...     def __init__(self, name, items): self.name, self.items = name, items
    ...     async def propose(self, ctx, n): return [(i, 1.0, "") for i in self.items][:n]
    >>> ctx = Context("u", 0.0, [], [], exclude={"b"})
    >>> got = asyncio.run(gather_candidates([Fixed("covis", ["a", "b"]), Fixed("popular", ["c", "a"])], ctx, k=2))
    >>> sorted((c.item_id, sorted(c.signals)) for c in got.values())
    [('a', ['covis', 'popular']), ('c', ['popular'])]
    """
    want = depth * k
    # Ask for extra to make up for excluded items, but boundedly: a shopper who bought
    # thousands of items must not make every source rank thousands.
    ask = want + min(len(ctx.exclude), want)
    out: dict[str, Candidate] = {}
    early: dict[int, list[tuple[str, float, str]]] = {}
    if concurrent:
        firm = [n for n, source in enumerate(sources) if source.name not in fill_only]
        if len(firm) > 1:
            early = dict(zip(firm, await asyncio.gather(*(sources[n].propose(ctx, ask) for n in firm))))
    for n, source in enumerate(sources):
        if source.name in fill_only and len(out) >= k:
            continue
        proposed = early[n] if n in early else await source.propose(ctx, ask)
        for item_id, score, because in proposed:
            if item_id in ctx.exclude:
                continue
            cand = out.get(item_id)
            if cand is None:
                if len(out) >= want and source.name in fill_only:
                    continue
                cand = out[item_id] = Candidate(item_id)
            cand.signals[source.name] = score
            if because:
                cand.because[source.name] = because
    return out
