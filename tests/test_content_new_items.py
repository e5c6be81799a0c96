"""New-item candidates: never- or rarely-touched items close in text to the session."""

from __future__ import annotations

import numpy as np
import pytest

from models.candidates import Context, gather_candidates
from models.candidates.popular import Popularity
from models.content.catalog import CatalogIngestor
from models.content.index import ExactIndex
from models.content.sources import ContentSource, NewItemsSource
from models.events import Cart, Click, Item
from models.features.keys import Keys
from models.features.memory import MemoryStore
from tests.support.spies import count_searches

T0 = 1_700_000_000.0


def axis_shop(**kw) -> tuple[MemoryStore, Keys, ContentSource, NewItemsSource]:
    """mug-like items along one axis (closest first: cup, beaker, tumbler), lamps along another."""
    vecs = {"mug": [1, 0, 0], "cup": [0.95, 0.1, 0], "beaker": [0.9, 0.2, 0], "tumbler": [0.8, 0.3, 0],
            "lamp": [0, 0, 1], "lantern": [0, 0.1, 0.95]}
    index = ExactIndex(3)
    index.upsert(list(vecs), np.array(list(vecs.values()), dtype=np.float32))
    store, keys = MemoryStore(), Keys("t:")
    content = ContentSource(store, keys, index, use_user_vector=False)
    return store, keys, content, NewItemsSource(content, **kw)


def ctx(session=(), user="u1", now=T0, exclude=()) -> Context:
    return Context(user, now, list(session), list(session), exclude=set(exclude))


async def test_proposes_only_untouched_text_neighbours_at_most_slots():
    store, keys, content, new = axis_shop(slots=2)
    # nobody touched anything yet: the closest two, best first, with content's scores
    out = await new.propose(ctx(["mug"]), 50)
    assert [(i, why) for i, _, why in out] == [("cup", "mug"), ("beaker", "mug")]
    assert out == [c for c in await content.propose(ctx(["mug"]), 2)]
    # someone buys a cup (this process sees it): the cup is no longer new
    new.observe(ctx(["mug"], user="u2"), "cup", 5.0, T0)
    assert [i for i, _, _ in await new.propose(ctx(["mug"]), 50)] == ["beaker", "tumbler"]
    # business exclusions (already bought) are respected
    assert [i for i, _, _ in await new.propose(ctx(["mug"], exclude={"beaker"}), 50)] == ["tumbler"]


async def test_counts_other_workers_recorded_in_the_store():
    store, keys, content, new = axis_shop(slots=1, fresh_below=6.0, status_ttl_s=60.0)
    popularity = Popularity(store, keys)  # what every worker writes per interaction
    assert [i for i, _, _ in await new.propose(ctx(["mug"]), 5)] == ["cup"]
    # another worker records a purchase (weight 5): still below 6, still new
    await store.write(popularity.observe(ctx(), "cup", 5.0, T0))
    assert [i for i, _, _ in await new.propose(ctx(["mug"], now=T0 + 61), 5)] == ["cup"]
    # a click on top: 6 -- established, but this worker trusts its "new" answer for a minute
    await store.write(popularity.observe(ctx(), "cup", 1.0, T0 + 62))
    assert [i for i, _, _ in await new.propose(ctx(["mug"], now=T0 + 100), 5)] == ["cup"]
    assert [i for i, _, _ in await new.propose(ctx(["mug"], now=T0 + 130), 5)] == ["beaker"]
    # established for good: it is not read again
    assert "cup" in new._established


async def test_looks_past_the_head_when_other_workers_established_it():
    """Each row's best few are tried first; when the store says most of them were
    touched elsewhere, the whole row is searched, as if nothing had been cut short."""
    names = [f"m{k:02d}" for k in range(20)]
    vecs = np.array([[1.0, k / 40, 0] for k in range(20)], dtype=np.float32)  # m01 closest to m00
    vecs[12] = vecs[11]  # two items with the same text: a tie, broken by id
    index = ExactIndex(3)
    index.upsert(names, vecs)
    store, keys = MemoryStore(), Keys("t:")
    new = NewItemsSource(ContentSource(store, keys, index, use_user_vector=False), slots=2)
    popularity = Popularity(store, keys)
    for item in names[1:11]:  # another worker's shoppers touched the ten closest
        await store.write(popularity.observe(ctx(), item, 1.0, T0))
    assert [i for i, _, _ in await new.propose(ctx(["m00"]), 5)] == ["m11", "m12"]
    assert {"m01", "m10"} <= set(new._established)
    assert list(new._parts) == ["m00"]  # kept per anchor item, never per shopper


