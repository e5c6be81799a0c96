"""Decoding and validation: every unusable input becomes a Rejected with a reason."""

from __future__ import annotations

import orjson
import pytest

from models.events import (MAX_MESSAGE_BYTES, Cart, Click, Feedback, Forget, Item, Rejected, Review,
                           parse, to_dict)

NOW = 1_700_000_000.0


def click(**kw):
    base = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": NOW}
    base.update(kw)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def test_valid_events_of_every_topic_round_trip():
    cases = {
        "clicks": Click("e1", "u1", "i1", NOW, "s1", "r1"),
        "carts": Cart("e2", "u1", "i1", "purchase", NOW, 2),
        "items": Item("i1", "Red mug", NOW, "A mug", "kitchen", 4.5, True),
        "reviews": Review("e3", "u1", "i1", "Nice", NOW, 4.0),
        "feedback": Feedback("e4", "u1", "r1", "click", NOW, "i1"),
        "forget": Forget("e5", "u1", NOW),
    }
    for topic, event in cases.items():
        assert parse(topic, orjson.dumps(to_dict(event)), now=NOW) == event


def test_integer_ids_are_accepted_as_strings():
    e = parse("clicks", b'{"event_id": 1, "user_id": 2, "item_id": 3, "ts": 1700000000}', now=NOW)
    assert (e.event_id, e.user_id, e.item_id) == ("1", "2", "3")


MALFORMED = {
    "not json": (b"{nope", "not JSON"),
    "not an object": (b"[1, 2]", "expected a JSON object"),
    "empty value": (None, "empty message"),
    "missing user": (click(user_id=...), "user_id: missing"),
    "wrong id type": (click(item_id=[1]), "item_id: must be a string"),
    "bool id": (click(user_id=True), "user_id: must be a string"),
    "empty id": (click(user_id="  "), "user_id: empty"),
    "oversized id": (click(item_id="x" * 500), "item_id: longer than"),
    "control chars in id": (click(user_id="a\nb"), "user_id: control characters"),
    "ts as string": (click(ts="yesterday"), "ts: must be a number"),
    "ts in milliseconds far future": (click(ts=NOW * 1000), "more than a day in the future"),
    "ts before 2000": (click(ts=12), "before 2000-01-01"),
    "ts overflows": (b'{"event_id":"e","user_id":"u","item_id":"i","ts":1e999}', "infinity"),
    "oversized message": (b'{"pad": "' + b"x" * MAX_MESSAGE_BYTES + b'"}', "exceeds"),
    "deeply nested": (b"[" * 5000 + b"]" * 5000, "not JSON"),
    "invalid utf-8": (b'{"event_id": "\xff"}', "not JSON"),
}


@pytest.mark.parametrize("raw,reason", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_clicks_are_rejected_with_a_reason(raw, reason):
    got = parse("clicks", raw, now=NOW)
    assert isinstance(got, Rejected)
    assert reason in got.reason
    assert got.topic == "clicks"


@pytest.mark.parametrize("topic,value,reason", [
    ("carts", {"event_id": "e", "user_id": "u", "item_id": "i", "action": "steal", "ts": NOW}, "action: must be one of"),
    ("carts", {"event_id": "e", "user_id": "u", "item_id": "i", "action": "add", "ts": NOW, "quantity": 0}, "quantity"),
    ("carts", {"event_id": "e", "user_id": "u", "item_id": "i", "action": "add", "ts": NOW, "quantity": 2.5}, "quantity"),
    ("items", {"item_id": "i", "ts": NOW}, "title: missing"),
    ("items", {"item_id": "i", "title": "t", "price": -1, "ts": NOW}, "price: negative"),
    ("items", {"item_id": "i", "title": "t", "available": "yes", "ts": NOW}, "available"),
    ("reviews", {"event_id": "e", "user_id": "u", "item_id": "i", "text": "x" * 5000, "ts": NOW}, "text: longer"),
    ("reviews", {"event_id": "e", "user_id": "u", "item_id": "i", "text": "ok", "rating": 9, "ts": NOW}, "rating"),
    ("feedback", {"event_id": "e", "user_id": "u", "rec_id": "r", "action": "like", "ts": NOW}, "action"),
    ("feedback", {"event_id": "e", "user_id": "u", "action": "click", "ts": NOW}, "rec_id: missing"),
    ("nope", {"event_id": "e"}, "unknown topic"),
])
def test_malformed_events_of_other_topics(topic, value, reason):
    got = parse(topic, orjson.dumps(value), now=NOW)
    assert isinstance(got, Rejected) and reason in got.reason


def test_non_finite_numbers_from_decoded_bodies_are_rejected():
    from models.events import parse_value

    got = parse_value("clicks", {"event_id": "e", "user_id": "u", "item_id": "i", "ts": float("nan")})
    assert isinstance(got, Rejected) and "not finite" in got.reason


def test_future_is_judged_against_the_injected_clock():
    raw = click(ts=NOW + 3600)
    assert isinstance(parse("clicks", raw, now=NOW), Click)
    assert isinstance(parse("clicks", raw, now=NOW - 2 * 86_400), Rejected)
