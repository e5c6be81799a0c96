"""``streamrec`` command line. Settings come from ``STREAMREC_*``; flags override them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from streams.readers import FORMATS, CatalogFile, CsvLayout
from streams.settings import load_settings


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka-url", help="broker, kafka://host:port[;host:port] (STREAMREC_KAFKA_URL)")
    p.add_argument("--redis-url", help="feature store, redis://, rediss:// or memory:// (STREAMREC_REDIS_URL)")
    p.add_argument("--topic-prefix", help="prefix on every topic name (STREAMREC_TOPIC_PREFIX)")


def _csv_layout_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--format csv", "how a clickstream CSV reads (by default columns and actions "
                                             "are found by their usual names, the delimiter is sniffed)")
    g.add_argument("--columns", help="field=column pairs: user, item, time, action, session, quantity, and "
                                     "title, category, price (they make the catalog); "
                                     "columns by header name, or all by 0-based position for a file "
                                     "without a header (e.g. user=visitorid,item=itemid,time=timestamp); "
                                     "field=- reads a field from no column; title and category may join "
                                     "columns, their non-empty cells joined by a space (title=brand+category_code)")
    g.add_argument("--actions", help="action=kind pairs, kind one of click, add, remove, purchase, skip "
                                     "(e.g. view=click,addtocart=add,transaction=purchase); '*' maps every "
                                     "other value, or every row of a file without an action column")
    g.add_argument("--delimiter", help="one character, or 'tab'")
    g.add_argument("--encoding", help="the text encoding of the csv file and of a --catalog CSV, e.g. cp1252 "
                                      "or latin-1 (default: UTF-8, with or without a byte-order mark)")
    g.add_argument("--time-format", help="a strptime format for times that are neither unix numbers nor "
                                         "ISO 8601, e.g. '%%m/%%d/%%Y %%H:%%M' (no zone: UTC)")


def _catalog_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--catalog", "a product catalog kept in a file of its own, published as the "
                                          "recording starts (any format)")
    g.add_argument("--catalog", metavar="FILE",
                   help="products as CSV with a header (H&M's articles.csv, a Shopify or WooCommerce product "
                        "export ...) or as JSON lines of items values (.jsonl); its items replace the "
                        "recording's own catalog entries for the same ids")
    g.add_argument("--catalog-columns",
                   help="field=column pairs: item, title, description, category, price, available (found by "
                        "their usual names when not given; field=- reads a field from no column); title, "
                        "description and category may join columns (title=prod_name+colour_group_name)")


def _catalog(args: argparse.Namespace) -> CatalogFile | None:
    """The catalog file the flags give (None when none is given)."""
    if args.catalog is None:
        if args.catalog_columns is not None:
            raise ValueError("--catalog-columns describes a --catalog file: give one")
        return None
    return CatalogFile.parse(args.catalog, args.catalog_columns, encoding=args.encoding)


def _events_count(text: str) -> int:
    """``--limit``: a whole number of events, 0 or more.

    >>> _events_count("30000")
    30000
    >>> _events_count("-1")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: a whole number of events, 0 or more, got '-1'
    """
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"a whole number of events, 0 or more, got {text!r}")
    return n


def _layout(args: argparse.Namespace) -> CsvLayout | None:
    """The CSV layout the flags give (None when none is given)."""
    if args.columns is None and args.actions is None and args.delimiter is None and args.time_format is None:
        if args.encoding is not None and args.format != "csv" and args.catalog is None:
            raise ValueError("--encoding is a csv recording's or a --catalog file's")
        if args.encoding is None or args.format != "csv":
            return None
    return CsvLayout.parse(args.columns, args.actions, args.delimiter, args.time_format, args.encoding)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamrec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="run the Faust worker: agents, copy pool, web API")
    _common(w)
    w.add_argument("--web-port", type=int, help="HTTP/SSE port, 0 = off (STREAMREC_WEB_PORT)")
    w.add_argument("--loglevel", default="info")

    r = sub.add_parser("replay", help="run the pipeline in-process over a recorded stream and score it")
    r.add_argument("path")
    r.add_argument("--format", required=True, choices=FORMATS)
    r.add_argument("--k", type=int, default=20)
    r.add_argument("--report", help="write the JSON report here")
    r.add_argument("--baselines", action="store_true", help="also score popularity and BiasedMF")
    r.add_argument("--no-content", action="store_true", help="turn the content candidate sources (content, new_items) off")
    r.add_argument("--plot", help="write plots to this .png or .html file")
    r.add_argument("--limit", type=_events_count,
                   help="stop after this many shopper events (catalog events come on top)")
    r.add_argument("--redis-url")
    r.add_argument("--profile-file", help="a profile file to replay instead of models/tuned.toml, e.g. one "
                                          "`streamrec tune` wrote (STREAMREC_PROFILE_FILE)")
    _csv_layout_flags(r)
    _catalog_flags(r)

    t = sub.add_parser("tune", help="choose the recommender's settings on a shop's own recorded stream and "
                                    "write them as a profile file")
    t.add_argument("path")
    t.add_argument("--format", required=True, choices=FORMATS)
    t.add_argument("--out", required=True, help="the profile file to write (TOML)")
    t.add_argument("--k", type=int, default=20, help="list length scored")
    t.add_argument("--validate", type=float, default=0.2,
                   help="share of the shopper events, before the test part, the settings are chosen on")
    t.add_argument("--test", type=float, default=0.2,
                   help="share of the newest shopper events the choice is checked on (0: none)")
    t.add_argument("--limit", type=_events_count,
                   help="read only this many shopper events (catalog events come on top)")
    t.add_argument("--min-gain", type=float, default=0.01,
                   help="a setting changes only when validation improves by this share of the objective")
    t.add_argument("--no-content", action="store_true", help="turn the content candidate sources off")
    t.add_argument("--report", help="also write every trial as JSON here")
    t.add_argument("--profile-file", help="start from this profile file instead of models/tuned.toml "
                                          "(STREAMREC_PROFILE_FILE; the profile: STREAMREC_PROFILE)")
    _csv_layout_flags(t)
    _catalog_flags(t)

    pr = sub.add_parser("produce", help="replay a recorded stream into Kafka in event-time order")
    _common(pr)
    pr.add_argument("path")
    pr.add_argument("--format", required=True, choices=FORMATS)
    pace = pr.add_mutually_exclusive_group()
    pace.add_argument("--speedup", type=float, help="event time runs this many times faster than recorded")
    pace.add_argument("--rate", type=float, help="events per second, evenly spaced")
    pr.add_argument("--limit", type=_events_count,
                   help="stop after this many shopper events (catalog events come on top)")
    _csv_layout_flags(pr)
    _catalog_flags(pr)

    pc = sub.add_parser("catalog", help="publish a product catalog file to the items topic, stamped now")
    _common(pc)
    pc.add_argument("path", help="products as CSV with a header or JSON lines of items values (see produce --catalog)")
    pc.add_argument("--catalog-columns", help="field=column pairs: item, title, description, category, price, "
                                              "available (found by their usual names when not given)")
    pc.add_argument("--delimiter", help="one character, or 'tab' (sniffed when not given)")
    pc.add_argument("--encoding", help="the file's text encoding, e.g. cp1252 (default: UTF-8)")
    pc.add_argument("--replace", action="store_true",
                    help="the file is the whole catalog: items the feature store lists as available that it "
                         "does not name are published unavailable (STREAMREC_REDIS_URL, STREAMREC_KEY_PREFIX)")
    pc.add_argument("--force", action="store_true", help="let --replace retire more than half the catalog")
    pc.add_argument("--check", action="store_true",
                    help="read the file (with --replace, compare it with the store) and report; send nothing")

    c = sub.add_parser("copywriter", help="run the LLM copy pool as its own process")
    _common(c)

    d = sub.add_parser("demo", help="embedded broker, Redis, worker, copy pool and storefront on one machine")
    d.add_argument("--events", type=int, help="process this many events, then exit")
    d.add_argument("--headless", action="store_true", help="no browser hint, print the summary and exit")
    d.add_argument("--rate", type=float, default=50.0, help="events per second fed into the topics")
    d.add_argument("--web-port", type=int, default=6066)
    d.add_argument("--no-llm", action="store_true", help="template copy even if a local LLM is installed")

    b = sub.add_parser("bench", help="throughput, latency and CPU per event of one worker "
                                     "next to a bare Faust pass-through")
    b.add_argument("--events", type=int, default=20000)
    b.add_argument("--rate", type=float, nargs="+", default=[500.0],
                   help="paced rate(s) for the latency run, events/s (several: one run each, lowest first)")
    b.add_argument("--slo-ms", type=float, default=100.0,
                   help="report the highest measured rate whose p99 stays under this")
    b.add_argument("--redis-url", help="use this store instead of an embedded Redis")
    b.add_argument("--kafka-url", help="measure on this broker (kafka://host:port[;host:port], security from "
                                       "STREAMREC_KAFKA_*) instead of embedded ones; each measurement's topics "
                                       "are created up front and deleted after it")
    b.add_argument("--report", help="write the JSON results here")
    b.add_argument("--partitions", type=int, default=4, help="partitions of every topic of the bench")
    b.add_argument("--workload", choices=["stress", "live"], default="stress",
                   help="what the paced runs send: 'stress' (2,000 shoppers, a few as busy as bots, 0.5 s "
                        "of simulated time per event) or 'live' (a live shop: sessions arrive, every event "
                        "stamped as it is sent)")
    b.add_argument("--latency-log", help="write every paced output's latency here (JSON lines: worker, rate, "
                                         "send time, latency and its split at the worker's send)")

    f = sub.add_parser("forget", help="erase a shopper: features, cached copy and per-user model state")
    _common(f)
    f.add_argument("user_id")
    f.add_argument("--direct", action="store_true",
                   help="erase in the feature store from here instead of sending a forget event to the workers")
    cs = sub.add_parser("check-store", help="find the feature store's damaged keys (wrong kind, unparsable "
                                            "values); --repair deletes them")
    cs.add_argument("--redis-url", help="the Redis store (STREAMREC_REDIS_URL)")
    cs.add_argument("--key-prefix", help="prefix of the store's keys (STREAMREC_KEY_PREFIX)")
    cs.add_argument("--repair", action="store_true", help="delete the damaged keys (each only if still damaged)")
    cs.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command != "worker":  # client chatter (group joins, metadata) is noise here
        for name in ("aiokafka", "kafka", "faust", "mode"):
            logging.getLogger(name).setLevel(logging.WARNING)
    common = {k: getattr(args, k, None) for k in ("kafka_url", "redis_url", "topic_prefix")}
    try:
        if args.command == "worker":
            from streams.app import run_worker

            run_worker(load_settings(web_port=args.web_port, **common), loglevel=args.loglevel)
            return 0
        if args.command == "replay":
            from streams.replay import run_replay

            # the environment's business rules (STREAMREC_EXCLUDE_*, _REPURCHASE_AFTER_DAYS)
            # apply as in the worker; the store is in memory unless a Redis is named
            settings = load_settings(redis_url=args.redis_url or os.environ.get("STREAMREC_REDIS_URL", "memory://"),
                                     profile_file=args.profile_file)
            run_replay(args.path, args.format, k=args.k, report=args.report, baselines=args.baselines,
                       no_content=args.no_content, plot=args.plot, settings=settings, limit=args.limit,
                       layout=_layout(args), catalog=_catalog(args))
            return 0
        if args.command == "tune":
            from streams.tune import run_tune

            # business rules from the environment, as replay applies them; the store in memory
            settings = load_settings(redis_url="memory://", profile_file=args.profile_file)
            run_tune(args.path, args.format, args.out, k=args.k, validate=args.validate, test=args.test,
                     limit=args.limit, settings=settings, no_content=args.no_content, min_gain=args.min_gain,
                     layout=_layout(args), catalog=_catalog(args), report=args.report)
            return 0
        if args.command == "produce":
            from streams.produce import run_produce

            n = run_produce(load_settings(**common), args.path, args.format, speedup=args.speedup,
                            rate=args.rate, limit=args.limit, layout=_layout(args), catalog=_catalog(args))
            print(f"produced {n} events")
            return 0
        if args.command == "catalog":
            from streams.produce import run_publish_catalog

            if args.force and not args.replace:
                raise ValueError("--force lets --replace retire more than half the catalog: give --replace too")
            done = run_publish_catalog(load_settings(**common), CatalogFile.parse(
                args.path, args.catalog_columns, args.delimiter, encoding=args.encoding),
                check=args.check, replace=args.replace, force=args.force)
            verb = "would publish" if args.check else "published"
            line = f"{verb} {done.items} items"
            if args.replace:
                line += (f", {done.retired} of the {done.listed} listed available no longer in the file "
                         + ("to retire" if args.check else "retired (published unavailable)"))
                line += f"; {done.untitled} without a stored title left as they are" if done.untitled else ""
                line += "; more than half the catalog: refused without --force" if (
                    args.check and done.retires_too_many and not args.force) else ""
            print(line)
            return 0
        if args.command == "copywriter":
            import asyncio

            from streams.copywriter import run_copywriter

            asyncio.run(run_copywriter(load_settings(**common)))
            return 0
        if args.command == "demo":
            from streams.demo import run_demo

            return run_demo(events=args.events, headless=args.headless, rate=args.rate,
                            web_port=args.web_port, use_llm=not args.no_llm)
        if args.command == "bench":
            from streams.bench import run_bench

            run_bench(events=args.events, rate=args.rate, redis_url=args.redis_url, report=args.report,
                      slo_ms=args.slo_ms, latency_log=args.latency_log, partitions=args.partitions,
                      workload=args.workload, kafka_url=args.kafka_url)
            return 0
        if args.command == "check-store":
            from streams.store_check import run_check_store

            settings = load_settings(redis_url=args.redis_url, key_prefix=args.key_prefix)
            return run_check_store(settings, fix=args.repair, as_json=args.json)
        if args.command == "forget":
            import asyncio

            from streams.privacy import forget

            asyncio.run(forget(load_settings(**common), args.user_id, direct=args.direct))
            print("erased from the feature store" if args.direct else "forget event sent to the workers")
            return 0
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as e:
        print(f"streamrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
