"""The feedback loop the widget drives, through the in-process pipeline
(``benchmarks.bench_feedback``): impressions and clicks carrying a rec_id are
attributed exactly, and the online ranker learns to move a segment's category up its
lists."""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize("profile", [None, "events"])  # events: the worker's default profile
async def test_feedback_raises_the_segment_category_share(profile):
    """The model learns from feedback, wins its trial on interleaved lists, and ranks:
    the preferred category climbs far above what the same feedback does under the prior."""
    sim = Sim(visits=24, shoppers_per_segment=6, windows=3, profile=profile)
    ignored = await run_arm("ignore", sim)
    learned = await run_arm("feedback+negatives", sim)
    prior = await run_arm("prior only", sim)
    chance = 1 / sim.categories
    assert learned.share_by_window[-1] > learned.share_by_window[0] + 0.1
    assert learned.share_by_window[-1] > chance + 0.25
    assert learned.share_by_window[-1] > ignored.share_by_window[-1] + 0.25
    assert learned.ctr["versions"]["streamrec-1"]["dismiss"] > 0
    assert learned.ranker["ranks_by"] == "model" and learned.ranker["trial"]["model_share"] > 0.6
    assert learned.model_ranks_from is not None and learned.model_ranks_from < sim.visits
    assert prior.ranker["ranks_by"] == "prior blend"
    assert learned.share_by_window[-1] > prior.share_by_window[-1] + 0.25  # the model's doing, not the sources'


async def test_the_model_does_not_take_over_when_clicks_say_nothing():
    """Shoppers who click shown items at random teach the model labels but give it no
    edge on interleaved lists: the prior blend keeps ranking."""
    sim = Sim(visits=24, shoppers_per_segment=6, windows=3, profile="events")
    r = await run_arm("random clicks", sim)
    assert r.ranker["labels"] > 5000 and r.ranker["trial"]["clicks"] >= 200
    assert r.ranker["ranks_by"] == "prior blend" and r.model_ranks_from is None


async def test_the_worker_model_takes_over_on_redis(redis_url, prefix):
    """The recommender a worker builds (default settings: the events profile, Redis, the
    item-side cache) learns from the feedback, wins its trial and ranks; its gauges say so."""
    from streams.app import Runtime
    from streams.settings import Settings

    rt = Runtime(Settings(redis_url=redis_url, key_prefix=prefix, content=False, _env_file=None))
    try:
        r = await run_arm("feedback+negatives", Sim(visits=24, shoppers_per_segment=6, windows=3),
                          rec=rt.recommender)
    finally:
        await rt.store.close()
    assert r.ranker["ranks_by"] == "model" and r.model_ranks_from is not None
    assert r.share_by_window[-1] > r.share_by_window[0] + 0.15
    rt.metrics.export_ranker(rt.recommender.ranker)
    sample = rt.metrics.registry.get_sample_value
    assert sample("streamrec_ranker_model_ranks") == 1.0 and sample("streamrec_ranker_trial_clicks") >= 100
    assert sample("streamrec_ranker_trial_model_share") > 0.6
