"""HTTP and live push API for storefront widgets, the widget itself and a demo page.

Routes (see ``GET /openapi.json`` for the full document):

- ``GET /recommendations/{user_id}``: the user's latest list (the enriched one once its
  copy is ready), each item with its catalog ``title``; 404 JSON when there is none.
- ``GET /recommendations/{user_id}/stream``: Server-Sent Events ``recommendation`` and
  ``copy`` carrying the topic JSON (plus titles), the current list first, heartbeats.
- ``POST /events``: one event or a list, each the topic JSON plus ``"topic"``, validated
  by ``models.events.parse_value`` and produced to Kafka keyed by ``user_id``.
- ``GET /catalog``, ``GET /ctr``, ``GET /healthz``, ``GET /metrics``, ``GET /openapi.json``,
  ``GET /widget.js``, ``GET /demo``.

Live lists reach subscribers two ways: the worker's own ``Runtime.listeners`` (lowest
latency) and a per-process aiokafka consumer of ``recommendations`` and
``recommendations-enriched`` (no consumer group, newest offsets), which carries lists
computed by other workers. The ``Hub`` drops the second copy of a (kind, rec_id).

``start_web(rt, app)`` runs it inside the worker; ``build_web_app(rt, producer)`` builds
the bare ``aiohttp`` application for tests and embedding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from models.events import MAX_FUTURE_S, MAX_ID_CHARS, MIN_TS, Rejected, parse_value, to_dict
from models.features.store import StoreError

log = logging.getLogger("streamrec.web")

#: Topics a browser may produce to. Catalog upserts (``items``) and erasure (``forget``)
#: change shared or irreversible state and stay on the authenticated Kafka path.
PUBLIC_TOPICS = ("clicks", "carts", "reviews", "feedback")
LIVE_KINDS = ("recommendation", "copy")


@dataclass
class WebConfig:
    """Limits of the HTTP API."""

    max_body_bytes: int = 256 * 1024
    max_events: int = 500
    topics: tuple[str, ...] = PUBLIC_TOPICS
    #: Token bucket per client IP for ``POST /events``: refill rate and capacity (requests).
    rate_per_s: float = 20.0
    burst: float = 60.0
    max_clients_tracked: int = 10_000
    max_subscribers: int = 1000
    max_subscribers_per_user: int = 8
    queue_size: int = 16
    heartbeat_s: float = 15.0
    catalog_limit: int = 200
    produce_timeout_s: float = 5.0


# -- small helpers ---------------------------------------------------------------------------

def valid_id(value: str) -> bool:
    """The id rules of ``models.events``: 1..MAX_ID_CHARS characters, not blank, no controls."""
    return bool(value) and len(value) <= MAX_ID_CHARS and bool(value.strip()) and not any(
        ord(c) < 32 for c in value)


def _json(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json",
                        headers=headers)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status=status)


def sse_event(kind: str, rec: dict) -> bytes:
    """One Server-Sent Event; the JSON is one line, the id is left out unless it is clean.

    >>> sse_event("copy", {"rec_id": "r1", "x": "a\\nb"})
    b'event: copy\\nid: r1\\ndata: {"rec_id":"r1","x":"a\\\\nb"}\\n\\n'
    """
    rec_id = rec.get("rec_id")
    head = b"event: " + kind.encode() + b"\n"
    if isinstance(rec_id, str) and valid_id(rec_id):
        head += b"id: " + rec_id.encode() + b"\n"
    return head + b"data: " + orjson.dumps(rec) + b"\n\n"


class TokenBuckets:
    """One token bucket per key (client IP), the least recently seen forgotten first.

    >>> b = TokenBuckets(rate_per_s=1.0, burst=2.0, clock=lambda: 0.0)
    >>> [b.take("ip") for _ in range(3)]
    [0.0, 0.0, 1.0]
    """

    def __init__(self, rate_per_s: float, burst: float, max_keys: int = 10_000, clock=time.monotonic) -> None:
        self.rate, self.burst, self.max_keys, self.clock = rate_per_s, burst, max_keys, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, cost: float = 1.0) -> float:
        """0.0 when allowed (tokens spent), else the seconds until ``cost`` tokens are there."""
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / self.rate if self.rate > 0 else math.inf
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


async def decorate(rt: Any, rec: dict) -> dict:
    """The public form of a recommendation: internal ``context`` dropped, catalog titles added."""
    return (await decorate_many(rt, [rec]))[0]


async def decorate_many(rt: Any, recs: list[dict]) -> list[dict]:
    out = []
    ids: list[str] = []
    for rec in recs:
        rec = {k: v for k, v in rec.items() if k != "context"}
        items = rec.get("items") if isinstance(rec.get("items"), list) else []
        rec["items"] = [dict(i) for i in items if isinstance(i, dict) and isinstance(i.get("item_id"), str)]
        ids += [i["item_id"] for i in rec["items"]]
        out.append(rec)
    ids = list(dict.fromkeys(ids))
    if ids:
        metas = await rt.store.read([("hmget", rt.keys.item_meta(i), ["title", "category"]) for i in ids])
        meta = dict(zip(ids, metas))
        for rec in out:
            for item in rec["items"]:
                title, category = meta.get(item["item_id"]) or (None, None)
                item["title"] = title
                if category is not None:
                    item["category"] = category
    return out


async def latest(rt: Any, user_id: str) -> tuple[str, dict] | None:
    """The user's latest list from the store: ("copy", enriched) once its copy is ready,
    else ("recommendation", plain); None when there is none."""
    plain, enriched = await rt.store.read([("get", rt.keys.latest_rec(user_id)),
                                           ("get", rt.keys.latest_enriched(user_id))])
    rec = orjson.loads(plain) if plain else None
    rich = orjson.loads(enriched) if enriched else None
    if rich is not None and (rec is None or rich.get("rec_id") == rec.get("rec_id")
                             or float(rich.get("ts") or 0) >= float(rec.get("ts") or 0)):
        return "copy", rich
    if rec is not None:
        return "recommendation", rec
    return None


# -- live fan-out ------------------------------------------------------------------------------

class HubFull(Exception):
    """Too many live subscribers (in all, or for one user)."""


class Subscription:
    def __init__(self, user_id: str, size: int) -> None:
        self.user_id = user_id
        self.queue: asyncio.Queue[tuple[str, dict]] = asyncio.Queue(size)
        self.dropped = 0

    def offer(self, item: tuple[str, dict]) -> None:
        """Queue ``item``; a slow reader loses its oldest pending event, never blocks the hub."""
        while True:
            try:
                self.queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.queue.get_nowait()
                    self.dropped += 1


class Hub:
    """Fans live recommendations out to SSE subscribers by user id, once per (kind, rec_id)."""

    def __init__(self, rt: Any, config: WebConfig, inbox_size: int = 10_000, remember: int = 20_000) -> None:
        self.rt, self.config = rt, config
        self.subs: dict[str, set[Subscription]] = {}
        self.count = 0
        self._inbox: asyncio.Queue[tuple[str, bytes | dict]] | None = None
        self._inbox_size = inbox_size
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._remember = remember
        self.delivered = 0
        self.duplicates = 0
        self.overflow = 0

    def subscribe(self, user_id: str) -> Subscription:
        users = self.subs.get(user_id, set())
        if self.count >= self.config.max_subscribers:
            raise HubFull("too many live subscribers")
        if len(users) >= self.config.max_subscribers_per_user:
            raise HubFull("too many live subscribers for this user")
        sub = Subscription(user_id, self.config.queue_size)
        self.subs.setdefault(user_id, set()).add(sub)
        self.count += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        users = self.subs.get(sub.user_id)
        if users and sub in users:
            users.discard(sub)
            self.count -= 1
            if not users:
                del self.subs[sub.user_id]

    def listener(self, kind: str, payload: bytes | dict) -> None:
        """A ``Runtime.listeners`` callable: hand the event to the dispatcher, never block."""
        self.publish(kind, payload)

    def publish(self, kind: str, payload: bytes | dict) -> None:
        if kind not in LIVE_KINDS or not self.subs:
            return
        if self._inbox is None:
            self._inbox = asyncio.Queue(self._inbox_size)
        try:
            self._inbox.put_nowait((kind, payload))
        except asyncio.QueueFull:
            self.overflow += 1

    def first_sighting(self, kind: str, rec_id: str) -> bool:
        key = (kind, rec_id)
        if key in self._seen:
            self.duplicates += 1
            return False
        self._seen[key] = None
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return True

    async def run(self) -> None:
        """Dispatcher: takes what was published, in order, adds titles in one store read per
        batch, and offers each event to its user's subscribers."""
        if self._inbox is None:
            self._inbox = asyncio.Queue(self._inbox_size)
        inbox = self._inbox
        while True:
            batch = [await inbox.get()]
            while not inbox.empty() and len(batch) < 500:
                batch.append(inbox.get_nowait())
            try:
                await self._dispatch(batch)
            except Exception:  # noqa: BLE001 - one bad batch must not end live updates
                log.exception("live dispatch of %d events failed", len(batch))

    async def _dispatch(self, batch: list[tuple[str, bytes | dict]]) -> None:
        """Parse, dedupe, add titles and offer one batch of published events."""
        todo: list[tuple[str, dict]] = []
        for kind, payload in batch:
            try:
                rec = orjson.loads(payload) if isinstance(payload, (bytes, bytearray, str)) else payload
            except orjson.JSONDecodeError:
                continue
            if not isinstance(rec, dict):
                continue
            user, rec_id = rec.get("user_id"), rec.get("rec_id")
            if not isinstance(user, str) or not isinstance(rec_id, str):
                continue
            if user in self.subs and self.first_sighting(kind, rec_id):
                todo.append((kind, rec))
        if not todo:
            return
        try:
            public = await decorate_many(self.rt, [rec for _, rec in todo])
        except Exception as e:  # noqa: BLE001 - the store is down: send without titles
            log.warning("live events sent without titles: %s", type(e).__name__)
            public = [{k: v for k, v in rec.items() if k != "context"} for _, rec in todo]
        for (kind, _), rec in zip(todo, public):
            for sub in list(self.subs.get(rec["user_id"], ())):
                sub.offer((kind, rec))
                self.delivered += 1


