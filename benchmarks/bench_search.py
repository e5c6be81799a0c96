"""Exact catalog search, piece by piece: the matrix product and the choice of each query's best.

    python -m benchmarks.bench_search [--items 5000] [--dim 384] [--n 103] [--queries 1 8 15 40]

For each number of queries at once (a batch's lists search their anchors and taste
vectors together), the median over repeated calls, in microseconds, of:

- ``search``: ``ExactIndex.search`` as the content source calls it (product, choice, ids);
- ``product``: the matrix product alone;
- ``best_per_row``: the choice of each row's ``n`` best by a sampled threshold (what
  ``search`` does);
- ``full selection``: the same choice by ``argpartition`` over every column and a sort
  of the chosen, for comparison (what ``search`` did before ``best_per_row``).

The vectors are random unit vectors; the times depend on the catalog's size and the
machine, not on what the vectors say. ``n`` defaults to the depth the worker's
content and new-item sources search (103).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from models.content.index import ExactIndex, best_per_row, normalise


def full_selection(scores: np.ndarray, want: int) -> tuple[list, list]:
    top = np.argpartition(-scores, want - 1, axis=1)[:, :want]
    best = np.take_along_axis(scores, top, 1)
    order = np.argsort(-best, axis=1, kind="stable")
    return np.take_along_axis(top, order, 1).tolist(), np.take_along_axis(best, order, 1).tolist()


def median_us(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e6 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--n", type=int, default=103)
    p.add_argument("--queries", type=int, nargs="+", default=[1, 8, 15, 40])
    p.add_argument("--repeat", type=int, default=300)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    index = ExactIndex(a.dim, capacity=a.items)
    index.upsert([f"i{i}" for i in range(a.items)], normalise(rng.standard_normal((a.items, a.dim))))
    matrix = index.matrix()[1]
    print(f"{a.items:,} items x {a.dim} dimensions, best {a.n} per query; median microseconds per call")
    print(f"{'queries':>8} {'search':>9} {'product':>9} {'best_per_row':>13} {'full selection':>15}")
    with threadpool_limits(1, user_api="blas"):  # one BLAS thread, as the index searches
        for k in a.queries:
            measure(index, matrix, k, a.n, a.repeat, rng)


def measure(index: ExactIndex, matrix: np.ndarray, k: int, n: int, repeat: int,
            rng: np.random.Generator) -> None:
    """Print one row: the median times of ``k`` queries at once."""
    q = normalise(rng.standard_normal((k, matrix.shape[1])))
    scores = np.ascontiguousarray((matrix @ q.T).T)
    assert best_per_row(scores, n) == full_selection(scores, n)  # no ties in random data
    row = [median_us(lambda: index.search(q, n), repeat), median_us(lambda: matrix @ q.T, repeat),
           median_us(lambda: best_per_row(scores, n), repeat), median_us(lambda: full_selection(scores, n), repeat)]
    print(f"{k:>8} {row[0]:>9.0f} {row[1]:>9.0f} {row[2]:>13.0f} {row[3]:>15.0f}", flush=True)


if __name__ == "__main__":
    main()
