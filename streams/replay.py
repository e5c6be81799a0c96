"""``streamrec replay``: a recorded stream through the pipeline, in-process, scored.

The events run in event-time order through ``models.pipeline.Recommender.handle``
(the same call the Faust agents make), against an in-memory feature store
(``memory://``) or Redis when ``STREAMREC_REDIS_URL`` / ``--redis-url`` says so.
The clock is the replayed event time.

Protocols (see ``models.evaluation``):

- train/test formats (``sessions``, ``session-tsv``): training clicks are learned in
  batches with ``recommend=False``; each test click is scored against the list
  recommended after the session's previous click, then learned, then a new list is
  recommended (none after a session's last click);
- event streams (``jsonl``, ``csv``, ``taobao``, ``online-retail``): prequential — each click,
  cart add or purchase is scored against the user's latest list before it is
  learned, one event per call so no list ever sees what it is scored on; no list is
  made after a shopper's last scored interaction (nobody is scored on it).

With ``baselines`` the same events also train and query :mod:`models.baselines`,
scored by the same protocol. The report is a JSON-ready dict (see ``DESIGN.md``).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "train.txt").write_text("1 2 3\\n1 2 3\\n2 3 4\\n" * 3)
>>> _ = (d / "test.txt").write_text("1 2\\t3\\n1\\t2\\n")
>>> r = run_replay(d, "sessions", k=5, progress=False, quiet=True)
>>> r["test_cases"], r["metrics"]["hit_rate@5"]
(2, 1.0)
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

from models import tuned
from models.baselines import BiasedMFBaseline, MostPopular
from models.evaluation import Prequential, is_positive
from models.events import Event, Item
from models.features.keys import Keys
from models.pipeline import Recommender
from models.ranking import Ranker
from streams.readers import CatalogFile, CsvLayout, Recording, open_recording, up_to_limit

#: Published results on the SR-GNN split of Diginetica, HR@20 / MRR@20 in %.
PUBLISHED_DIGINETICA = {
    "POP": (0.89, 0.20), "Item-KNN": (35.75, 11.57), "GRU4Rec": (29.45, 8.33),
    "SR-GNN": (50.73, 17.59), "GCE-GNN": (54.22, 19.04),
}

#: Training events per ``handle`` call (no recommendations, so batching leaks nothing).
TRAIN_BATCH = 512


class ReplayClock:
    """Event time as the clock: ``now`` follows the replayed events."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _content_factory(settings: Any) -> Callable | None:
    """A builder of the content candidate source (``models.content.for_replay``: it
    embeds catalog events synchronously, so replays stay deterministic), or None when
    that module is not installed."""
    try:
        from models.content import for_replay
    except ImportError:
        return None
    return lambda store, keys: for_replay(store, keys, settings)


def _open_store(url: str, clock: ReplayClock):
    from models.features import open_store

    if url.startswith("memory"):
        return open_store(url, clock=clock)
    return open_store(url)


def build_recommender(profile: str | dict[str, Any], k: int, store: Any, keys: Keys, clock: ReplayClock,
                      content: Callable | None = None, settings: Any = None,
                      source_store: Any = None) -> Recommender:
    """A ``Recommender`` with the tuned settings of ``profile`` (a name in
    ``models/tuned.toml``, or the settings themselves) and deterministic ids,
    and the business rules that ``settings`` sets (as the worker applies them); its
    candidate sources read ``source_store`` (e.g. a cache in front of ``store``) if given."""
    cfg, sources, prior, warmup = tuned.build(profile, source_store or store, keys, k=k, content=content)
    if settings is not None:
        settings.apply_business_rules(cfg)
    ranker = Ranker([s.name for s in sources], prior=prior, warmup=warmup)
    sessions = iter(range(1, 1 << 62))
    recs = iter(range(1, 1 << 62))
    return Recommender(store, keys, cfg, sources=sources, ranker=ranker, clock=clock,
                       new_session_id=lambda: f"s{next(sessions)}", new_rec_id=lambda: f"r{next(recs)}")


def last_positions(events: Iterator[Event], limit: int | None) -> dict[str, int]:
    """Shopper -> the position (in replay order, catalog events counted) of their last
    interaction that is scored (a click, a cart add, a purchase) within ``limit``: a
    list made after it is never scored. ``limit`` counts as ``_batches`` counts.

    >>> from models.events import Click, Cart
    >>> last_positions(iter([Click("e1", "u", "a", 1.0), Item("b", "B", 1.0), Click("e2", "v", "b", 2.0),
    ...                      Click("e3", "u", "b", 3.0), Cart("e4", "u", "b", "remove", 4.0)]), None)
    {'u': 3, 'v': 2}
    """
    last: dict[str, int] = {}
    for pos, ev in enumerate(up_to_limit(events, limit)):
        if is_positive(ev):
            last[ev.user_id] = pos
    return last


