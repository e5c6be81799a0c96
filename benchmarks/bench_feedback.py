"""Learning from feedback, measured: shoppers who act on what they are shown.

An in-process simulation through ``models.pipeline.Recommender.in_memory()`` (no
broker). The catalog has one category per shopper segment; a shopper of segment ``s``
clicks the first item of category ``s`` in each list it is shown (with probability
``p_click``), otherwise browses on to a random product. Every shown list is reported
as a ``feedback`` impression with its ``rec_id``; a click on a shown item is a
``clicks`` event carrying that ``rec_id``.

Five arms over the same visits (the ranker's ``cat_affinity`` feature, the share of the
shopper's recent items in a candidate's category, is what lets it learn "this segment
clicks this category"):

- ``ignore``: shoppers never act on lists (every click is random browsing);
- ``feedback``: clicks on shown items and impressions are reported;
- ``feedback+negatives``: as ``feedback``, plus a ``dismiss`` for each shown item ranked
  above the clicked one (skip-above), or for the top three of a list with no click;
- ``prior only``: as ``feedback+negatives``, but the model never ranks (the prior blend
  ranks every list; the sources still learn from the clicks): what the model adds;
- ``random clicks``: as ``feedback+negatives``, but the shopper clicks a shown item at
  random, whatever its category: feedback the model cannot rank better from, so it
  must not win its trial.

The model ranks once it has learned its warm-up (500 labels) and won its trial
(interleaved lists, see ``models.ranking``); the first visit it ranked is printed.

Printed: the preferred category's share of shown items per window of visits, the
click-through per window, and CTR per source and model version from the store's CTR
hash; then the same as JSON (``--json PATH`` writes it to a file too).

    python -m benchmarks.bench_feedback [--visits 40] [--seed 7]

Runs repeat exactly with a fixed ``PYTHONHASHSEED`` (string hashing orders some sets
inside the pipeline); across hash seeds the shares move by a few points.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from models.events import Click, Feedback, Item
from models.features.keys import Keys
from models.features.memory import MemoryStore
from models.pipeline import Recommender, RecommenderConfig
from streams.replay import build_recommender

BASE_TS = 1_700_000_000.0
ARMS = ("ignore", "feedback", "feedback+negatives", "prior only", "random clicks")
NEGATIVES = ("feedback+negatives", "prior only", "random clicks")

@dataclass
class Sim:
    categories: int = 4
    items_per_category: int = 12
    shoppers_per_segment: int = 8
    visits: int = 40
    lists_per_visit: int = 3
    p_click: float = 0.8
    p_noise: float = 0.05
    k: int = 10
    windows: int = 5
    seed: int = 7
    #: a tuned profile (``models/tuned.toml``; the worker's default is ``events``), or
    #: None for the pipeline's defaults (session-kNN off, the ranker learning from next clicks)
    profile: str | None = None


@dataclass
class ArmResult:
    arm: str
    share_by_window: list[float] = field(default_factory=list)
    ctr_by_window: list[float] = field(default_factory=list)
    #: Mean reciprocal rank of the first preferred-category item in a shown list.
    mrr_by_window: list[float] = field(default_factory=list)
    lists: int = 0
    shown_items: int = 0
    clicks: int = 0
    ctr: dict[str, Any] = field(default_factory=dict)
    ranker: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    #: the first visit whose lists the model ranked (None: the prior blend ranked them all)
    model_ranks_from: int | None = None


class _Clock:
    def __init__(self) -> None:
        self.now = BASE_TS

    def __call__(self) -> float:
        return self.now


async def run_arm(arm: str, sim: Sim, rec: Recommender | None = None) -> ArmResult:
    """One arm of the simulation (every arm has the same catalog, shoppers and seed);
    ``rec``: the recommender to run it on (e.g. a worker's, on Redis) instead of one
    built from ``sim``."""
    rng = random.Random(sim.seed)
    clock = _Clock()
    if rec is None and sim.profile is None:
        rec = Recommender.in_memory(config=RecommenderConfig(k=sim.k), clock=clock)
    elif rec is None:  # a tuned profile, built as the worker builds it (the text encoder left out)
        rec = build_recommender(sim.profile, sim.k, MemoryStore(), Keys(), clock)
    if arm == "prior only":
        rec.ranker.warmup = 1 << 62
    cats = [f"cat{c}" for c in range(sim.categories)]
    category = {f"{c}-{n}": c for c in cats for n in range(sim.items_per_category)}
    items = list(category)
    await rec.handle([Item(i, f"{category[i]} product {i}", BASE_TS, category=category[i]) for i in items])
    shoppers = [(f"{c}-shopper{n}", c) for c in cats for n in range(sim.shoppers_per_segment)]
    ids = iter(range(1, 1 << 62))
    t0 = time.perf_counter()
    per_window = max(1, sim.visits // sim.windows)
    shares: list[list[float]] = [[] for _ in range(sim.windows)]
    shown_clicks = [[0, 0] for _ in range(sim.windows)]  # clicks, lists
    rr: list[list[float]] = [[] for _ in range(sim.windows)]
    out = ArmResult(arm)

    def event_id() -> str:
        return f"e{next(ids)}"

    for visit in range(sim.visits):
        if rec.ranker.active and out.model_ranks_from is None:
            out.model_ranks_from = visit + 1
        window = min(visit // per_window, sim.windows - 1)
        clock.now = BASE_TS + 3600.0 * (visit + 1)  # a new session every visit
        # every shopper opens the visit with a random product
        pending = {u: Click(event_id(), u, rng.choice(items), clock.now) for u, _ in shoppers}
        for step in range(sim.lists_per_visit):
            clock.now += 30.0
            outcome = await rec.handle(list(pending.values()))
            lists = {r.user_id: r for r in outcome.recommendations}
            feedback: list[Feedback] = []
            nxt: dict[str, Click] = {}
            for user, segment in shoppers:
                r = lists[user]
                shown = [i.item_id for i in r.items]
                out.lists += 1
                shown_clicks[window][1] += 1
                out.shown_items += len(shown)
                if shown:
                    shares[window].append(sum(category[i] == segment for i in shown) / len(shown))
                first = next((n for n, i in enumerate(shown) if category[i] == segment), None)
                rr[window].append(0.0 if first is None else 1.0 / (first + 1))
                if arm != "ignore":
                    feedback.append(Feedback(event_id(), user, r.rec_id, "impression", clock.now))
                choice = None
                if arm != "ignore" and rng.random() < sim.p_click:
                    choice = (rng.choice(shown) if shown else None) if arm == "random clicks" else \
                        next((i for i in shown if category[i] == segment), None)
                if arm != "ignore" and choice is None and shown and rng.random() < sim.p_noise:
                    choice = rng.choice(shown)
                if choice is not None:
                    out.clicks += 1
                    shown_clicks[window][0] += 1
                    nxt[user] = Click(event_id(), user, choice, clock.now + 5, rec_id=r.rec_id)
                    if arm in NEGATIVES:
                        feedback += [Feedback(event_id(), user, r.rec_id, "dismiss", clock.now, item_id=i)
                                     for i in shown[: shown.index(choice)]]
                else:
                    nxt[user] = Click(event_id(), user, rng.choice(items), clock.now + 5)
                    if arm in NEGATIVES:
                        feedback += [Feedback(event_id(), user, r.rec_id, "dismiss", clock.now, item_id=i)
                                     for i in shown[:3]]
            if feedback:
                await rec.handle(feedback, recommend=False)
            pending = nxt
        clock.now += 30.0
        await rec.handle(list(pending.values()), recommend=False)  # the visit's last clicks
    out.seconds = round(time.perf_counter() - t0, 3)
    out.share_by_window = [round(sum(s) / len(s), 4) if s else 0.0 for s in shares]
    out.ctr_by_window = [round(c / n, 4) if n else 0.0 for c, n in shown_clicks]
    out.mrr_by_window = [round(sum(x) / len(x), 4) if x else 0.0 for x in rr]
    [raw] = await rec.store.read([("hgetall", rec.keys.ctr())])
    out.ctr = _ctr(raw)
    rk = rec.ranker
    out.ranker = {"updates": rk.updates, "positives": rk.positives, "active": rk.active, **rk.status()}
    return out


def _ctr(raw: dict[str, str]) -> dict[str, Any]:
    report: dict[str, dict[str, dict[str, float]]] = {"sources": {}, "versions": {}}
    for name, value in raw.items():
        action, what, key = name.split(":", 2)
        group = report["sources" if what == "source" else "versions"]
        entry = group.setdefault(key, {"impression": 0.0, "click": 0.0, "dismiss": 0.0})
        entry[action] = entry.get(action, 0.0) + float(value)
    for group in report.values():
        for entry in group.values():
            entry["ctr"] = round(entry["click"] / entry["impression"], 4) if entry["impression"] else None
    return report


def table(sim: Sim, results: list[ArmResult]) -> str:
    per = max(1, sim.visits // sim.windows)
    heads = [f"v{w * per + 1}-{(w + 1) * per if w < sim.windows - 1 else sim.visits}" for w in range(sim.windows)]
    lines = [f"preferred category's share of shown items (chance = {1 / sim.categories:.2f}), by visits",
             f"{'arm':<22}" + "".join(f"{h:>10}" for h in heads) + f"{'clicks/list':>13}"]
    for r in results:
        lines.append(f"{r.arm:<22}" + "".join(f"{s:>10.3f}" for s in r.share_by_window)
                     + f"{r.clicks / max(1, r.lists):>13.3f}")
    lines.append("")
    lines.append("reciprocal rank of the first preferred-category item in a list, by visits")
    for r in results:
        lines.append(f"{r.arm:<22}" + "".join(f"{s:>10.3f}" for s in r.mrr_by_window))
    lines.append("")
    lines.append("clicks per shown list, by visits")
    for r in results:
        lines.append(f"{r.arm:<22}" + "".join(f"{s:>10.3f}" for s in r.ctr_by_window))
    lines.append("")
    lines.append("CTR per source and model version (store hash: clicks / impressions of shown items)")
    lines.append(f"{'arm':<22}{'source':<14}{'impressions':>12}{'clicks':>9}{'dismissals':>11}{'ctr':>8}")
    for r in results:
        for kind in ("sources", "versions"):
            for name, e in sorted(r.ctr.get(kind, {}).items()):
                ctr = "-" if e["ctr"] is None else f"{e['ctr']:.4f}"
                label = name if kind == "sources" else f"v:{name}"
                lines.append(f"{r.arm:<22}{label:<14}{e['impression']:>12.0f}{e['click']:>9.0f}"
                             f"{e['dismiss']:>11.0f}{ctr:>8}")
    lines.append("")
    lines.append("ranker (trial: clicks on interleaved lists, the model's share of them)")
    for r in results:
        trial = r.ranker["trial"]
        share = "-" if trial["model_share"] is None else f"{trial['model_share']:.3f}"
        lines.append(f"{r.arm:<22}{r.ranker['updates']:>7} labels, {r.ranker['positives']:>5} positive; "
                     f"trial {trial['clicks']:>4} clicks, model {share}; ranks by {r.ranker['ranks_by']}"
                     + (f" since visit {r.model_ranks_from}" if r.model_ranks_from else ""))
    return "\n".join(lines)


async def run(sim: Sim) -> dict[str, Any]:
    results = [await run_arm(arm, sim) for arm in ARMS]
    return {"sim": sim.__dict__, "arms": {r.arm: r.__dict__ for r in results}, "_results": results}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_feedback", description=__doc__.split("\n")[0])
    p.add_argument("--visits", type=int, default=Sim.visits)
    p.add_argument("--shoppers", type=int, default=Sim.shoppers_per_segment, help="per segment")
    p.add_argument("--categories", type=int, default=Sim.categories)
    p.add_argument("--p-click", type=float, default=Sim.p_click)
    p.add_argument("--seed", type=int, default=Sim.seed)
    p.add_argument("--profile", choices=["events", "sessions"], default=None,
                   help="a tuned profile, as the worker builds it (default: the pipeline's defaults)")
    p.add_argument("--json", help="also write the JSON report here")
    a = p.parse_args(argv)
    sim = Sim(visits=a.visits, shoppers_per_segment=a.shoppers, categories=a.categories, p_click=a.p_click,
              seed=a.seed, profile=a.profile)
    report = asyncio.run(run(sim))
    results = report.pop("_results")
    print(table(sim, results))
    text = json.dumps(report, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as fh:
            fh.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
