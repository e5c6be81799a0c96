"""Content benchmark: text-encoder throughput and nearest-neighbour query latency.

1. Encoder throughput (titles/s) at batch sizes 1, 8 and 64 on the CPU provider, and
   on CUDA when ``onnxruntime-gpu`` and a GPU are present. Titles are the distinct
   ``Description`` values of the Online Retail parquet when it is found, generated
   product titles otherwise.
2. Query latency (p50/p99, ms) of exact search and HNSW at catalog sizes 10k and
   100k: one query vector (a "similar items" call) and four at once (a content-source
   call: three session anchors and the taste vector); HNSW build time and recall@10
   against exact. The catalog vectors are synthetic: real title embeddings as
   centres (random centres without a model) and items spread around them in a
   low-dimensional subspace, as text embeddings are.
3. Exact-search p50 at more catalog sizes, to place the exact/HNSW crossover.

Run: ``python -m benchmarks.bench_content [--device auto|cpu|cuda] [--sizes 10000 100000]
[--seconds 3] [--out benchmarks/bench_content.json] [--skip-index] [--skip-encoder]``.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.content.encoder import TextEncoder, default_model_files, load_default_encoder, throughput
from models.content.index import ANN_THRESHOLD, AnnIndex, ExactIndex, normalise

ROOT = Path(__file__).resolve().parents[1]
RETAIL = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.parquet"

ADJ = ["red", "white", "vintage", "ceramic", "wooden", "glass", "metal", "knitted", "jumbo", "small",
       "set of 6", "pack of 12", "retro", "floral", "heart", "star", "paper", "cotton", "enamel", "silver"]
NOUN = ["mug", "lantern", "t-light holder", "cake cases", "shopping bag", "doormat", "cushion cover",
        "coat hanger", "photo frame", "alarm clock", "tea towel", "lunch box", "bunting", "candle",
        "jam jar", "notebook", "teapot", "wall sign", "egg cup", "hot water bottle"]


def load_titles(path: Path = RETAIL, limit: int = 5000) -> tuple[list[str], str]:
    """(titles, where from): distinct product descriptions, or generated ones."""
    if path.exists():
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        col = pq.read_table(path, columns=["Description"])["Description"]
        titles = [t.strip() for t in pc.unique(col).to_pylist() if isinstance(t, str) and t.strip()]
        rng = random.Random(0)
        rng.shuffle(titles)
        return titles[:limit], f"{path.name} ({len(titles)} distinct descriptions)"
    print(f"note: {path} not found, using generated titles")
    rng = random.Random(0)
    return [f"{rng.choice(ADJ)} {rng.choice(ADJ)} {rng.choice(NOUN)}" for _ in range(limit)], "generated"


def bench_encoder(devices: list[str], titles: list[str], seconds: float) -> list[dict[str, Any]]:
    files = default_model_files()
    if files is None:
        print("encoder: no packaged model installed, skipped")
        return []
    rows = []
    for device in devices:
        try:
            enc = TextEncoder(files[0], files[1], device=device, name=files[2])
        except Exception as e:
            print(f"encoder on {device}: not available ({e})")
            rows.append({"device": device, "error": str(e)})
            continue
        for bs in (1, 8, 64):
            tps = throughput(enc, titles, bs, min_seconds=seconds)
            rows.append({"model": files[2], "device": device, "provider": enc.provider,
                         "batch_size": bs, "titles_per_s": round(tps, 1),
                         "ms_per_batch": round(1000 * bs / tps, 2)})
            print(f"  encoder {device:4s} batch {bs:3d}: {tps:8.1f} titles/s "
                  f"({1000 * bs / tps:7.2f} ms per batch)", flush=True)
    return rows


def catalog_vectors(n: int, centres: np.ndarray, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors around ``centres``, spread in a 32-dimensional subspace."""
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    basis = normalise(rng.standard_normal((32, dim)))
    spread = rng.standard_normal((n, 32)).astype(np.float32) @ basis * 0.08
    noise = rng.standard_normal((n, dim)).astype(np.float32) * 0.005
    return normalise(centres[rng.integers(0, len(centres), n)] + spread + noise)


def latencies(fn, queries: np.ndarray, per_call: int) -> tuple[float, float]:
    fn(queries[:per_call])
    took = []
    for i in range(0, len(queries) - per_call + 1, per_call):
        q = queries[i:i + per_call]
        start = time.perf_counter()
        fn(q)
        took.append(time.perf_counter() - start)
    return float(np.percentile(took, 50) * 1000), float(np.percentile(took, 99) * 1000)


