"""The profile breakdown the README's Speed section quotes counts every busy sample once."""

from __future__ import annotations

from benchmarks.profile_share import shares

W = 'process 7:"python -m streams.cli worker"'
RAW = [
    f"{W};run (asyncio/base_events.py:600);SessionKNN.propose (models/candidates/session_knn.py:99) 30",
    f"{W};run (asyncio/base_events.py:600);ContentSource.prepare (models/content/sources.py:150);"
    "ExactIndex.search (models/content/index.py:190) 20",
    f"{W};run (asyncio/base_events.py:600);Handle._run (asyncio/events.py:80) 25",
    f"{W};run (asyncio/base_events.py:600);process (faust/agents/agent.py:698) 10",
    f"{W};WorkerThread.run (mode/threads.py:200);fetch (aiokafka/consumer/fetcher.py:1) 5",
    f"{W};run (asyncio/base_events.py:600);EpollSelector.select (selectors.py:468) 500",
    # uvloop waits in C: the deepest Python frame is the one that started the loop
    f"{W};main (streams/cli.py:106);Worker.execute_from_commandline (mode/worker.py:264) 300",
    f"{W};WorkerThread.run (mode/threads.py:62);ServiceThread._start_thread (mode/threads.py:211) 600",
    f"{W};ingest (models/content/catalog.py:255);TextEncoder.encode (models/content/encoder.py:165) 400",
    'process 8:"python -m streams.bench passthrough";forward (streams/bench.py:230) 99',
]


def test_busy_samples_of_the_worker_only_each_in_one_part():
    parts, inside, busy = shares(RAW, "streams.cli worker")
    assert busy == 90  # idle loops, the catalog's embedding and the other process are left out
    assert sum(parts.values()) == busy
    assert parts["the recommender (models/), with the store calls it makes"] == 50
    assert inside == {"session-kNN": 30, "content and new-item sources": 20}
    assert parts["asyncio event loop"] == 25 and parts["Faust and mode"] == 10
    assert parts["Faust's consumer thread"] == 5
