"""The one processing path: events in, feature updates and recommendations out.

Every driver — the Faust agents, ``streamrec replay``, the HTTP API — calls
``Recommender.handle(events)``. Per batch it talks to the feature store in a few
pipelined round trips:

1. read the dedupe markers and the state of every shopper in the batch;
2. apply the events in order to that state in memory, collecting store writes
   (user state, item-side statistics of every candidate source, dedupe markers);
3. write all of them in one atomic batch;
4. for each triggering event (click, cart), gather candidates, rank, filter and
   build a ``Recommendation`` (candidate reads run concurrently), then store the
   lists for the web API and for attributing feedback.

Redelivered events (same ``event_id``) change nothing: their marker is read in
step 1 and written with the effects in step 3. A redelivered trigger still gets a
list, so at-least-once delivery never loses a recommendation.

On a remote store (Redis) round trips and commands are what a list costs, so there
the batch's repeated increments are summed into one command each, the candidate
sources are asked concurrently (their reads share one pipeline), and, with
``coalesce_per_user``, a shopper with several triggers in one batch gets one list
(the worker also puts ``models.features.cache.ItemSideCache`` in front of the
sources, timed by the ``shop_clock`` each batch moves: item-side aggregates up to a
second of the shop's time old). The first two change nothing that is stored or
recommended.

``handle(events, shed=True)`` makes the batch's lists without the sources named in
``shed_sources`` (the costly ones), for a driver that is running late and would
rather send a simpler list now than a full one later. Every source still learns
from every event; only the lists change, and each says which sources it left out.

>>> import asyncio
>>> from models.events import Click
>>> rec = Recommender.in_memory()
>>> out = asyncio.run(rec.handle([Click("e1", "ann", "shoe", 1.7e9), Click("e2", "bob", "shoe", 1.7e9 + 1),
...                               Click("e3", "bob", "sock", 1.7e9 + 2), Click("e4", "ann", "shoe", 1.7e9 + 3)]))
>>> [i.item_id for i in out.recommendations[-1].items]
['sock']
>>> asyncio.run(rec.handle([Click("e1", "ann", "shoe", 1.7e9)])).duplicates
1
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import math
import random
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import orjson

from models.candidates import Candidate, CandidateSource, Context, gather_candidates
from models.candidates.covis import CoVisitation
from models.candidates.popular import Popularity
from models.candidates.sequential import Sequential
from models.events import (Cart, Click, Event, Feedback, Forget, Item, Recommendation,
                           RecommendedItem, Review)
from models.features.cache import ShopClock
from models.features.item_meta import ItemMeta, ItemMetaCache
from models.features.keys import Keys
from models.features.store import FeatureStore, StoreDataError, WriteOp
from models.ranking import Ranker, Trial, team_draft

SEP = "\x1f"  # ids never hold control characters (models.events rejects them)
#: How long a session's item list outlives its last click (session-kNN neighbours).
SESSION_ITEMS_TTL_S = 30 * 86_400
#: How many of the latest events the ranker learned from are remembered (``Recommender._taught``).
TAUGHT_KEPT = 10_000


#: A ranker label: a shown item's model features, and whether the shopper clicked it.
Label = tuple[dict[str, float], bool]


def _no_lesson(features: Any, clicked: bool) -> None:
    """Stands in for ``Ranker.learn`` where the event taught the ranker already."""


REASONS = {
    "sequential": "Often viewed right after {anchor}",
    "covis": "Viewed together with {anchor} by other shoppers",
    "session_knn": "Viewed in sessions like yours",
    "content": "Similar to {anchor}",
    "new_items": "New, and similar to {anchor}",
    "popular": "Popular right now",
    "buy_again": "You bought this before",
}


@dataclass
class RecommenderConfig:
    k: int = 10
    exclude_purchased: bool = True
    #: With ``exclude_purchased``, how long (event seconds) after its last purchase an
    #: item stays out of the shopper's lists; infinite: for good (durable goods). Shops
    #: where people re-order (consumables, groceries, wholesale) set days or weeks, and
    #: the ``buy_again`` source proposes the item again after that.
    repurchase_after_s: float = math.inf
    exclude_in_cart: bool = True
    #: The most items a shopper's purchase record keeps: past it, the item bought longest
    #: ago leaves it (and may be recommended again). It is read with every event of the
    #: shopper, so it must not grow without end: the busiest wholesale buyer of the Online
    #: Retail data bought 1,794 distinct items in a year.
    purchases_kept: int = 2000
    #: Leave out the item the shopper is looking at right now.
    exclude_current: bool = True
    #: Inactivity (seconds of event time) that starts a new session.
    session_gap_s: float = 1800.0
    recent_cap: int = 50
    session_cap: int = 30
    dedupe_ttl_s: int = 7 * 86_400
    rec_ttl_s: int = 86_400
    reviews_cap: int = 20
    #: Interaction strengths fed to the candidate sources.
    weight_click: float = 1.0
    weight_cart: float = 3.0
    weight_purchase: float = 5.0
    #: At most this many items of one category in a list (0 = no limit).
    max_per_category: int = 0
    model_version: str = "streamrec-1"
    #: Candidates gathered per slot before ranking.
    depth: int = 4
    #: Label shown lists with the next click and train the online ranker on them.
    learn_ranker: bool = True
    #: Several triggers of one shopper in a batch share one list computed after the
    #: last of them (a per-user debounce that only acts when the worker is busy; each
    #: trigger still gets its own event). Off for replays, where each list is scored
    #: against the shopper's next event.
    coalesce_per_user: bool = False
    #: The sources a late batch's lists leave out (``handle(shed=True)``): without
    #: session-kNN and the text neighbours a list costs about a third less CPU.
    shed_sources: tuple[str, ...] = ("session_knn", "content", "new_items")


@dataclass
class Outcome:
    """What one ``handle`` call did."""

    recommendations: list[Recommendation] = field(default_factory=list)
    duplicates: int = 0
    applied: int = 0
    forgotten: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    reviews: list[Review] = field(default_factory=list)


@dataclass
class _User:
    """A shopper's state, loaded once per batch and updated in memory."""

    user_id: str
    recent: list[str]
    session_id: str
    session_last: float
    session_items: list[str]
    cart: dict[str, int]
    #: item -> (times bought, event time of the last purchase)
    bought: dict[str, tuple[int, float]]
    last_rec: dict[str, Any] | None
    dirty: set[str] = field(default_factory=set)
    #: When the set earlier releases kept purchases in (``Keys.bought``) still exists:
    #: its items not in the purchase record, moved there by this batch's write (which
    #: deletes the set). None when there is no such set.
    legacy_bought: set[str] | None = None

    def context(self, now: float, cfg: RecommenderConfig) -> Context:
        exclude: set[str] = set()
        if cfg.exclude_purchased:
            if cfg.repurchase_after_s == math.inf:
                exclude |= self.bought.keys()
            else:
                exclude |= {i for i, (_, last) in self.bought.items() if now - last < cfg.repurchase_after_s}
        if cfg.exclude_in_cart:
            exclude |= set(self.cart)
        if cfg.exclude_current and self.session_items:
            exclude.add(self.session_items[0])
        return Context(self.user_id, now, list(self.session_items), list(self.recent),
                       dict(self.cart), dict(self.bought), exclude, self.session_id)


