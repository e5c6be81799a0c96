"""``streamrec bench``: one worker's throughput and latency, next to a bare Faust pass-through.

Both run as separate processes against the embedded broker (a fresh one for every
measurement, see below) or, with ``--kafka-url``, against a broker of the shop's
(fresh topics for every measurement, created up front and deleted after it), with the
same batching (``take_batches``), over the same simulated shopper stream:

- throughput: N events produced as fast as possible; events/s = N / (time from the
  first produce to the last output read back);
- latency: events paced at ``--rate`` per second (20 s of them, or ``--events`` if
  fewer; several rates give one run each, lowest first); latency = time the output
  is read back minus the time its input was handed to the producer (p50/p95/p99);
  the summary names the highest rate whose p99 stayed under ``--slo-ms`` (and the rate
  from which the bare pass-through itself missed it: there the machine bounds the
  tail, not the worker); it splits at the worker's send (the output record's Kafka
  timestamp, stamped by the worker's producer): before it (fetch, queue, batch; with
  the part inside the worker's batch, the recommendation's ``latency_ms``) and after it
  (delivery to the reader);
- worker CPU per event: the worker process's user + system CPU time during the
  throughput run over the events it answered, steadier from run to run on a shared
  machine than events/s;
- where the machine's cores went in every run: the CPU the worker, the broker, the
  embedded Redis and the bench's own process (producer and reader) used, in cores;
- with ``STREAMREC_SHED_AFTER_MS`` in the environment, the streamrec worker makes late
  batches' lists without the shed sources; each run then says how many lists were shed;
- whether a paced run's tail is spread out or made in a short stretch: in how many of
  its seconds the slowest 1 % were sent; with ``--latency-log FILE``, every paced
  output's latency as JSON lines (worker, rate, send time, latency, the part before
  the worker's send and inside its batch).

The paced runs send one of two workloads (``--workload``): ``stress`` (the default,
``simulate_shoppers``: 2,000 shoppers with a bot-like head, 0.5 s of simulated time
per event whatever the rate, so most shoppers start a new session with every event) or
``live`` (``simulate_live_shop`` at the paced rate: sessions arriving, 30 % of them
returning shoppers, each event stamped with the time it is handed to the producer).
The throughput run drains the same workload: the stress stream, or the live shop of the
highest rate (its crowd), sent unpaced after ``THROUGHPUT_WARM`` events, its store first
given the shop's minute before as the paced runs' is (below): a running shop's store,
whose item session lists and co-visitation are full, costs more per list than the
stress stream's young one.

Topics have ``--partitions`` partitions (4 unless given; one run with 16 gave the
streamrec worker a p99 of 430 ms at 500 events/s against 198 ms with 4, right after).

Both first receive a 5,000-item catalog; the streamrec worker's measurements start
once it has embedded every title (content candidates on, as in production).

Every measurement runs on an embedded broker of its own: each worker's throughput run
(after ``THROUGHPUT_WARM`` unpaced events) and each paced run, which reads fresh topics through a
fresh worker process on the same store (a restarted worker: its features, models and
catalog vectors carry over) after ``LATENCY_WARM`` unpaced events. For a live shop the
store first gets the shop's minute before the measured one (``LIVE_LEAD_IN_S``, through
the processing path in this process): the sessions in flight when the clock starts
began in it, so the worker knows them, as one that has served the shop all along does
(with 500 events alone, most of the first seconds' events were the first it saw of
their session). The embedded
broker's fetches cost more with every batch it holds (``benchmarks/soak.py`` has the
measurements), and at these rates every event is a batch of its own; a Kafka broker
finds an offset through its log index instead. Fresh topics on one broker did not keep
one run's history out of the next run's figures (the broker's CPU kept growing from run
to run, and the pass-through, measured first, met a broker that held less); a broker per
measurement does. The history a run builds during its own 20 seconds stays in its figures.

The bench's own process settles its garbage collector as a worker does
(``streams.app.settle_gc``) once it has built its events, so that its collections'
pauses do not land in the latencies it measures.

The pass-through agent decodes nothing and recommends nothing: it forwards each
value to an output topic. The ratio between the two is the cost of the recommender.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.app import settle_gc
from streams.embedded import (QUICK_JOIN_ENV, Service, create_topics, exit_on_sigterm, start_broker,
                              start_redis, start_worker)
from streams.interpreter import interpreter
from streams.measure import cpu_s, percentile
from streams.settings import GC_GEN0_THRESHOLD, TOPICS, load_settings
from streams.simulate import catalog, simulate_live_shop, simulate_shoppers


async def _measure(bootstrap: str, prefix: str, out_topic: str, events: list[dict], rate: float | None,
                   id_of, watch: dict[str, int] | None = None, timeout_s: float = 300.0,
                   latency_log: list[dict] | None = None, partitions: int = 4, stamp: bool = False,
                   client_kwargs: dict | None = None) -> dict:
    """Produce ``events``; read ``out_topic`` until one output per event arrived.

    ``stamp``: each event's ``ts`` is the time it is handed to the producer, as a
    storefront stamps a click (else the simulated time it carries).

    ``id_of(output)`` is (the input's event id, the worker's own time for it in ms or
    None): the part of the end-to-end time spent inside the worker's batch. ``watch``
    names processes (name -> pid) whose CPU use meanwhile is reported, in cores (CPU
    seconds per second of the run); the one named ``worker`` also per event.
    ``latency_log`` gets one row per output: when its input was sent (Unix time), its
    latency and that latency's split, to find when in a run the tail happened.
    ``client_kwargs`` go to every aiokafka client (a secured broker's settings)."""
    kw = client_kwargs or {}
    # the reader takes every partition of the output itself (no group to join), from its end
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="latest", group_id=None,
                                enable_auto_commit=False, fetch_max_wait_ms=5, **kw)
    await consumer.start()
    await create_topics(bootstrap, "", partitions, names=[out_topic], **kw)  # as the worker would on its first send
    consumer.assign([TopicPartition(out_topic, p) for p in range(partitions)])
    await consumer.seek_to_end()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1 if rate else 5, **kw)
    await producer.start()
    sent_at: dict[str, tuple[float, float]] = {}  # event id -> (perf_counter, wall clock) at hand-over
    lat: list[float] = []
    inside: list[float] = []
    # the output's Kafka timestamp is the worker's send (its producer stamps the record):
    # the end-to-end time splits into before it (fetch, queue, batch) and after (delivery)
    to_send: list[float] = []
    after_send: list[float] = []
    sent: list[float] = []  # each output's input's hand-over (perf_counter), as ``lat``
    shed = [0]  # lists a late batch made without its shed sources (STREAMREC_SHED_AFTER_MS)
    done = asyncio.Event()

    async def read() -> None:
        while len(lat) < len(events):
            batch = await consumer.getmany(timeout_ms=100)
            now, wall = time.perf_counter(), time.time()
            for msgs in batch.values():
                for m in msgs:
                    event_id, worker_ms = id_of(m.value)
                    t = sent_at.pop(event_id, None)
                    if t is not None:
                        shed[0] += b'"skipped_sources"' in m.value
                        lat.append((now - t[0]) * 1000)
                        sent.append(t[0])
                        to_send.append(m.timestamp - t[1] * 1000)
                        after_send.append(wall * 1000 - m.timestamp)
                        if worker_ms is not None:
                            inside.append(worker_ms)
                        if latency_log is not None:
                            latency_log.append({"sent": round(t[1], 4), "ms": round(lat[-1], 2),
                                                "to_send_ms": round(to_send[-1], 1), "inside_ms": worker_ms})
        done.set()

    reader = asyncio.create_task(read())
    watch = watch or {}
    cpu0 = {name: cpu_s(pid) for name, pid in watch.items()}
    t0 = time.perf_counter()
    for n, e in enumerate(events):
        if rate:
            due = t0 + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        v = e["value"]
        sent_at[v["event_id"]] = (time.perf_counter(), wall := time.time())
        if stamp:
            v = {**v, "ts": round(wall, 3)}
        await producer.send(prefix + e["topic"], orjson.dumps(v), key=v["user_id"].encode())
    await producer.flush()
    try:
        await asyncio.wait_for(done.wait(), timeout_s)
    except asyncio.TimeoutError:
        pass
    elapsed = time.perf_counter() - t0
    used = {name: cpu_s(pid) - cpu0[name] for name, pid in watch.items()}
    cpu = used.get("worker", math.nan)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await producer.stop()
    await consumer.stop()
    return {"events": len(events), "outputs": len(lat), "shed_outputs": shed[0], "elapsed_s": round(elapsed, 3),
            "events_per_s": round(len(lat) / elapsed, 1),
            "p50_ms": round(percentile(lat, 50), 2), "p95_ms": round(percentile(lat, 95), 2),
            "p99_ms": round(percentile(lat, 99), 2), "max_ms": round(max(lat), 2) if lat else None,
            "worker_p50_ms": round(percentile(inside, 50), 2) if inside else None,
            "worker_p99_ms": round(percentile(inside, 99), 2) if inside else None,
            "to_send_p50_ms": round(percentile(to_send, 50), 1) if to_send else None,
            "to_send_p99_ms": round(percentile(to_send, 99), 1) if to_send else None,
            "after_send_p50_ms": round(percentile(after_send, 50), 1) if after_send else None,
            "after_send_p99_ms": round(percentile(after_send, 99), 1) if after_send else None,
            "worker_cpu_ms_per_event": None if math.isnan(cpu) else round(cpu * 1000 / max(len(lat), 1), 3),
            "cores": {name: round(s / elapsed, 2) for name, s in used.items() if not math.isnan(s)},
            "slowest_1pct_seconds": tail_seconds(lat, [t - t0 for t in sent]) if rate else None}


