"""Nearest-neighbour search over item vectors by cosine similarity, behind one small protocol.

- ``ExactIndex``: a numpy matrix; one matrix product per query batch. Exact, cheap to
  update, fine for small catalogs.
- ``AnnIndex``: an HNSW graph from ``usearch`` (approximate; recall ~0.99 at the default
  settings on 384-dimensional text vectors).
- ``AutoIndex``: exact until the catalog passes ``threshold`` items, then moves itself to
  ANN once (no way back: catalogs seldom shrink by much).

Crossover, measured with ``python -m benchmarks.bench_content`` on 2 CPU cores shared
with other work (load average 4-7; 384 dimensions, float32, k=50, p50 of one query):
exact search grows linearly, about 0.2 ms at 1k items, 0.5 ms at 5k, 0.8-0.9 ms at 10k,
2-6 ms at 20k and 22 ms at 100k; HNSW answered in 0.46 ms at 10k and 1.2 ms at 100k
with recall@10 of 0.999-1.0 on text-like vectors, but costs 0.5-1.3 ms of build time
per item (5-7 s for 10k items, 2-2.2 minutes for 100k). They meet between 5k and 10k
items, so ``AutoIndex`` switches at 10,000, and builds the graph in a background thread
so the switch never stalls the event loop.

Vectors are L2-normalised on the way in, so scores are cosine similarities. All methods
are meant to be called from one thread (the event loop); none blocks for long.

>>> import numpy as np
>>> ix = ExactIndex(dim=3)
>>> ix.upsert(["a", "b", "c"], np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1]], dtype=np.float32))
>>> [(i, round(s, 3)) for i, s in ix.query(np.array([1, 0, 0], dtype=np.float32), 2)]
[('a', 1.0), ('b', 0.994)]
>>> ix.remove(["a"]); [i for i, _ in ix.query(np.array([1, 0, 0], dtype=np.float32), 2)]
['b', 'c']
"""

from __future__ import annotations

import contextlib
import copy
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Collection, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

#: Catalog size above which ``AutoIndex`` moves from exact search to HNSW (see module doc).
ANN_THRESHOLD = 10_000

Hits = list[tuple[str, float]]


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32 ``[n, dim]``."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None, :]
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def checked_rows(ids: Sequence[str], vectors: np.ndarray, dim: int) -> np.ndarray:
    """``vectors`` normalised, after checking there is one row of ``dim`` values per id."""
    vecs = normalise(vectors)
    if len(ids) != len(vecs):
        raise ValueError(f"{len(ids)} ids but {len(vecs)} vectors")
    if vecs.shape[1] != dim:
        raise ValueError(f"vectors have {vecs.shape[1]} dimensions, index has {dim}")
    return vecs


@runtime_checkable
class VectorIndex(Protocol):
    """What the content features need from a nearest-neighbour index."""

    dim: int
    #: changes whenever a search could answer differently (an upsert, a removal), so
    #: callers may cache search results for as long as it stays the same
    version: int

    def __len__(self) -> int: ...

    def __contains__(self, item_id: object) -> bool: ...

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add or replace the vectors of ``ids`` (rows of ``vectors``)."""

    def remove(self, ids: Iterable[str]) -> None:
        """Forget ``ids``; unknown ids are ignored."""

    def get(self, item_id: str) -> np.ndarray | None:
        """The stored (unit-length) vector of ``item_id``, or None."""

    def search(self, queries: np.ndarray, n: int, exclude: Collection[str] = ()) -> list[Hits]:
        """For each query row, up to ``n`` (item_id, cosine) best first, skipping ``exclude``."""

    def query(self, vector: np.ndarray, n: int, exclude: Collection[str] = ()) -> Hits:
        """``search`` for one vector."""


def _blas_controller():
    """A threadpoolctl controller for the BLAS numpy uses, or None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    ctl = ThreadpoolController()
    return ctl if ctl.select(user_api="blas").lib_controllers else None


