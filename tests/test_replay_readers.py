"""Readers of recorded streams, on small files written here (malformed rows included)."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import orjson
import pytest

from models.events import Cart, Click, Item
from streams.readers import BASE_TS, open_recording, reconstruct_sessions

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def augment(session: list[str]) -> list[str]:
    """The published test-file layout: prefixes from the longest to the shortest."""
    return [" ".join(session[:i]) + "\t" + session[i] for i in range(len(session) - 1, 0, -1)]


def test_reconstruction_rebuilds_every_session_and_case():
    sessions = [["1", "2", "3", "4"], ["5", "6"], ["7", "7", "8"], ["9", "1", "9"], ["2", "3"]]
    lines = [line for s in sessions for line in augment(s)]
    assert list(reconstruct_sessions(lines)) == sessions


def test_reconstruction_separates_a_session_that_looks_like_a_continuation():
    # "1 2 -> 3" followed by a new session "1 -> 2" would read as one session ...
    # ... unless the previous one already reached its shortest prefix.
    lines = augment(["1", "2", "3"]) + augment(["1", "2"])
    assert list(reconstruct_sessions(lines)) == [["1", "2", "3"], ["1", "2"]]


def test_sessions_replay_is_leak_free_and_train_comes_first(tmp_path: Path):
    (tmp_path / "train.txt").write_text("1 2 3\n4 5\n\n")
    sessions = [["1", "2", "3", "4"], ["5", "1"]]
    (tmp_path / "test.txt").write_text("\n".join(l for s in sessions for l in augment(s)) + "\nbad line\n")
    rec = open_recording(tmp_path, "sessions")
    events = list(rec)
    assert rec.malformed.count == 1 and "prefix<TAB>target" in rec.malformed.examples[0]
    assert rec.test_cases == 4 and rec.total == len(events) == 5 + 6
    assert all(isinstance(e, Click) for e in events)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    train = [e for e in events if e.ts < rec.test_from]
    test = [e for e in events if e.ts >= rec.test_from]
    assert [e.item_id for e in train] == ["1", "2", "3", "4", "5"]
    # Each test session is its own user, clicks in order: a target comes after its prefix.
    by_user = {u: [e.item_id for e in g] for u, g in itertools.groupby(test, key=lambda e: e.user_id)}
    assert list(by_user.values()) == sessions
    assert len({e.user_id for e in events}) == 4
    assert all(e.session_id == e.user_id for e in events)


def test_session_tsv(tmp_path: Path):
    (tmp_path / "train.tsv").write_text("SessionId\tItemId\tTime\n1\t10\t100\n1\t11\t101\n2\t10\t90\n2\tx\n")
    (tmp_path / "test.tsv").write_text("SessionId\tItemId\tTime\n3\t10\t200\n3\t11\t201\n3\t12\t202\n4\t11\t150\n")
    rec = open_recording(tmp_path, "session-tsv")
    events = list(rec)
    assert rec.malformed.count == 1
    assert [e.item_id for e in events] == ["10", "10", "11", "11", "10", "11", "12"]
    assert rec.test_cases == 2
    assert all(e.ts >= BASE_TS for e in events)
    test = [e for e in events if e.ts >= rec.test_from]
    assert [e.user_id for e in test] == ["te:4", "te:3", "te:3", "te:3"]
    assert max(e.ts for e in events if e.ts < rec.test_from) < min(e.ts for e in test)


def test_taobao_sorts_maps_and_counts(tmp_path: Path):
    f = tmp_path / "UserBehavior.csv"
    f.write_text("1,100,7,pv,1511544070\n1,101,7,buy,1511544010\n2,100,7,cart,1511544050\n"
                 "2,100,7,fav,1511544060\n3,102,7,teleport,1511544000\n3,102,7\n4,100,7,pv,notatime\n")
    rec = open_recording(f, "taobao")
    events = list(rec)
    assert [(type(e).__name__, getattr(e, "action", None), e.item_id) for e in events] == [
        ("Cart", "purchase", "101"), ("Cart", "add", "100"), ("Click", None, "100")]
    assert rec.malformed.count == 3 and rec.skipped == 1
    assert open_recording(tmp_path, "taobao").total == 3  # a folder holding the file works too


def test_online_retail_catalog_ahead_then_purchases(tmp_path: Path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    t0 = dt.datetime(2011, 1, 5, 10, 0)
    table = pa.table({
        "InvoiceNo": ["1", "1", "C2", "3", "4", None, "5", "6"],
        "StockCode": ["A", "B", "A", "A", "B", "A", "A", "C"],
        "Description": ["MUG", None, "MUG", "MUG", "BOWL", "MUG", "?", None],
        "Quantity": [2, 1, -2, 1, 3, 1, 1, 1],
        "InvoiceDate": [t0, t0, t0, t0 + dt.timedelta(hours=1), t0 - dt.timedelta(hours=1), t0,
                        t0 - dt.timedelta(hours=2), t0],
        "UnitPrice": [1.5, 2.0, 1.5, 1.5, 2.0, 1.5, 1.0, 3.0],
        "CustomerID": [17850.0, 17850.0, 17850.0, None, 12.0, 1.0, 7.0, 7.0],
        "Country": ["UK"] * 8,
    })
    path = tmp_path / "retail.parquet"
    pq.write_table(table, path)
    rec = open_recording(path, "online-retail")
    events = list(rec)
    kinds = [(type(e).__name__, e.item_id, getattr(e, "user_id", "")) for e in events]
    # The whole catalog first (in order of first sale), then the purchases by time; 'C'
    # has no title anywhere, so it is sold but never published.
    assert kinds == [("Item", "A", ""), ("Item", "B", ""), ("Cart", "A", "c7"), ("Cart", "B", "c12"),
                     ("Cart", "A", "c17850"), ("Cart", "B", "c17850"), ("Cart", "C", "c7"),
                     ("Cart", "A", "guest-3")]
    start = events[2].ts
    assert all(e.ts == start for e in events[:2])  # published when the stream starts
    # the most frequent title wins over the '?' of the first sale; the price is the first sale's
    assert (events[0].title, events[0].price) == ("MUG", 1.0)
    assert events[1].title == "BOWL" and events[3].quantity == 3
    assert rec.malformed.count == 1 and rec.skipped == 1 and rec.total == len(events)
    assert all(isinstance(e, (Item, Cart)) for e in events)


def test_jsonl_validates_sorts_and_counts(tmp_path: Path):
    lines = [
        {"topic": "clicks", "value": {"event_id": "e2", "user_id": "u", "item_id": "b", "ts": 1.7e9 + 5}},
        {"topic": "clicks", "value": {"event_id": "e1", "user_id": "u", "item_id": "a", "ts": 1.7e9}},
        {"topic": "carts", "value": {"event_id": "e3", "user_id": "u", "item_id": "a", "action": "steal", "ts": 1.7e9}},
        {"topic": "items", "value": orjson.dumps({"item_id": "a", "title": "Mug", "ts": 1.7e9 + 1}).decode()},
        {"value": {}},
    ]
    text = "\n".join(orjson.dumps(x).decode() for x in lines) + "\n{not json\n"
    (tmp_path / "s.jsonl").write_text(text)
    rec = open_recording(tmp_path / "s.jsonl", "jsonl")
    assert [e.event_id for e in rec] == ["e1", "item:a:1700000001.0", "e2"]
    assert rec.malformed.count == 3
    assert any("action" in x for x in rec.malformed.examples)


def test_unknown_format_and_missing_path(tmp_path: Path):
    with pytest.raises(ValueError):
        open_recording(tmp_path, "csv")
    with pytest.raises(FileNotFoundError):
        open_recording(tmp_path / "nope", "jsonl")


def test_diginetica_reconstruction_matches_the_published_case_count():
    folder = SHARED / "diginetica"
    if not (folder / "test.txt").exists():
        pytest.skip(f"recorded data not found at {folder} (a fresh clone has no ../shared/data)")
    rec = open_recording(folder, "sessions")
    assert rec.malformed.count == 0
    assert rec.test_cases == 60_858
    # Every line of the file is exactly one (prefix, target) of a reconstructed session.
    with open(folder / "test.txt") as fh:
        expected = sorted(fh.read().splitlines())
    with open(folder / "test.txt") as fh:
        rebuilt = sorted(line for s in reconstruct_sessions(fh) for line in augment(s))
    assert rebuilt == expected