def _shed(row: dict) -> str:
    """How many of a run's lists were shed (a late batch's, without the shed sources), if any."""
    return f", {row['shed_outputs']} of them shed" if row.get("shed_outputs") else ""


def tail_seconds(latencies: Sequence[float], sent_s: Sequence[float]) -> int:
    """In how many whole seconds of a run (by send time) its slowest 1 % were sent: a
    few when a short stretch made the tail (a stall, or the worst of an overload), most
    of the run's seconds when the tail is spread out.

    >>> tail_seconds([5.0] * 198 + [90.0, 95.0], [n / 10 for n in range(200)])
    1
    """
    n = max(1, math.ceil(len(latencies) / 100))
    slowest = sorted(range(len(latencies)), key=latencies.__getitem__)[-n:]
    return len({int(sent_s[i]) for i in slowest})


def _rec_trigger(value: bytes) -> tuple[str, float | None]:
    rec = orjson.loads(value)
    return rec["trigger_event_id"], rec.get("latency_ms")


def _passthrough_id(value: bytes) -> tuple[str, None]:
    return orjson.loads(value)["event_id"], None


async def _seed(bootstrap: str, prefix: str, events: list[dict], client_kwargs: dict | None = None) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **(client_kwargs or {}))
    await p.start()
    for e in events:
        await p.send(prefix + e["topic"], orjson.dumps(e["value"]))
    await p.flush()
    await p.stop()