def best_per_row(scores: np.ndarray, want: int) -> tuple[list[list[int]], list[list[float]]]:
    """Each row's ``want`` largest values as (columns, values), best first; equal values
    in column order (an item added earlier first).

    A full selection over every column (``argpartition``) cost about 50 us per row of
    5,000, more than half the cost of the matrix product that made the row (see
    ``python -m benchmarks.bench_search``). Instead a threshold from
    every ``SAMPLE_STEP``-th column (its ``3 * want / SAMPLE_STEP``-th largest) keeps
    about three times ``want`` columns, which are sorted; a row where fewer than ``want``
    pass (unlikely) is sorted in full. The result is the same either way.

    >>> s = np.array([[0.1, 0.9, 0.5, 0.9], [0.3, 0.2, 0.1, 0.0]], dtype=np.float32)
    >>> cols, vals = best_per_row(s, 3)
    >>> cols, [[round(v, 1) for v in r] for r in vals]
    ([[1, 3, 2], [0, 1, 2]], [[0.9, 0.9, 0.5], [0.3, 0.2, 0.1]])
    """
    rows, size = scores.shape
    want = min(want, size)
    if want <= 0:
        return [[] for _ in range(rows)], [[] for _ in range(rows)]
    step = SAMPLE_STEP
    sample = scores[:, ::step]
    rank = -(-3 * want // step)  # the threshold's rank in the sample, from the top
    if size < 8 * want or rank >= sample.shape[1]:  # small: sort every column
        order = np.argsort(-scores, axis=1, kind="stable")[:, :want]
        return order.tolist(), np.take_along_axis(scores, order, 1).tolist()
    cut = sample.shape[1] - rank
    passed = scores >= np.partition(sample, cut, axis=1)[:, cut][:, None]
    out_cols, out_vals = [], []
    for row, ok in zip(scores, passed):
        cols = np.flatnonzero(ok)  # ascending
        if len(cols) < want:  # the sample set the threshold too high here: every column
            cols = np.arange(size)
        best = cols[np.argsort(-row[cols], kind="stable")[:want]]  # stable: ties in column order
        out_cols.append(best.tolist())
        out_vals.append(row[best].tolist())
    return out_cols, out_vals


#: ``best_per_row`` reads every this-many-th column to set its threshold.
SAMPLE_STEP = 10


def copy_with(obj: Any, memo: dict, **given: Any) -> Any:
    """A deep copy of ``obj`` (for its ``__deepcopy__``) whose attributes named in
    ``given`` are set to the values given (shared or fresh) instead of copied.

    >>> class Box:
    ...     def __init__(self): self.rows, self.lock = [1], object()
    ...     def __deepcopy__(self, memo): return copy_with(self, memo, lock=self.lock)
    >>> a = Box(); b = copy.deepcopy(a)
    >>> b.rows is a.rows, b.lock is a.lock
    (False, True)
    """
    twin = object.__new__(type(obj))
    memo[id(obj)] = twin
    for name, value in obj.__dict__.items():
        setattr(twin, name, given[name] if name in given else copy.deepcopy(value, memo))
    return twin


class ExactIndex:
    """Brute-force cosine search over a growing numpy matrix.

    Searches run BLAS on ``blas_threads`` threads (1 by default, via threadpoolctl): a
    multi-threaded product of a few queries against the matrix was 3-6 times slower on
    busy 2-core machines, where BLAS threads wait for a core while the event loop waits
    for them.

    >>> import numpy as np
    >>> ix = ExactIndex(dim=2)
    >>> ix.upsert(["x", "y"], np.array([[1, 0], [0, 1]], dtype=np.float32))
    >>> ix.query(np.array([0.6, 0.8], dtype=np.float32), 1, exclude={"y"})[0][0]
    'x'
    """

    kind = "exact"
    #: Up to this many queries are multiplied one at a time: OpenBLAS's matrix product
    #: for 2 or 3 queries took longer than as many matrix-vector products (0.39 against
    #: 0.23 ms for 2 at 5,000 x 384); from 4 on, one product is as fast or faster.
    GEMV_BELOW = 3

    def __init__(self, dim: int, capacity: int = 1024, blas_threads: int | None = 1) -> None:
        self.dim = int(dim)
        self._blas_threads = blas_threads
        self._blas = _blas_controller() if blas_threads else None
        self._m = np.zeros((max(1, capacity), self.dim), dtype=np.float32)
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self.version = 0

    def __deepcopy__(self, memo: dict) -> "ExactIndex":
        """A copy with vectors of its own, sharing the BLAS thread controller."""
        return copy_with(self, memo, _blas=self._blas)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    def ids(self) -> list[str]:
        return list(self._ids)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        vecs = checked_rows(ids, vectors, self.dim)
        self.version += 1
        for item_id, v in zip(ids, vecs):
            row = self._row.get(item_id)
            if row is None:
                row = len(self._ids)
                if row == len(self._m):
                    grown = np.zeros((2 * len(self._m), self.dim), dtype=np.float32)
                    grown[:row] = self._m[:row]
                    self._m = grown
                self._ids.append(item_id)
                self._row[item_id] = row
            self._m[row] = v

    def remove(self, ids: Iterable[str]) -> None:
        for item_id in ids:
            row = self._row.pop(item_id, None)
            if row is None:
                continue
            last = len(self._ids) - 1
            if row != last:  # move the last row into the hole
                moved = self._ids[last]
                self._m[row] = self._m[last]
                self._ids[row] = moved
                self._row[moved] = row
            self._ids.pop()
            self._m[last] = 0.0
            self.version += 1

    def get(self, item_id: str) -> np.ndarray | None:
        row = self._row.get(item_id)
        return None if row is None else self._m[row].copy()

    def matrix(self) -> tuple[list[str], np.ndarray]:
        """(ids, vectors) of every item, rows aligned."""
        return list(self._ids), self._m[: len(self._ids)].copy()

    def search(self, queries: np.ndarray, n: int, exclude: Collection[str] = ()) -> list[Hits]:
        q = normalise(queries)
        size = len(self._ids)
        if size == 0 or n <= 0:
            return [[] for _ in range(len(q))]
        m = self._m[:size]
        with (self._blas.limit(limits=self._blas_threads, user_api="blas") if self._blas
              else contextlib.nullcontext()):
            if len(q) <= self.GEMV_BELOW:  # a product per query: faster than one for few
                scores = np.stack([m @ v for v in q])
            else:  # [size, q] then transposed: OpenBLAS streams the big matrix once this way round
                scores = np.ascontiguousarray((m @ q.T).T)
        want = min(size, n + sum(1 for e in exclude if e in self._row))
        top, best = best_per_row(scores, want)
        ids = self._ids
        out: list[Hits] = []
        for rows, cos in zip(top, best):
            pairs = zip([ids[r] for r in rows], cos)
            out.append([p for p in pairs if p[0] not in exclude][:n] if exclude else list(pairs)[:n])
        return out

    def query(self, vector: np.ndarray, n: int, exclude: Collection[str] = ()) -> Hits:
        return self.search(vector, n, exclude)[0]


class AnnIndex:
    """Approximate cosine search with an HNSW graph (``usearch``).

    ``connectivity`` and ``expansion_search`` trade memory and latency for recall.

    >>> import numpy as np
    >>> ix = AnnIndex(dim=2)
    >>> ix.upsert(["x", "y"], np.array([[1, 0], [0, 1]], dtype=np.float32))
    >>> ix.query(np.array([0.1, 0.9], dtype=np.float32), 1)[0][0]
    'y'
    """

    kind = "ann"

    def __init__(self, dim: int, *, connectivity: int = 16, expansion_add: int = 128,
                 expansion_search: int = 128, dtype: str = "f32") -> None:
        # onnxruntime first: loaded after usearch, it crashes the process (segfault) when
        # the encoder's session starts (both bring their own native runtime libraries)
        with contextlib.suppress(ImportError):
            import onnxruntime  # noqa: F401
        from usearch.index import Index

        self.dim = int(dim)
        self._index = Index(ndim=self.dim, metric="cos", dtype=dtype, connectivity=connectivity,
                            expansion_add=expansion_add, expansion_search=expansion_search)
        self._key: dict[str, int] = {}
        self._id: dict[int, str] = {}
        self._next = 0
        self.version = 0

    def __deepcopy__(self, memo: dict) -> "AnnIndex":
        """A copy with a graph of its own (usearch's ``copy``)."""
        return copy_with(self, memo, _index=self._index.copy())

    def __len__(self) -> int:
        return len(self._key)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._key

    def ids(self) -> list[str]:
        return list(self._key)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        vecs = checked_rows(ids, vectors, self.dim)
        self.version += 1
        last: dict[str, int] = {}
        for i, item_id in enumerate(ids):  # the last row of a repeated id wins
            last[item_id] = i
        stale = [self._key[i] for i in last if i in self._key]
        if stale:
            self._index.remove(np.asarray(stale, dtype=np.uint64))
            for k in stale:
                del self._id[k]
        keys = np.empty(len(last), dtype=np.uint64)
        for j, item_id in enumerate(last):
            # A fresh key per version: usearch keys removed from the graph are not reused.
            k = self._next
            self._next += 1
            keys[j] = k
            self._key[item_id] = k
            self._id[k] = item_id
        rows = vecs[list(last.values())]
        self._index.add(keys, rows, threads=1 if len(rows) < 256 else 0)

    def remove(self, ids: Iterable[str]) -> None:
        keys = [self._key.pop(i) for i in ids if i in self._key]
        if keys:
            self.version += 1
            self._index.remove(np.asarray(keys, dtype=np.uint64))
            for k in keys:
                del self._id[k]

    def get(self, item_id: str) -> np.ndarray | None:
        k = self._key.get(item_id)
        if k is None:
            return None
        v = self._index.get(k)
        return None if v is None else normalise(np.asarray(v, dtype=np.float32))[0]

    def search(self, queries: np.ndarray, n: int, exclude: Collection[str] = ()) -> list[Hits]:
        q = normalise(queries)
        size = len(self._key)
        if size == 0 or n <= 0:
            return [[] for _ in range(len(q))]
        want = min(size, n + sum(1 for e in exclude if e in self._key))
        res = self._index.search(q, want, threads=1)
        keys = np.atleast_2d(res.keys)
        dists = np.atleast_2d(res.distances)
        if hasattr(res, "counts"):  # BatchMatches
            counts = np.atleast_1d(res.counts)
        else:  # Matches: usearch squeezes a batch of one
            counts = np.array([len(res.keys)])
        out: list[Hits] = []
        for r in range(len(q)):
            hits: Hits = []
            for k, d in zip(keys[r, : counts[r]], dists[r, : counts[r]]):
                item_id = self._id.get(int(k))
                if item_id is None or item_id in exclude:
                    continue
                hits.append((item_id, float(1.0 - d)))
                if len(hits) == n:
                    break
            out.append(hits)
        return out

    def query(self, vector: np.ndarray, n: int, exclude: Collection[str] = ()) -> Hits:
        return self.search(vector, n, exclude)[0]


class AutoIndex:
    """Exact search for small catalogs, HNSW once the catalog passes ``threshold`` items.

    With ``background=True`` (the default) the HNSW graph is built from a snapshot in a
    worker thread (usearch releases the GIL) while exact search keeps answering; changes
    made meanwhile are replayed onto the graph before it takes over, on the next call
    (more than ``max_replay`` upserted rows, as in a bulk load, start a fresh build
    instead). ``settle()`` waits until the graph has taken over.

    >>> import numpy as np
    >>> ix = AutoIndex(dim=4, threshold=2, background=False)
    >>> ix.upsert(["a", "b"], np.eye(4, dtype=np.float32)[:2]); ix.kind
    'exact'
    >>> ix.upsert(["c"], np.eye(4, dtype=np.float32)[2:3]); ix.kind
    'ann'
    """

    def __init__(self, dim: int, threshold: int = ANN_THRESHOLD, *, background: bool = True,
                 max_replay: int = 2000, **ann_options) -> None:
        self.dim = int(dim)
        self.threshold = int(threshold)
        self.background = background
        self.max_replay = int(max_replay)
        self._ann_options = ann_options
        self._inner: ExactIndex | AnnIndex = ExactIndex(dim)
        self._build: Future | None = None
        self._pending: list[tuple[str, list[str], np.ndarray | None]] = []
        self.version = 0  #: changes with every upsert or removal, and when the graph takes over

    @property
    def kind(self) -> str:
        return self._inner.kind

    def __len__(self) -> int:
        return len(self._inner)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._inner

    def ids(self) -> list[str]:
        return self._inner.ids()

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        self._inner.upsert(ids, vectors)
        self.version += 1
        if self._build is not None:
            self._pending.append(("upsert", list(ids), normalise(vectors).copy()))
        self._maybe_switch()

    def remove(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        self._inner.remove(ids)
        self.version += 1
        if self._build is not None:
            self._pending.append(("remove", ids, None))
        self._maybe_switch()

    def get(self, item_id: str) -> np.ndarray | None:
        return self._inner.get(item_id)

    def search(self, queries: np.ndarray, n: int, exclude: Collection[str] = ()) -> list[Hits]:
        if self._build is not None and self._build.done():
            self._maybe_switch()
        return self._inner.search(queries, n, exclude)

    def query(self, vector: np.ndarray, n: int, exclude: Collection[str] = ()) -> Hits:
        return self.search(vector, n, exclude)[0]

    def settle(self, timeout_s: float | None = None) -> None:
        """Wait for background HNSW builds, then switch to the graph."""
        while self._build is not None:
            self._build.result(timeout_s)
            self._maybe_switch()

    def _new_ann(self, ids: list[str], matrix: np.ndarray) -> AnnIndex:
        ann = AnnIndex(self.dim, **self._ann_options)
        if ids:
            ann.upsert(ids, matrix)
        return ann

    def _maybe_switch(self) -> None:
        if self._build is not None:
            if not self._build.done():
                return
            build, self._build = self._build, None
            ann = build.result()
            backlog = sum(len(ids) for op, ids, _ in self._pending if op == "upsert")
            if backlog > self.max_replay:
                # Much arrived during the build (a bulk load): build again from a fresh
                # snapshot rather than inserting the backlog on the caller's thread.
                self._pending.clear()
                self._start_build()
                return
            for op, ids, vecs in self._pending:
                if op == "upsert":
                    ann.upsert(ids, vecs)
                else:
                    ann.remove(ids)
            self._pending.clear()
            self._inner = ann
            self.version += 1
            log.info("vector index: %d items, moved from exact search to HNSW", len(ann))
            return
        if isinstance(self._inner, ExactIndex) and len(self._inner) > self.threshold:
            if not self.background:
                all_ids, matrix = self._inner.matrix()
                self._inner = self._new_ann(all_ids, matrix)
                self.version += 1
                log.info("vector index: %d items, moved from exact search to HNSW", len(all_ids))
                return
            self._start_build()

    def _start_build(self) -> None:
        all_ids, matrix = self._inner.matrix()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hnsw-build")
        self._build = pool.submit(self._new_ann, all_ids, matrix)
        pool.shutdown(wait=False)
        log.info("vector index: %d items, building HNSW in the background", len(all_ids))