async def consume_live(settings: Any, hub: Hub, *, retry_s: float = 2.0) -> None:
    """Feed ``hub`` from the output topics, whichever worker produced them.

    No consumer group (every web process reads every partition) and newest offsets:
    only what happens from now on matters to live subscribers.
    """
    from aiokafka import AIOKafkaConsumer

    kinds = {settings.topic("recommendations"): "recommendation",
             settings.topic("recommendations-enriched"): "copy"}
    while True:
        consumer = AIOKafkaConsumer(
            *kinds, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
            auto_offset_reset="latest", enable_auto_commit=False, metadata_max_age_ms=5000,
            fetch_max_wait_ms=100,
            client_id=f"{settings.worker_id}-web-live", **settings.kafka_kwargs())
        try:
            await consumer.start()
            async for msg in consumer:
                hub.publish(kinds[msg.topic], msg.value)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the broker is away: try again
            log.warning("live consumer stopped (%s); retrying in %.0fs", type(e).__name__, retry_s)
            await asyncio.sleep(retry_s)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()


# -- the application ----------------------------------------------------------------------------

class WebMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("streamrec_web_requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.events = Counter("streamrec_web_events_total", "Events posted, by topic and outcome",
                              ["topic", "outcome"], registry=r)
        self.subscribers = Gauge("streamrec_web_sse_subscribers", "Open live streams", registry=r)
        self.limited = Counter("streamrec_web_rate_limited_total", "Requests refused by the rate limit",
                               registry=r)


