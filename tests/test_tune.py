"""``streamrec tune``: settings chosen on a shop's own stream, written as a profile
file that replay and the worker's settings then run."""

from __future__ import annotations

import copy
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from models import tuned
from models.content.index import AnnIndex
from streams.settings import Settings

#: A profile whose prior blend trusts popularity over the next-item transitions that
#: the stream below follows: the search has something to find.
BAD_PROFILE = """
[events]
exclude_current = false
exclude_purchased = true
exclude_in_cart = false
sources = ["sequential", "covis", "buy_again", "popular"]
depth = 2
prior = { sequential = 0.01, covis = 0.01, buy_again = 0.5, popular = 1.0 }
learn_ranker = false

[events.sequential]
window = 3
anchors = 4
decay = 1.0
cap = 200

[events.covis]
window = 5
anchors = 3
decay = 0.6
cap = 200
"""


def write_chain_stream(path: Path, shoppers: int = 500, clicks: int = 6, items: int = 120, seed: int = 3) -> Path:
    """Shoppers each follow a fixed successor chain (i -> 7i + 3 mod items) from a random
    item, a few steps at a time, a few of them with a popular detour: the next click
    is the current item's successor far more often than the most popular item."""
    rng = random.Random(seed)
    lines, t, n = [], 1_700_000_000.0, 0
    for u in range(shoppers):
        item = rng.randrange(items)
        for _ in range(clicks):
            n += 1
            t += 5.0
            item = (7 * item + 3) % items if rng.random() < 0.8 else rng.choice([0, 1, 2])
            value = {"event_id": f"e{n}", "user_id": f"u{u}", "item_id": f"i{item}", "ts": t}
            lines.append(orjson.dumps({"topic": "clicks", "value": value}))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_tune_finds_the_better_blend_and_writes_a_profile_file_that_runs(tmp_path: Path):
    stream = write_chain_stream(tmp_path / "clicks.jsonl")
    start = tmp_path / "start.toml"
    start.write_text(BAD_PROFILE)
    out, report = tmp_path / "shop.toml", tmp_path / "tune.json"
    done = run_cli("tune", str(stream), "--format", "jsonl", "--out", str(out), "--report", str(report),
                   "--profile-file", str(start), "--no-content", "--k", "10")
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    r = orjson.loads(report.read_bytes())
    # the parts: 60 / 20 / 20 % of the 3,000 clicks, by default
    assert r["parts"] == {"learn": 1800, "validate": 600, "test": 600}
    objective = lambda m: m["mrr@10"] + m["hit_rate@10"] / 3  # noqa: E731
    assert objective(r["chosen"]) > 1.1 * objective(r["start"])
    assert r["chosen"]["mrr@10"] > r["start"]["mrr@10"] + 0.05
    assert r["changed"], "the search changed nothing"
    # the blend moved towards the transitions the stream follows
    chosen = tuned.load("events", out)
    prior = chosen["prior"]
    assert prior["sequential"] / prior["popular"] > 0.01 / 1.0
    # every trial is reported, each with its validation metrics; only prior weights of
    # the profile's own sources and options of its own sources were tried
    settings = {t["setting"] for t in r["trials"]}
    assert "prior.sequential" in settings and "prior.session_knn" not in settings
    assert "session_knn.neighbours" not in settings and "sequential.anchors" in settings
    # buy_again proposes nothing while purchases stay out for good: its weight is not tried
    assert "prior.buy_again" not in settings and prior["buy_again"] == 0.5
    # on the newest part, which chose nothing, the choice holds
    assert r["test_chosen"]["hit_rate@10"] > r["test_start"]["hit_rate@10"]
    # the header says how the file was chosen; the rest of the profile is kept as it was
    text = out.read_text()
    assert text.startswith("# Written by `streamrec tune` from clicks.jsonl")
    assert chosen["sequential"] == {"window": 3, "anchors": chosen["sequential"]["anchors"], "decay": 1.0, "cap": 200}
    assert chosen["sources"] == ["sequential", "covis", "buy_again", "popular"]

    # replay runs the file (--profile-file) and scores it above the profile it started from
    def replayed(profile_file: Path) -> dict:
        rep = tmp_path / f"replay-{profile_file.stem}.json"
        ran = run_cli("replay", str(stream), "--format", "jsonl", "--k", "10", "--no-content",
                      "--profile-file", str(profile_file), "--report", str(rep))
        assert ran.returncode == 0, ran.stderr
        return orjson.loads(rep.read_bytes())

    tuned_run, start_run = replayed(out), replayed(start)
    assert tuned_run["profile_file"] == str(out)
    assert tuned_run["metrics"]["hit_rate@10"] > start_run["metrics"]["hit_rate@10"]
    # and the worker runs it (STREAMREC_PROFILE_FILE): its sources, blend and depth
    from streams.app import Runtime

    rt = Runtime(Settings(redis_url="memory://", content=False, profile_file=out, _env_file=None))
    assert [s.name for s in rt.recommender.sources] == ["sequential", "covis", "buy_again", "popular"]
    assert {s: rt.recommender.ranker.prior[s] for s in prior} == prior
    assert rt.recommender.config.depth == chosen["depth"]


