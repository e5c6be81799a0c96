"""Finding the keys streamrec cannot use, and deleting them: ``streamrec check-store``.

A key holds what its use cannot take when something else wrote it or it was damaged:
a hash where a sorted set belongs, text in a counter, a purchase record that does not
parse. Every event that touches such a key goes to ``dead-letter`` until the key is
gone (README, Delivery). This walks a Redis store with ``SCAN`` (never ``KEYS``, so a
live store keeps serving), sorts every key under the prefix into its family (the
families of ``models.features.keys``), checks its kind with ``TYPE`` and, for the
families whose values are parsed on the hot path, its contents with the parsers the
workers use. Keys under the prefix that are no family's are counted and left alone:
with an empty prefix they are another application's.

``repair`` deletes the damaged keys, each one only if it is still damaged when it
goes (``WATCH`` on the key, checked again, then ``UNLINK`` in a transaction): a key a
worker or ``streamrec forget`` mended meanwhile stays.

>>> family_of("shop1:{u:alice}:cart", "shop1:").name
"a shopper's cart"
>>> family_of("shop1:{i:i9}:covis", "shop1:").kind
'zset'
>>> family_of("other:thing", "shop1:") is None
True
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from models.features.store import counts_as_number, key_for_humans

#: why a value cannot be used, or None when it can
ContentCheck = Callable[[Any], "str | None"]


def _utf8(value: bytes) -> str | None:
    try:
        value.decode()
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    return None


def _json(value: bytes) -> str | None:
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return "is not JSON"
    return None


def _last_rec(value: bytes) -> str | None:
    from models.pipeline import unpack_record

    try:
        unpack_record(value)
    except (ValueError, TypeError, AttributeError):
        return "is not a list record"
    return None


def _snapshot(value: bytes) -> str | None:
    from models.ranking import SnapshotError, parse_snapshot

    try:
        parse_snapshot(value)
    except SnapshotError as e:
        return str(e)
    return None


def _fields(check: Callable[[str, str], str | None]) -> ContentCheck:
    """A hash's check: ``check(field, value)`` on each field, after both decode as text."""
    def run(fields: dict[bytes, bytes]) -> str | None:
        for f, v in fields.items():
            try:
                name, text = f.decode(), v.decode()
            except UnicodeDecodeError:
                return "has a field that is not UTF-8 text"
            why = check(name, text)
            if why:
                return why
        return None
    return run


def _number(name: str, value: str) -> str | None:
    return None if counts_as_number(value) else f"field {name} is not a number"


def _session_field(name: str, value: str) -> str | None:
    return _number(name, value) if name == "last" else None


def _purchase_field(name: str, value: str) -> str | None:
    from models.pipeline import parse_purchase

    try:
        parse_purchase(value)
    except ValueError:
        return f"field {name} is not a purchase record (count|time)"
    return None


@dataclass(frozen=True)
class Family:
    """One kind of key: what it is, its shape after the prefix, the Redis kind it holds,
    how its contents are checked (None: any value of that kind is usable), and what
    deleting it costs."""
    name: str
    shape: re.Pattern[str]
    kind: str
    contents: ContentCheck | None = None
    loss: str = ""
    #: a hash that can hold a field per catalog item: read in slices (HSCAN), not whole
    large: bool = False


def _f(name: str, shape: str, kind: str, contents: ContentCheck | None = None, loss: str = "",
       large: bool = False) -> Family:
    return Family(name, re.compile(shape, re.S), kind, contents, loss, large)


