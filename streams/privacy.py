"""Erasing a shopper: ``streamrec forget USER``.

By default a ``forget`` event is sent to Kafka: the worker that owns the user's
partition applies it in order with the user's other events, through the same
processing path, and clears its in-process caches too. ``--direct`` erases in the
feature store from this process (for when no worker runs). Either way the erasure is
idempotent, and the shopper's later events start from nothing.
"""

from __future__ import annotations

import time
import uuid

import orjson

from models.events import Forget
from streams.settings import Settings


def forget_event(user_id: str) -> dict:
    return {"event_id": f"forget-{uuid.uuid4().hex}", "user_id": user_id, "ts": time.time()}


async def forget(settings: Settings, user_id: str, direct: bool = False) -> None:
    if not direct:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, **settings.kafka_kwargs())
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic("forget"), orjson.dumps(forget_event(user_id)),
                                         key=user_id.encode())
        finally:
            await producer.stop()
        return
    from streams.app import Runtime

    rt = Runtime(settings.model_copy(update={"content": False}))
    try:
        e = forget_event(user_id)
        await rt.recommender.handle([Forget(e["event_id"], user_id, e["ts"])])
    finally:
        await rt.store.close()
