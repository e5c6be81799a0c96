"""Session-kNN's cache of neighbour sessions stays within its bound."""

from __future__ import annotations

from models.candidates.session_knn import SEP, SessionKNN
from models.features.keys import Keys
from models.features.memory import MemoryStore


async def test_neighbour_session_cache_keeps_the_latest_read_within_its_size():
    store, keys = MemoryStore(), Keys()
    await store.write([("set", keys.session_items(f"s{n}"), SEP.join(["mug-1", "b", f"x{n}"]), None)
                       for n in range(5)])
    knn = SessionKNN(store, keys, cache_size=3)
    knn.cache_s = 30.0  # (the cache is for remote stores; the memory store skips it)
    assert await knn._session_items(["s0", "s1", "s2"], now=0.0) == [["mug-1", "b", "x0"], ["mug-1", "b", "x1"],
                                                                     ["mug-1", "b", "x2"]]
    await knn._session_items(["s0"], now=40.0)  # expired: read again, now the youngest
    await knn._session_items(["s3", "s4"], now=41.0)
    assert list(knn._sessions) == ["s0", "s3", "s4"]
    # every session's copy of an item id is one string
    a = [items[0] for _, items in knn._sessions.values()]
    assert all(x is a[0] for x in a)
