"""Prequential evaluation: score each interaction against the list shown before it.

Top-K metrics for one target per case (the next item a shopper touched):

- ``hit_rate@K``: share of cases whose target is in the top K (= recall@K = P@20 in
  session-based papers);
- ``mrr@K``: mean reciprocal rank of the target (0 when absent);
- ``ndcg@K``: mean ``1 / log2(rank + 1)`` (0 when absent);
- ``coverage@K``: share of the known items (from catalog events or interactions) that
  appeared in at least one scored list.

>>> m = Metrics(k=3)
>>> m.add(["a", "b", "c"], "b"), m.add(["a", "c", "d"], "z")
(2, 0)
>>> {k: round(v, 3) for k, v in m.result(catalog_size=8).items()}
{'hit_rate@3': 0.5, 'mrr@3': 0.25, 'ndcg@3': 0.315, 'coverage@3': 0.5, 'cases': 2}

:class:`Prequential` drives the protocol over a stream: ``score(event)`` before the
event is learned (against that user's latest list), ``shown(user, items)`` after a
recommendation is emitted. It keeps every case's rank so that slices (cold items,
cold users) and curves over time come out at the end.

Slices count interactions only (clicks, cart adds, purchases): catalog events
(``items``), removals and feedback neither make an item "seen" nor move the cut.

- ``cold_items``: the target's first interaction falls in the last ``cold_fraction``
  of the stream's interactions (the case itself may be that first interaction);
  ``first_interactions`` counts the cases whose target nobody had touched before;
- ``cold_users``: the user had fewer than ``cold_user_events`` earlier interactions;
- ``bought_before``: the user had already bought the target (a repeat purchase, or a
  click on something bought). With purchased items excluded for good (the default
  business rule) these cases are misses by rule, whatever the model.

>>> from models.events import Click
>>> p = Prequential(k=2)
>>> p.score(Click("e1", "u", "a", 1.0))           # no list shown yet: not a case
False
>>> p.shown("u", ["b", "c"])
>>> p.score(Click("e2", "u", "c", 2.0))
True
>>> p.report()["metrics"]["mrr@2"]
0.5
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Sequence

from models.events import Cart, Click, Event


def rank_of(ranked: Sequence[str], target: str, k: int) -> int:
    """1-based rank of ``target`` within the first ``k`` of ``ranked``; 0 when absent.

    >>> rank_of(["x", "y", "z"], "y", 20), rank_of(["x", "y", "z"], "z", 2)
    (2, 0)
    """
    for i, item in enumerate(ranked[:k]):
        if item == target:
            return i + 1
    return 0


def summarize(ranks: Iterable[int], k: int) -> dict[str, float]:
    """HR, MRR and NDCG at ``k`` from 1-based ranks (0 = miss).

    >>> summarize([1, 0, 4], k=20)["mrr@20"] == (1 + 0.25) / 3
    True
    >>> summarize([], k=5)
    {'hit_rate@5': 0.0, 'mrr@5': 0.0, 'ndcg@5': 0.0, 'cases': 0}
    """
    n = hits = 0
    rr = dcg = 0.0
    for r in ranks:
        n += 1
        if 0 < r <= k:
            hits += 1
            rr += 1.0 / r
            dcg += 1.0 / math.log2(r + 1)
    d = max(n, 1)
    return {f"hit_rate@{k}": hits / d, f"mrr@{k}": rr / d, f"ndcg@{k}": dcg / d, "cases": n}


@dataclass
class Metrics:
    """Accumulates top-K metrics over cases; see the module docstring."""

    k: int = 20
    ranks: list[int] = field(default_factory=list)
    recommended: set[str] = field(default_factory=set)

    def add(self, ranked: Sequence[str], target: str) -> int:
        """Score one case; returns the target's rank (0 = miss)."""
        top = ranked[: self.k]
        self.recommended.update(top)
        r = rank_of(top, target, self.k)
        self.ranks.append(r)
        return r

    def result(self, catalog_size: int | None = None) -> dict[str, float]:
        out = summarize(self.ranks, self.k)
        cases = out.pop("cases")
        size = catalog_size if catalog_size else max(len(self.recommended), 1)
        out[f"coverage@{self.k}"] = min(1.0, len(self.recommended) / size) if size else 0.0
        out["cases"] = cases
        return out


