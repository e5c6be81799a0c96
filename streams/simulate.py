"""A documented simulator of shoppers, for benchmarks and the demo.

Shoppers arrive in sessions; each session has a taste for one category; items within
a category follow a Zipf popularity; a shopper clicks a few items, sometimes puts one
in the cart and sometimes buys it. Deterministic for a given seed.

>>> events = list(simulate_shoppers(50, n_users=10, n_items=40, seed=1))
>>> len(events), events[0]["topic"]
(50, 'clicks')
>>> sorted({e["topic"] for e in events})
['carts', 'clicks']
"""

from __future__ import annotations

import heapq
import random
from typing import Iterator


def catalog(n_items: int, n_categories: int = 12, ts: float = 1_700_000_000.0,
            titles: list[str] | None = None) -> list[dict]:
    """``items`` topic values for a synthetic catalog (or for the given titles)."""
    out = []
    for j in range(n_items):
        title = titles[j % len(titles)] if titles else f"Product {j} of category {j % n_categories}"
        out.append({"topic": "items", "value": {"item_id": f"i{j}", "title": title,
                                                 "category": f"c{j % n_categories}", "price": round(2 + (j % 37) * 1.5, 2),
                                                 "ts": ts}})
    return out


def simulate_shoppers(n_events: int, n_users: int = 2000, n_items: int = 5000, n_categories: int = 12,
                      seed: int = 0, start_ts: float = 1_700_000_000.0, gap_s: float = 0.5
                      ) -> Iterator[dict]:
    """Yield ``{"topic", "value"}`` click and cart events in event-time order."""
    rnd = random.Random(seed)
    per_cat = [list(range(c, n_items, n_categories)) for c in range(n_categories)]
    sessions: dict[int, tuple[int, int]] = {}  # user -> (category, clicks left)
    ts = start_ts
    for n in range(n_events):
        ts += gap_s
        user = int(rnd.paretovariate(1.1)) % n_users if rnd.random() < 0.5 else rnd.randrange(n_users)
        cat, left = sessions.get(user, (rnd.randrange(n_categories), rnd.randint(2, 12)))
        items = per_cat[cat]
        item = f"i{items[min(int(rnd.paretovariate(1.3)) - 1, len(items) - 1)]}"
        left -= 1
        sessions[user] = (cat, left) if left > 0 else (rnd.randrange(n_categories), rnd.randint(2, 12))
        r = rnd.random()
        yield _interaction({"event_id": f"ev{seed}-{n}", "user_id": f"shopper{user}", "item_id": item,
                            "ts": round(ts, 3)}, r)


def _interaction(base: dict, r: float) -> dict:
    """``base`` (event id, shopper, item, ts) as a click, an add to cart or a purchase
    (90, 7 and 3 % of ``r`` in [0, 1))."""
    if r < 0.9:
        return {"topic": "clicks", "value": base}
    action = "add" if r < 0.97 else "purchase"
    return {"topic": "carts", "value": {**base, "action": action, "quantity": 1}}


def simulate_live_shop(n_events: int, rate: float, n_items: int = 5000, n_categories: int = 12, seed: int = 0,
                       start_ts: float = 1_700_000_000.0, think_s: float = 8.0, returning: float = 0.3,
                       past_shoppers: int = 2000, burn_in_s: float = 120.0, lead_in_s: float = 0.0
                       ) -> Iterator[dict]:
    """Click and cart events of a live shop taking ``rate`` events per second.

    Sessions arrive at random (Poisson) at the rate that makes ``rate`` events per
    second; each is one shopper browsing one category (Zipf popularity within it, as
    ``simulate_shoppers``) for 2-12 interactions, ``think_s`` apart on average
    (exponential). A share ``returning`` of sessions belong to shoppers
    ``simulate_shoppers`` knows (``shopper0`` .. ``shopper{past_shoppers - 1}``); the
    others to shoppers never seen before. ``ts`` is the event's time in the shop:
    ``rate`` events per second of it; sessions last six think times on average, so
    about ``rate * 6 * think_s / 7`` shoppers browse at once (3,400 at 500 events/s).
    The first ``burn_in_s`` seconds (while that crowd builds up) are not yielded, but
    for their last ``lead_in_s`` (stamped before ``start_ts``, on top of the
    ``n_events``): fed to a worker before a measurement, they give it the sessions in
    flight from their start, as a worker that has served the shop all along has them.
    Deterministic for a given seed.

    >>> events = list(simulate_live_shop(2000, rate=100, seed=1))
    >>> round((events[-1]["value"]["ts"] - events[0]["value"]["ts"]) / len(events), 2)  # ~1/rate apart
    0.01
    >>> shoppers = {e["value"]["user_id"] for e in events}
    >>> 200 < len(shoppers) < 2000, any(u.startswith("shopper") for u in shoppers)
    (True, True)
    """
    rnd = random.Random(seed)
    per_cat = [list(range(c, n_items, n_categories)) for c in range(n_categories)]
    arrivals = rate / 7.0  # sessions per second: 7 interactions per session on average
    #: (time of the session's next interaction, session number, shopper, category, left)
    browsing: list[tuple[float, int, str, int, int]] = []
    t, next_arrival, sessions, n, lead_n = 0.0, rnd.expovariate(arrivals), 0, 0, 0
    while n < n_events:
        if not browsing or next_arrival < browsing[0][0]:
            t = next_arrival
            next_arrival += rnd.expovariate(arrivals)
            shopper = (f"shopper{rnd.randrange(past_shoppers)}" if rnd.random() < returning
                       else f"live{seed}-{sessions}")
            heapq.heappush(browsing, (t, sessions, shopper, rnd.randrange(n_categories), rnd.randint(2, 12)))
            sessions += 1
            continue
        t, sid, shopper, cat, left = heapq.heappop(browsing)
        if left > 1:
            heapq.heappush(browsing, (t + rnd.expovariate(1 / think_s), sid, shopper, cat, left - 1))
        if t < burn_in_s - lead_in_s:
            continue
        items = per_cat[cat]
        item = f"i{items[min(int(rnd.paretovariate(1.3)) - 1, len(items) - 1)]}"
        lead = t < burn_in_s
        yield _interaction({"event_id": f"live{seed}-{'lead' if lead else 'ev'}{lead_n if lead else n}",
                            "user_id": shopper, "item_id": item, "ts": round(start_ts + t - burn_in_s, 3)},
                           rnd.random())
        if lead:
            lead_n += 1
        else:
            n += 1
