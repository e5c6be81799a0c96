"""Fuzz every decoder with hypothesis-generated hostile inputs and count the outcomes.

    python -m benchmarks.fuzz --inputs 100000
"""

from __future__ import annotations

import argparse
import json
import time

from hypothesis import HealthCheck, given, settings

from tests.fuzz_inputs import raw_inputs, topics
from tests.test_fuzz_decoders import check_one


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--inputs", type=int, default=100_000)
    p.add_argument("--report")
    args = p.parse_args()
    counts = {"inputs": 0, "rejected": 0, "accepted": 0, "crashes": 0}

    @settings(max_examples=args.inputs, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(topics, raw_inputs)
    def run(topic, raw):
        counts["inputs"] += 1
        try:
            counts["rejected" if check_one(topic, raw) else "accepted"] += 1
        except Exception:
            counts["crashes"] += 1
            raise

    t = time.perf_counter()
    run()
    counts["elapsed_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps(counts))
    if args.report:
        open(args.report, "w").write(json.dumps(counts, indent=2))


if __name__ == "__main__":
    main()