def parse_purchase(value: str) -> tuple[int, float]:
    """A purchase record ``"count|last_ts"`` as ``(count, last_ts)``.

    >>> parse_purchase("3|1700000000.5")
    (3, 1700000000.5)
    """
    count, _, last = value.partition("|")
    return int(count), float(last)


def _purchase_field(count: int, last: float) -> str:
    """``(count, last_ts)`` as the stored purchase record ``parse_purchase`` reads.

    >>> parse_purchase(_purchase_field(3, 1700000000.5))
    (3, 1700000000.5)
    """
    return f"{count}|{last!r}"


def _bought_longest_ago(bought: dict[str, tuple[int, float]], n: int) -> list[str]:
    """The ``n`` items of a purchase record whose last purchase is oldest (ties: by id).

    >>> _bought_longest_ago({"a": (1, 30.0), "b": (4, 10.0), "c": (1, 20.0)}, 2)
    ['b', 'c']
    """
    return heapq.nsmallest(n, bought, key=lambda i: (bought[i][1], i))  # n == 1: one pass, as min()


def _new_session_id() -> str:
    return uuid.uuid4().hex[:16]


class Recommender:
    """Learns from events and recommends, with the store and clock injected."""

    def __init__(self, store: FeatureStore, keys: Keys | None = None,
                 config: RecommenderConfig | None = None,
                 sources: Sequence[CandidateSource] | None = None,
                 ranker: Ranker | None = None,
                 clock: Callable[[], float] = time.time,
                 new_session_id: Callable[[], str] = _new_session_id,
                 new_rec_id: Callable[[], str] = lambda: uuid.uuid4().hex,
                 shop_clock: ShopClock | None = None) -> None:
        self.store = store
        self.keys = keys or Keys()
        self.config = config or RecommenderConfig()
        self.sources = list(sources) if sources is not None else default_sources(store, self.keys)
        self.ranker = ranker or Ranker([s.name for s in self.sources])
        self.clock = clock
        self.new_session_id = new_session_id
        self.new_rec_id = new_rec_id
        #: Moved on to each batch's latest event time (what times the item-side cache).
        self.shop_clock = shop_clock
        #: Called with (catalog items) after a batch is stored, e.g. to embed titles.
        self.on_items: list[Callable[[list[Item]], Any]] = []
        for source in self.sources:  # sources that learn from the catalog (content)
            hook = getattr(source, "on_items", None)
            if hook is not None:
                self.on_items.append(hook)
        #: Sources told when a batch begins (what they kept for the last one is stale).
        self.on_batch: list[Callable[[], Any]] = [
            s.begin_batch for s in self.sources if getattr(s, "begin_batch", None) is not None]
        #: Sources told when a batch failed: none of its writes landed, so what they
        #: counted in process for it is taken back (it will be done again).
        self.on_failure: list[Callable[[], Any]] = [
            s.undo_batch for s in self.sources if getattr(s, "undo_batch", None) is not None]
        #: Availability, category and title of candidates, cached in-process.
        self.item_meta = ItemMetaCache(store, self.keys)
        #: The events the ranker learned from lately, oldest first: a batch done again
        #: (the store failed under it, or the worker redoes it one event at a time)
        #: teaches the ranker once. The store keeps no trace of a batch that failed.
        self._taught: OrderedDict[str, None] = OrderedDict()
        #: The labels the ranker learned here since ``take_labels``, and the clicks on
        #: interleaved lists counted here, for the rankers of the other workers (each
        #: sees only its partitions' shoppers); None: not kept.
        self._shared: list[Label] | None = None
        self._shared_trials: list[Trial] = []

    @classmethod
    def in_memory(cls, **kw: Any) -> "Recommender":
        from models.features.memory import MemoryStore

        n = iter(range(1, 1 << 62))
        kw.setdefault("new_session_id", lambda: f"s{next(n)}")
        m = iter(range(1, 1 << 62))
        kw.setdefault("new_rec_id", lambda: f"r{next(m)}")
        return cls(MemoryStore(), **kw)

    # -- labels shared between workers -------------------------------------------------
    def share_labels(self) -> None:
        """Keep every label the ranker learns here for ``take_labels`` (a worker sends
        them to the others, whose rankers learn them with ``learn_labels``)."""
        if self._shared is None:
            self._shared = []

    @property
    def shares_labels(self) -> bool:
        """Whether ``share_labels`` was called: the labels learned here are kept to send."""
        return self._shared is not None

    def take_labels(self) -> tuple[list[Label], list[Trial]]:
        """The labels learned here since the last call, and the trial's clicks counted
        here (none unless ``share_labels``). Those of a batch that failed stay for the
        next call: done again, the batch teaches nothing twice (``_taught``), so each
        label is sent once."""
        if not self._shared:
            return [], []
        taken, self._shared = self._shared, []
        trials, self._shared_trials = self._shared_trials, []
        return taken, trials

    def learn_labels(self, labels: Sequence[Label], trials: Sequence[Trial] = ()) -> int:
        """Learn labels another worker's ranker learned, and count its trial's clicks
        (not shared again). Features this ranker does not have
        (a worker of another configuration, or junk) are left out, so that nothing sent
        can grow the model without bound; returns how many were."""
        known, dropped = self.ranker.feature_names, 0
        for features, clicked in labels:
            kept = {f: v for f, v in features.items() if f in known}
            dropped += len(features) - len(kept)
            self.ranker.learn(kept, clicked)
        self.ranker.add_trials(trials)
        return dropped

    def _learn(self, features: dict[str, float], clicked: bool) -> None:
        self.ranker.learn(features, clicked)
        if self._shared is not None:
            self._shared.append((features, clicked))

    def _credit(self, rec: dict, clicked: str) -> None:
        """Count a click on an interleaved list for the ranker that placed the item."""
        teams = rec.get("trial")
        if teams is None or clicked not in rec.get("features", {}):
            return
        by_model = clicked in teams.get("model", ())
        self.ranker.add_trials([by_model])
        if self._shared is not None:
            self._shared_trials.append(by_model)

    # -- snapshots -------------------------------------------------------------------
    async def restore(self) -> bool:
        """Load the ranker snapshot from the store; True when one was found."""
        [blob] = await self.store.read([("get", self.keys.snapshot("ranker"))])
        if blob:
            self.ranker.restore(blob)
            return True
        return False

    async def snapshot(self, seen_labels: dict[str, Any] | None = None) -> None:
        """Write the ranker's snapshot (with ``seen_labels``, see ``Ranker.snapshot``). Its
        state is taken when this is awaited, before the write suspends."""
        await self.store.write([("set", self.keys.snapshot("ranker"), self.ranker.snapshot(seen_labels), None)])

    # -- the processing path --------------------------------------------------------
    async def handle(self, events: Sequence[Event], recommend: bool = True, shed: bool = False) -> Outcome:
        """Apply ``events`` in order; return the recommendations they triggered. With
        ``shed`` the lists leave out the ``shed_sources`` (the state is updated alike)."""
        try:
            return await self._handle(events, recommend, shed)
        except BaseException:
            for undo in self.on_failure:
                undo()
            raise

    async def _handle(self, events: Sequence[Event], recommend: bool, shed: bool = False) -> Outcome:
        t0 = time.perf_counter()
        out = Outcome()
        if not events:
            return out
        k, cfg = self.keys, self.config
        if self.shop_clock is not None:
            self.shop_clock.advance(max(e.ts for e in events))
        for begin in self.on_batch:
            begin()

        # 1. one read: dedupe markers and every shopper's state
        dedupable = [e for e in events if not isinstance(e, Item)]
        user_ids = list(dict.fromkeys(e.user_id for e in dedupable))
        reads: list[tuple] = [("mget", [k.seen(e.event_id) for e in dedupable])]
        # The latest list's record only serves labelling: skip reading (and decoding) it
        # when the ranker does not learn and nothing in the batch refers to a list.
        need_last = cfg.learn_ranker or any(
            isinstance(e, Feedback) or (isinstance(e, Click) and e.rec_id) for e in dedupable)
        per_user = 6 if need_last else 5
        # A shopper the batch only erases needs no state read (erasure deletes every key
        # by name), so that a damaged key cannot stop an erasure.
        forgetters = list(dict.fromkeys(e.user_id for e in dedupable if isinstance(e, Forget)))
        erased_only = set(forgetters) - {e.user_id for e in dedupable if not isinstance(e, Forget)} \
            if forgetters else set()
        users: dict[str, _User] = {u: _User(u, [], "", 0.0, [], {}, {}, None) for u in erased_only}
        if erased_only:
            user_ids = [u for u in user_ids if u not in erased_only]
        for u in user_ids:
            reads += [("get", k.recent(u)), ("hgetall", k.session(u)),
                      ("hgetall", k.cart(u)), ("hgetall", k.purchases(u)), ("smembers", k.bought(u))]
            if need_last:
                reads.append(("get", k.last_rec(u)))
        got = await self.store.read(reads)
        seen = {e.event_id for e, v in zip(dedupable, got[0]) if v is not None}
        pos = 1
        for u in user_ids:
            recent, sess, cart, bought, legacy = got[pos:pos + 5]
            last_rec = got[pos + 5] if need_last else None
            pos += per_user
            purchases = {i: parse_purchase(v) for i, v in bought.items()}
            # An earlier release's purchases (a set, no count or time): bought once, as
            # late as they can have been (now), so that a repurchase window starts over.
            legacy = set(legacy) - purchases.keys() if legacy else None
            if legacy:  # rare (once per shopper): no per-event work for it on the hot path
                now = next(e.ts for e in dedupable if e.user_id == u)
                purchases.update({i: (1, now) for i in legacy})
            users[u] = _User(u, recent.decode().split(SEP) if recent else [],
                             sess.get("id", ""), float(sess.get("last", 0) or 0),
                             [x for x in sess.get("items", "").split(SEP) if x],
                             {i: int(float(q)) for i, q in cart.items()}, purchases,
                             unpack_record(last_rec) if last_rec else None, legacy_bought=legacy)

        forget_sessions = dict(zip(forgetters, await self._session_ids(forgetters))) if forgetters else {}

        # 2. apply in order, collecting writes
        writes: list[WriteOp] = []
        triggers: list[tuple[Event, Context]] = []
        attributions: list[Feedback | Click] = []
        for e in events:
            if isinstance(e, Item):
                self._apply_item(e, writes)
                out.items.append(e)
                out.applied += 1
                continue
            if e.event_id in seen:
                # Already applied: change nothing, but a redelivered trigger still gets a
                # list (the first delivery's may never have been sent).
                out.duplicates += 1
                if recommend and isinstance(e, (Click, Cart)) and e.user_id in users:
                    triggers.append((e, users[e.user_id].context(e.ts, cfg)))
                continue
            seen.add(e.event_id)
            writes.append(("set", k.seen(e.event_id), b"1", cfg.dedupe_ttl_s))
            out.applied += 1
            user = users[e.user_id]
            if isinstance(e, Click):
                self._interact(user, e.item_id, cfg.weight_click, e.ts, writes)
                writes.append(("hincr", k.profile(user.user_id), "click", 1.0))
                if e.rec_id:
                    attributions.append(e)
                elif cfg.learn_ranker:
                    self._learn_from_next_click(user, e.item_id, self._first_lesson(e.event_id))
                if recommend:  # the context is a snapshot taken right after this event
                    triggers.append((e, user.context(e.ts, cfg)))
            elif isinstance(e, Cart):
                self._apply_cart(user, e, writes)
                if recommend:  # the context is a snapshot taken right after this event
                    triggers.append((e, user.context(e.ts, cfg)))
            elif isinstance(e, Feedback):
                attributions.append(e)
            elif isinstance(e, Review):
                writes.append(("lpush", k.item_reviews(e.item_id), e.text, cfg.reviews_cap))
                out.reviews.append(e)
            elif isinstance(e, Forget):
                self._forget(user, forget_sessions.get(e.user_id, []), writes)
                out.forgotten.append(e.user_id)
        for user in users.values():
            self._write_user(user, writes)
        if attributions:
            await self._attribute(attributions, users, writes)

        # 3. one atomic write of every effect and dedupe marker (a remote store gets the
        # batch's repeated increments summed: fewer commands, the same state). A store
        # that can write ahead sends it with the lists' first reads, which it orders
        # behind it, or, when caches answer every read, with the lists' records: one
        # round trip fewer per batch, the same reads.
        effects = writes if self.store.kind == "memory" else merge_increments(writes)
        write_ahead = getattr(self.store, "write_ahead", None)
        if write_ahead is None or not (recommend and triggers) or out.items:
            await self.store.write(effects)
            written = None
        else:
            written = write_ahead(effects, lazy=True)
        for hook in self.on_items if out.items else ():
            done = hook(out.items)
            if inspect.isawaitable(done):  # e.g. replay embeds the catalog before going on
                await done

        # 4. recommend for every triggering event (candidate reads run concurrently)
        if recommend and triggers:
            try:
                out.recommendations = await self._recommend_all(triggers, t0, shed)
            finally:
                if written is not None:  # its failure is the cause of the reads' (raised first)
                    await written
        return out

    async def _recommend_all(self, triggers: list[tuple[Event, Context]], t0: float,
                             shed: bool = False) -> list[Recommendation]:
        """One list per trigger, in trigger order, stored for the web API and feedback.

        With ``coalesce_per_user`` a shopper with several triggers in the batch gets one
        list computed from their state after the last of them (the freshest, and all
        are delivered together anyway); each trigger still gets its own event and
        ``rec_id`` carrying that list. With ``shed`` the lists leave out the
        ``shed_sources``.
        """
        sources = self.sources
        skipped: list[str] = []
        if shed:
            skipped = [s.name for s in sources if s.name in self.config.shed_sources]
            sources = [s for s in sources if s.name not in self.config.shed_sources]
        if self.config.coalesce_per_user and len(triggers) > 1:
            last = {ctx.user_id: n for n, (_, ctx) in enumerate(triggers)}
            todo = sorted(last.values())
        else:
            last, todo = {}, range(len(triggers))
        if len(todo) > 1:  # sources that can serve many lists at once get ready for them
            contexts = [triggers[n][1] for n in todo]
            for source in sources:
                prepare = getattr(source, "prepare", None)
                if prepare is not None:
                    await prepare(contexts, 2 * self.config.depth * self.config.k)
        if len(todo) == 1:  # the common case: no task to schedule
            n = todo[0]
            computed = {n: await self._recommend(triggers[n][0], triggers[n][1], t0, sources, skipped)}
        else:
            done = await asyncio.gather(*(self._recommend(triggers[n][0], triggers[n][1], t0, sources, skipped)
                                          for n in todo))
            computed = dict(zip(todo, done))
        recs: list[Recommendation] = []
        writes: list[WriteOp] = []
        for n, (event, ctx) in enumerate(triggers):
            rec = computed.get(n)
            if rec is None:  # an earlier trigger of a shopper whose last one was computed
                rec = self._same_list(computed[last[ctx.user_id]], event, t0)
            recs.append(rec)
            writes += self._rec_writes(rec, latest=n == last.get(ctx.user_id, n))
        await self.store.write(writes)
        return recs

    def _same_list(self, rec: Recommendation, trigger: Event, t0: float) -> Recommendation:
        """``rec``'s list as the answer to another trigger of the same shopper."""
        rec_id = self.new_rec_id()
        return Recommendation(
            rec_id=rec_id, user_id=rec.user_id, trigger_event_id=trigger.event_id, ts=rec.ts,
            items=rec.items, model_version=rec.model_version,
            latency_ms=round((time.perf_counter() - t0) * 1000, 3), skipped_sources=rec.skipped_sources,
            context={**rec.context, "_record": {**rec.context["_record"], "rec_id": rec_id}})

    # -- state updates -----------------------------------------------------------------
    def _interact(self, user: _User, item_id: str, weight: float, ts: float, writes: list[WriteOp]) -> None:
        cfg, k = self.config, self.keys
        if not user.session_id or ts - user.session_last > cfg.session_gap_s:
            user.session_id = self.new_session_id()
            user.session_items = []
            writes.append(("lpush", k.session_ids(user.user_id), user.session_id, 1000))
        ctx = Context(user.user_id, ts, user.session_items, user.recent, user.cart, user.bought,
                      set(), user.session_id)
        for source in self.sources:
            writes += source.observe(ctx, item_id, weight, ts)
        user.session_items = [item_id] + user.session_items[: cfg.session_cap - 1]
        user.session_last = max(ts, user.session_last)
        user.recent = [item_id] + [i for i in user.recent if i != item_id][: cfg.recent_cap - 1]
        # the session's items as one string: neighbours are read many at a time (MGET)
        writes.append(("set", k.session_items(user.session_id), SEP.join(user.session_items),
                       SESSION_ITEMS_TTL_S))
        user.dirty.add("state")

    def _apply_cart(self, user: _User, e: Cart, writes: list[WriteOp]) -> None:
        cfg, k = self.config, self.keys
        if e.action == "add":
            user.cart[e.item_id] = user.cart.get(e.item_id, 0) + e.quantity
            self._interact(user, e.item_id, cfg.weight_cart, e.ts, writes)
        elif e.action == "remove":
            left = user.cart.get(e.item_id, 0) - e.quantity
            if left > 0:
                user.cart[e.item_id] = left
            else:
                user.cart.pop(e.item_id, None)
        else:  # purchase
            user.cart.pop(e.item_id, None)
            count, last = user.bought.get(e.item_id, (0, e.ts))
            count, last = count + 1, max(last, e.ts)
            user.bought[e.item_id] = (count, last)
            writes.append(("hset", k.purchases(user.user_id), {e.item_id: _purchase_field(count, last)}))
            if len(user.bought) > cfg.purchases_kept:
                for item_id in _bought_longest_ago(user.bought, len(user.bought) - cfg.purchases_kept):
                    del user.bought[item_id]
                    writes.append(("hdel", k.purchases(user.user_id), item_id))
            self._interact(user, e.item_id, cfg.weight_purchase, e.ts, writes)
        writes.append(("hincr", k.profile(user.user_id), e.action, 1.0))
        user.dirty.add("cart")

    def _apply_item(self, e: Item, writes: list[WriteOp]) -> None:
        self.item_meta.put(e.item_id, ItemMeta(e.available, e.category, e.title))
        meta = {"title": e.title, "available": "1" if e.available else "0", "ts": repr(e.ts)}
        if e.category is not None:
            meta["category"] = e.category
        if e.price is not None:
            meta["price"] = repr(e.price)
        if e.description is not None:
            meta["description"] = e.description
        writes.append(("hset", self.keys.item_meta(e.item_id), meta))
        writes.append(("sadd" if e.available else "srem", self.keys.catalog_ids(), e.item_id))

    def _write_user(self, user: _User, writes: list[WriteOp]) -> None:
        k, u = self.keys, user.user_id
        if "state" in user.dirty:
            writes.append(("hset", k.session(u), {"id": user.session_id, "last": repr(user.session_last),
                                                   "items": SEP.join(user.session_items)}))
            writes.append(("set", k.recent(u), SEP.join(user.recent), None))
        if "cart" in user.dirty:
            writes.append(("delete", k.cart(u)))
            if user.cart:
                writes.append(("hset", k.cart(u), {i: str(q) for i, q in user.cart.items()}))
        if user.legacy_bought is not None:
            moved = {i: user.bought[i] for i in user.legacy_bought if i in user.bought}
            if moved:  # as recorded now: a purchase in this batch may have counted one more
                writes.append(("hset", k.purchases(u), {i: _purchase_field(n, t) for i, (n, t) in moved.items()}))
            writes.append(("delete", k.bought(u)))

    async def _session_ids(self, user_ids: list[str]) -> list[list[str]]:
        """Each shopper's session ids, for erasure; none for a shopper whose list of them
        is damaged (the erasure deletes the list; the sessions' item lists, which hold no
        shopper id, are then left to expire)."""
        ops = [("lrange", self.keys.session_ids(u), 1000) for u in user_ids]
        try:
            return await self.store.read(ops)
        except StoreDataError:
            found = []
            for op in ops:
                try:
                    found += await self.store.read([op])
                except StoreDataError:
                    found.append([])
            return found

    def _forget(self, user: _User, session_ids: list[str], writes: list[WriteOp]) -> None:
        """Erase every per-user key and the items of every session of the user.

        Aggregates (co-visitation, popularity) stay: they hold no user id. The
        sessions' ids may linger in item-side indexes, but point at nothing.
        """
        k, u = self.keys, user.user_id
        for sid in {*session_ids, user.session_id} - {""}:
            writes.append(("delete", k.session_items(sid)))
        for key in k.user_keys(u):
            writes.append(("delete", key))
        for source in self.sources:  # in-process caches of per-user state (e.g. taste vectors)
            forget = getattr(source, "forget", None)
            if forget is not None:
                forget(u)
        user.recent, user.session_items, user.cart, user.bought = [], [], {}, {}
        user.session_id, user.session_last, user.last_rec = "", 0.0, None
        user.dirty.clear()
        user.legacy_bought = None

    # -- feedback --------------------------------------------------------------------------
    def _first_lesson(self, event_id: str) -> bool:
        """True unless the ranker learned from ``event_id`` lately (``_taught``)."""
        if event_id in self._taught:
            return False
        self._taught[event_id] = None
        if len(self._taught) > TAUGHT_KEPT:
            self._taught.popitem(last=False)
        return True

    def _learn_from_next_click(self, user: _User, item_id: str, teach: bool = True) -> None:
        """The click after a shown list labels it: the clicked item (if shown) is a
        positive, shown items ranked above it are negatives (skip-above). The list is
        marked labelled either way; ``teach`` False leaves the ranker as it is."""
        rec = user.last_rec
        if not rec or rec.get("done"):
            return
        learn = self._learn if teach and not rec.get("shed") else _no_lesson
        feats = rec.get("features", {})
        order = rec.get("items", [])
        if item_id in feats:
            if teach:
                self._credit(rec, item_id)
            for other in order[: order.index(item_id)]:
                learn(feats[other], False)
            learn(feats[item_id], True)
        else:
            for other in order[:2]:
                learn(feats[other], False)
        rec["done"] = True

    async def _attribute(self, events: list[Feedback | Click], users: dict[str, _User],
                         writes: list[WriteOp]) -> None:
        """Feedback and clicks carrying a ``rec_id``: CTR per source and model version,
        and labels for the ranker."""
        k = self.keys
        records: dict[str, dict | None] = {}
        for e in events:
            last = users[e.user_id].last_rec
            if last and last.get("rec_id") == e.rec_id:
                records[e.rec_id] = last
        missing = [r for r in {e.rec_id for e in events} if r not in records]
        for r, blob in zip(missing, await self.store.read([("get", k.rec(r)) for r in missing])):
            records[r] = unpack_record(blob) if blob else None
        for e in events:
            rec = records.get(e.rec_id)
            if rec is None or rec.get("user_id") != e.user_id:
                continue  # unknown or expired list, or someone else's: nothing to attribute
            learn = self._learn if self._first_lesson(e.event_id) and not rec.get("shed") else _no_lesson
            action = e.action if isinstance(e, Feedback) else "click"
            items = [e.item_id] if e.item_id else (rec["items"] if action == "impression" else [])
            for item in items:
                if item not in rec["features"]:
                    continue
                for src in rec["sources"].get(item, []):
                    writes.append(("hincr", k.ctr(), f"{action}:source:{src}", 1.0))
                writes.append(("hincr", k.ctr(), f"{action}:version:{rec['model_version']}", 1.0))
                if action == "click":
                    if learn is not _no_lesson:
                        self._credit(rec, item)
                    order = rec["items"]
                    for other in order[: order.index(item)] if item in order else ():
                        if other not in rec.get("clicked", ()):  # shown above, skipped: a negative
                            learn(rec["features"][other], False)
                    learn(rec["features"][item], True)
                    rec.setdefault("clicked", []).append(item)
                elif action == "dismiss":
                    learn(rec["features"][item], False)
            if isinstance(e, Click):
                rec["done"] = True

    # -- recommending ------------------------------------------------------------------------
    async def _recommend(self, trigger: Event, ctx: Context, t0: float,
                         sources: Sequence[CandidateSource] | None = None,
                         skipped: list[str] | None = None) -> Recommendation:
        """One list for ``trigger`` from ``sources`` (all of them by default; a shed list
        names the ones it left out in ``skipped``)."""
        cfg = self.config
        cands = await gather_candidates(self.sources if sources is None else sources, ctx, cfg.k,
                                        depth=cfg.depth, concurrent=self.store.kind != "memory")
        recent = ctx.recent_items[:20]
        # a few spare candidates replace unavailable ones; a category cap may need more
        size = 2 * cfg.k if cfg.max_per_category else cfg.k + max(5, cfg.k // 4)
        # drawn by the event, not the list id: a batch done again shows the same lists;
        # a shed list is no fair trial for either ranker (fewer sources), so never one
        trial = not skipped and self.ranker.in_trial(trigger.event_id)
        placed_by_model: set[str] = set()
        if self.ranker.active or trial:  # the model weighs category affinity: every candidate needs it
            anchors = [a for c in cands.values() for a in c.because.values() if a]
            meta = await self.item_meta.get([*cands, *recent, *anchors])
            affinity = category_affinity(recent, cands, meta)
            if trial:
                head, placed_by_model = self._interleave(cands, size, affinity, trigger.event_id)
            else:
                head = self._rank(cands, size, affinity)
        else:  # the prior ranks; affinity is only recorded (as a label feature) for the head
            head = self._rank(cands, size)
            anchors = [a for _, c, _ in head for a in c.because.values() if a]
            meta = await self.item_meta.get([*(c.item_id for _, c, _ in head), *recent, *anchors])
            affinity = category_affinity(recent, {c.item_id: None for _, c, _ in head}, meta)
            for _, c, f in head if affinity is not None else ():
                f["cat_affinity"] = affinity[c.item_id]
        ranked = self._filter_and_diversify(head, cfg.k, meta)
        titles = {i: m.title for i, m in meta.items()}
        items = [RecommendedItem(c.item_id, round(score, 6), sorted(c.signals, key=lambda s: -c.signals[s]),
                                 self._reason(c, titles)) for score, c, _ in ranked]
        rec_id = self.new_rec_id()
        record = {"rec_id": rec_id, "user_id": ctx.user_id, "items": [c.item_id for _, c, _ in ranked],
                  "sources": {i.item_id: i.sources for i in items},
                  "features": {c.item_id: f for _, c, f in ranked}, "model_version": cfg.model_version}
        if trial:  # interleaved: who placed each item, for the clicks on it
            record["trial"] = {"model": [c.item_id for _, c, _ in ranked if c.item_id in placed_by_model]}
        if skipped:  # its features lack the sources it left out: no label for the ranker
            record["shed"] = True
        return Recommendation(
            rec_id=rec_id, user_id=ctx.user_id, trigger_event_id=trigger.event_id, ts=self.clock(),
            items=items, model_version=cfg.model_version,
            latency_ms=round((time.perf_counter() - t0) * 1000, 3), skipped_sources=list(skipped or ()),
            context={"_record": record, "recent_item_ids": ctx.session_items[:5],
                     "cart_item_ids": list(ctx.cart)[:10],
                     "titles": {i: t for i, t in titles.items() if t}})

    def _features_of(self, cands: dict[str, Candidate], affinity: dict[str, float] | None
                     ) -> Callable[[Candidate], dict]:
        """A function giving a candidate's ranker features: each source's score and
        reciprocal rank among ``cands``, and ``affinity`` (item -> share of the shopper's
        recent items in its category) when the shopper has history with known categories."""
        by_source: dict[str, list[tuple[float, str]]] = {}
        for c in cands.values():
            for s, v in c.signals.items():
                by_source.setdefault(s, []).append((-v, c.item_id))
        rank: dict[tuple[str, str], int] = {}
        for s, pairs in by_source.items():
            pairs.sort()  # best first, ties by item id
            for r, (_, i) in enumerate(pairs):
                rank[(s, i)] = r
        features = self.ranker.features

        def feats(c: Candidate) -> dict:
            f = features(c.signals, {s: rank[(s, c.item_id)] for s in c.signals})
            if affinity is not None:
                f["cat_affinity"] = affinity.get(c.item_id, 0.0)
            return f
        return feats

    def _rank(self, cands: dict[str, Candidate], head: int, affinity: dict[str, float] | None = None
              ) -> list[tuple[float, Candidate, dict]]:
        """The best ``head`` candidates as (score, candidate, ranker features).

        While the model does not rank, the prior blend orders everything and features
        (stored to label the list) are built only for the head."""
        feats, ranker = self._features_of(cands, affinity), self.ranker
        cs = list(cands.values())
        if not ranker.active:
            order = sorted(zip([-p for p in ranker.prior_scores([c.signals for c in cs])],
                               [c.item_id for c in cs], cs))[:head]  # best first, ties by item id
            return [(-neg, c, feats(c)) for neg, _, c in order]
        fs = [feats(c) for c in cs]
        scored = list(zip(ranker.score_many(fs, [c.signals for c in cs]), cs, fs))
        scored.sort(key=lambda t: (-t[0], t[1].item_id))
        return scored[:head]

    def _interleave(self, cands: dict[str, Candidate], head: int, affinity: dict[str, float] | None,
                    draw: str) -> tuple[list[tuple[float, Candidate, dict]], set[str]]:
        """A list of the ranker's trial: ``head`` candidates merged by team draft (coins
        drawn by ``draw``) from the prior blend's order and the model's, as (score,
        candidate, features) in list order, and the items the model placed. Each item's
        score is the one the ranker that ranks gives it."""
        feats, ranker = self._features_of(cands, affinity), self.ranker
        cs = list(cands.values())
        fs = [feats(c) for c in cs]
        priors, model = ranker.prior_scores([c.signals for c in cs]), ranker.probabilities(fs)
        scores = ranker.blend(model, priors) if ranker.active else priors
        shown = {c.item_id: (score, c, f) for score, c, f in zip(scores, cs, fs)}

        def order(by: list[float]) -> list[str]:  # best first, ties by item id
            return [i for _, i in sorted(zip([-x for x in by], [c.item_id for c in cs]))]

        merged = team_draft(order(priors), order(model), head, random.Random(draw))
        return [shown[i] for i, _ in merged], {i for i, by_model in merged if by_model}

    def _filter_and_diversify(self, head: list, k: int, meta: dict[str, ItemMeta]) -> list:
        """Drop unavailable items; cap items per category when configured."""
        out, per_cat = [], {}
        for entry in head:
            m = meta.get(entry[1].item_id) or ItemMeta()
            if not m.available:
                continue
            if self.config.max_per_category and m.category:
                if per_cat.get(m.category, 0) >= self.config.max_per_category:
                    continue
                per_cat[m.category] = per_cat.get(m.category, 0) + 1
            out.append(entry)
            if len(out) == k:
                break
        return out

    @staticmethod
    def _reason(c: Candidate, titles: dict[str, str | None]) -> str:
        """One line naming the strongest real signal behind the item."""
        best = max(c.signals, key=lambda s: (REASONS.get(s) is not None, c.signals[s] * (0.2 if s == "popular" else 1)))
        anchor = c.because.get(best, "")
        template = REASONS.get(best, "Recommended by " + best)
        if "{anchor}" in template:
            if not anchor:
                return "Related to what you viewed"
            return template.format(anchor=titles.get(anchor) or f"item {anchor}")
        return template

    def _rec_writes(self, r: Recommendation, latest: bool = True) -> list[WriteOp]:
        """The list's record (for feedback attribution) and, when it is the shopper's
        newest, their latest list (web API) and last list (labels)."""
        k, cfg = self.keys, self.config
        blob = pack_record(r.context["_record"])
        writes: list[WriteOp] = [("set", k.rec(r.rec_id), blob, cfg.rec_ttl_s)]
        if latest:
            writes += [("set", k.last_rec(r.user_id), blob, cfg.rec_ttl_s),
                       ("set", k.latest_rec(r.user_id), orjson.dumps(r.wire()), None)]
        return writes


def category_affinity(recent: list[str], cands: dict, meta: dict[str, ItemMeta]) -> dict[str, float] | None:
    """Share of the shopper's recent items that share each candidate's category
    (None when no recent item has a known category).

    >>> m = {"a": ItemMeta(category="tea"), "b": ItemMeta(category="mugs"), "x": ItemMeta(category="tea")}
    >>> category_affinity(["a", "a", "b"], {"x": None, "y": None}, m)
    {'x': 0.666667, 'y': 0.0}
    """
    cats = [meta[i].category for i in recent if i in meta and meta[i].category]
    if not cats:
        return None
    share: dict[str, float] = {}
    for c in cats:
        share[c] = share.get(c, 0.0) + 1.0 / len(cats)
    return {i: round(share.get((meta.get(i) or ItemMeta()).category, 0.0), 6) for i in cands}


def merge_increments(writes: list[WriteOp]) -> list[WriteOp]:
    """The same writes with every ``zincr`` of one (key, member) summed into its first
    occurrence: a batch's hot items (co-visitation, popularity) cost one command each.

    Increments commute, and nothing in a batch deletes an item-side zset, so the stored
    result is the same (up to float rounding).

    >>> merge_increments([("zincr", "k", "a", 1.0), ("set", "x", b"1", None), ("zincr", "k", "a", 0.5)])
    [('zincr', 'k', 'a', 1.5), ('set', 'x', b'1', None)]
    """
    first: dict[tuple[str, str], int] = {}
    out: list[WriteOp] = []
    for op in writes:
        if op[0] == "zincr":
            at = first.get((op[1], op[2]))
            if at is not None:
                prev = out[at]
                out[at] = ("zincr", prev[1], prev[2], prev[3] + op[3])
                continue
            first[(op[1], op[2])] = len(out)
        out.append(op)
    return out


def default_sources(store: FeatureStore, keys: Keys) -> list[CandidateSource]:
    """Sequential co-visitation, co-visitation, then popularity for cold start."""
    return [Sequential(store, keys), CoVisitation(store, keys), Popularity(store, keys)]


def pack_record(record: dict[str, Any]) -> bytes:
    """A list's record as stored for feedback: the ranker features as one row of values
    per item under the feature names given once (a fifth less memory in Redis than a
    dict per item; the values are the same floats). ``unpack_record`` reads both forms.

    >>> rec = {"rec_id": "r1", "items": ["a", "b"], "features": {"a": {"covis": 0.5, "n_sources": 1.0},
    ...                                                        "b": {"popular": 0.25, "n_sources": 1.0}}}
    >>> unpack_record(pack_record(rec)) == rec == unpack_record(orjson.dumps(rec))  # (older records too)
    True
    """
    feats = record.get("features") or {}
    if list(feats) != list(record.get("items", ())):
        return orjson.dumps(record)
    names = sorted(set().union(*feats.values()))
    packed = {key: v for key, v in record.items() if key != "features"}
    packed["feature_names"] = names
    packed["feature_rows"] = [list(map(f.get, names)) for f in feats.values()]
    return orjson.dumps(packed)


def unpack_record(blob: bytes) -> dict[str, Any]:
    """The record ``pack_record`` stored (or an older one, kept as a dict per item)."""
    rec = orjson.loads(blob)
    names = rec.pop("feature_names", None)
    if names is not None:
        rows = rec.pop("feature_rows", [])
        rec["features"] = {item: {name: v for name, v in zip(names, row) if v is not None}
                           for item, row in zip(rec.get("items", []), rows)}
    return rec


def recommendation_json(r: Recommendation) -> bytes:
    """The wire JSON of a recommendation event (internal context left out, copy context kept)."""
    d = r.wire()
    d["context"] = {key: v for key, v in r.context.items() if not key.startswith("_")}
    return orjson.dumps(d)
