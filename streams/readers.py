"""Readers of recorded streams: each yields parsed events in event-time order.

``open_recording(path, fmt)`` returns a :class:`Recording`: an iterator of events
(``models.events`` types) plus what the replay protocol needs to know about them.
Malformed rows are counted in ``recording.malformed`` (with a few examples), never
fatal, unless no row at all could be read: then ``open_recording`` raises ``ValueError``
with the first reasons. A ``jsonl`` or ``csv`` file already in time order (most exports
and topic dumps are) is read through once at the start, to check every row and gather
its catalog, and again on each pass over the recording: memory stays flat however long
the file. A file out of time order is sorted: in memory up to ``SORT_RUN_ROWS`` rows,
beyond that in sorted runs kept in temporary files and merged on each pass. Formats:

``jsonl``
    The wire format: one ``{"topic": ..., "value": {...}}`` per line; values are
    validated with ``models.events.parse_value`` (rejections count as malformed).
``sessions``
    A folder with ``train.txt`` (one session per line, item ids separated by spaces)
    and ``test.txt`` (augmented test cases ``prefix<TAB>target``, written per session
    from the longest prefix to the shortest). Test sessions are reconstructed (the
    full session is the longest prefix plus its target) and replayed click by click,
    so no target is ever learned before it is predicted. Sessions carry no time:
    timestamps are synthesised so that every training click precedes every test
    click; each session gets its own user and session id.
``session-tsv``
    A folder with ``train.tsv`` and ``test.tsv`` (tab-separated, header
    ``SessionId ItemId Time``, as in the session-rec framework). Training clicks come
    first (by time), then the test clicks (by time); each session is its own user.
``taobao``
    ``UserBehavior.csv`` (no header: user, item, category, behavior, ts), unsorted:
    sorted by ``ts`` (file order breaks ties). ``pv`` becomes a click, ``cart`` a
    cart ``add``, ``buy`` a cart ``purchase``; ``fav`` rows are skipped (a favourite
    is set from the item page whose view is already recorded as ``pv``; counting it
    again would duplicate that click) and counted in ``skipped``.
``csv``
    Any clickstream exported as delimited text, one interaction per row, described by
    a :class:`CsvLayout` (``--columns``, ``--actions``, ``--delimiter`` on the command
    line). Columns are found by their usual names unless given (``user_id``,
    ``visitorid``, ``customer_id`` ...; ``item_id``, ``itemid``, ``product_id``, ``sku``
    ...; ``timestamp``, ``ts``, ``time``, ``event_time`` ...; optionally an action
    column ``event``, ``action``, ``behavior`` ..., a ``quantity`` and a ``session``),
    or by position (``user=0,item=1,time=4``: then the file has no header). The
    delimiter is sniffed among ``, ; TAB |``. Times may be unix seconds, milliseconds
    or microseconds (told apart by size), ISO 8601 (also with a trailing ``UTC`` or
    ``GMT``), an e-mail or HTTP date (RFC 2822), or what ``time_format`` reads (naive
    means UTC). ``title``, ``category`` and ``price`` columns make the catalog,
    published when the stream starts as ``online-retail`` publishes it. Actions map
    to a click, a cart ``add``, ``remove`` or ``purchase`` by their usual names
    (``view``, ``pv``, ``addtocart``, ``transaction``, ``buy`` ...; see
    ``DEFAULT_ACTIONS``) or as ``--actions`` says; ``skip`` leaves an action out,
    counted in ``skipped``; ``*`` maps every other value (or, without an action column,
    every row: ``*=purchase`` for a file of orders). Without an action column every row
    is a click; without a user (a missing one: empty, ``NA``, ``null`` ...) the session
    is the shopper. Every row goes through the topics' one
    validation step (``models.events.parse_value``): what it rejects is malformed,
    with its reason.
``online-retail``
    The UCI Online Retail parquet: the catalog first — one ``items`` event per
    product, all at the time of the first invoice line, as a shop publishes its
    catalog on the ``items`` topic before anyone buys — then each invoice line as a
    cart ``purchase`` (quantity = Quantity). A product's title is its most frequent
    Description (the file also holds typos, ``?`` and ``nan`` on a few lines: ``nan``,
    pandas' null, is no title), its
    price that of its first sale. The file has no publication dates: an item's first
    sale is no more its publication than the start of the stream is, and publishing
    it at its first sale would make the first purchase of every new product
    impossible to recommend (its list was made before the item existed). The
    catalog is the file's, whatever ``--limit`` replays. Cancellations (InvoiceNo
    ``C...``) and non-positive quantities are skipped; a null CustomerID makes the
    basket its own anonymous shopper (``guest-<InvoiceNo>``).

A product catalog kept in a file of its own (:class:`CatalogFile`, ``--catalog``: a
CSV product export, or JSON lines of ``items`` values) is published as any recording
starts, ahead of the recording's own catalog.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "train.txt").write_text("1 2\\n2 3 4\\n")
>>> _ = (d / "test.txt").write_text("5 6\\t7\\n5\\t6\\n")
>>> rec = open_recording(d, "sessions")
>>> [(e.user_id, e.item_id) for e in rec]
[('tr0', '1'), ('tr0', '2'), ('tr1', '2'), ('tr1', '3'), ('tr1', '4'), ('te0', '5'), ('te0', '6'), ('te0', '7')]
>>> [e.ts - BASE_TS for e in rec][-3:], rec.test_from - BASE_TS, rec.test_cases, rec.total
([5.0, 6.0, 7.0], 5.0, 2, 8)
"""

from __future__ import annotations

import codecs
import csv
import heapq
import html
import importlib
import math
import os
import pickle
import re
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

import orjson

from models.events import MAX_TEXT_CHARS, MAX_TITLE_CHARS, Cart, Click, Event, Item, Rejected, parse_value

FORMATS = ("jsonl", "sessions", "session-tsv", "taobao", "online-retail", "csv")

#: Synthetic time of the first recorded session (2017-07-14) for formats without time.
BASE_TS = 1_500_000_000.0
#: Recorded times after this (2100-01-01) are clock bugs or the wrong unit, not shoppers.
LATEST_RECORDED_TS = 4_102_444_800.0
#: Cell values that mean "no value" (lower case): an export's nulls (pandas writes a
#: missing text as ``nan``), never an id or a title.
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "\\n"})


def _value(cell: str) -> str:
    """A cell's text, stripped; "" for an export's null (``MISSING``: none is over 4 long).

    >>> _value(" NaN "), _value(" Mug ")
    ('', 'Mug')
    """
    v = cell.strip()
    return "" if len(v) <= 4 and v.lower() in MISSING else v


