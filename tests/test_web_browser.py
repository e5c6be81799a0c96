"""The storefront widget in headless Chromium against a real worker, broker and Redis.

A `streamrec worker` serves /demo; the page shows the shopper's recommendations; a
click on a product reaches the `clicks` topic and the widget shows the new list within
a second; the copy fills in when the enriched event arrives; a click on a recommended
item carries its rec_id and the impression feedback reaches the CTR report.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from streams.embedded import free_port, start_worker
from tests.support.kafka import Collector, produce

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
CATEGORIES = {"tea": ["Green tea", "Black tea", "Oolong tea", "White tea"],
              "coffee": ["Espresso beans", "Filter coffee", "Cold brew", "Decaf roast"],
              "cups": ["Glass mug <img src=x onerror=window.__pwned=1>", "Stoneware cup", "Travel tumbler",
                       "Espresso cup"]}


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    async with session.get(url) as r:
        return r.status, await r.json(content_type=None)


async def _until(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium")
async def test_widget_in_browser(broker, worker_env, prefix, tmp_path):
    from playwright.async_api import async_playwright

    port = free_port()
    env = {**worker_env, "STREAMREC_WEB_PORT": str(port), "STREAMREC_WEB_HOST": "127.0.0.1"}
    worker = await asyncio.to_thread(start_worker, env, tmp_path / "worker.log")
    base = f"http://127.0.0.1:{port}"
    shopper = "shopper-1"
    try:
        async with aiohttp.ClientSession() as http, Collector(broker, prefix + "clicks") as clicks:
            # the worker joins its consumer group, then answers healthy and ready
            await _until(lambda: _ready(http, base), 120, "a healthy, assigned worker")

            # a catalog on the items topic, and shoppers who view items of one category in a row
            t = time.time() - 600
            items, order = [], []
            for cat, titles in CATEGORIES.items():
                for n, title in enumerate(titles):
                    item_id = f"{cat}-{n}"
                    order.append(item_id)
                    items.append((prefix + "items", None, {"item_id": item_id, "title": title,
                                                           "category": cat, "price": 4.5 + n, "ts": t}))
            await produce(broker, items)
            await _until(lambda: _catalog_size(http, base, 12), 30, "the catalog in the store")
            seed, n = [], 0
            for u in range(6):
                cat = list(CATEGORIES)[u % 3]
                for j in range(4):
                    n += 1
                    seed.append({"topic": "clicks", "event_id": f"seed-{n}", "user_id": f"seed-{u}",
                                 "item_id": f"{cat}-{j}", "ts": t + n})
            seed.append({"topic": "clicks", "event_id": "first-view", "user_id": shopper,
                         "item_id": "coffee-3", "ts": t + 100})
            async with http.post(base + "/events", json=seed) as r:
                assert r.status == 202, await r.text()
            status, first = await _until(lambda: _rec(http, base, shopper), 30, "the shopper's first list")

            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    # the page's CSP forbids eval; the test's own probes need it
                    context = await browser.new_context(viewport={"width": 1200, "height": 800}, bypass_csp=True)
                    page = await context.new_page()
                    errors: list[str] = []
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    response = await page.goto(f"{base}/demo?user={shopper}")
                    assert "script-src 'self'" in response.headers["content-security-policy"]
                    widget = page.locator("#recommendations")

                    # the page shows the worker's list for this shopper, with catalog titles
                    await page.wait_for_selector("#recommendations[data-live='1']", timeout=10_000)
                    await page.wait_for_function(
                        "id => document.querySelector('#recommendations').dataset.recId === id",
                        arg=first["rec_id"], timeout=10_000)
                    shown = await widget.locator(".streamrec-title").all_text_contents()
                    assert shown == [i["title"] for i in first["items"]] and shown
                    assert await page.locator("#catalog .product").count() == 12
                    # catalog text is shown as text, never parsed as markup
                    assert await page.locator("img").count() == 0
                    assert await page.get_by_text("Glass mug <img src=x onerror=window.__pwned=1>").count() >= 1
                    assert await page.evaluate("window.__pwned === undefined")

                    # a product click: measured in the page from the click to the new list
                    await page.evaluate("""() => {
                        const w = document.querySelector('#recommendations');
                        window.__before = w.dataset.recId;
                        document.addEventListener('click', () => { window.__clickAt = performance.now(); }, true);
                        new MutationObserver(() => {
                          if (w.dataset.recId !== window.__before && window.__shownAt === undefined)
                            window.__shownAt = performance.now();
                        }).observe(w, {attributes: true, attributeFilter: ['data-rec-id']});
                    }""")
                    await page.click("button[data-item-id='tea-0']")
                    await page.wait_for_function("window.__shownAt !== undefined", timeout=5_000)
                    elapsed_ms = await page.evaluate("window.__shownAt - window.__clickAt")
                    print(f"click to updated list in the browser: {elapsed_ms:.0f} ms")
                    assert elapsed_ms < 1000, elapsed_ms
                    new_titles = await widget.locator(".streamrec-title").all_text_contents()
                    assert "Black tea" in new_titles, new_titles  # viewed right after Green tea by others

                    # the click reached Kafka
                    await clicks.wait_for(lambda c: any(
                        v["user_id"] == shopper and v["item_id"] == "tea-0"
                        for v in c.values(prefix + "clicks")), 10)
                    sent = [v for v in clicks.values(prefix + "clicks") if v["user_id"] == shopper]
                    assert any(v["item_id"] == "tea-0" and "rec_id" not in v for v in sent), sent

                    # the copy of the new list appears when its enriched event arrives
                    await page.wait_for_function(
                        "document.querySelector('#recommendations').dataset.copySource !== ''", timeout=10_000)
                    rec_id = await widget.get_attribute("data-rec-id")
                    headline = (await widget.locator(".streamrec-headline").text_content()) or ""
                    body = (await widget.locator(".streamrec-body").text_content()) or ""
                    assert headline.strip() and body.strip()
                    status, latest = await _get(http, f"{base}/recommendations/{shopper}")
                    assert latest["rec_id"] == rec_id and latest["copy"]["headline"] == headline

                    # a click on a recommended item carries the list's rec_id
                    target = widget.locator(".streamrec-item").first
                    target_id = await target.get_attribute("data-item-id")
                    await target.click()
                    assert await clicks.wait_for(lambda c: any(
                        v.get("rec_id") == rec_id and v["item_id"] == target_id
                        for v in c.values(prefix + "clicks")), 10)

                    # impressions (sent when a list is visible) and the click reach the CTR report
                    report = await _until(lambda: _ctr_with_clicks(http, base), 15, "CTR with clicks")
                    print("CTR per source:", orjson.dumps(report).decode())

                    shot = Path(tempfile.gettempdir()) / f"streamrec-widget-{prefix.strip('-')}.png"
                    await page.wait_for_timeout(300)
                    await page.screenshot(path=str(shot), full_page=True)
                    print(f"screenshot: {shot}")
                    assert not errors, errors
                finally:
                    await browser.close()
    finally:
        worker.stop()
    log = (tmp_path / "worker.log").read_bytes()
    assert b"Traceback" not in log, log[-3000:].decode(errors="replace")


async def _ready(http, base):
    try:
        status, body = await _get(http, base + "/healthz")
    except aiohttp.ClientError:
        return None
    return body if status == 200 and body.get("ready") else None


async def _catalog_size(http, base, n):
    status, body = await _get(http, base + "/catalog?limit=50")
    return status == 200 and len(body["items"]) >= n


async def _rec(http, base, user):
    status, body = await _get(http, f"{base}/recommendations/{user}")
    return (status, body) if status == 200 and body["items"] else None


async def _ctr_with_clicks(http, base):
    status, body = await _get(http, base + "/ctr")
    total_imp = sum(e["impressions"] for e in body["versions"].values())
    total_clk = sum(e["clicks"] for e in body["versions"].values())
    return body if total_imp > 0 and total_clk > 0 else None
