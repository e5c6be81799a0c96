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
