"""Spies on real objects: they record what the code under test asked, and still answer."""

from __future__ import annotations


def count_searches(index) -> list[int]:
    """Queries per ``index.search`` call from now on (the real index answers)."""
    calls: list[int] = []
    search = index.search

    def counting(q, n, exclude=()):
        calls.append(len(q))
        return search(q, n, exclude)

    index.search = counting
    return calls
