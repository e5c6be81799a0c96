"""Metrics and the prequential protocol."""

from __future__ import annotations

import math

from hypothesis import given, strategies as st

from models.evaluation import Metrics, Prequential, rank_of, summarize
from models.events import Cart, Click


def test_metrics_by_hand():
    m = Metrics(k=3)
    m.add(["a", "b", "c"], "a")      # rank 1
    m.add(["a", "b", "c"], "c")      # rank 3
    m.add(["a", "b", "c", "d"], "d")  # beyond k: a miss
    m.add(["x"], "y")                # miss
    r = m.result(catalog_size=10)
    assert r["hit_rate@3"] == 0.5
    assert math.isclose(r["mrr@3"], (1 + 1 / 3) / 4)
    assert math.isclose(r["ndcg@3"], (1 + 1 / math.log2(4)) / 4)
    assert r["coverage@3"] == 0.4  # a, b, c, x
    assert r["cases"] == 4


@given(st.lists(st.integers(min_value=0, max_value=30), max_size=50), st.integers(min_value=1, max_value=25))
def test_metrics_are_fractions_and_ordered(ranks, k):
    s = summarize(ranks, k)
    for key in (f"hit_rate@{k}", f"mrr@{k}", f"ndcg@{k}"):
        assert 0.0 <= s[key] <= 1.0
    assert s[f"mrr@{k}"] <= s[f"ndcg@{k}"] + 1e-12 <= s[f"hit_rate@{k}"] + 2e-12


def test_rank_of_respects_k():
    assert rank_of(["a", "b"], "b", 1) == 0
    assert rank_of(["a", "b"], "b", 2) == 2


def test_prequential_scores_against_the_previous_list_only():
    p = Prequential(k=2)
    assert not p.score(Click("e1", "u", "a", 1.0))        # nothing shown yet
    p.shown("u", ["b", "c", "d"])                           # only the first k count
    assert p.score(Click("e2", "u", "b", 2.0))             # hit at 1
    assert p.score(Cart("e3", "u", "d", "add", 3.0))        # 'd' was beyond k: miss
    assert not p.score(Cart("e4", "u", "b", "remove", 4.0))  # removals are no interest signal
    assert not p.score(Click("e5", "v", "b", 5.0))         # another user: no list
    assert not p.score(Click("e6", "u", "c", 6.0), scored=False)  # training part
    r = p.report()
    assert r["test_cases"] == 2
    assert r["metrics"]["hit_rate@2"] == 0.5 and r["metrics"]["mrr@2"] == 0.5


def test_slices_cold_users_and_cold_items():
    p = Prequential(k=5, cold_user_events=3, cold_fraction=0.5)
    for i in range(6):
        if i:
            p.shown("u", ["a"])
        p.score(Click(f"e{i}", "u", "a", float(i)))  # 'a' first seen at event 0
    p.shown("u", ["a"])
    p.score(Click("e6", "u", "new", 6.0))            # first seen late: cold item, missed
    s = p.slices()
    assert s["cold_users"]["cases"] == 2            # the user's 2nd and 3rd events
    assert s["cold_users"]["hit_rate@5"] == 1.0
    assert s["cold_items"]["cases"] == 1 and s["cold_items"]["hit_rate@5"] == 0.0


def test_over_time_covers_every_case():
    p = Prequential(k=1)
    for i in range(10):
        p.shown("u", ["a"])
        p.score(Click(f"e{i}", "u", "a" if i % 2 else "b", float(i)))
    blocks = p.over_time(buckets=3)
    assert sum(b["cases"] for b in blocks) == 10
    assert blocks[-1]["event"] == 9


def test_cold_items_are_measured_against_interactions_not_the_catalog():
    from models.events import Item

    p = Prequential(k=2, cold_fraction=0.5)
    # the whole catalog is published first: that makes no item "seen" and moves no cut
    for item in ("a", "b", "late", "never"):
        assert not p.score(Item(item, item.upper(), 0.0))
    for n, item in enumerate(["a", "b", "a", "b", "late", "late"]):
        p.shown("u", ["late", "a"])
        p.score(Cart(f"e{n}", "u", item, "purchase", float(n + 1)))
    s = p.slices()["cold_items"]
    # 6 interactions, cut at 3: 'late' (first touched at interaction 4) is cold, twice
    assert s["cases"] == 2 and s["first_interactions"] == 1 and s["hit_rate@2"] == 1.0
    # cold users count interactions, not catalog events
    assert p.slices()["cold_users"]["cases"] == 3
    # coverage: of the 4 known items (catalog included), 2 were ever shown
    assert p.report()["metrics"]["coverage@2"] == 0.5


def test_periods_split_cases_by_calendar_unit_and_keep_every_case():
    day = 86_400.0
    start = 1_704_067_200.0  # 2024-01-01 00:00 UTC, a Monday
    p = Prequential(k=1)
    # 30 days, one case a day; the list holds 'a', the target is 'a' on even days only
    for d in range(30):
        p.shown("u", ["a"])
        p.score(Click(f"e{d}", "u", "a" if d % 2 == 0 else "b", start + d * day + 3600))
    weeks = p.periods()
    assert weeks["unit"] == "week"                  # 29 days: weeks, not months
    assert [r["period"] for r in weeks["rows"]] == ["2024-W01", "2024-W02", "2024-W03", "2024-W04", "2024-W05"]
    assert [r["cases"] for r in weeks["rows"]] == [7, 7, 7, 7, 2]
    # week 1 holds days 0..6: hits on 0, 2, 4, 6
    assert weeks["rows"][0]["hit_rate@1"] == 4 / 7
    assert sum(r["cases"] for r in p.periods("day")["rows"]) == 30
    months = p.periods("month")["rows"]
    assert [(r["period"], r["cases"]) for r in months] == [("2024-01", 30)]
    assert months[0]["hit_rate@1"] == p.report()["metrics"]["hit_rate@1"]


def test_periods_of_a_short_stream_are_days_and_empty_without_cases():
    p = Prequential(k=1)
    assert p.periods() == {"unit": "day", "rows": []}
    for n in range(3):
        p.shown("u", ["a"])
        p.score(Click(f"e{n}", "u", "a", 1_704_067_200.0 + n * 50_000))
    assert p.periods()["unit"] == "day"
    assert [r["cases"] for r in p.periods()["rows"]] == [2, 1]


def test_bought_before_counts_cases_whose_target_the_shopper_had_bought():
    p = Prequential(k=2)
    for n, (user, item, action) in enumerate([("u", "tea", "purchase"), ("u", "tea", "purchase"),
                                              ("v", "tea", "purchase"), ("u", "mug", "add"),
                                              ("u", "tea", "add"), ("u", "mug", "purchase")]):
        p.shown(user, ["tea", "cup"])
        p.score(Cart(f"e{n}", user, item, action, float(n)))
    s = p.slices()["bought_before"]
    # u's second tea purchase and u's tea cart add; v had never bought tea, and a cart add
    # of mug makes no purchase
    assert s["cases"] == 2 and s["hit_rate@2"] == 1.0
    # the periods count them too (all six events fall on one day)
    [day] = p.periods()["rows"]
    assert day["cases"] == 6 and day["bought_before"] == 2
