"""Wire encodings: message keys and values in, dead-letter records out.

>>> rec = dead_letter_record("clicks", 3, 42, b"u1", b"\\xff oops", "not JSON", ts=1.0)
>>> rec["value"], rec["value_encoding"], rec["partition"]
('/yBvb3Bz', 'base64', 3)
>>> dead_letter_record("clicks", 0, 1, None, b'{"a": 1}', "x", ts=1.0)["value"]
'{"a": 1}'
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

#: Raw values longer than this are cut in dead-letter records (the reason says how long they were).
DEAD_LETTER_VALUE_BYTES = 16 * 1024


def _text_or_b64(raw: bytes | None, limit: int) -> tuple[str | None, str, bool]:
    if raw is None:
        return None, "utf-8", False
    cut = raw[:limit]
    truncated = len(raw) > limit
    try:
        return cut.decode("utf-8"), "utf-8", truncated
    except UnicodeDecodeError:
        if truncated:  # the cut may have split a character: try dropping a few bytes
            for drop in (1, 2, 3):
                try:
                    return cut[:-drop].decode("utf-8"), "utf-8", truncated
                except UnicodeDecodeError:
                    pass
        return base64.b64encode(cut).decode("ascii"), "base64", truncated


def dead_letter_record(topic: str, partition: int | None, offset: int | None, key: bytes | None,
                       value: bytes | None, error: str, ts: float | None = None) -> dict[str, Any]:
    """The ``dead-letter`` JSON for one input that could not be used."""
    text, encoding, truncated = _text_or_b64(value, DEAD_LETTER_VALUE_BYTES)
    key_text, _, _ = _text_or_b64(key, 256)
    return {"topic": topic, "partition": partition, "offset": offset, "key": key_text,
            "value": text, "value_encoding": encoding, "value_truncated": truncated,
            "value_bytes": 0 if value is None else len(value),
            "error": error, "ts": time.time() if ts is None else ts}


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def user_key(user_id: str) -> bytes:
    return user_id.encode("utf-8")