@dataclass(slots=True)
class Malformed:
    """Rows that could not be used: how many, and the first few reasons."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    keep: int = 5

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(f"{where}: {reason}"[:200])


@dataclass(slots=True)
class Recording:
    """A recorded stream, ready to replay.

    Iterating yields the events in event-time order. ``test_from`` is set for the
    train/test formats: events with ``ts >= test_from`` are the test part (scored),
    earlier ones are only learned. ``users_contiguous`` says that each user's
    events come in one uninterrupted run (a user never returns once another user's
    event came), so no list is needed after a user's last event.
    """

    fmt: str
    events_factory: Callable[[], Iterator[Event]]
    malformed: Malformed
    test_from: float | None = None
    users_contiguous: bool = False
    #: Known number of scored cases (train/test formats), else None.
    test_cases: int | None = None
    skipped: int = 0
    #: Number of events, when known up front (for progress bars).
    total: int | None = None
    #: How the reader read the file, when it had to work it out (a csv file's columns).
    read_as: str = ""

    def __iter__(self) -> Iterator[Event]:
        return self.events_factory()


def open_recording(path: str | os.PathLike, fmt: str, layout: "CsvLayout | None" = None,
                   limit: int | None = None, progress: bool = False,
                   catalog: "CatalogFile | None" = None) -> Recording:
    """Open ``path`` as a recording of format ``fmt`` (one of ``FORMATS``); ``layout``
    describes a ``csv`` file (by default its columns and actions are found by name).
    ``limit``: only the first ``limit`` shopper events will be read (``--limit``), so a
    ``jsonl`` or ``csv`` file in time order up to there, without a catalog to gather
    from its rows, is checked no further. ``progress``: a bar on stderr while a ``jsonl``,
    ``csv`` or ``taobao`` file is read at the start, once that takes over two seconds.
    ``catalog``: a product catalog kept in a file of its own (``--catalog``), published
    as the recording starts (see ``CatalogFile``)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if layout is not None and fmt != "csv":
        raise ValueError(f"a CSV layout (--columns, --actions, --delimiter) describes the csv format, not {fmt!r}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if fmt == "csv":
        recording = _read_csv(path, layout or CsvLayout(), limit, progress=progress)
    elif fmt == "jsonl":
        recording = _read_jsonl(path, limit, progress)
    elif fmt == "taobao":
        recording = _read_taobao(path, limit, progress)
    else:
        recording = _OPENERS[fmt](path)
    if not recording.total and recording.malformed.count:
        raise ValueError(f"{path.name}: none of its rows could be read as {fmt} ({recording.malformed.count:,} "
                         "malformed), e.g. " + "; ".join(recording.malformed.examples[:3]))
    return recording if catalog is None else _with_catalog(recording, catalog)


def up_to_limit(events: Iterable[Event], limit: int | None) -> Iterator[Event]:
    """``events`` until ``limit`` shopper events have come (``--limit``; None: all).
    Catalog events (``Item``) do not count, so the same limit replays the same
    purchases whether or not a recording publishes its catalog ahead.

    >>> evs = [Item("a", "A", 1.0), Click("e1", "u", "a", 2.0), Item("b", "B", 2.0), Click("e2", "u", "b", 3.0)]
    >>> [e.event_id for e in up_to_limit(evs, 1)]
    ['item:a:1.0', 'e1']
    """
    n = 0
    for ev in events:
        if limit is not None and n >= limit:
            return
        n += not isinstance(ev, Item)
        yield ev


# -- sessions (train.txt / test.txt) ------------------------------------------------------

#: Synthetic seconds between clicks of one session (sessions follow each other with one gap).
CLICK_GAP_S = 1.0


def reconstruct_sessions(lines: Iterable[str], malformed: Malformed | None = None
                         ) -> Iterator[list[str]]:
    """Rebuild full test sessions from augmented ``prefix<TAB>target`` lines.

    Lines of one session come from the longest prefix to the shortest, each one click
    shorter than the one before; the full session is the first prefix plus its
    target. A line that does not continue the current session starts a new one.

    >>> list(reconstruct_sessions(["1 2 3\\t4", "1 2\\t3", "1\\t2", "9\\t8", "7 9\\t7", "7\\t9"]))
    [['1', '2', '3', '4'], ['9', '8'], ['7', '9', '7']]
    """
    malformed = malformed if malformed is not None else Malformed()
    current: list[str] | None = None
    expect = 0  # prefix length the next line of the current session must have
    for n, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].split() or len(parts[1].split()) != 1:
            malformed.add(f"test.txt:{n}", "expected 'prefix<TAB>target'")
            continue
        prefix, target = parts[0].split(), parts[1].strip()
        continues = (current is not None and len(prefix) == expect
                     and prefix == current[:expect] and target == current[expect])
        if not continues:
            if current is not None:
                if expect > 0:
                    malformed.add(f"test.txt:{n}", "session ended before its shortest prefix")
                yield current
            current = prefix + [target]
        expect = len(prefix) - 1
        if expect == 0:
            yield current
            current = None
    if current is not None:
        yield current


#: A compressed file's first bytes -> the module that reads it (stdlib only).
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "lzma"}


def open_recorded(path: str | os.PathLike, mode: str = "rb", encoding: str | None = None,
                  newline: str | None = None) -> IO[Any]:
    """``path`` opened for reading (``mode`` "rb" or "rt"), decompressed on the fly when
    it is gzip, bzip2 or xz (told by its first bytes, whatever its name): recordings and
    exports are often kept compressed.

    >>> import gzip, tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "clicks.jsonl.gz"
    >>> _ = f.write_bytes(gzip.compress(b'{"a": 1}\\n'))
    >>> with open_recorded(f, "rt", encoding="utf-8") as fh: fh.read()
    '{"a": 1}\\n'
    """
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        raise ValueError(f"{Path(path).name} is compressed with zstd: decompress it first (zstd -d), "
                         "or recompress it with gzip, bzip2 or xz, which are read as they are")
    opener = next((name for magic, name in _COMPRESSED.items() if head.startswith(magic)), None)
    if opener is None:
        return open(path, mode, encoding=encoding, newline=newline)
    module = importlib.import_module(opener)
    return module.open(path, mode, encoding=encoding, newline=newline)


