"""The ranker's snapshot: JSON of its learned numbers, restored exactly; nothing else loads."""

from __future__ import annotations

import pickle
import random

import orjson
import pytest

from models.ranking import Ranker, SnapshotError

SOURCES = ["covis", "session_knn", "popular"]


def labels(seed: int, n: int) -> list[tuple[dict[str, float], bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        signals = {s: rng.random() for s in SOURCES if rng.random() < 0.7}
        f = Ranker.features(signals, rank={s: rng.randrange(20) for s in signals})
        out.append((f, rng.random() < 0.3 + 0.5 * signals.get("covis", 0.0)))
    return out


def judged(r: Ranker, seed: int, n: int) -> None:
    """``r`` learns ``n`` labels and counts a trial click after each (the model's 70 % of the time)."""
    rng = random.Random(seed)
    for f, y in labels(seed, n):
        r.learn(f, y)
        r.add_trials([rng.random() < 0.7])


def test_a_restored_ranker_scores_and_learns_exactly_as_the_one_it_came_from():
    warm = Ranker(SOURCES, warmup=50)
    judged(warm, 1, 400)
    assert warm.active and len(warm.trials) == 400
    fresh = Ranker(SOURCES, warmup=50)
    fresh.restore(warm.snapshot())
    assert (fresh.updates, fresh.positives, fresh.active) == (warm.updates, warm.positives, True)
    assert fresh.trials == warm.trials and fresh.model_won
    probe = labels(2, 50)
    feats, sigs = [f for f, _ in probe], [{s: f[s] for s in SOURCES if s in f} for f, _ in probe]
    assert fresh.score_many(feats, sigs) == warm.score_many(feats, sigs)
    # the same next steps: the optimizer's step count and the scaler's statistics came along
    for f, y in labels(3, 200):
        warm.learn(f, y)
        fresh.learn(f, y)
    assert fresh.score_many(feats, sigs) == warm.score_many(feats, sigs)
    assert fresh.snapshot() == warm.snapshot()


class _RunsCode:
    ran = False

    def __reduce__(self):
        return (setattr, (_RunsCode, "ran", True))


def test_a_pickle_in_the_snapshot_key_is_never_loaded():
    """Whoever can write to the store must not get to run code in every worker."""
    r = Ranker(SOURCES)
    before = r.snapshot()
    with pytest.raises(SnapshotError, match="never loaded"):
        r.restore(pickle.dumps({"model": _RunsCode(), "updates": 9, "positives": 1}))
    assert not _RunsCode.ran
    assert r.snapshot() == before


@pytest.mark.parametrize("damage", [
    lambda s: s.update(weights={"covis": "1.0"}),
    lambda s: s.update(intercept=None),
    lambda s: s["scaler"].pop("vars"),
    lambda s: s.update(steps=-1),
    lambda s: s.update(updates=True),
    lambda s: s.update(format="streamrec-ranker/0"),
    lambda s: s.update(seen_labels={"origin": "w", "sent": 1, "positions": {"0": -1}}),
    lambda s: s.update(seen_labels={"origin": "w", "positions": {}}),
    lambda s: s.update(trial={"clicks": [True, 1], "model_won": False}),
    lambda s: s.update(trial={"clicks": [True], "model_won": 1}),
    lambda s: s.update(trial={"model_won": True}),
])
def test_a_damaged_snapshot_is_refused_and_changes_nothing(damage):
    warm = Ranker(SOURCES)
    judged(warm, 4, 100)
    state = orjson.loads(warm.snapshot())
    damage(state)
    r = Ranker(SOURCES)
    before = r.snapshot()
    with pytest.raises(SnapshotError):
        r.restore(orjson.dumps(state))
    assert r.snapshot() == before


def test_where_the_learning_stood_in_the_shared_labels_comes_back_with_the_state():
    r = Ranker(SOURCES)
    for f, y in labels(5, 50):
        r.learn(f, y)
    seen = {"origin": "abc", "sent": 7, "positions": {"0": 12, "3": 4}}
    fresh = Ranker(SOURCES)
    fresh.restore(r.snapshot(seen))
    assert fresh.seen_labels == seen and fresh.updates == 50
    plain = Ranker(SOURCES)
    plain.restore(r.snapshot())
    assert plain.seen_labels is None
