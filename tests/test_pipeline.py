"""The one processing path, on the in-memory store and on a real Redis."""

from __future__ import annotations

import random

import pytest

from models.events import Cart, Click, Feedback, Forget, Item
from models.features import open_store
from models.features.cache import ItemSideCache
from models.features.keys import Keys
from models.features.memory import MemoryStore
from models.features.store import StoreDataError
from models.candidates.session_knn import SessionKNN
from models.pipeline import Recommender, RecommenderConfig, default_sources, unpack_record
from tests.support.dump import dump_store
from tests.support.faults import FailsEachBatchOnce, handle_redoing_failures

T0 = 1_700_000_000.0


def shop_stream(n_users=30, n_items=40, n=600, seed=7):
    """A small reproducible stream of clicks, carts and purchases over a catalog."""
    rnd = random.Random(seed)
    events = [Item(f"i{j}", f"Product {j}", T0, category=f"c{j % 4}") for j in range(n_items)]
    for e in range(n):
        u = f"u{rnd.randrange(n_users)}"
        i = f"i{min(int(rnd.paretovariate(1.2)) - 1, n_items - 1)}" if rnd.random() < 0.7 else f"i{rnd.randrange(n_items)}"
        t = T0 + e * 7
        r = rnd.random()
        if r < 0.8:
            events.append(Click(f"e{e}", u, i, t))
        elif r < 0.93:
            events.append(Cart(f"e{e}", u, i, "add", t))
        else:
            events.append(Cart(f"e{e}", u, i, "purchase", t))
    return events


@pytest.fixture(params=["memory", "redis"])
async def backend(request, prefix):
    if request.param == "memory":
        store, url = MemoryStore(), None
    else:
        url = request.getfixturevalue("redis_url")
        store = open_store(url)
    yield store, Keys(prefix), url
    await store.close()


def recommender(store, keys, **cfg):
    ids = iter(range(10**9))
    return Recommender(store, keys, RecommenderConfig(**cfg), clock=lambda: T0,
                       new_session_id=lambda: f"s{next(ids)}", new_rec_id=lambda: f"r{next(ids)}")


async def feed(rec, events, batch):
    recs = []
    for i in range(0, len(events), batch):
        recs += (await rec.handle(events[i:i + batch])).recommendations
    return recs


def counters(d: dict) -> dict:
    """State that counts what happened (recommendation lists themselves are re-emitted)."""
    skip = (":rec", ":last-rec", ":rec-enriched", "rec:", "snapshot:")
    return {k: v for k, v in d.items() if not any(s in k for s in skip)}


@pytest.mark.parametrize("batch", [1, 64])
async def test_redelivery_changes_no_counter(backend, batch):
    store, keys, url = backend
    rec = recommender(store, keys)
    events = shop_stream()
    await feed(rec, events, batch)
    once = counters(await dump_store(store, keys.prefix, url))
    again = await feed(rec, events, batch)
    twice = counters(await dump_store(store, keys.prefix, url))
    assert once == twice
    assert len(once) > 50  # the stream really wrote state
    assert len(again) == sum(isinstance(e, (Click, Cart)) for e in events)  # redelivered triggers still get lists


async def test_every_trigger_gets_a_list_and_nothing_bought_or_in_cart(backend):
    store, keys, _ = backend
    rec = recommender(store, keys, k=8)
    events = shop_stream()
    recs = await feed(rec, events, 50)
    assert len(recs) == sum(isinstance(e, (Click, Cart)) for e in events)
    bought: dict[str, set] = {}
    by_trigger = {r.trigger_event_id: r for r in recs}
    for e in events:
        if isinstance(e, Cart) and e.action == "purchase":
            bought.setdefault(e.user_id, set()).add(e.item_id)
        if isinstance(e, (Click, Cart)):
            r = by_trigger[e.event_id]
            assert r.items, "cold start still fills the list from popularity"
            assert not {i.item_id for i in r.items} & bought.get(e.user_id, set())
            for item in r.items:
                assert item.sources and item.reason
            assert r.latency_ms >= 0 and r.model_version


