"""Every LLM answer is checked before use; a failed check names its reason.

An answer passes only when it parses as the JSON asked for, stays within length
limits, carries no link, email, phone, card number, address, HTML or script, and
names no known item other than the recommended ones (by catalog title or id).

>>> allowed = {"i1": "Blue Mug", "i2": "Tea Pot"}
>>> foreign = {"i7": "Garden Hose", "sku-9912": "Red Kettle"}
>>> check_answer('{"headline": "Tea time", "body": "The Blue Mug pairs with the Tea Pot."}',
...              allowed, foreign).ok
True
>>> check_answer('{"headline": "Tea time", "body": "Also try the garden hose!"}', allowed, foreign).reason
'foreign_item'
>>> check_answer('{"headline": "Tea", "body": "See https://x.example"}', allowed, foreign).reason
'url'
>>> check_answer('{"headline": "Tea", "body": "<b>hot</b> tea"}', allowed, foreign).reason
'html'
>>> check_answer('Sure! Here is the copy', allowed, foreign).reason
'not_json'
>>> check_answer('{"headline": "Tea", "body": "The Tea Pot, now 50% off!"}', allowed, foreign).reason
'price'
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Mapping

import orjson

from models.copywriting.pii import find_pii
from models.copywriting.prompt import BODY_MAX, HEADLINE_MAX

HEADLINE_MIN = 3
BODY_MIN = 10

#: Every reason a check can fail with (metric label values).
REASONS = ("not_json", "bad_shape", "too_long", "too_short", "url", "html", "email", "phone",
           "card", "personal_data", "foreign_item", "placeholder", "control_chars", "price", "meta", "repetitive")

_HTML = re.compile(r"<\s*/?\s*[a-zA-Z!][^>]*>|&lt;|&#x?\d+;|\bon\w+\s*=|\bjavascript\s*:|[<(]\s*/?\s*script\b",
                   re.IGNORECASE)
_URLISH = re.compile(r"\b(?:https?|ftp)://|\bwww\.|\]\(|\b[\w-]+\.(?:com|net|org|io|shop|biz|info|ru|cn|xyz|"
                     r"top|app|example|ly)\b", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\[(?:email|phone|card|number|address|postcode|iban|link|handle|name)\]")
# Prices and discounts are not in the signals, so copy must not invent them.
_PRICE = re.compile(r"[$€£¥]\s?\d|\d\s?(?:usd|eur|gbp|dollars?|euros?|pounds?)\b|\d+\s?%\s?off\b|\bfree\s+shipping\b",
                    re.IGNORECASE)
# Talk about prompts and instructions means the model followed (or leaked) something it should not.
_META = re.compile(r"\bsystem prompt\b|\b(?:previous|prior|above|new|these) instructions\b|\bignore (?:all|the|any|"
                   r"previous|prior)\b|\bas an ai\b|\blanguage model\b|\bas the assistant\b", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)
_WORD = re.compile(r"[^\w]+")


@dataclass(slots=True, frozen=True)
class CheckResult:
    ok: bool
    reason: str | None = None
    headline: str = ""
    body: str = ""


@functools.lru_cache(maxsize=65536)
def _norm(text: str) -> str:
    return " " + _WORD.sub(" ", text.lower()).strip() + " "


def _fail(reason: str) -> CheckResult:
    return CheckResult(False, reason)


def mentions_foreign(text: str, allowed: Mapping[str, str | None], foreign: Mapping[str, str | None]) -> bool:
    """True when ``text`` names a known item that is not among ``allowed`` (id -> title).

    A foreign title counts when it appears as whole words and is not itself part of an
    allowed title ("Mug" is not foreign when "Blue Mug" is recommended). Ids count
    when they appear as a whole token and look like ids (contain a digit).

    >>> mentions_foreign("the Blue Mug", {"i1": "Blue Mug"}, {"i2": "Mug"})
    False
    >>> mentions_foreign("try i2 today", {"i1": "Blue Mug"}, {"i2": "Mug"})
    True
    """
    norm = _norm(text)
    allowed_titles = [_norm(t) for t in allowed.values() if t]
    tokens = set(re.findall(r"[\w-]+", text))
    for item_id, title in foreign.items():
        if item_id in allowed:
            continue
        if item_id in tokens and any(c.isdigit() for c in item_id):
            return True
        if not title:
            continue
        t = _norm(title)
        if len(t.strip()) < 4 or not any(len(w) >= 3 for w in t.split()):
            continue
        if t in norm and not any(t in a for a in allowed_titles):
            return True
    return False


def repetitive(text: str, n: int = 3, times: int = 3) -> bool:
    """True when some run of ``n`` words recurs ``times`` times (a degenerate answer).

    >>> repetitive("it is very popular for the most, it is very popular for the most, it is very popular")
    True
    >>> repetitive("The Blue Mug keeps tea hot; the Tea Pot keeps it coming.")
    False
    """
    words = _norm(text).split()
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return bool(grams) and max(grams.values()) >= times


def check_answer(raw: str | None, allowed: Mapping[str, str | None], foreign: Mapping[str, str | None],
                 ) -> CheckResult:
    """Validate one raw LLM answer against the recommended (``allowed``) and other
    known (``foreign``) items, both id -> catalog title."""
    if not raw or not raw.strip():
        return _fail("not_json")
    fenced = _FENCE.match(raw)
    try:
        data = orjson.loads(fenced.group(1) if fenced else raw)
    except orjson.JSONDecodeError:
        return _fail("not_json")
    if not isinstance(data, dict):
        return _fail("bad_shape")
    headline, body = data.get("headline"), data.get("body")
    if not isinstance(headline, str) or not isinstance(body, str):
        return _fail("bad_shape")
    headline, body = " ".join(headline.split()), " ".join(body.split())
    if len(headline) > HEADLINE_MAX or len(body) > BODY_MAX:
        return _fail("too_long")
    if len(headline) < HEADLINE_MIN or len(body) < BODY_MIN:
        return _fail("too_short")
    text = f"{headline}\n{body}"
    if _CONTROL.search(text):
        return _fail("control_chars")
    if _HTML.search(text):
        return _fail("html")
    if _URLISH.search(text):
        return _fail("url")
    if _PLACEHOLDER.search(text):
        return _fail("placeholder")
    if _META.search(text):
        return _fail("meta")
    if _PRICE.search(text):
        return _fail("price")
    pii = find_pii(text)
    if pii:
        for kind in ("url", "email", "phone", "card"):
            if kind in pii or (kind == "url" and "link" in pii):
                return _fail(kind)
        return _fail("personal_data")
    if mentions_foreign(text, allowed, foreign):
        return _fail("foreign_item")
    if repetitive(body):
        return _fail("repetitive")
    return CheckResult(True, None, headline, body)