#: Interactions that count as a case: a click, or putting an item in the cart / buying it.
def is_positive(event: Event) -> bool:
    """True for events that reveal interest in an item (clicks, cart adds, purchases)."""
    return isinstance(event, Click) or (isinstance(event, Cart) and event.action != "remove")


class Prequential:
    """Test-then-train scoring of a stream for one or more recommenders.

    ``cold_user_events``: a case is a cold-user case when the user had fewer earlier
    interactions. ``cold_fraction``: a case is a cold-item case when its target's first
    interaction is in the last ``cold_fraction`` of the stream's interactions. Catalog
    events do not count: a shop publishes items before anyone buys them, and an item
    known to the catalog but never touched is exactly what "cold" means.

    >>> from models.events import Item, Cart
    >>> p = Prequential(k=2, cold_fraction=0.5)
    >>> p.score(Item("new", "New mug", 0.0))     # in the catalog from the start
    False
    >>> for n, item in enumerate(["a", "a", "b", "new"]):
    ...     p.shown("u", ["new", "a"])
    ...     _ = p.score(Cart(f"e{n}", "u", item, "purchase", float(n)))
    >>> s = p.slices()["cold_items"]              # 'b' and 'new': first touched in the second half
    >>> s["cases"], s["first_interactions"], s["hit_rate@2"]
    (2, 2, 0.5)
    """

    def __init__(self, k: int = 20, cold_user_events: int = 3, cold_fraction: float = 0.2) -> None:
        self.k = k
        self.cold_user_events = cold_user_events
        self.cold_fraction = cold_fraction
        self.latest: dict[str, list[str]] = {}
        self.user_events: Counter[str] = Counter()
        #: item -> index (among interactions) of its first interaction
        self.first_seen: dict[str, int] = {}
        self.events = 0
        self.interactions = 0
        #: every item id met in the stream, catalog events included (coverage)
        self.known: set[str] = set()
        self.metrics = Metrics(k)
        # per case: event index, first-interaction index of the target (its own index
        # when this is the first), whether it is the first, user was cold
        self.case_event: list[int] = []
        self.case_first_seen: list[int] = []
        self.case_first_time: list[bool] = []
        self.case_cold_user: list[bool] = []
        self.case_bought_before: list[bool] = []
        self.case_ts: list[float] = []
        #: (user, item) pairs bought so far
        self.bought: set[tuple[str, str]] = set()
        self.recommended_counts: Counter[str] = Counter()

    def score(self, event: Event, scored: bool = True) -> bool:
        """Count ``event`` and, when it is a positive interaction of a user who was shown
        a list (and ``scored``), score its item against that list. Call before learning."""
        idx = self.events
        self.events += 1
        item = getattr(event, "item_id", None)
        if item:
            self.known.add(item)
        if not is_positive(event):
            return False
        user = event.user_id
        first_time = item not in self.first_seen
        if first_time:
            self.first_seen[item] = self.interactions
        is_case = False
        if scored:
            shown = self.latest.get(user)
            if shown is not None:
                self.metrics.add(shown, item)
                self.case_event.append(idx)
                self.case_first_seen.append(self.first_seen[item])
                self.case_first_time.append(first_time)
                self.case_cold_user.append(self.user_events[user] < self.cold_user_events)
                self.case_ts.append(event.ts)
                self.case_bought_before.append((user, item) in self.bought)
                self.recommended_counts.update(shown[: self.k])
                is_case = True
        self.interactions += 1
        if user:
            self.user_events[user] += 1
            if isinstance(event, Cart) and event.action == "purchase":
                self.bought.add((user, item))
        return is_case

    def shown(self, user_id: str, items: Sequence[str]) -> None:
        """Remember the list just recommended to ``user_id`` (replaces the previous one)."""
        self.latest[user_id] = list(items[: self.k])

    def forget_user(self, user_id: str) -> None:
        self.latest.pop(user_id, None)

    def slices(self) -> dict[str, dict[str, float]]:
        ranks = self.metrics.ranks
        cut = int(self.interactions * (1.0 - self.cold_fraction))
        cold = [i for i, f in enumerate(self.case_first_seen) if f >= cut]
        cold_items = summarize((ranks[i] for i in cold), self.k)
        cold_items["first_interactions"] = sum(self.case_first_time[i] for i in cold)
        cold_users = [r for r, c in zip(ranks, self.case_cold_user) if c]
        bought_before = [r for r, b in zip(ranks, self.case_bought_before) if b]
        return {"cold_items": cold_items, "cold_users": summarize(cold_users, self.k),
                "bought_before": summarize(bought_before, self.k)}

    def over_time(self, buckets: int = 20) -> list[dict[str, float]]:
        """Metrics per consecutive block of cases (for plots of quality over time)."""
        ranks = self.metrics.ranks
        if not ranks:
            return []
        size = max(1, math.ceil(len(ranks) / buckets))
        out = []
        for start in range(0, len(ranks), size):
            part = summarize(ranks[start:start + size], self.k)
            part["event"] = self.case_event[min(start + size, len(ranks)) - 1]
            out.append(part)
        return out

    def periods(self, unit: str | None = None) -> dict:
        """Metrics per calendar period (UTC) of the cases' event time, to tell drift in
        the stream from a learner that falls behind (compare with a baseline's periods).

        ``unit`` is ``"month"``, ``"week"`` (ISO) or ``"day"``; by default the coarsest
        that gives several periods: months when the cases span over 62 days, weeks over
        14 days, else days. Returns ``{"unit": ..., "rows": [{"period": ..., "cases":
        ..., "hit_rate@K": ..., ..., "bought_before": N}, ...]}`` in time order, where
        ``bought_before`` counts the period's cases whose target the shopper had bought.

        >>> from models.events import Click
        >>> p = Prequential(k=1)
        >>> for n, (day, item) in enumerate([(1, "a"), (1, "b"), (40, "a"), (80, "a")]):
        ...     p.shown("u", ["a"])
        ...     _ = p.score(Click(f"e{n}", "u", item, 1_700_000_000.0 + day * 86_400))
        >>> [(r["period"], r["cases"], r["hit_rate@1"], r["bought_before"]) for r in p.periods()["rows"]]
        [('2023-11', 2, 0.5, 0), ('2023-12', 1, 1.0, 0), ('2024-02', 1, 1.0, 0)]
        """
        ts = self.case_ts
        if unit is None:
            span_days = (max(ts) - min(ts)) / 86_400 if ts else 0.0
            unit = "month" if span_days > 62 else "week" if span_days > 14 else "day"
        label = {"month": lambda d: d.strftime("%Y-%m"),
                 "week": lambda d: "%04d-W%02d" % d.isocalendar()[:2],
                 "day": lambda d: d.strftime("%Y-%m-%d")}[unit]
        groups: dict[str, list[int]] = {}
        repeats: Counter[str] = Counter()
        for rank, t, before in zip(self.metrics.ranks, ts, self.case_bought_before):
            key = label(datetime.fromtimestamp(t, timezone.utc))
            groups.setdefault(key, []).append(rank)
            repeats[key] += before
        rows = [{"period": key, **summarize(ranks, self.k), "bought_before": repeats[key]}
                for key, ranks in sorted(groups.items())]
        return {"unit": unit, "rows": rows}

    def report(self) -> dict:
        """``{"metrics": {...}, "test_cases": N, "slices": {...}, "periods": {...}}``;
        coverage is relative to every item met in the stream (catalog events included)."""
        metrics = self.metrics.result(catalog_size=len(self.known))
        cases = int(metrics.pop("cases"))
        return {"metrics": metrics, "test_cases": cases, "slices": self.slices(),
                "periods": self.periods()}
