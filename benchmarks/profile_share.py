"""Where a worker's CPU goes: shares of a py-spy profile by part of the stack.

    py-spy record --subprocesses -r 100 --format raw -o prof.txt -- streamrec bench --events 5000 --rate 500
    python -m benchmarks.profile_share prof.txt [--process "streams.cli worker"]

Reads py-spy's raw output (one ``frame;frame;... count`` line per stack), keeps the
stacks of the process whose command line contains ``--process``, drops start-up (the
catalog's first embedding, imports) and idle waits (asyncio's ``select``, idle pool
threads, and uvloop's loop: its wait runs in C, so py-spy shows the thread in the
Python frame that started the loop, with nothing above it), and counts every remaining
sample once: in the recommender when any frame is in ``models/`` (split by source),
else by the deepest frame of a known part.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from typing import Iterable

STARTUP_OR_IDLE = ("TextEncoder", "models/content/catalog.py", "_find_and_load", "EpollSelector.select")
#: Frames that start an event loop (the worker's, Faust's consumer thread's): a sample
#: that ends in one is uvloop waiting in C (asyncio's loop shows its ``select``)
LOOP_ENTRIES = ("Worker.execute_from_commandline (mode/worker.py:", "ServiceThread._start_thread (mode/threads.py:")
#: (part, substring of a frame), the first match from the deepest frame up wins
OUTSIDE = [("Redis client, outside the recommender's frames", "redis/"), ("aiokafka in the main thread", "aiokafka/"),
           ("Faust and mode", "faust/"), ("Faust and mode", "mode/"), ("worker glue (streams/) and the rest", "streams/"),
           ("asyncio event loop", "asyncio/")]
#: recommender parts by the deepest ``models/`` frame: (part, pattern on "function (file")
INSIDE = [("content and new-item sources", r"ContentSource|NewItems|content/index\.py|content/sources\.py"),
          ("session-kNN", r"session_knn\.py"), ("next-item", r"sequential\.py"), ("co-visitation", r"covis\.py"),
          ("ranking and reasons", r"ranking\.py|_rank|_filter_and_diversify|_reason"),
          ("feature-store access", r"models/features/"), ("candidate gathering", r"gather_candidates")]


def shares(lines: Iterable[str], process: str = "") -> tuple[Counter, Counter, int]:
    """(parts, recommender parts, busy samples) of py-spy raw ``lines``."""
    parts: Counter = Counter()
    inside: Counter = Counter()
    busy = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        frames = stack.split(";")
        if not stack or (process and not any(f.startswith("process ") and process in f for f in frames)):
            continue
        n = int(count)
        if any(p in stack for p in STARTUP_OR_IDLE) or frames[-1].startswith(LOOP_ENTRIES) or (
                "concurrent/futures/thread.py" in stack and "_WorkItem.run" not in stack):
            continue
        busy += n
        if "WorkerThread.run" in stack:
            parts["Faust's consumer thread"] += n
        elif "models/" in stack:
            parts["the recommender (models/), with the store calls it makes"] += n
            deepest = next(f for f in reversed(frames) if "models/" in f)
            inside[next((name for name, pat in INSIDE if re.search(pat, deepest)), "the pipeline's own work")] += n
        else:
            parts[next((name for f in reversed(frames) for name, p in OUTSIDE if p in f), "the rest")] += n
    return parts, inside, busy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile", help="py-spy record --format raw output")
    p.add_argument("--process", default="streams.cli worker",
                   help="keep stacks of the process whose command line contains this ('' for all)")
    a = p.parse_args()
    with open(a.profile) as f:
        parts, inside, busy = shares(f, a.process)
    print(f"{busy:,} busy samples")
    for name, n in parts.most_common():
        print(f"{100 * n / busy:5.1f} %  {name}")
    for name, n in inside.most_common():
        print(f"{100 * n / busy:5.1f} %    recommender: {name}")


if __name__ == "__main__":
    main()