async def test_forget_erases_every_per_user_key_and_restarts_fresh(backend):
    store, keys, url = backend
    rec = recommender(store, keys)
    await feed(rec, shop_stream(), 100)
    before = await dump_store(store, keys.prefix, url)
    assert any("{u:u3}" in k for k in before)
    u3_sessions = (await store.read([("lrange", keys.session_ids("u3"), 100)]))[0]
    assert u3_sessions
    assert (await store.read([("hgetall", keys.purchases("u3"))]))[0]
    await store.write([("sadd", keys.bought("u3"), "i1")])  # the set that releases before kept
    # damaged keys (another kind of value than ours) do not stop an erasure
    await store.write([("set", keys.cart("u3"), b"damaged", None), ("delete", keys.session("u3")),
                       ("zincr", keys.session("u3"), "x", 1.0)])
    out = await rec.handle([Forget("f1", "u3", T0 + 10_000)])
    assert out.forgotten == ["u3"]
    after = await dump_store(store, keys.prefix, url)
    assert not [k for k in after if "{u:u3}" in k]
    assert not [k for k in after if any(f"{{s:{s}}}" in k for s in u3_sessions)]
    await rec.handle([Forget("f2", "u3", T0 + 10_001)])  # idempotent
    out = await rec.handle([Click("n1", "u3", "i5", T0 + 10_002)])
    assert out.recommendations[0].user_id == "u3"
    [session] = await store.read([("hgetall", keys.session("u3"))])
    assert session["items"] == "i5"


async def test_forget_erases_a_shopper_whose_list_of_sessions_is_damaged(backend):
    store, keys, url = backend
    rec = recommender(store, keys)
    await feed(rec, shop_stream(), 100)
    await store.write([("delete", keys.session_ids("u3")), ("set", keys.session_ids("u3"), b"damaged", None)])
    [u4_sessions] = await store.read([("lrange", keys.session_ids("u4"), 100)])
    out = await rec.handle([Forget("f1", "u3", T0 + 10_000), Forget("f2", "u4", T0 + 10_000)])
    assert out.forgotten == ["u3", "u4"]
    after = await dump_store(store, keys.prefix, url)
    assert not [k for k in after if "{u:u3}" in k or "{u:u4}" in k]
    assert u4_sessions and not [k for k in after if any(f"{{s:{s}}}" in k for s in u4_sessions)]


async def test_feedback_counts_ctr_per_source_and_version(backend):
    store, keys, _ = backend
    rec = recommender(store, keys)
    await feed(rec, shop_stream(), 100)
    r = (await rec.handle([Click("x1", "u1", "i1", T0 + 9000)])).recommendations[0]
    shown = r.items[0]
    await rec.handle([Feedback("f1", "u1", r.rec_id, "impression", T0 + 9001),
                      Feedback("f2", "u1", r.rec_id, "click", T0 + 9002, shown.item_id)])
    [ctr] = await store.read([("hgetall", keys.ctr())])
    for src in shown.sources:
        assert float(ctr[f"click:source:{src}"]) == 1.0
        assert float(ctr[f"impression:source:{src}"]) >= 1.0
    assert float(ctr[f"impression:version:{r.model_version}"]) == len(r.items)
    # someone else's list is never attributed
    await rec.handle([Feedback("f3", "u2", r.rec_id, "click", T0 + 9003, shown.item_id)])
    [ctr2] = await store.read([("hgetall", keys.ctr())])
    assert ctr2 == ctr


async def test_ranker_snapshot_survives_a_restart(backend):
    store, keys, _ = backend
    rec = recommender(store, keys)
    await feed(rec, shop_stream(n=1500), 100)
    assert rec.ranker.updates > 0
    await rec.snapshot()
    fresh = recommender(store, keys)
    assert await fresh.restore()
    assert fresh.ranker.updates == rec.ranker.updates


async def test_a_batch_done_again_teaches_the_ranker_once(prefix):
    """A batch that failed after it taught the ranker (labels come from the clicks
    after shown lists) and is done again must not teach it twice."""
    events = shop_stream(n=1500)
    clean = recommender(MemoryStore(), Keys(prefix))
    await feed(clean, events, 50)
    flaky = recommender(FailsEachBatchOnce(MemoryStore(), Keys(prefix)), Keys(prefix))
    retried = await handle_redoing_failures(flaky, events, 50)
    assert retried > 20 and clean.ranker.updates > 100
    assert (flaky.ranker.updates, flaky.ranker.positives) == (clean.ranker.updates, clean.ranker.positives)


