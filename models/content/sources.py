"""Content candidates: items whose text is close to what the shopper is looking at.

``ContentSource`` (name ``content``) is a ``CandidateSource``. Per call it reads the
anchor vectors from the in-process index (falling back to the store for items that
left the index), reads the user's text-preference vector in the same single round
trip, and runs one batched index search:

- each distinct session item (newest first, at most ``max_anchors``; the recent items
  when the session is empty) is an anchor with weight ``recency_decay ** rank``;
- the user's preference vector is one more anchor, weight ``user_weight``, while the
  session is short (``taste_max_session`` items at most). Within a session it is the
  vector as it was when the session began: the session's own items are anchors
  already, so a shopper's taste adds what they liked before (nothing for a first-time
  shopper), and one search serves the session's first lists instead of one per click;
- a candidate scores the best ``weight * cosine`` over the anchors, and ``because``
  names the anchor item (empty for the preference vector).

A brand-new item that nobody has clicked yet has no co-visitation data, but as soon
as it is in the catalog it is both a candidate (close to what shoppers view) and an
anchor (viewing it yields its text neighbours): that is the cold-start path.

The preference vector (``Keys.user_vector``) is a decayed mean of the vectors of items
the user engaged with; ``observe`` returns the write that updates it (``learn`` does
the same with its own store round trip). It is erased with the user's other keys.
"""

from __future__ import annotations

import heapq
import struct
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from models.candidates import Context
from models.content.catalog import vector_from_bytes
from models.content.index import VectorIndex, normalise
from models.features.keys import Keys
from models.features.store import FeatureStore, WriteOp

_HEADER = struct.Struct("<dd")  # (weight, last ts) before the float32 mean vector
_UNREAD = object()  # no prefetched taste vector for this user
_Row = tuple[tuple[str, ...], np.ndarray]  # kept neighbours: ids and float32 cosines, best first


def _head(row: _Row, need: int, exclude: set[str], n: int) -> list[tuple[str, float]]:
    """The first ``n`` of the ``need`` best neighbours in ``row`` that are not excluded."""
    ids, cos = row
    return [(i, c) for i, c in zip(ids[:need], cos[:need].tolist()) if i not in exclude][:n]


def pack_user_vector(mean: np.ndarray, weight: float, ts: float) -> bytes:
    """Bytes of a preference vector: little-endian (weight, ts) doubles, then float32s."""
    return _HEADER.pack(float(weight), float(ts)) + np.asarray(mean, dtype="<f4").tobytes()


def unpack_user_vector(raw: bytes | None, dim: int) -> tuple[np.ndarray, float, float] | None:
    """(mean, weight, ts) from ``pack_user_vector`` bytes, or None when absent or malformed."""
    if not raw or len(raw) != _HEADER.size + 4 * dim:
        return None
    weight, ts = _HEADER.unpack_from(raw)
    mean = np.frombuffer(raw, dtype="<f4", offset=_HEADER.size).astype(np.float32)
    return mean, weight, ts


