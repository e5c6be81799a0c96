"""Readers of recorded streams, on small files written here (malformed rows included)."""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import time
from pathlib import Path

import orjson
import pytest

from models.events import Cart, Click, Item
from streams.readers import BASE_TS, CsvLayout, open_recording, reconstruct_sessions

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
        "Description": ["MUG", None, "MUG", "MUG", "BOWL", "MUG", "?", "nan"],  # pandas' null text
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
    # has no title anywhere ('nan' is pandas' null), so it is sold but never published.
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
    with pytest.raises(ValueError, match="unknown format"):
        open_recording(tmp_path, "xml")
    with pytest.raises(ValueError, match="one file"):
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


# -- csv: clickstream exports of other shapes (the rows are written here) -----------------

def test_csv_finds_columns_and_actions_by_name_and_reads_milliseconds(tmp_path: Path):
    # a web-analytics export's shape: epoch milliseconds, visitor ids, named events
    (tmp_path / "events.csv").write_text(
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,v1,view,355908,\n"
        "1433221999827,v1,addtocart,355908,\n"
        "1433221300000,v2,view,248676,\n"
        "1433222147345,v1,transaction,355908,7\n"
        "1433221300000,v2,like,248676,\n"         # a favourite: skipped, counted
        "1433221300000,v2,view,,\n"               # no item: the validation step rejects it
        "1433221300000,v2,refund,248676,\n"       # an action nobody mapped
        "nonsense,v2,view,248676,\n"
        "1433221300000,v2\n")
    rec = open_recording(tmp_path / "events.csv", "csv")
    events = list(rec)
    assert [(type(e).__name__, e.user_id, e.item_id, getattr(e, "action", None)) for e in events] == [
        ("Click", "v2", "248676", None), ("Click", "v1", "355908", None),
        ("Cart", "v1", "355908", "add"), ("Cart", "v1", "355908", "purchase")]
    assert events[0].ts == 1433221300.0 and events[1].ts == 1433221332.117
    assert rec.read_as == "events.csv: user=visitorid, item=itemid, time=timestamp, action=event; delimiter ','; not in time order: sorted in memory"
    assert rec.skipped == 1 and rec.total == 4
    assert rec.malformed.count == 4
    reasons = " | ".join(rec.malformed.examples)
    assert "item_id" in reasons and "unknown action 'refund'" in reasons
    assert "neither a number nor ISO 8601" in reasons and "expected at least 4 fields" in reasons


def test_csv_without_a_header_by_position_with_iso_times_and_sessions(tmp_path: Path):
    # a session log's shape: no header, no user, ISO times with a zone, one click per row
    (tmp_path / "clicks.dat").write_text(
        "1,2014-04-07T10:51:09.277Z,214536502,0\n"
        "1,2014-04-07T10:54:09.868Z,214536500,0\n"
        "2,2014-04-07T10:52:00+02:00,214662742,0\n")
    rec = open_recording(tmp_path / "clicks.dat", "csv", CsvLayout.parse("session=0,time=1,item=2"))
    events = list(rec)
    assert [(e.user_id, e.session_id, e.item_id) for e in events] == [
        ("2", "2", "214662742"), ("1", "1", "214536502"), ("1", "1", "214536500")]
    assert events[1].ts == dt.datetime(2014, 4, 7, 10, 51, 9, 277000, tzinfo=dt.timezone.utc).timestamp()
    assert events[0].ts == dt.datetime(2014, 4, 7, 8, 52, tzinfo=dt.timezone.utc).timestamp()
    assert rec.malformed.count == 0
    assert rec.read_as == "clicks.dat: item=2, time=1, session=0; delimiter ','; not in time order: sorted in memory"


