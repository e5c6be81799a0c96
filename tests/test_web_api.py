"""The HTTP and live push API on a real broker and Redis.

The API runs in its own thread and event loop (as it does in a worker, beside Faust),
with a real aiokafka producer and live consumer; the tests talk to it over HTTP.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest

from models.features import open_store
from streams.embedded import free_port
from streams.settings import Settings
from streams.web import Hub, WebConfig, build_web_app, consume_live
from tests.support.kafka import Collector, produce

pytestmark = [pytest.mark.services]


class _Runtime:
    """What the API needs of ``streams.app.Runtime``: settings, store, keys, metrics,
    listeners, and the recommender's ranker (for ``/healthz``)."""

    def __init__(self, settings: Settings) -> None:
        from types import SimpleNamespace

        from models.features.keys import Keys
        from models.ranking import Ranker
        from streams.app import Metrics

        self.settings = settings
        self.store = open_store(settings.redis_url)
        self.keys = Keys(settings.key_prefix)
        self.metrics = Metrics()
        self.listeners: list = []
        self.recommender = SimpleNamespace(ranker=Ranker(["covis", "popular"]))


class ApiServer:
    """The API on a free port, served from a background thread with its own loop."""

    def __init__(self, broker: str, redis_url: str, config: WebConfig, **settings: Any) -> None:
        prefix = f"w{uuid.uuid4().hex[:8]}-"
        self.settings = Settings(kafka_url=f"kafka://{broker}", redis_url=redis_url, topic_prefix=prefix,
                                 key_prefix=prefix, web_port=0, _env_file=None, **settings)
        self.prefix, self.broker, self.config = prefix, broker, config
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        from aiokafka import AIOKafkaProducer

        self._stop = asyncio.Event()
        self.rt = _Runtime(self.settings)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all")
        await self.producer.start()
        self.hub = Hub(self.rt, self.config)
        self.rt.listeners.append(self.hub.listener)
        live = asyncio.create_task(consume_live(self.settings, self.hub))
        from aiohttp import web

        runner = web.AppRunner(build_web_app(self.rt, self.producer, config=self.config, hub=self.hub),
                               access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            live.cancel()
            await asyncio.gather(live, return_exceptions=True)
            await runner.cleanup()
            await self.producer.stop()
            await self.rt.store.close()

    def start(self) -> "ApiServer":
        self._thread.start()
        assert self._ready.wait(30), "the API did not start"
        return self

    def call(self, fn, *args) -> Any:
        """Run ``fn(*args)`` (a coroutine function or a plain one) on the server's loop."""
        async def run():
            out = fn(*args)
            return await out if asyncio.iscoroutine(out) else out
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(scope="module")
def api(broker, redis_url):
    server = ApiServer(broker, redis_url, WebConfig(rate_per_s=1000, burst=1000, heartbeat_s=0.3,
                                                    max_subscribers_per_user=2, max_body_bytes=64 * 1024,
                                                    max_events=50)).start()
    yield server
    server.stop()


def _click(n: int, user: str = "u1", item: str = "i1", **extra) -> dict:
    return {"topic": "clicks", "event_id": f"ev-{n}-{uuid.uuid4().hex[:6]}", "user_id": user,
            "item_id": item, "ts": time.time() - 10, **extra}


def _rec(user: str, rec_id: str, items: list[str], ts: float | None = None, **extra) -> dict:
    return {"rec_id": rec_id, "user_id": user, "trigger_event_id": "t", "ts": ts or time.time(),
            "model_version": "streamrec-1", "latency_ms": 1.0,
            "items": [{"item_id": i, "score": 1.0, "sources": ["covis"], "reason": "r"} for i in items], **extra}


async def _seed_titles(api: ApiServer, titles: dict[str, str]) -> None:
    ops = [("hset", api.rt.keys.item_meta(i), {"title": t, "category": "c"}) for i, t in titles.items()]
    api.call(api.rt.store.write, ops)


# -- POST /events ---------------------------------------------------------------------------------

async def test_events_are_validated_and_produced_keyed_by_user(api):
    async with Collector(api.broker, api.prefix + "clicks", api.prefix + "feedback") as col, \
            aiohttp.ClientSession() as http:
        one = _click(1, user="ann", item="shoe")
        async with http.post(api.base + "/events", json=one) as r:
            assert r.status == 202
            assert (await r.json()) == {"accepted": [one["event_id"]], "count": 1}
        many = [_click(2, user="bob", item="sock", rec_id="r1"),
                {"topic": "feedback", "event_id": "fb-1", "user_id": "bob", "rec_id": "r1",
                 "action": "impression", "ts": time.time()}]
        async with http.post(api.base + "/events", json=many) as r:
            assert r.status == 202 and (await r.json())["count"] == 2
        assert await col.wait_for(lambda c: len(c.messages[api.prefix + "clicks"]) == 2
                                  and len(c.messages[api.prefix + "feedback"]) == 1, 20)
        by_user = {m.key: orjson.loads(m.value) for m in col.messages[api.prefix + "clicks"]}
        assert by_user[b"ann"]["item_id"] == "shoe" and "topic" not in by_user[b"ann"]
        assert by_user[b"bob"]["rec_id"] == "r1"
        assert col.messages[api.prefix + "feedback"][0].key == b"bob"


async def test_invalid_events_are_refused_with_reasons_and_none_produced(api):
    async with Collector(api.broker, api.prefix + "carts") as col, aiohttp.ClientSession() as http:
        good = {"topic": "carts", "event_id": "c-ok", "user_id": "u", "item_id": "i", "action": "add",
                "ts": time.time()}
        bad = [good, {**good, "action": "steal"}, {**good, "topic": "items"}, "nope",
               {**good, "user_id": "a\x00b"}, {**good, "ts": 5}]
        async with http.post(api.base + "/events", json=bad) as r:
            assert r.status == 400
            body = await r.json()
        reasons = {e["index"]: e["error"] for e in body["errors"]}
        assert sorted(reasons) == [1, 2, 3, 4, 5]
        assert "action" in reasons[1] and "topic" in reasons[2] and "JSON object" in reasons[3]
        assert "control characters" in reasons[4] and "before 2000" in reasons[5]
        for raw, words in ((b"{not json", "not JSON"), (b"[]", "no events")):
            async with http.post(api.base + "/events", data=raw,
                                 headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400 and words in (await r.json())["error"]
        await asyncio.sleep(1.0)
        assert col.messages[api.prefix + "carts"] == []


async def test_oversized_bodies_and_batches_get_413(api):
    async with aiohttp.ClientSession() as http:
        big = orjson.dumps([{**_click(1), "session_id": "s" * 100}] * 400)
        assert len(big) > api.config.max_body_bytes
        async with http.post(api.base + "/events", data=big, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 413 and "larger than" in (await r.json())["error"]
        async with http.post(api.base + "/events", json=[_click(n) for n in range(51)]) as r:
            assert r.status == 413 and "more than 50 events" in (await r.json())["error"]


async def test_rate_limit_per_client_answers_429_with_retry_after(broker, redis_url):
    server = ApiServer(broker, redis_url, WebConfig(rate_per_s=0.5, burst=3)).start()
    try:
        async with aiohttp.ClientSession() as http:
            statuses = []
            for n in range(5):
                async with http.post(server.base + "/events", json=_click(n)) as r:
                    statuses.append(r.status)
                    if r.status == 429:
                        assert int(r.headers["Retry-After"]) >= 1
                        assert (await r.json())["error"] == "rate limit exceeded"
            assert statuses == [202, 202, 202, 429, 429]
    finally:
        server.stop()


# -- GET /recommendations ---------------------------------------------------------------------------

async def test_latest_recommendation_with_titles_and_copy_once_ready(api):
    keys = api.rt.keys
    await _seed_titles(api, {"i1": "Blue <b>shoe</b>", "i2": "Red sock"})
    async with aiohttp.ClientSession() as http:
        async with http.get(api.base + "/recommendations/nobody") as r:
            assert r.status == 404 and "error" in await r.json()
        async with http.get(api.base + "/recommendations/" + "x" * 200) as r:
            assert r.status == 400
        plain = _rec("carl", "r-1", ["i1", "i2"], context={"session_items": ["secret"]})
        api.call(api.rt.store.write, [("set", keys.latest_rec("carl"), orjson.dumps(plain), None)])
        async with http.get(api.base + "/recommendations/carl") as r:
            body = await r.json()
        assert body["rec_id"] == "r-1" and "copy" not in body and "context" not in body
        assert [i["title"] for i in body["items"]] == ["Blue <b>shoe</b>", "Red sock"]
        # an older list's copy is not shown with a newer list
        stale = {**_rec("carl", "r-0", ["i2"], ts=plain["ts"] - 5), "copy": {"headline": "old", "body": "b"}}
        api.call(api.rt.store.write, [("set", keys.latest_enriched("carl"), orjson.dumps(stale), None)])
        async with http.get(api.base + "/recommendations/carl") as r:
            assert (await r.json())["rec_id"] == "r-1"
        rich = {**plain, "copy": {"headline": "For you", "body": "Shoes and socks", "source": "template"}}
        api.call(api.rt.store.write, [("set", keys.latest_enriched("carl"), orjson.dumps(rich), None)])
        async with http.get(api.base + "/recommendations/carl") as r:
            body = await r.json()
        assert body["copy"]["headline"] == "For you" and body["items"][0]["title"] == "Blue <b>shoe</b>"


# -- SSE ----------------------------------------------------------------------------------------------

async def _events(resp: aiohttp.ClientResponse, n: int, timeout_s: float = 10.0) -> list[tuple[str, Any]]:
    """The next ``n`` SSE events (``("heartbeat", None)`` for a heartbeat comment)."""
    out: list[tuple[str, Any]] = []
    kind = None

    async def read():
        nonlocal kind
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(": heartbeat"):
                out.append(("heartbeat", None))
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, orjson.loads(line[6:])))
            if len(out) >= n:
                return
    await asyncio.wait_for(read(), timeout_s)
    return out


async def test_stream_pushes_lists_from_this_worker_and_others_once_each(api):
    await _seed_titles(api, {"i7": "Green tea", "i8": "Teapot"})
    user = f"dora-{uuid.uuid4().hex[:4]}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{api.base}/recommendations/{user}/stream") as sse:
            assert sse.status == 200 and sse.headers["Content-Type"].startswith("text/event-stream")
            await asyncio.sleep(1.5)  # the live consumer has its partitions
            # a list this worker built: the listener delivers it; its Kafka copy is dropped
            mine = _rec(user, "r-mine", ["i7", "i8"])
            api.call(api.hub.listener, "recommendation", orjson.dumps(mine))
            await produce(api.broker, [(api.prefix + "recommendations", user.encode(), mine)])
            # a list another worker built, then its copy, arrive through the topics only
            other = _rec(user, "r-other", ["i8"])
            enriched = {**other, "copy": {"headline": "Tea time", "body": "A teapot", "source": "template"}}
            await produce(api.broker, [(api.prefix + "recommendations", user.encode(), other),
                                       (api.prefix + "recommendations-enriched", user.encode(), enriched)])
            got = [e for e in await _events(sse, 6) if e[0] != "heartbeat"][:3]
            while len(got) < 3:
                got += [e for e in await _events(sse, 1) if e[0] != "heartbeat"]
            # (the two topics are read independently: a copy may overtake its list)
            assert got[0][0] == "recommendation" and got[0][1]["rec_id"] == "r-mine"
            assert sorted((k, e["rec_id"]) for k, e in got[1:]) == [("copy", "r-other"), ("recommendation", "r-other")]
            assert got[0][1]["items"][0]["title"] == "Green tea" and "context" not in got[0][1]
            assert [e for k, e in got if k == "copy"][0]["copy"]["headline"] == "Tea time"
            # nothing more arrives but heartbeats: the duplicate was dropped
            assert {k for k, _ in await _events(sse, 3, 5)} == {"heartbeat"}
    assert api.hub.duplicates >= 1


