"""The simulated shops the benches and the demo feed: a live shop's events arrive at
the asked rate, in sessions of one shopper browsing one category, from returning and
new shoppers in the asked share."""

from __future__ import annotations

import statistics
from collections import defaultdict

import pytest

from streams.simulate import simulate_live_shop


@pytest.mark.parametrize("rate", [50, 500])
def test_a_live_shop_takes_events_at_its_rate_from_a_crowd_of_sessions(rate):
    events = list(simulate_live_shop(20 * rate, rate=rate, seed=4, think_s=8.0, returning=0.3))
    ts = [e["value"]["ts"] for e in events]
    assert ts == sorted(ts)
    assert 0.85 * rate < len(ts) / (ts[-1] - ts[0]) < 1.15 * rate
    assert len({e["value"]["event_id"] for e in events}) == len(events)
    by_shopper = defaultdict(list)
    for e in events:
        by_shopper[e["value"]["user_id"]].append(e["value"])
    # a crowd: thousands of shoppers browse at once at 500/s, none of them as busy as a bot
    assert len(by_shopper) > rate * 4
    busiest = max(len(v) for v in by_shopper.values())
    assert busiest <= 30
    gaps = [b["ts"] - a["ts"] for v in by_shopper.values() for a, b in zip(v, v[1:])]
    assert 1.0 < statistics.median(gaps) < 8.0
    returning = sum(len(v) for u, v in by_shopper.items() if u.startswith("shopper"))
    assert 0.22 < returning / len(events) < 0.38
    topics = {e["topic"] for e in events}
    assert topics == {"clicks", "carts"}
    assert {e["value"]["action"] for e in events if e["topic"] == "carts"} == {"add", "purchase"}


def test_a_live_shop_s_session_browses_one_category_and_the_shop_is_deterministic():
    events = list(simulate_live_shop(3000, rate=100, seed=7, n_items=1200, n_categories=12, returning=0.0))
    assert events == list(simulate_live_shop(3000, rate=100, seed=7, n_items=1200, n_categories=12, returning=0.0))
    assert events != list(simulate_live_shop(3000, rate=100, seed=8, n_items=1200, n_categories=12, returning=0.0))
    categories = defaultdict(set)
    for e in events:  # new shoppers only: one session each
        categories[e["value"]["user_id"]].add(int(e["value"]["item_id"][1:]) % 12)
    assert all(len(c) == 1 for c in categories.values())



def test_a_lead_in_gives_the_sessions_in_flight_from_their_start():
    """Without a lead-in most of the first seconds' events are the first seen of their
    session (it began in the burn-in); with the shop's minute before, few are."""
    start, rate = 1_700_000_000.0, 200

    def first_seen_share(events):
        seen, firsts, first_seconds = set(), 0, 0
        for e in events:
            v = e["value"]
            if start <= v["ts"] < start + 5:
                first_seconds += 1
                firsts += v["user_id"] not in seen
            seen.add(v["user_id"])
        return firsts / first_seconds

    plain = list(simulate_live_shop(10 * rate, rate=rate, seed=3, start_ts=start, returning=0.0))
    led = list(simulate_live_shop(10 * rate, rate=rate, seed=3, start_ts=start, returning=0.0, lead_in_s=60.0))
    lead = [e for e in led if e["value"]["ts"] < start]
    assert all(e["value"]["ts"] >= start for e in plain) and len(led) - len(lead) == len(plain)
    assert 0.8 * 60 * rate < len(lead) < 1.2 * 60 * rate
    assert first_seen_share(plain) > 0.6 and first_seen_share(led) < 0.2