def bench_index(sizes: list[int], centres: np.ndarray, n_queries: int = 600, k: int = 50) -> list[dict]:
    rows = []
    dim = centres.shape[1]
    for size in sizes:
        vecs = catalog_vectors(size + n_queries, centres, seed=size)
        items, queries = vecs[:size], vecs[size:]
        ids = [f"i{i}" for i in range(size)]
        exact = ExactIndex(dim)
        exact.upsert(ids, items)
        start = time.perf_counter()
        ann = AnnIndex(dim)
        ann.upsert(ids, items)
        build_s = time.perf_counter() - start
        truth = exact.search(queries[:200], 10)
        got = ann.search(queries[:200], 10)
        recall = float(np.mean([len({i for i, _ in a} & {i for i, _ in e}) / 10 for a, e in zip(got, truth)]))
        for kind, ix in (("exact", exact), ("hnsw", ann)):
            for per_call in (1, 4):
                p50, p99 = latencies(lambda q, ix=ix: ix.search(q, k), queries, per_call)
                row = {"items": size, "index": kind, "queries_per_call": per_call, "k": k,
                       "p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}
                if kind == "hnsw":
                    row.update(build_s=round(build_s, 2), recall_at_10=round(recall, 4))
                rows.append(row)
                print(f"  {kind:5s} {size:7d} items, {per_call} queries/call: p50 {p50:7.3f} ms  "
                      f"p99 {p99:7.3f} ms" + (f"  build {build_s:.1f} s  recall@10 {recall:.3f}"
                                             if kind == "hnsw" else ""), flush=True)
        del exact, ann
    return rows


def exact_curve(centres: np.ndarray, sizes=(1000, 2000, 5000, 10_000, 20_000, 50_000), k: int = 50) -> list[dict]:
    rows = []
    for size in sizes:
        vecs = catalog_vectors(size + 300, centres, seed=size + 1)
        ix = ExactIndex(centres.shape[1])
        ix.upsert([f"i{i}" for i in range(size)], vecs[:size])
        for per_call in (1, 4):
            p50, _ = latencies(lambda q: ix.search(q, k), vecs[size:], per_call)
            rows.append({"items": size, "queries_per_call": per_call, "p50_ms": round(p50, 3)})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: CPU, plus CUDA when available")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per encoder measurement")
    ap.add_argument("--titles", type=Path, default=RETAIL)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("bench_content.json"))
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--skip-encoder", action="store_true")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    titles, titles_from = load_titles(args.titles)
    available = ort.get_available_providers()
    devices = {"cpu": ["cpu"], "cuda": ["cuda"],
               "auto": ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in available else [])}[args.device]
    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "onnxruntime": ort.__version__, "providers": available,
                    "load_avg_start": list(os.getloadavg())},
        "titles": titles_from,
    }
    print(f"titles: {titles_from}; onnxruntime {ort.__version__} providers {available}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if not args.skip_encoder:
        print("encoder throughput:")
        report["encoder"] = bench_encoder(devices, titles, args.seconds)
    if not args.skip_index:
        enc = load_default_encoder(device="cpu")
        if enc is not None:
            start = time.perf_counter()
            centres = enc.encode(titles[:2000])
            print(f"centres: {len(centres)} title embeddings ({time.perf_counter() - start:.1f} s)")
            report["centres"] = f"{len(centres)} title embeddings"
        else:
            centres = normalise(np.random.default_rng(0).standard_normal((2000, 384)))
            report["centres"] = "2000 random directions"
        print("nearest-neighbour queries (k=50):")
        report["index"] = bench_index(args.sizes, centres)
        report["exact_curve"] = exact_curve(centres)
        report["ann_threshold"] = ANN_THRESHOLD
    report["machine"]["load_avg_end"] = list(os.getloadavg())
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.out}")
    return report


def print_table(report: dict) -> None:
    if report.get("encoder"):
        print("\n| model | device | batch | titles/s | ms/batch |\n|---|---|---:|---:|---:|")
        for r in report["encoder"]:
            if "error" in r:
                print(f"| - | {r['device']} | - | not available | - |")
            else:
                print(f"| {r['model']} | {r['provider'].replace('ExecutionProvider', '')} | {r['batch_size']} "
                      f"| {r['titles_per_s']:.0f} | {r['ms_per_batch']:.2f} |")
    if report.get("index"):
        print("\n| items | index | queries/call | p50 ms | p99 ms | build s | recall@10 |\n"
              "|---:|---|---:|---:|---:|---:|---:|")
        for r in report["index"]:
            print(f"| {r['items']} | {r['index']} | {r['queries_per_call']} | {r['p50_ms']:.3f} | "
                  f"{r['p99_ms']:.3f} | {r.get('build_s', '')} | {r.get('recall_at_10', '')} |")
        print("\nexact search p50 ms by catalog size (1 / 4 queries per call):")
        by = {}
        for r in report["exact_curve"]:
            by.setdefault(r["items"], {})[r["queries_per_call"]] = r["p50_ms"]
        print("  " + ", ".join(f"{n}: {v[1]:.2f} / {v[4]:.2f}" for n, v in by.items()))


if __name__ == "__main__":
    main()