def test_csv_sniffs_the_delimiter_and_takes_named_columns_and_actions(tmp_path: Path):
    (tmp_path / "log.csv").write_text(
        "\ufeffWhen;Shopper;SKU;What;Qty\n"      # a spreadsheet's byte-order mark, semicolons
        "2023-05-01 10:00:00;ann;mug;seen;1\n"
        "2023-05-01 10:01:00;ann;mug;basket;2\n"
        "2023-05-01 10:02:00;ann;mug;paid;2.0\n"
        "2023-05-01 10:03:00;ann;mug;paid;-1\n"
        "2023-05-01 10:04:00;ann;mug;paid;lots\n")
    layout = CsvLayout.parse("time=When,user=shopper,item=SKU,action=what,quantity=qty", "seen=click,paid=purchase")
    rec = open_recording(tmp_path / "log.csv", "csv", layout)
    events = list(rec)
    assert [(type(e).__name__, getattr(e, "action", ""), getattr(e, "quantity", 0)) for e in events] == [
        ("Click", "", 0), ("Cart", "add", 2), ("Cart", "purchase", 2)]
    assert rec.malformed.count == 2 and all("quantity" in x for x in rec.malformed.examples)


def test_csv_nulls_star_actions_and_day_dates(tmp_path: Path):
    # a views export: semicolons, NA for anonymous shoppers, day dates only
    (tmp_path / "views.csv").write_text(
        "sessionId;userId;itemId;timeframe;eventdate\n"
        "1;NA;81766;526309;2016-05-09\n"
        "1;NA;31331;1031018;2016-05-09\n"
        "2;278;32118;243569;2016-05-08\n")
    layout = CsvLayout.parse("session=sessionId,user=userId,item=itemId,time=eventdate")
    events = list(open_recording(tmp_path / "views.csv", "csv", layout))
    assert [(e.user_id, e.session_id, e.item_id) for e in events] == [
        ("278", "2", "32118"), ("1", "1", "81766"), ("1", "1", "31331")]  # by day, then file order
    # an orders file: no action column, every row a purchase ('*'), quantities
    (tmp_path / "buys.dat").write_text("11,2014-04-06T18:44:58.314Z,214803,0,3\n11,2014-04-06T18:44:58.325Z,214803,0,NA\n")
    rec = open_recording(tmp_path / "buys.dat", "csv", CsvLayout.parse("session=0,time=1,item=2,quantity=4", "*=purchase"))
    assert [(e.action, e.quantity) for e in rec] == [("purchase", 3), ("purchase", 1)]
    # a column found by name that is not what it seems is left out with '-'
    (tmp_path / "typed.csv").write_text("user,item,ts,category\nu,a,1700000000," + "x" * 600 + "\n")
    with pytest.raises(ValueError, match=r"none of its rows could be read as csv \(1 malformed\).*category: longer"):
        open_recording(tmp_path / "typed.csv", "csv")  # its only row's category is too long
    rec = open_recording(tmp_path / "typed.csv", "csv", CsvLayout.parse("category=-"))
    assert [e.item_id for e in rec] == ["a"] and rec.malformed.count == 0
    # '*' beside an action column: every value not mapped otherwise
    (tmp_path / "mixed.csv").write_text("user,item,ts,event\nu,a,1700000000,view\nu,b,1700000001,share\n")
    rec = open_recording(tmp_path / "mixed.csv", "csv", CsvLayout.parse(None, "*=skip"))
    assert [e.item_id for e in rec] == ["a"] and rec.skipped == 1 and rec.malformed.count == 0


