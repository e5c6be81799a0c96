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
        base = {"event_id": f"ev{seed}-{n}", "user_id": f"shopper{user}", "item_id": item, "ts": round(ts, 3)}
        if r < 0.9:
            yield {"topic": "clicks", "value": base}
        elif r < 0.97:
            yield {"topic": "carts", "value": {**base, "action": "add", "quantity": 1}}
        else:
            yield {"topic": "carts", "value": {**base, "action": "purchase", "quantity": 1}}
