"""Smoke replays on small generated streams: report shape, protocol, determinism."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from streams.replay import run_replay, summary_table

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def write_stream(path: Path, users: int = 40, clicks: int = 12, items: int = 30, seed: int = 7) -> Path:
    """Shoppers walk a fixed item cycle (i -> i+1) with a little noise; a few bad lines."""
    rng = random.Random(seed)
    lines = []
    t = 1_700_000_000.0
    n = 0
    for u in range(users):
        item = rng.randrange(items)
        for _ in range(clicks):
            n += 1
            t += 7.0
            item = (item + 1) % items if rng.random() < 0.85 else rng.randrange(items)
            if n % 25 == 0:
                value = {"event_id": f"e{n}", "user_id": f"u{u}", "item_id": f"i{item}",
                         "action": "add", "ts": t}
                lines.append(orjson.dumps({"topic": "carts", "value": value}))
            else:
                value = {"event_id": f"e{n}", "user_id": f"u{u}", "item_id": f"i{item}", "ts": t}
                lines.append(orjson.dumps({"topic": "clicks", "value": value}))
    lines.insert(5, b"{broken")
    lines.insert(9, orjson.dumps({"topic": "clicks", "value": {"user_id": "u1", "ts": t}}))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_prequential_replay_report_and_baselines(tmp_path: Path, capsys):
    stream = write_stream(tmp_path / "s.jsonl")
    report_file = tmp_path / "r.json"
    r = run_replay(stream, "jsonl", k=5, report=str(report_file), baselines=True, progress=False)
    on_disk = orjson.loads(report_file.read_bytes())
    assert on_disk["metrics"] == r["metrics"]
    assert r["format"] == "jsonl" and r["k"] == 5 and r["events"] == 40 * 12
    assert r["malformed_rows"] == 2
    # every event of a user after their first one is a case (clicks and cart adds), and
    # only those lists are made: none after a shopper's last event, nobody is scored on it
    assert r["test_cases"] == 40 * 11
    assert r["lists"] == 40 * 11
    for m in [r["metrics"], *(b["metrics"] for b in r["baselines"].values())]:
        assert set(m) == {"hit_rate@5", "mrr@5", "ndcg@5", "coverage@5"}
        assert all(0.0 <= v <= 1.0 for v in m.values())
    assert set(r["baselines"]) == {"popularity", "biased_mf"}
    assert set(r["slices"]) == {"cold_items", "cold_users", "bought_before"}
    # the cycle is learnable from sequences: the pipeline beats both baselines
    ours = r["metrics"]["hit_rate@5"]
    assert ours > 0.5
    assert all(ours > b["metrics"]["hit_rate@5"] for b in r["baselines"].values())
    assert r["events_per_s"] > 0 and r["elapsed_s"] > 0
    out = capsys.readouterr().out
    assert "baseline: popularity" in out and "streamrec" in out
    # the stream spans under a day: one period per day, ours and each baseline's
    for periods in [r["periods"], *(b["periods"] for b in r["baselines"].values())]:
        assert periods["unit"] == "day"
        assert sum(row["cases"] for row in periods["rows"]) == r["test_cases"]


def test_replay_breaks_quality_down_by_month(tmp_path: Path, capsys):
    # the same shoppers, spread over three months: one user starts every two days
    stream = write_stream(tmp_path / "s.jsonl", users=45)
    lines = [orjson.loads(line) for line in stream.read_bytes().splitlines() if line.startswith(b'{"')]
    for line in lines:
        user = int(line["value"]["user_id"][1:])
        line["value"]["ts"] += user * 2 * 86_400
    stream.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    r = run_replay(stream, "jsonl", k=5, baselines=True, progress=False)
    rows = r["periods"]["rows"]
    # from 14 November to 13 February
    assert r["periods"]["unit"] == "month"
    assert [row["period"] for row in rows] == ["2023-11", "2023-12", "2024-01", "2024-02"]
    assert sum(row["cases"] for row in rows) == r["test_cases"]
    overall = sum(row["hit_rate@5"] * row["cases"] for row in rows) / r["test_cases"]
    assert overall == pytest.approx(r["metrics"]["hit_rate@5"])
    assert [row["period"] for row in r["baselines"]["popularity"]["periods"]["rows"]] == \
        [row["period"] for row in rows]
    out = capsys.readouterr().out
    assert "by month" in out and rows[1]["period"] in out and "popularity HR@5" in out


def test_replay_is_deterministic(tmp_path: Path):
    stream = write_stream(tmp_path / "s.jsonl", users=20, seed=3)
    a = run_replay(stream, "jsonl", k=5, baselines=True, progress=False, quiet=True)
    b = run_replay(stream, "jsonl", k=5, baselines=True, progress=False, quiet=True)
    assert a["metrics"] == b["metrics"] and a["slices"] == b["slices"]
    assert a["baselines"] == b["baselines"]


def test_same_command_twice_gives_the_same_report_across_hash_seeds(tmp_path: Path):
    import os
    import subprocess
    import sys

    stream = write_stream(tmp_path / "s.jsonl", users=15, seed=11)
    reports = []
    for seed in ("1", "2"):
        out = tmp_path / f"r{seed}.json"
        env = {**os.environ, "PYTHONHASHSEED": seed, "STREAMREC_REDIS_URL": "memory://"}
        subprocess.run([sys.executable, "-m", "streams.cli", "replay", str(stream), "--format", "jsonl",
                        "--k", "5", "--baselines", "--report", str(out)],
                       check=True, env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True)
        reports.append(orjson.loads(out.read_bytes()))
    a, b = reports
    assert a["metrics"] == b["metrics"] and a["baselines"] == b["baselines"] and a["slices"] == b["slices"]


def test_sessions_replay_never_learns_a_target_before_scoring_it(tmp_path: Path):
    (tmp_path / "train.txt").write_text("1 2 3\n1 2 3\n2 3 1\n" * 5)
    # '9' never occurs in training: predicting it after '1' is only possible with a leak.
    (tmp_path / "test.txt").write_text("1 9 2\t3\n1 9\t2\n1\t9\n")
    r = run_replay(tmp_path, "sessions", k=3, progress=False, quiet=True)
    assert r["test_cases"] == 3
    # '9' missed; after "1 9": '2' follows '1' in training; after "1 9 2": '3' follows '2'.
    assert r["metrics"]["hit_rate@3"] == pytest.approx(2 / 3)
    assert r["slices"]["cold_users"]["cases"] == 2


def test_summary_table_lists_published_results_for_diginetica():
    report = {"format": "sessions", "k": 20, "events": 10, "test_cases": 2, "elapsed_s": 1.0,
              "events_per_s": 10.0, "malformed_rows": 0,
              "metrics": {"hit_rate@20": 0.5, "mrr@20": 0.2, "ndcg@20": 0.3, "coverage@20": 0.1},
              "published": {"SR-GNN": {"hit_rate@20": 0.5073, "mrr@20": 0.1759}}, "slices": {}}
    text = summary_table(report)
    assert "published: SR-GNN" in text and "50.73" in text and "17.59" in text


@pytest.mark.slow
def test_diginetica_replay_on_a_subsample():
    folder = SHARED / "diginetica"
    if not (folder / "train.txt").exists():
        pytest.skip(f"recorded data not found at {folder} (a fresh clone has no ../shared/data)")
    r = run_replay(folder, "sessions", k=20, limit=60_000, progress=False, quiet=True)
    assert r["events"] == 60_000 and r["test_cases"] == 0  # the limit stops inside training


@pytest.mark.parametrize("suffix", [".png", ".html"])
def test_plots_are_written(tmp_path: Path, suffix: str):
    pytest.importorskip("matplotlib")
    stream = write_stream(tmp_path / "s.jsonl", users=10)
    out = tmp_path / f"plots{suffix}"
    run_replay(stream, "jsonl", k=5, baselines=True, plot=str(out), progress=False, quiet=True)
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"data:image/png;base64," in data


@pytest.mark.services
def test_redis_replay_matches_the_in_memory_one(tmp_path: Path, redis_url: str, prefix: str):
    from streams.settings import Settings

    stream = write_stream(tmp_path / "s.jsonl", users=12, seed=5)
    memory = run_replay(stream, "jsonl", k=5, progress=False, quiet=True)
    settings = Settings(redis_url=redis_url, key_prefix=prefix, _env_file=None)
    redis = run_replay(stream, "jsonl", k=5, progress=False, quiet=True, settings=settings)
    assert redis["store"] == "redis" and memory["store"] == "memory"
    assert redis["metrics"] == memory["metrics"]


def test_session_tsv_replay_with_interleaved_test_sessions(tmp_path: Path):
    rows = ["SessionId\tItemId\tTime"] + [f"{s}\t{i}\t{100 + 10 * s + p}"
                                          for s in range(1, 8) for p, i in enumerate(("a", "b", "c"))]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    # two test sessions whose clicks interleave in time: each must be scored against its own
    # latest list, though the other session's clicks come in between
    (tmp_path / "test.tsv").write_text("SessionId\tItemId\tTime\n"
                                       "8\ta\t500\n9\ta\t501\n8\tb\t502\n9\tb\t503\n8\tc\t504\n9\tc\t505\n")
    r = run_replay(tmp_path, "session-tsv", k=2, progress=False, quiet=True)
    assert r["test_cases"] == 4
    assert r["metrics"]["hit_rate@2"] == 1.0


def test_no_content_turns_the_content_source_off(tmp_path: Path):
    stream = write_stream(tmp_path / "s.jsonl", users=5)
    r = run_replay(stream, "jsonl", k=5, no_content=True, progress=False, quiet=True)
    assert r["content"] is False


def write_retail(path: Path) -> Path:
    """A tiny Online Retail file: baskets of coloured spotty mugs and garden tools; the
    yellow mug is in the catalog file but sold for the first time only at the end."""
    pa = pytest.importorskip("pyarrow")
    import datetime as dt

    import pyarrow.parquet as pq

    titles = {"M1": "RED SPOTTY MUG", "M2": "BLUE SPOTTY MUG", "M3": "GREEN SPOTTY MUG",
              "M4": "PINK SPOTTY MUG", "M5": "YELLOW SPOTTY MUG", "G1": "GARDEN HOSE",
              "G2": "LAWN SPRINKLER", "G3": "GARDENING GLOVES"}
    baskets = [["M1", "M2", "M3"], ["G1", "G2", "G3"], ["M2", "M4", "M1"], ["G2", "G1"],
               ["M3", "M1", "M4"], ["G3", "G1"], ["M4", "M2"], ["M1", "M5"], ["M2", "M5", "M3"]]
    rows = {c: [] for c in ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate",
                            "UnitPrice", "CustomerID", "Country")}
    t0 = dt.datetime(2011, 3, 1, 9, 0)
    for b, basket in enumerate(baskets):
        for code in basket:
            for col, v in (("InvoiceNo", str(500 + b)), ("StockCode", code), ("Description", titles[code]),
                           ("Quantity", 1), ("InvoiceDate", t0 + dt.timedelta(hours=b)), ("UnitPrice", 2.5),
                           ("CustomerID", float(100 + b)), ("Country", "UK")):
                rows[col].append(v)
    pq.write_table(pa.table(rows), path)
    return path


def test_online_retail_catalog_ahead_and_the_limit_counts_purchases(tmp_path: Path):
    path = write_retail(tmp_path / "retail.parquet")
    r = run_replay(path, "online-retail", k=5, limit=10, no_content=True, progress=False, quiet=True)
    assert r["events"] == 8 + 10  # the whole catalog, then ten purchases
    full = run_replay(path, "online-retail", k=5, no_content=True, progress=False, quiet=True)
    cold = full["slices"]["cold_items"]
    # 23 purchases, cut at 18: the yellow mug (first sold at purchase 19) is the cold target,
    # twice; its first sale can never be hit without content (nothing else knows the item)
    assert full["events"] == 8 + 23 and cold["cases"] == 2 and cold["first_interactions"] == 1
    assert full["test_cases"] == 23 - 9  # every line but a basket's first (each basket a new shopper)
    assert full["metrics"]["coverage@5"] <= 1.0


def test_content_recommends_a_never_sold_item_from_its_title(tmp_path: Path):
    from models.content.encoder import load_default_encoder

    if load_default_encoder() is None:
        pytest.skip("no packaged text encoder installed")
    path = write_retail(tmp_path / "retail.parquet")
    on = run_replay(path, "online-retail", k=5, progress=False, quiet=True)
    off = run_replay(path, "online-retail", k=5, no_content=True, progress=False, quiet=True)
    assert on["content"] and not off["content"]
    assert "new_items" in on["sources"] and not {"content", "new_items"} & set(off["sources"])
    assert off["slices"]["cold_items"]["hit_rate@5"] == 0.0
    # after the red mug, the never-sold yellow mug is proposed by its title: its first sale is a hit
    assert on["slices"]["cold_items"]["hit_rate@5"] >= 0.5


def test_replay_scores_the_repurchase_rule_the_worker_would_run(tmp_path: Path):
    """Shoppers who re-order the same staples: with purchases out for good (default)
    every re-order is a miss by rule; with STREAMREC_REPURCHASE_AFTER_DAYS set, as a
    worker would read it, buy_again brings them back and the replay scores that."""
    import os
    import subprocess
    import sys

    rng = random.Random(5)
    lines, t, n = [], 1_700_000_000.0, 0
    for week in range(6):
        for u in range(20):
            staples = [f"i{(u + j) % 12}" for j in range(3)]  # each shopper's own three
            for item in staples + [f"i{rng.randrange(12, 40)}"]:
                n += 1
                t += 60.0
                value = {"event_id": f"e{n}", "user_id": f"u{u}", "item_id": item, "action": "purchase", "ts": t}
                lines.append(orjson.dumps({"topic": "carts", "value": value}))
        t += 7 * 86_400
    stream = tmp_path / "reorders.jsonl"
    stream.write_bytes(b"\n".join(lines) + b"\n")
    reports = {}
    for name, extra in (("default", {}), ("weekly", {"STREAMREC_REPURCHASE_AFTER_DAYS": "3"})):
        out = tmp_path / f"{name}.json"
        env = {k: v for k, v in os.environ.items() if k != "STREAMREC_REPURCHASE_AFTER_DAYS"}
        env.update({"STREAMREC_REDIS_URL": "memory://", **extra})
        subprocess.run([sys.executable, "-m", "streams.cli", "replay", str(stream), "--format", "jsonl",
                        "--k", "5", "--no-content", "--report", str(out)],
                       check=True, env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True)
        reports[name] = orjson.loads(out.read_bytes())
    default, weekly = reports["default"]["slices"]["bought_before"], reports["weekly"]["slices"]["bought_before"]
    assert default["cases"] == weekly["cases"] >= 5 * 20 * 3
    assert default["hit_rate@5"] == 0.0
    # a week's first staple is scored against the list made right after last week's
    # purchases, when the staples were still within the window: about a third are missed
    assert weekly["hit_rate@5"] > 0.5
    assert "buy_again" in reports["weekly"]["sources"]


def test_a_csv_export_replays_as_the_same_stream_in_jsonl_does(tmp_path: Path, capsys):
    """``streamrec replay --format csv`` with the layout flags: the stream of
    ``write_stream`` as a shop's export (semicolons, its own column and action names,
    epoch milliseconds) scores exactly as the jsonl stream."""
    from streams.cli import main

    stream = write_stream(tmp_path / "s.jsonl")
    rows = ["when_ms;shopper;sku;what"]
    for line in stream.read_bytes().splitlines():
        try:
            obj = orjson.loads(line)
            v = obj["value"]
            rows.append(f"{int(v['ts'] * 1000)};{v['user_id']};{v['item_id']};"
                        f"{'basket' if obj['topic'] == 'carts' else 'look'}")
        except (orjson.JSONDecodeError, KeyError):
            rows.append("garbage;;")  # the two bad lines stay bad
    (tmp_path / "export.csv").write_text("\n".join(rows) + "\n")
    assert main(["replay", str(tmp_path / "export.csv"), "--format", "csv", "--k", "5", "--no-content",
                 "--columns", "time=when_ms,user=shopper,item=sku,action=what",
                 "--actions", "look=click,basket=add", "--report", str(tmp_path / "csv.json")]) == 0
    assert main(["replay", str(stream), "--format", "jsonl", "--k", "5", "--no-content",
                 "--report", str(tmp_path / "jsonl.json")]) == 0
    via_csv, via_jsonl = (orjson.loads((tmp_path / f).read_bytes()) for f in ("csv.json", "jsonl.json"))
    assert via_csv["format"] == "csv" and via_csv["events"] == via_jsonl["events"] == 40 * 12
    assert via_csv["test_cases"] == via_jsonl["test_cases"] == 40 * 11
    assert via_csv["metrics"] == via_jsonl["metrics"] and via_csv["metrics"]["hit_rate@5"] > 0.5
    assert via_csv["malformed_rows"] == 2
    assert via_csv["read_as"] == "export.csv: user=shopper, item=sku, time=when_ms, action=what; delimiter ';'"
    assert "read as export.csv: user=shopper" in capsys.readouterr().err and "read_as" not in via_jsonl
    assert main(["replay", str(tmp_path / "export.csv"), "--format", "csv", "--actions", "look=peek"]) == 2
    assert "an action means one of click, add, remove, purchase, skip" in capsys.readouterr().err
