"""Catalog ingestion: ``items`` events -> text embeddings -> feature store and vector index.

Embedding is kept off the hot path: ``submit`` only queues the event; a background
batcher collects up to ``batch_size`` events (or whatever arrived within
``max_wait_s``) and encodes their texts in a thread executor, so the event loop keeps
serving clicks while the model runs. Per batch the store sees one pipelined read and
one pipelined write:

- ``Keys.item_vector(id)``: the unit-length float32 embedding (bytes);
- ``Keys.item_meta(id)``: hash ``title``, ``category``, ``price``, ``available`` (``1``/``0``),
  ``ts`` and ``digest`` (a hash of the embedded text, so a price or stock update
  does not re-run the model);
- ``Keys.catalog_ids()``: set of the available item ids (what ``rebuild`` reads).

Upserts are idempotent and ordered by event time: an event older than the stored
``ts`` changes nothing. Unavailable items leave the index (their vector stays in the
store, so they come back without re-encoding). ``rebuild()`` refills an empty index
from the store at start-up.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from models.content.encoder import TextEncoder
from models.content.index import VectorIndex, copy_with
from models.events import Item
from models.features.keys import Keys
from models.features.store import FeatureStore

log = logging.getLogger(__name__)

#: Characters of the description that go into the embedded text.
DESCRIPTION_CHARS = 300


def item_text(item: Item) -> str:
    """The text embedded for an item: title, category, start of the description.

    >>> item_text(Item("i1", "Red mug", 1.7e9, description="Stoneware, 350 ml", category="Kitchen"))
    'Red mug. Kitchen. Stoneware, 350 ml'
    """
    parts = [item.title.strip()]
    if item.category and item.category.strip():
        parts.append(item.category.strip())
    if item.description and item.description.strip():
        parts.append(item.description.strip()[:DESCRIPTION_CHARS])
    return ". ".join(parts)


def text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def vector_bytes(v: np.ndarray) -> bytes:
    return np.asarray(v, dtype="<f4").tobytes()


def vector_from_bytes(raw: bytes | None, dim: int | None = None) -> np.ndarray | None:
    """A stored float32 vector, or None when absent or of the wrong size."""
    if not raw:
        return None
    if len(raw) % 4:
        return None
    v = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if dim is not None and len(v) != dim:
        return None
    return v


@dataclass
class CatalogStats:
    events: int = 0
    batches: int = 0
    encoded: int = 0
    reused: int = 0
    stale: int = 0
    removed: int = 0
    errors: int = 0
    encode_s: float = 0.0


class CatalogIngestor:
    """Keeps item metadata, item vectors and the vector index in step with ``items`` events.

    ``encoder`` may be None (no model installed): metadata is still stored, nothing is
    embedded. ``executor`` defaults to a private one-thread pool (closed by ``close``).

    >>> import asyncio
    >>> from models.features.memory import MemoryStore
    >>> from models.content.index import ExactIndex
    >>> from models.content.encoder import load_default_encoder
    >>> async def main(encoder):
    ...     ing = CatalogIngestor(MemoryStore(), Keys(), encoder, ExactIndex(encoder.dim))
    ...     await ing.start()
    ...     await ing.submit(Item("i1", "White metal lantern", 1.7e9))
    ...     await ing.flush(); await ing.close()
    ...     return "i1" in ing.index
    >>> asyncio.run(main(load_default_encoder()))    # doctest: +SKIP
    True
    """

    def __init__(self, store: FeatureStore, keys: Keys, encoder: TextEncoder | None,
                 index: VectorIndex | None, *, batch_size: int = 64, max_wait_s: float = 0.05,
                 max_pending: int = 10_000, executor: Executor | None = None,
                 text_of: Callable[[Item], str] = item_text) -> None:
        self.store = store
        self.keys = keys
        self.encoder = encoder
        self.index = index
        self.batch_size = max(1, int(batch_size))
        self.max_wait_s = float(max_wait_s)
        self.text_of = text_of
        self.stats = CatalogStats()
        self._queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=max_pending)
        self._task: asyncio.Task | None = None
        self._spill: set[asyncio.Task] = set()
        self._own_executor = executor is None
        self._executor = executor

    def __deepcopy__(self, memo: dict) -> "CatalogIngestor":
        """A copy that learns apart (its store, index and counts copied, e.g. a tuning
        trial's) and shares this one's encoder and thread; nothing queued travels."""
        return copy_with(self, memo, encoder=self.encoder, _executor=self._executor, _own_executor=False,
                         _queue=asyncio.Queue(maxsize=self._queue.maxsize), _task=None, _spill=set())

    # -- background batching -------------------------------------------------------
    async def start(self) -> None:
        """Start the background batcher (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="catalog-batcher")

    async def submit(self, item: Item) -> None:
        """Queue one catalog event; waits only when ``max_pending`` events are queued."""
        if self._task is None:
            await self.start()
        await self._queue.put(item)

    def offer(self, items: Sequence[Item]) -> None:
        """Queue catalog events from synchronous code running on the event loop (a
        pipeline hook); never blocks: past ``max_pending`` the rest wait in tasks."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="catalog-batcher")
        for it in items:
            try:
                self._queue.put_nowait(it)
            except asyncio.QueueFull:
                t = asyncio.get_running_loop().create_task(self._queue.put(it))
                self._spill.add(t)
                t.add_done_callback(self._spill.discard)

    async def flush(self) -> None:
        """Wait until every queued event has been ingested."""
        while self._spill:
            await asyncio.gather(*list(self._spill))
        await self._queue.join()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        """Ingest what is queued, stop the batcher, release the executor."""
        if self._task is not None:
            if not self._task.done():
                await self.flush()
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
            self._task = None
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            try:
                await self.ingest(batch)
            except Exception:  # keep the batcher alive; the next upsert of these items retries
                self.stats.errors += 1
                log.exception("catalog batch of %d items failed", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    # -- one batch -------------------------------------------------------------------
    async def ingest(self, items: Sequence[Item]) -> None:
        """Ingest a batch now (the batcher calls this; replay may call it directly)."""
        if not items:
            return
        self.stats.events += len(items)
        self.stats.batches += 1
        latest: dict[str, Item] = {}
        for it in items:  # newest event per item wins within the batch
            cur = latest.get(it.item_id)
            if cur is None or it.ts >= cur.ts:
                latest[it.item_id] = it
        ids = list(latest)
        k = self.keys
        stored = await self.store.read([("hmget", k.item_meta(i), ["ts", "digest"]) for i in ids])

        fresh: list[tuple[Item, str, str]] = []  # (item, text, digest)
        same_text: list[Item] = []
        for item_id, (ts, digest) in zip(ids, stored):
            it = latest[item_id]
            if ts is not None and float(ts) > it.ts:
                self.stats.stale += 1
                continue
            text = self.text_of(it)
            d = text_digest(text)
            if self.encoder is not None and d == digest:
                same_text.append(it)
            else:
                fresh.append((it, text, d))

        vectors: dict[str, np.ndarray] = {}
        if self.encoder is not None:
            # Unchanged text: reuse the stored vector when the item re-enters the index.
            need = [it for it in same_text if it.available and (self.index is None or it.item_id not in self.index)]
            if need:
                raws = await self.store.read([("get", k.item_vector(it.item_id)) for it in need])
                for it, raw in zip(need, raws):
                    v = vector_from_bytes(raw, self.encoder.dim)
                    if v is None:  # vector lost: encode again
                        same_text.remove(it)
                        text = self.text_of(it)
                        fresh.append((it, text, text_digest(text)))
                    else:
                        vectors[it.item_id] = v
                        self.stats.reused += 1
            if fresh:
                texts = [t for _, t, _ in fresh]
                started = time.perf_counter()
                loop = asyncio.get_running_loop()
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
                embedded = await loop.run_in_executor(self._executor, self.encoder.encode, texts)
                self.stats.encode_s += time.perf_counter() - started
                self.stats.encoded += len(texts)
                for (it, _, _), v in zip(fresh, embedded):
                    vectors[it.item_id] = v

        ops: list[tuple] = []
        for it, _, d in fresh:
            ops += self._meta_ops(it, d if self.encoder is not None else "")
            if it.item_id in vectors:
                ops.append(("set", k.item_vector(it.item_id), vector_bytes(vectors[it.item_id]), None))
        for it in same_text:
            ops += self._meta_ops(it, None)
        if ops:
            await self.store.write(ops)

        if self.index is not None:
            gone = [it.item_id for it, _, _ in fresh if not it.available]
            gone += [it.item_id for it in same_text if not it.available]
            gone = [i for i in gone if i in self.index]
            if gone:
                self.index.remove(gone)
                self.stats.removed += len(gone)
            up = [i for i, v in vectors.items() if latest[i].available]
            if up:
                self.index.upsert(up, np.stack([vectors[i] for i in up]))

    def _meta_ops(self, it: Item, digest: str | None) -> list[tuple]:
        meta = self.keys.item_meta(it.item_id)
        fields = {"title": it.title, "available": "1" if it.available else "0", "ts": repr(float(it.ts))}
        if digest is not None:
            fields["digest"] = digest
        ops: list[tuple] = []
        for name, value in (("category", it.category), ("price", it.price)):
            if value is None:
                ops.append(("hdel", meta, name))
            else:
                fields[name] = value if isinstance(value, str) else repr(float(value))
        ops.insert(0, ("hset", meta, fields))
        ops.append(("sadd" if it.available else "srem", self.keys.catalog_ids(), it.item_id))
        return ops

    # -- start-up --------------------------------------------------------------------
    async def rebuild(self, chunk: int = 2000) -> int:
        """Fill the index from the store (available items with a vector); returns the count."""
        if self.index is None:
            return 0
        k = self.keys
        (ids,) = await self.store.read([("smembers", k.catalog_ids())])
        ids = sorted(ids)
        dim = self.index.dim
        added = 0
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            ops: list[tuple] = []
            for i in part:
                ops += [("hmget", k.item_meta(i), ["available"]), ("get", k.item_vector(i))]
            res = await self.store.read(ops)
            up, vecs = [], []
            for j, i in enumerate(part):
                (available,), raw = res[2 * j], res[2 * j + 1]
                v = vector_from_bytes(raw, dim)
                if available == "1" and v is not None:
                    up.append(i)
                    vecs.append(v)
            if up:
                self.index.upsert(up, np.stack(vecs))
                added += len(up)
            await asyncio.sleep(0)  # let the loop breathe between chunks
        log.info("vector index rebuilt from the store: %d of %d catalog items", added, len(ids))
        return added
