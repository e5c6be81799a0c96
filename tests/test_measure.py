"""The benchmarks' measuring helpers read real process figures."""

from __future__ import annotations

import mmap
import os
import time

from streams.measure import cpu_s, percentile, rss_mb


def test_cpu_time_grows_with_work_done():
    before, deadline = cpu_s(os.getpid()), time.monotonic() + 10
    while cpu_s(os.getpid()) < before + 0.2 and time.monotonic() < deadline:
        sum(range(10_000))
    assert cpu_s(os.getpid()) >= before + 0.2  # busy for up to 10 s of wall time


def test_resident_memory_follows_an_allocation():
    # a new anonymous mapping: pages the allocator cannot have kept resident from earlier
    # tests (a bytearray may reuse freed, still-resident heap and leave RSS unchanged)
    size = 64 * 1024 * 1024
    block = mmap.mmap(-1, size)
    try:
        before = rss_mb(os.getpid())
        block.write(b"x" * size)  # touch every page
        assert rss_mb(os.getpid()) >= before + 60
    finally:
        block.close()


def test_a_missing_process_reads_as_nan():
    assert cpu_s(2**22 + 7) != cpu_s(2**22 + 7)  # NaN: no such pid


def test_percentile_is_one_of_the_values_by_nearest_rank():
    xs = [float(v) for v in reversed(range(101))]  # 0..100, unsorted
    assert [percentile(xs, q) for q in (0, 50, 99, 100)] == [0.0, 50.0, 99.0, 100.0]
    assert percentile([3.0, 1.0], 50) in (1.0, 3.0)
