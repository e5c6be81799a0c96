"""Small aiokafka helpers for tests: produce JSON, collect what topics carry."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Callable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def produce(bootstrap: str, messages: list[tuple[str, bytes | None, bytes | dict | None]],
                  pace_s: float = 0.0) -> None:
    """Send (topic, key, value) triples in order; dict values are JSON-encoded."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await p.start()
    try:
        for topic, key, value in messages:
            if isinstance(value, dict):
                value = orjson.dumps(value)
            await p.send(topic, value=value, key=key)
            if pace_s:
                await asyncio.sleep(pace_s)
        await p.flush()
    finally:
        await p.stop()


class Collector:
    """Reads topics from the beginning in the background, keeping every message."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.bootstrap, self.topics = bootstrap, topics
        self.messages: dict[str, list] = {t: [] for t in topics}
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> "Collector":
        self._consumer = AIOKafkaConsumer(*self.topics, bootstrap_servers=self.bootstrap,
                                          group_id=f"collector-{uuid.uuid4().hex[:8]}",
                                          auto_offset_reset="earliest", metadata_max_age_ms=2000)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for tp, msgs in batch.items():
                self.messages[tp.topic].extend(msgs)

    def values(self, topic: str) -> list:
        return [orjson.loads(m.value) for m in self.messages[topic]]

    async def wait_for(self, done: Callable[["Collector"], bool], timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done(self):
                return True
            await asyncio.sleep(0.1)
        return done(self)

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()
