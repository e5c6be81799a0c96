"""The content candidate source: text neighbours, recency, user taste, cold items, cost."""

from __future__ import annotations

import time

import numpy as np
import pytest

from models.candidates import CandidateSource, Context, gather_candidates
from models.content.catalog import CatalogIngestor
from models.content.index import ExactIndex, normalise
from models.content.sources import ContentSource, unpack_user_vector
from models.events import Item
from models.features.keys import Keys
from models.features.memory import MemoryStore
from tests.support.spies import count_searches

T0 = 1_700_000_000.0
CATALOG = {
    "mug": "red ceramic coffee mug",
    "cup": "porcelain tea cup and saucer",
    "hose": "garden hose with spray nozzle",
    "sprinkler": "lawn sprinkler for the garden",
    "lantern": "white metal lantern",
    "tlight": "glass tea light candle holder",
    "bauble": "set of 6 christmas tree baubles",
    "socks": "wool hiking socks",
}


@pytest.fixture
async def shop(encoder):
    store, keys = MemoryStore(), Keys("s:")
    catalog = CatalogIngestor(store, keys, encoder, ExactIndex(encoder.dim))
    await catalog.ingest([Item(i, t, T0) for i, t in CATALOG.items()])
    yield store, keys, catalog, ContentSource(store, keys, catalog.index)
    await catalog.close()


def ctx(session=(), recent=(), user="u1") -> Context:
    return Context(user, T0, list(session), list(recent))


async def test_is_a_candidate_source(shop):
    *_, src = shop
    assert isinstance(src, CandidateSource) and src.name == "content"
    got = await gather_candidates([src], ctx(["hose"]), k=2)
    assert "sprinkler" in got and got["sprinkler"].because["content"] == "hose"


async def test_new_item_gets_its_text_neighbours(shop):
    store, keys, catalog, src = shop
    # a brand-new item: nobody has clicked it, it only has a title
    await catalog.ingest([Item("new-mug", "blue stoneware coffee mug", T0 + 60)])
    out = await src.propose(ctx(["new-mug"]), 3)
    assert [i for i, _, _ in out[:2]] == ["mug", "cup"]
    assert all(because == "new-mug" for _, _, because in out)
    assert "new-mug" not in [i for i, _, _ in out]
    assert out[0][1] >= out[1][1] >= out[2][1]
    # and it is proposed to shoppers looking at similar things
    assert (await src.propose(ctx(["mug"]), 1))[0][0] == "new-mug"
    assert await src.similar_items("new-mug", 1) == [("mug", pytest.approx(out[0][1], abs=1e-5))]


def axis_shop() -> ContentSource:
    """Items on known directions: a1 and a2 are close to anchor a, b1 close to anchor b."""
    vecs = {"a": [1, 0, 0, 0], "a1": [0.9, 0.1, 0, 0], "a2": [0.8, 0, 0.2, 0],
            "b": [0, 0, 0, 1], "b1": [0, 0.1, 0, 0.9], "c": [0, 1, 0, 0]}
    index = ExactIndex(4)
    index.upsert(list(vecs), np.array(list(vecs.values()), dtype=np.float32))
    return ContentSource(MemoryStore(), Keys(), index, recency_decay=0.5)


async def test_newest_session_item_weighs_most():
    src = axis_shop()
    out = await src.propose(ctx(["b", "a", "b"]), 3)
    assert [(i, why) for i, _, why in out] == [("b1", "b"), ("a1", "a"), ("a2", "a")]
    assert out[0][1] == pytest.approx(0.9939, abs=1e-3)          # cosine, weight 1
    assert out[1][1] == pytest.approx(0.5 * 0.9939, abs=1e-3)    # one step older: half
    out = await src.propose(ctx(["a", "b"]), 2)
    assert [i for i, _, _ in out] == ["a1", "a2"]


async def test_recent_items_when_the_session_is_empty():
    src = axis_shop()
    assert (await src.propose(ctx([], ["b", "a"]), 1))[0][:3:2] == ("b1", "b")
    assert (await src.propose(ctx(["a"], ["b"]), 1))[0][0] == "a1"  # the session wins over history
    assert await src.propose(ctx([], []), 5) == []


async def test_text_neighbours_across_anchors(shop):
    *_, src = shop
    out = await src.propose(ctx(["lantern", "hose"]), 4)
    got = {i: why for i, _, why in out}
    assert got.get("tlight") == "lantern" and got.get("sprinkler") == "hose"


async def test_anchor_out_of_stock_still_works_from_the_store(shop):
    store, keys, catalog, src = shop
    await catalog.ingest([Item("hose", CATALOG["hose"], T0 + 5, available=False)])
    assert "hose" not in catalog.index
    out = await src.propose(ctx(["hose"]), 2)
    assert out[0][0] == "sprinkler" and "hose" not in [i for i, _, _ in out]
    assert "hose" not in [i for i, _, _ in await src.propose(ctx(["sprinkler"]), 8)]


