"""Choose the ``sessions`` settings of ``models/tuned.toml`` on validation data.

Validation split (test cases are never looked at): the last ``--holdout`` share of
the sessions in ``train.txt`` become validation sessions, written as augmented
``prefix<TAB>target`` lines exactly like the published ``test.txt``; the sessions
before them are the training part. The training part is learned once through the
pipeline; each candidate setting then replays the validation sessions on a copy
of that state (only settings read at recommendation time are searched, so the
learned statistics are the same for all). Coordinate search: one setting at a
time, keeping the best value by MRR@20 + HR@20 / 3 before moving on.

    python -m benchmarks.tune_sessions ../shared/data/diginetica [--sessions 6000]

Prints every trial and the chosen values; paste them into ``models/tuned.toml``. (A
shop's own event stream is tuned by ``streamrec tune``, ``streams/tune.py``, which
shares this search's objective.)
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from models import tuned
from models.features.keys import Keys
from models.features.memory import MemoryStore
from streams.readers import Malformed, Recording, open_recording
from streams.replay import TRAIN_BATCH, ReplayClock, build_recommender, replay
from streams.tune import objective, with_value

#: Settings searched, in order, with the values tried.
GRID: list[tuple[str, str | None, list[Any]]] = [
    ("position_decay", "session_knn", [1.0, 2.0, 3.0, 5.0]),
    ("neighbour_decay", "session_knn", [1.0, 2.0, 3.0, 5.0]),
    ("neighbours", "session_knn", [30, 50, 100]),
    ("sequential", "prior", [0.5, 0.75, 1.0, 1.5]),
    ("decay", "sequential", [0.5, 1.0, 2.0]),
    ("anchors", "sequential", [2, 3, 4]),
]


def write_split(train_file: Path, out: Path, holdout: float, sessions: int | None) -> None:
    lines = [l.split() for l in train_file.read_text().splitlines() if l.split()]
    cut = int(len(lines) * (1 - holdout))
    val = [s for s in lines[cut:] if len(s) >= 2][:sessions]
    (out / "train.txt").write_text("\n".join(" ".join(s) for s in lines[:cut]) + "\n")
    with open(out / "test.txt", "w") as fh:
        for s in val:
            for i in range(len(s) - 1, 0, -1):
                fh.write(" ".join(s[:i]) + "\t" + s[i] + "\n")


async def learn(recording: Recording, profile: dict) -> tuple[MemoryStore, ReplayClock]:
    clock = ReplayClock()
    store = MemoryStore(clock=clock)
    rec = build_recommender(profile, 20, store, Keys(), clock)
    batch = []
    for ev in recording:
        if ev.ts >= recording.test_from:
            break
        batch.append(ev)
        if len(batch) == TRAIN_BATCH:
            clock.now = batch[-1].ts
            await rec.handle(batch, recommend=False)
            batch = []
    if batch:
        clock.now = batch[-1].ts
        await rec.handle(batch, recommend=False)
    return store, clock


async def trial(store: MemoryStore, clock: ReplayClock, test: Recording, profile: dict) -> dict[str, float]:
    store, clock = copy.deepcopy((store, clock))  # the copy keeps its clock
    rec = build_recommender(profile, 20, store, Keys(), clock)
    out = await replay(test, rec, clock, k=20, progress=False)
    return out["metrics"]


async def main_async(args: argparse.Namespace) -> dict:
    profile = tuned.load("sessions")
    with tempfile.TemporaryDirectory() as tmp:
        write_split(Path(args.data) / "train.txt", Path(tmp), args.holdout, args.sessions)
        recording = open_recording(tmp, "sessions")
        events = list(recording)
    test_events = [e for e in events if e.ts >= recording.test_from]
    train = Recording("sessions", lambda: iter(events), Malformed(), test_from=recording.test_from,
                      users_contiguous=True)
    test = Recording("sessions", lambda: iter(test_events), Malformed(), test_from=recording.test_from,
                     users_contiguous=True)
    t0 = time.perf_counter()
    store, clock = await learn(train, profile)
    print(f"learned {len(events) - len(test_events):,} training clicks in {time.perf_counter() - t0:.0f} s; "
          f"{recording.test_cases:,} validation cases", flush=True)
    best = await trial(store, clock, test, profile)
    print(f"start {json.dumps(best)}", flush=True)
    for name, section, values in GRID:
        current = (profile.get(section, {}) if section else profile).get(name)
        scores = {current: best}
        for v in values:
            if v == current:
                continue
            m = await trial(store, clock, test, with_value(profile, section, name, v))
            scores[v] = m
            print(f"{section}.{name} = {v}: HR@20 {m['hit_rate@20']:.4f} MRR@20 {m['mrr@20']:.4f}", flush=True)
        choice = max(scores, key=lambda v: (objective(scores[v], 20), v == current))
        profile = with_value(profile, section, name, choice)
        best = scores[choice]
        print(f"-> {section}.{name} = {choice} (HR@20 {best['hit_rate@20']:.4f}, MRR@20 {best['mrr@20']:.4f})",
              flush=True)
    return profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="folder with train.txt (e.g. ../shared/data/diginetica)")
    parser.add_argument("--holdout", type=float, default=0.1, help="share of training sessions held out")
    parser.add_argument("--sessions", type=int, default=6000, help="validation sessions replayed per trial")
    profile = asyncio.run(main_async(parser.parse_args()))
    print(json.dumps({s: profile[s] for s in ("session_knn", "sequential", "prior")}, indent=2))


if __name__ == "__main__":
    main()
