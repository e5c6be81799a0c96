"""Hypothesis strategies for hostile inputs on every input topic."""

from __future__ import annotations

import orjson
from hypothesis import strategies as st

from models.events import INPUT_TOPICS

FIELDS = ["event_id", "user_id", "item_id", "ts", "session_id", "rec_id", "action", "quantity", "title",
          "description", "category", "price", "available", "text", "rating"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
                    st.sampled_from(["add", "remove", "purchase", "impression", "click", "dismiss",
                                     "", " ", "\x00", "<script>", "1700000000"]),
                    st.floats(min_value=9.4e8, max_value=2e9))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=10)
plausible = st.dictionaries(st.sampled_from(FIELDS), values, max_size=len(FIELDS))


def _encode(v) -> bytes:
    try:
        return orjson.dumps(v)
    except TypeError:  # integers beyond 64 bits: orjson refuses them, send their text
        return repr(v).encode()


ids = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=24)
well_formed = st.fixed_dictionaries(
    {"event_id": ids, "user_id": ids, "item_id": ids, "ts": st.floats(min_value=1e9, max_value=1.7e9)},
    optional={"action": st.sampled_from(["add", "remove", "purchase", "click", "impression"]),
              "rec_id": ids, "title": st.text(max_size=60), "text": st.text(max_size=60),
              "quantity": st.integers(min_value=-2, max_value=20)})

raw_inputs = st.one_of(
    well_formed.map(_encode),                            # right shapes: the accepting path too
    plausible.map(_encode),                              # mostly-right objects with wrong bits
    values.map(_encode),                                 # any JSON at all
    st.binary(max_size=200),                             # bytes that are not JSON
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.integers(min_value=1, max_value=3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
topics = st.sampled_from(INPUT_TOPICS + ("unknown",))
