"""The feedback loop the widget drives, through the in-process pipeline
(``benchmarks.bench_feedback``): impressions and clicks carrying a rec_id are
attributed exactly, and the online ranker learns to move a segment's category up its
lists."""

from __future__ import annotations

from benchmarks.bench_feedback import Sim, run_arm


async def test_impressions_and_clicks_with_rec_id_are_attributed_exactly():
    sim = Sim(visits=6, shoppers_per_segment=2, windows=2)
    r = await run_arm("feedback", sim)
    version = r.ctr["versions"]["streamrec-1"]
    assert r.clicks > 0 and r.lists == 6 * 8 * sim.lists_per_visit
    assert version["impression"] == r.shown_items  # an impression without item_id covers the list
    assert version["click"] == r.clicks
    sources = r.ctr["sources"]
    assert set(sources) >= {"covis", "popular"}
    assert sum(e["click"] for e in sources.values()) >= r.clicks  # an item may have several sources


async def test_feedback_raises_the_segment_category_share():
    sim = Sim(visits=12, shoppers_per_segment=3, windows=3)
    ignored = await run_arm("ignore", sim)
    learned = await run_arm("feedback+negatives", sim)
    chance = 1 / sim.categories
    assert learned.share_by_window[-1] > learned.share_by_window[0] + 0.1
    assert learned.share_by_window[-1] > chance + 0.25
    assert learned.share_by_window[-1] > ignored.share_by_window[-1] + 0.25
    assert learned.ctr["versions"]["streamrec-1"]["dismiss"] > 0 and learned.ranker["active"]
