"""Property-based fuzzing of the decode path: nothing crashes, every rejection has a reason
and becomes a dead-letter record. `python -m benchmarks.fuzz` runs the same properties
over 100,000+ inputs."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from models.events import Rejected, parse
from streams.app import Runtime
from streams.settings import Settings
from tests.fuzz_inputs import raw_inputs, topics

RT = Runtime(Settings(redis_url="memory://", content=False, _env_file=None))


def check_one(topic: str, raw: bytes) -> bool:
    """The property: parse never raises; a rejection has a reason and a dead-letter record
    holding the topic, the reason and the raw value. Returns True when rejected."""
    got = parse(topic, raw, now=1_800_000_000.0)
    if isinstance(got, Rejected):
        assert got.reason and isinstance(got.reason, str)
        record = RT.decode(topic, 0, 7, b"k", raw)
        assert isinstance(record, dict)
        assert record["topic"] == topic and record["offset"] == 7 and record["error"]
        assert record["value_bytes"] == len(raw)
        orjson.dumps(record)  # always serialisable for the dead-letter topic
        return True
    assert got.__class__.__name__ in {"Click", "Cart", "Item", "Review", "Feedback", "Forget"}
    return False


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(topics, raw_inputs)
def test_decoders_never_crash_and_always_explain(topic, raw):
    check_one(topic, raw)


def test_deep_nesting_is_rejected_cheaply():
    import time

    raw = b"[" * 60_000 + b"]" * 60_000
    t = time.perf_counter()
    got = parse("clicks", raw)
    assert isinstance(got, Rejected) and "exceeds" in got.reason
    assert time.perf_counter() - t < 0.5  # a length check, not a parse


#: cells a clickstream export may hold, hostile ones among them
_cells = st.one_of(st.text(max_size=30), st.sampled_from(
    ["1700000000", "1700000000123", "2024-01-01T10:00:00Z", "view", "addtocart", "transaction", "fav", "NA",
     "", '"', '""', "\x00", "\r", "\n", ";", "\t", "1e308", "-1", "nan", "x" * 300]))


#: rows of the right shape, so the accepting path runs too
_good_rows = st.tuples(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8),
                       st.sampled_from(["1700000000", "1700000000123", "2024-01-01T10:00:00Z", "2024-01-01"]),
                       st.sampled_from(["view", "addtocart", "transaction", "fav"]),
                       st.sampled_from(["1", "2", ""])).map(list)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(_good_rows, st.lists(_cells, min_size=0, max_size=6)), max_size=20),
       st.sampled_from([",", ";", "\t"]), st.booleans())
def test_csv_reader_never_crashes_and_accounts_for_every_row(tmp_path_factory, rows, delimiter, quote):
    """Any rows under a header: the reader never crashes (a file of nothing but bad rows
    is a clear error naming them), every event it keeps is valid, and no non-blank row is
    lost without a count (kept, skipped or malformed)."""
    import csv
    import io
    import math
    import re

    from streams.readers import LATEST_RECORDED_TS, open_recording

    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, quoting=csv.QUOTE_ALL if quote else csv.QUOTE_MINIMAL)
    writer.writerow(["user_id", "item_id", "timestamp", "event", "quantity"])
    writer.writerows(rows)
    path = tmp_path_factory.mktemp("csv") / "export.csv"
    path.write_text(buf.getvalue() + ("" if quote else "\"tail,without,end\n"), newline="")
    from streams.readers import _sniff_delimiter

    with open(path, newline="") as fh:
        read_back = list(csv.reader(fh, delimiter=_sniff_delimiter(path.read_text()[:65536])))[1:]
    rows_that_count = [r for r in read_back if len(r) >= 5 or any(c.strip() for c in r)]
    try:
        rec = open_recording(path, "csv")
    except ValueError as e:  # no event, only malformed rows (and perhaps skipped ones)
        bad = re.search(r"none of its rows could be read as csv \(([\d,]+) malformed\), e\.g\. export\.csv:\d+: .", str(e))
        assert bad and 1 <= int(bad.group(1).replace(",", "")) <= len(rows_that_count), str(e)
        event("nothing readable")
        return
    events = list(rec)
    assert all(e.user_id and e.item_id and math.isfinite(e.ts) and e.ts <= LATEST_RECORDED_TS for e in events)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    # the same file read as the reader reads it (its sniffed delimiter): every row is an
    # event, skipped or malformed, but for short rows of blank cells (blank lines)
    assert len(events) + rec.skipped + rec.malformed.count == len(rows_that_count)
    event(f"events kept: {min(len(events), 3)}+")
    assert all(x for x in rec.malformed.examples)