async def _wait_for_vectors(redis_url: str, prefix: str, item_ids: list[str], timeout_s: float = 600.0) -> None:
    """Wait until the worker has embedded every catalog item (or has no text encoder)."""
    from models.features import open_store
    from models.features.keys import Keys

    keys, store = Keys(prefix), open_store(redis_url)
    start = time.monotonic()
    try:
        while time.monotonic() < start + timeout_s:
            [got] = await store.read([("mget", [keys.item_vector(i) for i in item_ids])])
            embedded = sum(v is not None for v in got)
            if embedded == len(item_ids) or (embedded == 0 and time.monotonic() > start + 60):
                return  # all embedded, or a worker without an encoder (nothing after a minute)
            await asyncio.sleep(1.0)
    finally:
        await store.close()


def run_bench(events: int = 20000, rate: float | Sequence[float] = 500.0, redis_url: str | None = None,
              report: str | None = None, latency_events: int | None = None, slo_ms: float = 100.0,
              catalog_items: int = 5000, latency_log: str | None = None, partitions: int = 4,
              workload: str = "stress", kafka_url: str | None = None) -> dict:
    """Run both workers through both measurements; print a table; return the results.

    ``rate`` may be several paced rates: the latency run is repeated at each (lowest
    first, on fresh events), and the summary names the highest rate whose p99 stayed
    under ``slo_ms`` (``sustained_rate``). Each paced run reads fresh topics through a
    fresh worker process (see the module's docstring). Every run reports the CPU the
    worker, the broker, the embedded Redis and this process used meanwhile, in cores:
    what the machine had left. ``latency_log`` (a file) gets every paced output's
    latency as JSON lines (worker, rate, send time, latency and its split). ``workload``
    is what the paced runs send (see the module's docstring): ``stress`` or ``live``.
    ``kafka_url`` (``kafka://host:port[;host:port]``): measure on that broker instead
    of embedded ones, with the ``STREAMREC_KAFKA_*`` security settings; each
    measurement's topics are created up front and deleted after it."""
    exit_on_sigterm()
    rates = sorted({float(r) for r in ([rate] if isinstance(rate, (int, float)) else rate)})
    n_lat = [latency_events or int(min(events, r * 20)) for r in rates]
    if workload == "live":  # a live shop at each rate, after the shop's minute before
        # the throughput run drains the crowd of the highest rate
        thr_lead_in, warm, thr = _live_shop(THROUGHPUT_WARM, events, max(rates), seed=41)
        lat = [_live_shop(LATENCY_WARM, k, r, seed=42 + n) for n, (r, k) in enumerate(zip(rates, n_lat))]
    elif workload == "stress":
        stream = iter(simulate_shoppers(THROUGHPUT_WARM + events + sum(n_lat) + LATENCY_WARM * len(rates), seed=42))

        def take(n: int) -> list[dict]:
            return list(itertools.islice(stream, n))

        thr_lead_in, warm, thr = [], take(THROUGHPUT_WARM), take(events)
        lat = [([], take(LATENCY_WARM), take(n)) for n in n_lat]
    else:
        raise ValueError(f"workload: {workload!r} is neither 'stress' nor 'live'")
    stamp = workload == "live"  # a live shop's events carry the time they are sent
    kw = load_settings(kafka_url=kafka_url).kafka_kwargs() if kafka_url else {}
    logdir = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    redis = None if redis_url else start_redis(log_dir=logdir)
    redis_url = redis_url or f"redis://127.0.0.1:{redis.port}/0"
    # the events built above live to the end: keep the collector's walks over them (tens
    # of ms with this process's clock stopped) out of the latencies it measures
    settle_gc(GC_GEN0_THRESHOLD)
    python = interpreter()
    print(f"Python {python['version']} ({python['executable']}; libpython {python['libpython']}, "
          f"PGO {python['optimized']})", flush=True)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": python}, "events": events, "rates": rates,
                     "slo_ms": slo_ms, "partitions": partitions, "workload": workload,
                     "broker": "external" if kafka_url else "embedded, one per measurement"}
    log_rows: list[dict] = []
    try:
        for name, out_topic, id_of in (("passthrough", "passthrough-out", _passthrough_id),
                                       ("streamrec", "recommendations", _rec_trigger)):
            keys = f"b{uuid.uuid4().hex[:6]}-"
            start = start_passthrough if name == "passthrough" else start_worker

            def env(bootstrap: str, topics: str) -> dict:
                return {"STREAMREC_KAFKA_URL": "kafka://" + bootstrap.replace(",", ";"), "STREAMREC_REDIS_URL": redis_url,
                        "STREAMREC_TOPIC_PREFIX": topics, "STREAMREC_KEY_PREFIX": keys,
                        "STREAMREC_APP_ID": f"bench-{topics}", "STREAMREC_WEB_PORT": "0",
                        "STREAMREC_LLM_BASE_URL": "template", "STREAMREC_COPY_IN_WORKER": "false",
                        "STREAMREC_PARTITIONS": str(partitions), **QUICK_JOIN_ENV}

            def measure(bootstrap: str, topics: str, part: list[dict], paced: float | None,
                        watch: dict[str, int] | None = None, stamp: bool = False) -> dict:
                rows: list[dict] | None = [] if latency_log and paced else None
                res = asyncio.run(_measure(bootstrap, topics, topics + out_topic, part, paced, id_of, watch,
                                           latency_log=rows, partitions=partitions, stamp=stamp,
                                           client_kwargs=kw))
                log_rows.extend({"worker": name, "rate": paced, **row} for row in rows or ())
                return res

            def watched(worker: Service, broker_pid: int | None) -> dict[str, int]:
                return {"worker": worker.proc.pid, **({"broker": broker_pid} if broker_pid else {}),
                        "bench": os.getpid(), **({"redis": redis.proc.pid} if redis else {})}

            # every measurement on a broker of its own (see the module's docstring)
            with _broker_for(logdir, kafka_url, keys, partitions, kw) as (bootstrap, broker):
                worker = start(env(bootstrap, keys), logdir / f"{name}.log")
                try:
                    items = catalog(catalog_items)
                    asyncio.run(_seed(bootstrap, keys, items, kw))
                    if name == "streamrec":  # measure the recommender, not the catalog's first embedding
                        asyncio.run(_wait_for_vectors(redis_url, keys, [e["value"]["item_id"] for e in items]))
                        if thr_lead_in:  # the store as a shop's running worker meets it
                            asyncio.run(_apply_lead_in(redis_url, keys, thr_lead_in))
                    measure(bootstrap, keys, warm, None, stamp=stamp)
                    results[name] = {"throughput": measure(bootstrap, keys, thr, None, watched(worker, broker),
                                                           stamp=stamp), "latency": []}
                finally:
                    worker.stop()
            for r, (lead_in, warm_up, part) in zip(rates, lat):
                # a fresh broker, the same store: a restarted worker on the state built so far
                topics = f"{keys}r{r:.0f}-"
                if lead_in and name == "streamrec":
                    asyncio.run(_apply_lead_in(redis_url, keys, lead_in))
                with _broker_for(logdir, kafka_url, topics, partitions, kw) as (bootstrap, broker):
                    worker = start(env(bootstrap, topics), logdir / f"{name}-{r:.0f}.log")
                    try:
                        measure(bootstrap, topics, warm_up, None, stamp=stamp)
                        results[name]["latency"].append(
                            {"rate": r, **measure(bootstrap, topics, part, r, watched(worker, broker), stamp=stamp)})
                    finally:
                        worker.stop()
            res = results[name]
            res["sustained_rate"] = sustained_rate(res["latency"], slo_ms)
            res["batch_splits"] = sum(_batch_splits(log) for log in logdir.glob(f"{name}*.log"))
            if res["batch_splits"]:
                print(f"WARNING: {name} redid {res['batch_splits']} batches one event at a time "
                      f"(a batch raised; see the {name}*.log files in {logdir}): its figures are not the normal path's",
                      flush=True)
            print(f"{name:12s} throughput {res['throughput']['events_per_s']:>9,.0f} events/s   "
                  f"worker CPU {res['throughput']['worker_cpu_ms_per_event'] or math.nan:.2f} ms/event"
                  f"{_shed(res['throughput'])}", flush=True)
            print(f"{'':12s}   {_cores(res['throughput']['cores'])}", flush=True)
            for row in res["latency"]:
                inside = (f"  inside the worker p50 {row['worker_p50_ms']:.1f} ms  p99 {row['worker_p99_ms']:.1f} ms"
                          if row["worker_p50_ms"] is not None else "")
                print(f"{'':12s} at {row['rate']:>5.0f}/s: p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  "
                      f"({row['outputs']}/{row['events']} answered{_shed(row)}){inside}", flush=True)
                if row["to_send_p50_ms"] is not None:
                    print(f"{'':12s}   to the worker's send p50 {row['to_send_p50_ms']:.1f} ms  p99 "
                          f"{row['to_send_p99_ms']:.1f} ms; from it to the reader p50 {row['after_send_p50_ms']:.1f} ms"
                          f"  p99 {row['after_send_p99_ms']:.1f} ms", flush=True)
                print(f"{'':12s}   {_cores(row['cores'])}; the slowest 1 % sent in "
                      f"{row['slowest_1pct_seconds']} of its {math.ceil(row['elapsed_s'])} seconds", flush=True)
            best = res["sustained_rate"]
            print(f"{'':12s} p99 under {slo_ms:.0f} ms up to: "
                  + (f"{best:.0f} events/s of those measured" if best else "none of the rates measured"), flush=True)
    finally:
        if redis:
            redis.stop()
    sr, pt = results["streamrec"], results["passthrough"]
    results["ratio_to_passthrough"] = round(sr["throughput"]["events_per_s"] / pt["throughput"]["events_per_s"], 3)
    print(f"streamrec / pass-through throughput: {results['ratio_to_passthrough']:.2f}")
    results["passthrough_missed_from"] = first_missed_rate(pt["latency"], slo_ms)
    if results["passthrough_missed_from"] is not None:
        print(f"the bare pass-through itself missed p99 under {slo_ms:.0f} ms from "
              f"{results['passthrough_missed_from']:.0f} events/s: from there this machine (its broker, the "
              "bench, its cores) bounds the tail, whatever the worker does", flush=True)
    if report:
        Path(report).write_text(json.dumps(results, indent=2))
    if latency_log:
        Path(latency_log).write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in log_rows))
    return results