async def test_stream_starts_with_the_current_list_and_limits_subscribers(api):
    user = "erin"
    api.call(api.rt.store.write, [("set", api.rt.keys.latest_rec(user), orjson.dumps(_rec(user, "r-now", ["i1"])), None)])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{api.base}/recommendations/{user}/stream") as a, \
                http.get(f"{api.base}/recommendations/{user}/stream") as b:
            [(kind, rec)] = await _events(a, 1)
            assert kind == "recommendation" and rec["rec_id"] == "r-now"
            async with http.get(f"{api.base}/recommendations/{user}/stream") as c:
                assert c.status == 503 and "too many" in (await c.json())["error"]
            assert b.status == 200
        async with http.get(f"{api.base}/recommendations/a%01b/stream") as bad:
            assert bad.status == 400
    # closed streams free their places
    deadline = time.monotonic() + 5
    while api.hub.subs.get(user) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not api.hub.subs.get(user)


# -- operations -----------------------------------------------------------------------------------------

async def test_catalog_limit_is_digits_only(api):
    """``int()`` takes " 5", "5\\v", "1_0" and other scripts' digits; the contract says an
    integer, so each of those is refused, as is one out of range."""
    async with aiohttp.ClientSession() as http:
        async with http.get(api.base + "/catalog?limit=5") as r:
            assert r.status == 200 and "items" in await r.json()
        for bad in ("5%0B", "%205", "1_0", "%EF%BC%95", "5.0", "", "0", "100000"):
            async with http.get(api.base + "/catalog?limit=" + bad) as r:
                assert r.status == 400, bad
                assert (await r.json())["error"].startswith("limit: must be")


