"""The Faust worker: consume the input topics, run the one processing path, emit.

``create_app(settings)`` builds a ``faust.App`` with one agent over every input topic
(``clicks``, ``carts``, ``items``, ``reviews``, ``feedback``, ``forget``; message key =
``user_id``). The agent takes events in batches (``streams.batching.take_batches``: a
batch waits the batch window from its first event, so what queued behind a long batch
starts the next one at once), decodes and
validates each one (bad ones go to ``dead-letter`` with topic, partition, offset and
reason), hands the good ones to ``Recommender.handle`` and sends each
recommendation to ``recommendations``; the copy pool turns it into an event on
``recommendations-enriched``. With ``STREAMREC_SHED_AFTER_MS``, a batch whose oldest
record waited longer than that (by its Kafka timestamp) is handled with ``shed=True``:
its lists leave out the costly sources (``STREAMREC_SHED_SOURCES``) and say so, so a
worker that fell behind catches up sooner.

Delivery is at-least-once with idempotent effects: Faust acknowledges an event once
the agent moves past it, and ``handle`` ignores an ``event_id`` it has applied
before. While the feature store is unreachable the agent retries with backoff
instead of moving on, so the stream pauses rather than loses events.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import math
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import faust
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from models.events import INPUT_TOPICS, Event, Item, Rejected, parse
from models.features import StoreError
from models.features.cache import ItemSideCache, ShopClock
from models.features.keys import Keys
from models.features.store import FeatureStore, StoreDataError
from models.pipeline import Recommender, recommendation_json
from models.ranking import Ranker, SnapshotError, labels_json, parse_labels
from streams.batching import oldest_record_age, take_batches
from streams.codecs import dead_letter_record, user_key
from streams.interpreter import slow_build_warning
from streams.settings import Settings

log = logging.getLogger("streamrec.worker")
#: Logged when a batch raised as a whole and is redone one event at a time (benchmarks
#: look for it: a split batch still answers, but at many times the cost).
BATCH_SPLIT_MARK = "retrying one by one"
#: An event loop late by this much is logged (``Runtime.observe_loop_lag``).
LOOP_HELD_WARN_S = 0.25


class Metrics:
    """Prometheus metrics of one worker (its own registry, exported on /metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("streamrec_events_total", "Input events by topic and outcome",
                              ["topic", "outcome"], registry=r)
        self.dead_letters = Counter("streamrec_dead_letters_total", "Inputs sent to dead-letter",
                                    ["topic"], registry=r)
        self.recommendations = Counter("streamrec_recommendations_total", "Recommendations emitted", registry=r)
        self.duplicates = Counter("streamrec_duplicates_total", "Redelivered events ignored", registry=r)
        self.shed_batches = Counter("streamrec_shed_batches_total", "Batches whose lists left out the shed "
                                    "sources because their oldest event was late (STREAMREC_SHED_AFTER_MS)",
                                    registry=r)
        self.send_errors = Counter("streamrec_send_errors_total", "Outputs the producer could not deliver",
                                   ["topic"], registry=r)
        self.store_errors = Counter("streamrec_store_errors_total", "Feature-store failures (retried)", registry=r)
        self.internal_errors = Counter("streamrec_internal_errors_total", "Events that raised in processing",
                                       registry=r)
        self.batch_splits = Counter("streamrec_batch_splits_total",
                                    "Batches that raised as a whole and were redone one event at a time",
                                    registry=r)
        self.batch_seconds = Histogram("streamrec_batch_seconds", "Time to process one batch", registry=r,
                                       buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.rec_latency = Histogram("streamrec_recommendation_latency_seconds",
                                     "From batch start to recommendation built", registry=r,
                                     buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))
        self.batch_size = Histogram("streamrec_batch_events", "Events per batch", registry=r,
                                    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000))
        self.batch_wait = Histogram("streamrec_batch_record_age_seconds",
                                    "Age of each batch's oldest record as the batch starts (the worker's "
                                    "clock minus its Kafka timestamp): how far behind the worker runs",
                                    registry=r, buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300))
        self.store_up = Gauge("streamrec_store_up", "1 when the feature store answers", registry=r)
        self.ranker_labels = Counter("streamrec_ranker_labels_total",
                                     "Labels the ranker learned: from this worker's shoppers, or sent by the others",
                                     ["origin"], registry=r)
        self.ranker_updates = Gauge("streamrec_ranker_updates", "Labels the ranker has learned in all "
                                    "(it ranks once it has learned its warm-up's worth and won its trial)",
                                    registry=r)
        self.ranker_trial = Gauge("streamrec_ranker_trial_model_share",
                                  "The ranker's trial: the share of the latest clicks on interleaved lists "
                                  "that went to items the model placed (above 0.5: shoppers prefer its order)",
                                  registry=r)
        self.ranker_trial_clicks = Gauge("streamrec_ranker_trial_clicks",
                                         "Clicks on interleaved lists the trial's verdict rests on", registry=r)
        self.ranker_model_ranks = Gauge("streamrec_ranker_model_ranks",
                                        "1 when the model ranks, 0 when the prior blend does", registry=r)
        self.loop_lag = Histogram("streamrec_event_loop_lag_seconds",
                                  "How late the event loop ran a 100 ms timer: every list in the worker "
                                  "waited as long (a long batch, a garbage collection, a starved CPU)",
                                  registry=r, buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))

    def export_ranker(self, ranker: Ranker) -> None:
        """Set the ranker's gauges: labels learned, the trial's figures, what ranks."""
        self.ranker_updates.set(ranker.updates)
        share = ranker.model_share()
        self.ranker_trial.set(share if share is not None else math.nan)  # no click counted yet: no share
        self.ranker_trial_clicks.set(len(ranker.trials))
        self.ranker_model_ranks.set(1 if ranker.active else 0)