_U, _I = r"\{u:.*\}:", r"\{i:.*\}:"
FAMILIES: tuple[Family, ...] = (
    _f("a shopper's recent items", _U + "recent", "string", _utf8, "their recent items, rebuilt by their next events"),
    _f("a shopper's session", _U + "session", "hash", _fields(_session_field), "their session: the next event starts a new one"),
    _f("a shopper's session ids", _U + "sessions", "list", None,
       "what erasing them finds of their sessions' item lists (which expire on their own)"),
    _f("a shopper's cart", _U + "cart", "hash", _fields(_number), "their cart as streamrec knows it"),
    _f("a shopper's purchase record", _U + "purchases", "hash", _fields(_purchase_field),
       "their purchases: items they bought may be recommended again"),
    _f("a shopper's purchases (older releases)", _U + "bought", "set", None, "as the purchase record"),
    _f("a shopper's counters", _U + "profile", "hash", _fields(_number), "their click, cart and purchase counts"),
    _f("a shopper's latest list", _U + "rec", "string", _json, "the list the web API serves them until the next"),
    _f("a shopper's latest list with copy", _U + "rec-enriched", "string", _json, "as their latest list"),
    _f("a shopper's last list for labels", _U + "last-rec", "string", _last_rec,
       "the labels their next clicks would give the ranker"),
    _f("a shopper's text taste", _U + "vector", "string", None, "their taste, rebuilt by their next clicks"),
    _f("a session's items", r"\{s:.*\}:items", "string", _utf8, "that session as a neighbour in session-kNN"),
    _f("an item's co-visitation", _I + "covis", "zset", None, "its co-visitation counts, rebuilt by later sessions"),
    _f("an item's next items", _I + "next", "zset", None, "its next-item counts, rebuilt by later sessions"),
    _f("an item's recent sessions", _I + "sessions", "list", None, "its session-kNN index, rebuilt by later sessions"),
    _f("an item's catalog entry", _I + "meta", "hash", None, "its catalog fields until the item is published again on items"),
    _f("an item's text vector", _I + "vector", "string", None, "its text vector until the item is published again on items"),
    _f("an item's reviews", _I + "reviews", "list", None, "its recent reviews"),
    _f("popularity", r"popularity:-?\d+", "zset", None, "one period's popularity, rebuilt by later events"),
    _f("interaction totals", r"item-counts", "hash", _fields(_number), "every item's interaction total", large=True),
    _f("a dedupe marker", r"seen:.*", "string", None, "one event's marker: redelivered, it would count again"),
    _f("a list for feedback", r"rec:.*", "string", _json, "the feedback on one list (its clicks count for nothing)"),
    _f("the ranker snapshot", r"snapshot:ranker", "string", _snapshot,
       "the ranker's snapshot: a restarted worker starts cold until the next snapshot"),
    _f("a learner snapshot", r"snapshot:.*", "string", None, "that snapshot"),
    _f("click-through counts", r"ctr", "hash", _fields(_number), "the click-through counts per source and version"),
    _f("cached copy", r"copy:.*", "string", _json, "one cached copy, written again on its next use"),
    _f("the catalog's ids", r"catalog", "set", None, "the catalog's id list until the items are published again"),
)


def family_of(key: str, prefix: str = "") -> Family | None:
    """The family ``key`` belongs to under ``prefix``, or None when it is not streamrec's."""
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix):]
    for fam in FAMILIES:
        if fam.shape.fullmatch(rest):
            return fam
    return None


@dataclass(frozen=True)
class Damage:
    key: str  #: whole, for ``repair``; show ``key_for_humans(key)``
    family: Family
    reason: str

    def describe(self) -> str:
        return f"{key_for_humans(self.key)} ({self.family.name}) {self.reason}; deleting it loses {self.family.loss}"


@dataclass
class Report:
    prefix: str
    keys: int = 0  #: every key under the prefix
    foreign: int = 0  #: under the prefix but no family's: left alone
    per_family: dict[str, int] = field(default_factory=dict)
    damaged: list[Damage] = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "keys": self.keys, "foreign": self.foreign, "per_family": self.per_family,
                "seconds": round(self.seconds, 3),
                "damaged": [{"key": key_for_humans(d.key), "family": d.family.name, "reason": d.reason,
                             "loses": d.family.loss} for d in self.damaged]}