async def test_unavailable_items_are_never_recommended(backend):
    store, keys, _ = backend
    rec = recommender(store, keys)
    events = shop_stream()
    await feed(rec, events, 100)
    await rec.handle([Item("i0", "Product 0", T0 + 5000, available=False),
                      Item("i1", "Product 1", T0 + 5000, available=False)])
    recs = await feed(rec, [Click(f"z{i}", f"u{i}", "i2", T0 + 6000 + i) for i in range(10)], 1)
    assert all(not {"i0", "i1"} & {x.item_id for x in r.items} for r in recs)


# -- the hot path's shortcuts change no result -------------------------------------------

async def test_coalesced_triggers_share_the_freshest_list_and_each_get_an_event(backend):
    store, keys, url = backend
    rec = recommender(store, keys, k=5, coalesce_per_user=True)
    await feed(rec, shop_stream(), 50)  # some history to recommend from
    batch = [Click("x1", "ann", "i1", T0 + 9000), Click("x2", "bob", "i2", T0 + 9001),
             Click("x3", "ann", "i3", T0 + 9002), Cart("x4", "ann", "i4", "purchase", T0 + 9003)]
    built = []
    compute = rec._recommend

    async def counting(trigger, ctx, t0, *sources):
        built.append(trigger.event_id)
        return await compute(trigger, ctx, t0, *sources)
    rec._recommend = counting
    recs = (await rec.handle(batch)).recommendations
    assert sorted(built) == ["x2", "x4"]  # one list per shopper, after their last trigger
    assert [r.trigger_event_id for r in recs] == ["x1", "x2", "x3", "x4"]
    assert len({r.rec_id for r in recs}) == 4
    ann = [r for r in recs if r.user_id == "ann"]
    assert all(r.items == ann[-1].items for r in ann)  # computed once, after the purchase
    assert "i4" not in {i.item_id for i in ann[0].items}
    # every rec_id is attributable, and the latest list is the last one
    for r in recs:
        [blob] = await store.read([("get", keys.rec(r.rec_id))])
        assert blob and r.rec_id.encode() in blob
    [latest] = await store.read([("get", keys.latest_rec("ann"))])
    assert ann[-1].rec_id.encode() in latest
    # without coalescing every trigger gets a list of its own
    solo = recommender(MemoryStore(), keys, k=5)
    await feed(solo, shop_stream(), 50)
    built.clear()
    compute = solo._recommend
    solo._recommend = counting
    first = (await solo.handle(batch)).recommendations
    assert sorted(built) == ["x1", "x2", "x3", "x4"]
    assert [r.trigger_event_id for r in first] == ["x1", "x2", "x3", "x4"]


async def test_a_shed_batch_leaves_out_the_shed_sources_and_learns_the_same(backend):
    store, keys, url = backend
    # two shops fed alike; the second makes its last batch's lists as a late worker would
    full_keys, shed_keys = Keys(keys.prefix + "full:"), Keys(keys.prefix + "shed:")
    shops = []
    for k in (full_keys, shed_keys):
        ids = iter(range(10**9))
        rec = Recommender(store, k, RecommenderConfig(k=5, shed_sources=("session_knn",)),
                          sources=[SessionKNN(store, k), *default_sources(store, k)], clock=lambda: T0,
                          new_session_id=lambda ids=ids: f"s{next(ids)}")
        await feed(rec, shop_stream(), 50)
        shops.append(rec)
    late = [Click("late1", "u1", "i3", T0 + 9000), Click("late2", "u2", "i5", T0 + 9001)]
    full = (await shops[0].handle(late)).recommendations
    shed = (await shops[1].handle(late, shed=True)).recommendations
    assert any("session_knn" in i.sources for r in full for i in r.items)  # the source matters here
    assert all(not r.skipped_sources and "skipped_sources" not in r.wire() for r in full)
    for r in shed:
        assert r.skipped_sources == ["session_knn"] and r.wire()["skipped_sources"] == ["session_knn"]
        assert r.items and not any("session_knn" in i.sources for i in r.items)
        [blob] = await store.read([("get", shed_keys.rec(r.rec_id))])
        assert unpack_record(blob).get("shed") is True and "trial" not in unpack_record(blob)
    # every source learned from the late events alike: the same state in both shops
    states = [{key[len(k.prefix):]: v for key, v in counters(await dump_store(store, k.prefix, url)).items()}
              for k in (full_keys, shed_keys)]
    assert states[0] == states[1] and len(states[0]) > 50
    # the next click labels a full list for the ranker, never a shed one (fewer sources)
    before = [rec.ranker.updates for rec in shops]
    for rec, recs in zip(shops, (full, shed)):
        await rec.handle([Click("next", "u1", recs[0].items[0].item_id, T0 + 9010)])
    assert shops[0].ranker.updates > before[0] and shops[1].ranker.updates == before[1]