async def watch_loop_lag(observe: Callable[[float], Any], interval_s: float = 0.1,
                         clock: Callable[[], float] = time.perf_counter) -> None:
    """Forever: sleep ``interval_s`` and ``observe`` how much later than that the loop
    woke up, in seconds. Whatever holds the event loop (a batch's synchronous work, a
    garbage collection, a CPU taken by other processes) delays every list waiting in it
    by as much; the worker exports it as ``streamrec_event_loop_lag_seconds``.

    >>> lags = []
    >>> async def blocked_for_50_ms():
    ...     watch = asyncio.ensure_future(watch_loop_lag(lags.append, interval_s=0.01))
    ...     await asyncio.sleep(0.02)
    ...     time.sleep(0.05)  # holds the loop, as a long batch would
    ...     await asyncio.sleep(0.03)
    ...     watch.cancel()
    >>> asyncio.run(blocked_for_50_ms())
    >>> max(lags) >= 0.035
    True
    """
    while True:
        start = clock()
        await asyncio.sleep(interval_s)
        observe(max(0.0, clock() - start - interval_s))


#: How often a worker sends the labels its ranker learned to the other workers.
LABELS_EVERY_S = 1.0


class Runtime:
    """Everything one worker process holds: store, recommender, copy pool, metrics.

    ``send`` functions are injected so the same runtime serves Faust and tests.
    """

    def __init__(self, settings: Settings, store: FeatureStore | None = None,
                 recommender: Recommender | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.store = store or settings.open_store()
        self.keys = Keys(settings.key_prefix)
        self.catalog: Any = None
        self.catalog_feed: asyncio.Future | None = None
        self.labels_feed: asyncio.Future | None = None
        #: the item-side cache's clock: the shop's time, moved on by the recommender's batches
        self.shop_clock = ShopClock()
        if recommender is None:
            recommender = self._build_recommender(settings)
        self.recommender = recommender
        self.metrics = metrics or Metrics()
        self.copy_pool: Any = None
        self.listeners: list[Any] = []  # callables(kind, payload_dict) for live push
        self.started_at = time.time()
        #: this process's id on ``ranker-labels`` (random: two workers never share one)
        self.label_origin = uuid.uuid4().hex
        #: messages this process sent to ``ranker-labels``; each carries its number
        self.labels_sent = 0
        #: per partition of ``ranker-labels``: the offset after the last message read
        self.labels_read: dict[int, int] = {}
        #: where the restored snapshot's learning stood in ``ranker-labels`` (None: none)
        self.labels_resume: dict[str, Any] | None = None

    def _build_recommender(self, settings: Settings) -> Recommender:
        """The recommender of the tuned profile (the same settings ``streamrec replay``
        scores), with the content source when a text encoder is installed."""
        from models import tuned
        from models.content import content_stack

        def content(store: FeatureStore, keys: Keys) -> Any:
            stack = content_stack(store, keys, settings.model_path) if settings.content else None
            if stack is None:
                return None
            source, self.catalog = stack
            return source

        # the sources read hot item-side aggregates through a short-lived cache (remote stores)
        source_store: FeatureStore = self.store
        if settings.item_cache_s > 0 and self.store.kind != "memory":
            source_store = ItemSideCache(self.store, self.keys, ttl_s=settings.item_cache_s, clock=self.shop_clock)
        log.info("recommender settings: profile %r of %s", settings.profile,
                 settings.profile_file or "models/tuned.toml")
        cfg, sources, prior, warmup = tuned.build(settings.tuned_profile(), source_store, self.keys, k=settings.k,
                                                  content=content)
        settings.apply_business_rules(cfg)
        cfg.session_gap_s, cfg.dedupe_ttl_s = settings.session_gap_s, settings.dedupe_ttl_s
        cfg.rec_ttl_s = settings.rec_ttl_s
        cfg.coalesce_per_user = settings.coalesce_per_user
        cfg.shed_sources = tuple(n for n in settings.shed_sources.split(",") if n)
        ranker = Ranker([src.name for src in sources], prior=prior, warmup=warmup,
                        trial_share=settings.ranker_trial_share)
        return Recommender(self.store, self.keys, cfg, sources=sources, ranker=ranker, shop_clock=self.shop_clock)

    # -- the per-batch path -----------------------------------------------------------------
    def decode(self, topic: str, partition: int | None, offset: int | None, key: bytes | None,
               value: bytes | None) -> Event | dict:
        """An event, or the dead-letter record saying why the input cannot be used."""
        base = topic[len(self.settings.topic_prefix):] if topic.startswith(self.settings.topic_prefix) else topic
        result = parse(base, value)
        if isinstance(result, Rejected):
            self.metrics.events.labels(base, "rejected").inc()
            self.metrics.dead_letters.labels(base).inc()
            return dead_letter_record(topic, partition, offset, key, value, result.reason)
        self.metrics.events.labels(base, "accepted").inc()
        return result

    def observe_loop_lag(self, lag_s: float) -> None:
        """Export the event loop's lag; say in the log when it held every list for
        ``LOOP_HELD_WARN_S`` or more (what held it shows beside it in the log)."""
        self.metrics.loop_lag.observe(lag_s)
        if lag_s >= LOOP_HELD_WARN_S:
            log.warning("event loop held for %.0f ms: every list waiting in this worker waited as long "
                        "(a long batch, a garbage collection, a starved CPU)", lag_s * 1000)

    async def handle(self, events: Sequence[Event], shed: bool = False) -> list[tuple[Event, Any]]:
        """Run the recommender over ``events``; returns (event, error) pairs for the ones
        that failed for a reason other than an unreachable store (a bug, a damaged key:
        the batch is redone one event at a time and only those fail). With ``shed`` (the
        batch is late) the lists leave out the shed sources.

        Store failures are retried with capped backoff until the store answers again.
        """
        failures: list[tuple[Event, Any]] = []
        if not events:
            return failures
        if shed:
            self.metrics.shed_batches.inc()
        with self.metrics.batch_seconds.time():
            try:
                outcome = await self._with_store_retry(events, shed)
            except StoreError:
                raise
            except StoreDataError as e:  # damaged keys: the events that touch them fail alone
                log.warning("batch of %d events met damaged data in the feature store (%s); " + BATCH_SPLIT_MARK,
                            len(events), e)
                self.metrics.batch_splits.inc()
                outcome = None
            except Exception:  # a bug or a poison event: isolate it, keep the others
                log.exception("batch of %d events failed; " + BATCH_SPLIT_MARK, len(events))
                self.metrics.batch_splits.inc()
                outcome = None
            if outcome is None:
                for e in events:
                    try:
                        one = await self._with_store_retry([e], shed)
                    except Exception as err:  # noqa: BLE001 - reported on dead-letter
                        self.metrics.internal_errors.inc()
                        failures.append((e, err))
                    else:
                        await self._emit(one)
                return failures
        self.metrics.batch_size.observe(len(events))
        await self._emit(outcome)
        return failures

    async def _with_store_retry(self, events: Sequence[Event], shed: bool = False):
        delay = 0.05
        while True:
            try:
                outcome = await self.recommender.handle(events, shed=shed)
                self.metrics.store_up.set(1)
                return outcome
            except StoreError as e:
                self.metrics.store_errors.inc()
                self.metrics.store_up.set(0)
                log.warning("feature store unavailable (%s); retrying in %.2fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _emit(self, outcome: Any) -> None:
        if outcome.duplicates:
            self.metrics.duplicates.inc(outcome.duplicates)
        for rec in outcome.recommendations:
            self.metrics.recommendations.inc()
            self.metrics.rec_latency.observe(rec.latency_ms / 1000)
            payload = recommendation_json(rec)
            await self.send_recommendation(rec.user_id, payload)
            if self.copy_pool is not None:
                self.copy_pool.submit(orjson.loads(payload))
            for listener in self.listeners:
                listener("recommendation", payload)

    # -- outputs (bound to Faust topics by create_app; replaced in tests) --------------------
    async def send_recommendation(self, user_id: str, payload: bytes) -> None:
        raise NotImplementedError

    async def send_dead_letter(self, record: dict) -> None:
        raise NotImplementedError

    async def send_enriched(self, enriched: dict) -> None:
        """Produce an enriched recommendation and keep it as the user's latest."""
        raise NotImplementedError

    async def send_labels(self, message: bytes) -> None:
        """Produce the labels this worker's ranker learned, for the other workers."""
        raise NotImplementedError

    def _labels_message(self) -> tuple[bytes, int] | None:
        """The labels the ranker learned since the last message, as the next message."""
        labels, trials = self.recommender.take_labels()
        if not labels:
            return None
        self.labels_sent += 1
        return labels_json(self.label_origin, labels, self.labels_sent, trials), len(labels)

    async def _send_labels_message(self, made: tuple[bytes, int] | None) -> None:
        if made is not None:
            self.metrics.ranker_labels.labels("here").inc(made[1])
            self.metrics.export_ranker(self.recommender.ranker)
            await self.send_labels(made[0])

    async def share_labels(self) -> int:
        """Send the labels the ranker learned since the last call, in one message (a
        timer calls this every ``LABELS_EVERY_S``: labels need no haste, and one message
        a second costs the broker and the other workers less than one per batch)."""
        made = self._labels_message()
        await self._send_labels_message(made)
        return made[1] if made else 0

    async def snapshot(self) -> None:
        """Snapshot the ranker with where its learning stands in ``ranker-labels``: the
        offsets read there, and this process's messages it holds. The labels it learned
        but has not sent yet go out numbered into the snapshot, taken together with
        its state (nothing awaited between), so that a worker restored from it learns
        every other label once and none of these twice."""
        shares = self.recommender.shares_labels
        made = self._labels_message() if shares else None
        seen = ({"origin": self.label_origin, "sent": self.labels_sent,
                 "positions": {str(p): o for p, o in self.labels_read.items()}} if shares else None)
        try:
            await self.recommender.snapshot(seen)
        finally:
            await self._send_labels_message(made)

    def learn_peer_labels(self, blob: bytes) -> int:
        """Learn the labels of one ``ranker-labels`` message another worker sent; returns
        how many (0 for this worker's own, which it learned already, and for those the
        restored snapshot holds). Raises ValueError for a message that is not one."""
        origin, seq, labels, trials = parse_labels(blob)
        if origin == self.label_origin:
            return 0
        resume = self.labels_resume
        if resume is not None and origin == resume["origin"] and seq <= resume["sent"]:
            return 0
        if self.recommender.learn_labels(labels, trials):
            log.warning("labels from another worker name features this ranker does not have: left out")
        self.metrics.ranker_labels.labels("peers").inc(len(labels))
        self.metrics.export_ranker(self.recommender.ranker)
        return len(labels)


def _faust_credentials(settings: Settings) -> Any:
    proto = settings.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    ssl_context = None
    if proto in ("SSL", "SASL_SSL"):
        ssl_context = settings.kafka_kwargs()["ssl_context"]
        if proto == "SSL":
            return faust.SSLCredentials(ssl_context)
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
    return faust.SASLCredentials(username=settings.kafka_sasl_username, password=password,
                                 mechanism=settings.kafka_sasl_mechanism, ssl_context=ssl_context)


def _low_latency_transport(fetch_max_wait_ms: int, fetch_min_bytes: int = 1, in_loop: bool = True) -> type:
    """Faust's aiokafka transport with a configurable fetch wait and fetch size.

    Faust hard-codes ``fetch_max_wait_ms=1500`` for worker consumers; brokers that hold a
    fetch until that deadline (Tansu does) then add up to 1.5 s to every event's latency.
    ``fetch_min_bytes`` above 1 lets the broker hold a fetch until that much data is there
    (or the wait is over): fewer, larger fetches at some latency.

    ``in_loop``: the aiokafka consumer runs in the app's own event loop instead of a
    thread of its own (Faust's way), so a fetch is handed over without crossing threads:
    no second event loop to wake, no lock to pass per ``getmany``, and the consumer's
    work no longer contends with the agents' for the interpreter lock.
    """
    from faust.transport.drivers import aiokafka as driver
    from mode import Service
    from mode.utils.futures import maybe_async

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            consumer._fetch_min_bytes = fetch_min_bytes
            return consumer

    class InLoopConsumerThread(ConsumerThread):
        """Faust's consumer thread, run as a plain service in the app's event loop."""

        def __init__(self, consumer: Any, *, loop: Any, **kwargs: Any) -> None:
            super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)

        async def start(self) -> None:
            self._thread_started.set()
            await Service.start(self)

        async def call_thread(self, fun: Any, *args: Any, **kwargs: Any) -> Any:
            return await maybe_async(fun(*args, **kwargs))

        async def cast_thread(self, fun: Any, *args: Any, **kwargs: Any) -> None:
            self.add_future(maybe_async(fun(*args, **kwargs)))

        async def on_thread_started(self) -> None:  # no method queue to start
            pass

        async def stop(self) -> None:
            if self._started.is_set() and not self._stopped.is_set():
                self._stopped.set()
                await self.on_stop()
                await self.on_thread_stop()  # stops the aiokafka consumer
                await self._default_stop_children()
                await self._default_stop_futures()
                await self._default_stop_exit_stacks()
                self._shutdown.set()
                await self.on_shutdown()

    class Consumer(driver.Consumer):
        def _new_consumer_thread(self) -> Any:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class InLoopConsumer(driver.Consumer):
        def _new_consumer_thread(self) -> Any:
            return InLoopConsumerThread(self, loop=self.loop, beacon=self.beacon)

        # with the consumer in this loop, a rebalance's callbacks run here directly
        async def threadsafe_partitions_revoked(self, receiver_loop: Any, revoked: Any) -> None:
            await self.on_partitions_revoked(revoked)

        async def threadsafe_partitions_assigned(self, receiver_loop: Any, assigned: Any,
                                                 generation_id: int = 0) -> None:
            await self.on_partitions_assigned(assigned, generation_id)

    class Transport(driver.Transport):
        pass

    Transport.Consumer = InLoopConsumer if in_loop else Consumer
    return Transport


class StreamrecApp(faust.App):
    """``faust.App`` with the low-latency consumer transport.

    Faust's data directory stays empty (tables live in memory; a worker's state is in
    the feature store), so it goes under the system's temporary folder, not into the
    directory the worker was started from.
    """

    fetch_max_wait_ms = 100
    fetch_min_bytes = 1
    consumer_in_loop = True

    def __init__(self, id: str, **options: Any) -> None:  # noqa: A002 - faust's name
        options.setdefault("datadir", str(Path(tempfile.gettempdir()) / f"faust-{id}-data"))
        super().__init__(id, **options)

    def use_consumer_settings(self, settings: Settings) -> None:
        """Take the Kafka consumer's fetch wait, fetch size and event loop from ``settings``."""
        self.fetch_max_wait_ms = settings.kafka_fetch_max_wait_ms
        self.fetch_min_bytes = settings.kafka_fetch_min_bytes
        self.consumer_in_loop = settings.kafka_consumer_in_loop

    def _new_transport(self) -> Any:
        return _low_latency_transport(self.fetch_max_wait_ms, self.fetch_min_bytes,
                                      self.consumer_in_loop)(self.conf.broker_consumer, self)


def create_app(settings: Settings, runtime: Runtime | None = None) -> faust.App:
    """The Faust app of one worker, bound to ``runtime`` (created from settings if omitted)."""
    rt = runtime or Runtime(settings)
    app = StreamrecApp(
        settings.app_id, broker=settings.kafka_url, store="memory://",
        key_serializer="raw", value_serializer="raw",
        topic_partitions=settings.partitions, web_enabled=False,
        consumer_auto_offset_reset="earliest", broker_commit_interval=1.0,
        broker_credentials=_faust_credentials(settings),
        producer_acks=-1, stream_wait_empty=False,
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout_s / 3),
    )
    app.use_consumer_settings(settings)
    app.streamrec = rt  # type: ignore[attr-defined]
    inputs = app.topic(*[settings.topic(t) for t in INPUT_TOPICS], key_type=bytes, value_type=bytes,
                       partitions=settings.partitions)
    recs = app.topic(settings.topic("recommendations"), key_type=bytes, value_type=bytes,
                     partitions=settings.partitions)
    enriched = app.topic(settings.topic("recommendations-enriched"), key_type=bytes, value_type=bytes,
                         partitions=settings.partitions)
    dlq = app.topic(settings.topic("dead-letter"), key_type=bytes, value_type=bytes,
                    partitions=settings.partitions)
    labels_topic = app.topic(settings.topic("ranker-labels"), key_type=bytes, value_type=bytes,
                             partitions=settings.partitions)
    # declared so that Faust creates them; records go by name straight to the producer
    recs_name, enriched_name, dlq_name, labels_name = (
        t.get_topic_name() for t in (recs, enriched, dlq, labels_topic))

    def delivered(topic: str, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            rt.metrics.send_errors.labels(topic).inc()
            log.error("a record for %s could not be delivered: %s", topic, fut.exception())

    async def produce(name: str, key: bytes | None, value: bytes) -> None:
        """Hand one record to the producer. Straight to it: Faust's ``Topic.send`` (a
        channel, a message future, sensors) took about half of a bare agent's CPU per
        forwarded record (docs/speed.md). Each commit flushes the producer first, as
        before, so a committed input's outputs are out; a failed delivery is logged and
        counted (``streamrec_send_errors_total``)."""
        sent = await app.producer.send(name, key, value, None, None, None)
        sent.add_done_callback(functools.partial(delivered, name))

    async def send_recommendation(user_id: str, payload: bytes) -> None:
        await produce(recs_name, user_key(user_id), payload)

    async def send_dead_letter(record: dict) -> None:
        key = record["key"].encode() if isinstance(record.get("key"), str) else None
        await produce(dlq_name, key, orjson.dumps(record))

    async def send_enriched(payload: dict) -> None:
        blob = orjson.dumps(payload)
        await produce(enriched_name, user_key(payload["user_id"]), blob)
        await rt.store.write([("set", rt.keys.latest_enriched(payload["user_id"]), blob, None)])
        for listener in rt.listeners:
            listener("copy", blob)

    async def send_labels(message: bytes) -> None:
        await produce(labels_name, rt.label_origin.encode(), message)

    if settings.share_ranker_labels:
        rt.recommender.share_labels()
        rt.send_labels = send_labels  # type: ignore[method-assign]
    rt.send_recommendation = send_recommendation  # type: ignore[method-assign]
    rt.send_dead_letter = send_dead_letter  # type: ignore[method-assign]
    rt.send_enriched = send_enriched  # type: ignore[method-assign]

    shed_after_s = settings.shed_after_ms / 1000 if settings.shed_after_ms > 0 else None

    @app.agent(inputs, concurrency=1)
    async def process(stream):  # noqa: ANN001 - Faust stream
        async for batch in take_batches(stream, settings.batch_size, within=settings.batch_window_s):
            age = oldest_record_age(batch)  # how far behind the worker runs (Kafka timestamps)
            if age is not None:
                rt.metrics.batch_wait.observe(max(0.0, age))
            shed = shed_after_s is not None and age is not None and age > shed_after_s
            good: list[Event] = []
            source: dict[int, Any] = {}  # id(event) -> its message, for a dead-letter record
            for ev in batch:
                m = ev.message
                decoded = rt.decode(m.topic, m.partition, m.offset, m.key, m.value)
                if isinstance(decoded, dict):
                    await rt.send_dead_letter(decoded)
                else:
                    good.append(decoded)
                    source[id(decoded)] = m
            for event, err in await rt.handle(good, shed=shed):
                # the input as it came (topic, partition, offset, bytes): fix the cause, replay it
                m = source[id(event)]
                await rt.send_dead_letter(dead_letter_record(
                    m.topic, m.partition, m.offset, m.key, m.value, f"processing failed: {type(err).__name__}: {err}"))

    @app.task
    async def on_started() -> None:
        try:
            if await rt.recommender.restore():
                log.info("ranker restored from snapshot (%d updates)", rt.recommender.ranker.updates)
        except (StoreError, SnapshotError) as e:  # a cold ranker ranks by the prior blend meanwhile
            log.warning("could not load the ranker snapshot: %s", e)
        rt.metrics.export_ranker(rt.recommender.ranker)
        if settings.share_ranker_labels:
            rt.labels_resume = rt.recommender.ranker.seen_labels
            rt.labels_feed = asyncio.ensure_future(_follow_labels(rt))
        if rt.catalog is not None:
            await rt.catalog.start()
            try:
                log.info("content index rebuilt from the store: %d items", await rt.catalog.rebuild())
            except StoreError as e:
                log.warning("content index starts empty: %s", e)
            rt.catalog_feed = asyncio.ensure_future(_follow_catalog(rt))
        if settings.copy_in_worker:
            await _start_copy_pool(rt)
        if settings.web_port:
            await _start_web(rt, app)
        settle_gc(settings.gc_gen0_threshold)
        loop_kind = type(asyncio.get_running_loop()).__module__.split(".")[0]  # uvloop or asyncio
        log.info("worker %s ready: store=%s topics=%s event loop=%s", settings.worker_id, rt.store.kind,
                 ",".join(settings.topic(t) for t in INPUT_TOPICS), loop_kind)
        slow_python = slow_build_warning()
        if slow_python:
            log.warning(slow_python)

    @app.task
    async def watch_event_loop() -> None:
        await watch_loop_lag(rt.observe_loop_lag)

    if settings.share_ranker_labels:
        @app.timer(LABELS_EVERY_S)
        async def share_labels() -> None:
            await rt.share_labels()

    @app.timer(settings.snapshot_every_s)
    async def snapshot() -> None:
        try:
            await rt.snapshot()
        except StoreError as e:
            log.warning("snapshot skipped: %s", e)

    return app


async def _follow_catalog(rt: Runtime) -> None:
    """Every worker indexes the whole catalog: the ``items`` topic is read in full by a
    consumer outside the group (the group's agent owns only some item partitions; it
    stores the metadata, this feed keeps each worker's in-memory vector index whole)."""
    from aiokafka import AIOKafkaConsumer

    s = rt.settings
    consumer = AIOKafkaConsumer(s.topic("items"), bootstrap_servers=s.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                fetch_max_wait_ms=500, **s.kafka_kwargs())  # catalog changes need no haste
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            items = [e for msgs in batch.values() for m in msgs
                     if isinstance(e := parse("items", m.value), Item)]
            if items:
                rt.catalog.offer(items)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - the index keeps what it has; lists carry on
        log.warning("catalog feed stopped (%s); the content index stops growing", type(e).__name__)
    finally:
        await consumer.stop()


async def _follow_labels(rt: Runtime) -> None:
    """Every worker's ranker learns every worker's labels: ``ranker-labels`` is read in
    full by a consumer outside the group. A ranker restored from a snapshot goes on from
    the offsets its snapshot had read (skipping the messages of the snapshot's writer
    that the snapshot holds); a cold one learns every label the topic keeps."""
    from aiokafka import AIOKafkaConsumer

    s = rt.settings
    own = rt.label_origin.encode()  # the key of this worker's own messages: skipped unread
    resume = {int(p): o for p, o in (rt.labels_resume or {}).get("positions", {}).items()}
    rt.labels_read.update(resume)  # a partition with nothing new keeps its place for the next snapshot
    # labels need no haste: a fetch waits up to a second for 64 KiB of them
    consumer = AIOKafkaConsumer(s.topic("ranker-labels"), bootstrap_servers=s.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                fetch_max_wait_ms=int(LABELS_EVERY_S * 1000), fetch_min_bytes=65_536,
                                **s.kafka_kwargs())
    await consumer.start()
    try:
        if resume:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30.0
            while not consumer.assignment() and loop.time() < deadline:
                await asyncio.sleep(0.05)
            for tp in consumer.assignment():
                if tp.partition in resume:
                    consumer.seek(tp, resume[tp.partition])
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            for msgs in batch.values():
                for m in msgs:
                    if m.offset < resume.get(m.partition, 0):
                        continue  # read before the snapshot (fetched ahead of the seek)
                    rt.labels_read[m.partition] = m.offset + 1
                    if m.key == own:
                        continue
                    try:
                        rt.learn_peer_labels(m.value)
                    except ValueError as e:
                        log.warning("skipped a ranker-labels message at partition %d offset %d: %s",
                                    m.partition, m.offset, e)
                    # a cold ranker catching up on a long topic must not hold the lists up
                    await asyncio.sleep(0)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - the ranker keeps learning its own partitions' labels
        log.warning("ranker-labels feed stopped (%s); the ranker learns from this worker's shoppers only",
                    type(e).__name__)
    finally:
        await consumer.stop()


async def _start_copy_pool(rt: Runtime) -> None:
    try:
        from streams.copy_pool import CopyPool
    except ImportError:  # the pool ships with the package; this guards partial installs
        log.warning("copy pool unavailable; recommendations go out without copy")
        return
    rt.copy_pool = CopyPool(rt.settings, rt.store, rt.keys, rt.send_enriched)
    await rt.copy_pool.start()
    log.info("copy pool started (%s)", "llm " + rt.settings.llm_model if rt.settings.llm_enabled
             else "template copy only")


async def _start_web(rt: Runtime, app: faust.App) -> None:
    try:
        from streams.web import start_web
    except ImportError:
        log.warning("web API unavailable")
        return
    await start_web(rt, app)


def settle_gc(gen0_threshold: int) -> None:
    """Keep the garbage collector's pauses out of the latency tail of a started worker.

    What exists once a worker has started (modules, the Faust app, the catalog index)
    lives as long as the process; ``gc.freeze()`` moves it out of every later
    collection. A full collection walked all of it (about 170,000 objects: 75-90 ms
    with the event loop stopped, every few seconds at 500 events/s) and now walks only
    what came after. The youngest generation is collected after ``gen0_threshold`` new
    objects instead of 700 (most die young and are freed by reference counting, never
    reaching a collection): a few collections where there were hundreds, of a few ms,
    growing to about 25 ms as the worker's bounded caches fill.
    ``python -m benchmarks.bench_hotpath`` reports the pauses; ``--gc-gen0-threshold 0``
    there, like 0 here, keeps Python's defaults.

    >>> settle_gc(0) is None  # Python's defaults: nothing frozen
    True
    """
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0_threshold, *gc.get_threshold()[1:])


