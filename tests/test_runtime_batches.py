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

        async def raises_on_batches(events):  # the injected fault
            if len(events) > 1:
                raise RuntimeError("injected")
            return await real(events)

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