async def test_merged_increments_store_the_same_state(backend):
    store, keys, url = backend
    merged = recommender(store, keys)
    await feed(merged, shop_stream(), 200)  # big batches: many repeated (item, neighbour) pairs
    plain_store = MemoryStore()
    plain = recommender(plain_store, keys)
    await feed(plain, shop_stream(), 1)  # one event per batch: nothing to merge

    def rounded(d):  # the aggregates the increments build (session ids differ by batching)
        return {k: {f: float(f"{x:.9g}") for f, x in v.items()} for k, v in d.items()
                if k.endswith((":covis", ":next", "item-counts")) or "popularity" in k}
    got = rounded(await dump_store(store, keys.prefix, url))
    assert len(got) > 40 and got == rounded(await dump_store(plain_store, keys.prefix))


async def test_concurrent_sources_propose_exactly_what_sequential_ones_do():
    from models.candidates import Context, gather_candidates
    from models.pipeline import default_sources

    store, keys = MemoryStore(), Keys()
    rec = recommender(store, keys)
    await feed(rec, shop_stream(), 50)
    for items in (["i1"], ["i3", "i1", "i7"], ["unknown"], []):
        ctx = Context("u1", T0, items, items, exclude={"i2"})
        one = await gather_candidates(default_sources(store, keys), ctx, 5)
        many = await gather_candidates(default_sources(store, keys), ctx, 5, concurrent=True)
        assert list(one) == list(many)
        assert [(c.signals, c.because) for c in one.values()] == [(c.signals, c.because) for c in many.values()]


async def test_a_purchase_stays_out_for_good_by_default_and_comes_back_after_the_repurchase_window(backend):
    """Durable goods (the default): never again. Consumables: after the shop's window,
    the shopper's own purchases come back through ``buy_again``, truthfully explained."""
    from models.candidates.buy_again import BuyAgain
    from models.candidates.popular import Popularity

    store, keys, _ = backend
    day = 86_400.0

    def shop(**cfg):
        ids = iter(range(10**9))
        sources = [BuyAgain(), Popularity(store, keys)]
        return Recommender(store, keys, RecommenderConfig(k=5, **cfg), sources=sources, clock=lambda: T0,
                           new_session_id=lambda: f"s{next(ids)}", new_rec_id=lambda: f"r{next(ids)}")

    history = [Cart("p1", "ann", "tea", "purchase", T0), Cart("p2", "ann", "tea", "purchase", T0 + day),
               Cart("p3", "ann", "soap", "purchase", T0 + day)]
    forever = shop()
    await forever.handle(history)
    [later] = (await forever.handle([Click("c1", "ann", "mug", T0 + 60 * day)])).recommendations
    assert not {"tea", "soap"} & {i.item_id for i in later.items}

    weekly = shop(repurchase_after_s=7 * day)
    [soon] = (await weekly.handle([Click("c2", "ann", "mug", T0 + 3 * day)])).recommendations
    assert not {"tea", "soap"} & {i.item_id for i in soon.items}
    [after] = (await weekly.handle([Click("c3", "ann", "mug", T0 + 9 * day)])).recommendations
    again = [i for i in after.items if "buy_again" in i.sources]
    # bought twice beats bought once at the same age
    assert [i.item_id for i in again] == ["tea", "soap"]
    assert all(i.reason == "You bought this before" for i in again)
    # the purchase record counts each purchase once, redelivery included
    await weekly.handle(history)
    [blob] = await store.read([("hgetall", keys.purchases("ann"))])
    assert blob == {"tea": f"2|{T0 + day!r}", "soap": f"1|{T0 + day!r}"}
    # bought again on day 9: out for another week
    await weekly.handle([Cart("p4", "ann", "tea", "purchase", T0 + 9 * day)])
    [next_day] = (await weekly.handle([Click("c4", "ann", "mug", T0 + 10 * day)])).recommendations
    assert "tea" not in {i.item_id for i in next_day.items} and "soap" in {i.item_id for i in next_day.items}