async def test_taste_row_skips_established_items_like_an_anchor_row():
    """With a short session the shopper's taste vector is one more query; its row serves
    one list and is not filtered up front, so items established anywhere in it must be
    skipped while it is read: the result is the brute-force best fresh items."""
    rnd = np.random.default_rng(3)
    names = [f"p{k:02d}" for k in range(40)]
    vecs = rnd.normal(size=(40, 8)).astype(np.float32)
    index = ExactIndex(8)
    index.upsert(names, vecs)
    store, keys = MemoryStore(), Keys("t:")
    content = ContentSource(store, keys, index, user_weight=3.0)
    new = NewItemsSource(content, slots=3, depth=12)
    for item in ("p05", "p06", "p07"):
        assert await content.learn("u1", item, T0)  # the shopper's taste: three past items
    taste = content._taste["u1"][0]
    unit = index.matrix()[1]
    cos_taste = unit @ (taste / np.linalg.norm(taste))
    cos_anchor = unit @ unit[0]  # session: p00
    taste_order = [names[i] for i in np.argsort(-cos_taste)]
    # other shoppers touched every other one of the taste's closest items (this process saw it)
    for item in taste_order[:12:2]:
        new.observe(ctx(["p00"], user="u2"), item, 1.0, T0)
    for rnd_ in range(2):  # the second time the anchor row's filtered part is reused
        got = await new.propose(ctx(["p00"], now=T0 + rnd_), 50)
        skip = {"p00"} | set(new._established)
        best = {}
        for row, w, why in ((cos_anchor, 1.0, "p00"), (cos_taste, 3.0, "")):
            top = [i for i in np.argsort(-row) if names[i] != "p00"][:12]
            for i in top:
                if names[i] not in skip and row[i] > 0 and w * row[i] > best.get(names[i], (-1.0, ""))[0]:
                    best[names[i]] = (w * row[i], why)
        want = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:3]
        assert [(i, why) for i, _, why in got] == [(i, why) for i, (_, why) in want]
        assert any(why == "" for _, _, why in got)  # the taste row did contribute
        assert not set(i for i, _, _ in got) & set(new._established)


async def test_nothing_without_anchors_index_or_slots():
    store, keys, content, new = axis_shop()
    assert await new.propose(ctx([]), 5) == []
    assert await new.propose(ctx(["not-in-catalog"]), 5) == []
    _, _, _, off = axis_shop(slots=0)
    assert await off.propose(ctx(["mug"]), 5) == []
    empty = NewItemsSource(ContentSource(MemoryStore(), Keys(), ExactIndex(3)))
    assert await empty.propose(ctx(["mug"]), 5) == []


@pytest.mark.parametrize("concurrent", [False, True])
async def test_one_search_per_anchor_serves_both_sources(concurrent: bool):
    store, keys, content, new = axis_shop(slots=2)
    content.use_user_vector = True  # a store read in content's propose: the sources interleave
    calls = count_searches(content.index)
    c = ctx(["mug", "lamp"])
    got = await gather_candidates([content, new], c, k=2, depth=2, concurrent=concurrent)
    assert sum(calls) == 2  # mug and lamp, searched once each
    assert got["cup"].signals.keys() == {"content", "new_items"}
    # a catalog change: the kept neighbours serve for a minute of event time, then are searched again
    content.index.upsert(["vase"], np.array([[0.1, 0.9, 0.1]], dtype=np.float32))
    await new.propose(ctx(["mug"], now=T0 + 30), 5)
    assert sum(calls) == 2
    await new.propose(ctx(["mug"], now=T0 + 61), 5)
    assert sum(calls) == 3
    # while the catalog stays the same they serve however long
    await new.propose(ctx(["mug"], now=T0 + 3600), 5)
    assert sum(calls) == 3


async def test_a_never_bought_item_reaches_the_list_through_the_tuned_profile(encoder):
    """End to end with real titles and the tuned ``events`` profile: the catalog is
    published first, shoppers buy garden things and a mug; a new mug nobody bought yet is
    a new-item candidate next to a mug, with the reason naming the mug, until bought."""
    from models import tuned
    from models.pipeline import Recommender
    from models.ranking import Ranker

    store, keys = MemoryStore(), Keys()
    catalog = CatalogIngestor(store, keys, encoder, ExactIndex(encoder.dim))

    def content(store, keys):
        src = ContentSource(store, keys, catalog.index)
        src.on_items = catalog.ingest
        return src

    cfg, sources, prior, warmup = tuned.build("events", store, keys, k=8, content=content)
    assert [s.name for s in sources] == ["session_knn", "sequential", "covis", "content", "new_items",
                                         "buy_again", "popular"]
    rec = Recommender(store, keys, cfg, sources=sources, ranker=Ranker([s.name for s in sources], prior=prior,
                                                                        warmup=warmup))
    titles = {"mug": "red ceramic coffee mug", "hose": "garden hose with spray nozzle",
              "sprinkler": "lawn sprinkler for the garden", "socks": "wool hiking socks",
              "gloves": "leather gardening gloves", "new-mug": "blue stoneware coffee mug"}
    await rec.handle([Item(i, t, T0) for i, t in titles.items()])
    n = 0
    for user in range(6):  # garden baskets, with socks: co-bought items everywhere but the new mug
        for item in ("hose", "sprinkler", "gloves", "socks", "mug"):
            n += 1
            await rec.handle([Cart(f"e{n}", f"g{user}", item, "purchase", T0 + n)], recommend=False)
    out = await rec.handle([Click("x1", "amy", "mug", T0 + 1000)])
    items = out.recommendations[0].items
    new_mug = next(i for i in items if i.item_id == "new-mug")
    assert {"content", "new_items"} <= set(new_mug.sources) and "red ceramic coffee mug" in new_mug.reason
    # one purchase: still rarely bought (the profile's threshold is "at most one purchase")
    await rec.handle([Cart("b1", "bob", "new-mug", "purchase", T0 + 1001)], recommend=False)
    again = await rec.handle([Click("x2", "cat", "mug", T0 + 2000)])
    assert any("new_items" in i.sources for i in again.recommendations[0].items)
    # a second one: an established item, no longer a new-item candidate
    await rec.handle([Cart("b2", "dan", "new-mug", "purchase", T0 + 2001)], recommend=False)
    later = await rec.handle([Click("x3", "eve", "mug", T0 + 3000)])
    assert all("new_items" not in i.sources for i in later.recommendations[0].items)