async def test_user_vector_is_a_decayed_mean(shop, encoder):
    store, keys, catalog, src = shop
    assert await src.learn("u9", "mug", T0)
    assert await src.learn("u9", "cup", T0, weight=3.0)
    assert not await src.learn("u9", "unknown-item", T0)
    raw = (await store.read([("get", keys.user_vector("u9"))]))[0]
    mean, weight, ts = unpack_user_vector(raw, encoder.dim)
    mug, cup, hose = (catalog.index.get(i) for i in ("mug", "cup", "hose"))
    np.testing.assert_allclose(mean, (mug + 3 * cup) / 4, atol=1e-5)
    assert weight == pytest.approx(4.0) and ts == T0
    # two half-lives later the old taste counts a quarter
    assert await src.learn("u9", "hose", T0 + 2 * src.half_life_s)
    mean, weight, _ = unpack_user_vector((await store.read([("get", keys.user_vector("u9"))]))[0], encoder.dim)
    assert weight == pytest.approx(4.0 / 4 + 1.0)
    np.testing.assert_allclose(mean, ((mug + 3 * cup) / 4 + hose) / 2, atol=1e-5)
    assert keys.user_vector("u9") in keys.user_keys("u9")  # erased with the user


async def test_observe_returns_the_write_and_follows_the_store(shop, encoder):
    store, keys, catalog, src = shop
    mug, cup, hose = (catalog.index.get(i) for i in ("mug", "cup", "hose"))
    # first interaction of a shopper without history
    ops = src.observe(ctx(user="u5"), "mug", 1.0, T0)
    assert [op[:2] for op in ops] == [("set", keys.user_vector("u5"))]
    await store.write(ops)
    await store.write(src.observe(ctx(["mug"], ["mug"], user="u5"), "cup", 3.0, T0))
    mean, weight, _ = unpack_user_vector((await store.read([("get", keys.user_vector("u5"))]))[0], encoder.dim)
    np.testing.assert_allclose(mean, (mug + 3 * cup) / 4, atol=1e-5)
    # another worker (a fresh source) rebuilds a missing vector from the recent items
    other = ContentSource(store, keys, catalog.index, recency_decay=0.5)
    ops = other.observe(ctx([], ["cup", "mug"], user="u6"), "hose", 1.0, T0)
    mean, weight, _ = unpack_user_vector(ops[0][2], encoder.dim)
    np.testing.assert_allclose(mean, ((cup + 0.5 * mug) + hose) / 2.5, atol=1e-5)
    # propose refreshes the cache from the store: an erased user starts afresh
    src.begin_batch()  # (within one batch the lists use what observe just wrote)
    await store.write([("delete", k) for k in keys.user_keys("u5")])
    await src.propose(ctx(["mug"], user="u5"), 3)
    ops = src.observe(ctx(["hose"], ["hose"], user="u5"), "socks", 1.0, T0 + 1)
    assert unpack_user_vector(ops[0][2], encoder.dim)[1] == pytest.approx(1.0 + 1.0)  # hose + socks only
    assert src.observe(ctx(user="u5"), "no-such-item", 1.0, T0) == []


async def test_a_batch_lists_use_the_taste_vector_it_just_wrote_and_the_next_batch_reads_it(shop):
    store, keys, catalog, src = shop
    reads = []

    class ReadSpy:
        """The real store, the keys it is asked to read recorded."""

        kind = store.kind

        def __getattr__(self, name):
            return getattr(store, name)

        async def read(self, ops):
            reads.extend(op[1] for op in ops)
            return await store.read(ops)

    src.store = ReadSpy()
    src.begin_batch()
    await store.write(src.observe(ctx(user="u7"), "mug", 1.0, T0))
    first = await src.propose(ctx(["mug"], user="u7"), 8)
    assert keys.user_vector("u7") not in reads  # what observe wrote is what a read returns
    # the next batch: the stored vector may have changed since (here: another worker)
    src.begin_batch()
    other = ContentSource(store, keys, catalog.index)
    await store.write(other.observe(ctx(user="u7"), "hose", 1.0, T0))
    second = await src.propose(ctx(["mug"], user="u7"), 8)
    assert keys.user_vector("u7") in reads
    assert first[0][0] == "cup" and second[0] == ("hose", 0.6, "")  # the taste read: hose


