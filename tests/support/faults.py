"""Test doubles for faults a real store will not produce on demand."""

from __future__ import annotations

from models.features import StoreError


class FailsEachBatchOnce:
    """Fault injected (a test double around a real store): the first write of each
    batch's effects (told apart by its first dedupe marker) raises, as a store that
    dropped the connection would; the retry goes through."""

    def __init__(self, store, keys):
        self.store, self.kind, self.failed, self.markers = store, store.kind, set(), keys.seen("")

    async def read(self, ops):
        return await self.store.read(ops)

    async def write(self, ops):
        marker = next((op[1] for op in ops if op[0] == "set" and op[1].startswith(self.markers)), None)
        if marker is not None and marker not in self.failed:
            self.failed.add(marker)
            raise StoreError("injected: connection lost")
        await self.store.write(ops)


async def handle_redoing_failures(recommender, events, batch: int) -> int:
    """Feed ``events`` to ``recommender`` in batches of ``batch``, doing a batch again
    when the store fails under it, as the worker does; returns how many were redone."""
    redone = 0
    for i in range(0, len(events), batch):
        try:
            await recommender.handle(events[i:i + batch])
        except StoreError:
            redone += 1
            await recommender.handle(events[i:i + batch])
    return redone
