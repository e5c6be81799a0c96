"""Batches of a Faust stream's events, started as soon as the agent is free.

Faust's ``stream.take_events(max_, within)`` waits ``within`` before every batch (or until
``max_`` events are buffered), and holds back the events that arrive while a batch is
processed until the next wait begins. Under load every batch then starts ``within``
late, with the events that queued meanwhile waiting through it: at 500 events/s with
batches of ~50 ms the agent idled about a tenth of the time.

``take_batches`` keeps buffering while a batch is processed and counts ``within`` from
the arrival of a batch's first event, as a producer's linger: what queued while a long
batch ran starts the next batch at once; after a short one the next waits only what is
left of its first event's window, so batches still gather company at moderate rates.
Events are acknowledged (their offsets become committable) after the batch that holds
them has been processed, as with ``take_events``.

>>> import asyncio, faust
>>> seen = []
>>> async def play():
...     app = faust.App("take-batches-doc", broker="kafka://127.0.0.1:1", store="memory://")
...     @app.agent()
...     async def agent(stream):
...         async for batch in take_batches(stream, 3, within=0.01):
...             seen.append([e.value for e in batch])
...             await asyncio.sleep(0.05)  # the next batch queues up meanwhile
...     async with agent.test_context() as a:
...         await a.put(0, wait=False)
...         await asyncio.sleep(0.03)  # the first batch is running
...         for v in range(1, 6):
...             await a.put(v, wait=False)
...         await asyncio.sleep(0.2)
>>> asyncio.run(play())
>>> seen  # the 5 queued events at once, at most 3 per batch
[[0], [1, 2, 3], [4, 5]]
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable


def take_batches(stream: Any, max_: int, within: float) -> AsyncIterator[list]:
    """Yield lists of at most ``max_`` events of ``stream`` (a Faust stream).

    A batch starts when the agent is free, ``within`` seconds after its first event
    arrived (at once if that is past: the events that queued while a long batch ran),
    or as soon as ``max_`` events are there."""
    batches = _take_batches(stream, max_, within)
    # as Faust's own buffering generators: the stream closes it when it stops
    getattr(stream, "_active_agens", set()).add(batches)
    return batches


async def _take_batches(stream: Any, max_: int, within: float) -> AsyncIterator[list]:
    loop = asyncio.get_running_loop()
    buffer: list = []
    first_at = 0.0  # when the oldest buffered event arrived (loop time)
    arrived = asyncio.Event()  # the buffer holds an event
    full = asyncio.Event()  # the buffer holds max_ events
    room = asyncio.Event()  # the buffer may take more
    room.set()

    async def add(value: Any) -> Any:
        # runs in the stream's passive drainer, for every event, while batches are processed
        nonlocal first_at
        if not room.is_set():
            await stream.wait(room)
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_batches: no current event for a value")
        if not buffer:
            first_at = loop.time()
        buffer.append(event)
        arrived.set()
        if len(buffer) >= max_:
            full.set()
            room.clear()
        return value

    acks = stream.enable_acks
    stream.enable_acks = False  # acknowledged below, once processed
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))  # noqa: SLF001 - what take_events does
    after_full = False  # the last batch was full: a backlog, held back by ``room``
    try:
        while not stream.should_stop:
            if not buffer:
                await stream.wait_for_stopped(arrived)
            # a batch waits ``within`` from its first event's arrival (nothing more once
            # the last batch ran that long); after a full batch the events held back
            # arrive now, however long they waited: up to ``within`` for ``max_`` of them
            linger = within if after_full else first_at + within - loop.time()
            if linger > 0 and not full.is_set():
                await stream.wait_for_stopped(full, timeout=linger)
            if not buffer:
                continue
            batch = buffer[:]  # never more than max_: ``add`` waits for room
            buffer.clear()
            arrived.clear()
            after_full = full.is_set()
            full.clear()
            room.set()
            try:
                yield batch
            finally:
                for event in batch:
                    await stream.ack(event)
    finally:
        stream.enable_acks = acks
        stream._processors.remove(add)  # noqa: SLF001 - what take_events does


def oldest_record_age(batch: list, now: Callable[[], float] = time.time) -> float | None:
    """Seconds since the oldest record of ``batch`` (Faust events) was written to Kafka, by
    the records' Kafka timestamps; None when none has one (Kafka's -1).

    >>> from types import SimpleNamespace as NS
    >>> ev = lambda ts: NS(message=NS(timestamp=ts))
    >>> [oldest_record_age(b, now=lambda: 100.0) for b in ([ev(99.95), ev(99.5)], [ev(-0.001)], [])]
    [0.5, None, None]
    """
    stamps = [t for t in (ev.message.timestamp for ev in batch) if t and t > 0]
    return now() - min(stamps) if stamps else None
