"""``--catalog``: a shop's product catalog kept in a file of its own, beside its events.

Each test writes the first lines of a real kind of export (H&M's ``articles.csv`` beside
its ``transactions_train.csv``, a Shopify product CSV, items-topic JSON lines) and
checks what the replay and produce paths read from it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from models.events import MAX_TEXT_CHARS, Cart, Click, Item
from streams.cli import main
from streams.readers import CatalogFile, CsvLayout, open_recording
from streams.replay import run_replay

#: the first event of the small streams below
T0 = 1_700_000_100.0
HM_TRANSACTIONS = ("t_dat,customer_id,article_id,price,sales_channel_id\n"
                   "2018-09-20,00005,0663713001,0.0508,2\n"
                   "2018-09-21,00007,0541518023,0.0305,2\n"
                   "2018-09-21,00009,0999999999,0.0305,2\n")
HM_ARTICLES = ("article_id,product_code,prod_name,product_type_name,colour_group_name,detail_desc\n"
               '0663713001,663713,Atlanta Push Body Harlow,Underwear body,Black,"Lace push-up body, moulded cups"\n'
               "0541518023,541518,Rae Push (Melbourne) 2p,Bra,Light pink,\n"
               "0111111111,111111,,Socks,White,A row without a title\n")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_hm_articles_beside_its_transactions(tmp_path: Path):
    events = write(tmp_path / "transactions_train.csv", HM_TRANSACTIONS)
    articles = write(tmp_path / "articles.csv", HM_ARTICLES)
    rec = open_recording(events, "csv", CsvLayout.parse(None, "*=purchase"), catalog=CatalogFile.parse(articles))
    got = list(rec)
    start = got[2].ts  # the first purchase's time: the catalog is published as the stream starts
    assert [(type(e).__name__, e.item_id, e.ts) for e in got] == [
        ("Item", "0663713001", start), ("Item", "0541518023", start),
        ("Cart", "0663713001", start), ("Cart", "0541518023", start + 86400), ("Cart", "0999999999", start + 86400)]
    first = got[0]
    assert (first.title, first.category, first.description) == (
        "Atlanta Push Body Harlow", "Underwear body", "Lace push-up body, moulded cups")
    assert rec.total == len(got) == 5
    assert rec.read_as.endswith(
        "; catalog articles.csv: item=article_id, title=prod_name, description=detail_desc, "
        "category=product_type_name; 2 items (1 without a title left out); "
        "the items of 66.7% of the first 3 shopper events are in it")
    # joined columns make a fuller title; a field read from no column
    rec = open_recording(events, "csv", CsvLayout.parse(None, "*=purchase"), catalog=CatalogFile.parse(
        articles, "title=prod_name+colour_group_name,description=-"))
    first = next(iter(rec))
    assert (first.title, first.description) == ("Atlanta Push Body Harlow Black", None)


def test_a_shop_product_export_with_variants_html_and_stock(tmp_path: Path):
    events = write(tmp_path / "events.csv", "timestamp,visitorid,event,itemid\n"
                   "2024-01-01T10:00:00,u1,view,wool-scarf\n2024-01-01T10:01:00,u1,view,tea-mug\n")
    products = write(tmp_path / "products_export.csv",
                     "Handle,Title,Body (HTML),Vendor,Type,Variant SKU,Variant Price,In stock?\n"
                     'wool-scarf,Wool Scarf,"<p>Soft <b>merino</b>&nbsp;scarf &amp; hat</p>",Acme,Scarves,WS-1,25.00,yes\n'
                     "wool-scarf,,,,,WS-2,27.00,no\n"
                     "tea-mug,Tea Mug,<p>Stoneware</p>,Acme,Kitchen,TM-1,12,0\n"
                     "lamp,Desk Lamp,,Acme,Lighting,L-1,twelve,1\n"
                     "vase,Vase,,Acme,Home,V-1,30,perhaps\n"
                     "bowl,Bowl,,Acme,Kitchen,B-1,-4,1\n")
    rec = open_recording(events, "csv", catalog=CatalogFile.parse(products))  # Shopify's id, Handle, by its name
    items = {e.item_id: e for e in rec if isinstance(e, Item)}
    # a variant row fills in only what the main row left empty: the main row's price and stock stand
    assert items["wool-scarf"] == Item("wool-scarf", "Wool Scarf", items["wool-scarf"].ts,
                                       "Soft merino scarf & hat", "Scarves", 25.0, True)
    assert (items["tea-mug"].description, items["tea-mug"].available) == ("Stoneware", False)
    assert sorted(items) == ["tea-mug", "wool-scarf"]
    assert rec.malformed.count == 3
    assert rec.malformed.examples == [
        "products_export.csv:5: price: 'twelve' is not a number",
        "products_export.csv:6: available: 'perhaps' is neither yes/no, in/out of stock nor a stock count",
        "products_export.csv:7: price: '-4' is not a price"]
    assert "catalog products_export.csv: item=Handle, title=Title, description=Body (HTML), category=Type, " \
           "price=Variant Price, available=In stock?; 2 items" in rec.read_as


def test_the_file_replaces_the_recordings_own_catalog_entries(tmp_path: Path):
    events = write(tmp_path / "orders.csv", "ts,user,item,title,price\n"
                   "1700000100,u1,A,MUG (row),2\n1700000101,u1,B,CUP (row),3\n1700000102,u2,A,MUG (row),2\n")
    catalog = write(tmp_path / "catalog.csv", "item_id,title,category\nA,Red spotty mug,kitchen\nC,Lamp,home\n")
    rec = open_recording(events, "csv", CsvLayout.parse(None, "*=purchase"), catalog=CatalogFile.parse(catalog))
    got = list(rec)
    assert [(type(e).__name__, e.item_id, getattr(e, "title", None)) for e in got] == [
        ("Item", "A", "Red spotty mug"), ("Item", "C", "Lamp"), ("Item", "B", "CUP (row)"),
        ("Cart", "A", None), ("Cart", "B", None), ("Cart", "A", None)]
    assert rec.total == len(got)
    assert list(rec) == got  # every pass the same


def test_items_values_as_json_lines_and_what_they_reject(tmp_path: Path):
    events = write(tmp_path / "events.csv", "ts,user,item\n1700000100,u1,A\n1700000101,u1,B\n")
    lines = [{"item_id": "A", "title": "Mug", "price": 2.5, "available": True},
             {"topic": "items", "value": {"item_id": "B", "title": "Cup", "category": "kitchen", "ts": 5}},
             "not json", {"title": "no id"}, {"item_id": "C", "title": "x" * 600},
             {"item_id": "bad\x01id", "title": "Control"}, {"item_id": "D", "title": "Free", "price": True},
             {"item_id": "E", "title": ["not", "text"]}, {"item_id": "F", "title": "Long", "description": "word " * 2000}]
    catalog = tmp_path / "items.jsonl"
    catalog.write_bytes(b"\n".join(x.encode() if isinstance(x, str) else orjson.dumps(x) for x in lines) + b"\n")
    rec = open_recording(events, "csv", catalog=CatalogFile.parse(catalog))
    items = [e for e in rec if isinstance(e, Item)]
    assert [(i.item_id, i.title, i.category, i.price, i.ts) for i in items[:2]] == [
        ("A", "Mug", None, 2.5, T0), ("B", "Cup", "kitchen", None, T0)]
    assert items[2].item_id == "F" and len(items[2].description) <= MAX_TEXT_CHARS
    assert items[2].description.endswith("word")  # cut at a word
    reasons = rec.malformed.examples + [""] * 5
    assert rec.malformed.count == 6
    assert reasons[0].startswith("items.jsonl:3: not JSON")
    assert reasons[1] == 'items.jsonl:4: expected an items value {"item_id": ..., "title": ...}'
    assert reasons[2] == "items.jsonl:5: title: longer than 512 characters"
    assert reasons[3] == "items.jsonl:7: price: 'True' is not a price"
    assert reasons[4] == "items.jsonl:8: title: must be a string"
    # the id the items topic rejects is found when its item is made
    rec.malformed.keep = 10
    rec = open_recording(events, "csv", catalog=CatalogFile.parse(catalog))
    assert rec.malformed.count == 6
    assert "catalog items.jsonl: items values; 3 items (1 descriptions cut to 4,096 characters)" in rec.read_as


def test_a_catalog_whose_ids_match_no_event_says_so(tmp_path: Path):
    events = write(tmp_path / "transactions_train.csv", HM_TRANSACTIONS)
    # a spreadsheet dropped the leading zeros of the article ids
    articles = write(tmp_path / "articles.csv", "article_id,prod_name\n663713001,Atlanta\n541518023,Rae\n")
    rec = open_recording(events, "csv", CsvLayout.parse(None, "*=purchase"), catalog=CatalogFile.parse(articles))
    assert rec.read_as.endswith("none of the items of the first 3 shopper events is in it: is the item id "
                                "column the one the events name (--catalog-columns item=...)?")


def test_flags_that_cannot_work_are_refused_with_the_reason(tmp_path: Path, capsys):
    with pytest.raises(ValueError, match="unknown field.*colour; fields: item, title"):
        CatalogFile.parse("x.csv", "colour=c")
    with pytest.raises(ValueError, match="the item id cannot be left out"):
        CatalogFile.parse("x.csv", "item=-")
    events = write(tmp_path / "events.csv", "ts,user,item\n1700000100,u1,A\n")
    with pytest.raises(FileNotFoundError, match="no such catalog file"):
        open_recording(events, "csv", catalog=CatalogFile.parse(tmp_path / "absent.csv"))
    write(tmp_path / "no_id.csv", "Ref,Name\nA,Mug\n")
    with pytest.raises(ValueError, match=r"no column found for the item; the header has 'Ref', 'Name'; "
                                         r"name it with --catalog-columns, e.g. --catalog-columns item=\.\.\."):
        open_recording(events, "csv", catalog=CatalogFile.parse(tmp_path / "no_id.csv"))
    assert next(iter(open_recording(events, "csv", catalog=CatalogFile.parse(
        tmp_path / "no_id.csv", "item=Ref")))).title == "Mug"
    write(tmp_path / "no_title.csv", "sku,colour\nA,red\n")
    with pytest.raises(ValueError, match="no column found for the title"):
        open_recording(events, "csv", catalog=CatalogFile.parse(tmp_path / "no_title.csv"))
    assert main(["replay", str(events), "--format", "csv", "--catalog-columns", "item=sku"]) == 2
    assert "--catalog-columns describes a --catalog file" in capsys.readouterr().err
    assert main(["catalog", str(tmp_path / "no_id.csv"), "--force"]) == 2
    assert "give --replace too" in capsys.readouterr().err


def test_replay_recommends_a_never_sold_product_from_the_catalog_file(tmp_path: Path):
    """The catalog file reaches the content sources: a product nobody bought before
    is recommended, by its title, next to the ones like it."""
    from models.content.encoder import load_default_encoder

    if load_default_encoder() is None:
        pytest.skip("no packaged text encoder installed")
    titles = {"M1": "RED SPOTTY MUG", "M2": "BLUE SPOTTY MUG", "M3": "GREEN SPOTTY MUG", "M4": "PINK SPOTTY MUG",
              "M5": "YELLOW SPOTTY MUG", "G1": "GARDEN HOSE", "G2": "LAWN SPRINKLER", "G3": "GARDENING GLOVES"}
    baskets = [["M1", "M2", "M3"], ["G1", "G2", "G3"], ["M2", "M4", "M1"], ["G2", "G1"],
               ["M3", "M1", "M4"], ["G3", "G1"], ["M4", "M2"], ["M1", "M5"], ["M2", "M5", "M3"]]
    rows = [f"{1_300_000_000 + 3600 * b + n},c{b},{code}" for b, basket in enumerate(baskets)
            for n, code in enumerate(basket)]
    events = write(tmp_path / "orders.csv", "ts,customer_id,sku\n" + "\n".join(rows) + "\n")
    catalog = write(tmp_path / "products.csv", "sku,name\n" + "".join(f"{i},{t}\n" for i, t in titles.items()))
    flags = ["replay", str(events), "--format", "csv", "--actions", "*=purchase", "--k", "5"]
    without = run_replay(events, "csv", k=5, progress=False, quiet=True, layout=CsvLayout.parse(None, "*=purchase"))
    with_file = run_replay(events, "csv", k=5, progress=False, quiet=True, layout=CsvLayout.parse(None, "*=purchase"),
                           catalog=CatalogFile.parse(catalog))
    # without titles the yellow mug, first bought in the eighth basket, cannot be proposed
    assert without["slices"]["cold_items"]["hit_rate@5"] == 0.0
    assert with_file["slices"]["cold_items"]["hit_rate@5"] >= 0.5
    assert with_file["events"] == without["events"] + len(titles)
    assert main([*flags, "--catalog", str(catalog), "--report", str(tmp_path / "r.json")]) == 0
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert report["metrics"] == with_file["metrics"]
    assert "catalog products.csv: item=sku, title=name; 8 items" in report["read_as"]


def test_events_keep_their_order_after_the_catalog(tmp_path: Path):
    """Shuffled events are sorted as before; the catalog comes first whatever the order."""
    rows = [f"{T0 + n:.0f},u{n % 3},i{n % 4}" for n in range(12)]
    events = write(tmp_path / "events.csv", "ts,user,item\n" + "\n".join(reversed(rows)) + "\n")
    catalog = write(tmp_path / "catalog.csv", "item,title\n" + "".join(f"i{j},Thing {j}\n" for j in range(4)))
    got = list(open_recording(events, "csv", catalog=CatalogFile.parse(catalog)))
    assert [type(e) for e in got[:4]] == [Item] * 4 and {e.ts for e in got[:4]} == {T0}
    clicks = got[4:]
    assert all(isinstance(e, Click) for e in clicks) and [e.ts for e in clicks] == sorted(e.ts for e in clicks)
    assert not any(isinstance(e, Cart) for e in got)