def test_csv_with_titles_publishes_the_catalog_first_and_reads_a_time_format(tmp_path: Path):
    # an invoice export's shape: US dates, product names and prices on every line
    (tmp_path / "invoices.csv").write_text(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "536365,85123A,WHITE HANGING HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom\n"
        "536366,22633,HAND WARMER,6,12/1/2010 8:28,1.85,17850,United Kingdom\n"
        "536367,85123A,?,2,12/1/2010 8:34,2.75,13047,United Kingdom\n"
        "536368,85123A,WHITE HANGING HEART,1,12/1/2010 8:40,2.95,13047,United Kingdom\n"
        "C536379,22633,HAND WARMER,-1,12/1/2010 9:41,1.85,14527,United Kingdom\n"
        "536370,22728,ALARM CLOCK,3,12/1/2010 8:45,free,12583,France\n"
        "536371,22729,,4,2010-12-01 08:50,3.75,12583,France\n")
    layout = CsvLayout.parse("user=CustomerID,item=StockCode,title=Description,time=InvoiceDate,"
                             "quantity=Quantity,price=UnitPrice", "*=purchase", time_format="%m/%d/%Y %H:%M")
    rec = open_recording(tmp_path / "invoices.csv", "csv", layout)
    events = list(rec)
    catalog, carts = events[:2], events[2:]
    start = dt.datetime(2010, 12, 1, 8, 26, tzinfo=dt.timezone.utc).timestamp()
    # items with a title, in order of first sighting, at the stream's start; the most
    # frequent title wins over a '?'; the first sighting's price; no title, no entry
    assert [(i.item_id, i.title, i.price, i.ts) for i in catalog] == [
        ("85123A", "WHITE HANGING HEART", 2.55, start), ("22633", "HAND WARMER", 1.85, start)]
    assert all(isinstance(i, Item) for i in catalog)
    assert [(c.user_id, c.item_id, c.action, c.quantity) for c in carts] == [
        ("17850", "85123A", "purchase", 6), ("17850", "22633", "purchase", 6), ("13047", "85123A", "purchase", 2),
        ("13047", "85123A", "purchase", 1), ("12583", "22729", "purchase", 4)]
    assert rec.total == len(events) and rec.malformed.count == 2
    reasons = " | ".join(rec.malformed.examples)
    assert "quantity" in reasons and "price: 'free' is not a number" in reasons
    # an ISO time still reads with a time format given; a time neither reads says which it expected
    (tmp_path / "bad.csv").write_text("user,item,time\nu,i,1st of May\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: time '1st of May' is neither a number nor the time format '%d/%m/%Y'"):
        open_recording(tmp_path / "bad.csv", "csv", CsvLayout.parse(time_format="%d/%m/%Y"))


def test_csv_rejects_what_it_cannot_read_with_a_clear_error(tmp_path: Path):
    f = tmp_path / "x.csv"
    f.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match=r"no column found for user \(or session\), item, time.*--columns"):
        open_recording(f, "csv")
    with pytest.raises(ValueError, match="no column 'when' for time"):
        open_recording(f, "csv", CsvLayout.parse("user=a,item=b,time=when"))
    f.write_text("")
    with pytest.raises(ValueError, match="empty"):
        open_recording(f, "csv")
    with pytest.raises(ValueError, match="not both"):
        CsvLayout.parse("user=0,item=b")
    with pytest.raises(ValueError, match="click, add, remove, purchase, skip"):
        CsvLayout.parse(None, "view=look")
    with pytest.raises(ValueError, match="csv format"):
        open_recording(f, "jsonl", CsvLayout())
    with pytest.raises(ValueError, match="strptime format"):
        CsvLayout.parse(time_format="dd/mm/yyyy")