def _batches(events: Iterator[Event], recording: Recording, limit: int | None,
             last: dict[str, int] | None = None) -> Iterator[tuple[list[Event], bool, bool]]:
    """``(events, scored, recommend)`` groups: training runs in big batches, scored
    events one by one (with lookahead to skip lists nobody will be scored on), and a
    run of consecutive catalog events in one batch (they trigger no list, and the
    content source embeds a batch of titles at once). With ``last``
    (``last_positions``), no list is made after a shopper's last scored interaction:
    nobody is scored on it (in a shop's stream most visitors come once or twice).

    ``limit`` counts the events shoppers make: catalog events come on top, so the
    same ``--limit`` replays the same purchases whether or not the recording
    publishes its catalog ahead.

    >>> from models.events import Click
    >>> rec = Recording("jsonl", lambda: iter(()), None)
    >>> evs = [Item("a", "A", 1.0), Item("b", "B", 1.0), Click("e1", "u", "a", 2.0),
    ...        Click("e2", "u", "b", 3.0), Item("c", "C", 3.0), Click("e3", "v", "c", 4.0)]
    >>> [([getattr(e, "event_id", "") for e in b], sc, r) for b, sc, r in _batches(iter(evs), rec, 2)]
    [(['item:a:1.0', 'item:b:1.0'], True, False), (['e1'], True, True), (['e2'], True, True)]
    >>> [r for _, _, r in _batches(iter(evs), rec, None, last_positions(iter(evs), None))]  # u's e2 is u's last
    [False, True, False, False, False]
    """
    test_from = recording.test_from
    batch: list[Event] = []
    prev: list[Event] = []  # the pending scored group: one event, or a run of catalog events
    prev_pos = -1  # the position of prev's last event
    for pos, ev in enumerate(up_to_limit(events, limit)):
        catalog = isinstance(ev, Item)
        if test_from is not None and ev.ts < test_from:
            batch.append(ev)
            if len(batch) >= TRAIN_BATCH:
                yield batch, False, False
                batch = []
            continue
        if batch:
            yield batch, False, False
            batch = []
        if catalog and prev and isinstance(prev[0], Item):
            prev.append(ev)
            prev_pos = pos
            continue
        if prev:
            yield prev, True, _need_list(prev[-1], ev, recording) and _scored_later(prev[-1], prev_pos, last)
        prev, prev_pos = [ev], pos
    if batch:
        yield batch, False, False
    if prev:
        yield prev, True, (not isinstance(prev[0], Item) and not recording.users_contiguous
                           and _scored_later(prev[-1], prev_pos, last))


def _scored_later(ev: Event, pos: int, last: dict[str, int] | None) -> bool:
    """Whether the shopper of ``ev`` (at ``pos``) has a scored interaction after it
    (True when unknown: no ``last``)."""
    return last is None or last.get(ev.user_id, -1) > pos


def _need_list(prev: Event, ev: Event, recording: Recording) -> bool:
    """Whether the list made after ``prev`` can be scored: catalog events trigger none,
    and a session's last click needs none when the next event is someone else's."""
    if isinstance(prev, Item):
        return False
    return not (recording.users_contiguous and ev.user_id != prev.user_id)