async def test_the_purchase_record_keeps_the_items_bought_most_recently(backend):
    """It is read with each of the shopper's events: past its size the item bought
    longest ago leaves it, and may be recommended again."""
    from models.candidates.popular import Popularity

    store, keys, _ = backend
    ids = iter(range(10**9))
    rec = Recommender(store, keys, RecommenderConfig(k=8, purchases_kept=3), sources=[Popularity(store, keys)],
                      clock=lambda: T0, new_session_id=lambda: f"s{next(ids)}", new_rec_id=lambda: f"r{next(ids)}")
    warm = [Click(f"w{i}", f"fan{i}", f"p{j}", T0 + i) for i in range(6) for j in range(6)]
    # p3 is bought again late: it stays although first bought early
    buys = [Cart(f"b{j}", "ann", f"p{j}", "purchase", T0 + 100 + j) for j in range(5)]
    buys.append(Cart("b3again", "ann", "p3", "purchase", T0 + 200))
    await rec.handle(warm)
    await rec.handle(buys[:2])
    await rec.handle(buys[2:])
    [record] = await store.read([("hgetall", keys.purchases("ann"))])
    assert set(record) == {"p2", "p3", "p4"} and record["p3"] == f"2|{T0 + 200!r}"
    [shown] = (await rec.handle([Click("c1", "ann", "p5", T0 + 300)])).recommendations
    items = {i.item_id for i in shown.items}
    assert {"p0", "p1"} <= items and not {"p2", "p3", "p4"} & items
    # redelivered, the purchases change nothing (the record stays the three latest)
    await rec.handle(buys)
    assert await store.read([("hgetall", keys.purchases("ann"))]) == [record]


async def test_purchases_an_earlier_release_kept_in_a_set_stay_out_and_move_into_the_record(backend):
    """Upgrading keeps the promise "never recommend what this shopper bought": the set
    earlier releases wrote is read with the shopper's state, moved into the purchase
    record in the same atomic write, and deleted."""
    from models.candidates.popular import Popularity

    store, keys, _ = backend
    ids = iter(range(10**9))
    rec = Recommender(store, keys, RecommenderConfig(k=5), sources=[Popularity(store, keys)], clock=lambda: T0,
                      new_session_id=lambda: f"s{next(ids)}", new_rec_id=lambda: f"r{next(ids)}")
    # what an earlier release left: a popular catalog, and ann's purchases in a set
    await rec.handle([Click(f"w{n}", f"w{n % 7}", item, T0 + n) for n, item in enumerate(["tea", "soap", "mug", "pan"] * 5)])
    await store.write([("sadd", keys.bought("ann"), "tea"), ("sadd", keys.bought("ann"), "soap"),
                       ("hset", keys.purchases("ann"), {"soap": f"2|{T0!r}"})])
    [first] = (await rec.handle([Click("a1", "ann", "lamp", T0 + 100), Cart("a2", "ann", "tea", "purchase", T0 + 101),
                                 Click("a3", "ann", "lamp", T0 + 102)])).recommendations[:1]
    assert not {"tea", "soap"} & {i.item_id for i in first.items}
    assert {"mug", "pan"} <= {i.item_id for i in first.items}  # the list is not empty for another reason
    [record, legacy] = await store.read([("hgetall", keys.purchases("ann")), ("smembers", keys.bought("ann"))])
    # tea: once from the set (time unknown) and once in this batch; soap: the record's own
    assert record == {"tea": f"2|{T0 + 101!r}", "soap": f"2|{T0!r}"} and not legacy
    [later] = (await rec.handle([Click("a4", "ann", "lamp", T0 + 200)])).recommendations
    assert not {"tea", "soap"} & {i.item_id for i in later.items}
    # under a repurchase window the time is unknown, so the window starts at the upgrade
    day = 86_400.0
    weekly = Recommender(store, keys, RecommenderConfig(k=5, repurchase_after_s=day), sources=[Popularity(store, keys)],
                         clock=lambda: T0, new_session_id=lambda: f"s{next(ids)}", new_rec_id=lambda: f"r{next(ids)}")
    await store.write([("sadd", keys.bought("bob"), "mug")])
    [soon] = (await weekly.handle([Click("b1", "bob", "lamp", T0 + 300)])).recommendations
    [next_day] = (await weekly.handle([Click("b2", "bob", "lamp", T0 + 300 + 2 * day)])).recommendations
    assert "mug" not in {i.item_id for i in soon.items} and "mug" in {i.item_id for i in next_day.items}