def test_a_spreadsheets_encoding_is_named_by_the_error_and_read_with_it(tmp_path: Path, capsys):
    """Exports saved by a spreadsheet on Windows are cp1252, not UTF-8: the error says
    which file and what to give, and ``--encoding`` reads them, a catalog file too."""
    from streams.cli import main
    from streams.readers import CatalogFile

    f = tmp_path / "export.csv"
    f.write_bytes("timestamp,visitorid,event,itemid,title\n2024-01-01T10:00:00,u1,view,A,Café crème\n"
                  "2024-01-01T10:01:00,u2,view,B,Thé – vert\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"export.csv:2: not UTF-8 text \(byte b'\\xe9'\); "
                                         r"give the file's encoding with --encoding, e.g. --encoding cp1252"):
        open_recording(f, "csv")
    with pytest.raises(ValueError, match="export.csv:2: not UTF-8 text"):  # also with nothing to sniff
        open_recording(f, "csv", CsvLayout.parse(delimiter=","))
    rec = open_recording(f, "csv", CsvLayout.parse(encoding="cp1252"))
    assert [(e.item_id, e.title) for e in rec if isinstance(e, Item)] == [("A", "Café crème"), ("B", "Thé – vert")]
    # a bad byte past the sniffed start is found where the reading meets it
    long = tmp_path / "long.csv"
    long.write_bytes(b"ts,user,item\n" + b"".join(b"%d,u%d,i%d\n" % (1_700_000_000 + n, n % 7, n % 11)
                                                   for n in range(5000)) + "1700009999,u1,Café\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"long.csv:5002: not UTF-8 text \(byte b'\\xe9'\)"):
        open_recording(long, "csv")
    catalog = tmp_path / "articles.csv"
    catalog.write_bytes("item,title\nA,Café crème\n".encode("cp1252"))
    with pytest.raises(ValueError, match="articles.csv:2: not UTF-8 text"):
        open_recording(f, "csv", CsvLayout.parse(encoding="cp1252"), catalog=CatalogFile.parse(catalog))
    rec = open_recording(f, "csv", CsvLayout.parse(encoding="cp1252"), catalog=CatalogFile.parse(catalog, encoding="cp1252"))
    assert next(iter(rec)).title == "Café crème"
    with pytest.raises(ValueError, match="unknown encoding 'klingon'"):
        CsvLayout.parse(encoding="klingon")
    # the command line: one --encoding for the recording and its catalog file
    args = ["replay", str(f), "--format", "csv", "--no-content", "--report", str(tmp_path / "r.json")]
    assert main(args) == 2 and "--encoding cp1252" in capsys.readouterr().err
    assert main([*args, "--encoding", "cp1252", "--catalog", str(catalog)]) == 0
    assert orjson.loads((tmp_path / "r.json").read_bytes())["events"] == 2 + 2  # A from the file, B from the rows
    assert main([*args[:3], "sessions", "--encoding", "cp1252"]) == 2
    assert "--encoding is a csv recording's or a --catalog file's" in capsys.readouterr().err


def test_csv_hostile_rows_are_malformed_never_fatal(tmp_path: Path):
    rows = ["user,item,ts,action",
            "u1,i1,1700000000,click",
            "u1," + "x" * 5000 + ",1700000001,click",  # an oversized id
            "u1,i2,99,click",  # an absurd time
            "u1,i3,inf,click",
            "u1,i4,1e308,click",
            ",i5,1700000002,click",
            "u1,i6,1700000003,\x00",
            '"u1,' + "y" * 200_000 + ',1700000004,click',  # past the csv module's field limit
            "u1,i8,1700000005,click",  # read on after it
            '"u1,i9,1700000006,click',  # an unclosed quote swallows the rest as one field
            "u1,i10,1700000007,click"]
    (tmp_path / "h.csv").write_text("\n".join(rows) + "\n")
    rec = open_recording(tmp_path / "h.csv", "csv")
    assert [e.item_id for e in rec] == ["i1", "i8"]
    assert rec.malformed.count == 8
    (tmp_path / "big.csv").write_text("\n".join([rows[0], rows[8], rows[9]]) + "\n")
    rec = open_recording(tmp_path / "big.csv", "csv")
    assert [e.item_id for e in rec] == ["i8"] and rec.malformed.count == 1
    assert "unreadable row" in rec.malformed.examples[0] and "field limit" in rec.malformed.examples[0]


def test_csv_reads_common_public_exports_by_their_own_names(tmp_path: Path):
    # a multi-category store's export: times with a zone name, the session as user_session
    (tmp_path / "2019-Oct.csv").write_text(
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d7\n"
        "2019-10-01 00:00:01 UTC,cart,1307067,2053013558920217191,computers.notebook,lenovo,251.74,550050854,7c90\n"
        "2019-10-01 00:00:05 UTC,remove_from_cart,1307067,2053013558920217191,computers.notebook,lenovo,251.74,550050854,7c90\n"
        "2019-10-01 00:00:09 UTC,purchase,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd\n")
    rec = open_recording(tmp_path / "2019-Oct.csv", "csv")
    assert [(type(e).__name__, e.user_id, getattr(e, "action", None) or e.session_id) for e in rec] == [
        ("Click", "541312140", "72d7"), ("Cart", "550050854", "add"), ("Cart", "550050854", "remove"),
        ("Cart", "535871217", "purchase")]
    assert [e.ts for e in rec][-1] == dt.datetime(2019, 10, 1, 0, 0, 9, tzinfo=dt.timezone.utc).timestamp()
    assert rec.read_as.startswith("2019-Oct.csv: user=user_id, item=product_id, time=event_time, action=event_type, "
                                  "session=user_session, category=category_id, price=price")
    # it has no titles: brand and category text can make them (and so the catalog)
    rec = open_recording(tmp_path / "2019-Oct.csv", "csv", CsvLayout.parse("title=brand+category_code,category=category_code"))
    assert [(e.item_id, e.title, e.category, e.price) for e in rec if isinstance(e, Item)] == [
        ("44600062", "shiseido", None, 35.79), ("1307067", "lenovo computers.notebook", "computers.notebook", 251.74),
        ("1004237", "apple electronics.smartphone", "electronics.smartphone", 1081.98)]
    assert "title=brand+category_code, category=category_code" in rec.read_as
    with pytest.raises(ValueError, match="only title and category may join columns"):
        CsvLayout.parse("user=user_id+user_session")
    with pytest.raises(ValueError, match="no column 'model' for title"):
        open_recording(tmp_path / "2019-Oct.csv", "csv", CsvLayout.parse("title=brand+model"))
    # an online shop's invoices: stock codes, invoice dates, HTTP dates with their zone
    (tmp_path / "invoices.csv").write_text(
        "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID\n"
        "489434,85048,CHRISTMAS LIGHTS,12,\"Tue, 01 Dec 2009 07:45:00 GMT\",6.95,13085\n"
        "489434,79323P,PINK CHERRY LIGHTS,12,\"Tue, 01 Dec 2009 09:45:00 +0100\",6.75,13085\n")
    rec = open_recording(tmp_path / "invoices.csv", "csv", CsvLayout.parse("title=Description", "*=purchase"))
    assert [(type(e).__name__, e.item_id, e.ts) for e in rec] == [
        ("Item", "85048", 1259653500.0), ("Item", "79323P", 1259653500.0),
        ("Cart", "85048", 1259653500.0), ("Cart", "79323P", 1259653500.0 + 3600)]


#: (file, its first lines, the flags docs/replay.md gives it, how it reads, the events,
#: whether --limit 1 stops its first read: it does unless a title column makes a catalog)
PUBLIC_EXPORTS = [
    ("events.csv",  # RetailRocket
     "timestamp,visitorid,event,itemid,transactionid\n1433221332117,257597,view,355908,\n"
     "1433224214164,992329,addtocart,248676,\n1433224215164,992329,transaction,248676,4000\n",
     (None, None), "user=visitorid, item=itemid, time=timestamp, action=event",
     [("Click", "257597", "355908"), ("Cart", "992329", "248676"), ("Cart", "992329", "248676")], True),
    ("yoochoose-clicks.dat",  # YOOCHOOSE: session, ISO time, item, category; no header
     "1,2014-04-07T10:51:09.277Z,214536502,0\n1,2014-04-07T10:54:09.868Z,214577561,0\n",
     ("session=0,time=1,item=2", None), "item=2, time=1, session=0",
     [("Click", "1", "214536502"), ("Click", "1", "214577561")], True),
    ("transactions_train.csv",  # H&M: every row a purchase, a day's date
     "t_dat,customer_id,article_id,price,sales_channel_id\n2018-09-20,00005,0663713001,0.0508,2\n"
     "2018-09-21,00007,0541518023,0.0305,2\n",
     (None, "*=purchase"), "user=customer_id, item=article_id, time=t_dat, price=price",
     [("Cart", "00005", "0663713001"), ("Cart", "00007", "0541518023")], True),
    ("online_retail_II.csv",  # UCI Online Retail II: a return is malformed, a guest is the invoice
     "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n"
     "489434,85048,GLASS BALL 20 LIGHTS,12,2009-12-01 07:45:00,6.95,13085,United Kingdom\n"
     "C489449,22087,PAPER BUNTING,-12,2009-12-01 10:33:00,2.95,16321,Australia\n"
     "489435,22350,CAT BOWL ,12,2009-12-01 07:46:00,2.55,,United Kingdom\n",
     ("title=Description,session=Invoice", "*=purchase"),
     "user=Customer ID, item=StockCode, time=InvoiceDate, session=Invoice, quantity=Quantity, title=Description, price=Price",
     [("Item", "", "85048"), ("Item", "", "22350"), ("Cart", "13085", "85048"), ("Cart", "489435", "22350")], False),
]


@pytest.mark.parametrize("name, text, flags, read_as, events, stops", PUBLIC_EXPORTS, ids=[e[0] for e in PUBLIC_EXPORTS])
def test_public_exports_read_with_the_flags_the_docs_give(tmp_path: Path, name, text, flags, read_as, events, stops):
    (tmp_path / name).write_text(text)
    rec = open_recording(tmp_path / name, "csv", CsvLayout.parse(*flags))
    assert rec.read_as.startswith(f"{name}: {read_as}; delimiter ','")
    assert [(type(e).__name__, getattr(e, "user_id", ""), e.item_id) for e in rec] == events
    assert rec.malformed.count == ("online_retail_II" in name)  # the return
    # a price without a title makes no catalog: --limit stops the first read there
    limited = open_recording(tmp_path / name, "csv", CsvLayout.parse(*flags), limit=1)
    assert limited.read_as.endswith("; read up to --limit 1") == stops
    assert limited.total == (1 if stops else len(events))


def test_a_time_ordered_export_is_read_again_on_each_pass_not_held_in_memory(tmp_path: Path, monkeypatch):
    import gc
    import random
    import tempfile
    import tracemalloc

    from streams import readers

    rows = [f"{1_700_000_000 + n // 3},u{n % 997},view,i{n % 1_499},title {n % 1_499},c{n % 7}" for n in range(20_000)]
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    (tmp_path / "spill").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "spill"))
    peaks, streams, notes = {}, {}, {}
    for name, body, run_rows in (("ordered", rows, None), ("shuffled", shuffled, None), ("spilled", shuffled, 3_000)):
        path = tmp_path / f"{name}.csv"
        path.write_text("timestamp,visitorid,event,itemid,title,category\n" + "\n".join(body) + "\n")
        monkeypatch.setattr(readers, "SORT_RUN_ROWS", run_rows or 500_000)
        monkeypatch.setattr(readers, "_RUN_BATCH", 200)  # a merge holds a batch of each run
        tracemalloc.start()
        try:
            rec = open_recording(path, "csv")
            assert sum(1 for _ in rec) == 21_499
            peaks[name] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        streams[name] = [(type(e).__name__, e.item_id, e.ts, getattr(e, "user_id", "")) for e in rec]
        # a second pass gives the same events again
        assert [(type(e).__name__, e.item_id, e.ts, getattr(e, "user_id", "")) for e in rec] == streams[name]
        assert rec.total == 20_000 + 1_499 and "1,499 catalog items" in rec.read_as
        notes[name] = rec.read_as.rsplit("catalog items", 1)[1]
        del rec
    assert notes == {"ordered": "", "shuffled": "; not in time order: sorted in memory",
                     "spilled": "; not in time order: sorted in 7 runs on disk"}
    # the same events every way: the same catalog first, then the rows by time (ties in
    # file order: the shuffled file's ties come in another order)
    assert sorted(streams["ordered"][:1_499]) == sorted(streams["shuffled"][:1_499])
    assert {e[0] for e in streams["ordered"][:1_499]} == {"Item"}
    assert sorted(streams["ordered"][1_499:], key=lambda e: e[2]) == streams["ordered"][1_499:]
    assert sorted(streams["shuffled"]) == sorted(streams["ordered"]) and streams["spilled"] == streams["shuffled"]
    # held in memory, 20,000 events take megabytes; read again, the ordered file's peak is
    # its catalog and one pass's working set; sorted in runs of 3,000, about a run's worth
    assert peaks["ordered"] * 4 < peaks["shuffled"] and peaks["spilled"] * 2 < peaks["shuffled"], peaks
    gc.collect()  # the runs' files go with the recording
    assert list((tmp_path / "spill").iterdir()) == []