async def replay(recording: Recording, recommender: Recommender, clock: ReplayClock, k: int = 20,
                 baselines: bool = False, limit: int | None = None, progress: bool = True,
                 total: int | None = None) -> dict[str, Any]:
    """Run ``recording`` through ``recommender``; returns the report (without timing)."""
    ours = Prequential(k)
    others = {}
    if baselines:
        others = {b.name: (b, Prequential(k)) for b in (MostPopular(), BiasedMFBaseline())}
    latencies: list[float] = []
    counts: Counter[str] = Counter()
    events = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=min(total, limit) if total and limit else (total or limit), unit="ev",
                   mininterval=0.5, file=sys.stderr, dynamic_ncols=True)
    # with a limit the bar counts what the limit counts: shopper events, not the catalog
    counted: Callable[[list[Event]], int] = (lambda b: sum(not isinstance(e, Item) for e in b)) if limit else len
    # a stream whose shoppers come and go needs no list after a shopper's last visit
    last = None if recording.users_contiguous else last_positions(iter(recording), limit)
    for batch, scored, recommend in _batches(iter(recording), recording, limit, last):
        clock.now = batch[-1].ts
        for ev in batch:
            ours.score(ev, scored)
            for model, pq in others.values():
                pq.score(ev, scored)
            if is_positive(ev):
                counts[ev.item_id] += 1
                for model, _ in others.values():
                    model.learn(ev.user_id, ev.item_id)
        out = await recommender.handle(batch, recommend=recommend)
        if recommend:
            for rec in out.recommendations:
                ours.shown(rec.user_id, [i.item_id for i in rec.items])
                latencies.append(rec.latency_ms)
            for ev in batch:
                if not isinstance(ev, Item) and ev.user_id:
                    for model, pq in others.values():
                        pq.shown(ev.user_id, model.recommend(ev.user_id, k))
        events += len(batch)
        if bar is not None:
            bar.update(counted(batch))
    if bar is not None:
        bar.close()
    report = ours.report()
    out: dict[str, Any] = {"events": events, "test_cases": report["test_cases"],
                           "metrics": report["metrics"], "slices": report["slices"],
                           "periods": report["periods"]}
    if others:
        out["baselines"] = {}
        for name, (_, pq) in others.items():
            r = pq.report()
            out["baselines"][name] = {"metrics": r["metrics"], "test_cases": r["test_cases"],
                                      "slices": r["slices"], "periods": r["periods"]}
    out["latency_ms"] = _percentiles(latencies)
    out["lists"] = len(latencies)
    out["_curves"] = {"ours": ours.over_time(), **{n: pq.over_time() for n, (_, pq) in others.items()}}
    out["_latencies"] = latencies
    out["_popularity"] = {"recommended": [counts.get(i, 0) for i in ours.recommended_counts.elements()][:200_000],
                          "interactions": list(counts.values())}
    return out


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    pick = lambda q: round(s[min(len(s) - 1, int(q * len(s)))], 3)  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": round(s[-1], 3)}


def run_replay(path: str | os.PathLike, fmt: str, k: int = 20, report: str | None = None,
               baselines: bool = False, no_content: bool = False, plot: str | None = None,
               settings: Any = None, limit: int | None = None, progress: bool = True,
               quiet: bool = False, profile: str | None = None,
               layout: CsvLayout | None = None, catalog: CatalogFile | None = None) -> dict[str, Any]:
    """Replay ``path`` (format ``fmt``; ``layout`` for a ``csv`` file; ``catalog``: a
    product catalog kept apart), print a summary, write the report; return it."""
    recording = open_recording(path, fmt, layout, limit, progress=progress and not quiet, catalog=catalog)
    if recording.read_as and not quiet:  # what the reader worked out, before the long part
        print(f"read as {recording.read_as}", file=sys.stderr)
    if recording.malformed.count and not quiet:  # why rows were left out, before the long part
        print(f"{recording.malformed.count:,} malformed rows left out, e.g. "
              + "; ".join(recording.malformed.examples[:3]), file=sys.stderr)
    url = settings.redis_url if settings is not None else os.environ.get("STREAMREC_REDIS_URL", "memory://")
    prefix = settings.key_prefix if settings is not None else ""
    profile = profile or ("sessions" if recording.test_from is not None else "events")
    profile_file = getattr(settings, "profile_file", None)
    # the worker's settings file when one is set (e.g. written by ``streamrec tune``)
    chosen = tuned.load(profile, profile_file) if profile_file else profile
    content = None if no_content else _content_factory(settings)

    async def run() -> dict[str, Any]:
        # store, recommender and replay share one event loop (the Redis client binds to it)
        clock = ReplayClock()
        store = _open_store(url, clock)
        try:
            recommender = build_recommender(chosen, k, store, Keys(prefix), clock, content, settings)
            result = await replay(recording, recommender, clock, k=k, baselines=baselines,
                                  limit=limit, progress=progress, total=recording.total)
            result["sources"] = [s.name for s in recommender.sources]
            return result
        finally:
            await store.close()

    # The in-memory store holds millions of small objects: full garbage collections over
    # them would dominate the run, and the replay creates few reference cycles.
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 1000)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = asyncio.run(run())
    finally:
        gc.set_threshold(*thresholds)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    out: dict[str, Any] = {
        "format": fmt, "k": k, "events": result["events"], "test_cases": result["test_cases"],
        "metrics": result["metrics"], "elapsed_s": round(elapsed, 3),
        "events_per_s": round(result["events"] / elapsed, 1) if elapsed > 0 else 0.0,
        # CPU seconds of this process: the throughput a core gives, whatever else runs
        "cpu_s": round(cpu, 3), "events_per_cpu_s": round(result["events"] / cpu, 1) if cpu > 0 else 0.0,
        "malformed_rows": recording.malformed.count, "skipped_rows": recording.skipped,
        "malformed_examples": recording.malformed.examples, "slices": result["slices"],
        "periods": result["periods"],
        "profile": profile, **({"profile_file": str(profile_file)} if profile_file else {}),
        "store": url.split("://", 1)[0], "content": "content" in result["sources"],
        "sources": result["sources"],
        "latency_ms": result["latency_ms"], "lists": result["lists"],
        **({"read_as": recording.read_as} if recording.read_as else {}),
    }
    if "baselines" in result:
        out["baselines"] = result["baselines"]
    if fmt == "sessions" and "diginetica" in str(path).lower():
        out["published"] = {name: {f"hit_rate@20": hr / 100, "mrr@20": mrr / 100}
                            for name, (hr, mrr) in PUBLISHED_DIGINETICA.items()}
    if report:
        import orjson

        Path(report).write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    if plot:
        from streams.replay_plots import write_plots

        write_plots(plot, out, result)
    if not quiet:
        print(summary_table(out))
    return out