def _read_sessions(path: Path) -> Recording:
    malformed = Malformed()
    train_file, test_file = path / "train.txt", path / "test.txt"
    for f in (train_file, test_file):
        if not f.exists():
            raise FileNotFoundError(f"{f}: the sessions format needs train.txt and test.txt")
    # Sessions are read once (small: about 5 MB for Diginetica) to size the time axis.
    train: list[list[str]] = []
    with open_recorded(train_file, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            items = line.split()
            if not items:
                if line.strip():
                    malformed.add(f"train.txt:{n}", "no items")
                continue
            train.append(items)
    with open_recorded(test_file, "rt", encoding="utf-8") as fh:
        test = list(reconstruct_sessions(fh, malformed))
    train_clicks = sum(len(s) for s in train)
    test_from = BASE_TS + CLICK_GAP_S * train_clicks

    def events() -> Iterator[Event]:
        # One click per second, session after session: time is compact (Diginetica's
        # training part spans about 10 days) and training strictly precedes test.
        t = BASE_TS
        for phase, sessions in (("tr", train), ("te", test)):
            for i, items in enumerate(sessions):
                user = f"{phase}{i}"
                for pos, item in enumerate(items):
                    yield Click(f"{user}-{pos}", user, item, t, user)
                    t += CLICK_GAP_S

    return Recording("sessions", events, malformed, test_from=test_from, users_contiguous=True,
                     test_cases=sum(len(s) - 1 for s in test), total=train_clicks + sum(map(len, test)))


# -- session-tsv (session-rec framework) ----------------------------------------------------

def _read_tsv(file: Path, malformed: Malformed) -> list[tuple[float, int, str, str]]:
    rows: list[tuple[float, int, str, str]] = []
    with open_recorded(file, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None:
            return rows
        cols = {name.strip(): i for i, name in enumerate(header)}
        missing = [c for c in ("SessionId", "ItemId", "Time") if c not in cols]
        if missing:
            raise ValueError(f"{file}: missing column(s) {', '.join(missing)}")
        si, ii, ti = cols["SessionId"], cols["ItemId"], cols["Time"]
        for n, row in enumerate(reader, start=2):
            try:
                sess, item, ts = row[si].strip(), row[ii].strip(), float(row[ti])
                if not sess or not item or not math.isfinite(ts):
                    raise ValueError("empty field")
            except (IndexError, ValueError) as e:
                malformed.add(f"{file.name}:{n}", f"bad row ({e})")
                continue
            rows.append((ts, n, sess, item))
    rows.sort()
    return rows


def _read_session_tsv(path: Path) -> Recording:
    malformed = Malformed()
    for name in ("train.tsv", "test.tsv"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path / name}: the session-tsv format needs train.tsv and test.tsv")
    train = _read_tsv(path / "train.tsv", malformed)
    test = _read_tsv(path / "test.tsv", malformed)
    # Session-rec times may be seconds or epoch-less counters: shift so both parts are valid
    # unix times and the test part starts strictly after the last training click.
    first = min([r[0] for r in train[:1] + test[:1]], default=0.0)
    shift = BASE_TS - first if first < BASE_TS else 0.0
    last_train = train[-1][0] + shift if train else BASE_TS
    test_shift = shift + max(0.0, last_train + 1.0 - (test[0][0] + shift)) if test else shift
    test_from = (test[0][0] + test_shift) if test else last_train + 1.0
    lengths: dict[str, int] = {}
    for _, _, sess, _ in test:
        lengths[sess] = lengths.get(sess, 0) + 1

    def events() -> Iterator[Event]:
        for phase, rows, sh in (("tr", train, shift), ("te", test, test_shift)):
            pos: dict[str, int] = {}
            for ts, _, sess, item in rows:
                p = pos[sess] = pos.get(sess, -1) + 1
                user = f"{phase}:{sess}"
                yield Click(f"{user}:{p}", user, item, ts + sh, user)

    return Recording("session-tsv", events, malformed, test_from=test_from,
                     test_cases=sum(n - 1 for n in lengths.values()), total=len(train) + len(test))


# -- UCI online retail parquet ----------------------------------------------------------------

def _read_online_retail(path: Path) -> Recording:
    import pyarrow.parquet as pq

    malformed = Malformed()
    file = path
    if path.is_dir():
        found = sorted(path.glob("*.parquet"))
        if not found:
            raise FileNotFoundError(f"{path}: no .parquet file")
        file = found[0]
    cols = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"]
    table = pq.read_table(file, columns=cols)
    data = {c: table.column(c).to_pylist() for c in cols}
    rows: list[tuple[float, int, str, str, str, int, float | None, str | None]] = []
    skipped = 0
    for n in range(table.num_rows):
        invoice, code, date = data["InvoiceNo"][n], data["StockCode"][n], data["InvoiceDate"][n]
        qty, price, cust, title = (data["Quantity"][n], data["UnitPrice"][n],
                                   data["CustomerID"][n], data["Description"][n])
        if not invoice or not code or date is None or qty is None:
            malformed.add(f"row {n}", "missing InvoiceNo, StockCode, InvoiceDate or Quantity")
            continue
        invoice, code = str(invoice).strip(), str(code).strip()
        if invoice.startswith("C") or qty <= 0:
            skipped += 1  # cancellations and returns are not purchases
            continue
        ts = date.timestamp() if hasattr(date, "timestamp") else float(date)
        user = f"c{int(cust)}" if cust is not None and not (isinstance(cust, float) and math.isnan(cust)) \
            else f"guest-{invoice}"
        title = title.strip() if isinstance(title, str) and title.strip().lower() not in MISSING else None
        rows.append((ts, n, user, code, invoice, min(int(qty), 10_000),
                     float(price) if price is not None and price >= 0 else None, title))
    rows.sort(key=lambda r: (r[0], r[1]))
    catalog = catalog_at(rows[0][0], ((code, title, None, price) for _, _, _, code, _, _, price, title in rows)
                         ) if rows else []

    def events() -> Iterator[Event]:
        yield from catalog
        for ts, n, user, code, invoice, qty, price, title in rows:
            yield Cart(f"or{n}", user, code, "purchase", ts, qty)

    return Recording("online-retail", events, malformed, skipped=skipped,
                     total=len(rows) + len(catalog))


class CatalogBuilder:
    """The catalog a recording's rows describe, gathered one sighting at a time in any
    order: ``items(start)`` gives one ``Item`` per item that has a title, in order of
    first sighting, all stamped ``start`` (a shop publishes its catalog before anyone
    buys): the most frequent title (ties: the earliest), the first sighting's category
    and price. ``at`` places a sighting in event-time order (the row's time and line);
    without it, sightings are taken to come in that order.

    >>> b = CatalogBuilder()
    >>> for row in [("A", "MUG", "kitchen", 2.0), ("B", None, None, 1.0), ("A", "?", None, 2.5), ("A", "MUG", None, 2.5)]:
    ...     b.add(*row)
    >>> [(i.item_id, i.title, i.category, i.ts, i.price) for i in b.items(10.0)]
    [('A', 'MUG', 'kitchen', 10.0, 2.0)]
    >>> b = CatalogBuilder()
    >>> b.add("A", "CUP", None, 3.0, at=(5.0, 9)); b.add("A", "MUG", "kitchen", 2.0, at=(1.0, 2))
    >>> [(i.item_id, i.title, i.category, i.price) for i in b.items(0.0)]
    [('A', 'MUG', 'kitchen', 2.0)]
    """

    def __init__(self) -> None:
        #: item -> title -> (sightings, the earliest one's place)
        self._titles: dict[str, dict[str, tuple[int, tuple]]] = {}
        #: item -> (its first sighting's place, category, price)
        self._first: dict[str, tuple[tuple, str | None, float | None]] = {}
        self._added = 0

    def add(self, item: str, title: str | None, category: str | None, price: float | None,
            at: tuple | None = None) -> None:
        if at is None:
            at = (self._added,)
        self._added += 1
        first = self._first.get(item)
        if first is None or at < first[0]:
            self._first[item] = (at, category, price)
        if title:
            seen = self._titles.setdefault(item, {})
            n, earliest = seen.get(title, (0, at))
            seen[title] = (n + 1, min(earliest, at))

    def items(self, start: float) -> list[Item]:
        out = []
        for item, (_, category, price) in sorted(self._first.items(), key=lambda kv: kv[1][0]):
            if item in self._titles:
                best = min(self._titles[item].items(), key=lambda kv: (-kv[1][0], kv[1][1]))[0]
                out.append(Item(item, best[:MAX_TITLE_CHARS], start, category=category, price=price))
        return out


def catalog_at(start: float, sightings: Iterable[tuple[str, str | None, str | None, float | None]]
               ) -> list[Item]:
    """``CatalogBuilder``'s items at ``start`` from ``sightings`` ((item, title,
    category, price) in event-time order)."""
    builder = CatalogBuilder()
    for sighting in sightings:
        builder.add(*sighting)
    return builder.items(start)


# -- jsonl (wire format) ------------------------------------------------------------------------

def _json_lines(path: Path, malformed: Malformed) -> Iterator[tuple[int, bytes, Any]]:
    """(line number, line, its JSON) of each non-blank line of ``path``; a line that is
    not JSON is added to ``malformed``."""
    with open_recorded(path) as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield n, line, orjson.loads(line)
            except orjson.JSONDecodeError as e:
                malformed.add(f"{path.name}:{n}", f"not JSON: {str(e)[:80]}")


def _read_jsonl(path: Path, limit: int | None = None, progress: bool = False) -> Recording:
    def scan(malformed: Malformed, skipped: list[int]) -> Iterator[_Row]:
        for n, line, obj in _json_lines(path, malformed):
            where = f"{path.name}:{n}"
            if not isinstance(obj, dict) or not isinstance(obj.get("topic"), str) or "value" not in obj:
                malformed.add(where, "expected {\"topic\": ..., \"value\": ...}")
                continue
            value = obj["value"]
            if isinstance(value, str):
                try:
                    value = orjson.loads(value)
                except orjson.JSONDecodeError as e:
                    malformed.add(where, f"value is not JSON: {str(e)[:80]}")
                    continue
            # Recorded streams are in the past: judge no timestamp as "in the future".
            ev = parse_value(obj["topic"], value, line, now=math.inf)
            if isinstance(ev, Rejected):
                malformed.add(where, f"{obj['topic'][:32]}: {ev.reason}")
                continue
            if ev.ts > LATEST_RECORDED_TS:
                malformed.add(where, f"{obj['topic'][:32]}: ts {ev.ts!r} is after 2100 (a clock bug)")
                continue
            yield ev.ts, n, ev, None

    return _time_ordered("jsonl", scan, makes_catalog=False, limit=limit, progress_name=path.name if progress else None)


# -- csv: any clickstream export ----------------------------------------------------------

#: The fields a CSV row can fill; ``item`` and ``time`` are required, and ``user`` or
#: ``session`` (a session without a user is its own shopper). ``title``, ``category``
#: and ``price`` describe the item: they make the catalog.
CSV_FIELDS = ("user", "item", "time", "action", "session", "quantity", "title", "category", "price")

#: Column names looked for (lower case, ``-`` and spaces read as ``_``) when a field's
#: column is not named: the first one the header has is taken.
COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "user": ("user_id", "userid", "user", "visitor_id", "visitorid", "visitor", "customer_id",
             "customerid", "customer", "shopper_id", "client_id", "member_id", "user_pseudo_id"),
    "item": ("item_id", "itemid", "item", "product_id", "productid", "product", "sku", "article_id",
             "asin", "offer_id", "stockcode", "stock_code", "product_code", "item_code"),
    "time": ("ts", "timestamp", "time", "event_time", "eventtime", "datetime", "event_timestamp",
             "created_at", "occurred_at", "date", "event_date", "eventdate", "invoicedate", "invoice_date",
             "order_date", "purchase_date", "transaction_date", "t_dat"),
    "action": ("action", "event", "event_type", "eventtype", "behavior", "behaviour", "behavior_type",
               "interaction", "interaction_type", "event_name"),
    "session": ("session_id", "sessionid", "session", "user_session", "visit_id", "visitid"),
    "quantity": ("quantity", "qty"),
    "title": ("title", "product_title", "product_name", "item_name", "item_title"),
    "category": ("category", "category_id", "categoryid", "category_name", "category_code",
                 "product_category"),
    "price": ("price", "unit_price", "unitprice", "item_price"),
}

#: What an action value means (lower case, ``-`` and spaces read as ``_``): a click, a
#: cart ``add``, ``remove`` or ``purchase``, or ``skip`` (left out, counted). Favourites
#: and likes are skipped: they are set from an item page whose view is recorded already.
DEFAULT_ACTIONS: dict[str, str] = {
    **dict.fromkeys(("click", "clicks", "view", "views", "pv", "page_view", "pageview", "detail",
                     "detail_view", "product_view", "view_item", "item_view"), "click"),
    **dict.fromkeys(("cart", "add", "addtocart", "add_to_cart", "basket", "add_to_basket", "carts"), "add"),
    **dict.fromkeys(("remove", "removefromcart", "remove_from_cart", "remove_from_basket"), "remove"),
    **dict.fromkeys(("buy", "purchase", "purchased", "transaction", "order", "sale", "buys"), "purchase"),
    **dict.fromkeys(("fav", "favorite", "favourite", "like", "wishlist", "add_to_wishlist"), "skip"),
}
ACTION_KINDS = ("click", "add", "remove", "purchase", "skip")


#: ``--columns field=-``: the field is read from no column (not even one found by name)
NO_COLUMN = "-"


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


#: UTF-8, reading past a spreadsheet's byte-order mark
UTF8 = "utf-8-sig"


def text_encoding(name: str | None) -> str:
    """``--encoding``: a codec Python knows (UTF-8, past a byte-order mark, when None).

    >>> text_encoding("latin-1"), text_encoding(None), text_encoding("UTF8")
    ('latin-1', 'utf-8-sig', 'utf-8-sig')
    >>> text_encoding("klingon")
    Traceback (most recent call last):
    ValueError: --encoding: unknown encoding 'klingon' (e.g. utf-8, cp1252, latin-1)
    """
    if name is None:
        return UTF8
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        raise ValueError(f"--encoding: unknown encoding {name!r} (e.g. utf-8, cp1252, latin-1)") from None
    return UTF8 if codec == "utf-8" else name


@dataclass(frozen=True, slots=True)
class CsvLayout:
    """How a CSV clickstream reads: each field's column (a header name, or a 0-based
    position for a file without a header), action values beyond ``DEFAULT_ACTIONS``,
    and the delimiter (sniffed when None).

    >>> CsvLayout.parse("user=visitorid,item=itemid", "transaction=purchase,fav=skip", "tab")
    CsvLayout(columns={'user': 'visitorid', 'item': 'itemid'}, actions={'transaction': 'purchase', 'fav': 'skip'}, delimiter='\\t', time_format=None, encoding='utf-8-sig')
    >>> CsvLayout.parse("user=0,item=visitorid")
    Traceback (most recent call last):
    ValueError: --columns: give every column by header name or every one by position, not both
    """

    columns: dict[str, str] = field(default_factory=dict)
    actions: dict[str, str] = field(default_factory=dict)
    delimiter: str | None = None
    #: a ``strptime`` format for times that are neither numbers nor ISO 8601
    time_format: str | None = None
    #: the file's text encoding (``encoding``)
    encoding: str = UTF8

    @classmethod
    def parse(cls, columns: str | None = None, actions: str | None = None,
              delimiter: str | None = None, time_format: str | None = None,
              encoding: str | None = None) -> CsvLayout:
        """From the command line's ``--columns field=column,...``, ``--actions value=kind,...``,
        ``--delimiter`` (one character, or ``tab``), ``--time-format`` and ``--encoding``."""
        cols = _pairs(columns or "", "--columns")
        unknown = sorted(set(cols) - set(CSV_FIELDS))
        if unknown:
            raise ValueError(f"--columns: unknown field(s) {', '.join(unknown)}; fields: {', '.join(CSV_FIELDS)}")
        joined = sorted(f for f, v in cols.items() if "+" in v and f not in JOINABLE)
        if joined:
            raise ValueError(f"--columns: only {' and '.join(JOINABLE)} may join columns with '+', not {', '.join(joined)}")
        if len({_by_position(v) for v in cols.values() if v != NO_COLUMN}) > 1:
            raise ValueError("--columns: give every column by header name or every one by position, not both")
        acts = _pairs(actions or "", "--actions")
        bad = sorted(f"{k}={v}" for k, v in acts.items() if v not in ACTION_KINDS)
        if bad:
            raise ValueError(f"--actions: {', '.join(bad)}: an action means one of {', '.join(ACTION_KINDS)}")
        if time_format is not None and "%" not in time_format:
            raise ValueError(f"--time-format: a strptime format such as '%d/%m/%Y %H:%M', got {time_format!r}")
        return cls(cols, acts, _delimiter(delimiter), time_format, text_encoding(encoding))


def _delimiter(text: str | None) -> str | None:
    """``--delimiter``: one character, or ``tab``; None: sniffed."""
    if text is None:
        return None
    delimiter = "\t" if text.lower() in ("tab", "\\t") else text
    if len(delimiter) != 1:
        raise ValueError(f"--delimiter: one character (or 'tab'), got {text!r}")
    return delimiter



#: Fields that may join several columns (``title=brand+category_code``): their non-empty
#: cells, in that order, joined by a space (a catalog without titles can make them so)
JOINABLE = ("title", "category")


def _by_position(column: str) -> bool:
    """Whether a ``--columns`` value names columns by position (``4``, ``5+4``)."""
    return all(p.strip().isdigit() for p in column.split("+"))


def _pairs(spec: str, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"{flag}: expected name=value pairs separated by commas, got {part!r}")
        out[key.strip()] = value.strip()
    return out


def csv_time(text: str, time_format: str | None = None) -> float:
    """Unix seconds from a recorded time: seconds, milliseconds or microseconds since
    the epoch (told apart by size: 1e11 seconds is the year 5138), what ``time_format``
    (``strptime``) reads, or ISO 8601; a time without a zone is UTC.

    >>> csv_time("1433221332117"), csv_time("1511544070"), csv_time("2014-04-07T10:51:09.277Z")
    (1433221332.117, 1511544070.0, 1396867869.277)
    >>> csv_time("2011-12-01 08:26:00") == csv_time("12/1/2011 8:26", "%m/%d/%Y %H:%M") == 1322727960.0
    True
    """
    try:
        t = float(text)
    except ValueError:
        d = _datetime(text.strip(), time_format)
        if d is None:
            expected = f"the time format {time_format!r} nor ISO 8601" if time_format else "ISO 8601 (give --time-format)"
            raise ValueError(f"time {text[:40]!r} is neither a number nor {expected}")
        t = (d if d.tzinfo is not None else d.replace(tzinfo=timezone.utc)).timestamp()
    else:
        if not math.isfinite(t):
            raise ValueError(f"time {text[:40]!r} is not a finite number")
        t = t / 1e6 if abs(t) >= 1e14 else t / 1e3 if abs(t) >= 1e11 else t
    if t > LATEST_RECORDED_TS:
        raise ValueError(f"time {text[:40]!r} is after 2100 (a clock bug, or not seconds, ms or µs)")
    return t


def _datetime(text: str, time_format: str | None) -> datetime | None:
    """``text`` read by ``time_format``, else as ISO 8601 (also with a trailing ``UTC`` or
    ``GMT`` for its zone), else as an e-mail or HTTP date (RFC 2822); None when none reads it.

    >>> _datetime("2019-10-01 00:00:07 UTC", None), _datetime("Tue, 01 Oct 2019 00:00:07 GMT", None)
    (datetime.datetime(2019, 10, 1, 0, 0, 7, tzinfo=datetime.timezone.utc), datetime.datetime(2019, 10, 1, 0, 0, 7, tzinfo=datetime.timezone.utc))
    """
    if time_format:
        try:
            return datetime.strptime(text, time_format)
        except ValueError:
            pass
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    if text[-3:].upper() in ("UTC", "GMT"):
        try:
            d = datetime.fromisoformat(text[:-3].rstrip())
        except ValueError:
            pass
        else:
            return d if d.tzinfo is not None else d.replace(tzinfo=timezone.utc)
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None


def _sniff_delimiter(sample: str) -> str:
    lines = sample.splitlines()[:50]
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=",;\t|").delimiter
    except csv.Error:  # one column, or too little to tell: the most frequent on the first line
        first = lines[0] if lines else ""
        return max(",;\t|", key=first.count) if any(c in first for c in ",;\t|") else ","