class ContentSource:
    """Text-similar candidates for a shopper's session and taste.

    >>> import asyncio, numpy as np
    >>> from models.features.memory import MemoryStore
    >>> from models.content.index import ExactIndex
    >>> ix = ExactIndex(dim=2)
    >>> ix.upsert(["mug", "cup", "lamp"], np.array([[1, 0], [0.9, 0.2], [0, 1]], dtype=np.float32))
    >>> src = ContentSource(MemoryStore(), Keys(), ix)
    >>> asyncio.run(src.propose(Context("u1", 0.0, ["mug"], []), 2))[0][::2]
    ('cup', 'mug')
    """

    name = "content"

    def __init__(self, store: FeatureStore, keys: Keys, index: VectorIndex | None, *,
                 max_anchors: int = 3, recency_decay: float = 0.7, user_weight: float = 0.6,
                 half_life_s: float = 14 * 86_400.0, user_vector_ttl_s: int | None = 90 * 86_400,
                 use_user_vector: bool = True, history_items: int = 20,
                 cache_users: int = 20_000, neighbour_ttl_s: float = 60.0,
                 taste_max_session: int = 2) -> None:
        self.store = store
        self.keys = keys
        self.index = index
        self.max_anchors = max(1, int(max_anchors))
        self.recency_decay = float(recency_decay)
        self.user_weight = float(user_weight)
        self.half_life_s = float(half_life_s)
        self.user_vector_ttl_s = user_vector_ttl_s
        self.use_user_vector = use_user_vector
        self.history_items = history_items
        self.cache_users = cache_users
        self._taste: OrderedDict[str, tuple[np.ndarray, float, float]] = OrderedDict()
        self.neighbour_ttl_s = neighbour_ttl_s
        self.taste_max_session = taste_max_session
        #: anchor -> (event time of the search, index version, neighbours, whether that is
        #: the whole index)
        self._neighbours: dict[str, tuple[float, int | None, _Row, bool]] = {}
        #: user -> (event time, index version, taste vector bytes, neighbours, whole index)
        self._taste_hits: OrderedDict[str, tuple[float, int | None, bytes, _Row, bool]] = OrderedDict()
        self.taste_cache = 1024  # a batch's shoppers
        #: taste vectors ``prepare`` read for the lists about to be made (each used once)
        self._prefetched: dict[str, bytes | None] = {}
        #: user -> the taste vector's bytes ``observe`` wrote in this batch: its lists use
        #: them instead of reading them back (the batch's writes land before its reads)
        self._folded: dict[str, bytes] = {}
        #: neighbours searched per anchor at least (``NewItemsSource`` asks for more)
        self.search_depth = 0
        #: user -> (session id, the taste vector when that session began, or None): what
        #: ``observe`` saw at a session's first interaction
        self._session_taste: OrderedDict[str, tuple[str, np.ndarray | None]] = OrderedDict()
        #: user -> (taste row, session taste) as this batch found them: ``undo_batch``
        #: puts them back when the batch fails, so that doing it again folds once
        self._before: dict[str, tuple[Any, Any]] = {}

    # -- candidates ------------------------------------------------------------------
    async def propose(self, ctx: Context, n: int) -> list[tuple[str, float, str]]:
        index = self.index
        if index is None or len(index) == 0 or n <= 0:
            return []
        queries, weights, because, anchors = await self._queries(ctx)
        if not queries:
            return []
        hits = self._search(queries, because, n, set(anchors), ctx.now, ctx.user_id)
        return _best(weights, because, hits, n)

    async def prepare(self, contexts: Sequence[Context], n: int) -> None:
        """Get ready for a batch of lists at once: read the taste vectors they need in one
        round trip and run every search not already cached (anchors, taste vectors) as
        one batched index call; each ``propose`` (asking for at most ``n``) then finds its
        searches done. One matrix product for many queries costs a fraction of one per
        query. The results are the same as without it."""
        self._prefetched.clear()
        index = self.index
        if index is None or len(index) == 0 or not contexts:
            return
        known: dict[str, tuple[float, np.ndarray]] = {}  # users whose session taste is known
        now_of: dict[str, float] = {}  # users whose taste vector must be read
        for c in contexts:
            if self._use_taste(c):
                taste = self._taste_of_session(c)
                if taste is _UNREAD:
                    now_of[c.user_id] = c.now
                elif taste is not None:
                    known[c.user_id] = (c.now, taste)
        if now_of:
            # what this batch's events just wrote is what a read would return
            self._prefetched = {u: self._folded[u] for u in now_of if u in self._folded}
            unread = [u for u in now_of if u not in self._prefetched]
            if unread:
                raws = await self.store.read([("get", self.keys.user_vector(u)) for u in unread])
                self._prefetched.update(zip(unread, raws))
        need = n + self.max_anchors
        depth = max(need, self.search_depth)
        todo: list[tuple[str, float, np.ndarray | None]] = []  # (anchor or user, now, taste vector)
        queries: list[np.ndarray] = []
        planned: set[str] = set()
        for c in contexts:
            for a in _distinct(c.session_items or c.recent_items, self.max_anchors):
                if a not in planned:
                    planned.add(a)
                    v = index.get(a)
                    if v is not None and self._cached(a, c.now, need) is None:
                        todo.append((a, c.now, None))
                        queries.append(v)
        for u, now in now_of.items():
            got = unpack_user_vector(self._prefetched[u], index.dim)
            if got is not None:
                known[u] = (now, got[0])
        for u, (now, taste) in known.items():
            if np.any(taste) and self._cached(u, now, need, taste) is None:
                todo.append((u, now, taste))
                queries.append(taste)
        if queries:
            for (key, now, taste), row in zip(todo, index.search(np.stack(queries), depth)):
                self._keep(key, now, row, len(row) < depth, taste)

    def _use_taste(self, ctx: Context) -> bool:
        # The taste vector matters when the session says little (cold start); a longer
        # session speaks for itself and saves the per-user search.
        return self.use_user_vector and len(ctx.session_items) <= self.taste_max_session

    def _taste_of_session(self, ctx: Context) -> np.ndarray | None | object:
        """The taste vector ``ctx``'s session began with (None: the shopper had none), or
        ``_UNREAD`` when this process did not see the session begin (then the stored
        vector serves)."""
        got = self._session_taste.get(ctx.user_id) if ctx.session_id else None
        return got[1] if got is not None and got[0] == ctx.session_id else _UNREAD

    async def _queries(self, ctx: Context, read_store: bool = True
                       ) -> tuple[list[np.ndarray], list[float], list[str], list[str]]:
        """(query vectors, weights, because, anchor ids): the session anchors, then the
        taste vector when the session says little. ``read_store=False`` uses only what is
        in process (the index, the taste vectors ``propose`` just read): no round trip."""
        index = self.index
        anchors = _distinct(ctx.session_items or ctx.recent_items, self.max_anchors)
        vecs: dict[str, np.ndarray] = {}
        missing = []
        for a in anchors:
            v = index.get(a)
            if v is None:
                missing.append(a)
            else:
                vecs[a] = v
        taste = self._taste_of_session(ctx) if self._use_taste(ctx) else None
        read_taste = taste is _UNREAD  # the session began elsewhere: the stored vector serves
        if read_taste:
            taste = None
        if read_store:
            ops: list[tuple] = [("get", self.keys.item_vector(a)) for a in missing]
            prefetched = self._prefetched.pop(ctx.user_id, _UNREAD) if read_taste else _UNREAD
            if read_taste and prefetched is _UNREAD:  # what this batch just wrote, if it did
                prefetched = self._folded.get(ctx.user_id, _UNREAD)
                if prefetched is _UNREAD:
                    ops.append(("get", self.keys.user_vector(ctx.user_id)))
            res = await self.store.read(ops) if ops else []
            for a, raw in zip(missing, res):
                v = vector_from_bytes(raw, index.dim)
                if v is not None:
                    vecs[a] = v
            if read_taste:
                user = unpack_user_vector(res[-1] if prefetched is _UNREAD else prefetched, index.dim)
                if user is None:
                    self._taste.pop(ctx.user_id, None)
                else:
                    self._remember(ctx.user_id, user)
                    taste = user[0]
        elif read_taste:
            user = self._taste.get(ctx.user_id)
            taste = None if user is None else user[0]
        queries, weights, because = [], [], []
        for rank, a in enumerate(anchors):
            if a in vecs:
                queries.append(vecs[a])
                weights.append(self.recency_decay ** rank)
                because.append(a)
        if taste is not None and np.any(taste):
            queries.append(taste)
            weights.append(self.user_weight)
            because.append("")
        return queries, weights, because, anchors

    def _search(self, queries: list, because: list[str], n: int, exclude: set[str],
                now: float, user_id: str) -> list:
        """The ``n`` nearest neighbours of each query, ``exclude`` left out."""
        need = n + len(exclude)
        return [_head(row, need, exclude, n) for row in self._rows(queries, because, need, now, user_id)]

    def _rows(self, queries: list, because: list[str], need: int, now: float, user_id: str) -> list[_Row]:
        """The kept neighbours of each query, at least ``need`` deep (or the whole index).

        One search per anchor serves every caller: an anchor item's neighbours are
        searched ``search_depth`` deep (at least) and kept until the index changes (its
        ``version``), or for ``neighbour_ttl_s`` seconds of event time when it keeps
        changing (event time keeps replays deterministic). A taste vector's neighbours
        are kept per user while the vector stays the same, on the same terms (the
        content and new-item sources of one list share them, and a session's first
        lists search with the taste it began with). A row stays the same object while it
        is kept, so callers may cache what they derive from it."""
        depth = max(need, self.search_depth)
        rows: list = [None] * len(queries)
        todo = []
        for i, anchor in enumerate(because):
            rows[i] = self._cached(anchor or user_id, now, need, None if anchor else queries[i])
            if rows[i] is None:
                todo.append(i)
        if todo:
            found = self.index.search(np.stack([queries[i] for i in todo]), depth)
            for i, row in zip(todo, found):
                # fewer than asked: the whole index, no deeper search finds more
                rows[i] = self._keep(because[i] or user_id, now, row, len(row) < depth,
                                     None if because[i] else queries[i])
        return rows

    def _cached(self, key: str, now: float, need: int, taste: np.ndarray | None = None) -> _Row | None:
        """The kept neighbours of anchor ``key``, or of user ``key``'s ``taste`` vector,
        when still valid and at least ``need`` deep (or the whole index); else None."""
        if taste is None:
            got = self._neighbours.get(key)
            if got is None:
                return None
            ts, seen, row, complete = got
        else:
            kept = self._taste_hits.get(key)
            if kept is None or kept[2] != taste.tobytes():  # kept for another taste vector
                return None
            ts, seen, _, row, complete = kept
        version = getattr(self.index, "version", None)
        valid = (seen is not None and seen == version) or 0 <= now - ts < self.neighbour_ttl_s
        return row if valid and (len(row[0]) >= need or complete) else None

    def _keep(self, key: str, now: float, hits: list, complete: bool, taste: np.ndarray | None) -> _Row:
        """Keep a search's ``hits`` (compactly: ~1.4 kB for 100 neighbours) and return them."""
        version = getattr(self.index, "version", None)
        row = (tuple(item for item, _ in hits), np.fromiter((cos for _, cos in hits), np.float32, len(hits)))
        if taste is None:
            self._neighbours[key] = (now, version, row, complete)
            if len(self._neighbours) > self.cache_users:
                self._neighbours.pop(next(iter(self._neighbours)))
        else:
            self._taste_hits[key] = (now, version, taste.tobytes(), row, complete)
            self._taste_hits.move_to_end(key)
            while len(self._taste_hits) > self.taste_cache:
                self._taste_hits.popitem(last=False)
        return row

    async def similar_items(self, item_id: str, n: int) -> list[tuple[str, float]]:
        """The ``n`` items whose text is closest to ``item_id`` (empty if it has no vector)."""
        if self.index is None or n <= 0:
            return []
        v = self.index.get(item_id)
        if v is None:
            (raw,) = await self.store.read([("get", self.keys.item_vector(item_id))])
            v = vector_from_bytes(raw, self.index.dim)
        if v is None:
            return []
        return self.index.query(v, n, exclude={item_id})

    # -- the user's text taste ----------------------------------------------------------
    def observe(self, ctx: Context, item_id: str, weight: float, ts: float) -> list[WriteOp]:
        """The store write that folds one interaction into the user's preference vector.

        ``mean <- (mean * w * decay + v * weight) / (w * decay + weight)``, with
        ``decay = 0.5 ** (elapsed / half_life_s)``. Synchronous (the recommender batches
        the writes of every source), so the previous vector comes from this source's own
        cache, which ``propose`` refreshes from the store on every call; on a miss it is
        rebuilt from ``ctx.recent_items`` (the i-th newest weighted ``recency_decay ** i``).
        A shopper without history starts afresh, so an erased user never gets an old
        vector back.
        """
        if self.index is None or weight <= 0 or not self.use_user_vector:
            return []
        v = self.index.get(item_id)
        if v is None:
            return []
        if ctx.user_id not in self._before:
            self._before[ctx.user_id] = (self._taste.get(ctx.user_id), self._session_taste.get(ctx.user_id))
        old = self._taste.get(ctx.user_id) if ctx.recent_items else None
        if old is None and ctx.recent_items:
            old = self._from_history(ctx.recent_items, ts)
        if ctx.session_id and not ctx.session_items:  # the session's first interaction
            self._session_taste[ctx.user_id] = (ctx.session_id, None if old is None else old[0])
            self._session_taste.move_to_end(ctx.user_id)
            while len(self._session_taste) > self.cache_users:
                self._session_taste.popitem(last=False)
        elif len(ctx.session_items) >= self.taste_max_session:  # too long for the taste now
            self._session_taste.pop(ctx.user_id, None)
        mean, total, last = _fold(old, v, weight, ts, self.half_life_s)
        self._remember(ctx.user_id, (mean, total, last))
        packed = self._folded[ctx.user_id] = pack_user_vector(mean, total, last)
        return [("set", self.keys.user_vector(ctx.user_id), packed, self.user_vector_ttl_s)]

    def begin_batch(self) -> None:
        """A new batch: taste vectors folded before it may have changed in the store since."""
        self._folded.clear()
        self._before.clear()

    def undo_batch(self) -> None:
        """The batch failed (none of its writes landed): its shoppers' taste rows go back
        to what it found."""
        for user_id, (taste, session_taste) in self._before.items():
            for cache, kept in ((self._taste, taste), (self._session_taste, session_taste)):
                if kept is None:
                    cache.pop(user_id, None)
                else:
                    cache[user_id] = kept
        self._before.clear()
        self._folded.clear()

    async def learn(self, user_id: str, item_id: str, ts: float, weight: float = 1.0) -> bool:
        """``observe`` for callers outside the recommender: reads the stored vector (and the
        item's, if not in the index), folds the interaction in, writes it back. False when
        the item has no vector."""
        if self.index is None or weight <= 0:
            return False
        dim = self.index.dim
        v = self.index.get(item_id)
        ops: list[tuple] = [("get", self.keys.user_vector(user_id))]
        if v is None:
            ops.append(("get", self.keys.item_vector(item_id)))
        res = await self.store.read(ops)
        if v is None:
            v = vector_from_bytes(res[1], dim)
            if v is None:
                return False
        mean, total, last = _fold(unpack_user_vector(res[0], dim), v, weight, ts, self.half_life_s)
        self._remember(user_id, (mean, total, last))
        await self.store.write([("set", self.keys.user_vector(user_id), pack_user_vector(mean, total, last),
                                 self.user_vector_ttl_s)])
        return True

    def forget(self, user_id: str) -> None:
        """Drop the cached preference vector (and its searches) of an erased user."""
        self._taste.pop(user_id, None)
        self._taste_hits.pop(user_id, None)
        self._prefetched.pop(user_id, None)
        self._folded.pop(user_id, None)
        self._session_taste.pop(user_id, None)

    def _from_history(self, recent: Sequence[str], ts: float) -> tuple[np.ndarray, float, float] | None:
        vecs, weights = [], []
        for rank, i in enumerate(_distinct(recent, self.history_items)):
            v = self.index.get(i)
            if v is not None:
                vecs.append(v)
                weights.append(self.recency_decay ** rank)
        if not vecs:
            return None
        w = np.asarray(weights, dtype=np.float32)
        return (w @ np.stack(vecs)) / w.sum(), float(w.sum()), ts

    def _remember(self, user_id: str, state: tuple[np.ndarray, float, float]) -> None:
        self._taste[user_id] = state
        self._taste.move_to_end(user_id)
        while len(self._taste) > self.cache_users:
            self._taste.popitem(last=False)

    async def user_vector(self, user_id: str) -> np.ndarray | None:
        """The user's preference vector (unit length), or None."""
        if self.index is None:
            return None
        (raw,) = await self.store.read([("get", self.keys.user_vector(user_id))])
        got = unpack_user_vector(raw, self.index.dim)
        return None if got is None else normalise(got[0])[0]