async def test_health_metrics_ctr_openapi_and_cors(api):
    ctr = api.rt.keys.ctr()
    api.call(api.rt.store.write, [("hincr", ctr, "impression:source:covis", 10.0),
                                  ("hincr", ctr, "click:source:covis", 2.0),
                                  ("hincr", ctr, "impression:version:streamrec-1", 10.0),
                                  ("hincr", ctr, "click:version:streamrec-1", 2.0)])
    async with aiohttp.ClientSession() as http:
        async with http.get(api.base + "/healthz") as r:
            health = await r.json()
            assert r.status == 200 and health["store"] is True
        assert health["ranker"] == {"labels": 0, "warmup": 500, "ranks_by": "prior blend",
                                    "trial": {"lists": 0.2, "clicks": 0, "needs": 100, "model_share": None}}
        async with http.get(api.base + "/ctr") as r:
            report = await r.json()
        assert report["sources"]["covis"] == {"impressions": 10.0, "clicks": 2.0, "dismissals": 0.0, "ctr": 0.2}
        assert report["versions"]["streamrec-1"]["ctr"] == 0.2
        async with http.get(api.base + "/metrics") as r:
            text = await r.text()
        assert 'streamrec_ctr{source="covis"} 0.2' in text
        assert "streamrec_ranker_model_ranks 0.0" in text and "streamrec_ranker_trial_clicks 0.0" in text
        assert "streamrec_ranker_trial_model_share NaN" in text  # no trial click yet: no share, not 0
        assert "streamrec_events_total" in text and "streamrec_web_requests_total" in text
        async with http.get(api.base + "/openapi.json") as r:
            doc = await r.json()
        assert doc["openapi"].startswith("3.") and "/recommendations/{user_id}/stream" in doc["paths"]
        async with http.get(api.base + "/widget.js") as r:
            js = await r.text()
        assert r.headers["Content-Type"].startswith("application/javascript")
        assert "innerHTML" not in js and "textContent" in js
        async with http.options(api.base + "/events", headers={
                "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type"}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] in ("*", "https://shop.example")
        async with http.get(api.base + "/nowhere") as r:
            assert r.status == 404 and (await r.json())["error"]


