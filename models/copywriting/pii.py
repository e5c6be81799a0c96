"""Remove personal data from user-written text before it goes anywhere near an LLM.

``scrub`` replaces each finding with a typed placeholder; ``find_pii`` lists the
kinds found (used on LLM answers too). Over-removal is the safe side: a date or an
order number that looks like a phone number is removed as well.

>>> scrub("Mail me at jane.doe@example.com or call +1 (415) 555-0132!")
'Mail me at [email] or call [phone]!'
>>> scrub("card 4111 1111 1111 1111, not 4111 1111 1111 1112")
'card [card], not [number]'
>>> scrub("Send it to 221B Baker Street, London NW1 6XE")
'Send it to [address], London [postcode]'
>>> scrub("Wohne in der Hauptstraße 12, see https://evil.example/buy")
'Wohne in der [address], see [link]'
>>> sorted(find_pii("ring 020 7946 0958 or j@x.io"))
['email', 'phone']
>>> scrub("Great mug, 4 stars, bought 2 of them in 2023.")
'Great mug, 4 stars, bought 2 of them in 2023.'
"""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# "jane [at] mail [dot] com" and friends.
_EMAIL_SPELLED = re.compile(
    r"\b[\w.+-]+\s*[\[(]?\s*(?:at|@)\s*[\])]?\s*[\w-]+\s*[\[(]?\s*(?:dot|\.)\s*[\])]?\s*[a-z]{2,6}\b",
    re.IGNORECASE)
_URL = re.compile(
    r"(?:\b(?:https?|ftp|javascript|data):\S+)|(?:\bwww\.\S+)"
    r"|(?:\b[\w-]+(?:\.[\w-]+)*\.(?:com|net|org|io|shop|store|biz|info|co|uk|de|ru|cn|xyz|top|app|"
    r"example|ly|me|tv|site|online|link|click)\b(?:/\S*)?)",
    re.IGNORECASE)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){3,7}(?:\s?[A-Z0-9]{1,3})?\b")
# A run of digits with the separators people type inside phone and card numbers.
_DIGITS = re.compile(r"(?<![\w])\+?\(?\d[\d\s().-]{5,}\d(?![\w])")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_STREET_WORDS = (r"street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|"
                 r"terrace|close|square|sq|parkway|pkwy|highway|hwy|crescent")
_ADDRESS = re.compile(
    rf"\b\d{{1,5}}[A-Za-z]?\s+(?:[A-Z][\w'-]*\s+){{1,3}}(?:{_STREET_WORDS})\b\.?"
    r"(?:,?\s*(?:apt|apartment|suite|unit|flat)\.?\s*#?\s*\w+)?",
    re.IGNORECASE)
_ADDRESS_EU = re.compile(
    r"\b[A-ZÄÖÜ][\wäöüß-]*(?:straße|strasse|str\.|weg|gasse|platz|allee|ring|damm)\s+\d{1,4}[a-z]?\b"
    r"|\b(?:rue|via|calle|avenida|rua)\s+(?:[\w'-]+\s+){0,3}\d{1,4}\b",
    re.IGNORECASE)
_UNIT = re.compile(r"\b(?:apt|apartment|suite|unit|flat)\.?\s*#?\s*\d+\w?\b", re.IGNORECASE)
_POSTCODE_UK = re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b")
_HANDLE = re.compile(r"(?<![\w@])@[A-Za-z0-9_]{3,30}\b")
_NAME_INTRO = re.compile(r"\b(my name is|my name's|call me|i'm called|signed|regards,?|cheers,?)\s+"
                         r"[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?", re.IGNORECASE)
_NAME_START = re.compile(r"[A-Z]")


def luhn_ok(digits: str) -> bool:
    """True when ``digits`` passes the Luhn checksum (card numbers do).

    >>> luhn_ok("4111111111111111"), luhn_ok("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0 and len(digits) > 1


def _number_kind(match: str) -> str | None:
    digits = "".join(c for c in match if c.isdigit())
    if _ISO_DATE.match(match.strip()):
        return None
    if 13 <= len(digits) <= 19 and luhn_ok(digits):
        return "card"
    if 7 <= len(digits) <= 15 and (match.lstrip().startswith(("+", "(", "0")) or len(digits) >= 10
                                   or any(c in match for c in " .-()")):
        return "phone"
    if len(digits) >= 9:
        return "number"
    return None


def _names(m: re.Match) -> str:
    # "i am happy" is not a name: only capitalised words after the phrase count.
    rest = m.group(0)[len(m.group(1)):].strip()
    return f"{m.group(1)} [name]" if _NAME_START.match(rest) and rest.split()[0].lower() not in _NOT_NAMES \
        else m.group(0)


_NOT_NAMES = {"not", "very", "so", "happy", "glad", "sure", "disappointed", "impressed", "the", "a", "an"}


def _scan(text: str, found: list[str]) -> str:
    def sub(pattern: re.Pattern, kind: str, s: str) -> str:
        def repl(m: re.Match) -> str:
            found.append(kind)
            return f"[{kind}]"
        return pattern.sub(repl, s)

    text = sub(_URL, "link", sub(_EMAIL, "email", text))
    text = sub(_EMAIL_SPELLED, "email", text)
    text = sub(_IBAN, "iban", text)

    def number(m: re.Match) -> str:
        kind = _number_kind(m.group(0))
        if kind is None:
            return m.group(0)
        found.append(kind)
        # keep a trailing separator/space the run swallowed
        tail = m.group(0)[len(m.group(0).rstrip(" .-(")):]
        return f"[{kind}]{tail}"

    text = _DIGITS.sub(number, text)
    text = sub(_ADDRESS, "address", text)
    text = sub(_ADDRESS_EU, "address", text)
    text = sub(_UNIT, "address", text)
    text = sub(_POSTCODE_UK, "postcode", text)
    text = sub(_HANDLE, "handle", text)

    def name(m: re.Match) -> str:
        out = _names(m)
        if out != m.group(0):
            found.append("name")
        return out

    return _NAME_INTRO.sub(name, text)


def scrub(text: str) -> str:
    """``text`` with emails, phones, card numbers, addresses, IBANs, links, handles and
    self-introduced names replaced by ``[kind]`` placeholders."""
    return _scan(text, [])


def find_pii(text: str) -> set[str]:
    """The kinds of personal data (and links) found in ``text``; empty when clean."""
    found: list[str] = []
    _scan(text, found)
    return set(found)
