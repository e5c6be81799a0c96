"""Records reach the streams in place (``streams.consumer``): a delivery that need not
wait takes no task and no turn of the event loop; one that must wait is finished as a
task would finish it, its result, error and cancellation included."""

from __future__ import annotations

import asyncio

import pytest

from streams.consumer import deliver_now, finish


async def test_a_delivery_with_room_runs_in_place_without_a_turn_of_the_loop():
    queue: asyncio.Queue = asyncio.Queue(maxsize=10)
    turns = 0

    async def count_turns():
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.ensure_future(count_turns())
    await asyncio.sleep(0)  # the counter is running
    before = turns
    for n in range(5):
        assert deliver_now(queue.put(n)) is None
    assert turns == before  # five deliveries, no turn of the loop
    assert [queue.get_nowait() for _ in range(5)] == [0, 1, 2, 3, 4]
    counter.cancel()


async def test_a_delivery_that_waits_for_room_is_finished_once_there_is_room():
    queue: asyncio.Queue = asyncio.Queue(maxsize=1)
    queue.put_nowait("first")
    waiting = deliver_now(queue.put("second"))
    assert waiting is not None  # the queue is full: it waits
    task = asyncio.ensure_future(finish(*waiting))
    await asyncio.sleep(0)
    assert not task.done()
    assert queue.get_nowait() == "first"  # room: the delivery goes on
    await asyncio.wait_for(task, 1)
    assert queue.get_nowait() == "second"


async def test_a_waiting_delivery_raced_by_the_flow_stop_is_cancelled_and_delivers_nothing():
    queue: asyncio.Queue = asyncio.Queue(maxsize=1)
    queue.put_nowait("first")
    cleaned_up = []

    async def deliver(value):
        try:
            await queue.put(value)
        except asyncio.CancelledError:
            cleaned_up.append(value)
            raise

    stop = asyncio.Event()
    delivery = asyncio.ensure_future(finish(*deliver_now(deliver("second"))))
    stopped = asyncio.ensure_future(stop.wait())
    stop.set()  # a rebalance stops the flow while the buffer is full
    done, pending = await asyncio.wait([delivery, stopped], return_when=asyncio.FIRST_COMPLETED)
    assert stopped in done and delivery in pending
    delivery.cancel()
    with pytest.raises(asyncio.CancelledError):
        await delivery
    assert cleaned_up == ["second"]  # the task's cancellation reached the delivery's own code
    assert queue.qsize() == 1 and queue.get_nowait() == "first"


async def test_finish_returns_the_result_and_raises_the_error_of_the_coroutine():
    async def answer_after_a_wait(fut):
        return await fut + 1

    fut = asyncio.get_running_loop().create_future()
    running = asyncio.ensure_future(finish(*deliver_now(answer_after_a_wait(fut))))
    fut.set_result(41)
    assert await running == 42

    async def fail_after_a_wait(fut):
        await fut
        raise ValueError("bad record")

    fut = asyncio.get_running_loop().create_future()
    running = asyncio.ensure_future(finish(*deliver_now(fail_after_a_wait(fut))))
    fut.set_result(None)
    with pytest.raises(ValueError, match="bad record"):
        await running

    async def awaits_a_failed_future(fut):
        try:
            await fut
        except KeyError:
            return "handled"

    fut = asyncio.get_running_loop().create_future()
    running = asyncio.ensure_future(finish(*deliver_now(awaits_a_failed_future(fut))))
    fut.set_exception(KeyError("k"))
    assert await running == "handled"