class NewItemsSource:
    """Catalog items nobody has interacted with yet, close in text to the shopper's
    session (or taste): a bounded number of exploration candidates for new items.

    Co-visitation, session-kNN, next-item transitions and popularity all need
    interactions, so an item that has never been clicked or bought can only ever be
    proposed by text. ``ContentSource`` ranks it among every text neighbour, where it
    rarely makes the list; this source (name ``new_items``) proposes at most ``slots``
    of them per list — the best text neighbours of the session's items (and of the
    taste vector when the session is short) among the items with fewer than
    ``fresh_below`` recorded interactions — so their weight in the blend (the
    ``new_items`` prior) decides whether they take up to ``slots`` places in a list.
    Scores are the same ``weight * cosine`` as the content source's, not normalised:
    a weak text match stays a weak candidate.

    Interaction counts: items this process has seen interacted with (``observe``) are
    known to be established; for the others the global per-item totals
    (``Keys.counts()``, kept by the popularity source and weighted like it: a click 1,
    a purchase 5; the default ``fresh_below = 1`` means "never touched") are read in
    one ``hmget`` per call, and a fresh answer is trusted for ``status_ttl_s`` seconds
    of event time (an established one for good: totals only grow). It reuses the
    content source's index, neighbour cache and taste vectors: no extra store read
    beyond the counts, no extra search for anchors searched in the last minute.

    >>> import asyncio, numpy as np
    >>> from models.features.memory import MemoryStore
    >>> from models.content.index import ExactIndex
    >>> ix = ExactIndex(dim=2)
    >>> ix.upsert(["mug", "cup", "tumbler", "lamp"],
    ...           np.array([[1, 0], [0.9, 0.2], [0.8, 0.3], [0, 1]], dtype=np.float32))
    >>> store = MemoryStore()
    >>> new = NewItemsSource(ContentSource(store, Keys(), ix), slots=1)
    >>> _ = new.observe(Context("u0", 0.0, [], []), "cup", 1.0, 0.0)   # someone bought a cup
    >>> [i for i, _, _ in asyncio.run(new.propose(Context("u1", 0.0, ["mug"], []), 5))]
    ['tumbler']
    """

    name = "new_items"

    def __init__(self, content: ContentSource, *, slots: int = 3, fresh_below: float = 1.0,
                 depth: int = 100, status_ttl_s: float = 60.0, cache_items: int = 500_000) -> None:
        self.content = content
        self.store, self.keys = content.store, content.keys
        self.slots = max(0, int(slots))
        self.fresh_below = float(fresh_below)
        self.depth = max(1, int(depth))
        self.status_ttl_s = float(status_ttl_s)
        self.cache_items = int(cache_items)
        #: items known to have at least ``fresh_below`` interactions (counts only grow)
        self._established: dict[str, None] = {}
        #: item -> (event time read, interactions) for items still fresh when read
        self._fresh: dict[str, tuple[float, float]] = {}
        self._local: dict[str, float] = {}
        #: item -> its local count as this batch found it (``undo_batch``)
        self._local_before: dict[str, float | None] = {}
        #: anchor -> (its row, ``_adds`` when filtered, the row's candidates): see ``_fresh_part``
        self._parts: OrderedDict[str, tuple[_Row, int, list[tuple[int, str, float]]]] = OrderedDict()
        self.cache_rows = 2048  # ~12 kB each at 100 neighbours
        self.refilter_after = 64
        self._adds = 0  # items established so far
        # one search per anchor serves both sources (their anchors are left out of it)
        content.search_depth = max(content.search_depth, self.depth + content.max_anchors)

    def observe(self, ctx: Context, item_id: str, weight: float, ts: float) -> list[WriteOp]:
        """Count the interaction in process, weighted like the stored totals (no store
        write: the totals are the popularity source's)."""
        if item_id not in self._local_before:
            self._local_before[item_id] = self._local.get(item_id)
        n = self._local.get(item_id, 0.0) + weight
        if n >= self.fresh_below:
            self._local.pop(item_id, None)
            self._establish(item_id)
        else:
            self._local[item_id] = n
        return []

    async def propose(self, ctx: Context, n: int) -> list[tuple[str, float, str]]:
        content, index = self.content, self.content.index
        if index is None or len(index) == 0 or n <= 0 or self.slots == 0:
            return []
        queries, weights, because, anchors = await content._queries(ctx, read_store=False)
        if not queries:
            return []
        skip = set(anchors)
        rows = content._rows(queries, because, self.depth + len(skip), ctx.now, ctx.user_id)
        parts = [(w, why, self._fresh_part(why, row), self._cutoff(row, skip))
                 for w, why, row in zip(weights, because, rows)]
        # The best few of each row hold the best few overall; every candidate only when
        # most of those turn out not to be fresh.
        out = await self._pick(parts, skip | ctx.exclude, 4 * self.slots, ctx.now)
        if out is None:
            out = await self._pick(parts, skip | ctx.exclude, None, ctx.now)
        return out

    async def _pick(self, parts: list, exclude: set[str], per_row: int | None, now: float
                    ) -> list[tuple[str, float, str]] | None:
        """Up to ``slots`` fresh items by ``weight * cosine``, taking at most ``per_row``
        candidates from each row (and any tied with the last); None when that was too
        few to decide."""
        established = self._established
        best: dict[str, tuple[float, str]] = {}
        cut_short = False
        for w, why, part, cutoff in parts:
            taken, last = 0, None
            for pos, item_id, cos in part:
                if pos >= cutoff:
                    break
                if item_id in exclude or item_id in established:
                    continue
                if taken == per_row and cos != last:
                    cut_short = True
                    break
                taken, last = taken + 1, cos
                sc = w * cos
                cur = best.get(item_id)
                if cur is None or sc > cur[0]:
                    best[item_id] = (sc, why)
        order = lambda kv: (-kv[1][0], kv[0])  # noqa: E731
        ranked = heapq.nsmallest(4 * self.slots, best.items(), key=order)
        out: list[tuple[str, float, str]] = []
        pos = 0
        while len(out) < self.slots and pos < len(best):
            if pos == len(ranked):
                if cut_short:
                    return None
                ranked = sorted(best.items(), key=order)
            part = ranked[pos:pos + 2 * self.slots]  # read a few more counts than needed
            pos += len(part)
            fresh = await self._fresh_among([i for i, _ in part], now)
            out += [(i, round(sc, 6), why) for i, (sc, why) in part if i in fresh][: self.slots - len(out)]
        if len(out) < self.slots and cut_short:
            return None
        return out

    def _fresh_part(self, why: str, row: _Row) -> list[tuple[int, str, float]]:
        """(position, item, cosine) of the row's items with a positive cosine that were not
        known to be established. Kept for anchor rows: rebuilt when the row changes,
        refiltered (a shrinking list) once ``refilter_after`` more items were
        established; callers skip those established since. A taste row serves one list,
        so it gets no filtering pass: every item with a positive cosine is returned and
        the caller's skip does the filtering while it reads only the head of the row."""
        established = self._established
        got = self._parts.get(why) if why else None
        if got is not None and got[0] is row:
            if self._adds - got[1] < self.refilter_after:
                return got[2]
            part = [e for e in got[2] if e[1] not in established]
        elif not why:  # a taste row serves one list: no filtering pass, ``_pick`` skips
            ids, cos = row  # the established (rows are best first: cut at cosine <= 0)
            return list(zip(range(len(ids)), ids, cos[:int(np.count_nonzero(cos > 0.0))].tolist()))
        else:
            ids, cos = row
            part = [(p, i, c) for p, (i, c) in enumerate(zip(ids, cos.tolist()))
                    if c > 0.0 and i not in established]
        if why:
            self._parts.pop(why, None)
            self._parts[why] = (row, self._adds, part)
            while len(self._parts) > self.cache_rows:
                self._parts.popitem(last=False)
        return part

    def _cutoff(self, row: _Row, skip: set[str]) -> int:
        """Where a row's candidates end: after its first ``depth`` items that are not
        anchors (rows are read ``depth + len(skip)`` deep for that)."""
        ids, need = row[0], self.depth + len(skip)
        at = []
        for a in skip:
            try:
                at.append(ids.index(a, 0, need))
            except ValueError:
                pass
        cutoff = self.depth
        for p in sorted(at):
            if p < cutoff:
                cutoff += 1
        return min(cutoff, need)

    async def _fresh_among(self, items: list[str], now: float) -> set[str]:
        """The ``items`` with fewer than ``fresh_below`` interactions, by the global
        totals (one ``hmget``, only for items not read in the last ``status_ttl_s``)."""
        fresh, unknown = set(), []
        for i in items:
            got = self._fresh.get(i)
            if got is not None and 0 <= now - got[0] < self.status_ttl_s:
                fresh.add(i)
            else:
                unknown.append(i)
        if unknown:
            (counts,) = await self.store.read([("hmget", self.keys.counts(), unknown)])
            for i, c in zip(unknown, counts):
                total = max(float(c or 0.0), self._local.get(i, 0.0))
                if total >= self.fresh_below:
                    self._fresh.pop(i, None)
                    self._establish(i)
                else:
                    fresh.add(i)
                    self._fresh[i] = (now, total)
                    if len(self._fresh) > self.cache_items:
                        self._fresh.pop(next(iter(self._fresh)))
        return fresh

    def begin_batch(self) -> None:
        self._local_before.clear()

    def undo_batch(self) -> None:
        """The batch failed: its interactions leave the local counts (an item it made
        established stays so: doing the batch again makes it so anyway)."""
        for item_id, n in self._local_before.items():
            if n is None:
                self._local.pop(item_id, None)
            else:
                self._local[item_id] = n
        self._local_before.clear()

    def _establish(self, item_id: str) -> None:
        self._fresh.pop(item_id, None)
        if item_id in self._established:
            return
        self._adds += 1
        self._established[item_id] = None
        if len(self._established) > self.cache_items:
            self._established.pop(next(iter(self._established)))