#: A field's column: its position, or the positions of the columns it joins
Column = int | tuple[int, ...]


def _position(column: str) -> Column:
    parts = tuple(int(p) for p in column.split("+"))
    return parts[0] if len(parts) == 1 else parts


def _find_columns(header: list[str], named: dict[str, str], file: Path, names: dict[str, tuple[str, ...]],
                  joinable: Iterable[str]) -> dict[str, Column]:
    """Field -> column position (or positions, for a joined field), from the header row,
    the columns ``named`` and, for the fields not named, the first of their usual
    ``names`` the header has (a column serves one field)."""
    where = {_norm(h): i for i, h in reversed(list(enumerate(header)))}  # the first of equal names
    out: dict[str, Column] = {}
    for f in names:
        if named.get(f) == NO_COLUMN:
            continue
        if f in named:
            parts = [named[f]] if _norm(named[f]) in where or f not in joinable else named[f].split("+")
            absent = [p for p in parts if _norm(p) not in where]
            if absent:
                raise ValueError(f"{file.name}: no column {absent[0]!r} for {f}; the header has "
                                 f"{', '.join(map(repr, header))[:300]}")
            cols = tuple(where[_norm(p)] for p in parts)
            out[f] = cols[0] if len(cols) == 1 else cols
        else:
            found = next((where[n] for n in names[f] if n in where), None)
            if found is not None and found not in out.values():
                out[f] = found
    return out