def _cores(cores: dict[str, float], cpus: int | None = None) -> str:
    """The CPU each watched process used during a run, in cores.

    >>> _cores({"worker": 0.756, "broker": 0.4, "bench": 0.2}, cpus=2)
    'CPU in cores: worker 0.76, broker 0.40, bench 0.20 (of 2 on this machine)'
    """
    used = ", ".join(f"{name} {c:.2f}" for name, c in cores.items())
    return f"CPU in cores: {used} (of {cpus or os.cpu_count()} on this machine)"


@contextlib.contextmanager
def _fresh_broker(logdir: Path) -> Iterator[Service]:
    """An embedded broker for one measurement (``.port``, ``.proc``)."""
    broker = start_broker(log_dir=logdir)
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def _broker_for(logdir: Path, kafka_url: str | None, prefix: str, partitions: int,
                client_kwargs: dict) -> Iterator[tuple[str, int | None]]:
    """(bootstrap, the broker's pid or None) for one measurement: an embedded broker of
    its own, or, given ``kafka_url``, that broker, with every topic of the measurement
    (``prefix``) created up front, as a shop's Kafka without automatic topic creation
    needs, and deleted after it."""
    if kafka_url is None:
        with _fresh_broker(logdir) as broker:
            yield f"127.0.0.1:{broker.port}", broker.proc.pid
        return
    bootstrap = ",".join(load_settings(kafka_url=kafka_url).kafka_bootstrap)
    names = [*TOPICS, "passthrough-out"]
    asyncio.run(create_topics(bootstrap, prefix, partitions, names=names, **client_kwargs))
    try:
        yield bootstrap, None
    finally:
        asyncio.run(_delete_topics(bootstrap, prefix, client_kwargs))


