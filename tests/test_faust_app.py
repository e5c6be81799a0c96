"""The Faust app a worker runs: what it leaves on disk."""

from __future__ import annotations

import tempfile
from pathlib import Path

from streams.app import StreamrecApp, create_app
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