async def test_cors_allows_only_configured_origins(broker, redis_url):
    server = ApiServer(broker, redis_url, WebConfig(), cors_origins=["https://shop.example"]).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.base + "/healthz", headers={"Origin": "https://shop.example"}) as r:
                assert r.headers.get("Access-Control-Allow-Origin") == "https://shop.example"
            async with http.get(server.base + "/healthz", headers={"Origin": "https://evil.example"}) as r:
                assert "Access-Control-Allow-Origin" not in r.headers
    finally:
        server.stop()


async def test_unreachable_store_is_a_503_not_a_crash(broker):
    server = ApiServer(broker, f"redis://127.0.0.1:{free_port()}/0", WebConfig()).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.base + "/recommendations/u1") as r:
                assert r.status == 503 and r.headers["Retry-After"] == "2"
                assert "feature store unavailable" in (await r.json())["error"]
            async with http.get(server.base + "/healthz") as r:
                body = await r.json()
                assert r.status == 503 and body["store"] is False and body["broker"] is True
            async with http.post(server.base + "/events", json=_click(1)) as r:
                assert r.status == 202  # events still flow to Kafka
    finally:
        server.stop()


def test_the_documented_ts_range_is_the_one_the_server_applies():
    """The upper bound moves with the server's clock, so the document states it in words,
    with no fixed maximum that a later request could exceed while the server, rightly,
    accepts it (a schema fuzzer once found exactly that); the lower bound is fixed and the
    same on both sides."""
    from models.events import MAX_FUTURE_S, MIN_TS, Rejected, parse_value
    from streams.web import openapi_document

    doc = openapi_document()
    for name in ("ClicksEvent", "CartsEvent", "ReviewsEvent", "FeedbackEvent"):
        ts_schema = doc["components"]["schemas"][name]["properties"]["ts"]
        assert "maximum" not in ts_schema and ts_schema["minimum"] == MIN_TS
        assert f"{MAX_FUTURE_S / 3600:.0f} hours ahead of the server's clock" in ts_schema["description"]
    now = time.time()
    click = {"event_id": "e", "user_id": "u", "item_id": "i"}
    assert not isinstance(parse_value("clicks", {**click, "ts": now + MAX_FUTURE_S - 60}, now=now), Rejected)
    assert not isinstance(parse_value("clicks", {**click, "ts": MIN_TS}, now=now), Rejected)
    assert isinstance(parse_value("clicks", {**click, "ts": MIN_TS - 1}, now=now), Rejected)
    assert isinstance(parse_value("clicks", {**click, "ts": now + MAX_FUTURE_S + 60}, now=now), Rejected)
