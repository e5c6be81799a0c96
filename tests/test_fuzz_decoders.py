"""Property-based fuzzing of the decode path: nothing crashes, every rejection has a reason
and becomes a dead-letter record. `python -m benchmarks.fuzz` runs the same properties
over 100,000+ inputs."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings

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
