"""The Faust app a worker runs: what it leaves on disk."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from streams.app import StreamrecApp, create_app, faust_worker
from streams.settings import Settings


def test_faust_data_directory_is_kept_out_of_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = create_app(Settings(redis_url="memory://", content=False, app_id="shop-a", _env_file=None))
    datadir = Path(app.conf.datadir)
    assert datadir.is_absolute() and datadir.is_relative_to(tempfile.gettempdir())
    assert "shop-a" in datadir.name  # one per application id: workers of two apps never share it
    assert not any(tmp_path.iterdir())


def test_an_explicit_data_directory_is_kept():
    app = StreamrecApp("shop-b", broker="kafka://127.0.0.1:1", datadir="/srv/streamrec/faust")
    assert str(app.conf.datadir) == "/srv/streamrec/faust"


def test_a_quiet_worker_keeps_the_root_logger_at_its_level():
    """Faust's worker, at ``warning``, sets the root logger to DEBUG for a terminal
    spinner: every debug call in Faust, aiokafka and mode would then build a record.
    ``faust_worker`` leaves the level alone."""
    from faust.worker import Worker

    def root_level_after_setup(worker) -> int:
        root = logging.Logger("root-under-test", logging.WARNING)
        root.addHandler(logging.NullHandler())
        worker.on_setup_root_logger(root, logging.WARNING)
        return root.level

    app = StreamrecApp("shop-c", broker="kafka://127.0.0.1:1")
    assert root_level_after_setup(Worker(app, loglevel="warning", quiet=True)) == logging.DEBUG  # Faust's own
    assert root_level_after_setup(faust_worker(app, "warning")) == logging.WARNING


def test_a_started_worker_freezes_what_it_built_out_of_the_collectors_reach():
    """``settle_gc`` (called once a worker has started): the objects built so far leave
    every later collection, and the youngest generation waits for the threshold given.
    Run in a child process: freezing is process-wide."""
    import json
    import subprocess
    import sys

    code = ("import gc, json; from streams.app import settle_gc; import streams.cli; "
            "built, default = len(gc.get_objects()), gc.get_threshold()[0]; settle_gc({n}); "
            "print(json.dumps([built, gc.get_freeze_count(), len(gc.get_objects()), default, "
            "gc.get_threshold()[0]]))")

    def settled(n: int) -> list[int]:
        return json.loads(subprocess.run([sys.executable, "-c", code.format(n=n)],
                                         capture_output=True, text=True, check=True).stdout)

    built, frozen, tracked, _, gen0 = settled(10_000)
    assert frozen >= 0.9 * built > 10_000 and tracked < 0.01 * built and gen0 == 10_000
    built, frozen, tracked, default, gen0 = settled(0)
    assert frozen == 0 and tracked >= built and gen0 == default  # 0: Python's defaults


def test_the_worker_consumer_fetches_with_the_configured_wait_and_size():
    """Faust hard-codes a 1.5 s fetch wait for worker consumers; the app's transport
    gives them ``kafka_fetch_max_wait_ms`` and ``kafka_fetch_min_bytes`` instead."""
    import asyncio

    async def consumer_of(settings: Settings):
        app = create_app(settings)
        thread = app.consumer._thread  # Faust's consumer thread, not started
        consumer = thread._create_worker_consumer(app.transport)
        await consumer.stop()  # never started: only closed, so that it does not warn
        return consumer

    base = dict(redis_url="memory://", content=False, kafka_url="kafka://127.0.0.1:1", _env_file=None)
    default = asyncio.run(consumer_of(Settings(app_id="fetch-a", **base)))
    assert (default._fetch_max_wait_ms, default._fetch_min_bytes) == (20, 1)
    tuned = asyncio.run(consumer_of(Settings(app_id="fetch-b", kafka_fetch_max_wait_ms=7,
                                             kafka_fetch_min_bytes=4096, **base)))
    assert (tuned._fetch_max_wait_ms, tuned._fetch_min_bytes) == (7, 4096)


def test_the_worker_consumer_runs_in_the_apps_event_loop_unless_told_otherwise():
    """By default the aiokafka consumer is a service of the worker's own loop (no second
    thread and loop to hand each fetch across); ``kafka_consumer_in_loop=false`` keeps
    Faust's consumer thread with a loop of its own."""
    import asyncio

    async def consumer_thread_of(settings: Settings):
        app = create_app(settings)
        thread = app.consumer._thread
        return thread, thread.thread_loop is thread.parent_loop

    base = dict(redis_url="memory://", content=False, kafka_url="kafka://127.0.0.1:1", _env_file=None)
    thread, same_loop = asyncio.run(consumer_thread_of(Settings(app_id="loop-a", **base)))
    assert same_loop and type(thread).__name__ == "InLoopConsumerThread"
    thread, same_loop = asyncio.run(consumer_thread_of(Settings(app_id="loop-b", kafka_consumer_in_loop=False, **base)))
    assert not same_loop and type(thread).__name__ == "ConsumerThread"
    thread.thread_loop.close()
