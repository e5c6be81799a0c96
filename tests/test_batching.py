"""The worker's batching (``streams.batching.take_batches``) on Faust's own stream machinery.

The agents run in Faust's test context (an in-memory channel in front of the same
stream, buffer and acknowledgement code a worker uses); the worker end to end on a
real broker is ``tests/test_worker_e2e.py``.
"""

from __future__ import annotations

import asyncio
import time

import faust
import pytest

from streams.batching import take_batches

WINDOW_S = 0.3  # long next to the scheduling noise of a shared machine
PROCESS_S = 0.2


def _agent(name: str, take, log: list, process_s: float = PROCESS_S, max_: int = 100):
    """An agent that records (start, end, values, acked before/after) of every batch;
    ``agent.batch_starts`` holds each batch's start as it starts."""
    app = faust.App(name, broker="kafka://127.0.0.1:1", store="memory://")
    started: list[float] = []

    @app.agent()
    async def agent(stream):  # noqa: ANN001 - Faust stream
        async for batch in take(stream, max_, WINDOW_S):
            start = time.perf_counter()
            started.append(start)
            acked_before = any(e.message.acked for e in batch)
            await asyncio.sleep(process_s)
            log.append({"start": start, "end": time.perf_counter(), "values": [e.value for e in batch],
                        "acked_before": acked_before, "events": batch})

    agent.batch_starts = started
    return agent


def _faust_take_events(stream, max_: int, within: float):
    return stream.take_events(max_, within=within)


async def _queue_behind_a_batch(agent, into_s: float, wait_s: float) -> float:
    """One event; ``into_s`` into its batch five more arrive. Returns when they did."""
    async with agent.test_context() as a:
        await a.put(0, wait=False)
        await asyncio.sleep(WINDOW_S)  # the first batch starts after the window ...
        deadline = time.perf_counter() + 10
        while not agent.batch_starts and time.perf_counter() < deadline:  # ... or later on a busy machine
            await asyncio.sleep(0.005)
        assert agent.batch_starts, "the first batch never started"
        await asyncio.sleep(max(0.0, agent.batch_starts[0] + into_s - time.perf_counter()))
        for v in range(1, 6):
            await a.put(v, wait=False)
        arrived = time.perf_counter()
        await asyncio.sleep(wait_s)
        return arrived


def test_what_queued_while_a_long_batch_ran_starts_the_next_batch_at_once():
    """The five waited longer than the window while the batch ran: no more waiting."""
    log: list = []
    agent = _agent("take-batches-long", take_batches, log, process_s=2 * WINDOW_S)
    asyncio.run(_queue_behind_a_batch(agent, 0.05, 6 * WINDOW_S))
    assert [b["values"] for b in log] == [[0], [1, 2, 3, 4, 5]]
    gap = log[1]["start"] - log[0]["end"]
    assert gap < WINDOW_S / 3, f"the queued batch waited {gap:.3f}s after the last one ended"

    # the contrast: Faust's take_events waits its whole window again before that batch
    faust_log: list = []
    agent = _agent("take-events-long", _faust_take_events, faust_log, process_s=2 * WINDOW_S)
    asyncio.run(_queue_behind_a_batch(agent, 0.05, 6 * WINDOW_S))
    assert [b["values"] for b in faust_log] == [[0], [1, 2, 3, 4, 5]]
    assert faust_log[1]["start"] - faust_log[0]["end"] >= WINDOW_S * 0.9


def test_what_queued_while_a_short_batch_ran_waits_out_the_window_from_its_arrival():
    """The window counts from the first queued event's arrival, not from the batch's end."""
    log: list = []
    agent = _agent("take-batches-short", take_batches, log, process_s=0.25)
    arrived = asyncio.run(_queue_behind_a_batch(agent, 0.05, 3 * WINDOW_S))
    assert [b["values"] for b in log] == [[0], [1, 2, 3, 4, 5]]
    assert log[1]["start"] - arrived >= WINDOW_S * 0.9  # its window, counted from arrival
    gap = log[1]["start"] - log[0]["end"]
    assert gap < WINDOW_S - 0.1, f"waited {gap:.3f}s after the batch: a whole window, not what was left of it"


def test_an_idle_agent_waits_the_window_for_events_to_share_a_batch():
    log: list = []

    async def play(agent) -> float:
        async with agent.test_context() as a:
            first = time.perf_counter()
            await a.put("a", wait=False)
            await asyncio.sleep(WINDOW_S / 3)
            await a.put("b", wait=False)
            await asyncio.sleep(WINDOW_S + PROCESS_S + 0.3)
            return first

    first = asyncio.run(play(_agent("take-batches-idle", take_batches, log)))
    assert [b["values"] for b in log] == [["a", "b"]]
    assert log[0]["start"] - first >= WINDOW_S * 0.9  # the window counts from the first event


@pytest.mark.parametrize("max_", [1, 4])
def test_batches_hold_at_most_max_events_in_order_each_acknowledged_once_processed(max_):
    log: list = []

    async def play(agent) -> None:
        async with agent.test_context() as a:
            for v in range(10):
                await a.put(v, wait=False)
            await asyncio.sleep(10 / max_ * (PROCESS_S / 4) + WINDOW_S + 0.5)

    asyncio.run(play(_agent(f"take-batches-max-{max_}", take_batches, log, process_s=PROCESS_S / 4, max_=max_)))
    assert [v for b in log for v in b["values"]] == list(range(10))
    assert all(0 < len(b["values"]) <= max_ for b in log)
    assert not any(b["acked_before"] for b in log)  # not while it was being processed
    assert all(e.message.acked for b in log for e in b["events"])  # but once it was