def test_tune_refuses_what_it_cannot_use(tmp_path: Path):
    stream = write_chain_stream(tmp_path / "clicks.jsonl", shoppers=20)
    bad = run_cli("tune", str(stream), "--format", "jsonl", "--out", str(tmp_path / "x.toml"),
                  "--validate", "0.5", "--test", "0.5")
    assert bad.returncode == 2 and "together under 1" in bad.stderr
    missing = run_cli("tune", str(stream), "--format", "jsonl", "--out", str(tmp_path / "x.toml"),
                      "--profile-file", str(tmp_path / "none.toml"))
    assert missing.returncode == 2 and "no profile file" in missing.stderr
    # shoppers who never come back leave nothing to score: an error, not a file of guesses
    once = tmp_path / "once.jsonl"
    once.write_bytes(b"\n".join(orjson.dumps({"topic": "clicks", "value": {
        "event_id": f"e{n}", "user_id": f"u{n}", "item_id": f"i{n % 7}", "ts": 1.7e9 + n}}) for n in range(300)))
    nothing = run_cli("tune", str(once), "--format", "jsonl", "--out", str(tmp_path / "x.toml"), "--no-content")
    assert nothing.returncode == 2 and "nothing can be scored there" in nothing.stderr
    assert not (tmp_path / "x.toml").exists()


def test_a_profile_file_with_a_misspelt_setting_is_refused_with_its_name(tmp_path: Path):
    f = tmp_path / "p.toml"
    f.write_text(BAD_PROFILE.replace("anchors = 4", "anchor = 4").replace("depth = 2", "depht = 2"))
    with pytest.raises(ValueError) as e:
        Settings(profile_file=f, _env_file=None)
    assert "unknown setting 'depht'" in str(e.value) and "sequential: unknown option 'anchor'" in str(e.value)
    f.write_text("[events\nsources = 1")
    with pytest.raises(ValueError, match="not a TOML file of profiles"):
        tuned.load("events", f)
    f.write_text("a = 1\n")
    with pytest.raises(ValueError, match=r"no profile 'shop' in .*p.toml \(it has none\)"):
        tuned.load("shop", f)


def test_a_copied_graph_learns_apart_from_the_original():
    ix = AnnIndex(dim=4)
    ix.upsert(["a", "b"], np.eye(4, dtype=np.float32)[:2])
    twin = copy.deepcopy(ix)
    twin.upsert(["c"], np.eye(4, dtype=np.float32)[2:3])
    twin.upsert(["a"], np.eye(4, dtype=np.float32)[3:4])  # moved in the copy only
    assert sorted(ix.ids()) == ["a", "b"] and sorted(twin.ids()) == ["a", "b", "c"]
    assert ix.query(np.eye(4, dtype=np.float32)[0], 1)[0][0] == "a"
    assert twin.query(np.eye(4, dtype=np.float32)[3], 1)[0][0] == "a"
    assert twin.query(np.eye(4, dtype=np.float32)[2], 1)[0][0] == "c"


def test_a_trial_copies_the_learned_catalog_and_shares_the_encoder():
    import asyncio

    from models.content import content_stack
    from models.events import Item
    from models.features.keys import Keys
    from models.features.memory import MemoryStore
    from streams.replay import ReplayClock
    from streams.tune import _State

    clock = ReplayClock()
    store = MemoryStore(clock=clock)
    stack = content_stack(store, Keys(), synchronous=True)
    if stack is None:
        pytest.skip("no text encoder installed (deploy/setup.sh installs the packaged one)")
    source, catalog = stack
    asyncio.run(catalog.ingest([Item("mug", "white ceramic mug", 1.0), Item("lamp", "brass desk lamp", 1.0)]))
    state = _State(store, clock, source)
    trial = state.fork()
    asyncio.run(trial.content.on_items([Item("cup", "blue ceramic cup", 2.0)]))
    assert sorted(source.index.ids()) == ["lamp", "mug"]
    assert sorted(trial.content.index.ids()) == ["cup", "lamp", "mug"]
    assert trial.content.store is trial.store and trial.store is not store
    assert trial.content.on_items.__self__.encoder is catalog.encoder
