"""The benchmarks' measuring helpers read real process figures."""

from __future__ import annotations

import os

from streams.measure import cpu_s, percentile, rss_mb


def test_cpu_time_grows_with_work_done():
    before = cpu_s(os.getpid())
    total = 0
    while cpu_s(os.getpid()) < before + 0.2:
        total += sum(range(10_000))
    assert total > 0 and cpu_s(os.getpid()) >= before + 0.2


def test_resident_memory_follows_an_allocation():
    before = rss_mb(os.getpid())
    block = bytearray(64 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    assert rss_mb(os.getpid()) >= before + 60


def test_a_missing_process_reads_as_nan():
    assert cpu_s(2**22 + 7) != cpu_s(2**22 + 7)  # NaN: no such pid


def test_percentile_is_one_of_the_values_by_nearest_rank():
    xs = [float(v) for v in reversed(range(101))]  # 0..100, unsorted
    assert [percentile(xs, q) for q in (0, 50, 99, 100)] == [0.0, 50.0, 99.0, 100.0]
    assert percentile([3.0, 1.0], 50) in (1.0, 3.0)