def test_the_first_read_shows_a_bar_only_when_it_is_long(tmp_path: Path, capsys, monkeypatch):
    from streams import readers

    rows = [f"{1_700_000_000 + n},u{n % 7},i{n % 11}" for n in range(300)]
    (tmp_path / "e.csv").write_text("ts,user,item\n" + "\n".join(reversed(rows)) + "\n")
    plain = [(e.item_id, e.ts) for e in open_recording(tmp_path / "e.csv", "csv")]
    assert [(e.item_id, e.ts) for e in open_recording(tmp_path / "e.csv", "csv", progress=True)] == plain
    assert capsys.readouterr().err == ""  # a short read stays quiet
    slow = readers._CsvFile.rows

    def slowly(self, malformed, skipped):
        for row in slow(self, malformed, skipped):
            time.sleep(0.01)
            yield row

    monkeypatch.setattr(readers._CsvFile, "rows", slowly)
    open_recording(tmp_path / "e.csv", "csv", progress=True)  # 3 s: out of order, so sorting
    assert "sorting e.csv: " in capsys.readouterr().err


def test_a_limit_stops_the_first_read_of_a_time_ordered_file(tmp_path: Path):
    rows = [f"{1_700_000_000 + n},u{n % 7},i{n % 11}" for n in range(1_000)]
    tail = ["1600000000,u1,early", "not,a,row"]  # out of time order, and malformed, after the limit
    (tmp_path / "e.csv").write_text("ts,user,item\n" + "\n".join(rows + tail) + "\n")
    rec = open_recording(tmp_path / "e.csv", "csv", limit=100)
    assert rec.read_as.endswith("; read up to --limit 100") and rec.total == 100 and rec.malformed.count == 0
    assert [e.item_id for e in itertools.islice(rec, 100)] == [f"i{n % 11}" for n in range(100)]
    whole = open_recording(tmp_path / "e.csv", "csv")  # without a limit the whole file is checked
    assert "not in time order" in whole.read_as and whole.total == 1_001 and whole.malformed.count == 1
    assert next(iter(whole)).item_id == "early"
    # a file out of time order before its limit is sorted whole, as without a limit
    (tmp_path / "x.csv").write_text("ts,user,item\n" + "\n".join(tail[:1] + rows) + "\n")
    assert next(iter(open_recording(tmp_path / "x.csv", "csv", limit=100))).item_id == "early"
    # a catalog is the whole file's: its first read goes to the end whatever the limit
    (tmp_path / "t.csv").write_text("ts,user,item,title\n" + "\n".join(f"{r},T {r[-2:]}" for r in rows) + "\n")
    assert open_recording(tmp_path / "t.csv", "csv", limit=100).total == 1_000 + 11
    # the wire format alike: catalog events do not count against the limit
    lines = [orjson.dumps({"topic": "items", "value": {"item_id": "i0", "title": "T", "ts": 1_600_000_000}})]
    lines += [orjson.dumps({"topic": "clicks", "value": {"event_id": f"e{n}", "user_id": "u", "item_id": "i0",
                                                         "ts": 1_700_000_000 + n}}) for n in range(50)]
    (tmp_path / "w.jsonl").write_bytes(b"\n".join(lines + [b"{}"]) + b"\n")
    rec = open_recording(tmp_path / "w.jsonl", "jsonl", limit=10)
    assert rec.total == 11 and rec.malformed.count == 0 and sum(1 for _ in rec) == 51


