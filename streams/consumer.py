"""Faust's aiokafka consumer as the worker runs it.

Two changes to ``faust.transport.drivers.aiokafka``:

- the fetch wait and minimum fetch size are settings (Faust hard-codes a 1.5 s wait for
  worker consumers; brokers that hold a fetch until that deadline, as Tansu does, then
  add up to 1.5 s to every event's latency);
- a fetch that brings a backlog reaches the agents' streams without a task per record.
  Faust hands each record to the streams through ``Service.wait_first(deliver(record),
  flow stopped)``: four tasks and an ``asyncio.wait`` per record, and a turn of the
  event loop at least, so that a worker busy with a batch takes in about one record per
  turn of its loop, and its next batch holds what those few turns delivered: behind a
  backlog every batch stays small, and a list costs more in a small batch. Here the
  records of a fetch after its first ``in_place_after`` are delivered in place
  (``run_until_wait``), so that the next batch takes the backlog in; only a delivery that
  has to wait (a stream's buffer full, flow control during a rebalance) goes on racing
  the flow's stop as Faust's does. A fetch of a few records (a worker keeping up) is
  delivered as Faust delivers it: every record in place cost more CPU per event at
  moderate rates (docs/speed.md).
"""

from __future__ import annotations

import asyncio
import types
from typing import Any, AsyncIterator, Awaitable, Coroutine, Generator, cast

from faust.transport.consumer import CONSUMER_FETCHING


@types.coroutine
def _wait_on(awaited: Any) -> Generator[Any, None, None]:
    """Hand ``awaited`` (what a coroutine yielded) to the task running the caller."""
    yield awaited


def _step(coro: Coroutine) -> Any:
    """Run ``coro`` until it waits (``StopIteration`` when it finishes) and take what it
    waits on as a task takes it: a future's "a task is waiting" mark is cleared, so that
    another coroutine may await the same future before ``finish`` hands it on (a future
    still marked refuses a second waiter: "await wasn't used with future")."""
    awaited = coro.send(None)
    if getattr(awaited, "_asyncio_future_blocking", False):
        awaited._asyncio_future_blocking = False
    return awaited


async def finish(coro: Coroutine, awaited: Any) -> Any:
    """Run ``coro`` to its end from where it stopped, as an asyncio task would: it was
    started by hand and yielded ``awaited`` (a future, or None for a bare turn).

    >>> async def two_turns():
    ...     await asyncio.sleep(0)
    ...     await asyncio.sleep(0)
    ...     return "done"
    >>> async def main():
    ...     coro = two_turns()
    ...     return await finish(coro, coro.send(None))
    >>> asyncio.run(main())
    'done'
    """
    if getattr(awaited, "_asyncio_future_blocking", None) is False:  # marked again for the task
        awaited._asyncio_future_blocking = True
    while True:
        try:
            await _wait_on(awaited)
        except BaseException as exc:  # the task was cancelled: so is ``coro``
            try:
                awaited = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                awaited = coro.send(None)
            except StopIteration as stop:
                return stop.value


def run_until_wait(awaitable: Awaitable[Any]) -> tuple[Coroutine, Any] | None:
    """Run the coroutine ``awaitable`` until it first waits: None when it finished
    without waiting, else (the coroutine, what it waits on) for ``finish``."""
    coro = cast(Coroutine, awaitable)
    try:
        awaited = _step(coro)
    except StopIteration:
        return None
    return coro, awaited


def worker_transport(fetch_max_wait_ms: int, fetch_min_bytes: int = 1, in_place_after: int | None = None) -> type:
    """Faust's aiokafka transport with the fetch wait and size given, and the records of
    a fetch after its first ``in_place_after`` delivered in place (see the module's
    docstring; None: every record as Faust delivers it)."""
    from faust.transport.drivers import aiokafka as driver

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            consumer._fetch_min_bytes = fetch_min_bytes
            return consumer

    class Consumer(driver.Consumer):
        def _new_consumer_thread(self) -> Any:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs in every worker
            # faust-streaming 0.15's ``Consumer._drain_messages``, but for the delivery
            # of each record (marked below)
            callback, getmany = self.callback, self.getmany
            consumer_should_stop = self._stopped.is_set
            fetcher_should_stop = fetcher._stopped.is_set
            get_read_offset = self._read_offset.__getitem__
            set_read_offset = self._read_offset.__setitem__
            set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
            commit_every = self._commit_every
            acks_enabled_for = self.app.topics.acks_enabled_for
            yield_every, since_yield = 100, 0
            try:
                while not (consumer_should_stop() or fetcher_should_stop()):
                    set_flag(CONSUMER_FETCHING)
                    records = cast(AsyncIterator, getmany(timeout=1.0))
                    await self.sleep(0)
                    if not self.should_stop:
                        in_fetch = 0
                        async for tp, message in records:
                            in_fetch += 1
                            since_yield += 1
                            if since_yield > yield_every:
                                await asyncio.sleep(0)
                                since_yield = 0
                            offset = message.offset
                            read_offset = get_read_offset(tp)
                            if read_offset is None or offset >= read_offset:
                                gap = offset - (read_offset or 0)
                                if gap > 1 and read_offset and acks_enabled_for(message.topic):
                                    await self._add_gap(tp, read_offset + 1, offset)
                                if commit_every is not None and self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                                # the change: a backlog's records in place; only a delivery
                                # that waits races the flow's stop (a rebalance), as
                                # Faust's every one does
                                if in_place_after is None or in_fetch <= in_place_after:
                                    await self.wait_first(callback(message), self.suspend_flow.wait())
                                else:
                                    waiting = run_until_wait(callback(message))
                                    if waiting is not None:
                                        await self.wait_first(finish(*waiting), self.suspend_flow.wait())
                                set_read_offset(tp, offset)
                        unset_flag(CONSUMER_FETCHING)
            except self.consumer_stopped_errors:
                if self.transport.app.should_stop:
                    self.log.info("Broker stopped consumer, shutting down...")
                    return
                raise
            except asyncio.CancelledError:
                if self.transport.app.should_stop:
                    self.log.info("Consumer shutting down for user cancel.")
                    return
                raise
            except Exception as exc:
                self.log.exception("Drain messages raised: %r", exc)
                raise
            finally:
                unset_flag(CONSUMER_FETCHING)

    class Transport(driver.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport
