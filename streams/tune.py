"""``streamrec tune``: the recommender's settings chosen on a shop's own recorded stream.

The stream (any event-stream format ``streamrec replay`` reads) is cut by its shopper
events, in time order, into three parts: the oldest is only learned; the middle one
validates; the newest tests. The oldest part is learned once through the pipeline;
each setting tried then replays the validation part prequentially (as ``streamrec
replay`` scores a stream: each interaction against the shopper's latest list, then
learned) on a copy of that state. Only settings read when a list is made are searched
(the prior blend's weight of each source, how many candidates each source proposes,
how many neighbours and anchors the sources read), so what was learned is the same for
every trial; a source that proposed nothing on validation (``buy_again`` where
purchases stay out for good) has its weight left as it is. Coordinate search, in ``GRID`` order: one setting at a time, the value
with the best MRR@k + HR@k / 3 on validation kept before the next; the current value
stays unless another beats it by ``min_gain`` (1 % of the objective by default: a
validation part of a few thousand cases moves by that much by chance). The test part is then replayed from the state after
validation with the settings the search started from and with the chosen ones, so the
file's header says whether the choice holds on newer data than it was chosen on.

The output is a profile file (TOML): the base profile with the chosen values, the
trials in its header. A worker runs it with ``STREAMREC_PROFILE_FILE=FILE``, a replay
with ``--profile-file FILE``.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from models import tuned
from models.events import Event, Item
from models.features.keys import Keys
from models.features.memory import MemoryStore
from streams.readers import CatalogFile, CsvLayout, Malformed, Recording, open_recording, up_to_limit
from streams.replay import TRAIN_BATCH, ReplayClock, _content_factory, build_recommender, replay

#: Settings searched, in order: (table, name, values tried). Every one is read when a
#: list is made, never when an event is learned. A prior weight is tried only for a
#: source the profile runs; values equal to the profile's are not tried twice.
GRID: list[tuple[str | None, str, list[Any]]] = [
    ("prior", "session_knn", [0.5, 1.0, 2.0]),
    ("prior", "sequential", [0.25, 0.5, 1.0]),
    ("prior", "covis", [0.25, 0.5, 1.0]),
    ("prior", "content", [0.1, 0.2, 0.4]),
    ("prior", "new_items", [0.3, 0.6, 1.2]),
    ("prior", "buy_again", [0.25, 0.5, 1.0]),
    ("prior", "popular", [0.02, 0.05, 0.1]),
    ("session_knn", "neighbours", [30, 50, 100]),
    ("sequential", "anchors", [2, 4, 6]),
    ("covis", "anchors", [1, 3, 5]),
    (None, "depth", [1, 2, 3]),
]


def objective(metrics: dict[str, float], k: int) -> float:
    """What the search maximises: MRR@k + HR@k / 3 (both count; MRR, the place of the
    item taken, a little more).

    >>> objective({"mrr@20": 0.2, "hit_rate@20": 0.3}, 20)
    0.3
    """
    return round(metrics[f"mrr@{k}"] + metrics[f"hit_rate@{k}"] / 3, 12)


def with_value(profile: dict[str, Any], table: str | None, name: str, value: Any) -> dict[str, Any]:
    """A copy of ``profile`` with ``table.name`` (``name`` at the top with no table) set.

    >>> with_value({"prior": {"covis": 0.5}, "depth": 2}, "prior", "covis", 1.0)["prior"]
    {'covis': 1.0}
    """
    p = copy.deepcopy(profile)
    (p.setdefault(table, {}) if table else p)[name] = value
    return p


def value_of(profile: dict[str, Any], table: str | None, name: str) -> Any:
    """The profile's value of ``table.name``, or None when it sets none."""
    return (profile.get(table, {}) if table else profile).get(name)


def split_points(events: Sequence[Event], validate: float, test: float) -> tuple[int, int]:
    """Where the validation and test parts begin in ``events``: the cuts fall after
    ``1 - validate - test`` and ``1 - test`` of the shopper events (catalog events go
    with the part they fall in).

    >>> from models.events import Click
    >>> evs = [Item("a", "A", 0.0)] + [Click(f"e{n}", "u", "a", float(n)) for n in range(10)]
    >>> split_points(evs, 0.2, 0.3)
    (6, 8)
    """
    shoppers = [n for n, e in enumerate(events) if not isinstance(e, Item)]
    if not shoppers:
        return len(events), len(events)
    total = len(shoppers)
    learn_n = int(round(total * (1 - validate - test)))
    val_n = int(round(total * (1 - test)))
    at = lambda n: shoppers[n] if n < total else len(events)  # noqa: E731
    return at(learn_n), at(val_n)


@dataclass
class Trial:
    """One setting tried on the validation part."""

    setting: str
    value: Any
    metrics: dict[str, float]
    score: float
    kept: bool = False


@dataclass
class TuneResult:
    """What the search tried and chose, and how both settings fared on the test part."""

    base: str
    profile: dict[str, Any]
    changed: dict[str, tuple[Any, Any]]
    trials: list[Trial]
    parts: dict[str, int]
    start: dict[str, float]
    chosen: dict[str, float]
    test_start: dict[str, float] | None = None
    test_chosen: dict[str, float] | None = None
    sources: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


class _State:
    """A learned feature store with what learned beside it (its clock, the content
    source's index and caches), copied whole for each trial."""

    def __init__(self, store: MemoryStore, clock: ReplayClock, content: Any) -> None:
        self.store, self.clock, self.content = store, clock, content

    def fork(self) -> "_State":
        return copy.deepcopy(self)


def _part(fmt: str, events: list[Event]) -> Recording:
    return Recording(fmt, lambda: iter(events), Malformed())


async def _learn(events: list[Event], profile: dict[str, Any], k: int, settings: Any,
                 content: Callable | None) -> tuple[_State, list[str]]:
    """The oldest part learned (no lists made), and the names of the sources built."""
    clock = ReplayClock()
    store = MemoryStore(clock=clock)
    rec = build_recommender(profile, k, store, Keys(), clock, content, settings)
    for start in range(0, len(events), TRAIN_BATCH):
        batch = events[start:start + TRAIN_BATCH]
        clock.now = batch[-1].ts
        await rec.handle(batch, recommend=False)
    text = next((s for s in rec.sources if s.name == "content"), None)
    return _State(store, clock, text), [s.name for s in rec.sources]


async def _score(state: _State, fmt: str, events: list[Event], profile: dict[str, Any], k: int,
                 settings: Any, proposing: dict[str, int] | None = None) -> dict[str, float]:
    """``events`` replayed prequentially on ``state`` (which they change) with ``profile``;
    with ``proposing``, each source's name counts the lists it proposed candidates for."""
    content = (lambda store, keys: state.content) if state.content is not None else None
    rec = build_recommender(profile, k, state.store, Keys(), state.clock, content, settings)
    if proposing is not None:
        rec.sources = [_Counted(s, proposing) for s in rec.sources]
    out = await replay(_part(fmt, events), rec, state.clock, k=k, progress=False)
    return {**out["metrics"], "test_cases": out["test_cases"]}


class _Counted:
    """A candidate source that counts, by its name, the calls that proposed anything."""

    def __init__(self, source: Any, counts: dict[str, int]) -> None:
        self._source, self._counts = source, counts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    async def propose(self, ctx: Any, n: int) -> list[tuple[str, float, str]]:
        out = await self._source.propose(ctx, n)
        if out:
            self._counts[self._source.name] = self._counts.get(self._source.name, 0) + 1
        return out


def _shown(m: dict[str, float], k: int) -> str:
    return f"HR@{k} {100 * m[f'hit_rate@{k}']:.2f} %, MRR@{k} {100 * m[f'mrr@{k}']:.2f} % ({m['test_cases']:,} cases)"


async def tune(events: list[Event], fmt: str, base: str = "events", k: int = 20, validate: float = 0.2,
               test: float = 0.2, settings: Any = None, no_content: bool = False, min_gain: float = 0.01,
               grid: Sequence[tuple[str | None, str, list[Any]]] = GRID,
               say: Callable[[str], None] = lambda line: None) -> TuneResult:
    """Search ``grid`` on ``events`` (a shop's stream in time order) from profile ``base``
    (of ``settings.profile_file`` when set, else ``models/tuned.toml``)."""
    t0 = time.perf_counter()
    profile_file = getattr(settings, "profile_file", None) or tuned.TUNED_FILE
    profile = start_profile = tuned.load(base, profile_file)  # (with_value copies: this stays as loaded)
    learn_end, val_end = split_points(events, validate, test)
    learn, val, newest = events[:learn_end], events[learn_end:val_end], events[val_end:]
    parts = {"learn": _shoppers(learn), "validate": _shoppers(val), "test": _shoppers(newest)}
    if not parts["validate"]:
        raise ValueError("no shopper event left to validate on: give a longer stream or a larger --validate")
    content = None if no_content else _content_factory(settings)
    say(f"learning the oldest {parts['learn']:,} shopper events; validating on the next "
        f"{parts['validate']:,}, testing on the newest {parts['test']:,}")
    learned, sources = await _learn(learn, profile, k, settings, content)
    say(f"learned in {time.perf_counter() - t0:.0f} s; sources {', '.join(sources)}")

    after_val = learned.fork()
    proposing: dict[str, int] = {}
    # after_val now holds the validation part too
    best = await _score(after_val, fmt, val, profile, k, settings, proposing)
    start = best
    say(f"start: {_shown(best, k)}")
    if not best["test_cases"]:
        raise ValueError("no shopper in the validation part came back after a list, so nothing can be "
                         "scored there: give a longer stream or a larger --validate")
    if best["test_cases"] < 1000:
        say(f"only {best['test_cases']:,} validation cases: differences of a few per cent between settings "
            "are chance at this size (a longer stream or a larger --validate gives more)")
    trials: list[Trial] = [Trial("start", None, best, objective(best, k), kept=True)]
    changed: dict[str, tuple[Any, Any]] = {}
    for table, name, values in grid:
        if table == "prior" and name not in sources:
            continue
        if table == "prior" and not proposing.get(name):  # its weight cannot move any list
            say(f"prior.{name}: not tried, the source proposed nothing on validation")
            continue
        if table not in (None, "prior") and table not in sources:
            continue
        setting = f"{table}.{name}" if table else name
        current = value_of(profile, table, name)
        scores: dict[Any, dict[str, float]] = {current: best}
        for value in values:
            if value == current:
                continue
            m = await _score(learned.fork(), fmt, val, with_value(profile, table, name, value), k, settings)
            scores[value] = m
            trials.append(Trial(setting, value, m, objective(m, k)))
            say(f"{setting} = {value}: {_shown(m, k)}")
        choice = max(scores, key=lambda v: (objective(scores[v], k), v == current))
        if objective(scores[choice], k) < objective(best, k) * (1 + min_gain):
            choice = current
        if choice != current:
            changed[setting] = (changed.get(setting, (current,))[0], choice)
            profile = with_value(profile, table, name, choice)
            best = scores[choice]
            for t in trials:
                if t.setting == setting and t.value == choice:
                    t.kept = True
        say(f"-> {setting} = {choice}" + (" (kept)" if choice == current else ""))
    result = TuneResult(base=base, profile=profile, changed=changed, trials=trials, parts=parts,
                        start=start, chosen=best, sources=sources)
    if parts["test"]:
        result.test_start = await _score(after_val.fork(), fmt, newest, start_profile, k, settings)
        result.test_chosen = (result.test_start if not changed else
                              await _score(after_val.fork(), fmt, newest, profile, k, settings))
        say(f"test, the settings started from: {_shown(result.test_start, k)}")
        say(f"test, the settings chosen:       {_shown(result.test_chosen, k)}")
    result.elapsed_s = round(time.perf_counter() - t0, 1)
    return result


def _shoppers(events: Sequence[Event]) -> int:
    return sum(not isinstance(e, Item) for e in events)


def profile_toml(result: TuneResult, k: int, source: str) -> str:
    """The chosen profile as a profile file, under the base profile's name, with how it
    was chosen in its header."""
    import tomli_w

    def pct(m: dict[str, float] | None) -> str:
        return "-" if m is None else f"{100 * m[f'hit_rate@{k}']:.2f} / {100 * m[f'mrr@{k}']:.2f}"

    lines = [f"# Written by `streamrec tune` from {source}: profile {result.base!r} with the settings a",
             f"# coordinate search chose on validation data (HR@{k} / MRR@{k} in %; objective MRR + HR / 3).",
             f"# Shopper events: {result.parts['learn']:,} learned, {result.parts['validate']:,} validated on, "
             f"{result.parts['test']:,} tested on.",
             f"# validation: started from {pct(result.start)}, chose {pct(result.chosen)}",
             f"# test (newer): started from {pct(result.test_start)}, chose {pct(result.test_chosen)}",
             "# changed: " + (", ".join(f"{s} {a} -> {b}" for s, (a, b) in result.changed.items()) or "nothing"),
             "# trials:"]
    lines += [f"#   {t.setting}{'' if t.value is None else f' = {t.value}'}: {pct(t.metrics)}"
              + ("   <- kept" if t.kept and t.value is not None else "") for t in result.trials]
    costlier = [f"{s} {a} -> {b}" for s, (a, b) in result.changed.items()
                 if not s.startswith("prior.") and isinstance(a, (int, float)) and b > a]
    if costlier:
        lines.append("# costlier lists (more candidates or neighbours read per list: more CPU per event): "
                     + ", ".join(costlier))
    lines.append("# Run it: STREAMREC_PROFILE_FILE=THIS_FILE streamrec worker; "
                 "streamrec replay ... --profile-file THIS_FILE")
    body = tomli_w.dumps({result.base: result.profile})
    return "\n".join(lines) + "\n\n" + body


def run_tune(path: str, fmt: str, out: str, base: str | None = None, k: int = 20, validate: float = 0.2,
             test: float = 0.2, limit: int | None = None, settings: Any = None, no_content: bool = False,
             min_gain: float = 0.01, layout: CsvLayout | None = None, catalog: CatalogFile | None = None, report: str | None = None,
             quiet: bool = False) -> TuneResult:
    """Read ``path``, tune, write the profile file ``out`` (and ``report`` as JSON)."""
    if not (0 < validate < 1 and 0 <= test < 1 and validate + test < 1):
        raise ValueError("--validate must be above 0, --test 0 or more, and together under 1")
    if min_gain < 0:
        raise ValueError("--min-gain must be 0 or more")
    recording = open_recording(path, fmt, layout, limit, progress=not quiet, catalog=catalog)
    if recording.test_from is not None:
        raise ValueError(f"{fmt} is a train/test format: tune reads shop event streams "
                         "(jsonl, csv, taobao, online-retail)")
    say = (lambda line: None) if quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    if recording.read_as:
        say(f"read as {recording.read_as}")
    events = list(up_to_limit(iter(recording), limit))
    if recording.malformed.count:
        say(f"{recording.malformed.count:,} malformed rows left out, e.g. " + "; ".join(recording.malformed.examples[:3]))
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 1000)  # the in-memory store's many small objects (see replay)
    try:
        result = asyncio.run(tune(events, fmt, base or getattr(settings, "profile", None) or "events", k=k,
                                  validate=validate, test=test, settings=settings, no_content=no_content,
                                  min_gain=min_gain, say=say))
    finally:
        gc.set_threshold(*thresholds)
    Path(out).write_text(profile_toml(result, k, Path(path).name))
    if report:
        import dataclasses

        import orjson

        Path(report).write_bytes(orjson.dumps(dataclasses.asdict(result), option=orjson.OPT_INDENT_2
                                              | orjson.OPT_SERIALIZE_NUMPY, default=str))
    if not quiet:
        changed = ", ".join(f"{s} {a} -> {b}" for s, (a, b) in result.changed.items()) or "nothing changed"
        print(f"wrote {out} (profile {result.base!r}: {changed}) in {result.elapsed_s:.0f} s")
        print(f"run it: STREAMREC_PROFILE_FILE={out} streamrec worker")
    return result