def _text(name: bytes | str) -> str | None:
    if isinstance(name, str):
        return name
    try:
        return name.decode()
    except UnicodeDecodeError:
        return None


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


async def _why(client: Any, key: str, fam: Family, kind: str, contents: Any = None) -> str | None:
    """Why ``key`` (of ``kind``) cannot be used as ``fam`` says, or None (it is gone or fine)."""
    if kind == "none":
        return None
    if kind != fam.kind:
        return f"holds a {kind}; needs a {fam.kind}"
    if fam.contents is None:
        return None
    if contents is None:
        contents = await _read_contents(client, key, fam)
    return fam.contents(contents) if contents is not None else None


async def _read_contents(client: Any, key: str, fam: Family) -> Any:
    if fam.kind == "string":
        return await client.get(key)
    if fam.large:
        fields: dict[bytes, bytes] = {}
        async for f, v in client.hscan_iter(key, count=1000):
            fields[f] = v
        return fields
    return await client.hgetall(key)


async def check_store(client: Any, prefix: str = "", *, scan_count: int = 1000,
                      on_keys: Callable[[int], None] | None = None) -> Report:
    """Walk every key under ``prefix`` of the Redis behind ``client`` (a ``redis.asyncio``
    client answering bytes) and report the damaged ones; changes nothing.
    ``on_keys(n)`` is called after each slice of ``n`` keys (a progress bar)."""
    t0 = time.perf_counter()
    report = Report(prefix)
    cursor = 0
    match = _glob_escape(prefix) + "*"
    while True:
        cursor, raw = await client.scan(cursor, match=match, count=scan_count)
        # streamrec writes its key names as UTF-8: a name that is not is someone else's
        names = [_text(k) for k in raw]
        ours = [(k, fam) for k in names if k is not None and (fam := family_of(k, prefix)) is not None]
        report.keys += len(names)
        report.foreign += len(names) - len(ours)
        if ours:
            pipe = client.pipeline(transaction=False)
            for k, _ in ours:
                pipe.type(k)
            kinds = [k.decode() if isinstance(k, bytes) else k for k in await pipe.execute()]
            # the contents of the keys of the right kind whose values the workers parse, in one round trip
            to_read = [(k, fam) for (k, fam), kind in zip(ours, kinds)
                       if kind == fam.kind and fam.contents is not None and not fam.large]
            pipe = client.pipeline(transaction=False)
            for k, fam in to_read:
                (pipe.get if fam.kind == "string" else pipe.hgetall)(k)
            contents = dict(zip((k for k, _ in to_read), await pipe.execute())) if to_read else {}
            for (k, fam), kind in zip(ours, kinds):
                report.per_family[fam.name] = report.per_family.get(fam.name, 0) + 1
                why = await _why(client, k, fam, kind, contents.get(k))
                if why:
                    report.damaged.append(Damage(k, fam, why))
        if on_keys is not None:
            on_keys(len(names))
        if cursor == 0:
            break
    report.damaged.sort(key=lambda d: d.key)
    report.seconds = time.perf_counter() - t0
    return report


async def repair(client: Any, damaged: list[Damage], *, tries: int = 3) -> tuple[int, int]:
    """Delete each damaged key that is still damaged when it goes; (deleted, left:
    mended or gone meanwhile). A key changed between the check and the delete is
    checked again (up to ``tries`` times)."""
    from redis.exceptions import WatchError

    deleted = left = 0
    for d in damaged:
        gone = False
        for _ in range(tries):
            async with client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(d.key)
                    kind = await pipe.type(d.key)
                    kind = kind.decode() if isinstance(kind, bytes) else kind
                    if await _why(pipe, d.key, d.family, kind) is None:
                        break
                    pipe.multi()
                    pipe.unlink(d.key)
                    await pipe.execute()
                    gone = True
                    break
                except WatchError:
                    continue
        deleted += gone
        left += not gone
    return deleted, left
