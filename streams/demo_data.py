"""The recorded stream `streamrec demo` plays: a small subset of UCI Online Retail.

Source: "Online Retail" (a UK online gift shop, Dec 2010 - Dec 2011), UCI Machine
Learning Repository, licensed CC BY 4.0. Cite: Daqing Chen, Sai Liang Sain, Kun Guo,
"Data mining for the online retail industry", Journal of Database Marketing and
Customer Strategy Management 19 (2012). The subset shipped in
``streams/data/online_retail_sample.jsonl.gz`` holds the non-cancelled invoice lines
of registered customers from a few consecutive days, turned into the wire format:
one ``items`` event per product (its title) at its first sale, then one ``carts``
``purchase`` event per invoice line. Customer ids are replaced by opaque ids.

Rebuild it from the full parquet with::

    python -m streams.demo_data PATH/online_retail.parquet
"""

from __future__ import annotations

import gzip
import hashlib
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import orjson

SAMPLE = Path(__file__).with_name("data") / "online_retail_sample.jsonl.gz"
ATTRIBUTION = ("Online Retail, UCI Machine Learning Repository (CC BY 4.0); "
               "Chen, Sain & Guo 2012 - a small subset of real purchases")


def load_sample(path: Path = SAMPLE) -> Iterator[dict]:
    """``{"topic", "value"}`` records of the shipped sample, in event-time order."""
    with gzip.open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)


def build_sample(parquet: str, out: Path = SAMPLE, start: str = "2011-11-14", days: int = 4) -> int:
    import pyarrow.parquet as pq

    rows = pq.read_table(parquet).to_pylist()
    t0 = datetime.fromisoformat(start)
    t1 = t0.replace(day=t0.day + days)
    lines = [r for r in rows if r["CustomerID"] is not None and r["Quantity"] and r["Quantity"] > 0
             and not str(r["InvoiceNo"]).startswith("C") and r["Description"]
             and t0 <= r["InvoiceDate"] < t1]
    lines.sort(key=lambda r: (r["InvoiceDate"], r["InvoiceNo"]))
    seen: set[str] = set()
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with gzip.open(out, "wb") as fh:
        for i, r in enumerate(lines):
            ts = r["InvoiceDate"].replace(tzinfo=timezone.utc).timestamp()
            item = str(r["StockCode"])
            if item not in seen:
                seen.add(item)
                fh.write(orjson.dumps({"topic": "items", "value": {
                    "item_id": item, "title": " ".join(str(r["Description"]).split()).capitalize(),
                    "price": float(r["UnitPrice"]), "ts": ts}}) + b"\n")
            user = "c" + hashlib.sha256(f"{int(r['CustomerID'])}".encode()).hexdigest()[:10]
            fh.write(orjson.dumps({"topic": "carts", "value": {
                "event_id": f"or-{r['InvoiceNo']}-{i}", "user_id": user, "item_id": item,
                "action": "purchase", "quantity": min(int(r["Quantity"]), 10_000), "ts": ts}}) + b"\n")
            n += 1
    return n


if __name__ == "__main__":
    print(f"{build_sample(sys.argv[1])} purchase lines written to {SAMPLE}")
