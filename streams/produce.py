"""``streamrec produce``: replay a recorded stream into Kafka, in event-time order.

Each event goes to the topic of its type (``clicks``, ``carts``, ``items``,
``reviews``, ``feedback``, ``forget``, behind ``STREAMREC_TOPIC_PREFIX``), keyed by
``user_id`` (catalog ``items`` by ``item_id``), its value the wire JSON
(``models.events.to_dict``, orjson-encoded). One producer sends in file order, and
Kafka keeps the order of one key within its partition, so every shopper's events
arrive in event-time order.

Pace:

- ``speedup=X``: the gap between two events is their event-time gap divided by X;
- ``rate=N``: N shopper events per second, evenly spaced (catalog events go out as
  they come: they are no shopper's traffic);
- neither: as fast as the broker takes them.

``limit=N`` stops after N shopper events, as ``streamrec replay --limit`` does: catalog
events come on top, so a recording that publishes its catalog first still sends N
shopper events.

>>> topic_and_key(Click("e1", "u1", "i1", 1.7e9))
('clicks', b'u1')
>>> topic_and_key(Item("i9", "Lamp", 1.7e9))
('items', b'i9')
>>> p = Pacer(speedup=10); p.due(0, 1000.0); p.due(1, 1020.0)
0.0
2.0
>>> Pacer(rate=4).due(6, 0.0), Pacer().due(6, 0.0)
(1.5, None)
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Iterable

import orjson
from aiokafka import AIOKafkaProducer

from models.events import Cart, Click, Event, Feedback, Forget, Item, Review, to_dict
from models.features.keys import Keys
from models.features.store import FeatureStore
from streams.readers import CatalogFile, CsvLayout, Malformed, open_recording, up_to_limit
from streams.settings import Settings

log = logging.getLogger("streamrec.produce")

TOPIC_OF = {Click: "clicks", Cart: "carts", Item: "items", Review: "reviews", Feedback: "feedback",
            Forget: "forget"}

#: Futures awaited together, so a failed send surfaces soon and memory stays bounded.
CHECK_EVERY = 5000
#: Sleeps shorter than this are skipped (the next due time catches up).
MIN_SLEEP_S = 0.002


def topic_and_key(event: Event) -> tuple[str, bytes]:
    """The base topic of ``event`` and its message key."""
    topic = TOPIC_OF[type(event)]
    key = event.item_id if isinstance(event, Item) else event.user_id
    return topic, key.encode("utf-8")


class Pacer:
    """Seconds after the start at which the n-th event is due (None = now)."""

    def __init__(self, speedup: float | None = None, rate: float | None = None) -> None:
        if speedup is not None and rate is not None:
            raise ValueError("choose --speedup or --rate, not both")
        if speedup is not None and not speedup > 0:
            raise ValueError("--speedup must be > 0")
        if rate is not None and not rate > 0:
            raise ValueError("--rate must be > 0")
        self.speedup, self.rate = speedup, rate
        self.first_ts: float | None = None

    def due(self, n: int, ts: float) -> float | None:
        if self.rate is not None:
            return n / self.rate
        if self.speedup is not None:
            if self.first_ts is None:
                self.first_ts = ts
            return max(0.0, ts - self.first_ts) / self.speedup
        return None


async def produce_events(settings: Settings, events: Iterable[Event], speedup: float | None = None,
                         rate: float | None = None, limit: int | None = None, total: int | None = None,
                         progress: bool = True) -> int:
    """Send ``events`` (already in event-time order) at the chosen pace, up to ``limit``
    shopper events; returns how many events were sent, catalog events included."""
    from tqdm import tqdm

    pacer = Pacer(speedup, rate)
    if limit is not None and limit < 0:
        raise ValueError("--limit must be >= 0")
    if limit is not None:
        total = min(total, limit) if total is not None else limit
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5,
                                acks="all", client_id="streamrec-produce", **settings.kafka_kwargs())
    await producer.start()
    sent = shoppers = 0
    pending: list[asyncio.Future] = []
    bar = tqdm(total=total, unit="ev", desc="produce", disable=not progress, file=sys.stderr,
               mininterval=0.5, dynamic_ncols=True)
    try:
        t0 = time.perf_counter()
        for event in up_to_limit(events, limit):
            catalog = isinstance(event, Item)
            due = None if catalog and pacer.rate is not None else pacer.due(shoppers, event.ts)
            if due is not None:
                delay = t0 + due - time.perf_counter()
                if delay > MIN_SLEEP_S:
                    await asyncio.sleep(delay)
            topic, key = topic_and_key(event)
            pending.append(await producer.send(settings.topic(topic), orjson.dumps(to_dict(event)), key=key))
            sent += 1
            if not catalog:
                shoppers += 1
            if not (catalog and limit is not None):  # with a limit the bar counts what it counts
                bar.update(1)
            if len(pending) >= CHECK_EVERY:
                await asyncio.gather(*pending)
                pending.clear()
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        bar.close()
        await producer.stop()
    return sent


def run_produce(settings: Settings, path: str | os.PathLike, fmt: str, speedup: float | None = None,
                rate: float | None = None, limit: int | None = None, progress: bool = True,
                layout: CsvLayout | None = None, catalog: CatalogFile | None = None) -> int:
    """Replay the recording at ``path`` (format ``fmt``; ``layout`` for a ``csv`` file;
    ``catalog``: a product catalog kept apart, sent to ``items`` first) into Kafka;
    returns the events sent.

    Rows the reader could not use are skipped and counted in the log.
    """
    Pacer(speedup, rate)  # validate before connecting
    recording = open_recording(path, fmt, layout, limit, progress=progress, catalog=catalog)
    if recording.read_as:
        log.info("read as %s", recording.read_as)
    sent = asyncio.run(produce_events(settings, recording, speedup=speedup, rate=rate, limit=limit,
                                      total=recording.total, progress=progress))
    if recording.malformed.count:
        log.warning("%d malformed rows skipped, e.g. %s", recording.malformed.count,
                    "; ".join(recording.malformed.examples[:3]))
    return sent


#: ``streamrec catalog --replace`` retires at most this share of the available catalog
#: unless ``--force`` says the file is right (a cut or wrong file is likelier than a shop
#: dropping half its range in a day)
RETIRE_SHARE_MAX = 0.5


@dataclass(slots=True)
class CatalogPublication:
    """What ``streamrec catalog`` published, or would publish with ``--check``."""

    items: int
    #: items the store lists as available that the file no longer names (``--replace``)
    retired: int = 0
    #: the available catalog the store listed before (``--replace``)
    listed: int = 0
    #: retired items the store held no title of: left as they are (an ``items`` event needs one)
    untitled: int = 0

    @property
    def retires_too_many(self) -> bool:
        """Whether ``--replace`` would retire more than ``RETIRE_SHARE_MAX`` of the catalog."""
        return self.retired > RETIRE_SHARE_MAX * self.listed


async def retired_items(store: FeatureStore, keys: Keys, keep: set[str], ts: float, chunk: int = 2000
                        ) -> tuple[list[Item], int, int]:
    """``items`` upserts that retire (``available: false``) every item the store lists
    as available that ``keep`` does not name, carrying what the store holds of each
    (title, category, description, price: the workers then keep its vector as it is);
    also the number of items listed, and of those left out for want of a stored title."""
    (listed,) = await store.read([("smembers", keys.catalog_ids())])
    gone = sorted(set(listed) - keep)
    out: list[Item] = []
    for start in range(0, len(gone), chunk):
        part = gone[start:start + chunk]
        metas = await store.read([("hmget", keys.item_meta(i), ["title", "category", "description", "price"])
                                  for i in part])
        for item_id, (title, category, description, price) in zip(part, metas):
            if title:
                try:
                    value = float(price) if price else None
                except ValueError:
                    value = None
                out.append(Item(item_id, title, ts, description, category, value, available=False))
    return out, len(listed), len(gone) - len(out)


def run_publish_catalog(settings: Settings, catalog: CatalogFile, progress: bool = True, check: bool = False,
                        replace: bool = False, force: bool = False) -> CatalogPublication:
    """Publish the items of a product catalog file to ``items``, stamped now (a shop's
    first step: content similarity and cold start then know its products). With
    ``replace`` the file is the whole catalog: the items the feature store lists as
    available that it does not name are published unavailable (at most half of them
    without ``force``). ``check``: read (and with ``replace`` compare) only, send
    nothing. Rows that cannot be used are logged, with their reasons."""
    malformed = Malformed()
    now = time.time()
    items, read_as = catalog.items(now, malformed)
    log.info("read as %s", read_as)
    if malformed.count:
        log.warning("%d malformed rows or items left out, e.g. %s", malformed.count, "; ".join(malformed.examples[:3]))
    if not items:
        raise ValueError(f"{catalog.path.name}: no item to publish ({read_as})")

    async def publish() -> CatalogPublication:
        out, retire = CatalogPublication(len(items)), []
        if replace:
            store = settings.open_store()
            try:
                retire, out.listed, out.untitled = await retired_items(
                    store, Keys(settings.key_prefix), {i.item_id for i in items}, now)
            finally:
                await store.close()
            out.retired = len(retire)
            if out.retires_too_many and not force and not check:
                raise ValueError(f"--replace would retire {out.retired:,} of the {out.listed:,} available items "
                                 f"({out.retired / out.listed:.0%}), more than {RETIRE_SHARE_MAX:.0%}: a cut or "
                                 "wrong file is likelier than that; check the file, then give --force")
        if not check:
            await produce_events(settings, [*items, *retire], total=len(items) + len(retire), progress=progress)
        return out

    return asyncio.run(publish())
