"""Vector indexes: exact search against brute force, HNSW recall against exact, the switch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from models.content.index import AnnIndex, AutoIndex, ExactIndex, VectorIndex, best_per_row, normalise


def clustered(n: int, dim: int = 64, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Random vectors around random centres: roughly how text embeddings spread."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return normalise(centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim)))


def brute(ids, vecs, q, n, exclude=()):
    scores = normalise(vecs) @ normalise(q)[0]
    order = sorted(range(len(ids)), key=lambda i: -scores[i])
    return [ids[i] for i in order if ids[i] not in exclude][:n]


@pytest.mark.parametrize("cls", [ExactIndex, AnnIndex, AutoIndex])
def test_protocol_upsert_replace_remove_exclude(cls):
    ix = cls(dim=3)
    assert isinstance(ix, VectorIndex)
    seen = [ix.version]
    ix.upsert(["a", "b", "c"], np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32))
    assert len(ix) == 3 and "b" in ix and "z" not in ix
    assert ix.query(np.array([0.1, 1, 0]), 1) == [("b", pytest.approx(0.995, abs=1e-3))]
    seen.append(ix.version)
    assert ix.version == seen[-1]  # searching changes nothing
    ix.upsert(["b"], np.array([[2, 0, 0.1]], dtype=np.float32))  # replaced, and normalised
    assert len(ix) == 3 and ix.version not in seen  # answers may differ now: a new version
    seen.append(ix.version)
    np.testing.assert_allclose(np.linalg.norm(ix.get("b")), 1.0, atol=1e-5)
    assert [i for i, _ in ix.query(np.array([1, 0, 0]), 2)] == ["a", "b"]
    assert [i for i, _ in ix.query(np.array([1, 0, 0]), 2, exclude={"a"})] == ["b", "c"]
    ix.remove(["a", "nope"])
    assert len(ix) == 2 and "a" not in ix and ix.get("a") is None and ix.version not in seen
    assert [i for i, _ in ix.query(np.array([1, 0, 0]), 5)] == ["b", "c"]
    assert ix.search(np.eye(3, dtype=np.float32), 0) == [[], [], []]


@given(st.lists(st.tuples(st.sampled_from("abcdefghij"), st.booleans()), max_size=40),
       st.integers(1, 12), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_exact_matches_brute_force_after_any_history(history, n, seed):
    rng = np.random.default_rng(seed)
    ix = ExactIndex(dim=8, capacity=2)
    truth: dict[str, np.ndarray] = {}
    for item_id, keep in history:
        if keep:
            v = rng.standard_normal(8).astype(np.float32)
            ix.upsert([item_id], v[None])
            truth[item_id] = v
        else:
            ix.remove([item_id])
            truth.pop(item_id, None)
    q = rng.standard_normal(8).astype(np.float32)
    ids = list(truth)
    got = ix.query(q, n)
    want = brute(ids, np.array([truth[i] for i in ids]).reshape(-1, 8), q, n) if ids else []
    assert [i for i, _ in got] == want
    assert sorted(ix.ids()) == sorted(ids)


def test_ann_recall_against_exact_on_random_clustered_data():
    vecs = clustered(6000, dim=64, seed=1)
    ids = [f"i{i}" for i in range(len(vecs))]
    exact, ann = ExactIndex(64), AnnIndex(64)
    exact.upsert(ids, vecs)
    ann.upsert(ids, vecs)
    queries = clustered(200, dim=64, seed=2)
    e_hits, a_hits = exact.search(queries, 10), ann.search(queries, 10)
    recall = np.mean([len({i for i, _ in a} & {i for i, _ in e}) / 10 for a, e in zip(a_hits, e_hits)])
    assert recall >= 0.95, recall
    # scores are cosines in both, not distances
    np.testing.assert_allclose(a_hits[0][0][1], e_hits[0][0][1], atol=1e-4)


def test_ann_keeps_recall_after_removals_and_updates():
    vecs = clustered(3000, dim=32, seed=3)
    ids = [f"i{i}" for i in range(len(vecs))]
    exact, ann = ExactIndex(32), AnnIndex(32)
    for ix in (exact, ann):
        ix.upsert(ids, vecs)
        ix.remove(ids[::3])
        ix.upsert(ids[1::3], vecs[1::3][::-1].copy())  # move a third of the items elsewhere
    assert len(exact) == len(ann) == 2000
    queries = clustered(100, dim=32, seed=4)
    e_hits, a_hits = exact.search(queries, 10), ann.search(queries, 10)
    removed = set(ids[::3])
    assert not any(i in removed for hits in a_hits for i, _ in hits)
    recall = np.mean([len({i for i, _ in a} & {i for i, _ in e}) / 10 for a, e in zip(a_hits, e_hits)])
    assert recall >= 0.9, recall


@pytest.mark.parametrize("background", [False, True])
def test_auto_index_switches_to_ann_and_keeps_answers(background):
    vecs = clustered(1300, dim=32, seed=5)
    ids = [f"i{i}" for i in range(len(vecs))]
    auto, exact = AutoIndex(32, threshold=1000, background=background), ExactIndex(32)
    auto.upsert(ids[:1000], vecs[:1000])
    assert auto.kind == "exact"
    v0 = auto.version
    auto.upsert(ids[1000:1200], vecs[1000:1200])
    # changes while the graph is (maybe) being built are not lost
    auto.remove(ids[:50])
    auto.upsert(ids[1200:], vecs[1200:])
    auto.settle(timeout_s=60)
    assert auto.kind == "ann" and len(auto) == 1250 and "i0" not in auto and "i1299" in auto
    # a new version for each of the three changes, and one when the graph took over
    # (it answers approximately: answers kept from exact search are no longer current)
    assert auto.version == v0 + 4
    exact.upsert(ids[50:], vecs[50:])
    q = clustered(20, dim=32, seed=6)
    agree = np.mean([len({i for i, _ in a} & {i for i, _ in e}) / 5
                     for a, e in zip(auto.search(q, 5), exact.search(q, 5))])
    assert agree >= 0.95
    np.testing.assert_allclose(auto.get("i77"), exact.get("i77"), atol=1e-6)


def test_auto_index_bulk_load_ends_on_a_complete_graph():
    vecs = clustered(1500, dim=16, seed=9)
    ids = [f"i{i}" for i in range(len(vecs))]
    auto = AutoIndex(16, threshold=100, max_replay=10)
    for start in range(0, 1500, 50):  # keeps arriving while graphs are built
        auto.upsert(ids[start:start + 50], vecs[start:start + 50])
        auto.remove(ids[start:start + 5])
    auto.settle(timeout_s=60)
    kept = [i for j, i in enumerate(ids) if j % 50 >= 5]
    assert auto.kind == "ann" and sorted(auto.ids()) == sorted(kept)
    exact = ExactIndex(16)
    exact.upsert(kept, vecs[[j for j in range(1500) if j % 50 >= 5]])
    q = clustered(20, dim=16, seed=10)
    agree = np.mean([len({i for i, _ in a} & {i for i, _ in e}) / 5
                     for a, e in zip(auto.search(q, 5), exact.search(q, 5))])
    assert agree >= 0.95


def test_exact_search_is_the_same_with_any_blas_threads():
    vecs = clustered(2000, dim=16, seed=7)
    ids = [f"i{i}" for i in range(len(vecs))]
    one, many = ExactIndex(16, blas_threads=1), ExactIndex(16, blas_threads=None)
    one.upsert(ids, vecs)
    many.upsert(ids, vecs)
    q = clustered(8, dim=16, seed=8)
    assert [[i for i, _ in h] for h in one.search(q, 7)] == [[i for i, _ in h] for h in many.search(q, 7)]


@pytest.mark.parametrize("few", [1, 2, 3])
def test_exact_search_of_a_few_queries_answers_as_in_a_larger_batch(few):
    """A few queries are multiplied one at a time, more as one product: same answers."""
    assert ExactIndex.GEMV_BELOW == 3
    vecs = clustered(3000, dim=32, seed=3)
    ids = [f"i{i}" for i in range(len(vecs))]
    ix = ExactIndex(32)
    ix.upsert(ids, vecs)
    q = clustered(8, dim=32, seed=4)
    alone, batched = ix.search(q[:few], 20, exclude={"i1"}), ix.search(q, 20, exclude={"i1"})[:few]
    assert [[i for i, _ in h] for h in alone] == [[i for i, _ in h] for h in batched]
    assert np.allclose([[c for _, c in h] for h in alone], [[c for _, c in h] for h in batched], atol=1e-6)
    assert [[i for i, _ in h] for h in alone] == [brute(ids, vecs, q[j:j + 1], 20, {"i1"}) for j in range(few)]


def full_sort(scores: np.ndarray, want: int) -> tuple[list, list]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :want]
    return order.tolist(), np.take_along_axis(scores, order, 1).tolist()


@settings(max_examples=150, deadline=None)
@given(rows=st.integers(1, 12), size=st.integers(1, 4000), want=st.integers(1, 150),
       ties=st.sampled_from(["none", "rounded", "half equal"]), seed=st.integers(0, 2**16))
def test_best_per_row_is_a_full_stable_sort_cut_short(rows, size, want, ties, seed):
    """The thresholded selection gives each row's best exactly as sorting every column
    would, equal values in column order, however the values tie."""
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal((rows, size)) / 3).astype(np.float32)
    if ties == "rounded":
        scores = np.round(scores, 1)
    elif ties == "half equal":
        scores[:, ::2] = 0.25
    assert best_per_row(scores, want) == full_sort(scores, want)


def test_best_per_row_sorts_a_row_in_full_when_its_sample_misleads():
    """The sampled columns high, every other one low: too few pass the sample's
    threshold, and that row (only) is sorted in full: the answer is still exact."""
    scores = np.full((2, 5000), 0.1, dtype=np.float32)
    scores[0, ::10] = np.linspace(0.9, 0.5, 500)
    scores[1] = np.linspace(1.0, -1.0, 5000)[::-1]
    assert 0 < np.count_nonzero(scores[0] >= np.sort(scores[0, ::10])[-30]) < 100
    assert best_per_row(scores, 100) == full_sort(scores, 100)


def test_wrong_dimension_is_refused():
    with pytest.raises(ValueError, match="dimensions"):
        ExactIndex(4).upsert(["a"], np.ones((1, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="ids"):
        AnnIndex(4).upsert(["a", "b"], np.ones((1, 4), dtype=np.float32))


def test_ann_index_then_encoder_in_one_process():
    """usearch loaded before onnxruntime used to crash the encoder's session (segfault)."""
    import subprocess
    import sys

    pytest.importorskip("usearch")
    code = ("from models.content.index import AnnIndex; AnnIndex(dim=4)\n"
            "from models.content.encoder import load_default_encoder\n"
            "enc = load_default_encoder()\n"
            "print('dim', enc.dim if enc is not None else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("dim")


def test_search_benchmark_runs_and_checks_its_choice_against_a_full_selection(capsys, monkeypatch):
    """``benchmarks.bench_search`` (the README's figures for the choice of each query's
    best) asserts, before timing, that ``best_per_row`` chose what a full selection does."""
    from benchmarks import bench_search

    monkeypatch.setattr("sys.argv", ["bench_search", "--items", "2000", "--dim", "32", "--n", "50",
                                     "--queries", "1", "5", "--repeat", "3"])
    bench_search.main()
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0] for r in rows] == ["1", "5"] and all(float(x) > 0 for r in rows for x in r[1:])