async def test_plugs_into_the_recommender(encoder):
    from models.pipeline import Recommender
    from models.candidates.popular import Popularity
    from models.events import Click

    store, keys = MemoryStore(), Keys()
    catalog = CatalogIngestor(store, keys, encoder, ExactIndex(encoder.dim), max_wait_s=0.01)
    content = ContentSource(store, keys, catalog.index)
    rec = Recommender(store, keys, sources=[content, Popularity(store, keys)], clock=lambda: T0 + 100)
    rec.on_items.append(catalog.offer)
    await rec.handle([Item(i, t, T0) for i, t in CATALOG.items()])
    await catalog.flush()
    assert len(catalog.index) == len(CATALOG)
    out = await rec.handle([Click("c1", "amy", "hose", T0 + 10)])
    items = out.recommendations[0].items
    assert items[0].item_id == "sprinkler" and "content" in items[0].sources
    assert (await store.read([("get", keys.user_vector("amy"))]))[0] is not None
    await catalog.close()


async def test_user_taste_proposes_without_a_session(shop):
    store, keys, catalog, src = shop
    for item in ("hose", "sprinkler"):
        await src.learn("gardener", item, T0)
    # no session, no history on this device: the taste vector alone proposes garden items
    out = await src.propose(ctx(user="gardener"), 3)
    assert {i for i, _, _ in out[:2]} == {"hose", "sprinkler"} and out[0][2] == ""
    assert await src.propose(ctx(user="stranger"), 3) == []
    # next to a session anchor the taste vector lifts the garden items
    with_taste = {i: s for i, s, _ in await src.propose(ctx(["socks"], user="gardener"), 8)}
    plain = ContentSource(store, keys, catalog.index, use_user_vector=False)
    without = {i: s for i, s, _ in await plain.propose(ctx(["socks"], user="gardener"), 8)}
    assert with_taste["hose"] > without["hose"]
    assert await src.user_vector("gardener") @ catalog.index.get("hose") > 0.8


async def test_no_index_or_empty_index_proposes_nothing():
    store = MemoryStore()
    assert await ContentSource(store, Keys(), None).propose(ctx(["a"]), 5) == []
    assert await ContentSource(store, Keys(), ExactIndex(4)).propose(ctx(["a"]), 5) == []


async def test_cost_per_call_on_a_10k_catalog():
    rng = np.random.default_rng(0)
    dim, n = 384, 10_000
    index = ExactIndex(dim)
    index.upsert([f"i{i}" for i in range(n)], normalise(rng.standard_normal((n, dim))))
    store, keys = MemoryStore(), Keys()
    src = ContentSource(store, keys, index)
    for i in range(5):
        await src.learn("u1", f"i{i}", T0 + i)
    c = ctx([f"i{i}" for i in range(20)], user="u1")
    await src.propose(c, 80)
    took = []
    for _ in range(30):
        start = time.perf_counter()
        out = await src.propose(c, 80)
        took.append(time.perf_counter() - start)
    assert len(out) == 80
    # the best of 30 calls: what one call costs when it gets a core (other processes
    # on a shared machine inflate the median, not the minimum)
    assert min(took) < 0.005, f"best {min(took) * 1000:.2f} ms, median {np.median(took) * 1000:.2f} ms"


async def test_prepare_runs_a_batch_of_lists_as_one_search_with_the_same_answers(shop):
    store, keys, catalog, _ = shop
    writer = ContentSource(store, keys, catalog.index)
    for user, items in {"gardener": ["hose", "sprinkler"], "host": ["mug", "cup"], "xmas": ["bauble"]}.items():
        for item in items:
            await writer.learn(user, item, T0)
    contexts = [ctx(user="gardener"), ctx(["lantern"], user="host"), ctx(["socks", "mug"], user="xmas"),
                ctx(user="stranger")]

    class Counting:
        """The catalog's index, its searches counted."""

        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return getattr(catalog.index, name)

        def __len__(self):
            return len(catalog.index)

        def search(self, q, n, exclude=()):
            self.calls.append(len(q))
            return catalog.index.search(q, n, exclude)

    def counted(src: ContentSource) -> list[int]:
        src.index = Counting()
        return src.index.calls

    plain = ContentSource(store, keys, catalog.index)
    plain_calls = counted(plain)
    expected = [await plain.propose(c, 5) for c in contexts]
    batched = ContentSource(store, keys, catalog.index)
    batched_calls = counted(batched)
    await batched.prepare(contexts, 5)
    assert batched_calls == [6]  # lantern, socks, mug + three taste vectors, in one call
    assert [await batched.propose(c, 5) for c in contexts] == expected
    assert batched_calls == [6] and plain_calls == [1, 2, 3]  # one search per list
    # the catalog changes: searches are redone (kept ones serve only within the minute)
    catalog.index.upsert(["vase"], catalog.index.get("mug")[None, :])
    await batched.prepare([ctx(["lantern"], user="host")], 5)
    assert batched_calls == [6]
    # within the minute a returning shopper's taste search is kept too, as the anchor's
    await batched.prepare([Context("host", T0 + 30, ["lantern"], ["lantern"])], 5)
    assert batched_calls == [6]
    later = Context("host", T0 + 61, ["lantern"], ["lantern"])
    await batched.prepare([later], 5)
    assert batched_calls == [6, 2]


