"""The stream never waits on the LLM: `recommendations` latency with the LLM stalled
next to the same run with template copy.

    python -m benchmarks.bench_stall --events 3000 --rate 200

Two runs of one worker (copy pool inside it) on an embedded broker and Redis, same
paced stream of simulated shoppers: once with ``STREAMREC_LLM_BASE_URL=template``, once
against the project's fault-injecting OpenAI-compatible server answering every call
with a stall far past the copy deadline. Reports the p50/p99 from produce to the
recommendation read back, and how many enriched events arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import uuid
from pathlib import Path

from streams.bench import _measure, _rec_trigger, _seed
from streams.embedded import start_broker, start_redis, start_worker
from streams.simulate import catalog, simulate_shoppers
from tests.support.fault_llm import FaultLLM


async def run(events: int, rate: float) -> dict:
    logdir = Path(tempfile.mkdtemp(prefix="streamrec-stall-"))
    broker, redis = start_broker(log_dir=logdir), start_redis(log_dir=logdir)
    bootstrap = f"127.0.0.1:{broker.port}"
    fault = await FaultLLM(default="stall", stall_s=60.0).start()
    stream = list(simulate_shoppers(events + 1000, seed=9))
    out: dict = {"events": events, "rate": rate}
    try:
        for mode, base_url in (("template", "template"), ("llm_stalled", fault.base_url)):
            prefix = f"s{uuid.uuid4().hex[:6]}-"
            env = {"STREAMREC_KAFKA_URL": f"kafka://{bootstrap}", "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
                   "STREAMREC_TOPIC_PREFIX": prefix, "STREAMREC_KEY_PREFIX": prefix, "STREAMREC_APP_ID": f"stall-{prefix}",
                   "STREAMREC_WEB_PORT": "0", "STREAMREC_LLM_BASE_URL": base_url, "STREAMREC_LLM_API_KEY": "bench",
                   "STREAMREC_LLM_TIMEOUT_S": "2", "STREAMREC_PARTITIONS": "4", "STREAMREC_CONTENT": "false"}
            worker = await asyncio.to_thread(start_worker, env, logdir / f"{mode}.log")
            try:
                await _seed(bootstrap, prefix, catalog(2000))
                await _measure(bootstrap, prefix, prefix + "recommendations", stream[:1000], rate, _rec_trigger)
                out[mode] = await _measure(bootstrap, prefix, prefix + "recommendations", stream[1000:], rate,
                                           _rec_trigger)
            finally:
                await asyncio.to_thread(worker.stop)
            print(f"{mode:12s} p50 {out[mode]['p50_ms']:.1f} ms  p99 {out[mode]['p99_ms']:.1f} ms  "
                  f"({out[mode]['outputs']} of {events} recommendations)", flush=True)
        out["llm_calls_received"] = len(fault.modes_served)
        out["p99_ratio"] = round(out["llm_stalled"]["p99_ms"] / out["template"]["p99_ms"], 3)
        print(f"p99 stalled / template: {out['p99_ratio']:.2f}")
    finally:
        await fault.stop()
        broker.stop()
        redis.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--report")
    a = p.parse_args()
    result = asyncio.run(run(a.events, a.rate))
    if a.report:
        Path(a.report).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
