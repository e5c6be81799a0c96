"""The copy pool: LLM-written copy for every recommendation, without ever slowing the stream.

``submit(rec)`` never blocks and never raises for load: the recommendation joins a
bounded queue, or, when the queue is full, gets template copy at once. N worker
tasks (``llm_concurrency``) take recommendations off the queue and, for each:

1. read catalog titles (``Keys.item_meta``) of the recommended and recent items in
   one pipelined round trip, derive the shopper segment, and look up the copy cache
   (``Keys.copy_cache(hash(item ids, segment, prompt version))``);
2. on a miss, ask the LLM within the recommendation's deadline (``llm_timeout_s``
   from ``submit``), retrying 429/5xx/connection failures with backoff that honours
   ``Retry-After`` (tenacity), unless the circuit breaker is open;
3. check the answer (``models.copywriting.checks``); a passing answer is cached with
   a TTL; anything else becomes template copy with the reason counted;
4. hand exactly one enriched event to ``send``.

Recognised keys of the optional ``rec["context"]`` dict (all optional):
``recent_item_ids`` (or ``recent``), newest first; ``cart_item_ids`` (or ``cart``);
``segment`` (overrides the derived one); ``reviews``: ``[{"item_id", "text", "rating"?}]``
of recommended items (user-written, scrubbed of personal data before any prompt; left
out of the enriched event, which is otherwise the recommendation as received plus ``copy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from models.copywriting.checks import check_answer
from models.copywriting.client import Answer, LLMClient, LLMError
from models.copywriting.prompt import (PROMPT_VERSION, CopyContext, ItemSignal, Review, build_messages,
                                       cache_digest, segment_of)
from models.copywriting.templates import template_copy, why_line
from models.features.keys import Keys

log = logging.getLogger(__name__)

Send = Callable[[dict], Awaitable[None]]

#: Items of a recommendation whose titles are read (and that copy may talk about).
MAX_ITEMS_READ = 10
MAX_RECENT_READ = 10
#: Titles of items seen so far, for spotting foreign items in answers (bounded LRU).
TITLE_INDEX_SIZE = 5000
#: How often the catalog titles are reloaded from the store (``Keys.catalog_ids``).
TITLES_REFRESH_S = 60.0
#: Time kept back from the deadline for checking and sending.
SEND_MARGIN_S = 0.05
#: Shortest LLM attempt worth starting.
MIN_ATTEMPT_S = 0.05
#: Recommended items (from the top) whose latest review the prompt may quote.
REVIEWED_ITEMS = 3


# -- metrics ---------------------------------------------------------------------------------

@dataclass(slots=True)
class CopyMetrics:
    calls: Counter
    successes: Counter
    fallbacks: Counter
    cache_hits: Counter
    cache_misses: Counter
    retries: Counter
    events: Counter
    send_errors: Counter
    queue_depth: Gauge
    breaker_open: Gauge
    latency: Histogram


_METRICS: dict[int, tuple[CollectorRegistry, CopyMetrics]] = {}


def copy_metrics(registry: CollectorRegistry | None = None) -> CopyMetrics:
    """The copy metrics registered on ``registry`` (the global one by default), created once."""
    registry = registry or REGISTRY
    found = _METRICS.get(id(registry))
    if found is not None and found[0] is registry:
        return found[1]
    kw = {"registry": registry}
    m = CopyMetrics(
        calls=Counter("streamrec_copy_llm_calls", "LLM completion attempts", **kw),
        successes=Counter("streamrec_copy_llm_successes", "LLM answers that passed the checks", **kw),
        fallbacks=Counter("streamrec_copy_fallbacks", "Template copy used instead of the LLM, by reason",
                          ["reason"], **kw),
        cache_hits=Counter("streamrec_copy_cache_hits", "Copy served from the cache", **kw),
        cache_misses=Counter("streamrec_copy_cache_misses", "Copy cache lookups that missed", **kw),
        retries=Counter("streamrec_copy_llm_retries", "LLM attempts retried", ["reason"], **kw),
        events=Counter("streamrec_copy_events", "Enriched events produced, by copy source", ["source"], **kw),
        send_errors=Counter("streamrec_copy_send_errors", "Enriched events the send function failed on", **kw),
        queue_depth=Gauge("streamrec_copy_queue_depth", "Recommendations waiting for copy", **kw),
        breaker_open=Gauge("streamrec_copy_breaker_open", "1 while the LLM circuit breaker is open", **kw),
        latency=Histogram("streamrec_copy_latency_seconds", "Submit-to-copy latency, by copy source",
                          ["source"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30),
                          **kw),
    )
    _METRICS[id(registry)] = (registry, m)
    return m


# -- circuit breaker -------------------------------------------------------------------------

class CircuitBreaker:
    """Stops calling an endpoint that keeps failing; lets one probe through after a cool-down.

    >>> t = [0.0]
    >>> b = CircuitBreaker(threshold=2, reset_after_s=10, clock=lambda: t[0])
    >>> b.failure(); b.failure(); b.allow()
    False
    >>> t[0] = 11; b.allow(), b.allow()   # half-open: a single probe
    (True, False)
    >>> b.success(); b.allow()
    True
    """

    def __init__(self, threshold: int = 5, reset_after_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if self._probing or self._clock() - self._opened_at < self.reset_after_s:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures, self._opened_at, self._probing = 0, None, False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            self._opened_at, self._probing = self._clock(), False


# -- the pool --------------------------------------------------------------------------------

@dataclass(slots=True)
class _Job:
    rec: dict
    submitted: float
    deadline: float
    on_done: Callable[[], None] | None = None
    sending: bool = field(default=False)


def _ids(value: Any, limit: int) -> list[str]:
    if not isinstance(value, (list, tuple)):
        return []
    return [str(v) for v in value[:limit] if isinstance(v, (str, int)) and not isinstance(v, bool)]


class CopyPool:
    """Async worker pool adding copy to recommendations; see the module docstring."""

    def __init__(self, settings: Any, store: Any, keys: Keys, send: Send, *,
                 registry: CollectorRegistry | None = None, client: LLMClient | None = None,
                 breaker: CircuitBreaker | None = None, drain_timeout_s: float | None = None) -> None:
        self.settings = settings
        self.store = store
        self.keys = keys
        self._send = send
        self.metrics = copy_metrics(registry)
        self.llm_enabled = bool(settings.llm_enabled)
        self.client = client if client is not None else (
            LLMClient.from_settings(settings) if self.llm_enabled else None)
        self.breaker = breaker or CircuitBreaker()
        self.timeout_s = float(settings.llm_timeout_s)
        self.drain_timeout_s = drain_timeout_s if drain_timeout_s is not None else self.timeout_s + 2.0
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=int(settings.copy_queue_size))
        self._room = asyncio.Event()
        self._room.set()
        self._workers: list[asyncio.Task] = []
        self._inflight: dict[asyncio.Task, _Job] = {}
        self._side: set[asyncio.Task] = set()
        self._titles: OrderedDict[str, str] = OrderedDict()
        self._writing: dict[str, asyncio.Future] = {}  # cache key -> copy being written (single flight)
        self._refresher: asyncio.Task | None = None
        self._accepting = False
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._workers:
            return
        self._accepting = True
        n = int(self.settings.llm_concurrency)  # without an LLM they are store-bound: same pool size
        self._workers = [asyncio.create_task(self._work(), name=f"copy-worker-{i}") for i in range(n)]
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(self.refresh_titles(), 5.0)
        self._refresher = asyncio.create_task(self._refresh_loop(), name="copy-titles")

    async def stop(self) -> None:
        """Stop taking work, finish what was submitted (bounded), then release the client.

        Whatever is still unfinished when ``drain_timeout_s`` runs out gets template copy,
        so every submitted recommendation still yields one enriched event.
        """
        self._accepting = False
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), self.drain_timeout_s)
        for t in self._workers:
            t.cancel()
        cancelled = [job for task, job in self._inflight.items() if not job.sending]
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        leftovers = cancelled
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
            self._queue.task_done()
        for job in leftovers:
            self._side_task(job, "shutdown")
        if self._side:
            await asyncio.wait(set(self._side), timeout=max(1.0, self.drain_timeout_s))
        self.metrics.queue_depth.set(0)
        self._stopped = True
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()

    # -- intake ----------------------------------------------------------------------------
    def submit(self, rec: dict, on_done: Callable[[], None] | None = None) -> None:
        """Queue ``rec`` for copy; never blocks. ``on_done`` runs after its event was sent."""
        if self._stopped or not self._workers:
            raise RuntimeError("copy pool is not running")
        now = time.monotonic()
        job = _Job(rec, now, now + self.timeout_s, on_done)
        if not self._accepting:
            self._side_task(job, "shutdown")
            return
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._room.clear()
            self._side_task(job, "queue_full")
            return
        if self._queue.full():
            self._room.clear()
        self.metrics.queue_depth.set(self._queue.qsize())

    async def wait_for_room(self) -> None:
        """Wait until ``submit`` would queue rather than degrade (for consumers that can wait)."""
        while self._queue.full():
            self._room.clear()
            await self._room.wait()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def _side_task(self, job: _Job, reason: str) -> None:
        self._spawn(self._template_job(job, reason))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.create_task(coro)
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    # -- work ------------------------------------------------------------------------------
    async def _work(self) -> None:
        me = asyncio.current_task()
        while True:
            job = await self._queue.get()
            if not self._queue.full():
                self._room.set()
            self.metrics.queue_depth.set(self._queue.qsize())
            self._inflight[me] = job
            try:
                await self._process(job)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # never lose an event to a bug in one step
                log.error("copy worker failed (%s); sending template copy", type(e).__name__)
                if not job.sending:
                    await self._template_job(job, "internal_error")
            finally:
                self._inflight.pop(me, None)
                self._queue.task_done()

    async def _template_job(self, job: _Job, reason: str) -> None:
        ctx = await self._context(job.rec, deadline=job.deadline)
        await self._emit_template(job, ctx[0] if ctx else self._bare_context(job.rec), reason)

    async def _process(self, job: _Job) -> None:
        if time.monotonic() >= job.deadline - SEND_MARGIN_S - MIN_ATTEMPT_S:
            return await self._template_job(job, "deadline")
        found = await self._context(job.rec, deadline=job.deadline, with_cache=True)
        if found is None:
            return await self._emit_template(job, self._bare_context(job.rec), "store_error")
        ctx, cached, cache_key = found
        if cached is not None:
            self.metrics.cache_hits.inc()
            return await self._emit(job, ctx, cached["headline"], cached["body"], "cache", cached["model"])
        if not self.llm_enabled or self.client is None:
            self.metrics.cache_misses.inc()
            return await self._emit_template(job, ctx, "llm_disabled")
        leader = self._writing.get(cache_key)
        if leader is not None:
            # The same situation is being written right now: share that answer, free this worker.
            return self._spawn(self._follow(job, ctx, leader))
        self.metrics.cache_misses.inc()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._writing[cache_key] = fut
        copy: dict | None = None
        try:
            copy, reason = await self._llm_copy(ctx, job.deadline)
        finally:
            self._writing.pop(cache_key, None)
            fut.set_result(copy)
        if copy is None:
            return await self._emit_template(job, ctx, reason)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.store.write([("set", cache_key, orjson.dumps(copy),
                                                      int(self.settings.copy_cache_ttl_s))]), 1.0)
        await self._emit(job, ctx, copy["headline"], copy["body"], "llm", copy["model"])

    async def _follow(self, job: _Job, ctx: CopyContext, leader: asyncio.Future) -> None:
        try:
            copy = await asyncio.wait_for(asyncio.shield(leader),
                                          max(0.0, job.deadline - SEND_MARGIN_S - time.monotonic()))
        except asyncio.TimeoutError:
            copy = None
        if copy is None:
            return await self._emit_template(job, ctx, "shared_failed")
        self.metrics.cache_hits.inc()
        await self._emit(job, ctx, copy["headline"], copy["body"], "cache", copy["model"])

    async def _llm_copy(self, ctx: CopyContext, deadline: float) -> tuple[dict | None, str]:
        """Checked LLM copy for ``ctx``, or None and the reason it could not be had."""
        if not self.breaker.allow():
            self.metrics.breaker_open.set(1)
            return None, "circuit_open"
        try:
            answer = await self._call_llm(build_messages(ctx), deadline)
        except LLMError as e:
            self.breaker.failure()
            self.metrics.breaker_open.set(1 if self.breaker.is_open else 0)
            return None, e.reason
        self.breaker.success()
        self.metrics.breaker_open.set(0)
        allowed = {i.item_id: i.title for i in ctx.items}
        foreign = {k: v for k, v in self._titles.items() if k not in allowed}
        result = check_answer(answer.text, allowed, foreign)
        if not result.ok:
            return None, f"check_{result.reason}"
        self.metrics.successes.inc()
        return {"headline": result.headline, "body": result.body, "model": answer.model}, ""

    async def _call_llm(self, messages: list[dict], deadline: float) -> Answer:
        """One answer within ``deadline``: retries retryable failures while time allows."""
        cutoff = deadline - SEND_MARGIN_S

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            after = getattr(exc, "retry_after_s", None)
            if after is not None:
                return after
            return min(1.0, 0.05 * 2 ** (state.attempt_number - 1)) * (0.5 + random.random() / 2)

        def past_deadline(state: RetryCallState) -> bool:
            return time.monotonic() + state.upcoming_sleep + MIN_ATTEMPT_S >= cutoff

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.metrics.retries.labels(getattr(exc, "reason", "error")).inc()

        async def attempt() -> Answer:
            left = cutoff - time.monotonic()
            if left < MIN_ATTEMPT_S:
                raise LLMError("timeout")
            self.metrics.calls.inc()
            try:
                async with asyncio.timeout(left):
                    return await self.client.complete(messages, left)
            except TimeoutError as e:
                raise LLMError("timeout") from e

        retrying = AsyncRetrying(
            stop=stop_after_attempt(int(self.settings.llm_max_retries) + 1) | past_deadline,
            wait=wait, retry=retry_if_exception(lambda e: isinstance(e, LLMError) and e.retryable),
            before_sleep=before_sleep, reraise=True)
        return await retrying(attempt)

    # -- store -----------------------------------------------------------------------------
    def _bare_context(self, rec: dict) -> CopyContext:
        items = [ItemSignal(str(i.get("item_id")), self._titles.get(str(i.get("item_id"))), None,
                            [str(s) for s in i.get("sources") or []], str(i.get("reason") or ""))
                 for i in (rec.get("items") or [])[:MAX_ITEMS_READ] if isinstance(i, dict)]
        return CopyContext(items, "new:any")

    async def _context(self, rec: dict, *, deadline: float, with_cache: bool = False
                       ) -> tuple[CopyContext, dict | None, str] | None:
        """The copy context (titles from the store), and the cached copy when asked."""
        raw_items = [i for i in (rec.get("items") or []) if isinstance(i, dict) and i.get("item_id") is not None]
        raw_items = raw_items[:MAX_ITEMS_READ]
        context = rec.get("context") if isinstance(rec.get("context"), dict) else {}
        recent = _ids(context.get("recent_item_ids", context.get("recent")), MAX_RECENT_READ)
        cart = _ids(context.get("cart_item_ids", context.get("cart")), 50)
        ids = [str(i["item_id"]) for i in raw_items]
        budget = max(0.05, min(2.0, deadline - time.monotonic()))
        try:
            review_ids = [] if context.get("reviews") else ids[:REVIEWED_ITEMS]
            got = await asyncio.wait_for(
                self.store.read([("hgetall", self.keys.item_meta(i)) for i in ids + recent] +
                                [("lrange", self.keys.item_reviews(i), 1) for i in review_ids]), budget)
            metas, stored_reviews = got[:len(ids + recent)], got[len(ids + recent):]
        except (Exception, asyncio.TimeoutError) as e:
            log.warning("copy: feature store read failed (%s)", type(e).__name__)
            return None
        for item_id, meta in zip(ids + recent, metas):
            if meta and meta.get("title"):
                self._remember(item_id, meta["title"])
        meta_of = dict(zip(ids + recent, metas))
        items = [ItemSignal(item_id, (meta_of.get(item_id) or {}).get("title"),
                            (meta_of.get(item_id) or {}).get("category"),
                            [str(s) for s in raw.get("sources") or []][:8], str(raw.get("reason") or "")[:200])
                 for item_id, raw in zip(ids, raw_items)]
        segment = context.get("segment")
        if not isinstance(segment, str) or not segment.strip():
            segment = segment_of(len(recent), [(meta_of.get(r) or {}).get("category") for r in recent],
                                 n_cart=len(cart) or int(context.get("cart_size") or 0))
        given = context.get("reviews") or [{"item_id": i, "text": texts[0]}
                                           for i, texts in zip(review_ids, stored_reviews) if texts]
        reviews = [Review(str(r.get("item_id")), str(r.get("text"))[:2000],
                          r.get("rating") if isinstance(r.get("rating"), (int, float)) else None)
                   for r in given[:20] if isinstance(r, dict) and isinstance(r.get("text"), str)]
        ctx = CopyContext(items, segment[:80], reviews)
        cache_key = self.keys.copy_cache(cache_digest(ctx.item_ids, ctx.segment, PROMPT_VERSION))
        cached = None
        if with_cache:
            try:
                (raw,) = await asyncio.wait_for(self.store.read([("get", cache_key)]),
                                                max(0.05, min(1.0, deadline - time.monotonic())))
                cached = _cached(raw)
            except (Exception, asyncio.TimeoutError):
                cached = None
        return ctx, cached, cache_key

    async def refresh_titles(self) -> int:
        """Load catalog titles (up to ``TITLE_INDEX_SIZE``) so answers naming other items are caught."""
        (ids,) = await self.store.read([("smembers", self.keys.catalog_ids())])
        ids = sorted(ids)[:TITLE_INDEX_SIZE]
        titles = await self.store.read([("hmget", self.keys.item_meta(i), ["title"]) for i in ids]) if ids else []
        for item_id, (title,) in zip(ids, titles):
            if title:
                self._remember(item_id, title)
        return len(ids)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(TITLES_REFRESH_S)
            try:
                await asyncio.wait_for(self.refresh_titles(), 10.0)
            except (Exception, asyncio.TimeoutError):
                log.warning("copy: catalog title refresh failed")

    def _remember(self, item_id: str, title: str) -> None:
        self._titles[item_id] = title
        self._titles.move_to_end(item_id)
        while len(self._titles) > TITLE_INDEX_SIZE:
            self._titles.popitem(last=False)

    # -- output ----------------------------------------------------------------------------
    async def _emit_template(self, job: _Job, ctx: CopyContext, reason: str) -> None:
        self.metrics.fallbacks.labels(reason).inc()
        t = template_copy(ctx)
        await self._emit(job, ctx, t["headline"], t["body"], "template", "template", reason)

    async def _emit(self, job: _Job, ctx: CopyContext, headline: str, body: str, source: str, model: str,
                    fallback_reason: str | None = None) -> None:
        if job.sending:
            return
        job.sending = True
        latency_s = time.monotonic() - job.submitted
        copy = {"headline": headline, "body": body, "why": why_line(ctx), "source": source, "model": model,
                "latency_ms": round(latency_s * 1000.0, 2), "prompt_version": PROMPT_VERSION}
        if fallback_reason:
            copy["fallback_reason"] = fallback_reason
        self.metrics.events.labels(source).inc()
        self.metrics.latency.labels(source).observe(latency_s)
        try:
            await self._send({**_public(job.rec), "copy": copy})
        except Exception:
            self.metrics.send_errors.inc()
            log.warning("copy: send failed for rec_id=%s", str(job.rec.get("rec_id"))[:64])
        finally:
            if job.on_done is not None:
                with contextlib.suppress(Exception):
                    job.on_done()


def _public(rec: dict) -> dict:
    """The recommendation as it goes out: review texts in its context stay internal."""
    context = rec.get("context")
    if isinstance(context, dict) and "reviews" in context:
        return {**rec, "context": {k: v for k, v in context.items() if k != "reviews"}}
    return rec


def _cached(raw: Any) -> dict | None:
    if not raw:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict) and all(isinstance(data.get(k), str) for k in ("headline", "body", "model")):
        return data
    return None
