"""Records reach the streams in place (``streams.consumer``): a delivery that need not
wait takes no task and no turn of the event loop; one that must wait is finished as a
task would finish it, its result, error and cancellation included."""

from __future__ import annotations

import asyncio

import pytest

from streams.consumer import finish, run_until_wait


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
        assert run_until_wait(queue.put(n)) is None
    assert turns == before  # five deliveries, no turn of the loop
    assert [queue.get_nowait() for _ in range(5)] == [0, 1, 2, 3, 4]
    counter.cancel()


async def test_a_delivery_that_waits_for_room_is_finished_once_there_is_room():
    queue: asyncio.Queue = asyncio.Queue(maxsize=1)
    queue.put_nowait("first")
    waiting = run_until_wait(queue.put("second"))
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
    delivery = asyncio.ensure_future(finish(*run_until_wait(deliver("second"))))
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
    running = asyncio.ensure_future(finish(*run_until_wait(answer_after_a_wait(fut))))
    fut.set_result(41)
    assert await running == 42

    async def fail_after_a_wait(fut):
        await fut
        raise ValueError("bad record")

    fut = asyncio.get_running_loop().create_future()
    running = asyncio.ensure_future(finish(*run_until_wait(fail_after_a_wait(fut))))
    fut.set_result(None)
    with pytest.raises(ValueError, match="bad record"):
        await running

    async def awaits_a_failed_future(fut):
        try:
            await fut
        except KeyError:
            return "handled"

    fut = asyncio.get_running_loop().create_future()
    running = asyncio.ensure_future(finish(*run_until_wait(awaits_a_failed_future(fut))))
    fut.set_exception(KeyError("k"))
    assert await running == "handled"



async def test_deliveries_waiting_on_one_future_both_finish():
    """Two deliveries stepped by hand wait on one future before any task takes it; a
    future still marked as awaited would refuse the second ("await wasn't used with
    future"), so the step clears the mark and ``finish`` sets it again for its task."""
    fut = asyncio.get_running_loop().create_future()

    async def waits(tag):
        return tag, await fut

    first, second = run_until_wait(waits("a")), run_until_wait(waits("b"))
    assert first is not None and second is not None
    tasks = [asyncio.ensure_future(finish(*first)), asyncio.ensure_future(finish(*second))]
    await asyncio.sleep(0)
    fut.set_result(7)
    assert await asyncio.wait_for(asyncio.gather(*tasks), 1) == [("a", 7), ("b", 7)]

# -- a backlog on a real broker ------------------------------------------------------------

AGENT_SCRIPT = '''
import json, os, sys, time
from streams.app import StreamrecApp, faust_worker
from streams.batching import take_batches

bootstrap, topic, log, total, in_place_after = sys.argv[1:6]
app = StreamrecApp("backlog-" + topic, broker="kafka://" + bootstrap, store="memory://",
                   key_serializer="raw", value_serializer="raw", web_enabled=False,
                   consumer_auto_offset_reset="earliest", broker_session_timeout=6.0,
                   broker_heartbeat_interval=2.0)
app.fetch_max_wait_ms = 20
app.in_place_after = None if in_place_after == "none" else int(in_place_after)
seen = []

@app.agent(app.topic(topic, key_type=bytes, value_type=bytes), concurrency=1)
async def busy(stream):
    async for batch in take_batches(stream, 500, within=0.001):
        time.sleep(0.002 * len(batch) ** 0.5)  # CPU-bound work: the loop does not turn
        seen.extend(int(e.value) for e in batch)
        with open(log, "a") as fh:
            fh.write(json.dumps(len(batch)) + "\\n")
        if len(seen) >= int(total):
            with open(log, "a") as fh:
                fh.write(json.dumps({"values": seen}) + "\\n")
            os._exit(0)

faust_worker(app, loglevel="warning").execute_from_commandline()
'''


def _drain_backlog(broker: str, tmp_path, in_place_after: str, n: int = 3000) -> tuple[list[int], list[int]]:
    """``n`` records produced before a busy agent starts: (its batch sizes, the values it saw)."""
    import json
    import subprocess
    import sys
    import uuid

    from aiokafka import AIOKafkaProducer

    topic = f"backlog-{uuid.uuid4().hex[:8]}"

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5)
        await producer.start()
        try:
            for v in range(n):
                await producer.send(topic, str(v).encode(), key=b"k")
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(produce())
    log = tmp_path / f"batches-{in_place_after}.jsonl"
    script = tmp_path / "agent.py"
    script.write_text(AGENT_SCRIPT)
    import os
    done = subprocess.run([sys.executable, str(script), broker, topic, str(log), str(n), in_place_after],
                          capture_output=True, text=True, timeout=180, cwd=os.getcwd(),
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [x for x in lines if isinstance(x, int)], lines[-1]["values"]


def test_a_backlog_reaches_a_busy_agent_in_large_batches_every_record_once_in_order(broker, tmp_path):
    """A busy agent (its batches' work does not let the loop turn) behind a backlog: with
    the records after a fetch's first 16 delivered in place its batches take the backlog
    in; Faust's way, they take in what a few turns of the loop delivered."""
    in_place_sizes, in_place_values = _drain_backlog(broker, tmp_path, "16")
    faust_sizes, faust_values = _drain_backlog(broker, tmp_path, "none")
    assert in_place_values == faust_values == list(range(3000))
    in_place_median = sorted(in_place_sizes)[len(in_place_sizes) // 2]
    faust_median = sorted(faust_sizes)[len(faust_sizes) // 2]
    assert in_place_median >= 3 * faust_median, (in_place_sizes, faust_sizes)
