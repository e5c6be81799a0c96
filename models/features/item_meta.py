"""A small in-process cache of catalog fields the ranker and filters need per candidate.

Every list needs availability, category and title of dozens of candidates; reading them
from the store each time would cost more than everything else. Entries live ``ttl_s``
seconds (an item marked unavailable leaves other workers' lists within that time; the
worker that applies the catalog event updates its entry at once).

>>> import asyncio
>>> from models.features.memory import MemoryStore
>>> from models.features.keys import Keys
>>> store = MemoryStore()
>>> asyncio.run(store.write([("hset", Keys().item_meta("i1"), {"title": "Mug", "category": "kitchen"})]))
>>> cache = ItemMetaCache(store, Keys())
>>> asyncio.run(cache.get(["i1", "nope"]))
{'i1': ItemMeta(available=True, category='kitchen', title='Mug'), 'nope': ItemMeta(available=True, category=None, title=None)}
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

from models.features.cache import keep
from models.features.keys import Keys
from models.features.store import FeatureStore


@dataclass(frozen=True, slots=True)
class ItemMeta:
    available: bool = True
    category: str | None = None
    title: str | None = None


class ItemMetaCache:
    FIELDS = ["available", "category", "title"]

    def __init__(self, store: FeatureStore, keys: Keys, ttl_s: float = 60.0, size: int = 200_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.keys, self.ttl_s, self.size, self.clock = store, keys, ttl_s, size, clock
        self._entries: OrderedDict[str, tuple[float, ItemMeta]] = OrderedDict()

    async def get(self, item_ids: Iterable[str]) -> dict[str, ItemMeta]:
        """Metadata of every id, reading the ones not cached (or expired) in one round trip."""
        now = self.clock()
        out: dict[str, ItemMeta] = {}
        missing: list[str] = []
        for i in item_ids:
            if i in out:
                continue
            hit = self._entries.get(i)
            if hit is not None and now - hit[0] < self.ttl_s:
                out[i] = hit[1]
            else:
                out[i] = ItemMeta()
                missing.append(i)
        if missing:
            got = await self.store.read([("hmget", self.keys.item_meta(i), self.FIELDS) for i in missing])
            for i, (available, category, title) in zip(missing, got):
                meta = ItemMeta(available != "0", category, title)
                out[i] = meta
                keep(self._entries, i, now, meta, self.ttl_s, self.size)
        return out

    def put(self, item_id: str, meta: ItemMeta) -> None:
        keep(self._entries, item_id, self.clock(), meta, self.ttl_s, self.size)

    def forget(self, item_id: str) -> None:
        self._entries.pop(item_id, None)