def _fold(old: tuple[np.ndarray, float, float] | None, v: np.ndarray, weight: float, ts: float,
          half_life_s: float) -> tuple[np.ndarray, float, float]:
    v = normalise(v)[0]
    if old is None:
        return v, float(weight), float(ts)
    o_mean, o_weight, o_ts = old
    decay = 0.5 ** (max(0.0, ts - o_ts) / half_life_s) if half_life_s > 0 else 1.0
    w_old = o_weight * decay
    total = w_old + weight
    return (o_mean * w_old + v * weight) / total, total, max(float(ts), o_ts)


def _best(weights: list[float], because: list[str], hits: list, n: int) -> list[tuple[str, float, str]]:
    """Each candidate's best ``weight * cosine`` over the queries, the ``n`` best first."""
    best: dict[str, tuple[float, str]] = {}
    for w, why, row in zip(weights, because, hits):
        for item_id, cos in row:
            s = w * cos
            cur = best.get(item_id)
            if cur is None or s > cur[0]:
                best[item_id] = (s, why)
    # ranked by the score as reported (6 decimals), ties by id: a batch's search and a
    # single query's differ in the last bits of a cosine, never in the order they give
    ranked = sorted(((item_id, round(s, 6), why) for item_id, (s, why) in best.items()),
                    key=lambda r: (-r[1], r[0]))
    return ranked[:n]


def _distinct(items: Sequence[str], limit: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for i in items:
        if i not in seen:
            seen.add(i)
            out.append(i)
            if len(out) == limit:
                break
    return out