def _csv_columns(header: list[str], named: dict[str, str], file: Path) -> dict[str, Column]:
    """Field -> column position (or positions, for a joined field) of a clickstream csv."""
    out = _find_columns(header, named, file, COLUMN_NAMES, JOINABLE)
    missing = [f for f in ("item", "time") if f not in out]
    if "user" not in out and "session" not in out:
        missing.insert(0, "user (or session)")
    if missing:
        raise ValueError(f"{file.name}: no column found for {', '.join(missing)}; the header has "
                         f"{', '.join(map(repr, header))[:300]}; name them with --columns, "
                         "e.g. --columns user=visitor,item=sku,time=when")
    return out


#: A good row of a recording: (event time, its line, the event, what it says of its item or None)
_Row = tuple[float, int, Event, "tuple[str, str | None, str | None, float | None] | None"]


@dataclass(slots=True)
class _CsvFile:
    """A csv file's layout worked out once (delimiter, header, each field's column);
    ``rows`` reads it through, as often as a replay needs."""

    path: Path
    layout: CsvLayout
    delimiter: str
    index: dict[str, Column]
    header: list[str] | None
    #: each event's id is this and its line number
    id_prefix: str = "csv"

    @classmethod
    def open(cls, path: Path, layout: CsvLayout, id_prefix: str = "csv") -> _CsvFile:
        if path.is_dir():
            raise ValueError(f"{path}: the csv format reads one file, not a folder")
        with open_recorded(path, "rt", encoding=layout.encoding, newline="") as fh:
            sample = _sample(fh, path)  # (the encoding checked before the header is read)
            delimiter = layout.delimiter or _sniff_delimiter(sample)
            positions = {f: v for f, v in layout.columns.items() if v != NO_COLUMN}
            if positions and all(_by_position(v) for v in positions.values()):
                index = {f: _position(v) for f, v in positions.items()}  # no header
                missing = [f for f in ("item", "time") if f not in index]
                if missing or ("user" not in index and "session" not in index):
                    raise ValueError("--columns by position: give item, time and user (or session)")
                return cls(path, layout, delimiter, index, None, id_prefix)
            fh.seek(0)
            try:
                header = next(csv.reader(fh, delimiter=delimiter), None)
            except csv.Error as e:
                raise ValueError(f"{path.name}: unreadable header ({e})") from None
        if header is None:
            raise ValueError(f"{path.name}: empty (a header row was expected)")
        return cls(path, layout, delimiter, _csv_columns(header, layout.columns, path), header, id_prefix)

    @property
    def describes_items(self) -> bool:
        return any(f in self.index for f in ("title", "category", "price"))

    def rows(self, malformed: Malformed, skipped: list[int]) -> Iterator[_Row]:
        """Every good row in file order; each bad one is added to ``malformed`` with its
        reason, and ``skipped[0]`` counts the rows whose action is ``skip``."""
        path, layout, index = self.path, self.layout, self.index
        actions = {**DEFAULT_ACTIONS, **{_norm(k): v for k, v in layout.actions.items()}}
        width = max(max(i) if isinstance(i, tuple) else i for i in index.values()) + 1
        fields = [(f, i) for f, i in index.items() if not isinstance(i, tuple)]
        joined = [(f, i) for f, i in index.items() if isinstance(i, tuple)]
        describes_items, id_prefix = self.describes_items, self.id_prefix
        with open_recorded(path, "rt", encoding=layout.encoding, newline="") as fh:
            reader = csv.reader(fh, delimiter=self.delimiter)
            if self.header is not None:
                next(reader, None)
            for row in _rows(reader, malformed, path):
                n = reader.line_num  # the row's (last) line in the file
                if len(row) < width:
                    if any(c.strip() for c in row):
                        malformed.add(f"{path.name}:{n}", f"expected at least {width} fields, got {len(row)}")
                    continue
                got = {}
                for f, i in fields:  # _value, inlined: a call per cell costs a fifth of a read
                    v = row[i].strip()
                    got[f] = "" if len(v) <= 4 and v.lower() in MISSING else v
                for f, cols in joined:
                    got[f] = " ".join(filter(None, (_value(row[i]) for i in cols)))
                if "action" in got:
                    kind = actions.get(_norm(got["action"])) or actions.get("*", "")
                    if not kind:
                        malformed.add(f"{path.name}:{n}",
                                      f"unknown action {got['action'][:32]!r} (map it with --actions)")
                        continue
                else:
                    kind = actions.get("*", "click")
                if kind == "skip":
                    skipped[0] += 1
                    continue
                try:
                    ts = csv_time(got["time"], layout.time_format)
                    meta = _item_fields(got) if describes_items else None
                except ValueError as e:
                    malformed.add(f"{path.name}:{n}", str(e))
                    continue
                value: dict = {"event_id": f"{id_prefix}{n}", "user_id": got.get("user") or got.get("session", ""),
                               "item_id": got["item"], "ts": ts}
                if kind == "click":
                    topic = "clicks"
                    if got.get("session"):
                        value["session_id"] = got["session"]
                else:
                    topic, value["action"] = "carts", kind
                    if got.get("quantity"):
                        value["quantity"] = _quantity(got["quantity"])
                ev = parse_value(topic, value, now=math.inf)  # the topics' one validation step
                if isinstance(ev, Rejected):
                    malformed.add(f"{path.name}:{n}", f"{topic}: {ev.reason}")
                    continue
                yield ev.ts, n, ev, meta