async def _delete_topics(bootstrap: str, prefix: str, client_kwargs: dict) -> None:
    """Delete every topic whose name starts with ``prefix`` (the bench's own, on a broker
    it did not start); a broker that refuses gets a warning naming them."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_kwargs)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            try:
                await admin.delete_topics(mine)
            except Exception as e:  # noqa: BLE001 - the measurement stands; say what is left behind
                print(f"WARNING: could not delete the bench's topics {', '.join(sorted(mine))}: {e}", flush=True)
    finally:
        await admin.close()


#: Events each paced run's fresh worker gets unpaced before its clock starts.
LATENCY_WARM = 500
#: unpaced events before the throughput run
THROUGHPUT_WARM = 2000
#: A live shop's seconds before the measured ones, applied to the store before each paced
#: run's worker starts: the sessions in flight when the clock starts began in them (they
#: last 48 s on average), and a worker that has served the shop all along knows them.
LIVE_LEAD_IN_S = 60.0
LIVE_START_TS = 1_700_000_000.0  # the live shop's events from here on are sent; earlier ones are the lead-in


def _live_shop(n_warm: int, n: int, rate: float, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """A live shop at ``rate``: its lead-in (the minute before ``LIVE_START_TS``), then
    ``n_warm`` unpaced warm-up events, then ``n`` measured ones."""
    shop = list(simulate_live_shop(n_warm + n, rate=rate, seed=seed, start_ts=LIVE_START_TS,
                                   lead_in_s=LIVE_LEAD_IN_S))
    lead = sum(e["value"]["ts"] < LIVE_START_TS for e in shop)
    return shop[:lead], shop[lead:lead + n_warm], shop[lead + n_warm:]


async def _apply_lead_in(redis_url: str, key_prefix: str, events: list[dict]) -> None:
    """The live shop's lead-in, applied to the store through the processing path
    (``Runtime.handle``, content on, as a worker runs it; outputs dropped), stamped as
    the time just gone. Written straight to the store, not sent through the broker: an
    embedded broker holding those events slows every fetch of the run after (sent
    through it, 30,000 events at 500 events/s took the pass-through's p99 to 253 ms)."""
    from models.events import parse_value
    from streams.app import Runtime
    from streams.settings import Settings

    async def drop(user_id: str, payload: bytes) -> None:
        return None

    with _quiet("models.content"):  # its start-up lines are a worker's, not the bench table's
        rt = Runtime(Settings(redis_url=redis_url, key_prefix=key_prefix, copy_in_worker=False, _env_file=None))
        rt.send_recommendation = drop  # type: ignore[method-assign]
        try:
            if rt.catalog is not None:  # the catalog's vectors, as a starting worker reads them
                await rt.catalog.start()
                await rt.catalog.rebuild()
            shift = time.time() - LIVE_START_TS
            parsed = [parse_value(e["topic"], {**e["value"], "ts": round(e["value"]["ts"] + shift, 3)},
                                  now=time.time()) for e in events]
            for i in range(0, len(parsed), 100):
                await rt.handle(parsed[i:i + 100])
        finally:
            if rt.catalog is not None:
                await rt.catalog.close()
            await rt.store.close()


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """``logger``'s INFO lines (and its children's) left out meanwhile."""
    log_ = logging.getLogger(logger)
    level = log_.level
    log_.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log_.setLevel(level)


def sustained_rate(latency: Sequence[dict], slo_ms: float) -> float | None:
    """The highest paced rate up to which every run answered all its events with p99
    under ``slo_ms`` (rates above the first miss do not count); None if the lowest missed.

    >>> runs = [{"rate": 100, "p99_ms": 40, "events": 9, "outputs": 9},
    ...         {"rate": 300, "p99_ms": 90, "events": 9, "outputs": 9},
    ...         {"rate": 500, "p99_ms": 900, "events": 9, "outputs": 9}]
    >>> sustained_rate(runs, 100)
    300
    >>> sustained_rate(runs, 10) is None
    True
    """
    best = None
    for row in sorted(latency, key=lambda r: r["rate"]):
        if not _met(row, slo_ms):
            break
        best = row["rate"]
    return best


def _met(run: dict, slo_ms: float) -> bool:
    """Whether a paced run answered every event with p99 under ``slo_ms``."""
    return run["outputs"] >= run["events"] and run["p99_ms"] < slo_ms


def first_missed_rate(latency: Sequence[dict], slo_ms: float) -> float | None:
    """The lowest paced rate whose run missed ``slo_ms`` at p99 or left events unanswered
    (None if every run met it). For the bare pass-through, that is where the machine
    (broker, bench, cores) bounds the tail, whatever a worker does.

    >>> runs = [{"rate": 100, "p99_ms": 40, "events": 9, "outputs": 9},
    ...         {"rate": 300, "p99_ms": 120, "events": 9, "outputs": 9}]
    >>> first_missed_rate(runs, 100), first_missed_rate(runs, 200)
    (300, None)
    """
    return next((row["rate"] for row in sorted(latency, key=lambda r: r["rate"]) if not _met(row, slo_ms)), None)


def _batch_splits(log: Path) -> int:
    """Batches the worker redid one event at a time, by its log."""
    from streams.app import BATCH_SPLIT_MARK

    return log.read_text(errors="replace").count(BATCH_SPLIT_MARK) if log.exists() else 0


def start_passthrough(env: dict, log: Path):
    """Start the bare pass-through agent (``passthrough_main``) with ``env``; returns once it is ready."""
    from streams.embedded import _spawn, Service

    full = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    proc = _spawn([sys.executable, "-m", "streams.bench", "passthrough"], "passthrough", log, full)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.exists() and b"passthrough ready" in log.read_bytes():
            return Service("passthrough", 0, proc, None, log)
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
        time.sleep(0.2)
    raise TimeoutError("pass-through worker not ready")


def passthrough_main() -> None:
    """A bare Faust agent with the worker's batching and sends: forward each value, nothing else."""
    from streams.app import StreamrecApp, faust_worker, use_event_loop
    from streams.batching import take_batches
    from streams.settings import load_settings

    s = load_settings()
    use_event_loop(s.event_loop)  # as the worker does
    app = StreamrecApp(f"{s.app_id}-pt", broker=s.kafka_url, store="memory://", key_serializer="raw",
                    value_serializer="raw", topic_partitions=s.partitions, web_enabled=False,
                    consumer_auto_offset_reset="earliest", broker_commit_interval=1.0, producer_acks=-1,
                    broker_session_timeout=s.kafka_session_timeout_s,
                    broker_heartbeat_interval=min(3.0, s.kafka_session_timeout_s / 3))
    app.use_consumer_settings(s)
    inputs = app.topic(s.topic("clicks"), s.topic("carts"), key_type=bytes, value_type=bytes)
    out = app.topic(s.topic("passthrough-out"), key_type=bytes, value_type=bytes, partitions=s.partitions)

    out_name = out.get_topic_name()

    @app.agent(inputs, concurrency=1)
    async def forward(stream):  # noqa: ANN001
        async for batch in take_batches(stream, s.batch_size, within=s.batch_window_s):
            for ev in batch:  # straight to the producer, as the worker sends (streams.app)
                await app.producer.send(out_name, ev.message.key, ev.message.value, None, None, None)

    @app.task
    async def ready() -> None:
        settle_gc(s.gc_gen0_threshold)  # as the worker does
        print("passthrough ready", flush=True)

    faust_worker(app, "warning").execute_from_commandline()


if __name__ == "__main__" and sys.argv[1:2] == ["passthrough"]:
    sys.argv = sys.argv[:1]
    passthrough_main()