def test_the_taobao_sample_reads_as_its_provenance_counts_it_also_through_csv_by_name():
    file = SHARED / "taobao-userbehavior-sample" / "UserBehavior.csv"
    if not file.exists():
        pytest.skip(f"recorded data not found at {file} (a fresh clone has no ../shared/data)")
    own = open_recording(file, "taobao")
    # the data's README: 75,873 pv, 4,497 cart, 2,356 fav, 1,750 buy, unsorted; the file's
    # last row (a pv) was cut short, without its time
    kinds = collections.Counter(getattr(e, "action", "click") for e in own)
    assert kinds == {"click": 75_872, "add": 4_497, "purchase": 1_750} and own.skipped == 2_356
    assert own.malformed.count == 1 and "UserBehavior.csv:84476: expected at least 5 fields, got 4" in own.malformed.examples[0]
    assert own.read_as.endswith("not in time order: sorted in memory")
    # the csv reader with the columns by position and its own action names: the same events
    generic = open_recording(file, "csv", CsvLayout.parse("user=0,item=1,action=3,time=4"))
    key = lambda e: (type(e).__name__, e.user_id, e.item_id, e.ts, getattr(e, "action", ""))  # noqa: E731
    assert [key(e) for e in generic] == [key(e) for e in own]
    assert (generic.skipped, generic.malformed.count) == (own.skipped, own.malformed.count)


