"""The copywriter: a standalone process that adds copy to recommendations.

Consumes ``recommendations`` in a consumer group (scale out by running more), runs
a ``CopyPool`` and produces each enriched event to ``recommendations-enriched``
(key = ``user_id``), storing it as the shopper's latest enriched recommendation
unless a newer recommendation has replaced it meanwhile.

Delivery is at-least-once: an offset is committed only once every record before it
has been sent on. The consumer never outruns the pool: it fetches at most as many
records as the pool's queue has room for, so here the backlog waits in Kafka rather
than degrading to template copy. Undecodable records go to ``dead-letter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from models.features.keys import Keys
from streams.copy_pool import CopyPool
from streams.embedded import create_topics
from streams.settings import Settings

log = logging.getLogger(__name__)

COMMIT_EVERY_S = 1.0


class OffsetTracker:
    """Highest committable offset per partition while records finish out of order.

    >>> t = OffsetTracker(); tp = "p0"
    >>> for o in (5, 6, 7): t.started(tp, o)
    >>> t.finished(tp, 6); t.committable()
    {'p0': 5}
    >>> t.finished(tp, 5); t.finished(tp, 7); t.committable()
    {'p0': 8}
    """

    def __init__(self) -> None:
        self._pending: dict[Any, set[int]] = {}
        self._next: dict[Any, int] = {}
        self._committed: dict[Any, int] = {}

    def started(self, tp: Any, offset: int) -> None:
        self._pending.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def finished(self, tp: Any, offset: int) -> None:
        self._pending.get(tp, set()).discard(offset)

    def committable(self) -> dict[Any, int]:
        """Offsets (next to read) safe to commit that were not committed yet."""
        out = {}
        for tp, nxt in self._next.items():
            pending = self._pending.get(tp)
            pos = min(pending) if pending else nxt
            if pos > self._committed.get(tp, -1):
                out[tp] = pos
        return out

    def committed(self, offsets: dict[Any, int]) -> None:
        self._committed.update(offsets)


def _valid(rec: Any) -> str | None:
    """Why ``rec`` is not a usable recommendation event, or None."""
    if not isinstance(rec, dict):
        return "expected a JSON object"
    for name in ("rec_id", "user_id"):
        if not isinstance(rec.get(name), (str, int)) or isinstance(rec.get(name), bool):
            return f"{name}: missing or not a string"
    if not isinstance(rec.get("items"), list):
        return "items: missing or not a list"
    return None


async def copywriter(settings: Settings, *, stop: asyncio.Event | None = None,
                     registry: CollectorRegistry | None = None, ready: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set: recommendations in, enriched recommendations out."""
    stop = stop or asyncio.Event()
    source, target, dead = (settings.topic(n) for n in ("recommendations", "recommendations-enriched",
                                                         "dead-letter"))
    # the topics it reads and writes, where missing (a broker that refuses is not an error)
    await create_topics(settings.kafka_bootstrap, "", settings.partitions, [source, target, dead],
                        refusal_ok=True, **settings.kafka_kwargs())
    store = settings.open_store()
    keys = Keys(settings.key_prefix)
    kafka = settings.kafka_kwargs()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks="all", **kafka)
    consumer = AIOKafkaConsumer(source, bootstrap_servers=settings.kafka_bootstrap,
                                group_id=f"{settings.app_id}-copywriter", enable_auto_commit=False,
                                auto_offset_reset="earliest", **kafka)

    async def send(enriched: dict) -> None:
        value = orjson.dumps(enriched)
        user = str(enriched.get("user_id", ""))
        await producer.send_and_wait(target, value, key=user.encode())
        (latest,) = await store.read([("get", keys.latest_rec(user))])
        newest = _rec_id(latest)
        if newest is None or newest == str(enriched.get("rec_id")):
            await store.write([("set", keys.latest_enriched(user), value, None)])

    pool = CopyPool(settings, store, keys, send, registry=registry)
    tracker = OffsetTracker()
    await producer.start()
    await consumer.start()
    await pool.start()
    log.info("copywriter consuming %s into %s (llm %s)", source, target,
             "on" if settings.llm_enabled else "off: template copy")
    if ready is not None:
        ready.set()
    last_commit = time.monotonic()
    try:
        while not stop.is_set():
            room = max(0, settings.copy_queue_size - pool.queue_depth)
            if room == 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(pool.wait_for_room(), 0.2)
                continue
            batch = await consumer.getmany(timeout_ms=200, max_records=room)
            for tp, messages in batch.items():
                for m in messages:
                    tracker.started(tp, m.offset)
                    done = (lambda tp=tp, off=m.offset: tracker.finished(tp, off))
                    try:
                        rec = orjson.loads(m.value) if m.value is not None else None
                        error = _valid(rec)
                    except orjson.JSONDecodeError as e:
                        rec, error = None, f"not JSON: {str(e)[:120]}"
                    if error is not None:
                        await _dead_letter(producer, dead, source, m, error)
                        done()
                        continue
                    pool.submit(rec, on_done=done)
            if time.monotonic() - last_commit >= COMMIT_EVERY_S:
                await _commit(consumer, tracker)
                last_commit = time.monotonic()
    finally:
        await pool.stop()
        with contextlib.suppress(Exception):
            await _commit(consumer, tracker)
        await consumer.stop()
        await producer.stop()
        await store.close()


def _rec_id(raw: Any) -> str | None:
    if not raw:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return str(data.get("rec_id")) if isinstance(data, dict) and data.get("rec_id") is not None else None


async def _commit(consumer: AIOKafkaConsumer, tracker: OffsetTracker) -> None:
    offsets = tracker.committable()
    if offsets:
        await consumer.commit({tp: off for tp, off in offsets.items() if isinstance(tp, TopicPartition)})
        tracker.committed(offsets)


async def _dead_letter(producer: AIOKafkaProducer, topic: str, source: str, m: Any, error: str) -> None:
    value = m.value or b""
    record = {"topic": source, "partition": m.partition, "offset": m.offset,
              "key": m.key.decode("utf-8", "replace") if m.key else None,
              "value": value.decode("utf-8", "replace")[:65536], "error": error, "ts": time.time()}
    await producer.send_and_wait(topic, orjson.dumps(record), key=m.key)


async def run_copywriter(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Entry point of ``streamrec copywriter`` (``asyncio.run(run_copywriter(settings))``);
    runs until SIGINT/SIGTERM or until ``stop`` is set."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        await copywriter(settings, stop=stop)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