@pytest.mark.parametrize("batch", [1, 25])
async def test_on_redis_the_lists_are_the_ones_the_in_memory_store_gives(redis_url, prefix, batch):
    """On Redis a batch's effects go ahead of the lists' reads in one round trip; the
    lists still see them, exactly as on the in-memory store, where they land first."""
    events = shop_stream(n=300)
    redis = open_store(redis_url)
    try:
        on_redis = await feed(recommender(redis, Keys(prefix)), events, batch)
    finally:
        await redis.close()
    in_memory = await feed(recommender(MemoryStore(), Keys(prefix)), events, batch)
    assert len(on_redis) == len(in_memory) > 200
    assert [[i.item_id for i in r.items] for r in on_redis] == [[i.item_id for i in r.items] for r in in_memory]
    assert [[i.sources for i in r.items] for r in on_redis] == [[i.sources for i in r.items] for r in in_memory]


class WithoutWriteAhead:
    """The same store, seen as one that cannot write ahead (every write awaited alone)."""

    def __init__(self, store):
        self.store, self.kind = store, store.kind

    async def read(self, ops):
        return await self.store.read(ops)

    async def write(self, ops):
        await self.store.write(ops)


async def test_on_redis_a_batch_goes_in_one_round_trip_fewer_with_its_effects_written_ahead(
        redis_url, prefix, monkeypatch):
    store = open_store(redis_url)
    try:
        await feed(recommender(store, Keys(prefix)), shop_stream(n=100), 10)
        trips = []
        real = store._roundtrip

        async def spy(commands):
            trips.append(len(commands))
            return await real(commands)

        monkeypatch.setattr(store, "_roundtrip", spy)
        counts = {}
        for user, ahead in (("u-ahead", True), ("u-plain", False)):
            # fresh caches: the same reads for both
            rec = recommender(store if ahead else WithoutWriteAhead(store), Keys(prefix))
            trips.clear()
            out = await rec.handle([Click(f"one-{user}", user, "i3", T0 + 10_000)])
            assert len(out.recommendations) == 1 and out.recommendations[0].items
            counts[ahead] = len(trips)
        assert counts[True] == counts[False] - 1
        # caches warm: every read of the list is answered in process, so the batch's
        # effects go with the list's records, after its state read: two round trips
        keys = Keys(prefix)
        ids = iter(range(10**9))
        rec = Recommender(store, keys, sources=default_sources(ItemSideCache(store, keys, ttl_s=60.0), keys),
                          clock=lambda: T0, new_session_id=lambda: f"w{next(ids)}",
                          new_rec_id=lambda: f"wr{next(ids)}")
        await rec.handle([Click("warm-1", "u-warm", "i3", T0 + 10_000)])
        trips.clear()
        out = await rec.handle([Click("warm-2", "u-warm", "i3", T0 + 10_000)])
        assert len(out.recommendations) == 1 and out.recommendations[0].items
        assert len(trips) == 2
        assert (await store.read([("get", keys.seen("warm-2"))]))[0] is not None
        # effects refused in that shared round trip fail the batch, and none of them lands
        await store.write([("set", keys.profile("u-warm"), b"not a hash", None)])  # a damaged key
        with pytest.raises(StoreDataError, match="holds a string; hincr needs a hash"):
            await rec.handle([Click("warm-3", "u-warm", "i3", T0 + 10_000)])
        assert (await store.read([("get", keys.seen("warm-3"))]))[0] is None
    finally:
        await store.close()
