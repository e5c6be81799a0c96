"""The ranker's trial: interleaved lists (team draft), clicks counted for whoever placed
the item, once each. The verdict itself is in ``models.ranking.Ranker.add_trials``'s
examples and, end to end over simulated shoppers, in ``tests/test_web_feedback_loop.py``."""

from __future__ import annotations

import random
from collections import Counter

from models.events import Click
from models.features.keys import Keys
from models.features.memory import MemoryStore
from models.ranking import team_draft
from tests.test_pipeline import T0, recommender


def test_team_draft_gives_each_order_the_top_place_half_the_time_and_never_repeats():
    prior, model = [f"p{n}" for n in range(10)], [f"m{n}" for n in range(10)]
    first = Counter()
    for seed in range(2000):
        merged = team_draft(prior, model, 10, random.Random(seed))
        assert len(merged) == 10 and len({i for i, _ in merged}) == 10
        assert sum(by_model for _, by_model in merged) == 5  # one each per round
        first[merged[0][1]] += 1
    assert 900 < first[True] < 1100
    # shared items are placed once, by whoever reaches them first; a short order runs out
    merged = team_draft(["a", "b"], ["b", "c", "d", "e"], 5, random.Random(3))
    assert [i for i, _ in merged].count("b") == 1 and len(merged) == 5
    assert {i for i, by_model in merged if not by_model} <= {"a", "b"}


def warm(rec) -> None:
    """Teach ``rec``'s ranker its warm-up: the model may now be tried."""
    rng = random.Random(0)
    for _ in range(rec.ranker.warmup):
        y = rng.random() < 0.3
        rec.ranker.learn({"covis": float(y) + rng.random(), "n_sources": 1.0}, y)
    assert rec.ranker.warm and not rec.ranker.active


async def shop(rec, shoppers: int = 200):
    """Every shopper views two items of a small catalog; returns each one's last list."""
    items = [f"i{n}" for n in range(30)]
    rng = random.Random(1)
    events = [Click(f"e{u}-{n}", f"u{u}", rng.choice(items), T0 + 10 * n + u / 1000)
              for n in range(2) for u in range(shoppers)]
    lists = {}
    for start in range(0, len(events), 50):
        out = await rec.handle(events[start:start + 50])
        lists.update({r.user_id: r for r in out.recommendations})
    return lists


async def test_a_fifth_of_the_lists_are_interleaved_and_clicks_count_for_who_placed_the_item(prefix):
    rec = recommender(MemoryStore(), Keys(prefix), learn_ranker=False)  # labels from feedback only
    cold = await shop(rec)
    assert not any("trial" in r.context["_record"] for r in cold.values())  # not warm: no trial
    warm(rec)
    lists = await shop(rec)
    tried = {u: r for u, r in lists.items() if "trial" in r.context["_record"]}
    assert 0.1 < len(tried) / len(lists) < 0.3
    by_model = {u: r for u, r in tried.items() if r.context["_record"]["trial"]["model"]
                and len(r.items) > len(r.context["_record"]["trial"]["model"])}
    assert len(by_model) >= 4
    clicks, expected = [], []
    for n, (user, r) in enumerate(sorted(by_model.items())):
        placed = r.context["_record"]["trial"]["model"]
        item = placed[0] if n % 2 == 0 else next(i.item_id for i in r.items if i.item_id not in placed)
        clicks.append(Click(f"c{n}", user, item, T0 + 100, rec_id=r.rec_id))
        expected.append(n % 2 == 0)
    await rec.handle(clicks, recommend=False)
    assert list(rec.ranker.trials) == expected
    await rec.handle(clicks, recommend=False)  # delivered again: counted once
    assert list(rec.ranker.trials) == expected
    # a click on a list that was not interleaved counts for nobody
    plain = next(r for u, r in lists.items() if u not in tried and r.items)
    await rec.handle([Click("c-plain", plain.user_id, plain.items[0].item_id, T0 + 100, rec_id=plain.rec_id)],
                     recommend=False)
    assert list(rec.ranker.trials) == expected


async def test_the_same_event_draws_the_same_list(prefix):
    """Interleaving is drawn by the triggering event: two recommenders in the same state
    show the same lists, whatever ids their lists get."""
    a, b = (recommender(MemoryStore(), Keys(prefix), learn_ranker=False) for _ in range(2))
    b.new_rec_id = iter(f"other{n}" for n in range(10**6)).__next__
    for rec in (a, b):
        warm(rec)
    la, lb = await shop(a), await shop(b)
    assert {u: [i.item_id for i in r.items] for u, r in la.items()} == \
        {u: [i.item_id for i in r.items] for u, r in lb.items()}
    assert {u for u, r in la.items() if "trial" in r.context["_record"]} == \
        {u for u, r in lb.items() if "trial" in r.context["_record"]}


async def test_a_shop_can_keep_the_experiment_off(prefix, monkeypatch):
    """``STREAMREC_RANKER_TRIAL_SHARE=0``: no list is interleaved, so the model never wins
    and the prior blend ranks every list, however warm the model is."""
    from streams.app import Runtime
    from streams.settings import Settings

    monkeypatch.setenv("STREAMREC_RANKER_TRIAL_SHARE", "0")
    rt = Runtime(Settings(redis_url="memory://", key_prefix=prefix, content=False, _env_file=None))
    rec = rt.recommender
    rec.config.learn_ranker = False
    warm(rec)
    lists = await shop(rec)
    assert lists and not any("trial" in r.context["_record"] for r in lists.values())
    assert rec.ranker.status()["trial"]["lists"] == 0.0 and rec.ranker.status()["ranks_by"] == "prior blend"