def faust_worker(app: faust.App, loglevel: str = "info"):
    """A ``faust.Worker`` for ``app`` that logs at ``loglevel`` and nothing below.

    Faust's own worker, at ``warning`` or above, installs a terminal spinner that
    turns with every log record and sets the root logger to DEBUG to feed it: every
    ``log.debug`` in Faust, aiokafka and mode then builds a record that is thrown
    away, about 8 % of a bare pass-through's CPU. Without the spinner the root logger
    keeps ``loglevel``."""
    from faust.worker import Worker

    worker = Worker(app, loglevel=loglevel, quiet=True)
    worker.spinner = None
    return worker


def use_event_loop(name: str) -> None:
    """Make the event loops this process creates from now on ``name``'s: ``uvloop``
    (libuv, in C) or ``asyncio`` (Python's own). Call it before the app and its worker
    exist: Faust's consumer thread makes its own loop as it starts."""
    if name != "uvloop":
        return
    try:
        import uvloop
    except ImportError as e:
        raise SystemExit("STREAMREC_EVENT_LOOP=uvloop needs the uvloop package (pip install uvloop); "
                         "or set STREAMREC_EVENT_LOOP=asyncio") from e
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run one worker until interrupted (``streamrec worker``)."""
    use_event_loop(settings.event_loop)
    faust_worker(create_app(settings), loglevel).execute_from_commandline()