async def test_a_session_searches_with_the_taste_it_began_with(shop):
    """While the session is short its lists add the shopper's taste as it was when the
    session began: the session's own items are anchors already. A first-time shopper
    has none (no taste search at all); a returning one gets one search for the session."""
    store, keys, catalog, src = shop
    searched = count_searches(catalog.index)
    src.search_depth = 20  # rows of the whole catalog: a kept row serves every later list

    def click(user, sid, session, recent, item, dt):
        c = Context(user, T0 + dt, list(session), list(recent), session_id=sid)
        return src.observe(c, item, 1.0, T0 + dt)

    def now(user, sid, session, dt=1):
        return Context(user, T0 + dt, list(session), list(session), session_id=sid)

    # a first-time shopper: the session's anchors alone, one search per new anchor
    await store.write(click("new", "s1", [], [], "mug", 0))
    first = await src.propose(now("new", "s1", ["mug"]), 5)
    assert searched == [1] and all(why == "mug" for _, _, why in first)
    await store.write(click("new", "s1", ["mug"], ["mug"], "lantern", 1))
    await src.propose(now("new", "s1", ["lantern", "mug"], 2), 5)
    assert searched == [1, 1]  # the lantern's row; no taste vector

    # a returning gardener starts a session on a mug: the garden taste joins the anchor,
    # searched once for the session although each click moves the stored vector
    for item in ("hose", "sprinkler"):
        await src.learn("gardener", item, T0)
    history = ["sprinkler", "hose"]
    searched.clear()
    await store.write(click("gardener", "s2", [], history, "socks", 10))
    out = await src.propose(Context("gardener", T0 + 10, ["socks"], ["socks", *history], session_id="s2"), 8)
    assert {"hose", "sprinkler"} <= {i for i, _, why in out if why == ""}
    await store.write(click("gardener", "s2", ["socks"], ["socks", *history], "bauble", 11))
    again = await src.propose(Context("gardener", T0 + 11, ["bauble", "socks"],
                                      ["bauble", "socks", *history], session_id="s2"), 8)
    assert searched == [2, 1]  # socks + taste, then the bauble only: the taste row is kept
    taste_then = {i: s for i, s, why in out if why == ""}
    assert {i: s for i, s, why in again if why == ""}.items() <= taste_then.items()
    # a process that did not see the session begin reads the stored vector instead
    other = ContentSource(store, keys, catalog.index)
    later = await other.propose(Context("gardener", T0 + 11, ["bauble", "socks"], [], session_id="s2"), 8)
    assert any(why == "" for _, _, why in later)


async def test_a_batch_done_again_folds_each_click_into_the_taste_once(encoder):
    """A batch that failed (none of its writes landed) and is done again leaves the
    shoppers' taste vectors and the new-item counts as one that went through once."""
    from models.content.sources import NewItemsSource
    from models.events import Click
    from models.pipeline import Recommender
    from tests.support.faults import FailsEachBatchOnce, handle_redoing_failures

    items = list(CATALOG)
    clicks = [Click(f"c{n}", f"u{n % 3}", items[(n * 5) % len(items)], T0 + 10 * n) for n in range(12)]

    async def run(flaky: bool):
        store, keys = MemoryStore(), Keys()
        catalog = CatalogIngestor(store, keys, encoder, ExactIndex(encoder.dim), max_wait_s=0.01)
        content = ContentSource(store, keys, catalog.index)
        fresh = NewItemsSource(content, fresh_below=50)
        rec = Recommender(FailsEachBatchOnce(store, keys) if flaky else store, keys,
                          sources=[content, fresh], clock=lambda: T0 + 200)
        rec.on_items.append(catalog.offer)
        await rec.handle([Item(i, t, T0) for i, t in CATALOG.items()])
        await catalog.flush()
        failed = await handle_redoing_failures(rec, clicks, 3)
        tastes = await store.read([("get", keys.user_vector(f"u{u}")) for u in range(3)])
        await catalog.close()
        return failed, tastes, dict(fresh._local)

    clean, flaky = await run(False), await run(True)
    assert clean[0] == 0 and flaky[0] == 4
    assert all(clean[1]) and flaky[1] == clean[1]  # the same bytes
    assert flaky[2] == clean[2] and sum(clean[2].values()) == 12