def summary_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table: ours, the baselines and published results."""
    k = report["k"]
    cols = [f"hit_rate@{k}", f"mrr@{k}", f"ndcg@{k}", f"coverage@{k}"]
    rows: list[tuple[str, list[str]]] = [("streamrec", [_pct(report["metrics"].get(c)) for c in cols])]
    for name, b in report.get("baselines", {}).items():
        rows.append((f"baseline: {name}", [_pct(b["metrics"].get(c)) for c in cols]))
    for name, m in report.get("published", {}).items():
        if k == 20:
            rows.append((f"published: {name}", [_pct(m["hit_rate@20"]), _pct(m["mrr@20"]), "", ""]))
    for name, s in report.get("slices", {}).items():
        rows.append((f"slice: {name} ({s['cases']})", [_pct(s.get(c)) for c in cols[:3]] + [""]))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{report['format']}: {report['events']:,} events, {report['test_cases']:,} cases, "
             f"{report.get('lists', 0):,} lists, "
             f"{report['elapsed_s']:.1f} s, {report['events_per_s']:,.0f} events/s "
             f"({report.get('events_per_cpu_s', 0):,.0f} per CPU second), "
             f"{report['malformed_rows']} malformed rows  (metrics in %)",
             "".ljust(width) + "".join(c.rjust(14) for c in cols)]
    lines += [name.ljust(width) + "".join(v.rjust(14) for v in vals) for name, vals in rows]
    lines += period_table(report)
    return "\n".join(lines)


def period_table(report: dict[str, Any]) -> list[str]:
    """Lines of HR@K per calendar period, ours beside each baseline (none for one period).

    >>> r = {"k": 1, "periods": {"unit": "month", "rows": [
    ...     {"period": "2024-01", "cases": 2, "hit_rate@1": 0.5, "mrr@1": 0.5, "bought_before": 1},
    ...     {"period": "2024-02", "cases": 1, "hit_rate@1": 1.0, "mrr@1": 1.0, "bought_before": 0}]}}
    >>> print("\\n".join(period_table(r)))
    by month        cases  bought before  streamrec HR@1  streamrec MRR@1
    2024-01             2         50.00%           50.00            50.00
    2024-02             1          0.00%          100.00           100.00
    """
    periods = report.get("periods") or {}
    rows = periods.get("rows", [])
    if len(rows) < 2:
        return []
    k = report["k"]
    others = {name: {r["period"]: r for r in b.get("periods", {}).get("rows", [])}
              for name, b in report.get("baselines", {}).items()}
    head = ["cases", "bought before", f"streamrec HR@{k}", f"streamrec MRR@{k}"] + [f"{n} HR@{k}" for n in others]
    widths = [max(len(h) + 2, 9) for h in head]
    lines = [f"by {periods['unit']}".ljust(12) + "".join(h.rjust(w) for h, w in zip(head, widths))]
    for r in rows:
        vals = [f"{r['cases']:,}", _pct(r.get("bought_before", 0) / max(r["cases"], 1)) + "%",
                _pct(r[f"hit_rate@{k}"]), _pct(r[f"mrr@{k}"])]
        vals += [_pct(o.get(r["period"], {}).get(f"hit_rate@{k}")) for o in others.values()]
        lines.append(r["period"].ljust(12) + "".join(v.rjust(w) for v, w in zip(vals, widths)))
    return lines


def _pct(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"
