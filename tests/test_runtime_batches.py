"""A worker's batches against a real Redis: many shoppers on the same few items in one
batch share item-side reads, and every batch must go through whole (a batch that
raises is redone one event at a time, which hides the bug and costs many times more)."""

import asyncio

from models.events import Click
from streams.app import Runtime
from streams.settings import Settings


def test_shared_reads_in_one_batch_never_split_it(redis_url, prefix):
    async def main():
        rt = Runtime(Settings(_env_file=None, redis_url=redis_url, key_prefix=prefix, content=False,
                              copy_in_worker=False))
        sent: list[str] = []

        async def collect(user_id: str, payload: bytes) -> None:
            sent.append(user_id)

        rt.send_recommendation = collect  # type: ignore[method-assign]
        items = [f"i{n}" for n in range(6)]
        try:
            for rnd in range(4):  # 30 shoppers on 6 items: the same keys read by many lists at once
                batch = [Click(f"e{rnd}-{u}", f"u{u}", items[(u + rnd) % 6], 1.7e9 + 60 * rnd + u)
                         for u in range(30)]
                assert await rt.handle(batch) == []
        finally:
            await rt.store.close()
        return rt, sent

    rt, sent = asyncio.run(main())
    assert rt.metrics.registry.get_sample_value("streamrec_batch_splits_total") == 0
    assert rt.metrics.registry.get_sample_value("streamrec_internal_errors_total") == 0
    assert len(sent) == 120 and len(set(sent)) == 30


def test_a_batch_that_raises_is_split_counted_and_logged(prefix, tmp_path, caplog):
    """Fault injected: the recommender raises on any batch of more than one event."""
    from streams.app import BATCH_SPLIT_MARK
    from streams.bench import _batch_splits

    async def main():
        rt = Runtime(Settings(_env_file=None, redis_url="memory://", key_prefix=prefix, content=False,
                              copy_in_worker=False))
        real = rt.recommender.handle

        async def raises_on_batches(events, **kw):  # the injected fault
            if len(events) > 1:
                raise RuntimeError("injected")
            return await real(events, **kw)

        rt.recommender.handle = raises_on_batches  # type: ignore[method-assign]
        sent: list[str] = []

        async def collect(user_id: str, payload: bytes) -> None:
            sent.append(user_id)

        rt.send_recommendation = collect  # type: ignore[method-assign]
        assert await rt.handle([Click(f"e{u}", f"u{u}", "i1", 1.7e9 + u) for u in range(3)]) == []
        return rt, sent

    rt, sent = asyncio.run(main())
    assert sent == ["u0", "u1", "u2"]  # every event still answered, one at a time
    assert rt.metrics.registry.get_sample_value("streamrec_batch_splits_total") == 1
    log = tmp_path / "worker.log"
    log.write_text("\n".join(r.getMessage() for r in caplog.records))
    assert BATCH_SPLIT_MARK in log.read_text() and _batch_splits(log) == 1


def test_a_shopper_whose_keys_are_damaged_goes_to_dead_letter_and_the_others_are_served(redis_url, prefix):
    """Keys holding the wrong kind of value (written by something else) fail only the
    events that touch them, each with its reason; the others in their batches are served
    and applied once, the worker does not wait on it as on an unreachable store, and a
    refused write leaves no dedupe marker behind (a redelivery after the repair counts)."""
    from models.features.store import StoreDataError

    async def main():
        rt = Runtime(Settings(_env_file=None, redis_url=redis_url, key_prefix=prefix, content=False,
                              copy_in_worker=False))
        keys = rt.recommender.keys
        sent: list[str] = []

        async def collect(user_id: str, payload: bytes) -> None:
            sent.append(user_id)

        rt.send_recommendation = collect  # type: ignore[method-assign]
        try:
            await rt.store.write([("set", keys.cart("u1"), b"damaged", None),  # read with the state
                                  ("set", keys.profile("u2"), b"damaged", None)])  # only written to
            read_fails = await asyncio.wait_for(
                rt.handle([Click(f"e{u}", f"u{u}", "i1", 1.7e9 + u) for u in (0, 1)]), 10)
            write_fails = await asyncio.wait_for(
                rt.handle([Click("e3", "u0", "i2", 1.7e9 + 3), Click("e4", "u2", "i2", 1.7e9 + 4)]), 10)
            counters = await rt.store.read([("hgetall", keys.profile("u0")), ("mget", [keys.seen("e4")])])
        finally:
            await rt.store.close()
        return rt, sent, read_fails, write_fails, counters

    rt, sent, read_fails, write_fails, (profile, [marker]) = asyncio.run(main())
    assert [(e.event_id, type(err)) for e, err in read_fails] == [("e1", StoreDataError)]
    assert "cart" in str(read_fails[0][1]) and "hgetall needs a hash" in str(read_fails[0][1])
    assert [(e.event_id, type(err)) for e, err in write_fails] == [("e4", StoreDataError)]
    assert "holds a string; hincr needs a hash" in str(write_fails[0][1])
    assert not any("u1" in str(err) or "u2" in str(err) for _, err in read_fails + write_fails)
    assert sent == ["u0", "u0"]
    assert float(profile["click"]) == 2.0  # e0 and e3, each once, though e3's batch ran twice
    assert marker is None
    assert rt.metrics.registry.get_sample_value("streamrec_store_errors_total") == 0


def test_an_event_loop_held_long_is_said_in_the_log_and_every_lag_is_exported(prefix, caplog):
    from streams.app import LOOP_HELD_WARN_S

    rt = Runtime(Settings(_env_file=None, redis_url="memory://", key_prefix=prefix, content=False,
                          copy_in_worker=False))
    with caplog.at_level("WARNING", logger="streamrec"):
        rt.observe_loop_lag(0.004)
        rt.observe_loop_lag(LOOP_HELD_WARN_S + 0.05)
    held = [r.getMessage() for r in caplog.records if "event loop held" in r.getMessage()]
    assert held == [f"event loop held for {1000 * (LOOP_HELD_WARN_S + 0.05):.0f} ms: every list waiting in "
                    "this worker waited as long (a long batch, a garbage collection, a starved CPU)"]
    assert rt.metrics.registry.get_sample_value("streamrec_event_loop_lag_seconds_count") == 2