def test_compressed_recordings_read_as_they_are(tmp_path: Path):
    import bz2
    import gzip
    import lzma

    csv_text = ("timestamp,visitorid,event,itemid\n1433221332117,v1,view,355908\n"
                "1433221999827,v1,addtocart,355908\n1433221300000,v2,view,248676\n")
    jsonl_text = "\n".join(orjson.dumps({"topic": "clicks", "value": {
        "event_id": f"e{n}", "user_id": "u", "item_id": f"i{n}", "ts": 1.7e9 + n}}).decode() for n in range(3))
    (tmp_path / "plain.csv").write_text(csv_text)
    (tmp_path / "plain.jsonl").write_text(jsonl_text)
    plain_csv = [(e.event_id, e.ts) for e in open_recording(tmp_path / "plain.csv", "csv")]
    plain_jsonl = [e.event_id for e in open_recording(tmp_path / "plain.jsonl", "jsonl")]
    assert len(plain_csv) == 3 and len(plain_jsonl) == 3
    for name, pack in (("gz", gzip.compress), ("bz2", bz2.compress), ("xz", lzma.compress)):
        (tmp_path / f"e.csv.{name}").write_bytes(pack(csv_text.encode()))
        # the name need not say it: the first bytes do
        (tmp_path / f"e{name}.jsonl").write_bytes(pack(jsonl_text.encode()))
        rec = open_recording(tmp_path / f"e.csv.{name}", "csv")
        assert [(e.event_id, e.ts) for e in rec] == plain_csv, name
        assert rec.read_as.startswith(f"e.csv.{name}: user=visitorid")
        assert [e.event_id for e in open_recording(tmp_path / f"e{name}.jsonl", "jsonl")] == plain_jsonl, name
    (tmp_path / "e.csv.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 16)
    with pytest.raises(ValueError, match=r"e.csv.zst is compressed with zstd: decompress it first"):
        list(open_recording(tmp_path / "e.csv.zst", "csv"))