def _read_csv(path: Path, layout: CsvLayout, limit: int | None = None, fmt: str = "csv",
              id_prefix: str = "csv", progress: bool = False) -> Recording:
    file = _CsvFile.open(path, layout, id_prefix)
    names = dict(enumerate(file.header or ()))
    def column(i: Column) -> str:
        return "+".join(str(names.get(c, c)) for c in (i if isinstance(i, tuple) else (i,)))

    read_as = (f"{path.name}: " + ", ".join(f"{f}={column(file.index[f])}" for f in CSV_FIELDS if f in file.index)
               + f"; delimiter {file.delimiter!r}")
    # items without a title make no catalog entry: without a title column there is no catalog to gather
    return _time_ordered(fmt, file.rows, "title" in file.index, read_as, limit, path.name if progress else None)


def _time_ordered(fmt: str, scan: Callable[[Malformed, list[int]], Iterator[_Row]], makes_catalog: bool,
                  read_as: str = "", limit: int | None = None, progress_name: str | None = None) -> Recording:
    """A recording of the rows ``scan`` reads in file order (it adds each bad row to the
    ``Malformed`` it is given, and counts rows left out on purpose in ``skipped[0]``).

    The file is read through once to check every row, count the bad ones and gather
    the catalog; a file already in time order (most exports and topic dumps are) keeps
    nothing else in memory, and each pass over the recording reads the file again. A
    file out of time order is read again and sorted (file order breaking ties) by
    ``_sort_rows``: in memory, or in runs on disk when long.

    With ``limit`` (only that many shopper events will be read) and no catalog to gather,
    the first read stops there when the file is in time order up to it: its bad rows and
    ``total`` are then those of that part. ``progress_name``: show a bar of the rows read,
    named so, while reading at the start takes over two seconds."""
    stop_at = limit if limit is not None and not makes_catalog else None
    shoppers, stopped = 0, False
    malformed, skipped = Malformed(), [0]
    catalog = CatalogBuilder() if makes_catalog else None
    count, first, last, in_order = 0, math.inf, -math.inf, True
    for ts, _, ev, meta in _shown(scan(malformed, skipped), progress_name, "checking"):
        if stop_at is not None and shoppers >= stop_at:
            stopped = True
            break
        if ts < last:
            in_order = False
            break
        first, last, count = min(first, ts), ts, count + 1
        shoppers += not isinstance(ev, Item)
        if catalog is not None and meta is not None:
            catalog.add(*meta)
    runs = 0
    if in_order:
        items = catalog.items(first) if catalog is not None and count else []

        def events() -> Iterator[Event]:
            yield from items
            for _, _, ev, _ in scan(Malformed(), [0]):  # its bad rows are counted already
                yield ev
    else:  # read again, sorting what it reads
        malformed, skipped = Malformed(), [0]
        catalog = CatalogBuilder() if makes_catalog else None
        count, first = 0, math.inf

        def tap(rows: Iterator[_Row]) -> Iterator[_Row]:
            nonlocal count, first
            for row in rows:
                count, first = count + 1, min(first, row[0])
                if catalog is not None and row[3] is not None:
                    catalog.add(*row[3], at=(row[0], row[1]))
                yield row

        in_time_order, runs = _sort_rows(tap(_shown(scan(malformed, skipped), progress_name, "sorting")))
        items = catalog.items(first) if catalog is not None and count else []

        def events() -> Iterator[Event]:
            yield from items
            yield from in_time_order()

    if read_as:
        read_as += ((f"; {len(items):,} catalog items" if items else "")
                    + ("" if in_order else "; not in time order: sorted in memory" if not runs
                       else f"; not in time order: sorted in {runs} runs on disk")
                    + (f"; read up to --limit {limit:,}" if stopped else ""))
    return Recording(fmt, events, malformed, skipped=skipped[0], total=len(items) + count, read_as=read_as)


def _shown(rows: Iterator[_Row], name: str | None, doing: str) -> Iterator[_Row]:
    """``rows``, with a bar on stderr when ``name`` is given (from two seconds on)."""
    if name is None:
        return rows
    from tqdm import tqdm

    return tqdm(rows, desc=f"{doing} {name}", unit=" rows", unit_scale=True, delay=2.0, mininterval=0.5,
                file=sys.stderr, dynamic_ncols=True, leave=False)


#: Rows of a file out of time order sorted in memory at once (about 200 MB of events); a
#: longer file is sorted in runs of this many, each kept in a temporary file, and the
#: runs are merged on each pass over the recording.
SORT_RUN_ROWS = 500_000
#: Rows pickled together in a run's file (what a merge holds of each run at a time)
_RUN_BATCH = 2_000


def _by_time(row: tuple) -> tuple[float, int]:
    return row[0], row[1]


def _sort_rows(rows: Iterator[_Row]) -> tuple[Callable[[], Iterator[Event]], int]:
    """The events of ``rows`` in time order (file order breaking ties), as a function
    giving them afresh on each call, and the number of runs spilled to disk (0: the
    rows fit in one run and are held in memory)."""
    run_rows = SORT_RUN_ROWS
    spill: tempfile.TemporaryDirectory | None = None
    runs: list[str] = []
    buffer: list[_Row] = []

    def write_run() -> None:
        nonlocal spill
        if spill is None:  # private to this process (mode 0700), removed with the recording
            spill = tempfile.TemporaryDirectory(prefix="streamrec-sort-")
        path = os.path.join(spill.name, f"run{len(runs)}.pickle")
        buffer.sort(key=_by_time)
        with open(path, "wb") as fh:
            for i in range(0, len(buffer), _RUN_BATCH):
                pickle.dump([(ts, n, ev) for ts, n, ev, _ in buffer[i:i + _RUN_BATCH]], fh,
                            protocol=pickle.HIGHEST_PROTOCOL)
        runs.append(path)
        buffer.clear()

    for row in rows:
        buffer.append(row)
        if len(buffer) >= run_rows:
            write_run()
    if not runs:
        buffer.sort(key=_by_time)
        return (lambda: (ev for _, _, ev, _ in buffer)), 0
    if buffer:
        write_run()

    def merged() -> Iterator[Event]:
        if spill is None:  # never: runs were written (naming ``spill`` here keeps their folder,
            return         # removed once collected, as long as the recording that reads them)
        for _, _, ev in heapq.merge(*map(_read_run, runs), key=_by_time):
            yield ev

    return merged, len(runs)


def _read_run(path: str) -> Iterator[tuple[float, int, Event]]:
    """The rows of one sorted run, a batch at a time (a file this process wrote itself:
    a pickle from anywhere else is never read)."""
    with open(path, "rb") as fh:
        while True:
            try:
                batch = pickle.load(fh)
            except EOFError:
                return
            yield from batch


def _item_fields(got: dict[str, Any]) -> tuple[str, str | None, str | None, float | None]:
    """(item, title, category, price) of a row that describes its item, each checked as
    the ``items`` topic checks it."""
    title, category = got.get("title") or None, got.get("category") or None
    for name, text in (("title", title), ("category", category)):
        if text is not None and len(text) > MAX_TITLE_CHARS:
            raise ValueError(f"{name}: longer than {MAX_TITLE_CHARS} characters")
    price = None
    given = got.get("price")
    if given not in (None, ""):
        try:
            price = float(given)
        except (TypeError, ValueError):
            raise ValueError(f"price: {str(given)[:20]!r} is not a number") from None
        if isinstance(given, bool) or not math.isfinite(price) or price < 0:  # (a JSON true is no price)
            raise ValueError(f"price: {str(given)[:20]!r} is not a price")
    return got["item"], title, category, price