def _static(name: str) -> bytes:
    return resources.files("streams").joinpath("static", name).read_bytes()


SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
DEMO_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")

RT_KEY: web.AppKey[Any] = web.AppKey("rt", object)
HUB_KEY: web.AppKey[Hub] = web.AppKey("hub", Hub)


def build_web_app(rt: Any, producer: Any, *, config: WebConfig | None = None, faust_app: Any = None,
                  hub: Hub | None = None) -> web.Application:
    """The aiohttp application over ``rt`` (store, keys, metrics, settings).

    ``producer`` is a started ``AIOKafkaProducer`` (anything with ``send_and_wait``);
    ``faust_app`` adds the worker's partition assignment to ``/healthz``. The hub's
    dispatcher runs while the application runs; feed it with ``hub.publish``.
    """
    cfg = config or WebConfig()
    settings = rt.settings
    hub = hub or Hub(rt, cfg)
    metrics = WebMetrics()
    limiter = TokenBuckets(cfg.rate_per_s, cfg.burst, cfg.max_clients_tracked)
    static = {"widget.js": _static("widget.js"), "demo.html": _static("demo.html"),
              "demo.js": _static("demo.js"), "demo.css": _static("demo.css")}
    broker_state = {"checked": 0.0, "ok": False}

    @web.middleware
    async def guard(request: web.Request, handler):
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "other"
        try:
            response = await handler(request)
        except web.HTTPException as e:
            if e.status >= 400:
                response = _error(e.status, e.reason or "error")
            else:
                raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except StoreError as e:
            log.warning("request to %s: feature store unavailable (%s)", route, type(e).__name__)
            response = _json({"error": "feature store unavailable; retry later", "retry_after_s": 2},
                             status=503, headers={"Retry-After": "2"})
        except Exception:  # noqa: BLE001 - never a stack trace to the client
            log.exception("request to %s failed", route)
            response = _error(500, "internal error")
        metrics.requests.labels(route, str(response.status)).inc()
        if not response.prepared:
            for k, v in SECURITY_HEADERS.items():
                response.headers.setdefault(k, v)
        return response

    app = web.Application(middlewares=[guard], client_max_size=cfg.max_body_bytes)
    app[RT_KEY] = rt
    app[HUB_KEY] = hub

    # -- recommendations ------------------------------------------------------------------
    async def get_recommendation(request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        if not valid_id(user_id):
            return _error(400, f"user_id: 1 to {MAX_ID_CHARS} characters, no control characters")
        found = await latest(rt, user_id)
        if found is None:
            return _error(404, "no recommendation for this user yet")
        return _json(await decorate(rt, found[1]), headers={"Cache-Control": "no-store"})

    async def stream(request: web.Request) -> web.StreamResponse:
        user_id = request.match_info["user_id"]
        if not valid_id(user_id):
            return _error(400, f"user_id: 1 to {MAX_ID_CHARS} characters, no control characters")
        try:
            sub = hub.subscribe(user_id)
        except HubFull as e:
            return _error(503, str(e), retry_after_s=5)
        metrics.subscribers.set(hub.count)
        try:
            resp = web.StreamResponse(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-store",
                "X-Accel-Buffering": "no", **SECURITY_HEADERS})
            await resp.prepare(request)
            await resp.write(b"retry: 2000\n\n")
            with contextlib.suppress(Exception):
                found = await latest(rt, user_id)
                if found is not None:
                    sub.offer((found[0], await decorate(rt, found[1])))
            while True:
                try:
                    kind, rec = await asyncio.wait_for(sub.queue.get(), cfg.heartbeat_s)
                except asyncio.TimeoutError:
                    await resp.write(b": heartbeat\n\n")
                    continue
                await resp.write(sse_event(kind, rec))
        except ConnectionResetError:
            pass
        finally:
            hub.unsubscribe(sub)
            metrics.subscribers.set(hub.count)
        return resp

    # -- events in ---------------------------------------------------------------------------
    async def post_events(request: web.Request) -> web.Response:
        client = request.remote or "unknown"
        wait = limiter.take(client)
        if wait > 0:
            metrics.limited.inc()
            retry = max(1, math.ceil(wait))
            return _json({"error": "rate limit exceeded", "retry_after_s": retry}, status=429,
                         headers={"Retry-After": str(retry)})
        if request.content_length is not None and request.content_length > cfg.max_body_bytes:
            return _error(413, f"body larger than {cfg.max_body_bytes} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body larger than {cfg.max_body_bytes} bytes")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            return _error(400, f"body is not JSON: {str(e)[:120]}")
        items = body if isinstance(body, list) else [body]
        if not items:
            return _error(400, "no events")
        if len(items) > cfg.max_events:
            return _error(413, f"more than {cfg.max_events} events in one request")
        events, errors = [], []
        for n, item in enumerate(items):
            if not isinstance(item, dict):
                errors.append({"index": n, "error": f"expected a JSON object, got {type(item).__name__}"})
                continue
            topic = item.get("topic")
            if not isinstance(topic, str) or topic not in cfg.topics:
                shown = topic if isinstance(topic, str) and len(topic) <= 32 else type(topic).__name__
                errors.append({"index": n, "error": f"topic: must be one of {', '.join(cfg.topics)}, "
                                                    f"got {shown!r}"})
                continue
            parsed = parse_value(topic, {k: v for k, v in item.items() if k != "topic"})
            if isinstance(parsed, Rejected):
                metrics.events.labels(topic, "rejected").inc()
                errors.append({"index": n, "topic": topic, "error": parsed.reason})
                continue
            events.append((topic, parsed))
        if errors:
            return _json({"error": "invalid events; none were accepted", "errors": errors[:100]}, status=400)
        try:
            await asyncio.wait_for(asyncio.gather(*(
                producer.send_and_wait(settings.topic(topic), orjson.dumps(to_dict(ev)),
                                       key=ev.user_id.encode("utf-8"))
                for topic, ev in events)), cfg.produce_timeout_s)
        except Exception as e:  # noqa: BLE001 - broker trouble is the client's 503, not a crash
            log.warning("could not produce %d events: %s", len(events), type(e).__name__)
            return _error(503, "event broker unavailable; retry later", retry_after_s=2)
        for topic, _ in events:
            metrics.events.labels(topic, "accepted").inc()
        return _json({"accepted": [ev.event_id for _, ev in events], "count": len(events)}, status=202)

    # -- catalog, ctr ------------------------------------------------------------------------
    async def catalog(request: web.Request) -> web.Response:
        raw = request.query.get("limit", "24")
        # digits only: int() would also take spaces, underscores and other scripts' digits
        if not re.fullmatch(r"-?[0-9]{1,9}", raw):
            return _error(400, "limit: must be an integer")
        limit = int(raw)
        if not 1 <= limit <= cfg.catalog_limit:
            return _error(400, f"limit: must be from 1 to {cfg.catalog_limit}")
        [ids] = await rt.store.read([("smembers", rt.keys.catalog_ids())])
        ids = sorted(ids)[:limit]
        metas = await rt.store.read([("hmget", rt.keys.item_meta(i), ["title", "category", "price"])
                                     for i in ids])
        items = []
        for i, (title, category, price) in zip(ids, metas):
            entry: dict[str, Any] = {"item_id": i, "title": title, "category": category}
            with contextlib.suppress(TypeError, ValueError):
                entry["price"] = float(price)
            items.append(entry)
        return _json({"items": items})

    async def ctr(request: web.Request) -> web.Response:
        return _json(await ctr_report(rt))

    # -- operations ----------------------------------------------------------------------------
    async def healthz(request: web.Request) -> web.Response:
        try:
            store_ok = bool(await asyncio.wait_for(rt.store.ping(), 2.0))
        except Exception:  # noqa: BLE001
            store_ok = False
        now = time.monotonic()
        if now - broker_state["checked"] > 2.0:
            broker_state["checked"] = now
            try:
                meta = await asyncio.wait_for(producer.client.fetch_all_metadata(), 2.0)
                broker_state["ok"] = bool(meta.brokers())
            except Exception:  # noqa: BLE001
                broker_state["ok"] = False
        ranker = rt.recommender.ranker
        out: dict[str, Any] = {"store": store_ok, "broker": bool(broker_state["ok"]),
                               "live_subscribers": hub.count,
                               # the model ranks once it has learned its warm-up and won its trial
                               "ranker": ranker.status()}
        if faust_app is not None:
            try:
                out["assigned_partitions"] = len(faust_app.consumer.assignment())
            except Exception:  # noqa: BLE001 - the consumer is not up yet
                out["assigned_partitions"] = 0
            out["ready"] = out["assigned_partitions"] > 0
        ok = store_ok and out["broker"]
        out["status"] = "ok" if ok else "degraded"
        return _json(out, status=200 if ok else 503)

    async def metrics_text(request: web.Request) -> web.Response:
        rt.metrics.export_ranker(rt.recommender.ranker)  # the ranker's figures as they are now
        body = generate_latest(rt.metrics.registry) + generate_latest(metrics.registry)
        body += b"".join(line for line in generate_latest(REGISTRY).splitlines(keepends=True)
                         if b"streamrec_" in line)
        with contextlib.suppress(Exception):
            body += ctr_prometheus(await asyncio.wait_for(ctr_report(rt), 2.0))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(request: web.Request) -> web.Response:
        return _json(openapi_document(cfg))

    def asset(name: str, content_type: str, extra: dict | None = None):
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=static[name], headers={
                "Content-Type": content_type, "Cache-Control": "public, max-age=300", **(extra or {})})
        return handler

    app.router.add_get("/recommendations/{user_id}", get_recommendation)
    app.router.add_get("/recommendations/{user_id}/stream", stream)
    app.router.add_post("/events", post_events)
    app.router.add_get("/catalog", catalog)
    app.router.add_get("/ctr", ctr)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/widget.js", asset("widget.js", "application/javascript; charset=utf-8"))
    app.router.add_get("/demo.js", asset("demo.js", "application/javascript; charset=utf-8"))
    app.router.add_get("/demo.css", asset("demo.css", "text/css; charset=utf-8"))
    app.router.add_get("/demo", asset("demo.html", "text/html; charset=utf-8",
                                      {"Content-Security-Policy": DEMO_CSP}))
    _add_cors(app, list(getattr(settings, "cors_origins", ["*"])))

    async def dispatcher(app: web.Application):
        task = asyncio.create_task(hub.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(dispatcher)
    return app


def _add_cors(app: web.Application, origins: list[str]) -> None:
    import aiohttp_cors

    options = aiohttp_cors.ResourceOptions(allow_credentials=False, expose_headers=("Retry-After",),
                                           allow_headers=("Content-Type",), allow_methods=("GET", "POST"),
                                           max_age=600)
    cors = aiohttp_cors.setup(app, defaults={o: options for o in origins if o})
    for route in list(app.router.routes()):
        cors.add(route)


# -- CTR -------------------------------------------------------------------------------------------

async def ctr_report(rt: Any) -> dict:
    """Impressions, clicks and dismissals per source and per model version, with CTR."""
    [raw] = await rt.store.read([("hgetall", rt.keys.ctr())])
    out: dict[str, dict[str, dict[str, float]]] = {"sources": {}, "versions": {}}
    for field_name, value in (raw or {}).items():
        parts = field_name.split(":", 2)
        if len(parts) != 3 or parts[1] not in ("source", "version"):
            continue
        action, what, name = parts
        entry = out["sources" if what == "source" else "versions"].setdefault(
            name, {"impressions": 0.0, "clicks": 0.0, "dismissals": 0.0})
        key = {"impression": "impressions", "click": "clicks", "dismiss": "dismissals"}.get(action)
        if key:
            with contextlib.suppress(ValueError):
                entry[key] += float(value)
    for group in out.values():
        for entry in group.values():
            entry["ctr"] = round(entry["clicks"] / entry["impressions"], 6) if entry["impressions"] else None
    return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def ctr_prometheus(report: dict) -> bytes:
    lines = ["# HELP streamrec_ctr Clicks per impression of recommended items",
             "# TYPE streamrec_ctr gauge"]
    counts = ["# HELP streamrec_feedback Feedback on recommended items (from the store)",
              "# TYPE streamrec_feedback gauge"]
    for group, label in (("sources", "source"), ("versions", "model_version")):
        for name, e in sorted(report.get(group, {}).items()):
            lbl = f'{label}="{_label(name)}"'
            if e.get("ctr") is not None:
                lines.append(f"streamrec_ctr{{{lbl}}} {e['ctr']}")
            for action in ("impressions", "clicks", "dismissals"):
                counts.append(f'streamrec_feedback{{{lbl},action="{action}"}} {e[action]}')
    return ("\n".join(lines + counts) + "\n").encode()


# -- OpenAPI ------------------------------------------------------------------------------------

def openapi_document(cfg: WebConfig | None = None) -> dict:
    """The OpenAPI 3 description of every route."""
    cfg = cfg or WebConfig()
    idp = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS,
           "pattern": "^[^\\x00-\\x1f]*[^\\x00-\\x20][^\\x00-\\x1f]*$"}
    err = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}},
           "additionalProperties": True}
    err_resp = lambda d: {"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}  # noqa: E731
    idv = {"anyOf": [idp, {"type": "integer"}], "description": "an id (integers are taken as their digits)"}
    # No "maximum": the upper bound moves with the server's clock (a day ahead of it when
    # the event arrives), which a fixed number in a document cannot state truthfully.
    ts = {"type": "number", "minimum": MIN_TS,
          "description": f"unix seconds, from 2000-01-01 to at most {MAX_FUTURE_S / 3600:.0f} hours "
                         "ahead of the server's clock when the event arrives"}
    def optional(schema: dict) -> dict:  # the decoders take null as absent
        return {"anyOf": [schema, {"type": "null"}]}

    event_props = {
        "clicks": ({"event_id": idv, "user_id": idv, "item_id": idv, "ts": ts, "session_id": optional(idv),
                    "rec_id": optional(idv)},
                   ["event_id", "user_id", "item_id", "ts"]),
        "carts": ({"event_id": idv, "user_id": idv, "item_id": idv, "ts": ts,
                   "action": {"type": "string", "enum": ["add", "remove", "purchase"]},
                   "quantity": optional({"type": "integer", "minimum": 1, "maximum": 10000})},
                  ["event_id", "user_id", "item_id", "action", "ts"]),
        "reviews": ({"event_id": idv, "user_id": idv, "item_id": idv, "ts": ts,
                     "text": {"type": "string", "minLength": 1, "maxLength": 4096},
                     "rating": optional({"type": "number", "minimum": 0, "maximum": 5})},
                    ["event_id", "user_id", "item_id", "text", "ts"]),
        "feedback": ({"event_id": idv, "user_id": idv, "rec_id": idv, "item_id": optional(idv), "ts": ts,
                      "action": {"type": "string", "enum": ["impression", "click", "dismiss"]}},
                     ["event_id", "user_id", "rec_id", "action", "ts"]),
    }
    event_schemas = {}
    for topic in cfg.topics:
        if topic not in event_props:
            continue
        props, required = event_props[topic]
        event_schemas[f"{topic.capitalize()}Event"] = {
            "type": "object", "required": ["topic", *required],
            "properties": {"topic": {"type": "string", "enum": [topic]}, **props}}
    item = {"type": "object", "required": ["item_id", "score", "sources", "reason"], "properties": {
        "item_id": {"type": "string"}, "score": {"type": "number"},
        "sources": {"type": "array", "items": {"type": "string"}}, "reason": {"type": "string"},
        "title": {"type": ["string", "null"]}, "category": {"type": "string"}}}
    rec = {"type": "object", "required": ["rec_id", "user_id", "ts", "items", "model_version"], "properties": {
        "rec_id": {"type": "string"}, "user_id": {"type": "string"}, "trigger_event_id": {"type": "string"},
        "ts": {"type": "number"}, "model_version": {"type": "string"}, "latency_ms": {"type": "number"},
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/RecommendedItem"}},
        "skipped_sources": {"type": "array", "items": {"type": "string"}, "description": (
            "only on a list made while the worker ran late (STREAMREC_SHED_AFTER_MS): "
            "the candidate sources it left out")},
        "copy": {"type": "object", "properties": {
            "headline": {"type": "string"}, "body": {"type": "string"},
            "source": {"type": "string", "enum": ["llm", "template", "cache"]}, "model": {"type": "string"},
            "latency_ms": {"type": "number"}}}}}
    ctr_entry = {"type": "object", "properties": {
        "impressions": {"type": "number"}, "clicks": {"type": "number"}, "dismissals": {"type": "number"},
        "ctr": {"type": ["number", "null"]}}}
    user_param = [{"name": "user_id", "in": "path", "required": True, "schema": idp}]
    any_event = {"oneOf": [{"$ref": f"#/components/schemas/{n}"} for n in event_schemas]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "streamrec storefront API", "version": "1",
                 "description": "Recommendations, live updates and shopper events for storefront widgets."},
        "paths": {
            "/recommendations/{user_id}": {"get": {
                "operationId": "getRecommendation", "summary": "The user's latest recommendation",
                "parameters": user_param,
                "responses": {"200": {"description": "the latest list (enriched once the copy is ready)",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Recommendation"}}}},
                              "400": err_resp("invalid user id"), "404": err_resp("no recommendation yet"),
                              "503": err_resp("feature store unavailable")}}},
            "/recommendations/{user_id}/stream": {"get": {
                "operationId": "streamRecommendations",
                "summary": "Server-Sent Events: `recommendation` and `copy`, each the topic JSON with titles; "
                           "the current list first, comment heartbeats",
                "parameters": user_param,
                "responses": {"200": {"description": "an event stream",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              "400": err_resp("invalid user id"), "503": err_resp("too many live subscribers")}}},
            "/events": {"post": {
                "operationId": "postEvents",
                "summary": f"Shopper events ({', '.join(cfg.topics)}): one, or a list of up to {cfg.max_events}",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                    any_event, {"type": "array", "minItems": 1, "maxItems": cfg.max_events, "items": any_event}]}}}},
                "responses": {
                    "202": {"description": "all events accepted and produced", "content": {"application/json": {
                        "schema": {"type": "object", "required": ["accepted", "count"], "properties": {
                            "accepted": {"type": "array", "items": {"type": "string"}},
                            "count": {"type": "integer"}}}}}},
                    "400": {"description": "invalid events (none accepted), with per-item errors",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                    "413": err_resp(f"body over {cfg.max_body_bytes} bytes or too many events"),
                    "429": err_resp("rate limit per client exceeded (see Retry-After)"),
                    "503": err_resp("event broker unavailable")}}},
            "/catalog": {"get": {
                "operationId": "getCatalog", "summary": "Catalog items (ids in order) with titles",
                "parameters": [{"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": cfg.catalog_limit}}],
                "responses": {"200": {"description": "items", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"items": {"type": "array", "items": {"type": "object"}}}}}}},
                    "400": err_resp("invalid limit"), "503": err_resp("feature store unavailable")}}},
            "/ctr": {"get": {
                "operationId": "getCtr", "summary": "Click-through of recommendations per source and model version",
                "responses": {"200": {"description": "CTR report", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {
                        "sources": {"type": "object", "additionalProperties": ctr_entry},
                        "versions": {"type": "object", "additionalProperties": ctr_entry}}}}}},
                    "503": err_resp("feature store unavailable")}}},
            "/healthz": {"get": {
                "operationId": "health", "summary": "Feature store and broker reachability",
                "responses": {"200": {"description": "healthy", "content": {"application/json": {"schema": {"type": "object"}}}},
                              "503": {"description": "degraded", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics, CTR included",
                                 "responses": {"200": {"description": "Prometheus text format",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3",
                                                            "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/widget.js": {"get": {"operationId": "widget", "summary": "The embeddable widget",
                                   "responses": {"200": {"description": "JavaScript",
                                                         "content": {"application/javascript": {"schema": {"type": "string"}}}}}}},
            "/demo": {"get": {"operationId": "demo", "summary": "A storefront page using the widget",
                              "responses": {"200": {"description": "HTML",
                                                    "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        },
        "components": {"schemas": {"Error": err, "RecommendedItem": item, "Recommendation": rec, **event_schemas}},
    }


# -- running inside the worker ----------------------------------------------------------------------

class WebServer:
    """The API on a TCP port with its producer, live consumer and hub; ``stop()`` ends them all."""

    def __init__(self, rt: Any, *, faust_app: Any = None, config: WebConfig | None = None) -> None:
        self.rt, self.faust_app, self.config = rt, faust_app, config or WebConfig()
        self.runner: web.AppRunner | None = None
        self.producer: Any = None
        self.hub: Hub | None = None
        self._tasks: list[asyncio.Task] = []
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        from aiokafka import AIOKafkaProducer

        s = self.rt.settings
        self.producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", linger_ms=2,
                                         client_id=f"{s.worker_id}-web-{uuid.uuid4().hex[:6]}",
                                         **s.kafka_kwargs())
        await self.producer.start()
        self.hub = Hub(self.rt, self.config)
        self.rt.listeners.append(self.hub.listener)
        self._tasks.append(asyncio.create_task(consume_live(s, self.hub)))
        app = build_web_app(self.rt, self.producer, config=self.config, faust_app=self.faust_app, hub=self.hub)
        # A closed live stream cancels its handler at once, freeing its subscriber place.
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        self.port = self.runner.addresses[0][1] if self.runner.addresses else port

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.hub is not None and self.hub.listener in self.rt.listeners:
            self.rt.listeners.remove(self.hub.listener)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
        log.info("web API stopped")


async def start_web(rt: Any, app: Any = None) -> WebServer:
    """Serve the API from the worker on ``settings.web_host:web_port`` until it shuts down."""
    server = WebServer(rt, faust_app=app)
    await server.start(rt.settings.web_host, rt.settings.web_port)
    rt.web = server
    if app is not None and hasattr(app, "on_before_shutdown"):
        async def _stop(sender: Any = None, **kwargs: Any) -> None:
            await server.stop()
        app.on_before_shutdown.connect(_stop, weak=False)
    log.info("web API on %s:%d", rt.settings.web_host, server.port)
    return server