def _rows(reader: Iterator[list[str]], malformed: Malformed, path: Path) -> Iterator[list[str]]:
    """The rows of a ``csv.reader`` over ``path``; a row it cannot read (a field past the
    csv module's size limit, say after an unclosed quote) is malformed, and reading goes
    on after it. Text that is not in the file's encoding stops the reading with
    ``ValueError``."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            malformed.add(f"{path.name}:{getattr(reader, 'line_num', '?')}", f"unreadable row ({e})")
        except UnicodeDecodeError as e:
            raise _not_encoded(path, e) from None


def _sample(fh: Any, path: Path) -> str:
    """The start of a text file, to sniff its delimiter from."""
    try:
        return fh.read(65536)
    except UnicodeDecodeError as e:
        raise _not_encoded(path, e) from None


def _not_encoded(path: Path, e: UnicodeDecodeError) -> ValueError:
    """The error for a file that is not in the encoding it is read with: its first line
    that is not, and the flag that reads it."""
    line, byte = None, e.object[e.start:e.start + 1]
    with open_recorded(path) as fh:  # lines decode alike in one go or one by one (a newline is one byte)
        for n, raw in enumerate(fh, start=1):
            try:
                raw.decode(e.encoding)
            except UnicodeDecodeError as at:
                line, byte = n, at.object[at.start:at.start + 1]
                break
    encoding = "UTF-8" if e.encoding.startswith("utf") else e.encoding
    where = f"{path.name}:{line}" if line else path.name
    return ValueError(f"{where}: not {encoding} text (byte {byte!r}); give the file's encoding with "
                      "--encoding, e.g. --encoding cp1252 for a spreadsheet saved on Windows, or latin-1")


def _quantity(text: str) -> int | str:
    """An integral quantity as an int ("2", "2.0"); anything else as it is, for the
    validation step to reject with its reason."""
    try:
        q = float(text)
    except ValueError:
        return text
    return int(q) if math.isfinite(q) and q == int(q) else text


# -- catalog files: a shop's product export beside its events -------------------------------

#: The fields a catalog file's row can fill. ``item`` is required, and an item is
#: published only once one of its rows gives a ``title``.
CATALOG_FIELDS = ("item", "title", "description", "category", "price", "available")
#: Column names looked for in a catalog file, as ``COLUMN_NAMES`` for events: product
#: exports (H&M's ``articles.csv``, Shopify's and WooCommerce's product CSVs) name them so.
CATALOG_COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "item": (*COLUMN_NAMES["item"], "id", "handle"),
    "title": (*COLUMN_NAMES["title"], "name", "prod_name"),
    "description": ("description", "detail_desc", "product_description", "body_(html)", "body_html", "body",
                    "long_description", "short_description"),
    "category": (*COLUMN_NAMES["category"], "categories", "product_type", "product_type_name", "type",
                 "department", "department_name"),
    "price": (*COLUMN_NAMES["price"], "regular_price", "variant_price", "sale_price"),
    "available": ("available", "availability", "in_stock", "in_stock?", "is_available", "stock_status"),
}
#: Catalog fields that may join several columns (their non-empty cells, by a space)
CATALOG_JOINABLE = ("title", "description", "category")
#: What an ``available`` cell means (lower case, ``-`` and spaces read as ``_``); a whole
#: number is a stock count (0: not available)
AVAILABILITY: dict[str, bool] = {
    **dict.fromkeys(("1", "true", "t", "yes", "y", "instock", "in_stock", "available", "onbackorder",
                     "on_backorder", "preorder"), True),
    **dict.fromkeys(("0", "false", "f", "no", "n", "outofstock", "out_of_stock", "unavailable", "sold_out",
                     "soldout", "discontinued"), False),
}
#: Shopper events whose items are looked up in a catalog file before a replay starts
#: (an item id column that does not match the events' shows in the share found)
CATALOG_SAMPLE = 10_000
_TAG = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"\s+")


def _plain_text(text: str) -> str:
    """A description's text without its HTML tags and entities, in single spaces.

    >>> _plain_text("<p>Soft <b>wool</b>&nbsp;scarf &amp; hat</p>")
    'Soft wool scarf & hat'
    """
    if "<" in text or "&" in text:
        text = html.unescape(_TAG.sub(" ", text))
    return _SPACES.sub(" ", text).strip()


def _availability(text: str) -> bool:
    kind = AVAILABILITY.get(_norm(text))
    if kind is None:
        if not text.strip().isdigit():
            raise ValueError(f"available: {text[:20]!r} is neither yes/no, in/out of stock nor a stock count")
        kind = int(text) > 0
    return kind


@dataclass(frozen=True, slots=True)
class CatalogFile:
    """A product catalog kept apart from the events (``--catalog``): a CSV file with a
    header, or JSON lines of ``items`` values (``{"item_id", "title", ...}``, bare or as
    ``{"topic": "items", "value": ...}``; a ``.jsonl``, ``.ndjson`` or ``.json`` file).

    Its items are published when the recording starts, ahead of the recording's own
    catalog (whose items the file names are left out: the file says what they are).
    CSV columns are found by their usual names (``CATALOG_COLUMN_NAMES``) or named in
    ``columns`` (``--catalog-columns item=SKU,title=Name``); title, description and
    category may join columns (``title=prod_name+colour_group_name``). A row that names
    an item again fills in only what its earlier rows left empty (a product's variant
    rows follow its main row, their title empty); an item no row gives a title is left
    out, counted. Every item goes through the ``items`` topic's validation step;
    descriptions lose their HTML and are cut to the topic's limit.

    >>> CatalogFile.parse("products.csv", "item=SKU,title=Name+Brand").columns
    {'item': 'SKU', 'title': 'Name+Brand'}
    >>> CatalogFile.parse("products.csv", "price=Name+Brand")
    Traceback (most recent call last):
    ValueError: --catalog-columns: only title, description and category may join columns, not price
    """

    path: Path
    columns: dict[str, str] = field(default_factory=dict)
    delimiter: str | None = None
    encoding: str = UTF8

    @classmethod
    def parse(cls, path: str | os.PathLike, columns: str | None = None, delimiter: str | None = None,
              encoding: str | None = None) -> CatalogFile:
        """From ``--catalog PATH``, ``--catalog-columns field=column,...``, a delimiter and
        ``--encoding``."""
        cols = _pairs(columns or "", "--catalog-columns")
        unknown = sorted(set(cols) - set(CATALOG_FIELDS))
        if unknown:
            raise ValueError(f"--catalog-columns: unknown field(s) {', '.join(unknown)}; "
                             f"fields: {', '.join(CATALOG_FIELDS)}")
        joined = sorted(f for f, v in cols.items() if "+" in v and f not in CATALOG_JOINABLE)
        if joined:
            raise ValueError("--catalog-columns: only title, description and category may join columns, "
                             f"not {', '.join(joined)}")
        if cols.get("item") == NO_COLUMN:
            raise ValueError("--catalog-columns: the item id cannot be left out")
        return cls(Path(path), cols, _delimiter(delimiter), text_encoding(encoding))

    @property
    def is_jsonl(self) -> bool:
        suffixes = [x.lower() for x in self.path.suffixes]
        if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz"):
            suffixes.pop()
        return bool(suffixes) and suffixes[-1] in (".jsonl", ".ndjson", ".json")

    def read(self, malformed: Malformed) -> tuple[dict[str, dict[str, Any]], str]:
        """Item -> its fields (and ``"line"``, where it was first named), in file order,
        and how the file was read; each bad row is added to ``malformed``."""
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such catalog file")
        if self.is_jsonl:
            return self._read_jsonl(malformed), f"catalog {self.path.name}: items values"
        with open_recorded(self.path, "rt", encoding=self.encoding, newline="") as fh:
            sample = _sample(fh, self.path)  # (the encoding checked before the header is read)
            delimiter = self.delimiter or _sniff_delimiter(sample)
            fh.seek(0)
            reader = csv.reader(fh, delimiter=delimiter)
            try:
                header = next(reader, None)
            except csv.Error as e:
                raise ValueError(f"{self.path.name}: unreadable header ({e})") from None
            if header is None:
                raise ValueError(f"{self.path.name}: empty (a header row was expected)")
            index = _find_columns(header, self.columns, self.path, CATALOG_COLUMN_NAMES, CATALOG_JOINABLE)
            for f in ("item", "title"):
                if f not in index:
                    raise ValueError(f"{self.path.name}: no column found for the {f}; the header has "
                                     f"{', '.join(map(repr, header))[:300]}; name it with --catalog-columns, "
                                     f"e.g. --catalog-columns {f}=...")
            width = max(max(i) if isinstance(i, tuple) else i for i in index.values()) + 1
            items: dict[str, dict[str, Any]] = {}
            for row in _rows(reader, malformed, self.path):
                n = reader.line_num
                if len(row) < width:
                    if any(c.strip() for c in row):
                        malformed.add(f"{self.path.name}:{n}", f"expected at least {width} fields, got {len(row)}")
                    continue
                got = {f: " ".join(filter(None, (_value(row[c]) for c in cols))) if isinstance(cols, tuple)
                       else _value(row[cols]) for f, cols in index.items()}
                try:
                    self._add(items, got, n)
                except ValueError as e:
                    malformed.add(f"{self.path.name}:{n}", str(e))
        names = dict(enumerate(header))
        columns = ", ".join(f"{f}={'+'.join(names[c] for c in (index[f] if isinstance(index[f], tuple) else (index[f],)))}"
                            for f in CATALOG_FIELDS if f in index)
        return items, f"catalog {self.path.name}: {columns}"

    def _read_jsonl(self, malformed: Malformed) -> dict[str, dict[str, Any]]:
        items: dict[str, dict[str, Any]] = {}
        for n, _, obj in _json_lines(self.path, malformed):
            if isinstance(obj, dict) and obj.get("topic") == "items" and isinstance(obj.get("value"), dict):
                obj = obj["value"]
            if not isinstance(obj, dict) or not isinstance(obj.get("item_id"), str):
                malformed.add(f"{self.path.name}:{n}", 'expected an items value {"item_id": ..., "title": ...}')
                continue
            got = {f: obj.get(k) for f, k in (("item", "item_id"), ("title", "title"), ("description", "description"),
                                               ("category", "category"), ("price", "price"),
                                               ("available", "available")) if obj.get(k) not in (None, "")}
            try:
                self._add(items, got, n)
            except ValueError as e:
                malformed.add(f"{self.path.name}:{n}", str(e))
        return items

    @staticmethod
    def _add(items: dict[str, dict[str, Any]], got: dict[str, Any], line: int) -> None:
        """Fold one row's non-empty fields into its item's where that has none yet, each
        checked first: a row with a bad field changes nothing."""
        if not got.get("item"):
            raise ValueError("no item id")
        for name in ("title", "category", "description"):
            if not isinstance(got.get(name) or "", str):
                raise ValueError(f"{name}: must be a string")
        item, title, category, price = _item_fields(got)
        fields: dict[str, Any] = {k: v for k, v in (("title", title), ("category", category), ("price", price))
                                  if v is not None}
        text = got.get("description")
        if text:
            if not isinstance(text, str):
                raise ValueError("description: must be a string")
            text = _plain_text(text)
            if len(text) > MAX_TEXT_CHARS:  # a product page's text: its start describes it
                text = text[:MAX_TEXT_CHARS].rsplit(" ", 1)[0]
                fields["shortened"] = True
            if text:
                fields["description"] = text
        available = got.get("available")
        if available not in (None, ""):
            fields["available"] = available if isinstance(available, bool) else _availability(str(available))
        kept = items.get(item)
        if kept is None:
            items[item] = {"line": line, **fields}
        else:
            for name, value in fields.items():
                kept.setdefault(name, value)


    def items(self, ts: float, malformed: Malformed, described: dict[str, dict[str, Any]] | None = None,
              read_as: str = "") -> tuple[list[Item], str]:
        """The file's items, stamped ``ts``, and how it was read (its columns, the items
        made, those left out); bad rows and items are added to ``malformed``.
        ``described`` and ``read_as``: what ``read`` gave, when it was called already."""
        if described is None:
            described, read_as = self.read(malformed)
        items, untitled, shortened = [], 0, 0
        for item_id, fields in described.items():
            if "title" not in fields:
                untitled += 1
                continue
            shortened += fields.get("shortened", False)
            value = {"item_id": item_id, "ts": ts, **{f: fields[f] for f in CATALOG_FIELDS[1:] if f in fields}}
            ev = parse_value("items", value, now=math.inf)
            if isinstance(ev, Rejected):
                malformed.add(f"{self.path.name}:{fields['line']}", f"items: {ev.reason}")
            else:
                items.append(ev)
        read_as += f"; {len(items):,} items"
        left = [f"{untitled:,} without a title left out"] if untitled else []
        left += [f"{shortened:,} descriptions cut to {MAX_TEXT_CHARS:,} characters"] if shortened else []
        return items, read_as + (f" ({', '.join(left)})" if left else "")


def _with_catalog(recording: Recording, catalog: CatalogFile) -> Recording:
    """``recording`` with ``catalog``'s items published first, at the time of its first
    event; the recording's own catalog items that the file names are left out."""
    described, read_as = catalog.read(recording.malformed)
    start: float | None = None
    own: list[str] = []  # the recording's own catalog: the items before its first other event
    sampled, found = 0, 0  # shopper events looked at, and those on the file's items
    for ev in recording:
        if start is None:
            start = ev.ts
        if isinstance(ev, Item):
            if not sampled:
                own.append(ev.item_id)
        elif isinstance(ev, (Click, Cart)):
            sampled += 1
            found += ev.item_id in described
            if sampled >= CATALOG_SAMPLE:
                break
    items, read_as = catalog.items(BASE_TS if start is None else start, recording.malformed, described, read_as)
    named = {i.item_id for i in items}
    own_events = recording.events_factory

    def events() -> Iterator[Event]:
        yield from items
        head = True  # the recording's own catalog: the items before its first shopper event
        for ev in own_events():
            if head:
                if isinstance(ev, Item):
                    if ev.item_id in named:
                        continue
                elif isinstance(ev, (Click, Cart)):
                    head = False
            yield ev

    if sampled:
        share = found / sampled
        read_as += (f"; the items of {share:.1%} of the first {sampled:,} shopper events are in it" if found else
                    f"; none of the items of the first {sampled:,} shopper events is in it: is the item id "
                    "column the one the events name (--catalog-columns item=...)?")
    recording.events_factory = events
    recording.total = (recording.total or 0) + len(items) - sum(i in named for i in own)
    recording.read_as = f"{recording.read_as}; {read_as}" if recording.read_as else read_as
    return recording


# -- taobao: the csv reader with the data set's layout ---------------------------------------

#: Taobao's UserBehavior.csv: no header; user, item, category, behavior, unix seconds
TAOBAO_LAYOUT = CsvLayout(columns={"user": "0", "item": "1", "action": "3", "time": "4"},
                          actions={"pv": "click", "cart": "add", "buy": "purchase", "fav": "skip"}, delimiter=",")


def _read_taobao(path: Path, limit: int | None = None, progress: bool = False) -> Recording:
    """The csv reader with ``TAOBAO_LAYOUT``: the same checks, and bounded memory for
    the full data set (100 million rows, unsorted)."""
    file = path / "UserBehavior.csv" if path.is_dir() else path
    return _read_csv(file, TAOBAO_LAYOUT, limit, fmt="taobao", id_prefix="tb", progress=progress)


_OPENERS: dict[str, Callable[[Path], Recording]] = {
    "sessions": _read_sessions, "session-tsv": _read_session_tsv,
    "online-retail": _read_online_retail,
}
